"""`server.checkpoints`: several models in --model-dir, one loaded at a time, switched the way Open WebUI and
SillyTavern switch them (POST /sdapi/v1/options), against a real `sumie serve`."""

import base64
import io
import json
import shutil
import threading

import httpx
import pytest
from PIL import Image

from server_util import Server
from sumie import tiny


@pytest.fixture(scope="module")
def model_dir(sd1_folder, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny.MODEL_DIR, d / "tiny-copy")
    shutil.copytree(sd1_folder, d / "random-sd1")
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    return d


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """Another VAE of the small SD 1 model's shape, with other random weights."""
    from diffusers import AutoencoderKL

    from oracle import TINY_VAE, randomize
    d = tmp_path_factory.mktemp("vaes")
    randomize(AutoencoderKL(**TINY_VAE), 99).save_pretrained(d / "other-vae")
    return d


@pytest.fixture(scope="module")
def server(model_dir, vae_dir, tmp_path_factory):
    styles = tmp_path_factory.mktemp("styles") / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nwatercolour,"{prompt}, watercolour painting",photo\n'
                      'sharp,sharp focus,blurry\n')
    s = Server("--model", model_dir / "random-sd1", "--model-dir", model_dir, "--api-auth", "ann:pw",
               "--styles", styles, "--vae-dir", vae_dir)
    yield s
    s.stop()


def api(server, method, path, **kw):
    return httpx.request(method, server.url + "/sdapi/v1/" + path, auth=("ann", "pw"), timeout=180, **kw)


def generate(server, **extra):
    body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 1, "send_images": False, **extra}
    r = api(server, "POST", "txt2img", json=body)
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])


def test_open_webuis_calls_switch_by_posting_the_whole_options_back(server):
    options = api(server, "GET", "options").json()
    models = api(server, "GET", "sd-models").json()
    assert [m["model_name"] for m in models] == ["broken", "random-sd1", "tiny-copy"]
    assert all(m["title"] == f"{m['model_name'] if m['model_name'] != 'broken' else 'broken.safetensors'} "
               f"[{m['hash']}]" for m in models)
    old, new = (next(m for m in models if m["model_name"] == n) for n in ("random-sd1", "tiny-copy"))
    assert options["sd_model_checkpoint"] == old["title"]
    r = api(server, "POST", "options", json={**options, "sd_model_checkpoint": new["title"]})
    assert r.status_code == 200, r.text
    assert api(server, "GET", "options").json()["sd_model_checkpoint"] == new["title"]
    info = generate(server, batch_size=2)
    assert len(info["infotexts"]) == 2 and all(f"Model hash: {new['hash']}" in t for t in info["infotexts"])
    # back by name, as SillyTavern may send it
    assert api(server, "POST", "options", json={"sd_model_checkpoint": "random-sd1"}).status_code == 200
    assert f"Model hash: {old['hash']}" in generate(server)["infotexts"][0]


