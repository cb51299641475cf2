"""Quantized graphs for the image families (diffusion, gan, vae, vq-vae), made with ONNX
Runtime's own tools and judged by the images they make.

Schemes (the manifest's precision name in brackets):

- ``fp16`` (fp16): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` (onnxconverter-common's converter was seen to make a UNet that fails
  to load).  For GPU targets: on CPU it runs no faster (casts).
- ``int8`` (int8-dynamic): ``quantize_dynamic``: every Conv becomes ConvInteger with its input
  quantized on every call, which conv nets pay for; the report carries that warning.
  ConvTranspose stays float (a DCGAN generator has nothing for it: an error).
- ``int8-static`` (int8-qdq): ``quantize_static`` in QDQ format, int8 per-channel weights,
  uint8 activations, MinMax ranges calibrated on the inputs the fp32 runtime really feeds each
  graph while sampling: the denoiser at every timestep of a few samples with the default
  scheduler, generators and decoders on the latents, labels and noise the runtime draws.  Only
  weight-bearing Conv, ConvTranspose, MatMul and Gemm nodes are quantized; normalization, SiLU
  and attention's softmax and activation products stay float.

``int4`` (MatMulNBits) is for LMs: conv nets have no MatMuls worth it.  Flows stay fp32: their
log-likelihoods are exact.  Only the graphs that run per image are quantized (:data:`FAMILIES`);
the others stay fp32 and the report says why.

Measured (benchmarks/image_quantize.py, one run on a shared 2-core AVX-512-VNNI machine, ORT 1.32,
batch 1, PSNR of samples vs fp32): DDPM-cifar10 UNet (35.7M) per step: int8-static 1.91x fp32 at
40.7 dB, 0.26x size; the same quantizing every op ORT's QDQ knows 1.58x at 32.9 dB; int8 dynamic
0.44x; fp16 0.97x.  DCGAN 64x64 generator per sample: int8-static 0.86x at 47.7 dB (ORT's CPU
provider has no int8 ConvTranspose: it dequantizes the weights on every call), fp16 0.98x.  So the
scheme for diffusion UNets is int8-static; GAN generators built of ConvTranspose stay fp32 (or
int8-static for a 4x smaller file, slower).  VAE / VQ-VAE 64x64 decoders (1 thread, batch 1 / 16):
int8-static 0.78x / 0.81x at 72 dB (VAE: ConvTranspose is 94% of its time) and 1.17x / 1.33x at
55 dB (VQ-VAE: its Convs 3.3x faster, its two ConvTransposes not), so both stay fp32 by default.

Quality gate: the samples of the quantized artifact must reach ``min_psnr`` (dB against the
fp32 artifact, same seeds; default :data:`MIN_PSNR`).  Missing it, nodes are kept in float,
most sensitive first, and the graphs re-quantized, at most :data:`MAX_ATTEMPTS` times: first
and last compute node of each graph; then the nodes that lose the most SQNR (measured: SQNR of
a node's output against fp32 minus that of its input, on calibration inputs), 1/8 of them,
then 1/4.  If the gate is still missed: a ConversionError when the scheme was asked for
(``required``), else the graphs stay fp32 with the reason recorded.

The graph work (ORT's tools, its known traps, node sensitivity): :mod:`edgegen.converters.quantization.graphs`.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.converters.quantization.graphs import (HANDLES, census, exclusions, graph_bytes, prepare, quantize_graph,
                                                   quiet_ort, ranked, remove_graph, tool)
from edgegen.converters.timing import interleaved_ms
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError

__all__ = ["FAMILIES", "MIN_PSNR", "PRECISION", "SCHEMES", "check_scheme", "quantize_artifact", "quantize_graphs"]

SCHEMES = ("fp16", "int8", "int8-static")
PRECISION = {"fp16": "fp16", "int8": "int8-dynamic", "int8-static": "int8-qdq"}
#: The family default of the quality gate: PSNR (dB) of the samples against the fp32 artifact.
MIN_PSNR = 30.0
MAX_ATTEMPTS = 4
#: What a diffusion calibration/fidelity sample runs: steps of the artifact's default scheduler.
STEPS = 10
PROMPT = "a red cat"
CALIBRATION_SEEDS = (0, 1, 2)
FIDELITY_SEEDS = (1000, 1001)
#: Calibration inputs kept per graph (bounded memory).
MAX_FEEDS = 48
_SLOWER = {"fp16": "CPUs compute float16 through casts; fp16 is for GPUs",
           "int8-static": "ORT's CPU provider has no int8 ConvTranspose (it dequantizes the weights on every "
                          "call), and tiny layers gain less than the Q/DQ they add"}
_DYNAMIC_WARNING = ("int8 (dynamic) quantizes every Conv's input on every call: conv nets run slower than fp32 "
                    "(see speedup); int8-static is the int8 scheme for them")


# -- the families ---------------------------------------------------------------------------------
def _diffusion_images(rt: Any, seed: int) -> np.ndarray:
    text = {"prompt": PROMPT} if rt.sampler.conditioning == "text" else {}
    return rt.generate(2, seed=seed, steps=STEPS, **text)                       # [2, C, H, W], default scheduler


def _gan_images(rt: Any, seed: int) -> np.ndarray:
    rng, k = np.random.default_rng(seed), rt.sampler.num_classes
    z = rt.latents(8, rng)                                                      # [8, latent_dim]
    labels = rng.integers(0, k, 8) if k else None
    return rt.generate(z, labels, truncation=rt.defaults.truncation or 1.0, noise=rt.draw_noise(8, rng))


def _vae_images(rt: Any, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rt.decode(rt.prior(8, rng, rt.defaults.temperature), rng=rng)       # [8, C, H, W]


def _vqvae_images(rt: Any, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rt.decode_codes(rt.sample_codes(8, rng), rng=rng)


@dataclass(frozen=True)
class Family:
    roles: tuple[str, ...]                           # graphs quantized (those the artifact has), main one first
    images: Callable[[Any, int], np.ndarray]         # (runtime, seed) -> float images [N, C, H, W]
    session_slot: Callable[[Any, str], tuple[dict, str]]   # (runtime, role) -> (dict, key) holding its session
    unit: str                                        # what one timed call of the main graph makes
    float_graphs: dict[str, str]                     # role -> why it stays fp32


_IMAGE_GRAPH = "reconstruction only: not on the sampling path the quality gate measures"
FAMILIES: dict[str, Family] = {
    "diffusion": Family(("denoiser", "vae_decoder"), _diffusion_images, lambda rt, role: (rt.sessions, role),
                        "denoiser step at batch 1",
                        {"text_encoder": "runs once per prompt, not per step: little time to save",
                         "vae_encoder": "img2img only: not on the sampling path the quality gate measures"}),
    "gan": Family(("generator",), _gan_images, lambda rt, role: (vars(getattr(rt, role)), "session"),
                  "sample at batch 1", {"mapping": "a small MLP run once per image"}),
    "vae": Family(("decoder",), _vae_images, lambda rt, role: (vars(rt.graphs[role]), "session"),
                  "sample at batch 1", {"encoder": _IMAGE_GRAPH}),
    "vq-vae": Family(("decode_codes",), _vqvae_images, lambda rt, role: (vars(rt.graphs[role]), "session"),
                     "sample at batch 1",
                     {"encoder": _IMAGE_GRAPH, "quantize": _IMAGE_GRAPH,
                      "decoder": "takes an app's own latents: sampling gives no inputs to calibrate it on"}),
}


def check_scheme(scheme: str, family: str) -> None:
    """Refuse, before any export, what cannot be done to an image family's graphs."""
    if family == "flow":
        raise InvalidArgumentError(f"flow artifacts are fp32 for now (exact likelihoods: quantizing would change "
                                   f"every bits/dim); --quantize {scheme} applies to causal-lm, diffusion, gan, vae "
                                   "and vq-vae artifacts (use --quantize none)")
    if family not in FAMILIES:
        raise InvalidArgumentError(f"a {family} artifact is not an image model: quantize it with edgegen convert "
                                   "--quantize from its source")
    if scheme == "int4":
        raise InvalidArgumentError(f"int4 (weight-only MatMulNBits) is for LMs: a {family} model is convolutions "
                                   "with no MatMuls worth it; use --quantize int8-static (or fp16 for GPUs)")
    if scheme not in SCHEMES:
        raise InvalidArgumentError(f"unknown quantization scheme {scheme!r} for a {family} model; valid: "
                                   f"{', '.join(SCHEMES)}")


