"""Converting a :class:`GANSpec`, :class:`VAESpec` or :class:`VQVAESpec` into a gan, vae or vq-vae artifact.

1. Plan: the graphs of the family (:class:`GraphExport`: module, input/output names,
   example inputs) and its sampler constants, probed with one PyTorch forward at batch 2
   (image shape, code grid, w_avg).
2. Export every graph with :func:`export_graph`: random draws lifted into noise inputs,
   the dynamic batch proven by running ONNX Runtime at batch 1 and 3 against PyTorch.
3. End to end: the staged artifact, loaded by its runtime, generates from fixed seeds
   (latents, labels and noise drawn by the runtime) and PyTorch computes the same from
   the same numbers; max abs error and PSNR go into ``validation`` (fp32 max abs <= 1e-4).
4. The writer publishes the directory atomically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.export.graph import (ATOL, CHECK_BATCHES, OPSET, GraphExport, Lifted, check, export_graph,
                                             record)
from edgegen.converters.export.rewrites import Fallbacks
from edgegen.converters.image.spec import GANSpec, VAESpec, VQVAESpec
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError
from edgegen.manifest import Source
from edgegen.runtimes.noise_graph import NoiseGraph
from edgegen.runtimes.images import from_uint8, to_uint8
from edgegen.strict import to_json

#: z drawn to average w when the mapping network carries no w_avg
W_AVG_SAMPLES = 10_000
#: images generated end to end through the runtime for validation
SAMPLES = 4


@dataclass(frozen=True)
class Plan:
    family: str
    graphs: list[GraphExport]
    sampler: dict[str, Any]
    #: the loaded runtime -> (its float images, PyTorch's from the same numbers, extra figures)
    validate: Callable[[Any], tuple[np.ndarray, np.ndarray, dict[str, Any]]]
    model: torch.nn.Module      # the module named in the manifest's source (generator or decoder)


def _normal(*shape: int) -> Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]:
    return lambda b, gen: (torch.randn((b, *shape), generator=gen),)


@torch.no_grad()
def _call(module: torch.nn.Module, *args: torch.Tensor) -> Any:
    return module(*args)


def _images(spec: Any) -> Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]:
    lo, hi = spec.value_range
    return lambda b, gen: (lo + (hi - lo) * torch.rand((b, *spec.image_shape), generator=gen),)


@torch.no_grad()
def _torch(module: torch.nn.Module, inputs: tuple[Any, ...], graph: NoiseGraph,
           noise: dict[str, np.ndarray] | None) -> Any:
    """PyTorch on the runtime's numbers: inputs and the graph's lifted noise, in the manifest's order."""
    drawn = [torch.from_numpy(np.asarray(noise[n.name])) for n in graph.noise] if graph.noise else []
    args = [torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in inputs]
    return Lifted(module, len(args))(*args, *drawn)


def _probe(graph: GraphExport, want: tuple[Any, ...] | None, contract: str) -> tuple[torch.Tensor, ...]:
    """Outputs at batch 2; ``want`` gives each output's shape after the batch (None: any)."""
    outs = record(graph, 2)[1]
    for name, out, shape in zip(graph.outputs, outs, want or [None] * len(outs)):
        if out.shape[0] != 2 or (shape is not None and tuple(out.shape[1:]) != tuple(shape)):
            raise ConversionError(f"graph {graph.role!r}: output {name!r} is {list(out.shape)} at batch 2, expected "
                                  f"[2, {', '.join(map(str, shape or ['...']))}]; the contract is {contract} "
                                  "(see edgegen.converters.image.spec)")
    return outs


