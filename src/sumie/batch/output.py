"""Where a batch writes: its images and `manifest.jsonl`, in a local folder or at an fsspec URI (s3://, gs://).

Every write is whole or absent: a local image goes to a temp file that is renamed; an object store writes an
object at once. The manifest gets one JSON line per image (or failure):
- in a local folder, each line is appended and synced as its image lands, so a killed run loses at most the
  image in flight;
- an object store cannot append, so the whole manifest is rewritten, at most every FLUSH_SECONDS and at the
  end. A killed run there redoes the images of its last seconds, with the same pixels under the same names.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..images import png_bytes, save_png

MANIFEST = "manifest.jsonl"
FLUSH_SECONDS = 5.0


def pixels_hash(image: Image.Image) -> str:
    """sha256 of an image's mode, size and pixels: equal for equal pixels, whatever the PNG encoder did."""
    return hashlib.sha256(f"{image.mode} {image.width}x{image.height} ".encode() + image.tobytes()).hexdigest()


class Output:
    """A batch's output folder: a local path, or a URI that fsspec can write."""

    def __init__(self, where: str | Path):
        self.where = str(where)
        self.remote = "://" in self.where and not self.where.startswith("file://")
        self._entries: list[dict] = []  # a remote manifest, rewritten whole
        self._flushed = 0.0
        if self.remote:
            try:
                import fsspec
                self.fs, self.root = fsspec.core.url_to_fs(self.where)
            except ImportError as e:
                raise InputError(f"--outdir {self.where}: writing there needs fsspec and the package of its "
                                 f"protocol ({e}); pip install fsspec s3fs (or gcsfs, adlfs)") from None
            except ValueError as e:
                raise InputError(f"--outdir {self.where}: not a URI fsspec knows ({e})") from None
        else:
            self.root = Path(self.where.removeprefix("file://"))
        self._check()

    def _check(self) -> None:
        """Create the folder and write a probe, so that an unwritable place fails before any work."""
        probe = ".sumie-write-test"
        try:
            if self.remote:
                self.fs.makedirs(self.root, exist_ok=True)
                self.fs.pipe_file(self._path(probe), b"")
                self.fs.rm_file(self._path(probe))
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / probe).write_bytes(b"")
                (self.root / probe).unlink()
        except Exception as e:  # each filesystem raises its own kinds
            raise InputError(f"--outdir {self.where}: cannot write there ({type(e).__name__}: {e})") from None

    def _path(self, name: str):
        return f"{self.root.rstrip('/')}/{name}" if self.remote else self.root / name

    def __str__(self) -> str:
        return self.where

    # -- images ---------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name)) if self.remote else (self.root / name).is_file()

    def write_png(self, name: str, image: Image.Image, text: str) -> None:
        if self.remote:
            self.fs.pipe_file(self._path(name), png_bytes(image, text))
        else:
            save_png(image, self.root / name, text, overwrite=True)

    # -- the manifest ---------------------------------------------------------------------------------
    def read_manifest(self) -> list[dict]:
        """The entries written so far. A last line cut short by a kill is dropped (and cut off the file)."""
        path = self._path(MANIFEST)
        try:
            data = (self.fs.cat_file(path) if self.remote else path.read_bytes()) if self.exists(MANIFEST) else b""
        except OSError as e:
            raise InputError(f"{path}: cannot read the manifest ({e})") from None
        if data and not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
            if not self.remote:
                with open(path, "r+b") as f:
                    f.truncate(len(data))
        entries = []
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {number} is not JSON; move the file away to start over") from None
        self._entries = list(entries) if self.remote else []
        return entries

    def append(self, entry: dict) -> None:
        if self.remote:
            self._entries.append(entry)
            if time.monotonic() - self._flushed >= FLUSH_SECONDS:
                self.flush()
            return
        with open(self.root / MANIFEST, "a", encoding="utf-8") as f:
            f.write(_line(entry))
            f.flush()
            os.fsync(f.fileno())

    def flush(self) -> None:
        if self.remote:
            self.fs.pipe_file(self._path(MANIFEST), "".join(map(_line, self._entries)).encode())
            self._flushed = time.monotonic()


def _line(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