# -- the conversion step ----------------------------------------------------------------------------
def quantize_graphs(writer: ArtifactWriter, scheme: str, *, min_psnr: float | None = None, required: bool = True,
                    report: Callable[[str], Any] = print) -> dict[str, Any]:
    """Quantize the per-image graphs of the validated fp32 artifact staged in ``writer`` (its
    edgegen.json written), judge them by their samples against fp32, and leave the writer's
    graphs set to the kept ones (the fp32 files of replaced graphs are deleted).  Returns the
    figures for ``validation.quantization``; the caller writes the final manifest."""
    from edgegen.manifest import read_manifest

    base = read_manifest(writer.stage)
    check_scheme(scheme, base.family)
    gate = MIN_PSNR if min_psnr is None else min_psnr
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 < gate < math.inf:
        raise InvalidArgumentError(f"min_psnr must be a positive number of dB, got {min_psnr!r}")
    family = FAMILIES[base.family]
    roles = [r for r in family.roles if r in base.graphs]
    started = time.perf_counter()
    fp32 = _runtime(writer.stage)
    with _recording(fp32, family, roles) as feeds:
        for seed in CALIBRATION_SEEDS:
            family.images(fp32, seed)
    reference = _samples(fp32, family)                                             # [N, C, H, W]
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=writer.stage) as tmp, quiet_ort():
        prepared = {r: prepare(writer.path(base.graphs[r].file), Path(tmp, f"{r}.onnx")) for r in roles}
        ranking: dict[str, list[str]] = {}
        for step in range(MAX_ATTEMPTS):
            if step >= 2 and not ranking:
                ranking = {r: ranked(prepared[r], feeds[r], Path(tmp)) for r in roles}
            exclude = {r: exclusions(step, prepared[r], ranking.get(r, [])) for r in roles}
            if attempts and exclude == attempts[-1]["excluded"]:
                continue                                   # nothing new to keep in float
            files = {r: quantize_graph(prepared[r], writer.path(f"{r}_{scheme}.onnx"), scheme, feeds[r], exclude[r])
                     for r in roles}
            specs = {r: writer.add_graph_file(r, f, precision=PRECISION[scheme]) for r, f in files.items()}
            writer.write(replace(base, graphs={**base.graphs, **specs}))
            quantized = _runtime(writer.stage)
            psnr = _psnr(_samples(quantized, family), reference, fp32.sampler.value_range)
            attempts.append({"excluded": exclude, "psnr_db": psnr})
            report(f"quantize {scheme} (attempt {len(attempts)}): {_count(exclude)} nodes kept in float, samples "
                   f"{psnr:.1f} dB vs fp32 (gate {gate:g} dB)")
            if psnr >= gate:
                break
    figures = {"scheme": scheme, "precision": PRECISION[scheme], "psnr_db": round(attempts[-1]["psnr_db"], 2),
               "min_psnr_db": gate, "excluded_nodes": attempts[-1]["excluded"],
               "attempts": [{"float_nodes": _count(a["excluded"]), "psnr_db": round(a["psnr_db"], 2)}
                            for a in attempts],
               "calibration_inputs": {r: len(feeds[r]) for r in roles},
               "fidelity": {"seeds": list(FIDELITY_SEEDS), "images": len(reference)}
               | ({"steps": STEPS, "scheduler": fp32.defaults.scheduler} if base.family == "diffusion" else {}),
               "float_graphs": {r: why for r, why in family.float_graphs.items() if r in base.graphs},
               **census({r: writer.path(f) for r, f in files.items()}), **tool(scheme)}
    failure = _failure(figures, attempts, roles)
    if failure is not None:
        reason, fix = failure
        for r in roles:
            remove_graph(writer.path(files[r]))
            writer.add_graph_file(r, base.graphs[r].file, precision=base.graphs[r].precision)
        writer.write(base)
        if required:
            raise ConversionError(f"{reason}; {fix}")
        report(f"quantize {scheme}: {reason}; the graphs stay fp32")
        tried = {k: v for k, v in figures.items() if k not in ("quantized_nodes", "float_nodes")}
        return {**tried, "used": False, "reason": reason}
    sizes = {r: (graph_bytes(writer.path(base.graphs[r].file)), graph_bytes(writer.path(files[r])))   # fp32, quantized
             for r in roles}
    ms_fp32, ms = _timed([fp32, quantized], family, roles[0], feeds[roles[0]])
    size_ratio = sum(q for _, q in sizes.values()) / sum(f for f, _ in sizes.values())
    figures |= {"used": True, "size_ratio": round(size_ratio, 4), "ms_fp32": round(ms_fp32, 3), "ms": round(ms, 3),
                "speedup": round(ms_fp32 / ms, 3), "speed_unit": family.unit,
                "graphs": {r: {"file": files[r], "size_bytes": q, "size_bytes_fp32": f} for r, (f, q) in sizes.items()}}
    if scheme == "int8" or figures["speedup"] < 1:   # judged on the recorded (rounded) figure, so they agree
        figures["warning"] = (_DYNAMIC_WARNING if scheme == "int8" else
                              f"{scheme} ran {ms / ms_fp32:.2f}x slower than fp32 here: {_SLOWER.get(scheme, '')}")
    for r in roles:
        remove_graph(writer.path(base.graphs[r].file))
    report(f"quantize {scheme}: samples {attempts[-1]['psnr_db']:.1f} dB vs fp32, size {size_ratio:.2f}x, "
           f"{figures['speedup']:.2f}x fp32 speed per {family.unit} ({time.perf_counter() - started:.1f} s)"
           + (f"; warning: {figures['warning']}" if "warning" in figures else ""))
    return figures