def test_unknown_and_broken_models_leave_the_model_in_use(server):
    before = api(server, "GET", "options").json()["sd_model_checkpoint"]
    r = api(server, "POST", "options", json={"sd_model_checkpoint": "tiny-cpy"})
    assert r.status_code == 422 and "tiny-copy" in r.text and "sd_model_checkpoint" in r.text  # a close match
    r = api(server, "POST", "options", json={"sd_model_checkpoint": "broken.safetensors"})
    assert r.status_code == 422 and "did not load" in r.text, r.text
    assert api(server, "GET", "options").json()["sd_model_checkpoint"] == before
    assert before.split("[")[1].rstrip("]") in generate(server)["infotexts"][0]
    r = api(server, "POST", "txt2img", json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny-copy"}})
    assert r.status_code == 422 and "POST /sdapi/v1/options" in r.text


def test_a_switch_waits_for_queued_jobs_and_the_next_job_uses_the_new_model(server):
    models = {m["model_name"]: m for m in api(server, "GET", "sd-models").json()}
    api(server, "POST", "options", json={"sd_model_checkpoint": "random-sd1"})
    results = {}
    first = threading.Thread(target=lambda: results.update(first=generate(server, steps=60)))
    first.start()
    while api(server, "GET", "progress").json()["state"]["sampling_steps"] == 0:
        pass
    switch = threading.Thread(target=lambda: results.update(
        switch=api(server, "POST", "options", json={"sd_model_checkpoint": "tiny-copy"}).status_code))
    switch.start()
    first.join()
    switch.join()
    assert results["switch"] == 200
    assert f"Model hash: {models['random-sd1']['hash']}" in results["first"]["infotexts"][0]  # finished on the old
    assert f"Model hash: {models['tiny-copy']['hash']}" in generate(server)["infotexts"][0]


def test_switching_back_and_forth_frees_the_old_model(server):
    names = ["tiny-copy", "random-sd1"]
    rss = []
    for i in range(10):
        assert api(server, "POST", "options", json={"sd_model_checkpoint": names[i % 2]}).status_code == 200
        rss.append(server.rss_kib())
    assert rss[-1] <= 1.1 * rss[1], rss  # after 10 switches within 10% of after the first pair


def test_refresh_checkpoints_rescans_the_folder(server, model_dir):
    (model_dir / "added.safetensors").write_bytes((model_dir / "broken.safetensors").read_bytes() + b" ")
    try:
        assert "added" not in [m["model_name"] for m in api(server, "GET", "sd-models").json()]
        assert api(server, "POST", "refresh-checkpoints").status_code == 200
        assert "added" in [m["model_name"] for m in api(server, "GET", "sd-models").json()]
    finally:
        (model_dir / "added.safetensors").unlink()
        api(server, "POST", "refresh-checkpoints")


def test_sillytaverns_calls(server):
    """SillyTavern's sequence (its source): ping options, the listings, switch the model by posting options and poll
    progress until job_count is 0, generate with hires fix and override_settings, cancel."""
    get = lambda path: api(server, "GET", path)  # noqa: E731
    options = get("options").json()
    assert [u["name"] for u in get("upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert get("latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert [v["model_name"] for v in get("sd-vae").json()] == ["other-vae"] and get("sd-modules").json()
    assert len(get("samplers").json()) >= 10 and get("schedulers").status_code == 200
    model = next(m for m in get("sd-models").json() if m["model_name"] == "tiny-copy")
    switch = api(server, "POST", "options", json={"sd_model_checkpoint": model["title"]})
    assert switch.status_code == 200 and get("progress").json()["state"]["job_count"] == 0
    body = {"prompt": "a red circle", "negative_prompt": "", "steps": 3, "width": 32, "height": 32, "seed": 5,
            "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "cfg_scale": 5, "enable_hr": True,
            "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 2, "denoising_strength": 0.5,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
            "override_settings_restore_afterwards": True}
    r = api(server, "POST", "txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert "Hires upscale: 2" in text and "Hires steps: 2" in text and "Hires upscaler: Latent" in text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
    assert f"Model hash: {model['hash']}" in text and options["sd_model_checkpoint"] != model["title"]
    assert api(server, "POST", "interrupt").status_code == 200
    for bad, field in (({"hr_scale": 100}, "hr_scale"), ({"width": 512, "height": 512, "hr_scale": 5}, "hr_scale"),
                       ({"hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"), ({"steps": -1}, "steps")):
        r = api(server, "POST", "txt2img", json={**body, **bad})
        assert r.status_code == 422 and field in r.text, r.text
    api(server, "POST", "options", json={"sd_model_checkpoint": "random-sd1"})


def test_prompt_styles_from_a1111s_csv(server):
    assert api(server, "GET", "prompt-styles").json() == [
        {"name": "watercolour", "prompt": "{prompt}, watercolour painting", "negative_prompt": "photo"},
        {"name": "sharp", "prompt": "sharp focus", "negative_prompt": "blurry"}]
    info = generate(server, prompt="a fox", negative_prompt="", styles=["watercolour", "sharp"])
    assert info["infotexts"][0].startswith("a fox, watercolour painting, sharp focus\nNegative prompt: photo, blurry\n")
    r = api(server, "POST", "txt2img", json={"prompt": "x", "styles": ["oil"]})
    assert r.status_code == 422 and "styles" in r.text and "watercolour" in r.text


def test_every_listing_answers_in_a1111s_shape(server):
    """Each item of each listing has exactly the fields of A1111's response model, of its types (tests/data)."""
    from oracle import DATA
    spec = json.loads((DATA / "a1111_api_items.json").read_text())
    types = {"str": str, "list": list, "dict": dict, "bool": bool, "int": int, "float": (int, float)}

    def check(item, fields, where):
        assert set(item) == set(fields), (where, sorted(item), sorted(fields))
        for key, kind in fields.items():
            value, optional, kind = item[key], kind.endswith("?"), kind.rstrip("?")
            if value is None:
                assert optional, (where, key, "is None")
            else:  # a bool is not a number here
                assert isinstance(value, types[kind]) and (kind == "bool" or not isinstance(value, bool)), \
                    (where, key, value, kind)
    for path, fields in spec.items():
        if path.startswith("_"):
            continue
        answer = api(server, "GET", path).json()
        for item in answer if isinstance(answer, list) else [answer]:
            check(item, fields, path)
    assert len(api(server, "GET", "sd-models").json()) == 3 and len(api(server, "GET", "prompt-styles").json()) == 2


def test_sd_vae_picks_a_vae_of_vae_dir_per_request_or_for_the_server(server):
    assert [v["model_name"] for v in api(server, "GET", "sd-vae").json()] == ["other-vae"]
    assert api(server, "POST", "options", json={"sd_model_checkpoint": "random-sd1"}).status_code == 200

    def image(**extra):
        body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 1, **extra}
        r = api(server, "POST", "txt2img", json=body)
        assert r.status_code == 200, r.text
        return r.json()["images"][0], json.loads(r.json()["info"])["infotexts"][0]
    own, own_text = image()
    other, other_text = image(override_settings={"sd_vae": "other-vae"})
    assert other != own and "VAE: other-vae" in other_text and "VAE:" not in own_text
    assert image()[0] == own  # the model's own VAE again after that request
    try:
        assert api(server, "POST", "options", json={"sd_vae": "other-vae"}).status_code == 200
        assert image()[0] == other
    finally:
        api(server, "POST", "options", json={"sd_vae": "Automatic"})
    r = api(server, "POST", "options", json={"sd_vae": "kl-f8-anime.safetensors"})
    assert r.status_code == 422 and "sd_vae" in r.text


def test_a_painting_plugins_calls(server):
    """The calls the issue lists for Krita plugins and bots, in a plugin's order: refresh and list the models, the
    LoRAs and embeddings, generate, then repaint part of the result through a mask."""
    import numpy as np
    assert api(server, "POST", "refresh-checkpoints").status_code == 200
    assert len(api(server, "GET", "sd-models").json()) == 3
    assert api(server, "GET", "loras").json() == [] and set(api(server, "GET", "embeddings").json()) == {"loaded",
                                                                                                        "skipped"}
    r = api(server, "POST", "txt2img", json={"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 4})
    canvas = r.json()["images"][0]
    mask = Image.new("L", (32, 32))
    mask.paste(255, (8, 8, 24, 24))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    r = api(server, "POST", "img2img", json={
        "init_images": ["data:image/png;base64," + canvas], "mask": base64.b64encode(buf.getvalue()).decode(),
        "mask_blur": 0, "inpaint_full_res": False, "denoising_strength": 0.9, "prompt": "a blue square", "steps": 3,
        "seed": 4})
    assert r.status_code == 200, r.text
    before = np.asarray(Image.open(io.BytesIO(base64.b64decode(canvas))).convert("RGB"), dtype=int)
    after = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), dtype=int)
    keep = np.ones((32, 32), bool)
    keep[8:24, 8:24] = False
    assert np.array_equal(after[keep], before[keep]) and not np.array_equal(after[~keep], before[~keep])
