"""`sumie serve` driven over real HTTP: the A1111 client library webuiapi, raw requests, and attacks."""

import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import webuiapi
from PIL import Image

from server_util import Server


@pytest.fixture(scope="module")
def server(sd1_folder, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("served")
    s = Server("--model", sd1_folder, "--outdir", outdir, "--queue-size", 1)
    s.outdir = outdir
    yield s
    s.stop()


def post(server, path, body, **headers):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


def test_webuiapi_txt2img_batches_seeds_and_png_info(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    result = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=42, steps=3, cfg_scale=6.5,
                         width=32, height=32, batch_size=2, n_iter=2, sampler_name="Euler a")
    assert len(result.images) == 4 and result.images[0].size == (32, 32)
    info = result.info
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43, 44, 45] and info["sampler_name"] == "Euler a"
    assert len(info["infotexts"]) == 4 and "Seed: 44" in info["infotexts"][2]
    assert result.parameters["prompt"] == "a red circle" and result.parameters["batch_size"] == 2
    # the PNG carries its own parameters, and png-info reads them back
    assert result.images[1].info["parameters"] == info["infotexts"][1]
    back = api.png_info(result.images[1])
    assert back.info == info["infotexts"][1] and back.json["parameters"]["Seed"] == "43"
    # same seed, same image: image 2 of the first request is image 0 of a request at seed 44
    again = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=44, steps=3, cfg_scale=6.5,
                        width=32, height=32, sampler_name="Euler a")
    assert again.images[0].tobytes() == result.images[2].tobytes()


def test_listings_and_combined_sampler_names(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    names = [s["name"] for s in api.get_samplers()]
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "LMS", "Heun", "DDIM", "PLMS", "UniPC", "DDPM"} <= set(names)
    assert [s["label"] for s in api.get_schedulers()] == ["Automatic", "Karras"]
    [model] = api.get_sd_models()
    assert api.get_options()["sd_model_checkpoint"] == model["title"]
    r = post(server, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "sampler_name": "DPM++ 2M Karras",
                                           "width": 32, "height": 32, "send_images": False, "unknown": [1, 2]})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras") and r.json()["images"] == []


