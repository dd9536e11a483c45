"""Token ids equal transformers' CLIPTokenizer on varied prompts, in both folder layouts."""

import random
import warnings

import pytest

from sumie.errors import ConfigError
from sumie.tokenizer import CLIPTokenizer, TruncationWarning, clip_vocabulary, write_vocab_files

HANDWRITTEN = [
    "", " ", "   ", "\t\n", "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT", "café crème brûlée, naïve façade", "Ångström résumé coöperate",
    "東京の夜景、ネオン", "一只猫坐在窗台上", "서울의 밤거리", "ｆｕｌｌ－ｗｉｄｔｈ　ｔｅｘｔ　１２３",
    "emoji 🐱🚀✨ party 🎉🎉", "👩‍👩‍👧‍👦 family", "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;",
    "!!!???...,,,;;;", "wow!!! really?! yes...", "((masterpiece)), [[best quality]], {detailed}",
    "numbers 1234567890 3.14159 1e10 0x1F", "it's they're we've I'm you'll he'd don't",
    "IT'S THEY'RE", "rock'n'roll o'clock", "  leading and trailing spaces  ", "multiple     internal     spaces",
    "tabs\tand\nnewlines\r\nmixed", "<|startoftext|> inside", "ends with <|endoftext|>", "a/b\\c|d_e-f+g=h",
    "email@example.com http://example.com/path?q=1", "snake_case camelCase PascalCase kebab-case",
    "Ünïcödé ÀÉÎÕÜ ßẞ", "Ελληνικά κείμενο", "русский текст", "עברית", "العربية", "हिन्दी",
    "mixed日本語and English", "zero\u200bwidth", "non\u00a0breaking", "combining e\u0301 vs é",
    "fi ligature ﬁ", "½ ¼ ² ³", "©®™", "$100 €50 £20 ¥1000", "#hashtag @mention", "~`^*",
    "a " * 100, "word " * 80, "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def generated_prompts(n=300, seed=0):
    rng = random.Random(seed)
    words = ("portrait landscape photo of a cat dog castle cyberpunk city at night, highly detailed 8k "
             "trending on artstation by greg rutkowski oil painting watercolor sunset mountains lake "
             "(epic:1.2) [blurry] 4K HDR ultra-realistic octane render 50mm f/1.8 bokeh").split()
    extras = ["café", "東京", "🐱", "&amp;", "!!!", "...", "'s", "１２３", "  ", "\n", "ÀÉ", "x2", "—", "“quotes”"]
    out = []
    for i in range(n):
        k = rng.choice([1, 3, 8, 20, 60, 90])
        toks = [rng.choice(words + extras) for _ in range(k)]
        sep = rng.choice([" ", ", ", " ", "  ", ","])
        s = sep.join(toks)
        if i % 7 == 0:
            s = s.upper()
        if i % 11 == 0:
            s = "  " + s + " \t"
        out.append(s)
    return out


PROMPTS = HANDWRITTEN + generated_prompts()


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["sd1-pad", "sd2-pad"])
def published(request, tmp_path_factory):
    """A tokenizer folder in the published layout (vocab.json + merges.txt + AddedToken-dict configs)."""
    folder = tmp_path_factory.mktemp("tok")
    write_vocab_files(folder, pad_token=request.param)
    return folder


def reference_ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=77, truncation=True).input_ids


def test_vocabulary_size():
    vocab, merges = clip_vocabulary()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab["a</w>"] == 320


def test_published_layout_matches_transformers(published):
    from transformers import CLIPTokenizer as Ref
    assert len(PROMPTS) >= 300
    theirs = reference_ids(Ref.from_pretrained(published), PROMPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        ours = CLIPTokenizer.from_folder(published).encode(PROMPTS).input_ids.tolist()
    mismatches = [(p, a, b) for p, a, b in zip(PROMPTS, ours, theirs) if a != b]
    assert not mismatches, mismatches[:3]


def test_oracle_written_layout_matches(published, tmp_path):
    """transformers >= 5 saves tokenizer.json + tokenizer_config.json only; we read that too."""
    from transformers import CLIPTokenizer as Ref
    ref = Ref.from_pretrained(published)
    ref.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    ours = CLIPTokenizer.from_folder(tmp_path)
    assert ours.pad_token == ref.pad_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        assert ours.encode(PROMPTS).input_ids.tolist() == reference_ids(ref, PROMPTS)


def test_pad_token_from_folder(published):
    tok = CLIPTokenizer.from_folder(published)
    ids = tok.encode("a cat").input_ids[0].tolist()
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert set(ids[4:]) == {tok.pad_token_id}
    assert tok.pad_token_id in (49407, 0)


def test_truncation_warns_with_dropped_words():
    tok = CLIPTokenizer.standard()
    prompt = "a " * 75 + "purple elephant"
    with pytest.warns(TruncationWarning, match="purple elephant"):
        enc = tok.encode(prompt)
    assert enc.input_ids.shape == (1, 77) and enc.input_ids[0, -1].item() == 49407
    assert enc.truncated == ["purple elephant"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode("a " * 75).truncated == [""]  # exactly fits: no warning


def test_standard_equals_published(published):
    """The shipped vocabulary is the published one. (With SD 2's pad token "!" registered as a special
    token, transformers splits "!!!" into single "!" tokens; we match that, so compare only SD 1's.)"""
    if CLIPTokenizer.from_folder(published).pad_token == "!":
        pytest.skip("SD 2 pad token changes punctuation splitting by design")
    assert CLIPTokenizer.standard().tokenize(PROMPTS[:50]) == CLIPTokenizer.from_folder(published).tokenize(PROMPTS[:50])


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(ConfigError, match="neither vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
