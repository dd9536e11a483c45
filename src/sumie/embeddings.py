"""Textual-inversion embeddings (Gal et al. 2022): learned token vectors that stand in for a name in a prompt.

Files, as people share them:
- A1111's `.pt`: {"string_to_param": {"*": (n, D)}, "name", "step", ...}, a pickle: read only with
  allow_pickle, then tensors only;
- `.safetensors` with `emb_params` (n, D) (A1111's own), or with `clip_l` / `clip_g` (SDXL's: read as their
  concatenation (n, 768 + 1280), each encoder taking its own columns);
- diffusers' `learned_embeds.bin` / `.safetensors`: {token: (D,) or (n, D)}.

A name is found in a prompt by its own tokens (A1111's rule): where the prompt's tokens spell the name, its
n vectors take n token positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, SumieError
from .weights.files import is_pickle, read_pickle, read_safetensors

SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: torch.Tensor  # (n, D)
    path: Path | None = None
    step: int | None = None


def read_embedding(path: str | Path, *, allow_pickle: bool = False,
                   xl: bool = False) -> tuple[torch.Tensor, str | None, int | None]:
    """A file -> ((n, D) vectors, the name it carries or None, its training step or None). An SDXL file's
    clip_l and clip_g side by side when the model is SDXL (`xl`), else refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embedding {path} does not exist or is not a file")
    data = read_pickle(path, allow_pickle=allow_pickle) if is_pickle(path) else read_safetensors(path)
    if not isinstance(data, dict):
        raise InputError(f"embedding {path} is not a tensor dict ({type(data).__name__}); expected A1111's "
                         f"string_to_param, emb_params, or diffusers' {{token: tensor}}")
    name, step = data.get("name"), data.get("step")
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = next(iter(data["string_to_param"].values()))
    elif "emb_params" in data:
        vectors = data["emb_params"]
    elif ("clip_l" in data or "clip_g" in data) and not xl:
        raise InputError(f"embedding {path} is an SDXL embedding (clip_l / clip_g); this model is SD 1.x / 2.x, "
                         f"whose embeddings hold emb_params or string_to_param")
    elif "clip_l" in data and "clip_g" in data:
        vectors = torch.cat([data["clip_l"], data["clip_g"]], -1)
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            raise InputError(f"embedding {path} is not a tensor dict of one embedding (found keys "
                             f"{sorted(data)[:5]}); expected A1111's string_to_param or emb_params, or "
                             f"diffusers' {{token: tensor}}")
        name, vectors = next(iter(tensors.items()))
    if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2) or not vectors.is_floating_point():
        raise InputError(f"embedding {path} holds no (vectors, width) tensor")
    return (vectors[None] if vectors.ndim == 1 else vectors).float(), name if isinstance(name, str) else None, \
        step if isinstance(step, int) else None


class Embeddings:
    """The embeddings a pipeline knows, by name, and where their names stand in a prompt's tokens."""

    def __init__(self, tokenizer, width: int, *, xl: bool = False):
        self.tokenizer, self.width, self.xl = tokenizer, width, xl
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, str] = {}  # name -> why it could not be used
        self._by_first: dict[int, list[tuple[list[int], str]]] = {}  # first token id -> (name tokens, name)

    def _index(self, name: str) -> None:
        ids = self.tokenizer.tokenize([name])[0]
        if not ids:
            raise InputError(f"embedding name {name!r} has no tokens; give it a name made of text")
        entries = [e for e in self._by_first.get(ids[0], []) if e[1] != name] + [(ids, name)]
        self._by_first[ids[0]] = sorted(entries, key=lambda e: -len(e[0]))  # the longest name first

    def add(self, name: str, vectors: torch.Tensor, *, path: Path | None = None, step: int | None = None) -> Embedding:
        if vectors.shape[-1] != self.width:
            where = f"{path}" if path else f"embedding {name!r}"
            raise InputError(f"{where} has vectors of width {vectors.shape[-1]}, but this model's text encoder is "
                             f"{self.width} wide (768: SD 1.x, 1024: SD 2.x, 768 + 1280: SDXL); it was made for "
                             f"another model")
        self._index(name)
        self.skipped.pop(name, None)
        self.loaded[name] = Embedding(name, vectors, path, step)
        return self.loaded[name]

    def load(self, path: str | Path, token: str | None = None, *, allow_pickle: bool = False) -> Embedding:
        """One file; its name is `token`, else the name it carries, else the file's stem."""
        vectors, carried, step = read_embedding(path, allow_pickle=allow_pickle, xl=self.xl)
        return self.add(token or carried or Path(path).stem, vectors, path=Path(path), step=step)

    def load_dir(self, folder: str | Path, *, allow_pickle: bool = False) -> None:
        """Every embedding file under `folder` (subfolders too), named by its file stem, as A1111 does. One
        that cannot be used is skipped with its reason, which a prompt that names it then reports."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--embeddings {folder} is not a folder")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
            try:
                vectors, _, step = read_embedding(path, allow_pickle=allow_pickle, xl=self.xl)
                self.add(path.stem, vectors, path=path, step=step)
            except SumieError as e:
                self._index(path.stem)
                self.loaded.pop(path.stem, None)
                self.skipped[path.stem] = str(e)

    def at(self, ids: list[int], i: int) -> tuple[torch.Tensor, int] | None:
        """The embedding whose name's tokens start at ids[i]: ((n, D) vectors, tokens the name takes), or None."""
        for name_ids, name in self._by_first.get(ids[i], ()):
            if ids[i:i + len(name_ids)] == name_ids:
                if name in self.skipped:
                    raise InputError(f"the prompt names embedding {name!r}, which could not be loaded: "
                                     f"{self.skipped[name]}")
                return self.loaded[name].vectors, len(name_ids)
        return None
