"""diffusers' "write your own inference loop" tutorial runs on sumie.compat unchanged and gives diffusers' image."""

import numpy as np
import pytest
import torch


def tutorial(lib, path, scheduler_name, prompt, steps=4, height=256, width=192):
    """The tutorial's code, with the classes taken from `lib` (a namespace of diffusers/transformers or sumie.compat)."""
    vae = lib.AutoencoderKL.from_pretrained(path, subfolder="vae")
    tokenizer = lib.CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = lib.CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    unet = lib.UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    scheduler = getattr(lib, scheduler_name).from_pretrained(path, subfolder="scheduler")
    torch_device = "cpu"
    vae.to(torch_device)
    text_encoder.to(torch_device)
    unet.to(torch_device)

    prompt = [prompt]
    guidance_scale = 7.5
    generator = torch.manual_seed(0)
    batch_size = len(prompt)
    text_input = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
    with torch.no_grad():
        text_embeddings = text_encoder(text_input.input_ids.to(torch_device))[0]
    max_length = text_input.input_ids.shape[-1]
    uncond_input = tokenizer([""] * batch_size, padding="max_length", max_length=max_length, return_tensors="pt")
    uncond_embeddings = text_encoder(uncond_input.input_ids.to(torch_device))[0]
    text_embeddings = torch.cat([uncond_embeddings, text_embeddings])

    latents = torch.randn((batch_size, unet.config.in_channels, height // 8, width // 8), generator=generator,
                          device=torch_device)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents] * 2)
        latent_model_input = scheduler.scale_model_input(latent_model_input, timestep=t)
        with torch.no_grad():
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample

    latents = 1 / 0.18215 * latents
    with torch.no_grad():
        image = vae.decode(latents).sample
    image = (image / 2 + 0.5).clamp(0, 1).squeeze()
    return (image.permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()


class Reference:
    """diffusers + transformers, as the tutorial imports them."""

    def __getattr__(self, name):
        import diffusers
        import transformers
        return getattr(transformers if name.startswith("CLIP") else diffusers, name)


@pytest.mark.parametrize("scheduler_name", ["PNDMScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                                            "HeunDiscreteScheduler"])
def test_tutorial_loop_equals_diffusers(sd1_folder, scheduler_name):
    import sumie.compat
    ours = tutorial(sumie.compat, sd1_folder, scheduler_name, "a watercolor fox in the snow")
    theirs = tutorial(Reference(), sd1_folder, scheduler_name, "a watercolor fox in the snow")
    assert ours.shape == theirs.shape == (64, 48, 3)  # the tiny VAE upsamples 2x, the tutorial assumes 8x
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2
    assert ours.std() > 2


def test_scheduler_swap_keeps_folder_schedule(sd1_folder):
    """`X.from_config(pipe.scheduler.config)` passes on the folder's fields but not filled-in defaults."""
    import diffusers
    from sumie.compat import EulerDiscreteScheduler, PNDMScheduler
    base = PNDMScheduler.from_pretrained(sd1_folder, subfolder="scheduler")
    ref = diffusers.EulerDiscreteScheduler.from_config(
        diffusers.PNDMScheduler.from_pretrained(sd1_folder, subfolder="scheduler").config)
    ours = EulerDiscreteScheduler.from_config(base.config)
    for s in (ours, ref):
        s.set_timesteps(10)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert abs(float(ours.init_noise_sigma) - float(ref.init_noise_sigma)) < 1e-4
    karras = EulerDiscreteScheduler.from_config(base.config, use_karras_sigmas=True)
    karras.set_timesteps(10)
    assert karras.timesteps.tolist() != ours.timesteps.tolist()


def test_vae_posterior_and_pipeline_names(sd1_folder):
    from sumie.compat import AutoencoderKL, StableDiffusionPipeline
    vae = AutoencoderKL.from_pretrained(sd1_folder, subfolder="vae")
    dist = vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist
    assert dist.mean.shape == (1, 4, 8, 8) and dist.sample(torch.Generator().manual_seed(0)).shape == (1, 4, 8, 8)
    assert vae.config.scaling_factor == 0.18215
    assert StableDiffusionPipeline.from_pretrained(sd1_folder).scheduler.config._class_name == "PNDMScheduler"
