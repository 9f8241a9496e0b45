"""sha256 of input files, remembered by (path, size, mtime, inode) so re-merging the same checkpoints is free.

Checkpoints are large and rarely change; hashing 3 x 1 GB costs seconds of CPU on every merge. A file whose size,
modification time or inode changed is hashed again, so a stale entry can never be reported.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from mergesmith.errors import MergesmithError
from mergesmith.io.model_files import sha256_file
from mergesmith.io.parse import read_json

_LOCK = threading.Lock()


def cache_path() -> Path:
    root = os.environ.get("MERGESMITH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mergesmith"
    )
    return Path(root) / "file-hashes.json"


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def hash_files(paths: list[Path], cache: Path | None = None) -> dict[str, str]:
    """{str(path): sha256} for every path, reusing remembered hashes of unchanged files."""
    cache = cache or cache_path()
    with _LOCK:
        try:
            known = read_json(cache, what="hash cache", limit=256 * 1024 * 1024) if cache.exists() else {}
        except MergesmithError:
            known = {}  # a damaged cache only costs a re-hash
        out: dict[str, str] = {}
        changed = False
        for path in paths:
            key = str(Path(path).resolve())
            identity = _identity(Path(path))
            entry = known.get(key)
            if isinstance(entry, dict) and entry.get("id") == identity and isinstance(entry.get("sha256"), str):
                out[str(path)] = entry["sha256"]
                continue
            digest = sha256_file(Path(path))
            if _identity(Path(path)) == identity:  # the file did not change while we read it
                known[key] = {"id": identity, "sha256": digest}
                changed = True
            out[str(path)] = digest
        if changed:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known, sort_keys=True), encoding="utf-8")
                os.replace(tmp, cache)
            except OSError:
                pass  # an unwritable cache only costs the next merge a re-hash
        return out