def test_clip_skip_from_override_settings(server, sd1_folder):
    """A1111's CLIP_stop_at_last_layers (2: diffusers' clip_skip=1) for one request, written in the infotext."""
    from sumie.pipeline import StableDiffusionPipeline
    body = {"prompt": "a (red:1.3) circle", "steps": 2, "width": 32, "height": 32, "seed": 9}
    r = post(server, "/sdapi/v1/txt2img", {**body, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(body["prompt"], num_inference_steps=2, width=32, height=32, seed=9, prompt_syntax="a1111",
                    clip_skip=1, scheduler="pndm", guidance_scale=7.0).images[0]  # A1111's default CFG
    got = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert got.tobytes() == expected.tobytes()
    bad = post(server, "/sdapi/v1/txt2img", {**body, "override_settings": {"CLIP_stop_at_last_layers": 0}})
    assert bad.status_code == 422 and "CLIP_stop_at_last_layers" in bad.text
    assert httpx.get(server.url + "/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


@pytest.mark.parametrize("field,value", [
    ("width", 36), ("height", 4096), ("steps", 0), ("steps", 151), ("cfg_scale", float("nan")),
    ("cfg_scale", float("inf")), ("sampler_name", "Euler z"), ("batch_size", 9), ("scheduler", "exponential"),
    ("seed", "abc"),
])
def test_validation_gives_422_with_the_field(server, field, value):
    r = httpx.post(server.url + "/sdapi/v1/txt2img", content=json.dumps({"prompt": "x", field: value}),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert any(field in e["loc"] for e in r.json()["detail"]), r.text


def test_oversized_body_and_wrong_content_type(server):
    r = httpx.post(server.url + "/sdapi/v1/png-info", content=b"{" + b" " * (21 * 2 ** 20) + b"}",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    form = httpx.post(server.url + "/sdapi/v1/txt2img", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415


@pytest.mark.parametrize("headers,status", [
    ({"Origin": "null"}, 403), ({"Origin": "http://evil.example"}, 403), ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Host": "evil.example"}, 400), ({"Host": "attacker.localhost.evil:7860"}, 400),
])
def test_cross_site_and_rebinding_are_refused(server, headers, status):
    r = post(server, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 32, "height": 32}, **headers)
    assert r.status_code == status, r.text
    if "Host" in headers:
        assert httpx.get(server.url + "/sdapi/v1/progress", headers=headers).status_code == 400


def test_paths_in_string_fields_are_only_text(server):
    evil = ["../../../../tmp/sumie-pwned", "/tmp/sumie-pwned", "..\\..\\x", "%2e%2e%2fetc%2fpasswd", "\x00/etc/passwd"]
    for text in evil:
        r = post(server, "/sdapi/v1/txt2img", {"prompt": text, "negative_prompt": text, "steps": 1, "width": 32,
                                               "height": 32, "save_images": True, "send_images": False,
                                               "sampler_name": "Euler", "scheduler": "Automatic"})
        assert r.status_code == 200, r.text
    saved = [p for p in Path(server.outdir).rglob("*") if p.is_file()]
    assert len(saved) >= len(evil) and all(p.suffix == ".png" and ".." not in p.name for p in saved)
    assert not Path("/tmp/sumie-pwned").exists()
    for text in evil:
        assert post(server, "/sdapi/v1/png-info", {"image": text}).status_code == 422


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_info_of_a_decompression_bomb(server):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"tEXt", b"parameters\x00hello") +
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1_000_000)) + _png_chunk(b"IEND", b""))
    r = post(server, "/sdapi/v1/png-info", {"image": base64.b64encode(bomb).decode()})
    assert r.status_code == 422 and "pixel" in r.text


def _long_job(server, results, steps=150, **extra):
    """150 steps at 64x64: long enough to act on while it runs (about 0.25 s a step on a 2-core AMD EPYC),
    short steps so that an interrupt lands soon."""
    body = {"prompt": "x", "steps": steps, "width": 64, "height": 64, "sampler_name": "Euler", **extra}
    results.append(httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300))


def _progress(server, preview=False):
    """/progress, without the preview image unless asked (decoding one costs a VAE call per poll)."""
    return httpx.get(server.url + "/sdapi/v1/progress", params={"skip_current_image": not preview}).json()


def _idle(server, seconds=300):
    """Wait until no job runs or waits (a slow CPU may still be finishing the last test's)."""
    for _ in range(int(seconds / 0.1)):
        if _progress(server)["state"]["job_count"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the queue was still busy after {seconds} s")


def _join(*threads, seconds=300):
    for t in threads:
        t.join(seconds)
        assert not t.is_alive(), f"a request still ran after {seconds} s"


def _wait_running(server):
    for _ in range(600):
        p = _progress(server)
        if p["state"]["sampling_step"] > 0:
            return p
        time.sleep(0.05)
    raise AssertionError("the job never started")


def test_progress_interrupt_and_full_queue(server):
    results = []
    running = threading.Thread(target=_long_job, args=(server, results))
    _idle(server)
    running.start()
    _wait_running(server)
    p = _progress(server, preview=True)
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 150 and p["state"]["job_count"] == 1
    assert Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).size[0] > 0
    waiting = threading.Thread(target=_long_job, args=(server, results, 2))
    waiting.start()
    for _ in range(600):  # the one queue slot fills
        if _progress(server)["state"]["job_count"] == 2:
            break
        time.sleep(0.05)
    full = post(server, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 32, "height": 32})
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert post(server, "/sdapi/v1/interrupt", {}).status_code == 200
    _join(running, waiting)
    first = next(r for r in results if json.loads(r.json()["info"])["steps"] == 150)
    assert first.status_code == 200 and json.loads(first.json()["info"])["interrupted"] is True
    assert len(first.json()["images"]) == 1


