"""CLIP's byte-level BPE tokenizer (Radford et al. 2021; Sennrich et al. 2016), on the `tokenizers` library.

Text is NFC-normalised, whitespace-collapsed and lower-cased, split into words, numbers-as-digits and
punctuation runs, mapped to bytes-as-unicode (GPT-2's trick) and merged by BPE with a `</w>` marker at
word ends. A prompt becomes [BOS] + up to 75 tokens + [EOS], padded to 77 with the folder's pad token
(SD 1.x: `<|endoftext|>`, SD 2.x: `!`). As in transformers, every special token of the folder is
matched whole in the text, so under SD 2 "!!!" becomes three "!" tokens rather than one. Truncation is never silent: it raises a TruncationWarning
naming the dropped words.

The standard CLIP vocabulary (49408 tokens) ships with sumie as `data/bpe_simple_vocab_16e6.txt.gz`,
the merges file OpenAI's CLIP and open-clip-torch distribute; vocab.json/merges.txt derive from it.
"""

from __future__ import annotations

import functools
import gzip
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .config import read_json
from .errors import ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BPE_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the file
# One pre-token per: special token, English contraction, letter run, single digit, punctuation run.
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TruncationWarning(UserWarning):
    """A prompt was longer than the text encoder's context; the warning names the dropped words."""


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (Radford et al. 2019, sec. 2.2)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order: printable bytes first, as in CLIP's vocabulary


@functools.lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """-> (vocab, merges) of the standard CLIP tokenizer, derived from the shipped BPE file.

    Vocabulary order: 256 byte symbols, the same with `</w>`, one token per merge, then BOS and EOS.
    """
    lines = gzip.open(BPE_FILE, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    symbols = list(byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_vocab_files(folder: str | Path, *, pad_token: str = EOS) -> None:
    """Write the standard vocabulary in the published SD `tokenizer/` layout (vocab.json, merges.txt,
    tokenizer_config.json and special_tokens_map.json, with AddedToken dicts as transformers 4.x wrote them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    added = lambda s: {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    specials = {"bos_token": added(BOS), "eos_token": added(EOS), "unk_token": added(EOS), "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
              "tokenizer_class": "CLIPTokenizer", **{k: {"__type": "AddedToken", **v} if isinstance(v, dict) else v
                                                     for k, v in specials.items()}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _token_text(value, source: str) -> str | None:
    """A special token as configs spell it: a string, or an AddedToken dict with `content`."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"{source}: cannot read special token {value!r}")


@dataclass
class Encoding:
    """The tokenizer's answer, shaped like transformers' BatchEncoding where the tutorial uses it."""

    input_ids: torch.Tensor | list
    attention_mask: torch.Tensor | list
    truncated: list[str]  # per prompt: the dropped text ("" when nothing was dropped)

    def __getitem__(self, key):
        return getattr(self, key)


class CLIPTokenizer:
    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *, bos_token: str = BOS,
                 eos_token: str = EOS, pad_token: str = EOS, unk_token: str = EOS, model_max_length: int = 77):
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if tok not in vocab:
                raise ConfigError(f"tokenizer: {name} {tok!r} is not in the vocabulary")
        self.model_max_length = model_max_length
        bpe = BPE(vocab=vocab, merges=merges, unk_token=unk_token, end_of_word_suffix="</w>",
                  continuing_subword_prefix="", fuse_unk=False)
        self._tok = tok = Tokenizer(bpe)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.add_special_tokens([AddedToken(t, special=True, normalized=True)
                                for t in dict.fromkeys((bos_token, eos_token, unk_token, pad_token))])
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            vocab[bos_token], vocab[eos_token], vocab[pad_token])
        self.pad_token = pad_token

    @classmethod
    def standard(cls, *, pad_token: str = EOS) -> "CLIPTokenizer":
        """The shipped CLIP vocabulary, for single-file checkpoints and the embedded model."""
        vocab, merges = clip_vocabulary()
        return cls(vocab, merges, pad_token=pad_token)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """Read a `tokenizer/` folder: vocab.json + merges.txt (published SD layout) or tokenizer.json
        (transformers >= 5), with special tokens from tokenizer_config.json / special_tokens_map.json."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; expected a tokenizer/ subfolder with vocab.json "
                              f"and merges.txt, or tokenizer.json")
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = read_json(folder / "vocab.json")
            lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        elif (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json").get("model") or {}
            vocab, merges = model.get("vocab"), model.get("merges")
            if not isinstance(vocab, dict) or not isinstance(merges, list):
                raise ConfigError(f"{folder / 'tokenizer.json'} has no BPE vocab and merges")
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
        else:
            raise ConfigError(f"{folder} has neither vocab.json + merges.txt nor tokenizer.json")
        specials = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
            if (folder / name).is_file():
                raw = read_json(folder / name)
                for key in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length"):
                    if raw.get(key) is not None:
                        specials[key] = raw[key]
        max_len = specials.pop("model_max_length", 77)
        kwargs = {k: _token_text(v, str(folder)) for k, v in specials.items()}
        return cls(vocab, [m for m in merges if len(m) == 2], model_max_length=min(int(max_len), 77), **kwargs)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS, padding or truncation."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text (lower-cased, as the tokenizer saw it)."""
        to_byte = unicode_to_byte()
        text = "".join(self._tok.id_to_token(i) for i in ids if i not in (self.bos_token_id, self.eos_token_id))
        words = [bytes(to_byte.get(c, 32) for c in w).decode("utf-8", errors="replace") for w in text.split("</w>")]
        return " ".join(w for w in words if w)

    def encode(self, prompts: str | list[str], *, max_length: int | None = None) -> Encoding:
        """prompts -> (B, max_length) ids: BOS, tokens, EOS, then padding. Warns with the dropped words."""
        return self(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")

    def __call__(self, text: str | list[str], padding: bool | str = False, max_length: int | None = None,
                 truncation: bool = False, return_tensors: str | None = None, **_ignored) -> Encoding:
        """transformers' calling convention: padding "max_length" / "longest" / False, truncation, "pt"."""
        texts = [text] if isinstance(text, str) else list(text)
        max_length = max_length or self.model_max_length
        rows, dropped = [], []
        for ids in self.tokenize(texts):
            keep = max_length - 2
            cut = ids[keep:] if truncation else []
            dropped.append(self.decode(cut) if cut else "")
            rows.append([self.bos_token_id] + (ids[:keep] if truncation else ids) + [self.eos_token_id])
        for words in dropped:
            if words:
                warnings.warn(f"prompt is longer than {max_length} tokens; dropped: {words!r}",
                              TruncationWarning, stacklevel=2)
        width = max_length if padding == "max_length" else max(map(len, rows)) if padding else 0
        masks = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        if return_tensors == "pt":
            rows, masks = torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long)
        elif isinstance(text, str):
            rows, masks = rows[0], masks[0]
        return Encoding(rows, masks, dropped)
