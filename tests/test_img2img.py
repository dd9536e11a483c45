"""`img2img`: A1111's resize modes, mask blur, masked content, only-masked crop, overlay and step count, each by
pixels on small synthetic images (A1111's documented behaviour; no oracle is installable)."""

import numpy as np
import pytest
from PIL import Image

from sumie.errors import InputError
from sumie.img2img import Img2Img, blur_mask, crop_region, fill_masked, prepare, resize, run, steps_for


def stripes(w: int, h: int) -> Image.Image:
    """Columns coloured by x (red) and rows by y (green): where each pixel came from is readable."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :]
    a[..., 1] = np.linspace(0, 255, h)[:, None]
    return Image.fromarray(a)


def test_resize_modes():
    src = Image.new("RGB", (40, 20), (200, 10, 10))  # 2:1 into a square
    assert resize(src, 16, 16, 0).size == (16, 16)  # just resize: stretched, all red
    assert np.asarray(resize(src, 16, 16, 0))[..., 0].min() > 190
    wide = stripes(40, 20)
    crop = np.asarray(resize(wide, 16, 16, 1), dtype=int)  # crop and resize: 32x16 scaled, the middle 16 kept
    assert abs(crop[8, 0, 0] - 64) <= 8 and abs(crop[8, -1, 0] - 191) <= 8  # x = 10..30 of 40 -> red 64..191
    two = Image.new("RGB", (40, 20))
    two.paste((255, 0, 0), (0, 0, 40, 10))
    two.paste((0, 0, 255), (0, 10, 40, 20))
    fill = np.asarray(resize(two, 16, 16, 2), dtype=int)  # fit 16x8 in the middle; bands from the edge rows
    assert (fill[:4, :, 0] > 200).all() and (fill[:4, :, 2] < 50).all()  # above: the top row (red) stretched
    assert (fill[-4:, :, 2] > 200).all() and (fill[-4:, :, 0] < 50).all()  # below: the bottom row (blue)
    assert np.array_equal(np.asarray(resize(two, 16, 16, 3)), np.asarray(resize(two, 16, 16, 0)))


def test_mask_blur_is_a_gaussian_of_a1111s_kernel_size_in_each_direction():
    a = np.zeros((41, 41), np.uint8)
    a[:, 20] = 255  # one white column
    out = np.asarray(blur_mask(Image.fromarray(a), 4, 0), dtype=float)
    r = int(2.5 * 4 + 0.5)  # 10: 21 taps
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / 4) ** 2)
    expected = 255 * g / g.sum()
    assert np.abs(out[7, 20 - r:21 + r] - expected).max() <= 0.5  # the profile across: the kernel itself
    assert (out[:, :20 - r] == 0).all() and (out[:, 21 + r:] == 0).all()  # nothing past the kernel's reach
    assert (out == out[0]).all()  # no blur down
    down = np.asarray(blur_mask(Image.fromarray(a.T.copy()), 0, 4), dtype=float)
    assert np.array_equal(down, out.T)


def test_crop_region_pads_and_takes_the_output_aspect_ratio():
    m = np.zeros((100, 200), np.uint8)
    m[40:50, 90:100] = 255
    assert crop_region(Image.fromarray(m), 5, 64, 64) == (85, 35, 105, 55)  # 10x10 + 5 each side, square
    x1, y1, x2, y2 = crop_region(Image.fromarray(m), 5, 128, 64)  # 2:1
    assert (x2 - x1, y2 - y1) == (40, 20) and x1 <= 85 and x2 >= 105
    assert crop_region(Image.new("L", (10, 10)), 5, 8, 8) is None


def test_fill_paints_the_hole_with_the_colours_around_it():
    src = Image.new("RGB", (32, 32), (0, 0, 255))
    src.paste((255, 0, 0), (0, 0, 16, 32))  # red left half, blue right half
    src.paste((0, 255, 0), (12, 12, 20, 20))  # a green square to hide
    m = Image.new("L", (32, 32))
    m.paste(255, (12, 12, 20, 20))
    out = np.asarray(fill_masked(src, m), dtype=int)
    assert out[16, 12:20, 1].max() < 60  # no green left
    assert out[16, 12, 0] > out[16, 12, 2] and out[16, 19, 2] > out[16, 19, 0]  # red side reddish, blue side bluish
    assert np.array_equal(out[:12], np.asarray(src)[:12])  # outside the hole: untouched


def test_overlay_keeps_unmasked_pixels_and_only_masked_pastes_back():
    src = stripes(48, 32)
    m = Image.new("L", (48, 32))
    m.paste(255, (20, 10, 30, 20))
    job = Img2Img(mask=m, mask_blur_x=0, mask_blur_y=0, only_masked=True, padding=2)
    p = prepare([src], job, 16, 16)
    assert p.region == (18, 8, 32, 22)  # x 20-29, y 10-19, 2 pixels more each side: square already
    assert p.images[0].size == (16, 16) and p.mask.size == (16, 16)
    result = np.asarray(p.finish(Image.new("RGB", (16, 16), (1, 2, 3)), 0), dtype=int)
    assert result.shape == (32, 48, 3)
    inside, outside = result[12:18, 22:28], np.delete(result, np.s_[10:20], axis=0)
    assert (inside == (1, 2, 3)).all()
    assert np.array_equal(outside, np.delete(np.asarray(src, dtype=int), np.s_[10:20], axis=0))
    whole = prepare([src], Img2Img(mask=m, mask_blur_x=0, mask_blur_y=0), 48, 32)
    out = np.asarray(whole.finish(Image.new("RGB", (48, 32), (1, 2, 3)), 0), dtype=int)
    assert (out[10:20, 20:30] == (1, 2, 3)).all() and np.array_equal(out[:10], np.asarray(src)[:10])


def test_a_mask_of_another_size_is_resized_and_inverting_swaps_the_regions():
    src = stripes(48, 32)
    m = Image.new("L", (24, 16))
    m.paste(255, (0, 0, 12, 16))  # the left half, at half size
    p = prepare([src], Img2Img(mask=m, mask_blur_x=0, mask_blur_y=0), 48, 32)
    a = np.asarray(p.mask)
    assert a[:, :22].min() > 200 and a[:, 26:].max() < 50
    q = prepare([src], Img2Img(mask=m, mask_blur_x=0, mask_blur_y=0, invert_mask=True), 48, 32)
    assert np.asarray(q.mask)[:, 26:].min() > 200


def test_step_counts():
    assert steps_for(0.75, 20, False) == (20, 0.75)  # int(0.75 * 20) = 15 of 20
    assert steps_for(1.0, 20, False) == (20, 0.999)  # A1111 caps at 0.999: 19 of 20
    total, kept = steps_for(0.75, 20, True)  # exactly 20 steps of a 26-step schedule
    assert total == 26 and int(total * kept) == 20
    with pytest.raises(InputError, match="runs no steps"):
        steps_for(0.0, 20, True)
    for bad, needle in ((Img2Img(strength=1.5), "from 0 to 1"), (Img2Img(resize_mode=4), "resize mode"),
                        (Img2Img(inpainting_fill=7), "inpainting fill")):
        with pytest.raises(InputError, match=needle):
            bad.check()


def test_an_all_black_mask_changes_nothing_and_runs_nothing():
    src = stripes(32, 32)

    class NoModel:  # a pipeline that must not be called
        def __getattr__(self, name):
            raise AssertionError("the model ran")
    out = run(NoModel(), [src], Img2Img(mask=Image.new("L", (32, 32))), width=32, height=32, steps=10,
              prompt=["x", "y"])
    assert len(out) == 2 and all(np.array_equal(np.asarray(o), np.asarray(src)) for o in out)
