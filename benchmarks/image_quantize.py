"""Quantizing conv nets: fp32, fp16, int8 dynamic and int8 static (QDQ) side by side in one run.

    python benchmarks/image_quantize.py              # DDPM-cifar10 UNet (35.7M, 32x32) and DCGAN 64x64
    python benchmarks/image_quantize.py --quick      # small models, to check the script
    python benchmarks/image_quantize.py --all-ops    # + int8 static quantizing every op ORT's QDQ knows

Each model is converted once to fp32 (edgegen.convert), then quantized by edgegen's own path
(:func:`edgegen.converters.image_quantize.quantize_artifact`: calibration on the runtime's sampling
loop, PSNR of samples against the fp32 artifact for the same seeds, the quality gate at 30 dB).
Timing: the main graph (the denoiser for one step, the generator for one sample) at batch 1,
every variant in one process, rounds interleaved so load drift hits all alike; median ms.

Models (random weights, no downloads): the google/ddpm-cifar10 UNet2DModel architecture, the
DDPMPipeline default scheduler (the artifact's default: DDPM; PSNR over 10 steps, as recorded);
the DCGAN generator of Radford et al. 2016 at 64x64 (nz 100, ngf 64, 3.6M parameters) with
its paper's initialisation and BatchNorm statistics gathered in training mode, so activations
have the scale a trained generator's have.  Compare ratios, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEMES = ("fp16", "int8", "int8-static")


def ddpm_pipeline(root: Path, quick: bool) -> Path:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    blocks = (32, 64, 64, 64) if quick else (128, 256, 256, 256)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=blocks,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    print(f"DDPM UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root / "ddpm")
    return root / "ddpm"


def dcgan_spec(quick: bool):
    """The DCGAN 64x64 generator of benchmarks/image_families.py, BatchNorm statistics over 8 batches of 64."""
    from edgegen.converters.image_spec import GANSpec

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from image_families import dcgan  # benchmarks/ is not a package

    g = dcgan(quick, passes=8, batch=64)
    print(f"DCGAN 64x64 generator: {sum(p.numel() for p in g.parameters()) / 1e6:.1f}M parameters")
    return GANSpec(generator=g, latent_dim=100, name="dcgan-64")


def quantized_variants(fp32: Path, root: Path, all_ops: bool) -> dict[str, tuple[Path | None, dict]]:
    """name -> (artifact or None, its validation.quantization or {'error': ...})."""
    import json

    from edgegen.converters import image_quant_graphs, image_quantize
    from edgegen.errors import ConversionError

    out: dict[str, tuple[Path | None, dict]] = {"fp32": (fp32, {})}
    runs = [(s, s, image_quant_graphs.COMPUTE_OPS) for s in SCHEMES]
    if all_ops:
        runs.append(("int8-static all ops", "int8-static", None))
    for name, scheme, op_types in runs:
        started = time.perf_counter()
        image_quant_graphs.STATIC_OP_TYPES = op_types
        try:
            path = image_quantize.quantize_artifact(fp32, root / f"{fp32.name}-{name.replace(' ', '-')}", scheme,
                                                    overwrite=True, report=lambda line: print(f"  {line}"))
        except ConversionError as exc:
            out[name] = (None, {"error": str(exc)})
            continue
        finally:
            image_quant_graphs.STATIC_OP_TYPES = image_quant_graphs.COMPUTE_OPS
        out[name] = (path, json.loads((path / "edgegen.json").read_text())["validation"]["quantization"])
        print(f"  {name}: quantized in {time.perf_counter() - started:.0f} s")
    return out


def per_call_ms(variants: dict[str, tuple[Path | None, dict]], feed: dict[str, np.ndarray],
                repeats: int) -> dict[str, float]:
    """Median ms of one call of the family's main graph at batch 1, per variant, rounds interleaved."""
    import edgegen
    from edgegen.converters.image_quantize import FAMILIES

    sessions = {}
    for name, (path, _) in variants.items():
        if path is not None:
            model = edgegen.load(path, provider="cpu")
            family = FAMILIES[model.family]
            holder, key = family.session_slot(model, family.roles[0])
            sessions[name] = holder[key]
    for session in sessions.values():
        session.run(None, feed)                                                 # warm-up
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feed)
            times[name].append(1000 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def graph_bytes(artifact: Path) -> int:
    return sum(p.stat().st_size for p in artifact.iterdir() if ".onnx" in p.name)


def table(title: str, unit: str, variants: dict[str, tuple[Path | None, dict]], ms: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'':<22} {unit:>12} {'x fp32':>7} {'graph MiB':>10} {'PSNR dB':>8}  kept in float")
    fp32_path = variants["fp32"][0]
    fp32_size = graph_bytes(fp32_path)
    for name, (path, q) in variants.items():
        if path is None:
            print(f"{name:<22} n/a: {q['error']}")
            continue
        size = graph_bytes(path)
        floats = sum(len(v) for v in q.get("float_nodes", {}).values())
        psnr = f"{q['psnr_db']:>8.1f}" if q else f"{'(ref)':>8}"
        print(f"{name:<22} {ms[name]:>12.2f} {ms['fp32'] / ms[name]:>7.2f} {size / 2**20:>10.2f} {psnr}  "
              + (f"{floats} weighted nodes; size {size / fp32_size:.2f}x" if q else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, few repeats")
    parser.add_argument("--all-ops", action="store_true", help="also int8 static over every op ORT's QDQ knows")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-ddpm", action="store_true")
    parser.add_argument("--skip-dcgan", action="store_true")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats

    import torch

    import edgegen

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_ddpm:
            started = time.perf_counter()
            fp32 = edgegen.convert(ddpm_pipeline(root, args.quick), root / "ddpm-fp32", quantize="none", report=print)
            print(f"converted in {time.perf_counter() - started:.0f} s")
            variants = quantized_variants(fp32, root, args.all_ops)
            feed = {"sample": rng.standard_normal((1, 3, 32, 32)).astype(np.float32),
                    "timestep": np.full((1,), 500.0, np.float32)}
            table("DDPM-cifar10 UNet, 32x32, batch 1 (PSNR: 4 samples, 10 DDPM steps, vs fp32)", "ms/step",
                  variants, per_call_ms(variants, feed, repeats))
        if not args.skip_dcgan:
            fp32 = edgegen.convert(dcgan_spec(args.quick), root / "dcgan-fp32", quantize="none", report=print)
            variants = quantized_variants(fp32, root, args.all_ops)
            feed = {"z": rng.standard_normal((1, 100)).astype(np.float32)}
            table("DCGAN generator, 64x64, batch 1 (PSNR: 16 samples vs fp32)", "ms/sample", variants,
                  per_call_ms(variants, feed, repeats))


if __name__ == "__main__":
    main()
