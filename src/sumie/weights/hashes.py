"""AUTOMATIC1111's "Model hash": the first 10 hex digits of the SHA-256 of the checkpoint file.

A diffusers folder has no single file, so for one we hash its UNet weights. Results are cached in
$XDG_CACHE_HOME/sumie/hashes.json by (path, size, mtime), so a large file is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import find_weight_files


def model_hash(source: str | Path) -> str:
    """A1111's short model hash of a single-file checkpoint, or of a diffusers folder's UNet weights."""
    source = Path(source).resolve()
    files = [source] if source.is_file() else find_weight_files(source / "unet", "diffusion_pytorch_model")
    key = "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_file = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sumie" / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    cache[key] = digest.hexdigest()[:10]
    try:  # best effort: a read-only home only costs the next run a re-hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return cache[key]
