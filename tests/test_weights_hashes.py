"""`weights.hashes`: A1111's model hash, cached."""

import json


def test_model_hash_is_a1111s_and_cached(single_files, tmp_path, monkeypatch):
    import hashlib

    from sumie.weights import model_hash
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = single_files["sd1"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert model_hash(path) == expected
    cache = json.loads((tmp_path / "sumie" / "hashes.json").read_text())
    assert list(cache.values()) == [expected]
    (tmp_path / "sumie" / "hashes.json").write_text(json.dumps({k: "cachedvalu" for k in cache}))
    assert model_hash(path) == "cachedvalu"  # served from the cache, not re-read
