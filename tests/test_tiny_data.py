"""The tiny world's data and its image-analysis judge (issue 5 groundwork)."""

import random

import numpy as np

from sumie.tiny.data import COLORS, HELD_OUT, Scene, all_scenes, sample, training_caption
from sumie.tiny.evaluate import read, score, table


def test_splits_and_determinism():
    train, held = all_scenes(), all_scenes(held_out=True)
    assert len(train) + len(held) == 8 * 7 * 3 * 2 * 5
    assert not {(s.color, s.shape) for s in train} & HELD_OUT
    assert {(s.color, s.shape) for s in held} == HELD_OUT
    assert all(s.color != s.background for s in train + held)
    assert sample(50, seed=1) == sample(50, seed=1) != sample(50, seed=2)
    assert np.array_equal(train[7].render(), train[7].render())


def test_captions():
    scene = Scene("blue", "red", "circle", "small", "top left")
    assert scene.caption() == "a small red circle in the top left corner on a blue background"
    assert Scene("blue", "red", "circle", "small", "center").caption() == \
        "a small red circle in the center on a blue background"
    rng = random.Random(0)
    forms = {training_caption(scene, rng) for _ in range(200)}
    assert scene.caption() in forms and "a red circle, blue background" in forms and len(forms) == 5


def test_judge_reads_every_scene_exactly():
    for held_out in (False, True):
        scenes = all_scenes(held_out=held_out)
        assert score(scenes, [s.render() for s in scenes]) == dict.fromkeys(
            ["background", "color", "shape", "position", "size", "all"], 1.0)


def test_judge_tolerates_noise_and_catches_mistakes():
    scenes = sample(300, seed=3)
    rng = np.random.default_rng(0)
    noisy = [np.clip(s.render() + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8) for s in scenes]
    assert score(scenes, noisy)["all"] >= 0.95
    wrong = [Scene(s.background, next(c for c in COLORS if c not in (s.color, s.background)), s.shape, s.size,
                   s.position) for s in scenes]
    result = score(wrong, [s.render() for s in scenes])
    assert result["color"] == 0 and result["background"] == 1 and result["all"] == 0
    blank = np.full((64, 64, 3), COLORS["blue"], dtype=np.uint8)
    assert read(blank).shape is None
    assert "| train | 100% |" in table({"train": dict.fromkeys(["background", "color", "shape", "position", "size",
                                                                  "all"], 1.0)})


def test_the_judge_that_knows_the_diamond_reads_it_and_every_old_shape():
    """The LoRA demonstration's judge (evaluate.EXTENDED): every diamond scene read as a diamond, every scene of the
    world still read exactly, noisy images nearly so; the plain judge has no diamonds."""
    from sumie.tiny.evaluate import EXTENDED
    from sumie.tiny.lora_demo import new_scenes
    diamonds = new_scenes()
    assert len(diamonds) == 560 and score(diamonds, [s.render() for s in diamonds], EXTENDED)["all"] == 1.0
    assert score(diamonds, [s.render() for s in diamonds])["shape"] == 0
    for held_out in (False, True):
        scenes = all_scenes(held_out=held_out)
        assert score(scenes, [s.render() for s in scenes], EXTENDED)["all"] == 1.0
    scenes = sample(300, seed=3) + diamonds[::5]
    rng = np.random.default_rng(0)
    noisy = [np.clip(s.render() + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8) for s in scenes]
    assert score(scenes, noisy, EXTENDED)["shape"] >= 0.95
