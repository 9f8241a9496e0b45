"""Atomic output directories: write into a hidden sibling, rename into place only when complete.

A directory that looks like a finished model (index, config) exists only once the merge is finished. A lock
(``flock``, released by the kernel even when the process is killed) stops two merges from writing the same
output; leftovers of a killed run are removed by the next run that takes the lock. Before the rename, every input
file still open is checked to be the file that was read (``paths.check_inputs_unchanged``).

``check_output`` is the one rule for where an output may go; commands call it before any work (so a bad output
path is refused before a progress bar or a minute of computation), and ``StagedOutput`` applies it again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path

from mergesmith.errors import MergesmithError
from mergesmith.io.paths import check_inputs_unchanged

_STAGING_TAG = ".mergesmith-tmp-"


def check_output(
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: list = (),  # type: ignore[assignment]
    force_option: str | None = "--force",
    what: str = "output directory",
) -> Path:
    """Refuse (one-line MergesmithError) an output path that cannot or must not be written, before any work:

    a symbolic link (dangling or not: the final rename would replace the link, not write where it points), an
    existing file, a non-empty directory without ``force``, a path that overlaps an input (is, contains or sits
    inside one), or a location whose nearest existing parent is not a writable directory. Returns the absolute path.
    ``force_option`` names the flag that allows replacing (None: the command has none)."""
    out = Path(out_dir).absolute()
    if out.is_symlink():
        target = os.readlink(out)
        state = "which does not exist" if not out.exists() else "a link the output would replace"
        raise MergesmithError(f"{what} {out} is a symbolic link to {target}, {state}; give a real directory path")
    resolved = out.resolve()
    for source in (Path(p).resolve() for p in inputs):
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise MergesmithError(f"{what} {out} overlaps input {source}; choose an output outside every input model")
    if out.exists() and not out.is_dir():
        raise MergesmithError(f"output path {out} exists and is a file; choose a directory path")
    try:
        occupied = out.is_dir() and not force and any(out.iterdir())
    except OSError as exc:
        raise MergesmithError(f"cannot list {out}: {exc.strerror or exc}; choose a writable output location") from None
    if occupied:
        how = f"choose another or pass {force_option} to replace it" if force_option else "choose another"
        raise MergesmithError(f"{what} {out} exists and is not empty; {how}")
    parent = out.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MergesmithError(
            f"cannot create {out.parent}: {parent} is not a directory; choose a writable output location"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MergesmithError(f"cannot write in {parent}: permission denied; choose a writable output location")
    return out


class StagedOutput:
    def __init__(self, out_dir: str | Path, *, force: bool = False, inputs: list[Path] = ()):  # type: ignore[assignment]
        self.out_dir = Path(out_dir).absolute()
        self.force = force
        self.inputs = [Path(p).resolve() for p in inputs]
        self.staging: Path | None = None
        self._lock_fd: int | None = None
        self._lock_path = self.out_dir.parent / f".{self.out_dir.name}.mergesmith-lock"

    def __enter__(self) -> Path:
        out = check_output(self.out_dir, force=self.force, inputs=self.inputs)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MergesmithError(
                f"cannot create {out.parent}: {exc.strerror}; choose a writable output location"
            ) from None
        if not os.access(out.parent, os.W_OK):
            raise MergesmithError(f"cannot write in {out.parent}: permission denied; choose a writable output location")
        self._take_lock()
        for stale in out.parent.glob(f".{out.name}{_STAGING_TAG}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; we hold the lock, so nobody owns it
        self.staging = out.parent / f".{out.name}{_STAGING_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        return self.staging

    def _take_lock(self) -> None:
        for _ in range(100):
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MergesmithError(
                    f"cannot create lock {self._lock_path}: {exc.strerror}; choose a writable output location"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise MergesmithError(
                    f"another mergesmith run is writing {self.out_dir} (lock {self._lock_path}); wait for it to finish"
                ) from None
            # The holder unlinks the lock file when it finishes: if it did so between our open and our flock, we
            # locked a deleted file that a third run would not see. Only a lock on the file at the path counts.
            if _same_file(fd, self._lock_path):
                self._lock_fd = fd
                return
            os.close(fd)
        raise MergesmithError(f"could not take the lock {self._lock_path} (it keeps being replaced); retry")

    def commit(self) -> None:
        """Move the finished staging directory into place (replacing the old output with --force)."""
        assert self.staging is not None
        check_inputs_unchanged(self.inputs)  # after the last read: an input rewritten meanwhile means mixed output
        out = self.out_dir
        trash = None
        if out.exists():
            trash = out.parent / f".{out.name}{_STAGING_TAG}old-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
        os.rename(self.staging, out)
        _fsync_dir(out.parent)
        self.staging = None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock_fd is not None:
            try:
                os.unlink(self._lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None
        # A full disk, a quota or a file size limit is the user's environment, not a bug: say so in one line.
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_FULL:
            raise MergesmithError(
                f"writing {self.out_dir} failed: {exc.strerror or exc}; free disk space (or raise the file size "
                f"limit) and rerun (nothing was written; a previous output is unchanged)"
            ) from None


_OUTPUT_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
