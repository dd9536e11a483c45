"""The models a server can switch between: each diffusers folder and single .safetensors file in --model-dir (or the
one --model), named as A1111 names them: `title` "name [hash]", `model_name`, the short `hash`. And the VAEs of
--vae-dir, which `sd_vae` picks by name ("Automatic" and "None": the model's own)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from .. import tiny
from ..weights import model_hash


@dataclass(frozen=True)
class Checkpoint:
    name: str  # the file's or folder's name, or sumie-tiny
    path: str  # what from_pretrained takes
    hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"

    def listing(self) -> dict:
        """A1111's /sd-models entry."""
        filename = self.path if self.name != tiny.NAME else self.name
        return {"title": self.title, "model_name": Path(self.name).stem, "hash": self.hash, "sha256": None,
                "filename": filename, "config": None}


def describe(path: str | Path) -> Checkpoint:
    if str(path) == tiny.NAME:
        return Checkpoint(tiny.NAME, tiny.NAME, model_hash(tiny.MODEL_DIR))
    return Checkpoint(Path(path).name, str(path), model_hash(path))


class Checkpoints:
    """--model-dir's checkpoints (rescanned by `refresh`), always with the one in use."""

    def __init__(self, folder: str | Path | None, current: Checkpoint):
        self.folder = Path(folder) if folder else None
        self.current = current
        self.found: list[Checkpoint] = []
        self.refresh()

    def refresh(self) -> None:
        found = []
        if self.folder is not None:
            for path in sorted(self.folder.iterdir()):
                if (path / "model_index.json").is_file() or (path.is_file() and path.suffix == ".safetensors"):
                    found.append(describe(path))
        self.found = found

    @property
    def all(self) -> list[Checkpoint]:
        return self.found if any(c.path == self.current.path for c in self.found) else [self.current, *self.found]

    def find(self, name: str) -> Checkpoint | None:
        """By title, name, name without suffix, or hash, as A1111 accepts them."""
        for c in self.all:
            if name in (c.title, c.name, Path(c.name).stem, c.hash):
                return c
        return None

    def close_to(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, [c.title for c in self.all], n=3, cutoff=0.3)


OWN_VAE = ("Automatic", "None")


def find_vaes(folder: str | Path | None) -> dict[str, str]:
    """name -> path: each .safetensors file and diffusers VAE folder (a config.json beside its weights) in `folder`."""
    if folder is None:
        return {}
    return {p.name: str(p) for p in sorted(Path(folder).iterdir())
            if (p.is_file() and p.suffix == ".safetensors") or (p / "config.json").is_file()}


class VAEs:
    """The VAE each job decodes with: the model's own, or one of --vae-dir's, loaded once while it stays chosen."""

    def __init__(self, folder: str | Path | None):
        self.folder, self.found = folder, find_vaes(folder)
        self.loaded: tuple[str, object] | None = None  # (name, network)

    def refresh(self) -> None:
        self.found = find_vaes(self.folder)

    def use(self, pipe, own, name: str) -> None:
        """Set pipe.vae to the model's own VAE `own`, or to `name` (loaded like it, on its device and dtype)."""
        from ..speed import kernels
        from ..weights import load_vae
        if name in OWN_VAE:
            pipe.vae = own
            return
        if self.loaded is None or self.loaded[0] != name:
            vae = load_vae(self.found[name], like=own.config, dtype=own.dtype, device=next(own.parameters()).device)
            kernels.by_shape(vae)
            self.loaded = (name, vae.eval())
        pipe.vae = self.loaded[1]

    def listing(self) -> list[dict]:
        """A1111's /sd-vae entries."""
        return [{"model_name": name, "filename": path} for name, path in self.found.items()]