def test_client_that_leaves_the_queue_loses_its_job(server):
    results = []
    running = threading.Thread(target=_long_job, args=(server, results))
    _idle(server)
    running.start()
    _wait_running(server)
    with pytest.raises(httpx.ReadTimeout):  # queued, then gone
        httpx.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "left", "steps": 1, "width": 32, "height": 32,
                                                          "save_images": True}, timeout=0.5)
    time.sleep(0.5)
    post(server, "/sdapi/v1/interrupt", {})
    _join(running)
    time.sleep(0.5)
    assert _progress(server)["state"]["job_count"] == 0
    saved = [p for p in Path(server.outdir).rglob("*.png")]
    assert not any("left" in Image.open(p).info.get("parameters", "").split("\n")[0] for p in saved)


def test_api_key_and_basic_auth(sd1_folder):
    s = Server("--model", sd1_folder, "--api-key", "s3cret", "--api-auth", "ann:pw")
    try:
        body = {"prompt": "x", "steps": 1, "width": 32, "height": 32}
        assert post(s, "/sdapi/v1/txt2img", body).status_code == 401
        assert post(s, "/sdapi/v1/txt2img", body, Authorization="Bearer wrong").status_code == 401
        assert httpx.get(s.url + "/sdapi/v1/sd-models").status_code == 401
        assert post(s, "/sdapi/v1/txt2img", body, Authorization="Bearer s3cret").status_code == 200
        api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port, username="ann", password="pw")
        assert len(api.txt2img(prompt="x", steps=1, width=32, height=32).images) == 1
        bad = webuiapi.WebUIApi(host="127.0.0.1", port=s.port, username="ann", password="no")
        with pytest.raises(RuntimeError, match="401"):
            bad.txt2img(prompt="x", steps=1, width=32, height=32)
    finally:
        s.stop()


def test_binding_beyond_localhost_warns_without_a_key(sd1_folder):
    s = Server("--model", sd1_folder, "--host", "0.0.0.0")
    try:
        # any Host is served when the user chose to expose the server
        assert httpx.get(s.url + "/sdapi/v1/options", headers={"Host": "myhost.lan"}).status_code == 200
    finally:
        err = s.stop()
    assert "no --api-key" in err


