"""Prompts as AUTOMATIC1111 reads them: text -> the conditioning tensors the UNet sees.

The syntax (A1111's wiki, "Features": attention/emphasis, prompt editing, alternating words, BREAK), as its
prompt parser documents it:

- `(x)` multiplies x's weight by 1.1, `[x]` divides it by 1.1, `(x:1.3)` multiplies it by 1.3; nesting
  multiplies; an unclosed bracket runs to the end of the prompt; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal;
  a malformed weight such as `(x:abc)` is text, and its bracket still weighs 1.1;
- `BREAK` starts a new chunk of 75 tokens;
- `[from:to:when]` is `from` up to step `when` and `to` after it (`[to:when]`: nothing, then `to`); `when` is
  a step number, or with a decimal point a fraction of the steps. `[a|b]` alternates a and b every step.

The text of each step is split into chunks of 75 tokens, each encoded as BOS + 75 tokens + EOS on its own and
concatenated along the sequence: (1, 77 * k, D). A chunk ends early after its last comma when that comma is
at most 20 tokens back (A1111's "comma padding backtrack"). Each token's hidden state is multiplied by its
weight, then the chunk is rescaled to its unweighted mean (A1111's "Original" emphasis).

`AND` (composable prompts) is not implemented: the word is read as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import InputError

ROUND, SQUARE = 1.1, 1 / 1.1  # emphasis multipliers of ( ) and [ ]
CHUNK = 75  # tokens per chunk, between BOS and EOS
COMMA_BACKTRACK = 20
EMPHASES = ("original", "none")
SYNTAXES = ("plain", "a1111")

# The tokens of the emphasis syntax: escapes, brackets, `:weight)`, text without brackets or colons, a colon.
_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A prompt -> (text, weight) runs, adjacent runs of equal weight merged; ("BREAK", -1) marks a break."""
    runs: list[list] = []  # [text, weight]
    open_round: list[int] = []  # index of the first run inside each unclosed bracket
    open_square: list[int] = []

    def weigh(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):  # an escaped character, or a lone backslash (dropped)
            runs.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(runs))
        elif token == "[":
            open_square.append(len(runs))
        elif weight is not None and open_round and _is_number(weight):
            weigh(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            weigh(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            weigh(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    runs.append(["BREAK", -1])
                runs.append([part, 1.0])
    for start in open_round:
        weigh(start, ROUND)
    for start in open_square:
        weigh(start, SQUARE)
    merged: list[list] = []
    for run in runs or [["", 1.0]]:
        if merged and merged[-1][1] == run[1] and run[1] != -1:
            merged[-1][0] += run[0]
        else:
            merged.append(list(run))
    return [(t, w) for t, w in merged]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# Prompt editing and alternation: which text each step sees.
# A node is a str (literal text), ("sched", before, after, when) or ("alt", [options]); before/after/options
# are node lists. Brackets that are emphasis stay literal text here: parse_attention reads them later.
# ---------------------------------------------------------------------------------------------------
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*]")


class _NoParse(Exception):
    pass


def _prompt(s: str, i: int) -> tuple[list, int]:
    """The longest prompt (text, whitespace, emphasis, editing, alternation) from s[i]: (nodes, end)."""
    nodes: list = []
    while i < len(s):
        m = _PLAIN.match(s, i)
        if m:
            nodes.append(m.group(0))
            i = m.end()
        elif s[i] in "([":
            try:
                node, i = (_round if s[i] == "(" else _square)(s, i)
            except _NoParse:
                break
            nodes.append(node)
        else:
            break
    return nodes, i


def _round(s: str, i: int) -> tuple[list, int]:
    """`(prompt)` or `(prompt:prompt)`, kept as literal text around its parts."""
    inner, j = _prompt(s, i + 1)
    parts = ["(", *inner]
    if j < len(s) and s[j] == ":":
        weight, j = _prompt(s, j + 1)
        parts += [":", *weight]
    if j < len(s) and s[j] == ")":
        return [*parts, ")"], j + 1
    raise _NoParse


def _square(s: str, i: int) -> tuple[object, int]:
    """`[from:to:when]`, `[to:when]`, `[a|b|...]`, or `[prompt]` (emphasis, literal)."""
    first, j = _prompt(s, i + 1)
    if j < len(s) and s[j] == "|":
        options = [first]
        while j < len(s) and s[j] == "|":
            option, j = _prompt(s, j + 1)
            options.append(option)
        if j < len(s) and s[j] == "]":
            return ("alt", options), j + 1
        raise _NoParse
    if j < len(s) and s[j] == ":":
        when = _NUMBER.match(s, j + 1)
        if when:  # [to:when]
            return ("sched", [], first, when.group(1)), when.end()
        second, k = _prompt(s, j + 1)
        if k < len(s) and s[k] == ":":
            when = _NUMBER.match(s, k + 1)
            if when:
                return ("sched", first, second, when.group(1)), when.end()
        raise _NoParse
    if j < len(s) and s[j] == "]":
        return ["[", *first, "]"], j + 1
    raise _NoParse


def _parse_schedule(prompt: str) -> list:
    """The whole prompt as nodes; brackets that open nothing are literal text (A1111 allows them at the top)."""
    nodes, i = [], 0
    while i < len(prompt):
        part, j = _prompt(prompt, i)
        nodes += part
        if j == i:  # a bracket, colon or bar that opens nothing here: literal text
            if prompt[i] == "|":
                raise _NoParse  # a bar outside alternation: A1111's parser fails, and the prompt is taken as it is
            nodes.append(prompt[i])
            j = i + 1
        i = j
    return nodes


def _steps_of(nodes: list, steps: int, out: set) -> None:
    for node in nodes:
        if isinstance(node, list):
            _steps_of(node, steps, out)
        elif isinstance(node, tuple) and node[0] == "sched":
            _, before, after, when = node
            v = float(when) * steps if "." in when else float(when)
            node_step = min(steps, int(v))
            if node_step >= 1:
                out.add(node_step)
            _steps_of(before, steps, out)
            _steps_of(after, steps, out)
        elif isinstance(node, tuple):
            out.update(range(1, steps + 1))
            for option in node[1]:
                _steps_of(option, steps, out)


def _text_at(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_text_at(node, step, steps))
        elif node[0] == "sched":
            _, before, after, when = node
            v = float(when) * steps if "." in when else float(when)
            out.append(_text_at(before if step <= min(steps, int(v)) else after, step, steps))
        else:
            options = node[1]
            out.append(_text_at(options[(step - 1) % len(options)], step, steps))
    return "".join(out)


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text)]: the text each step sees, steps counted from 1 (A1111's prompt schedule). Step s
    uses the first entry whose last step is >= s."""
    try:
        nodes = _parse_schedule(prompt)
    except _NoParse:
        return [(steps, prompt)]
    ends: set = {steps}
    _steps_of(nodes, steps, ends)
    return [(end, _text_at(nodes, end, steps)) for end in sorted(ends)]


# ---------------------------------------------------------------------------------------------------
# Chunks: weighted runs -> tokens of 75, with embeddings in place of their names.
# ---------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """One text-encoder call's worth: tokens (BOS + 75 + EOS), a weight per token, and embedding vectors
    that replace the token embeddings at their offsets."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    vectors: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset, (n, D))


def chunks(tokenizer, runs: list[tuple[str, float]], embeddings=None,
           backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """Weighted runs -> chunks of 77 tokens (A1111's tokenize_line): BREAK and a full chunk start a new one;
    a full chunk whose last comma is at most `backtrack` tokens back ends after that comma; an embedding's
    vectors are never split across chunks."""
    comma = tokenizer.tokenize([","])[0][0]
    done: list[Chunk] = []
    chunk, last_comma = Chunk(), -1

    def close() -> None:
        nonlocal chunk, last_comma
        pad = CHUNK - len(chunk.tokens)
        chunk.tokens = [tokenizer.bos_token_id, *chunk.tokens, *[tokenizer.eos_token_id] * pad, tokenizer.eos_token_id]
        chunk.weights = [1.0, *chunk.weights, *[1.0] * pad, 1.0]
        chunk.vectors = [(offset + 1, v) for offset, v in chunk.vectors]
        done.append(chunk)
        chunk, last_comma = Chunk(), -1

    texts = [text for text, _ in runs]
    for ids, (_, weight) in zip(tokenizer.tokenize(texts), runs):
        if weight == -1:  # BREAK
            close()
            continue
        i = 0
        while i < len(ids):
            if ids[i] == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= backtrack:
                cut = last_comma + 1
                moved = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                close()
                chunk.tokens, chunk.weights = list(moved[0]), list(moved[1])
            if len(chunk.tokens) == CHUNK:
                close()
            found = embeddings.at(ids, i) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(ids[i])
                chunk.weights.append(weight)
                i += 1
                continue
            vectors, name_length = found
            if len(chunk.tokens) + len(vectors) > CHUNK:
                close()
            chunk.vectors.append((len(chunk.tokens), vectors))
            chunk.tokens += [0] * len(vectors)
            chunk.weights += [weight] * len(vectors)
            i += name_length
    if chunk.tokens or not done:
        close()
    return done


def plain_chunk(tokenizer, prompt: str, embeddings=None) -> Chunk:
    """diffusers' reading: the whole prompt as text in one chunk, cut at 77 tokens with a TruncationWarning."""
    ids = tokenizer.encode([prompt]).input_ids[0].tolist()
    chunk = Chunk(ids, [1.0] * len(ids))
    if embeddings is not None:  # each name's tokens give way to its vectors (diffusers' maybe_convert_prompt)
        body = ids[1:ids.index(tokenizer.eos_token_id, 1)]
        tokens, i = [], 0
        while i < len(body):
            found = embeddings.at(body, i)
            if found is None:
                tokens.append(body[i])
                i += 1
            else:
                chunk.vectors.append((1 + len(tokens), found[0]))
                tokens += [0] * len(found[0])
                i += found[1]
        tokens = tokens[:CHUNK]
        chunk.tokens = [tokenizer.bos_token_id, *tokens, *[tokenizer.eos_token_id] * (CHUNK + 1 - len(tokens))]
        chunk.vectors = [(o, v[:CHUNK + 1 - o]) for o, v in chunk.vectors if o <= CHUNK]
    return chunk


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------
def run_chunk(text_encoder, tokenizer, chunk: Chunk, *, hidden_states: bool = True):
    """One chunk through `text_encoder` -> its output (`text_encoder.TextEncoderOutput`). After the first EOS
    the tokens are the tokenizer's padding (SD 2's and SDXL bigG's "!"); an embedding's vectors replace the
    token embeddings at their offsets."""
    tokens = list(chunk.tokens)
    first_eos = tokens.index(tokenizer.eos_token_id, 1)
    tokens[first_eos + 1:] = [tokenizer.pad_token_id] * (len(tokens) - first_eos - 1)
    device = text_encoder.embeddings.token_embedding.weight.device
    ids = torch.tensor([tokens], device=device)
    inputs_embeds = None
    if chunk.vectors:
        inputs_embeds = text_encoder.embeddings.token_embedding(ids).clone()  # (1, 77, D)
        for offset, vectors in chunk.vectors:
            inputs_embeds[0, offset:offset + len(vectors)] = vectors.to(inputs_embeds)
    return text_encoder(ids, output_hidden_states=hidden_states, inputs_embeds=inputs_embeds)


def emphasize(z: torch.Tensor, chunk: Chunk, emphasis: str) -> torch.Tensor:
    """(1, 77, D) hidden states weighted with A1111's "Original" emphasis: z * weights, rescaled so its mean is
    the unweighted mean."""
    if emphasis == "none" or all(w == 1.0 for w in chunk.weights):
        return z
    weights = torch.tensor(chunk.weights, dtype=z.dtype, device=z.device)[None, :, None]  # (1, 77, 1)
    mean = z.mean()
    z = z * weights
    return z * (mean / z.mean())


def encode_chunk(text_encoder, tokenizer, chunk: Chunk, *, clip_skip: int | None, emphasis: str) -> torch.Tensor:
    """One chunk -> (1, 77, D): hidden states `clip_skip` layers before the last, then the final layer norm
    (diffusers' clip_skip; A1111's "Clip skip: n" is clip_skip = n - 1), with the chunk's emphasis."""
    out = run_chunk(text_encoder, tokenizer, chunk, hidden_states=bool(clip_skip))
    z = out.last_hidden_state if not clip_skip else text_encoder.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
    return emphasize(z, chunk, emphasis)


def chunks_of(tokenizer, prompt: str, syntax: str, embeddings=None) -> list[Chunk]:
    """A prompt's chunks as `syntax` reads it: "plain", one chunk cut at 77 tokens; "a1111", chunks of 75."""
    return [plain_chunk(tokenizer, prompt, embeddings)] if syntax == "plain" else \
        chunks(tokenizer, parse_attention(prompt), embeddings)


def check_options(prompt_syntax: str, emphasis: str, clip_skip) -> None:
    if prompt_syntax not in SYNTAXES:
        raise InputError(f"prompt_syntax must be one of {', '.join(SYNTAXES)} (got {prompt_syntax!r})")
    if emphasis not in EMPHASES:
        raise InputError(f"emphasis must be one of {', '.join(EMPHASES)} (got {emphasis!r})")
    if clip_skip is not None and (not isinstance(clip_skip, int) or clip_skip < 0):
        raise InputError(f"clip_skip must be a whole number >= 0 (got {clip_skip!r}); diffusers' meaning: "
                         f"1 takes the penultimate layer, A1111's 'Clip skip: 2'")


def encode(text_encoder, tokenizer, prompt: str, *, syntax: str, clip_skip: int | None, emphasis: str,
           embeddings=None) -> torch.Tensor:
    """One prompt's text (one step's, for prompt editing) -> (1, 77 * k, D), its chunks side by side."""
    return torch.cat([encode_chunk(text_encoder, tokenizer, c, clip_skip=clip_skip, emphasis=emphasis)
                      for c in chunks_of(tokenizer, prompt, syntax, embeddings)], dim=1)


def steps_of(prompt: str, steps: int, syntax: str) -> list[tuple[int, str]]:
    """[(last step, text)] as `schedule`; the plain syntax has one text for every step."""
    return [(steps, prompt)] if syntax == "plain" else schedule(prompt, steps)


def at_call(entries: list[tuple[int, torch.Tensor]], call: int) -> torch.Tensor:
    """The conditioning of model call `call` (from 0): the first entry whose last step is >= call (A1111's
    count), or the last entry past them all."""
    return next((c for end, c in entries if call <= end), entries[-1][1])


def pad_to_same_length(tensors: list[torch.Tensor], empty) -> list[torch.Tensor]:
    """(1, 77 * k_i, D) each -> (1, 77 * max k, D) each, by appending the empty prompt's chunk: empty() ->
    (1, 77, D), called only when some tensor is shorter."""
    longest = max(t.shape[1] for t in tensors)
    if all(t.shape[1] == longest for t in tensors):
        return tensors
    chunk = empty()
    return [torch.cat([t, chunk.repeat(1, (longest - t.shape[1]) // chunk.shape[1], 1)], dim=1) for t in tensors]
