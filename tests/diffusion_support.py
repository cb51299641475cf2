"""Tiny diffusers pipelines built from configs in the test (random weights, no downloads).

Importable as ``diffusion_support`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                    "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": True}


def write_tiny_ddpm_pipeline(dest: Path, seed: int = 0, prediction_type: str = "epsilon",
                             sample_size: int = 16) -> Path:
    """A DDPMPipeline directory (UNet2DModel in the google/ddpm-cifar10 layout, shrunk) at ``dest``."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(dest)
    return dest


def _tiny_clip_tokenizer(dest: Path, max_length: int):
    """A CLIP BPE tokenizer over single characters plus a few merges (written as vocab.json/merges.txt)."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]
    tokens = chars + [c + "</w>" for c in chars] + ["th", "the</w>", "ca", "cat</w>", "do", "dog</w>", "re", "red</w>"]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(dest / "vocab.json"), str(dest / "merges.txt"), model_max_length=max_length,
                         pad_token="<|endoftext|>")


#: "tiny": for tests (16x16 images); "bench": diffusers' own test pipeline size (64x64 images, 32x32 latents)
SD_SIZES = {
    "tiny": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
                 max_length=16, layers=1, unet_blocks=(16, 32), head_dim=4, vae_blocks=(8, 16), latent=8, groups=8),
    "bench": dict(text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4),
                  max_length=77, layers=2, unet_blocks=(32, 64), head_dim=8, vae_blocks=(32, 64), latent=32,
                  groups=32),
}


def write_tiny_sd_pipeline(dest: Path, seed: int = 0, prediction_type: str = "epsilon", size: str = "tiny",
                           lcm: bool = False, inpaint: bool = False) -> Path:
    """A StableDiffusionPipeline directory (CLIP text encoder, UNet2DConditionModel, AutoencoderKL,
    CLIP tokenizer, DDIM scheduler with SD's scaled_linear schedule), small, at ``dest``.  ``lcm``: a
    LatentConsistencyModelPipeline instead (the UNet with a guidance embedding, time_cond_proj_dim 32, and
    LCMScheduler), as LCM-distilled checkpoints ship.  ``inpaint``: a StableDiffusionInpaintPipeline (the UNet
    takes 9 channels: latents, mask, masked-image latents)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c = SD_SIZES[size]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tiny_clip_tokenizer(Path(tmp), c["max_length"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), **c["text"], max_position_embeddings=c["max_length"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=c["latent"], in_channels=9 if inpaint else 4, out_channels=4, layers_per_block=c["layers"],
        block_out_channels=c["unet_blocks"], norm_num_groups=c["groups"], cross_attention_dim=32,
        attention_head_dim=c["head_dim"], time_cond_proj_dim=32 if lcm else None,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=c["vae_blocks"],
                        norm_num_groups=c["groups"], layers_per_block=1, sample_size=c["latent"] * 2,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
    if lcm:
        from diffusers import LatentConsistencyModelPipeline, LCMScheduler

        with torch.no_grad():   # random weights barely hear the guidance embedding; a distilled UNet does
            unet.time_embedding.cond_proj.weight.mul_(20)

        scheduler = LCMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", set_alpha_to_one=True, steps_offset=1,
                                 original_inference_steps=50, prediction_type=prediction_type)
        LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False).save_pretrained(dest)
        return dest
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type=prediction_type)
    cls = StableDiffusionPipeline
    if inpaint:
        from diffusers import StableDiffusionInpaintPipeline as cls
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.save_pretrained(dest)
    return dest


def write_tiny_sdxl_pipeline(dest: Path, seed: int = 0, scheduler: str = "EulerDiscreteScheduler",
                             force_zeros_for_empty_prompt: bool = True) -> Path:
    """A StableDiffusionXLPipeline directory (two CLIP text encoders, the second with a projection and "!" as
    its pad token as SDXL's, a UNet with ``text_time`` added conditioning, an AutoencoderKL, SDXL's scaled-linear
    schedule with its own scheduler class), small (16x16 images), at ``dest``."""
    import tempfile

    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    c = SD_SIZES["tiny"]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tiny_clip_tokenizer(Path(tmp), c["max_length"])
        tokenizer_2 = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                    model_max_length=c["max_length"], pad_token="!")
    def text_config(**extra):
        return CLIPTextConfig(vocab_size=len(tokenizer), **c["text"], max_position_embeddings=c["max_length"],
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **extra)
    text_encoder = CLIPTextModel(text_config())
    text_encoder_2 = CLIPTextModelWithProjection(text_config(projection_dim=24))
    unet = UNet2DConditionModel(
        sample_size=c["latent"], in_channels=4, out_channels=4, layers_per_block=c["layers"],
        block_out_channels=c["unet_blocks"], norm_num_groups=c["groups"], cross_attention_dim=64,
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 24,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=c["vae_blocks"],
                        norm_num_groups=c["groups"], layers_per_block=1, sample_size=c["latent"] * 2,
                        scaling_factor=0.13025, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
    sched = getattr(diffusers, scheduler)(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                          beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=sched,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    pipe.save_pretrained(dest)
    return dest