def _failure(figures: dict[str, Any], attempts: list[dict[str, Any]], roles: list[str]) -> tuple[str, str] | None:
    """(why the quantized graphs cannot be kept, what to do), or None."""
    scheme, gate = figures["scheme"], figures["min_psnr_db"]
    nothing = not any(figures["quantized_nodes"].values())
    if nothing and len(attempts) == 1:
        return (f"{scheme} found nothing to quantize in the {' and '.join(roles)} graph(s): it converts "
                f"{HANDLES[scheme]}", "choose another --quantize scheme")
    if nothing or attempts[-1]["psnr_db"] < gate:
        tried = attempts[:-1] if nothing else attempts          # an attempt that quantized nothing does not count
        return (f"{scheme} missed the quality gate: best samples {max(a['psnr_db'] for a in tried):.1f} dB < "
                f"{gate:g} dB vs fp32 after {len(attempts)} attempts keeping up to "
                f"{_count(attempts[-1]['excluded'])} nodes in float" + (" (all of them)" if nothing else ""),
                "lower the gate (min_psnr) or choose another --quantize scheme")
    return None


def _samples(rt: Any, family: Family) -> np.ndarray:
    return np.concatenate([family.images(rt, seed) for seed in FIDELITY_SEEDS])


def _count(exclude: dict[str, list[str]]) -> int:
    return sum(len(names) for names in exclude.values())


