"""Diffusion sampling: edgegen against diffusers on torch, Optimum's ONNX Runtime pipeline and a bare
``session.run`` loop, side by side in one run.

    python benchmarks/diffusion.py                 # tiny SD (64x64 images, 20 DDIM steps) + DDPM-cifar10 UNet
    python benchmarks/diffusion.py --skip-ddpm     # only the text-to-image comparison
    python benchmarks/diffusion.py --quick         # smaller and fewer runs, to check the script

Text-to-image: a Stable Diffusion pipeline built from diffusers' own test configs (random weights,
64x64 images, 32x32 latents), 20 DDIM steps, guidance 7.5, batch 1, same prompt.  Every contender
runs in its own fresh process, which reports its load time, its median seconds per image and its
peak RSS (VmHWM).  The bare loop is the floor: the same ONNX graphs as edgegen's artifact, a
minimal numpy DDIM, no checks.

DDPM: the google/ddpm-cifar10 UNet2DModel architecture (35.7M parameters, 32x32, random weights):
edgegen's per-step time (a 20-step DDIM loop / 20) against the bare ``session.run`` time of the
denoiser on the same inputs.  Compare the ratios printed at the end, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "a red cat on the mat"
HERE = Path(__file__).resolve()


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- the contenders, each run in a child process -----------------------------------------------------

def run_diffusers(pipe_dir: str, steps: int, repeats: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0

    def once() -> None:
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, output_type="np",
                 generator=torch.Generator().manual_seed(0))
    return {"load_s": load, **_time(once, repeats)}


def run_optimum(onnx_dir: str, steps: int, repeats: int) -> dict:
    import torch
    from diffusers import DDIMScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = ORTStableDiffusionPipeline.from_pretrained(onnx_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0

    def once() -> None:
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, output_type="np",
             generator=torch.Generator().manual_seed(0))
    return {"load_s": load, **_time(once, repeats)}


def run_bare(artifact: str, steps: int, repeats: int) -> dict:
    """The floor: edgegen's graphs, plain session.run, a minimal DDIM with CFG, no checks."""
    import onnxruntime as ort
    import tokenizers

    t0 = time.perf_counter()
    root = Path(artifact)
    m = json.loads((root / "edgegen.json").read_text())
    s = {role: ort.InferenceSession(str(root / g["file"]), providers=["CPUExecutionProvider"])
         for role, g in m["graphs"].items() if role != "vae_encoder"}
    tok = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    text = m["sampler"]["text"]
    tok.enable_truncation(text["max_length"])
    tok.enable_padding(length=text["max_length"], pad_id=text["pad_token_id"])
    cfg = m["sampler"]["scheduler_config"]
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"]) ** 2
    acp = np.cumprod(1.0 - betas)
    load = time.perf_counter() - t0
    shape = m["sampler"]["sample_shape"]

    def once() -> None:
        ids = np.array([e.ids for e in tok.encode_batch(["", PROMPT])], dtype=np.int64)
        hidden = s["text_encoder"].run(None, {"input_ids": ids})[0]
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        ratio = cfg["num_train_timesteps"] // steps
        ts = (np.arange(steps) * ratio)[::-1] + cfg.get("steps_offset", 0)
        for t in ts:
            eps = s["denoiser"].run(None, {"sample": np.concatenate([x, x]), "timestep": np.full(2, t, np.float32),
                                           "encoder_hidden_states": hidden})[0]
            eps = eps[:1] + 7.5 * (eps[1:] - eps[:1])
            a, prev = acp[t], (acp[t - ratio] if t - ratio >= 0 else acp[0])
            x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
            x = (np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps).astype(np.float32)
        s["vae_decoder"].run(None, {"latent_sample": x / np.float32(m["sampler"]["vae"]["scaling_factor"])})
    return {"load_s": load, **_time(once, repeats)}


def run_edgegen(artifact: str, steps: int, repeats: int) -> dict:
    import edgegen

    t0 = time.perf_counter()
    model = edgegen.load(artifact, provider="cpu")
    load = time.perf_counter() - t0
    result = {"load_s": load, **_time(lambda: model.sample(1, seed=0, prompt=PROMPT, steps=steps, guidance=7.5,
                                                           scheduler="ddim"), repeats)}
    result["torch_imported"] = "torch" in sys.modules
    return result


def _time(fn, repeats: int) -> dict:
    fn()                                                   # warm-up: first-run allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"s_per_image": statistics.median(times), "runs": times}


