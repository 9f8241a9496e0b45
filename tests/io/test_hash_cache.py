import hashlib
import os

from mergesmith.io.hash_cache import hash_files


def test_remembers_unchanged_files_and_rehashes_changed_ones(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert hash_files([f], cache) == {str(f): hashlib.sha256(b"abc").hexdigest()}
    calls = []
    import mergesmith.io.hash_cache as hc

    real = hc.sha256_file
    monkeypatch.setattr(hc, "sha256_file", lambda p: calls.append(p) or real(p))
    hash_files([f], cache)
    assert calls == []  # remembered
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 1))
    assert hash_files([f], cache) == {str(f): hashlib.sha256(b"abcd").hexdigest()}
    assert calls == [f]


def test_corrupt_cache_is_ignored(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    assert hash_files([f], cache)[str(f)] == hashlib.sha256(b"x").hexdigest()
