"""Opening input files: only regular files, only inside the model directory they belong to, and remembered.

Every file mergesmith reads (weights, index, config, tokenizer and other side files, YAML configs, pools, statistics,
continual state) is opened here:

- only regular files: a FIFO or a device named like a checkpoint would block ``open()`` forever or never end, so
  files are opened with ``O_NONBLOCK`` and checked with ``fstat`` before a byte is read;
- a file inside a model directory must resolve inside that directory: a shard, config or tokenizer that is a
  symlink to a file elsewhere (a private key, another user's data) is refused, as it would be read, merged or copied
  into an output people upload. The one exception is a Hugging Face cache snapshot, whose
  ``snapshots/<revision>/<file>`` are symlinks to ``../../blobs/<hash>`` of the same repository folder;
- the (device, inode, size, mtime) of each opened file is its identity: a caller keeps it and checks it again after
  its last read, so a file rewritten while it was being read is detected instead of silently mixed.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import CheckpointError, MergesmithError

# ``snapshots/<revision>/<file>`` -> ``../../blobs/<hash>`` in a ``models--<org>--<name>`` folder of the hub cache.
_HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten in place (size, mtime) or replaced by another (device, inode)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _allowed_roots(root: Path) -> list[Path]:
    """Where files of the model directory ``root`` may resolve: the directory, and for a hub cache snapshot the
    ``blobs/`` folder of the same repository."""
    real = root.resolve()
    allowed = [real]
    snapshots = real.parent
    repo = snapshots.parent
    if snapshots.name == "snapshots" and repo.name.startswith(_HUB_REPO_PREFIXES) and (repo / "blobs").is_dir():
        allowed.append((repo / "blobs").resolve())
    return allowed


def check_inside(
    root: str | os.PathLike[str], path: str | os.PathLike[str], *, error: type[MergesmithError] = CheckpointError
) -> Path:
    """``path`` resolved; it must stay inside the model directory ``root`` (symlinks included), or, when ``root`` is
    a Hugging Face cache snapshot, inside that repository's ``blobs/``."""
    path = Path(path)
    real = path.resolve()
    for allowed in _allowed_roots(Path(root)):
        if real == allowed or allowed in real.parents:
            return real
    raise error(
        f"{path}: resolves to {real}, outside the model directory {root}; a model's files must be inside its "
        f"directory (replace the symlink with a copy of the file if you trust it)"
    )


def open_regular(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    error: type[MergesmithError] = CheckpointError,
) -> tuple[int, FileIdentity]:
    """A read-only descriptor of the regular file ``path`` and its identity; ``error`` (one line naming the file)
    if it is missing, unreadable, not a regular file, or (with ``root``) resolves outside the model directory."""
    path = Path(path)
    if root is not None:
        check_inside(root, path, error=error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise error(f"{path}: cannot open ({e.strerror or e}); check the path and permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
            raise error(f"{path}: is {kind}; give a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # O_NONBLOCK only guarded the open; regular-file reads ignore it anyway
        return fd, FileIdentity.of(st)
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | os.PathLike[str],
    *,
    limit: int,
    what: str,
    root: str | os.PathLike[str] | None = None,
    error: type[MergesmithError] = CheckpointError,
) -> tuple[bytes, FileIdentity]:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading), and its identity."""
    fd, identity = open_regular(path, root=root, error=error)
    try:
        if identity.size > limit:
            raise error(f"{path}: {identity.size} bytes, more than the {limit}-byte limit for {what}; check the file")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # the file grew after fstat
                raise error(f"{path}: more than the {limit}-byte limit for {what}; check the file")
        return b"".join(chunks), identity
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); check the path and permissions") from None
    finally:
        os.close(fd)


def identity_at(path: str | os.PathLike[str]) -> FileIdentity | None:
    """The identity of the file now at ``path`` (None if it is gone)."""
    try:
        return FileIdentity.of(os.stat(path))
    except OSError:
        return None


def check_unchanged(
    path: str | os.PathLike[str], identity: FileIdentity, *, error: type[MergesmithError] = CheckpointError
) -> None:
    """Refuse if the file at ``path`` is no longer the one that was opened (rewritten, replaced or removed)."""
    now = identity_at(path)
    if now != identity:
        what = (
            "was removed"
            if now is None
            else (
                "was replaced by another file"
                if (now.device, now.inode) != (identity.device, identity.inode)
                else "was modified"
            )
        )
        raise error(
            f"{path}: {what} while mergesmith was reading it, so the output would mix two versions; nothing was "
            f"written, rerun once the file no longer changes"
        )


# ---- inputs open while an output is written ---------------------------------------------------------------------
# A checkpoint records here the identity of each file it opened, for as long as it is open; an output directory
# checks them just before it is committed (``atomic.StagedOutput.commit``), after the last read. Writers need not
# pass their checkpoints along: every reader of a model directory goes through ``Checkpoint``.

_WATCH_LOCK = threading.Lock()
_WATCHED: dict[int, tuple[Path, Path, FileIdentity]] = {}  # token -> (model directory, file, identity when opened)
_TOKENS = itertools.count()


def watch_input(root: str | os.PathLike[str], path: str | os.PathLike[str], identity: FileIdentity) -> int:
    """Remember that ``path`` (of the model directory ``root``) was opened as ``identity``; returns a token."""
    token = next(_TOKENS)
    with _WATCH_LOCK:
        _WATCHED[token] = (Path(root).resolve(), Path(path), identity)
    return token


def forget_inputs(tokens: list[int]) -> None:
    with _WATCH_LOCK:
        for token in tokens:
            _WATCHED.pop(token, None)


def check_inputs_unchanged(roots: list[Path]) -> None:
    """Refuse (CheckpointError naming the file) if a watched file of a model directory inside one of ``roots``
    (resolved) was rewritten, replaced or removed since it was opened."""
    with _WATCH_LOCK:
        watched = list(_WATCHED.values())
    for root, path, identity in watched:
        if any(root == r or r in root.parents for r in roots):
            check_unchanged(path, identity)