def _scene(w=40, h=32) -> Image.Image:
    """A red square on white: structure that img2img keeps and inpainting replaces."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    im.paste((220, 30, 30), (10, 6, 30, 26))
    return im


def test_webuiapi_img2img_and_inpainting_round_trip(server):
    import numpy as np
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    init = _scene()
    kw = dict(prompt="a blue circle", steps=6, seed=3, sampler_name="Euler", cfg_scale=5)
    r = api.img2img(images=[init], denoising_strength=0.5, width=40, height=32, **kw)
    assert r.images[0].size == (40, 32) and "Denoising strength: 0.5" in r.info["infotexts"][0]
    assert r.images[0].info["parameters"] == r.info["infotexts"][0] and r.parameters["init_images"] is None
    assert api.png_info(r.images[0]).json["parameters"]["Denoising strength"] == "0.5"
    # width and height follow the init image when not given (webuiapi sends 512; a raw request may leave them out)
    raw = post(server, "/sdapi/v1/img2img", {"init_images": [webuiapi.b64_img(init)], "steps": 2, "seed": 1})
    assert raw.status_code == 200 and Image.open(io.BytesIO(base64.b64decode(raw.json()["images"][0]))).size == (40, 32)
    # inpainting: only the masked middle changes (A1111's default "only masked", padding 0, no blur here)
    mask = Image.new("L", (40, 32))
    mask.paste(255, (14, 10, 26, 22))
    m = api.img2img(images=[init], mask_image=mask, mask_blur=0, denoising_strength=1.0, width=40, height=32, **kw)
    out, src = np.asarray(m.images[0], dtype=int), np.asarray(init, dtype=int)
    inside = np.zeros((32, 40), bool)
    inside[10:22, 14:26] = True
    assert np.array_equal(out[~inside], src[~inside])  # far from the mask: the init image's own pixels
    assert np.abs(out[inside] - src[inside]).mean() > 10  # under it: repainted
    text = m.info["infotexts"][0]
    assert "Mask blur: 0" in text and "Inpaint area: Only masked" in text and "Masked content: fill" in text
    # an all-black mask is allowed and changes nothing; a mask of another size is resized to the image's
    black = api.img2img(images=[init], mask_image=Image.new("L", (40, 32)), width=40, height=32, **kw)
    assert np.array_equal(np.asarray(black.images[0]), src)
    small = mask.resize((20, 16))
    resized = api.img2img(images=[init], mask_image=small, mask_blur=0, denoising_strength=1.0, width=40, height=32,
                          **kw)
    near = np.zeros((32, 40), bool)
    near[4:28, 8:32] = True  # Lanczos rings up to 3 source pixels past the upscaled mask's edge
    assert np.array_equal(np.asarray(resized.images[0], dtype=int)[~near], src[~near])


@pytest.mark.parametrize("change,field", [
    ({"init_images": ["bm90IGFuIGltYWdl"]}, "init_images"),  # base64 of "not an image"
    ({"init_images": ["%%%"]}, "init_images"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"resize_mode": 4}, "resize_mode"),
    ({"mask": "bm90IGFuIGltYWdl"}, "mask"),
    ({"denoising_strength": 0.01, "steps": 4}, "denoising_strength"),  # no steps left
])
def test_img2img_bad_input_is_422_naming_the_field(server, change, field):
    body = {"init_images": [webuiapi.b64_img(_scene())], "steps": 2, **change}
    r = post(server, "/sdapi/v1/img2img", body)
    assert r.status_code == 422 and field in json.dumps(r.json()["detail"]), r.text


def test_img2img_refuses_a_decompression_bomb_before_reading_it(server):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1_000_000))
            + _png_chunk(b"IEND", b""))
    r = post(server, "/sdapi/v1/img2img", {"init_images": [base64.b64encode(bomb).decode()]})
    assert r.status_code == 422 and "init_images" in r.text and "pixel" in r.text


def test_options_post_keeps_the_whole_dict_and_acts_on_known_keys(server):
    """Open WebUI posts the whole options dict back; SillyTavern posts single keys. Unknown keys are kept and echoed;
    known ones are checked (422 naming the key, nothing kept) and used by later requests."""
    url = server.url + "/sdapi/v1/options"
    options = httpx.get(url).json()
    try:
        assert httpx.post(url, json={**options, "some_client_key": [1, "a"]}).status_code == 200
        after = httpx.get(url).json()
        assert after["some_client_key"] == [1, "a"] and after["sd_model_checkpoint"] == options["sd_model_checkpoint"]
        for bad, key in (({"samples_format": "jpg"}, "samples_format"), ({"sd_model_checkpoint": "sd15.ckpt"},
                         "sd_model_checkpoint"), ({"CLIP_stop_at_last_layers": 13}, "CLIP_stop_at_last_layers"),
                         ({"sd_vae": "vae-ft-mse.safetensors"}, "sd_vae")):
            r = httpx.post(url, json={**bad, "kept_if_valid": 1})
            assert r.status_code == 422 and key in json.dumps(r.json()["detail"]), r.text
            assert "kept_if_valid" not in httpx.get(url).json()
        # a server-wide clip skip applies to later requests (written in their infotext), unless overridden
        assert httpx.post(url, json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        body = {"prompt": "x", "steps": 1, "width": 32, "height": 32, "send_images": False}
        assert "Clip skip: 2" in json.loads(post(server, "/sdapi/v1/txt2img", body).json()["info"])["infotexts"][0]
        one = {**body, "override_settings": {"CLIP_stop_at_last_layers": 1}}
        assert "Clip skip" not in json.loads(post(server, "/sdapi/v1/txt2img", one).json()["info"])["infotexts"][0]
        assert httpx.get(url).json()["CLIP_stop_at_last_layers"] == 2  # restored afterwards, as A1111 does
    finally:
        httpx.post(url, json={"CLIP_stop_at_last_layers": 1})
    # nothing behind these here (no styles.csv either), in A1111's shape
    for listing in ("sd-vae", "sd-modules", "face-restorers", "realesrgan-models", "prompt-styles", "hypernetworks"):
        r = httpx.get(server.url + "/sdapi/v1/" + listing)
        assert r.status_code == 200 and r.json() == [], listing
    assert httpx.post(server.url + "/sdapi/v1/refresh-checkpoints").status_code == 200