def quantize_artifact(artifact: str | Path, output: str | Path, scheme: str, *, min_psnr: float | None = None,
                      required: bool = True, overwrite: bool = False,
                      report: Callable[[str], Any] = print) -> Path:
    """A quantized copy of an fp32 image artifact (no torch needed): the graphs of :func:`quantize_graphs`,
    the source's validation figures plus ``quantization``; written atomically at ``output``."""
    from edgegen.runtimes.artifact import open_artifact, verify_checksums

    src = open_artifact(artifact)
    m = src.manifest
    check_scheme(scheme, m.family)
    if any(g.precision != "fp32" for g in m.graphs.values()):
        raise InvalidArgumentError(f"{src.root} is already quantized; quantize its fp32 artifact")
    verify_checksums(src)
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        for role, graph in m.graphs.items():
            for ref in graph.files():
                shutil.copyfile(src.path(ref.file), writer.path(ref.file))
            writer.add_graph_file(role, graph.file, precision=graph.precision)
        for name, ref in m.assets.items():
            writer.add_asset(name, ref.file, src.path(ref.file).read_bytes())
        writer.write(m)
        figures = quantize_graphs(writer, scheme, min_psnr=min_psnr, required=required, report=report)
        writer.write(writer.manifest(family=m.family, source=m.source, sampler=m.sampler, defaults=m.defaults,
                                     validation={**m.validation, "quantization": figures}))
        return writer.commit()


