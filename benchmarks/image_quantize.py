"""Quantizing conv nets: fp32, fp16, int8 dynamic and int8 static (QDQ) side by side in one run.

    python benchmarks/image_quantize.py                    # all four models below
    python benchmarks/image_quantize.py --only vae vq-vae  # just these (of: ddpm, dcgan, vae, vq-vae)
    python benchmarks/image_quantize.py --quick            # small models, to check the script
    python benchmarks/image_quantize.py --all-ops          # + int8 static quantizing every op ORT's QDQ knows
    python benchmarks/image_quantize.py --threads 1        # timed sessions on one thread (a loaded machine)

Each model is converted once to fp32 (edgegen.convert), then quantized by edgegen's own path
(:func:`edgegen.converters.quantization.psnr_gate.quantize_artifact`: calibration on the runtime's sampling
loop, PSNR of samples against the fp32 artifact for the same seeds, the quality gate at 30 dB).
Timing: the main graph (the denoiser for one step, the generator or decoder for one call) at batch 1,
and for the VAE and VQ-VAE decoders also at batch 16 (an app decodes many latents at once), fed what
the fp32 runtime draws; every variant in one process, rounds interleaved so load drift hits all
alike; median ms.  On a machine others load, give --threads fewer than its cores: on a 2-core machine
running other work, two threads timed the same fp32 decoder 1.3x to 3x slower than one, and unsteadily.

Printed per model and scheme: ms per call at each batch and its speed ratio to fp32 (x fp32 > 1:
faster), the quantized graphs' MiB, the samples' PSNR vs fp32 as quantize_artifact recorded it and
whether it met the gate, the weight-bearing nodes left in float (not quantizable by the scheme, or
kept by the gate: that count and the gate's attempts in brackets), and those graphs' size vs fp32.

Models (random weights, no downloads): the google/ddpm-cifar10 UNet2DModel architecture, the
DDPMPipeline default scheduler (the artifact's default: DDPM; PSNR over 10 steps, as recorded);
the DCGAN generator of Radford et al. 2016 at 64x64 (nz 100, ngf 64, 3.6M parameters) with
its paper's initialisation and BatchNorm statistics gathered in training mode, so activations
have the scale a trained generator's have; the conv VAE 64x64 (latent 128: Linear, then 4
ConvTranspose2d) and the VQ-VAE 64x64 (van den Oord et al. 2017: 16x16 grid of 512 codes of 64 dims,
conv 3x3, two residual blocks, 2 ConvTranspose2d; graph: code lookup + decoder) of
benchmarks/image_families.py.  Compare ratios, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _image_families():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import image_families  # benchmarks/ is not a package

    return image_families


def dcgan_spec(root: Path, quick: bool):
    """The DCGAN 64x64 generator of benchmarks/image_families.py, BatchNorm statistics over 8 batches of 64."""
    from edgegen import GANSpec

    g = _image_families().dcgan(quick, passes=8, batch=64)
    print(f"DCGAN 64x64 generator: {sum(p.numel() for p in g.parameters()) / 1e6:.1f}M parameters")
    return GANSpec(generator=g, latent_dim=100, name="dcgan-64")


def family_spec(case: str) -> Callable[[Path, bool], Any]:
    """The spec of image_families.<case>(quick), its decoder's size printed."""
    def build(root: Path, quick: bool) -> Any:
        spec = getattr(_image_families(), case)(quick).spec
        print(f"{spec.name} decoder: {sum(p.numel() for p in spec.decoder.parameters()) / 1e6:.2f}M parameters")
        return spec
    return build


@dataclass(frozen=True)
class Model:
    title: str
    unit: str                                                     # what one timed call makes
    batches: tuple[int, ...]
    source: Callable[[Path, bool], Any]                           # (tmp, quick) -> what edgegen.convert takes
    feed: Callable[[Any, int, np.random.Generator], dict[str, np.ndarray]]   # (fp32 runtime, batch, rng) -> inputs


MODELS = {
    "ddpm": Model("DDPM-cifar10 UNet, 32x32 (PSNR: 4 samples, 10 DDPM steps, vs fp32)", "ms/step", (1,),
                  ddpm_pipeline, lambda rt, b, rng: {
                      "sample": rng.standard_normal((b, 3, 32, 32)).astype(np.float32),     # [b, 3, 32, 32]
                      "timestep": np.full((b,), 500.0, np.float32)}),
    "dcgan": Model("DCGAN generator, 64x64 (PSNR: 16 samples vs fp32)", "ms/call", (1,), dcgan_spec,
                   lambda rt, b, rng: {"z": rng.standard_normal((b, 100)).astype(np.float32)}),     # [b, 100]
    "vae": Model("VAE decoder, 64x64, latent 128 (PSNR: 16 samples vs fp32)", "ms/call", (1, 16),
                 family_spec("vae_case"),
                 lambda rt, b, rng: {"latent": rt.prior(b, rng, rt.defaults.temperature)}),   # [b, 128]
    "vq-vae": Model("VQ-VAE decode_codes (lookup + decoder), 16x16 codes -> 64x64 (PSNR: 16 samples vs fp32)",
                    "ms/call", (1, 16), family_spec("vqvae_case"),
                    lambda rt, b, rng: {"indices": rt.sample_codes(b, rng)}),                # [b, 16, 16] int64
}


