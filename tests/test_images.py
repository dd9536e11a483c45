"""A1111 `parameters` text: write, parse, and atomic PNG saving."""

import os

import pytest
from PIL import Image

from sumie.errors import InputError
from sumie.images import format_parameters, parse_parameters, read_parameters, save_png


def test_format_matches_a1111_layout():
    text = format_parameters("a cat", "blurry", Steps=20, Sampler="Euler a", Schedule_type="Karras", CFG_scale=7.5,
                             Seed=42, Size="512x768", Model_hash="0123456789", Model="v1-5", Version="sumie 0.1.0")
    assert text == ("a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, "
                    "CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: 0123456789, Model: v1-5, "
                    "Version: sumie 0.1.0")
    assert "Negative prompt" not in format_parameters("a cat", "", Steps=1, Sampler="DDIM", Seed=1)


@pytest.mark.parametrize("prompt,negative", [
    ("a cat, on a mat: 'quoted' \"double\"", "low quality, jpeg artifacts"),
    ("line one\nline two", ""),
    ("", "only negative"),
    ("Steps: 5 in the prompt", "Negative prompt: nested"),
])
def test_round_trip(prompt, negative):
    text = format_parameters(prompt, negative, Steps=20, Sampler="DPM++ 2M", CFG_scale=7, Seed=1, Model='a, "b"')
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert (parsed["Steps"], parsed["Sampler"], parsed["Seed"], parsed["Model"]) == ("20", "DPM++ 2M", "1", 'a, "b"')


def test_parse_text_from_a1111():
    text = ("masterpiece, 1girl\nNegative prompt: lowres\nSteps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, "
            "Seed: 123, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
            'Lora hashes: "a: 1, b: 2", Version: v1.6.0')
    parsed = parse_parameters(text)
    assert parsed["Sampler"] == "DPM++ 2M Karras" and parsed["Lora hashes"] == "a: 1, b: 2"
    assert parsed["Version"] == "v1.6.0" and parsed["Prompt"] == "masterpiece, 1girl"


def test_save_is_atomic_and_never_overwrites(tmp_path):
    path = save_png(Image.new("RGB", (4, 4), "red"), tmp_path / "a.png", "p\nSteps: 1, Sampler: DDIM, Seed: 1")
    assert read_parameters(path).startswith("p\n")
    with pytest.raises(FileExistsError):
        save_png(Image.new("RGB", (4, 4), "blue"), path, "other")
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0)
    assert os.listdir(tmp_path) == ["a.png"]  # no temp file left behind
    save_png(Image.new("RGB", (4, 4), "blue"), path, "other", overwrite=True)
    assert read_parameters(path) == "other" and os.listdir(tmp_path) == ["a.png"]


def test_read_parameters_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a readable image"):
        read_parameters(tmp_path / "junk.png")