# -- calibration and measurement --------------------------------------------------------------------
def _runtime(stage: Path) -> Any:
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.registry import runtime_class
    from edgegen.runtimes.session import SessionConfig

    artifact = open_artifact(stage)
    return runtime_class(artifact.manifest.family).from_artifact(artifact, SessionConfig(provider="cpu"))


class _Recorder:
    """Stands in for an InferenceSession and keeps copies of the first MAX_FEEDS feeds it runs."""

    def __init__(self, session: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        self.session, self.feeds = session, feeds

    def run(self, output_names: Any, feed: dict[str, np.ndarray], *args: Any) -> Any:
        if len(self.feeds) < MAX_FEEDS:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return self.session.run(output_names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


@contextmanager
def _recording(rt: Any, family: Family, roles: list[str]) -> Iterator[dict[str, list[dict[str, np.ndarray]]]]:
    """Record what the runtime feeds each graph of ``roles`` while the block runs."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = {r: [] for r in roles}
    slots = [family.session_slot(rt, r) for r in roles]
    originals = [holder[key] for holder, key in slots]
    for (holder, key), session, role in zip(slots, originals, roles):
        holder[key] = _Recorder(session, feeds[role])
    try:
        yield feeds
    finally:
        for (holder, key), session in zip(slots, originals):
            holder[key] = session


def _psnr(a: np.ndarray, b: np.ndarray, value_range: tuple[float, ...]) -> float:
    """PSNR (dB, at most 200) of two image batches mapped from value_range to [0, 1] and clipped, as saved."""
    lo, hi = value_range
    x, y = (np.clip((v.astype(np.float64) - lo) / (hi - lo), 0, 1) for v in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return 200.0 if mse == 0 else min(200.0, 10 * math.log10(1.0 / mse))


def _timed(runtimes: list[Any], family: Family, role: str, feeds: list[dict[str, np.ndarray]],
           budget_s: float = 2.0) -> list[float]:
    """Median ms of one call of ``role`` in each runtime at batch 1, interleaved so load drift hits all alike."""
    feed = {k: v[:1] for k, v in feeds[len(feeds) // 2].items()}        # mid-sampling inputs, batch 1
    sessions = [holder[key] for holder, key in (family.session_slot(rt, role) for rt in runtimes)]
    return interleaved_ms([functools.partial(session.run, None, feed) for session in sessions], budget_s=budget_s)