# -- gan --------------------------------------------------------------------------------------------------
def plan_gan(spec: GANSpec) -> Plan:
    g, m, k = spec.generator.eval(), spec.mapping.eval() if spec.mapping is not None else None, spec.num_classes
    labels = ("labels",) if k else ()

    def z_labels(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        z = torch.randn((b, spec.latent_dim), generator=gen)                          # [B, latent_dim]
        return (z, torch.randint(0, k, (b,), generator=gen)) if k else (z,)           # + labels [B]

    graphs, w_avg = [], None
    if m is not None:
        graphs.append(GraphExport("mapping", m, ("z", *labels), ("w",), z_labels))
        w = _probe(graphs[0], None, "w = mapping(z[, labels]) -> [B, w_dim] or [B, num_ws, w_dim]")[0]
        w_avg = _w_avg(spec, z_labels, w.shape[-1])
        graphs.append(GraphExport("generator", g, ("w",), ("image",),
                                  lambda b, gen: (_call(m, *z_labels(b, gen)),)))
    else:
        graphs.append(GraphExport("generator", g, ("z", *labels), ("image",), z_labels))
    image = _probe(graphs[-1], None, "image = generator(z[, labels]) (or generator(w)) -> [B, C, H, W]")[0]
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ConversionError(f"the generator returned {list(image.shape)} at batch 2; expected images [B, C, H, W] "
                              "with 1 or 3 channels")
    sampler = {"latent_dim": spec.latent_dim, "image_shape": list(image.shape[1:]),
               "value_range": list(spec.value_range), "num_classes": k,
               "w_avg": None if w_avg is None else [float(v) for v in w_avg]}

    def validate(gan: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(0)
        z = gan.latents(SAMPLES, rng)
        y = rng.integers(0, k, size=SAMPLES, dtype=np.int64) if k else None
        noise = gan.draw_noise(SAMPLES, rng)
        psi = 0.7 if m is not None else 1.0   # exercise the truncation path where there is one
        out = gan.generate(z, y, truncation=psi, noise=noise)
        inputs = (z, y) if k else (z,)
        if m is not None:
            w = _torch(m, inputs, gan.mapping, noise.get("mapping"))
            inputs = (torch.from_numpy(w_avg) + psi * (w - torch.from_numpy(w_avg)),)
        ref = _torch(g, inputs, gan.generator, noise.get("generator"))
        return out, ref.numpy(), {"truncation": psi}

    return Plan("gan", graphs, sampler, validate, g)


@torch.no_grad()
def _w_avg(spec: GANSpec, z_labels: Callable, w_dim: int) -> np.ndarray:
    """The mapping's own w_avg ([w_dim] tensor), else the mean of w over W_AVG_SAMPLES z (and labels)."""
    carried = getattr(spec.mapping, "w_avg", None)
    if isinstance(carried, torch.Tensor) and tuple(carried.shape) == (w_dim,):
        return carried.detach().float().numpy().copy()
    gen, total = torch.Generator().manual_seed(0), torch.zeros(w_dim, dtype=torch.float64)
    for _ in range(W_AVG_SAMPLES // 1000):
        w = spec.mapping(*z_labels(1000, gen)).double()                              # [1000, (L,) w_dim]
        total += w.reshape(-1, w_dim).mean(0)
    return (total / (W_AVG_SAMPLES // 1000)).float().numpy()


# -- vae ---------------------------------------------------------------------------------------------------
def plan_vae(spec: VAESpec) -> Plan:
    e, d = spec.encoder.eval(), spec.decoder.eval()
    out_name = "logits" if spec.decoder_output == "logits" else "image"
    graphs = [GraphExport("encoder", e, ("image",), ("mean", "logvar"), _images(spec)),
              GraphExport("decoder", d, ("latent",), (out_name,), _normal(*spec.latent_shape))]
    _probe(graphs[0], (spec.latent_shape, spec.latent_shape), "mean, logvar = encoder(x), [B, *latent_shape] each")
    _probe(graphs[1], (spec.image_shape,), "decoder(z) -> [B, *image_shape]")
    sampler = {"latent_shape": list(spec.latent_shape), "image_shape": list(spec.image_shape),
               "value_range": list(spec.value_range), "decoder_output": spec.decoder_output}

    def validate(vae: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(0)
        images = _random_uint8(vae, rng)
        mean, logvar = vae.encode(images, rng=np.random.default_rng(1))       # any encoder noise: from seed 1
        ref_mean, ref_logvar = _torch(e, (from_uint8(images, spec.value_range),), vae.graphs["encoder"],
                                      vae.graphs["encoder"].draw_noise(SAMPLES, np.random.default_rng(1)))
        figures = {"encoder_max_abs_error": _max_abs((mean, logvar), (ref_mean, ref_logvar))}
        if not figures["encoder_max_abs_error"] <= ATOL:
            raise ConversionError(f"the artifact's encoder differs from PyTorch by "
                                  f"{figures['encoder_max_abs_error']:.3g} (> {ATOL:g}) on the same images")
        z = vae.prior(SAMPLES, rng)
        noise = vae.graphs["decoder"].draw_noise(SAMPLES, rng)
        ref = _torch(d, (z,), vae.graphs["decoder"], noise)
        return vae.decode(z, noise=noise), (torch.sigmoid(ref) if out_name == "logits" else ref).numpy(), figures

    return Plan("vae", graphs, sampler, validate, d)


# -- vq-vae ------------------------------------------------------------------------------------------------
class Quantize(torch.nn.Module):
    """Nearest code (euclidean): z_e [B, D, h, w] -> indices [B, h, w] int64."""

    def __init__(self, codebook: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codebook", codebook)                                    # [K, D]

    def forward(self, z_e: torch.Tensor) -> torch.Tensor:
        z = z_e.permute(0, 2, 3, 1)                                                   # [B, h, w, D]
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2                                           # [B, h, w, K]
        dist = (z * z).sum(-1, keepdim=True) - 2 * z @ self.codebook.t() + (self.codebook ** 2).sum(-1)
        return dist.argmin(-1)


class DecodeCodes(torch.nn.Module):
    """indices [B, h, w] -> codebook lookup z_q [B, D, h, w] -> decoder -> image."""

    def __init__(self, codebook: torch.Tensor, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.register_buffer("codebook", codebook)
        self.decoder = decoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        z_q = torch.nn.functional.embedding(indices, self.codebook)                   # [B, h, w, D]
        return self.decoder(z_q.permute(0, 3, 1, 2))


def _excess_distance(inputs: tuple[torch.Tensor, ...], codebook: torch.Tensor, indices: np.ndarray) -> float:
    """How much farther the chosen codes are than the nearest, relative to the typical distance
    (0 when every choice is a nearest code; float round-off on near-ties gives ~1e-7)."""
    z = inputs[0].permute(0, 2, 3, 1).double()                                        # [B, h, w, D]
    dist = ((z[..., None, :] - codebook.double()) ** 2).sum(-1)                       # [B, h, w, K]
    chosen = dist.gather(-1, torch.from_numpy(indices).long()[..., None])[..., 0]
    best = dist.min(-1).values
    return float((chosen - best).max() / max(1.0, float(best.mean())))


def plan_vqvae(spec: VQVAESpec) -> Plan:
    e, d, cb = spec.encoder.eval(), spec.decoder.eval(), spec.codebook_tensor()      # cb [K, D]
    k, dim = cb.shape
    encoder = GraphExport("encoder", e, ("image",), ("latents",), _images(spec))
    (z_e,) = _probe(encoder, None, "z_e = encoder(x) -> [B, D, h, w]")
    if z_e.ndim != 4 or z_e.shape[1] != dim:
        raise ConversionError(f"the encoder returned {list(z_e.shape)} at batch 2; with a codebook of {k} codes of "
                              f"dimension {dim} it must return z_e [B, {dim}, h, w]")
    grid = tuple(z_e.shape[2:])
    quantize = Quantize(cb)
    codes = lambda b, gen: (torch.randint(0, k, (b, *grid), generator=gen),)         # noqa: E731  [B, h, w]
    graphs = [encoder,
              GraphExport("quantize", quantize, ("latents",), ("indices",),
                          lambda b, gen: (_call(e, *_images(spec)(b, gen)),),
                          compare=lambda inputs, _ref, outs: _excess_distance(inputs, cb, outs[0])),
              GraphExport("decode_codes", DecodeCodes(cb, d), ("indices",), ("image",), codes),
              GraphExport("decoder", d, ("latents",), ("image",),
                          lambda b, gen: (cb[codes(b, gen)[0]].permute(0, 3, 1, 2),))]
    _probe(graphs[3], (spec.image_shape,), "image = decoder(z_q), z_q [B, D, h, w] -> [B, *image_shape]")
    sampler = {"codebook_size": int(k), "code_dim": int(dim), "grid": list(grid), "image_shape": list(spec.image_shape),
               "value_range": list(spec.value_range)}

    def validate(vq: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(0)
        images = _random_uint8(vq, rng)
        indices = vq.encode(images, rng=np.random.default_rng(1))          # any encoder noise: from seed 1
        z = _torch(e, (from_uint8(images, spec.value_range),), vq.graphs["encoder"],
                   vq.graphs["encoder"].draw_noise(SAMPLES, np.random.default_rng(1)))
        excess = _excess_distance((z,), cb, indices)
        if not excess <= ATOL:
            raise ConversionError(f"the artifact's encoder + quantize pick codes {excess:.3g} farther than the nearest "
                                  "(relative); the exported encoder does not match PyTorch")
        noise = vq.graphs["decode_codes"].draw_noise(SAMPLES, rng)
        ref = _torch(DecodeCodes(cb, d), (indices,), vq.graphs["decode_codes"], noise)
        return vq.decode_codes(indices, noise=noise), ref.numpy(), {"quantize_excess_distance": excess}

    return Plan("vq-vae", graphs, sampler, validate, d)


def _random_uint8(model: Any, rng: np.random.Generator) -> np.ndarray:
    c, h, w = model.image_shape
    return rng.integers(0, 256, size=(SAMPLES, h, w, c), dtype=np.uint8)              # [N, H, W, C]


def _max_abs(a: tuple[Any, ...], b: tuple[Any, ...]) -> float:
    return max(float(np.max(np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64))))
               for x, y in zip(a, b))


# -- the conversion ----------------------------------------------------------------------------------------
PLANS: dict[type, Callable[[Any], Plan]] = {GANSpec: plan_gan, VAESpec: plan_vae, VQVAESpec: plan_vqvae}


def _plan(spec: Any) -> Plan:
    planner = PLANS.get(type(spec))
    if planner is None:
        raise InvalidArgumentError(f"{type(spec).__name__} is not an image spec; give a GANSpec, VAESpec or VQVAESpec")
    return planner(spec)


def check_spec(spec: Any) -> list[str]:
    """Dry run (``edgegen convert --check``): what would block converting ``spec``, without exporting."""
    with Fallbacks(getattr(spec, "fallbacks", None)):
        try:
            plan = _plan(spec)
        except ConversionError as exc:
            return [str(exc)]
        return check(plan.graphs)


def convert_image(spec: GANSpec | VAESpec | VQVAESpec, output: str | Path, *, overwrite: bool = False,
                  report: Any = print, quantize: str = "none", min_psnr: float | None = None,
                  quantization_default: dict[str, Any] | None = None, **_ignored: Any) -> Path:
    """Convert an image spec into a gan, vae or vq-vae artifact at ``output``; returns its path.

    Options of other converters (``optimize``) are accepted and ignored: graphs are exported as is, in fp32;
    ``quantize`` (not ``none``): :func:`edgegen.converters.quantization.psnr_gate.quantize_graphs` after validation.
    The spec's ``fallbacks`` stand in for its custom ops wherever the converter runs its modules.
    """
    with Fallbacks(getattr(spec, "fallbacks", None)):
        return _convert_image(spec, output, overwrite=overwrite, report=report, quantize=quantize, min_psnr=min_psnr,
                              quantization_default=quantization_default)


def _convert_image(spec: GANSpec | VAESpec | VQVAESpec, output: str | Path, *, overwrite: bool, report: Any,
                   quantize: str, min_psnr: float | None, quantization_default: dict[str, Any] | None) -> Path:
    from edgegen.converters.versions import library_versions
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.registry import runtime_class
    from edgegen.runtimes.session import SessionConfig

    started = time.perf_counter()
    plan = _plan(spec)
    report(f"plan: {plan.family} graphs {', '.join(g.role for g in plan.graphs)}; PyTorch probe "
           f"({time.perf_counter() - started:.1f} s)")
    converter = f"torch.onnx.export (torch {torch.__version__}, opset {OPSET})"
    source = Source(model_class=spec.name or _class_name(plan.model),
                    converter=converter, opset=OPSET, checkpoint_sha256=spec.checkpoint_sha256,
                    libraries=library_versions())
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        graphs: dict[str, dict[str, float]] = {f"graphs_batch_{b}": {} for b in CHECK_BATCHES}   # -> role -> error
        noise: dict[str, list] = {}
        rewritten: dict[str, int] = {}                                                     # role -> grouped convs
        for graph in plan.graphs:
            started = time.perf_counter()
            done = export_graph(graph, writer.path(f"{graph.role}.onnx"))
            writer.add_graph_file(graph.role, f"{graph.role}.onnx", precision="fp32")
            for b in CHECK_BATCHES:
                graphs[f"graphs_batch_{b}"][graph.role] = done.errors[b]
            if done.noise:
                noise[graph.role] = [to_json(n) for n in done.noise]
            lifted = f", {len(done.noise)} noise input{_s(done.noise)} lifted" if done.noise else ""
            if done.grouped_convs:
                rewritten[graph.role] = done.grouped_convs
                lifted += f", {done.grouped_convs} batch-grouped conv(s) made batch-dynamic"
            report(f"export: graph {graph.role} ({', '.join(graph.inputs)} -> {', '.join(graph.outputs)}{lifted}), "
                   "max abs error vs PyTorch " + ", ".join(f"{done.errors[b]:.1e} at batch {b}" for b in CHECK_BATCHES)
                   + f" ({time.perf_counter() - started:.1f} s)")
        sampler = {**plan.sampler, "noise": noise}
        defaults = dict(spec.defaults)
        writer.write(writer.manifest(family=plan.family, source=source, sampler=sampler, defaults=defaults))

        model = runtime_class(plan.family).from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
        ours, ref, extra = plan.validate(model)
        figures: dict[str, Any] = {"tolerance": ATOL, **graphs}
        if noise:
            figures["noise_inputs"] = {role: len(n) for role, n in noise.items()}
        if rewritten:
            figures["grouped_convs_rewritten"] = rewritten
        figures |= _figures(ours, ref, model.sampler.value_range) | extra
        figures["max_abs_error"] = max([figures["samples_max_abs_error"],
                                        *(e for g in graphs.values() for e in g.values())])
        report(f"validate: {SAMPLES} samples through the runtime vs PyTorch on the same latents and noise: max abs "
               f"error {figures['samples_max_abs_error']:.1e}, PSNR {figures['samples_psnr_db']:.1f} dB, "
               f"{figures['samples_uint8_differing']} of {ours.size} 8-bit values differ")
        if not figures["samples_max_abs_error"] <= ATOL:
            raise ConversionError(f"the converted {plan.family} does not match PyTorch end to end (max abs error "
                                  f"{figures['samples_max_abs_error']:.3g} > {ATOL:g}); check that the modules follow "
                                  "the contract in edgegen.converters.image.spec")
        if quantization_default is not None:   # what --quantize auto chose, and why
            figures["quantization_default"] = quantization_default
        if quantize != "none":   # replaces graph files in the stage; measured against the fp32 artifact
            from edgegen.converters.quantization.psnr_gate import quantize_graphs

            figures["quantization"] = quantize_graphs(writer, quantize, min_psnr=min_psnr, report=report)
        writer.write(writer.manifest(family=plan.family, source=source, sampler=sampler, defaults=defaults,
                                     validation=figures))
        return writer.commit()


def _figures(ours: np.ndarray, ref: np.ndarray, value_range: tuple[float, ...]) -> dict[str, Any]:
    """max abs error, PSNR over the value range (capped at 200 dB: identical in float32), 8-bit differences."""
    diff = ours.astype(np.float64) - ref.astype(np.float64)
    mse = float(np.mean(diff ** 2))
    span = value_range[1] - value_range[0]
    psnr = 200.0 if mse == 0 else min(200.0, 10 * math.log10(span ** 2 / mse))
    u8 = to_uint8(ours, value_range).astype(np.int16) - to_uint8(ref, value_range).astype(np.int16)
    return {"samples": len(ours), "samples_max_abs_error": float(np.max(np.abs(diff))),
            "samples_psnr_db": round(psnr, 2), "samples_uint8_differing": int(np.count_nonzero(u8)),
            "samples_uint8_max_diff": int(np.max(np.abs(u8)))}


def _s(items: Any) -> str:
    return "" if len(items) == 1 else "s"


def _class_name(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"