CHILDREN = {"diffusers": run_diffusers, "optimum": run_optimum, "bare": run_bare, "edgegen": run_edgegen}


def child(name: str, path: str, steps: int, repeats: int) -> dict:
    cmd = [sys.executable, str(HERE), "--child", name, path, str(steps), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- DDPM: loop overhead over the bare denoiser ---------------------------------------------------------

def cifar10_unet():
    """google/ddpm-cifar10-32's UNet2DModel architecture (35.7M parameters), random weights."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def ddpm_overhead(root: Path, steps: int, repeats: int) -> dict:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler

    import edgegen

    torch.manual_seed(0)
    unet = cifar10_unet()
    params = sum(p.numel() for p in unet.parameters())
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root / "ddpm")
    artifact = edgegen.convert(root / "ddpm", root / "ddpm-artifact", overwrite=True, quantize="none")
    model = edgegen.load(artifact, provider="cpu")
    session = model.sessions["denoiser"]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    feed = {"sample": x, "timestep": np.full((1,), 500.0, np.float32)}
    with torch.no_grad():
        tx = torch.from_numpy(x)
        unet(tx, 500)
    bare, loop, eager = [], [], []
    for _ in range(repeats):                            # interleaved, so drift hits all three alike
        t0 = time.perf_counter()
        for _ in range(steps):
            session.run(None, feed)
        bare.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        model.generate(1, seed=0, steps=steps, scheduler="ddim")
        loop.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(3):
                unet(tx, 500)
        eager.append((time.perf_counter() - t0) / 3)
    return {"params_m": params / 1e6, "bare_ms": 1000 * statistics.median(bare),
            "edgegen_ms": 1000 * statistics.median(loop), "torch_eager_ms": 1000 * statistics.median(eager)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, path, steps, repeats = sys.argv[2:6]
        result = CHILDREN[name](path, int(steps), int(repeats))
        result["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 steps, 2 repeats")
    parser.add_argument("--skip-ddpm", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the models here (default: a temp dir).")
    args = parser.parse_args()
    steps, repeats = (3, 2) if args.quick else (args.steps, args.repeats)
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from diffusion_support import write_tiny_sd_pipeline

    import edgegen

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        pipe = write_tiny_sd_pipeline(root / "sd", size="bench")
        t0 = time.perf_counter()
        artifact = edgegen.convert(pipe, root / "sd-artifact", overwrite=True, quantize="none")
        print(f"edgegen convert: {time.perf_counter() - t0:.1f} s")
        from optimum.exporters.onnx import main_export

        main_export(str(pipe), str(root / "sd-optimum"), task="text-to-image", no_post_process=False)
        results = {}
        for name, path in (("diffusers", pipe), ("optimum", root / "sd-optimum"), ("bare", artifact),
                           ("edgegen", artifact)):
            results[name] = child(name, str(path), steps, repeats)
        print(f"\ntext-to-image, 64x64, {steps} DDIM steps, guidance 7.5, batch 1 (median of {repeats})")
        print(f"{'':<10} {'s/image':>9} {'load s':>8} {'peak RSS MiB':>13}")
        for name, r in results.items():
            print(f"{name:<10} {r['s_per_image']:>9.3f} {r['load_s']:>8.2f} {r['peak_rss_mib']:>13.0f}")
        e = results["edgegen"]
        print(f"edgegen speed: {results['diffusers']['s_per_image'] / e['s_per_image']:.2f}x diffusers-torch, "
              f"{results['optimum']['s_per_image'] / e['s_per_image']:.2f}x Optimum, "
              f"{results['bare']['s_per_image'] / e['s_per_image']:.2f}x bare loop; "
              f"RSS {e['peak_rss_mib'] / results['optimum']['peak_rss_mib']:.2f}x Optimum's; "
              f"torch imported: {e['torch_imported']}")
        if not args.skip_ddpm:
            d = ddpm_overhead(root, steps, repeats)
            print(f"\nDDPM-cifar10 UNet ({d['params_m']:.1f}M params, 32x32, batch 1), per step: bare session.run "
                  f"{d['bare_ms']:.1f} ms, edgegen loop {d['edgegen_ms']:.1f} ms "
                  f"({d['edgegen_ms'] / d['bare_ms']:.3f}x bare), torch eager {d['torch_eager_ms']:.1f} ms")


if __name__ == "__main__":
    main()