def quantized_variants(fp32: Path, root: Path, all_ops: bool) -> dict[str, tuple[Path | None, dict]]:
    """name -> (artifact or None, its validation.quantization or {'error': ...})."""
    import json

    from edgegen.converters.quantization import graphs as image_quant_graphs, psnr_gate as image_quantize
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
            print(f"  {name}: {exc}")
            out[name] = (None, {"error": str(exc)})
            continue
        finally:
            image_quant_graphs.STATIC_OP_TYPES = image_quant_graphs.COMPUTE_OPS
        out[name] = (path, json.loads((path / "edgegen.json").read_text())["validation"]["quantization"])
        print(f"  {name}: quantized in {time.perf_counter() - started:.0f} s")
    return out


def per_call_ms(variants: dict[str, tuple[Path | None, dict]], feeds: dict[int, dict[str, np.ndarray]],
                repeats: int, threads: int | None) -> dict[int, dict[str, float]]:
    """batch -> median ms of one call of the family's main graph per variant, rounds interleaved."""
    import edgegen
    from edgegen.converters.quantization.psnr_gate import FAMILIES

    sessions = {}
    for name, (path, _) in variants.items():
        if path is not None:
            model = edgegen.load(path, provider="cpu", threads=threads)
            family = FAMILIES[model.family]
            holder, key = family.session_slot(model, family.roles[0])
            sessions[name] = holder[key]
    out = {}
    for b, feed in feeds.items():
        for session in sessions.values():
            session.run(None, feed)                                             # warm-up
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                t0 = time.perf_counter()
                session.run(None, feed)
                times[name].append(1000 * (time.perf_counter() - t0))
        out[b] = {name: statistics.median(t) for name, t in times.items()}
    return out


def graph_bytes(artifact: Path) -> int:
    """Bytes of the graphs the family quantizes (DDPM: denoiser; DCGAN: generator; VAE: decoder; VQ-VAE:
    decode_codes), external data included; the artifact's other graphs stay fp32 and are not counted."""
    from edgegen.converters.quantization.psnr_gate import FAMILIES
    from edgegen.manifest import read_manifest

    m = read_manifest(artifact)
    return sum((artifact / ref.file).stat().st_size for role in FAMILIES[m.family].roles if role in m.graphs
               for ref in m.graphs[role].files())


def table(title: str, unit: str, variants: dict[str, tuple[Path | None, dict]],
          ms: dict[int, dict[str, float]]) -> None:
    print(f"\n{title}")
    timing = "".join(f" {f'{unit} b{b}':>12} {'x fp32':>7}" for b in ms)
    print(f"{'':<20}{timing} {'graph MiB':>10} {'PSNR dB':>8} {'gate':>5}  kept in float")
    fp32_size = graph_bytes(variants["fp32"][0])
    for name, (path, q) in variants.items():
        if path is None:
            print(f"{name:<20} n/a: {q['error']}")
            continue
        size = graph_bytes(path)
        timing = "".join(f" {m[name]:>12.2f} {m['fp32'] / m[name]:>7.2f}" for m in ms.values())
        floats = sum(len(v) for v in q.get("float_nodes", {}).values())          # unquantized or kept by the gate
        by_gate = sum(len(v) for v in q.get("excluded_nodes", {}).values())
        quality = (f"{q['psnr_db']:>8.1f} {'pass' if q['psnr_db'] >= q['min_psnr_db'] else 'miss':>5}  "
                   f"{floats} weighted nodes ({by_gate} by the gate, {len(q['attempts'])} attempt(s)); "
                   f"size {size / fp32_size:.2f}x" if q else f"{'(ref)':>8}")
        print(f"{name:<20}{timing} {size / 2**20:>10.2f} {quality}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, few repeats")
    parser.add_argument("--all-ops", action="store_true", help="also int8 static over every op ORT's QDQ knows")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to run")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads of the timed sessions (default: all cores)")
    parser.add_argument("--skip-ddpm", action="store_true")
    parser.add_argument("--skip-dcgan", action="store_true")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    names = [n for n in MODELS if n in args.only and not (n == "ddpm" and args.skip_ddpm)
             and not (n == "dcgan" and args.skip_dcgan)]

    import torch

    import edgegen

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in names:
            model = MODELS[name]
            started = time.perf_counter()
            fp32 = edgegen.convert(model.source(root, args.quick), root / f"{name}-fp32", quantize="none",
                                   report=print)
            print(f"converted in {time.perf_counter() - started:.0f} s")
            variants = quantized_variants(fp32, root, args.all_ops)
            rt = edgegen.load(fp32, provider="cpu")
            feeds = {b: model.feed(rt, b, rng) for b in model.batches}
            table(model.title, model.unit, variants, per_call_ms(variants, feeds, repeats, args.threads))


if __name__ == "__main__":
    main()
