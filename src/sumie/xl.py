"""SDXL (Podell et al. 2023): two text encoders, and the pooled text and the image's sizes as conditioning.

- **Text** (sec. 2.1): CLIP ViT-L's and OpenCLIP ViT-bigG's penultimate hidden states side by side,
  (1, 77 * k, 768 + 1280); the refiner reads bigG alone (1280). bigG's projected pooled output of the first
  chunk, (1, 1280), goes to the UNet's add embedding.
- **Micro-conditioning** (sec. 2.2): beside it, the sinusoids of six numbers: the original size (h, w), the
  crop's top-left corner (y, x) and the target size (h, w). The refiner (sec. 2.5) takes five: the original
  size, the crop and an aesthetic score.
- **No negative prompt**: zeros instead of the empty prompt's encoding, when the model's model_index.json
  says `force_zeros_for_empty_prompt` (the base model does).

`StableDiffusionXLPipeline` is diffusers' class of that name: the same arguments and defaults, the same numbers
for the same seed. Everything else (sampling, guidance, decoding, img2img) is `StableDiffusionPipeline`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import prompts as syntax
from .embeddings import Embeddings
from .errors import InputError
from .lora import LoRAs
from .pipeline import Init, PipelineOutput, StableDiffusionPipeline, _check_strength
from .schedulers.adapter import Scheduler
from .speed import kernels


class XLText(NamedTuple):
    """One text's conditioning."""
    context: torch.Tensor  # (1, 77 * k, D): the encoders' penultimate hidden states side by side
    pooled: torch.Tensor  # (1, P): bigG's projected pooled output of the first chunk


def encode(encoders: list, prompt: str, prompt_2: str | None, *, syntax_: str, clip_skip: int | None,
           emphasis: str, embeddings: Embeddings | None = None) -> XLText:
    """`encoders`: [(text_encoder, tokenizer)], ViT-L then bigG, or bigG alone. The first reads `prompt`, the
    second `prompt_2` (default: `prompt`); with one encoder, `prompt` (as diffusers' refiner does). clip_skip
    counts back from the penultimate layer (diffusers' hidden_states[-(clip_skip + 2)]); emphasis weighs the
    joined states. An embedding's vectors are clip_l's and clip_g's side by side: ViT-L takes the first columns,
    bigG the last."""
    texts = [prompt, prompt if prompt_2 is None else prompt_2][:len(encoders)]
    if syntax_ == "a1111" and len(set(texts)) > 1:
        raise InputError("prompt_2 is read with the plain prompt syntax only; with the a1111 syntax both encoders "
                         "read the prompt")
    parts = [syntax.chunks_of(tok, text, syntax_, embeddings) for (_, tok), text in zip(encoders, texts)]
    layer = -(clip_skip or 0) - 2

    def own_columns(chunk: syntax.Chunk, enc, first: bool) -> syntax.Chunk:
        width = enc.config.hidden_size
        cut = (lambda v: v[:, :width]) if first else (lambda v: v[:, -width:])
        return dataclasses.replace(chunk, vectors=[(o, cut(v)) for o, v in chunk.vectors])
    context, pooled = [], None
    for j, chunk in enumerate(parts[0]):
        outs = [syntax.run_chunk(enc, tok, own_columns(chunks[j], enc, first=k == 0 and len(encoders) == 2))
                for k, ((enc, tok), chunks) in enumerate(zip(encoders, parts))]
        context.append(syntax.emphasize(torch.cat([o.hidden_states[layer] for o in outs], -1), chunk, emphasis))
        pooled = outs[-1].text_embeds if pooled is None else pooled
    return XLText(torch.cat(context, 1), pooled)


