"""The GPU figures: edgegen on ONNX Runtime's CUDA provider against PyTorch eager on the same GPU, in one run.

    python benchmarks/gpu.py                          # GPT-2 small + a ~1.1B Llama, DDPM-cifar10 UNet + tiny SD
    python benchmarks/gpu.py --only lm --lm gpt2      # one part
    python benchmarks/gpu.py --device cpu --quick     # tiny models on the CPU: checks the script without a GPU

Language models (random weights from configs): converted with ``--target cuda`` (fp16, standard
attention: ORT's CUDA GroupQueryAttention is not used), batch 1, a 32-token prompt, 128 greedy new
tokens; decode tokens/s counts the tokens after the first.  PyTorch eager runs the Hugging Face
model in fp16 with its KV cache, taking each token to the host as edgegen does.

Diffusion: milliseconds per step of a 20-step DDIM run (batch 1; tiny SD with guidance 7.5, so the
denoiser sees batch 2): edgegen with the latents on the device (``latents_on_device``), edgegen's
numpy loop (latents to the host and back every step), a bare ``session.run`` of the denoiser, and
the diffusers UNet in PyTorch eager fp16.

Runs are interleaved and repeated (median); compare ratios within a run.  ``--device cpu`` uses
the CPU provider and fp32 torch: a check of the script, not a figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))        # the other benchmarks' builders and loops

from diffusion import cifar10_unet  # noqa: E402  (benchmarks/ is not a package)
from lm import edgegen_runtime, save_tokenizer, time_contenders, torch_eager  # noqa: E402
LMS = {
    "gpt2": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)),
    "llama-1b": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)),
}
QUICK_LMS = {
    "gpt2": ("gpt2", dict(n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=1000)),
    "llama-1b": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)),
}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


# --- language models -------------------------------------------------------------------------------------

def build_lm(root: Path, kind: str, config: dict) -> tuple[Path, int]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**config, bos_token_id=0, eos_token_id=0))
        specials, named = ["<|endoftext|>"], {"eos_token": "<|endoftext|>"}
    else:
        model = LlamaForCausalLM(LlamaConfig(**config, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False))
        specials, named = ["<unk>", "<s>", "</s>"], {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    model.eval().save_pretrained(root / "hf")
    save_tokenizer(root / "hf", HERE.read_text(), specials, **named)
    return root / "hf", sum(p.numel() for p in model.parameters())


def bench_lm(root: Path, name: str, kind: str, config: dict, args: argparse.Namespace) -> None:
    import edgegen

    hf, params = build_lm(root / name, kind, config)
    t0 = time.perf_counter()
    target = "cuda" if args.device == "cuda" else "cpu"
    artifact = edgegen.convert(hf, root / f"{name}-artifact", overwrite=True, target=target,
                               quantize="fp16" if target == "cuda" else "none", attention="standard")
    print(f"{name}: {params / 1e6:.0f}M parameters, converted in {time.perf_counter() - t0:.0f} s")
    prompt = np.random.default_rng(0).integers(3, config["vocab_size"], (1, args.prompt_tokens), dtype=np.int64)
    runs = {"edgegen": edgegen_runtime(artifact, prompt, args.new_tokens, provider=args.device),
            "torch eager": torch_eager(hf, prompt, args.new_tokens, device=args.device)}
    decode, prefill, tokens = time_contenders(runs, args.repeats, args.prompt_tokens)
    same = sum(a == b for a, b in zip(tokens["edgegen"], tokens["torch eager"]))
    for label in runs:
        print(f"  {label:<12} decode {statistics.median(decode[label]):8.1f} tok/s   "
              f"prefill {statistics.median(prefill[label]):8.1f} tok/s")
    ratio = statistics.median(decode["edgegen"]) / statistics.median(decode["torch eager"])
    print(f"  edgegen / torch eager decode: {ratio:.2f}x; greedy tokens equal to torch's: {same}/{len(tokens['edgegen'])}"
          " (fp16 rounding may fork a random model's argmax)")


# --- diffusion -------------------------------------------------------------------------------------------

def build_ddpm(root: Path, quick: bool) -> Path:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    if quick:
        unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(16, 32), norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:
        unet = cifar10_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root)
    return root


def bench_diffusion(root: Path, name: str, pipe: Path, args: argparse.Namespace) -> None:
    import torch
    from diffusers import UNet2DConditionModel, UNet2DModel

    import edgegen

    target = "cuda" if args.device == "cuda" else "cpu"
    artifact = edgegen.convert(pipe, root / f"{name}-artifact", overwrite=True, target=target,
                               quantize="fp16" if target == "cuda" else "none")
    model = edgegen.load(artifact, provider=args.device)
    text = model.sampler.conditioning == "text"
    options = dict(seed=0, steps=args.steps, scheduler="ddim", **({"prompt": "a red cat", "guidance": 7.5} if text
                                                                  else {}))
    rows = 2 if text else 1
    c, h, w = model.sampler.sample_shape
    rng = np.random.default_rng(0)
    feed = {"sample": rng.standard_normal((rows, c, h, w), dtype=np.float32),
            "timestep": np.full((rows,), 500.0, np.float32)}
    if text:
        feed["encoder_hidden_states"] = rng.standard_normal((rows, *model.sessions["denoiser"].get_inputs()[2].shape[1:]),
                                                            dtype=np.float32)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    unet_class = UNet2DConditionModel if text else UNet2DModel
    unet = unet_class.from_pretrained(pipe / "unet", torch_dtype=dtype).to(args.device).eval()
    tx = {k: torch.from_numpy(v).to(args.device, dtype if v.dtype == np.float32 and k != "timestep" else None)
          for k, v in feed.items()}

    def eager_step() -> None:
        with torch.no_grad():
            unet(tx["sample"], tx["timestep"], *([tx["encoder_hidden_states"]] if text else []))

    def loop(on_device: bool):
        def run() -> None:
            model.latents_on_device = on_device
            model.generate(1, **options)
        return run

    runs = {"edgegen, latents on device": (loop(True), args.steps),
            "edgegen, numpy loop": (loop(False), args.steps),
            "bare session.run": (lambda: model.sessions["denoiser"].run(None, feed), 1),
            "torch eager": (eager_step, 1)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn, _ in runs.values():
        fn()
    for _ in range(args.repeats):
        for label, (fn, per) in runs.items():
            reps = 1 if per > 1 else args.steps
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(args.device)
            times[label].append((time.perf_counter() - t0) / (per * reps))
    print(f"{name} ({model.provider}, {c}x{h}x{w} latents, denoiser batch {rows}), ms per step:")
    for label in runs:
        print(f"  {label:<28} {median_ms(times[label]):8.2f}")
    eager = statistics.median(times["torch eager"])
    print(f"  device loop: {eager / statistics.median(times['edgegen, latents on device']):.2f}x torch eager, "
          f"{statistics.median(times['edgegen, numpy loop']) / statistics.median(times['edgegen, latents on device']):.2f}x"
          " the numpy loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="Tiny models, 2 repeats: checks the script.")
    parser.add_argument("--only", choices=["lm", "diffusion"], default=None)
    parser.add_argument("--lm", nargs="*", choices=sorted(LMS), default=sorted(LMS))
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="Diffusion steps per call [default: 20; --quick 4].")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the models here (default: a temp dir).")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 16
    if args.steps is None:
        args.steps = 4 if args.quick else 20

    from edgegen.runtimes.session import available_providers

    if args.device not in available_providers():
        sys.exit(f"onnxruntime offers {available_providers()}, not {args.device}: install onnxruntime-gpu (alone) and "
                 "run on a CUDA machine, or pass --device cpu to check the script")
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from diffusion_support import write_tiny_sd_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "lm"):
            for name in args.lm:
                kind, config = (QUICK_LMS if args.quick else LMS)[name]
                bench_lm(root, name, kind, config, args)
        if args.only in (None, "diffusion"):
            bench_diffusion(root, "ddpm-cifar10" if not args.quick else "ddpm-tiny",
                            build_ddpm(root / "ddpm", args.quick), args)
            bench_diffusion(root, "tiny-sd", write_tiny_sd_pipeline(root / "sd", size="tiny" if args.quick else "bench"),
                            args)


if __name__ == "__main__":
    main()
