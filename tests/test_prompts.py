"""`prompts`: A1111's prompt syntax. The grammar against A1111's published examples and cases of our own;
long prompts, BREAK and weights against their definitions on the text encoder's own outputs; clip skip
against diffusers."""

import numpy as np
import pytest
import torch

from sumie import prompts
from sumie.pipeline import StableDiffusionPipeline

R, S = 1.1, 1 / 1.1
ATTENTION = [  # (prompt, runs); the first six are A1111's published examples of parse_prompt_attention
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", 1.0), (" a ", R), ("hill", 0.55), (", sun, ", R),
      ("sky", R * R * R * R), (".", R)]),
    ("", [("", 1.0)]),
    ("[less]", [("less", S)]),
    ("[[less]]", [("less", S * S)]),
    ("(x:1.5)", [("x", 1.5)]),
    ("(x: 1.5 )", [("x", 1.5)]),
    ("(x:-0.5)", [("x", -0.5)]),
    ("((x:2))", [("x", 2 * R)]),
    ("((x):2)", [("x", 2 * R)]),
    ("[(x:2)]", [("x", 2 * S)]),
    ("(x:abc)", [("x:abc", R)]),  # a malformed weight is text; its bracket still weighs 1.1
    ("x:1.2", [("x:1.2", 1.0)]),
    ("x:1.2)", [("x:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("a ) b ] c", [("a ) b ] c", 1.0)]),  # closing brackets with nothing open are text
    ("[unbalanced", [("unbalanced", S)]),
    ("((a) b", [("a", R * R), (" b", R)]),
    (r"\\", [("\\", 1.0)]),
    (r"\[x\]", [("[x]", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("(a BREAK b)", [("a", R), ("BREAK", -R), ("b", R)]),  # as in A1111, a bracket weighs BREAK too: then text
    ("BREAKFAST", [("BREAKFAST", 1.0)]),
    ("a AND b", [("a AND b", 1.0)]),  # composable prompts are not implemented: AND is text
    ("(red:1.2), (red:1.2)", [("red", 1.2), (", ", 1.0), ("red", 1.2)]),
    ("(a)(b)", [("ab", R)]),  # adjacent runs of equal weight merge
]
SCHEDULES = [  # (prompt, [(last step, text)]) at 10 steps: A1111's published examples, then ours
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    ("[red:blue:0.5] ball", [(5, "red ball"), (10, "blue ball")]),
    ("[red:blue:20]", [(10, "red")]),  # past the last step: never switches
    ("[red:blue:0]", [(10, "blue")]),
    ("[red:blue:2.5]", [(10, "red")]),  # a decimal point makes a fraction: 25 steps
    ("(a [b:c:5])", [(5, "(a b)"), (10, "(a c)")]),
    ("a | b", [(10, "a | b")]),  # a bar outside alternation: taken as it is
    (r"\[a:b:3\]", [(10, r"\[a:b:3\]")]),
]


@pytest.mark.parametrize("prompt,runs", ATTENTION, ids=[p for p, _ in ATTENTION])
def test_attention_runs(prompt, runs):
    got = prompts.parse_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert np.allclose([w for _, w in got], [w for _, w in runs])


@pytest.mark.parametrize("prompt,expected", SCHEDULES, ids=[p for p, _ in SCHEDULES])
def test_prompt_editing_and_alternation(prompt, expected):
    assert prompts.schedule(prompt, 10) == expected


def test_a_model_call_uses_the_schedule_entry_that_covers_it():
    entries = [(3, "a"), (10, "b")]
    assert [prompts.at_call(entries, c) for c in (0, 3, 4, 9, 12)] == ["a", "a", "b", "b", "b"]


@pytest.fixture(scope="module")
def pipes(sd1_folder, sd2_folder):
    out = {}
    for kind, folder in (("sd1", sd1_folder), ("sd2", sd2_folder)):
        out[kind] = StableDiffusionPipeline.from_pretrained(folder)
        out[kind].set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_a_plain_prompt_gives_the_plain_conditioning_bit_for_bit(pipes, kind):
    pipe = pipes[kind]
    text = "a photograph of an astronaut riding a horse on the moon, " * 5  # 70 tokens with commas
    for syntax in ("plain", "a1111"):
        cond, uncond = pipe.encode_prompt(text, "blurry", prompt_syntax=syntax)
        assert cond.shape == uncond.shape == (1, 77, pipe.text_encoder.config.hidden_size)
        if syntax == "plain":
            plain = cond, uncond
    assert torch.equal(cond, plain[0]) and torch.equal(uncond, plain[1])
    ids = pipe.tokenizer.encode([text]).input_ids
    assert torch.equal(plain[0], pipe.text_encoder(ids).last_hidden_state)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_a_long_prompt_is_its_chunks_encoded_on_their_own(pipes, kind):
    pipe = pipes[kind]
    words = ["cat", "dog", "red", "tree", "house"] * 30  # 150 tokens, no commas: two chunks of 75
    first, second = " ".join(words[:75]), " ".join(words[75:])
    cond, uncond = pipe.encode_prompt(" ".join(words), prompt_syntax="a1111")
    assert cond.shape[1] == uncond.shape[1] == 154
    assert torch.equal(cond[:, :77], pipe.encode_prompt(first)[0])
    assert torch.equal(cond[:, 77:], pipe.encode_prompt(second)[0])
    empty = pipe.encode_prompt("")[0]
    assert torch.equal(uncond, torch.cat([empty, empty], dim=1))  # the negative is padded with empty chunks
    break_cond = pipe.encode_prompt("a red circle BREAK a blue square", prompt_syntax="a1111")[0]
    assert torch.equal(break_cond, torch.cat([pipe.encode_prompt("a red circle")[0],
                                              pipe.encode_prompt("a blue square")[0]], dim=1))
    with pytest.warns(UserWarning, match="longer than 77 tokens"):  # the plain syntax cuts, as diffusers does
        assert pipe.encode_prompt(" ".join(words))[0].shape[1] == 77


def test_a_full_chunk_ends_after_its_last_comma_when_it_is_close(pipes):
    tok = pipes["sd1"].tokenizer
    words = ["cat"] * 70 + [","] + ["dog"] * 10  # the comma is token 71: 4 tokens back from the 75th
    parts = prompts.chunks(tok, [(" ".join(words), 1.0)])
    cat, dog, comma = (tok.tokenize([w])[0][0] for w in ("cat", "dog", ","))
    assert parts[0].tokens[1:72] == [cat] * 70 + [comma] and parts[0].tokens[72:] == [tok.eos_token_id] * 5
    assert parts[1].tokens[1:11] == [dog] * 10
    far = prompts.chunks(tok, [(" ".join(["cat"] * 50 + [","] + ["dog"] * 30), 1.0)])  # 25 back: no backtrack
    assert far[0].tokens[75] == dog and len(far) == 2
    assert prompts.chunks(tok, [(" ".join(words), 1.0)], backtrack=0)[0].tokens[72:76] == [dog] * 4


def test_weights_scale_the_hidden_states_and_keep_their_mean(pipes):
    pipe = pipes["sd1"]
    z = pipe.encode_prompt("a red circle")[0]  # tokens: BOS a red circle EOS ...
    weighted = pipe.encode_prompt("a (red:1.5) [circle]", prompt_syntax="a1111")[0]
    w = torch.ones(1, 77, 1)
    w[0, 2], w[0, 3] = 1.5, 1 / 1.1
    expected = z * w * (z.mean() / (z * w).mean())
    assert torch.allclose(weighted, expected, atol=1e-6) and not torch.allclose(weighted, z, atol=1e-3)
    none = pipe.encode_prompt("a (red:1.5) [circle]", prompt_syntax="a1111", emphasis="none")[0]
    assert torch.equal(none, z)


def test_prompt_editing_changes_the_conditioning_between_steps(pipes):
    """[red:blue:when] is `red` up to model call `when`, then `blue`; past the last step it never switches."""
    pipe = pipes["sd1"]
    kw = dict(num_inference_steps=4, seed=3, output_type="latent", scheduler="euler", prompt_syntax="a1111")
    seen = []
    unet = pipe.unet.forward

    def spy(x, t, encoder_hidden_states):
        seen.append(encoder_hidden_states[1:].clone())  # the prompt's half of the guided batch
        return unet(x, t, encoder_hidden_states)

    pipe.unet.forward = spy
    try:
        pipe("a [red:blue:1] circle", **kw)
    finally:
        del pipe.unet.forward
    red, blue = (pipe.encode_prompt(f"a {c} circle")[0] for c in ("red", "blue"))
    assert [torch.equal(s, red) for s in seen] == [True, True, False, False]
    assert all(torch.equal(s, blue) for s in seen[2:])
    never = pipe("a [red:blue:9] circle", **kw).images
    assert torch.equal(never, pipe("a red circle", **kw).images)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_clip_skip_equals_diffusers(pipes, sd1_folder, sd2_folder, kind, clip_skip):
    """diffusers' clip_skip: the prompt's hidden states clip_skip + 1 from the end, then the final layer norm;
    the negative prompt's last hidden state. diffusers 0.42 reaches the norm as `text_encoder.text_model`, which
    transformers 5 no longer has, so the formula runs here on the oracle's own text encoder, and diffusers'
    pipeline takes the result as prompt_embeds."""
    import diffusers
    folder, pipe = {"sd1": sd1_folder, "sd2": sd2_folder}[kind], pipes[kind]
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    ids = [theirs.tokenizer(t, padding="max_length", max_length=77, return_tensors="pt").input_ids
           for t in ("a red circle", "blurry")]
    with torch.no_grad():
        states = theirs.text_encoder(ids[0], output_hidden_states=True).hidden_states
        ref = theirs.text_encoder.final_layer_norm(states[-(clip_skip + 1)]), theirs.text_encoder(ids[1])[0]
    cond, uncond = pipe.encode_prompt("a red circle", "blurry", clip_skip=clip_skip)
    assert torch.allclose(cond, ref[0], atol=1e-5) and torch.allclose(uncond, ref[1], atol=1e-5)
    assert not torch.allclose(cond, pipe.encode_prompt("a red circle")[0], atol=1e-3)  # the skip changes it
    a = theirs(prompt_embeds=ref[0], negative_prompt_embeds=ref[1], num_inference_steps=3,
               generator=torch.Generator().manual_seed(5), output_type="np").images
    b = pipe("a red circle", negative_prompt="blurry", num_inference_steps=3, clip_skip=clip_skip,
             generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs(a - b).max() * 255 <= 2
    a1111_uncond = pipe.encode_prompt("a red circle", "blurry", clip_skip=clip_skip, prompt_syntax="a1111")[1]
    assert not torch.allclose(a1111_uncond, uncond, atol=1e-3)  # A1111 skips in the negative prompt too


def test_a_long_prompt_costs_one_text_encoder_call_per_chunk_and_nothing_per_step(pipes):
    pipe = pipes["sd1"]
    calls = []
    hook = pipe.text_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    try:
        for steps in (2, 6):
            calls.clear()
            pipe("cat dog " * 75, num_inference_steps=steps, seed=0, output_type="latent", prompt_syntax="a1111")
            assert calls == [(1, 77)] * 3, steps  # the prompt's two chunks, the empty negative prompt's one
    finally:
        hook.remove()