@dataclass
class Micro:
    """One call's micro-conditioning and second prompts (diffusers' argument names)."""
    original_size: tuple | None = None  # (h, w); None: the image's size
    crops_coords_top_left: tuple = (0, 0)
    target_size: tuple | None = None
    negative_original_size: tuple | None = None
    negative_crops_coords_top_left: tuple = (0, 0)
    negative_target_size: tuple | None = None
    aesthetic_score: float = 6.0  # the refiner's
    negative_aesthetic_score: float = 2.5
    prompts_2: dict = field(default_factory=dict)  # prompt -> its prompt_2
    negatives_2: dict = field(default_factory=dict)
    zero_negative: bool = False  # no negative prompt, and the model wants zeros for it
    img2img: bool = False

    def time_ids(self, size: tuple[int, int], *, negative: bool, aesthetic: bool) -> list[float]:
        """The numbers of one branch, for images of `size` (h, w). The negative branch's sizes default to the
        positive ones; in text to image (diffusers' rule) it has its own only when both negative sizes are given."""
        if aesthetic:
            if negative:
                return [*(self.negative_original_size or self.original_size or size),
                        *self.negative_crops_coords_top_left, self.negative_aesthetic_score]
            return [*(self.original_size or size), *self.crops_coords_top_left, self.aesthetic_score]
        if negative and self.img2img:
            return [*(self.negative_original_size or self.original_size or size), *self.negative_crops_coords_top_left,
                    *(self.negative_target_size or self.target_size or size)]
        if negative and self.negative_original_size is not None and self.negative_target_size is not None:
            return [*self.negative_original_size, *self.negative_crops_coords_top_left, *self.negative_target_size]
        return [*(self.original_size or size), *self.crops_coords_top_left, *(self.target_size or size)]


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    def __init__(self, *, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler: Scheduler,
                 source=None, force_zeros_for_empty_prompt: bool = True, requires_aesthetics_score: bool = False):
        super().__init__(vae=vae, text_encoder=text_encoder or text_encoder_2, tokenizer=tokenizer or tokenizer_2,
                         unet=unet, scheduler=scheduler, source=source)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer  # None in the refiner
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        kernels.by_shape(text_encoder_2)  # as the base class does for the other networks
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.requires_aesthetics_score = requires_aesthetics_score
        self.paired_negative_sizes = False  # True: fix diffusers' batch layout of the sizes (see _unet_inputs)
        width = (text_encoder.config.hidden_size if text_encoder is not None else 768) + \
            text_encoder_2.config.hidden_size
        self.embeddings = Embeddings(tokenizer or tokenizer_2, width, xl=True)  # clip_l and clip_g side by side
        self.loras = LoRAs({name: model for name, model in (("unet", unet), ("text_encoder", text_encoder),
                                                            ("text_encoder_2", text_encoder_2)) if model is not None})
        self._micro = Micro()  # the call in progress's
        numbers = 5 if requires_aesthetics_score else 6  # size numbers (and the refiner's score) per image
        expected = unet.config.projection_class_embeddings_input_dim
        given = text_encoder_2.config.projection_dim + numbers * (unet.config.addition_time_embed_dim or 0)
        if given != expected:
            raise InputError(f"this UNet takes {expected} numbers of pooled text and sizes, but the text encoder "
                             f"and {numbers} size numbers give {given}: the UNet and the text encoders are "
                             f"from different models, or the model_index.json's requires_aesthetics_score is wrong")

    @classmethod
    def _from_components(cls, parts) -> "StableDiffusionXLPipeline":
        if not parts.is_xl:
            raise InputError(f"{parts.source} is not an SDXL model (it has no text_encoder_2); load it with "
                             f"sumie.StableDiffusionPipeline")
        return cls(vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
                   tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet,
                   scheduler=Scheduler.from_folder_config(parts.scheduler_config, source=str(parts.source)),
                   source=parts.source, **parts.options)

    @property
    def _networks(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2, self.unet, self.vae) if m is not None]

    @property
    def _encoder_pairs(self) -> list:
        return [(e, t) for e, t in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2))
                if e is not None]

    # -- text ---------------------------------------------------------------------------------------
    def _encoders(self, prompt_syntax: str, clip_skip: int | None, emphasis: str):
        """(for prompts, for negative prompts): text -> XLText, each distinct text encoded once. The negative
        prompt takes no clip skip in the plain syntax; no negative prompt at all may be zeros (see Micro)."""
        micro = self._micro

        def encoder(skip: int | None, second: dict, zero: bool):
            cache: dict[str, XLText] = {}

            def encode_text(text: str) -> XLText:
                if text not in cache:
                    with contextlib.ExitStack() as placed:
                        for model, _ in self._encoder_pairs:
                            placed.enter_context(self._placed(model))
                        out = encode(self._encoder_pairs, text, second.get(text), syntax_=prompt_syntax,
                                     clip_skip=skip, emphasis=emphasis, embeddings=self.embeddings)
                    if zero and text == "":
                        out = XLText(torch.zeros_like(out.context), torch.zeros_like(out.pooled))
                    cache[text] = XLText(*(t.to(self.execution_device) for t in out))
                return cache[text]
            return encode_text
        negative_skip = clip_skip if prompt_syntax == "a1111" else None
        return (encoder(clip_skip, micro.prompts_2, False),
                encoder(negative_skip, micro.negatives_2, micro.zero_negative))

    def _unet_inputs(self, texts: list[XLText], guided: bool, empty, x: torch.Tensor, rows: range,
                     batch: int) -> dict:
        """The context, the pooled text and the time ids of one UNet call; the negative branch first.

        diffusers lays a guided batch of B images out as [B negative rows, B positive rows] but repeats the time
        ids as [negative, positive] B times, so that with B > 1 alternate rows get the other branch's sizes. By
        default sumie gives each row the sizes diffusers gives it; with `paired_negative_sizes`, each branch its
        own."""
        contexts = syntax.pad_to_same_length([t.context for t in texts], lambda: empty().context)
        size = tuple(s * self.vae_scale_factor for s in x.shape[-2:])
        if not guided:
            negative = [False] * len(rows)
        elif self.paired_negative_sizes:
            negative = [True] * len(rows) + [False] * len(rows)
        else:  # diffusers' row r of 2B: the negative sizes when r is even
            negative = [r % 2 == 0 for r in [*rows, *(batch + i for i in rows)]]
        ids = torch.tensor([self._micro.time_ids(size, negative=n, aesthetic=self.requires_aesthetics_score)
                            for n in negative], dtype=contexts[0].dtype, device=x.device)
        return {"encoder_hidden_states": torch.cat(contexts),
                "added_cond_kwargs": {"text_embeds": torch.cat([t.pooled for t in texts]), "time_ids": ids}}

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], prompt_2: str | list[str] | None = None,
                      negative_prompt: str | list[str] | None = None,
                      negative_prompt_2: str | list[str] | None = None, *, prompt_syntax: str = "plain",
                      clip_skip: int | None = None, num_images_per_prompt: int = 1, emphasis: str = "original"):
        """diffusers' four tensors: (prompt_embeds (B, 77 * k, D), negative_prompt_embeds, pooled_prompt_embeds
        (B, P), negative_pooled_prompt_embeds)."""
        syntax.check_options(prompt_syntax, emphasis, clip_skip)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = self._negatives(negative_prompt, prompts)
        self._micro = self._call_texts(prompts, prompt_2, negatives, negative_prompt_2, prompt_syntax)
        try:
            encode, encode_negative = self._encoders(prompt_syntax, clip_skip, emphasis)
            texts = [encode(p) for p in prompts] + [encode_negative(p) for p in negatives or [""] * len(prompts)]
        finally:
            self._micro = Micro()
        contexts = syntax.pad_to_same_length([t.context for t in texts], lambda: encode_negative("").context)
        n = len(prompts)
        each = lambda ts: torch.cat(ts).repeat_interleave(num_images_per_prompt, 0)
        return (each(contexts[:n]), each(contexts[n:]), each([t.pooled for t in texts[:n]]),
                each([t.pooled for t in texts[n:]]))

    def _call_texts(self, prompts: list[str], prompt_2, negatives: list[str] | None, negative_prompt_2,
                    prompt_syntax: str = "plain", **sizes) -> Micro:
        """A call's Micro: each prompt's second prompt, and whether the negative prompt is zeros: in diffusers'
        reading, none given and the model's force_zeros_for_empty_prompt; in A1111's, an empty one (its
        get_learned_conditioning zeroes an all-empty negative batch for SDXL)."""
        def second(texts: list[str], given) -> dict:
            if given is None:
                return {}
            given = [given] * len(texts) if isinstance(given, str) else list(given)
            if len(given) != len(texts):
                raise InputError(f"got {len(given)} second prompts for {len(texts)} prompts; give one, "
                                 f"or one per prompt")
            return dict(zip(texts, given))
        return Micro(prompts_2=second(prompts, prompt_2), negatives_2=second(negatives or [""] * len(prompts),
                                                                              negative_prompt_2),
                     zero_negative=negatives is None and self.force_zeros_for_empty_prompt if prompt_syntax == "plain"
                     else all(not n for n in negatives or [""]), **sizes)

    # -- the call -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], prompt_2: str | list[str] | None = None, *,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 5.0, original_size: tuple | None = None,
                 crops_coords_top_left: tuple = (0, 0), target_size: tuple | None = None,
                 negative_original_size: tuple | None = None, negative_crops_coords_top_left: tuple = (0, 0),
                 negative_target_size: tuple | None = None, denoising_end: float | None = None,
                 _img2img: dict | None = None, **kwargs) -> PipelineOutput:
        """diffusers' StableDiffusionXLPipeline arguments (sizes as (h, w), the crop as (y, x)), and every
        sumie argument of StableDiffusionPipeline. `denoising_end` (0 to 1) stops where that fraction of the
        denoising is done, for a refiner to take over (with output_type="latent"). (`_img2img`: the img2img
        pipeline's aesthetic scores.)"""
        if self.requires_aesthetics_score and kwargs.get("_init") is None:
            raise InputError(f"{self.source or 'this model'} is an SDXL refiner, which only refines an image: use "
                             f"StableDiffusionXLImg2ImgPipeline (CLI: --init-image)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self._micro = self._call_texts(
            prompts, prompt_2, self._negatives(negative_prompt, prompts), negative_prompt_2,
            kwargs.get("prompt_syntax", "plain"),
            original_size=_pair(original_size, "original_size"), target_size=_pair(target_size, "target_size"),
            crops_coords_top_left=_pair(crops_coords_top_left, "crops_coords_top_left"),
            negative_original_size=_pair(negative_original_size, "negative_original_size"),
            negative_crops_coords_top_left=_pair(negative_crops_coords_top_left, "negative_crops_coords_top_left"),
            negative_target_size=_pair(negative_target_size, "negative_target_size"), **(_img2img or {}))
        try:
            return super().__call__(prompt, negative_prompt, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, _end=denoising_end, **kwargs)
        finally:
            self._micro = Micro()


def _pair(value, name: str) -> tuple | None:
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise InputError(f"{name} must be two numbers, (height, width) or for a crop (top, left); got {value!r}")
    return tuple(value)


class StableDiffusionXLImg2ImgPipeline(StableDiffusionXLPipeline):
    """diffusers' SDXL img2img, the refiner's pipeline. As SD's img2img (`strength`), or with `denoising_start`
    it runs the steps after that fraction of the schedule on the latents as given, not re-noised: the second half
    of the base + refiner "ensemble of experts" (Podell et al. 2023, sec. 2.5), after the base's
    denoising_end and output_type="latent". The refiner conditions on an aesthetic score instead of the target
    size: high for the prompt's branch, low for the negative one."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], prompt_2: str | list[str] | None = None, image=None,
                 strength: float = 0.3, *, denoising_start: float | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, **kwargs) -> PipelineOutput:
        if image is None:
            raise InputError("give an init image (or the base model's latents): pipe(prompt, image=...)")
        _check_strength(strength)
        return super().__call__(prompt, prompt_2, _init=Init(image, strength, denoising_start=denoising_start),
                                _img2img=dict(img2img=True, aesthetic_score=aesthetic_score,
                                              negative_aesthetic_score=negative_aesthetic_score), **kwargs)
