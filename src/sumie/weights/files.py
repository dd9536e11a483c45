"""Reading weight files: safetensors memory-mapped, pickles only when asked, and then tensors only; and
writing a safetensors file byte for byte the same for the same tensors and metadata (`write_safetensors`).

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the data (https://github.com/huggingface/safetensors, "Format"). We read the
header ourselves, check every range against the file's size, and map the data into memory, so a tensor
costs nothing until it is used.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import struct
import warnings
from pathlib import Path

import torch

from ..config import read_json
from ..errors import WeightsError

# safetensors dtype names -> torch
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024
LFS_POINTER = b"version https://git-lfs"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def _refuse_lfs_pointer(path: Path, head: bytes) -> None:
    """A file that starts with git-lfs's pointer text holds no weights: say how to get them."""
    if head.startswith(LFS_POINTER):
        raise WeightsError(f"{path} is a git-lfs pointer, not the weights: the real file was never "
                           f"downloaded (run `git lfs pull` in its repository)")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _read_header(path: Path) -> tuple[dict, int]:
    """-> (header dict, byte offset of the data section). Raises WeightsError on anything malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        _refuse_lfs_pointer(path, f.read(len(LFS_POINTER)))
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path} is not a valid safetensors file: its header claims {n} bytes but the "
                               f"file has {size}; it may be truncated or not a safetensors file at all")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    data_start, data_len = 8 + n, size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype, shape = _DTYPES[info["dtype"]], info["shape"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r} has a malformed or unsupported entry: {info!r}") from None
        expected = dtype.itemsize * _numel(shape)
        if not 0 <= begin <= end <= data_len or end - begin != expected:
            raise WeightsError(f"{path} is truncated or corrupt: tensor {name!r} lies at bytes {begin}..{end} "
                               f"of a {data_len}-byte data section (needs {expected} bytes)")
    return header, data_start


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Memory-map a .safetensors file -> {name: CPU tensor viewing the file}. Nothing is read until used."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file")
    header, start = _read_header(path)
    size = path.stat().st_size
    storage = torch.UntypedStorage.from_file(os.fspath(path), shared=False, nbytes=size) if size else None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, (begin, end) = _DTYPES[info["dtype"]], info["data_offsets"]
        raw = torch.empty(0, dtype=torch.uint8)
        raw.set_(storage, start + begin, (end - begin,))
        if (start + begin) % dtype.itemsize:  # unaligned for this dtype: copy once
            raw = raw.clone()
        out[name] = raw.view(dtype).reshape(info["shape"])
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None,
                      *, data_hash_key: str | None = None) -> None:
    """Write `tensors` as a .safetensors file, atomically: names and metadata keys in sorted order, each tensor's
    bytes in that order, so the same input gives the same file (the safetensors library orders metadata by a
    hash map's). With `data_hash_key`, the metadata also holds the SHA-256 of the data section under that key
    (Kohya's and A1111's hash of a LoRA file)."""
    import hashlib
    path, names = Path(path), sorted(tensors)
    _reverse = {v: k for k, v in _DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name in names:
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _reverse[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    metadata = {**(metadata or {}), **({data_hash_key: hashlib.sha256(data).hexdigest()} if data_hash_key else {})}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    os.replace(tmp, path)


def read_pickle(path: Path, *, allow_pickle: bool = False):
    """A pickled file's contents, only with `allow_pickle`, and then by torch.load(weights_only=True), which
    builds tensors and plain containers and refuses anything else (nothing in the file is run)."""
    with open(path, "rb") as f:
        _refuse_lfs_pointer(path, f.read(len(LFS_POINTER)))
    if not allow_pickle:
        raise WeightsError(f"{path} is a pickle, which can run arbitrary code when loaded; sumie does not open "
                           f"pickles by default. Convert it to .safetensors, or if you trust its source pass "
                           f"--allow-pickle (API: allow_pickle=True), which loads tensors only")
    if "weights_only" not in inspect.signature(torch.load).parameters:
        raise WeightsError(f"torch {torch.__version__} cannot load pickles safely (no weights_only); "
                           f"upgrade torch or convert {path.name} to .safetensors elsewhere")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        found = re.search(r"Unsupported (?:global|operand)[^\n]*", str(e))
        reason = found.group(0) if found else (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise WeightsError(f"{path} was refused: it is not a plain tensor pickle ({reason}); nothing in it was run") \
            from None


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A single weights file -> {name: tensor}. safetensors are memory-mapped. Pickled files (.ckpt, .bin,
    .pt, .pth) are refused unless `allow_pickle` (see `read_pickle`)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; expected a weights file (.safetensors)")
    if not is_pickle(path):
        return read_safetensors(path)
    data = read_pickle(path, allow_pickle=allow_pickle)
    step = data.get("global_step") if isinstance(data, dict) else None
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if isinstance(step, int):
        tensors["global_step"] = torch.tensor(step)  # tells SD 2 base (epsilon) from SD 2 768-v
    return tensors


def find_weight_files(folder: Path, stem: str, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of one component: `{stem}[.{variant}].safetensors`, or the shards named in
    `{stem}[.{variant}].safetensors.index.json`."""
    suffix = f".{variant}" if variant else ""
    single = folder / f"{stem}{suffix}.safetensors"
    index = folder / f"{stem}{suffix}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index} has no weight_map")
        return [folder / f for f in dict.fromkeys(weight_map.values())]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.ckpt"))
    hint = (f"; it has only pickled weights ({', '.join(pickles)}), which sumie does not load because "
            f"unpickling can run code: convert them to safetensors" if pickles else "")
    want = f"{single.name} or {index.name}"
    if variant:
        want += f" (variant {variant!r}; leave variant unset to load the default weights)"
    raise WeightsError(f"no weights in {folder}: expected {want}{hint}")


def read_weight_files(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    return state
