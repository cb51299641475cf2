"""Converting a normalizing flow (:class:`~edgegen.converters.flow.spec.FlowSpec`) into a flow artifact.

1. PyTorch reference on fixed inputs: ``forward`` on three fixed images (mapped to the
   model's space as the spec says), ``inverse`` on fixed latents.  The contract is checked
   (shapes, per-sample log_det, inverse(forward(x)) = x), and so is that running the module
   left its weights alone (an ActNorm not initialised yet would not).
2. Weight-only linear algebra (``torch.linalg.inv``, ``torch.inverse``, ``slogdet``, ...:
   :data:`CONSTANT_OPS`), which the exporter cannot express, is computed at export time and
   traced as constants; two eager runs on different inputs first prove it sees no data.
3. Export ``flow_inverse`` (z -> x) and ``flow_forward`` (x -> z, log_det) with the image
   families' :func:`~edgegen.converters.export.graph.export_graph` (TorchScript exporter, opset
   17, dynamic batch, then run by ONNX Runtime at batch 1 and 3 against PyTorch: x and z max
   abs <= 1e-4, log_det relative to max(1, |log_det|) <= 1e-4; a ConversionError names the
   graph and the batch).
4. Validate the staged artifact through :class:`edgegen.runtimes.flow.flow.Flow`: x, z, log_det,
   the round trip inverse(forward(x)) and bits/dim against PyTorch; the figures go into
   ``validation``.
5. The writer publishes the directory atomically.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.flow.spec import FlowSpec
from edgegen.converters.versions import library_versions
from edgegen.converters.export.graph import CHECK_BATCHES, OPSET, GraphExport, export_graph
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, UnsupportedModelError
from edgegen.manifest import Source
from edgegen.runtimes.flow.flow import FORWARD, GRAPH_IO, INVERSE, Flow, FlowSampler, pixels_to_data

FAMILY = "flow"
#: fp32 tolerances: x and z max abs; log_det and bits/dim relative to max(1, |value|).
ABS_TOL, REL_TOL = 1e-4, 1e-4
#: PyTorch's own inverse(forward(x)) must give x back to this (relative to max(1, |x|)).
INVERTIBLE_TOL = 1e-3

#: (owner, name) of functions on weights that the exporter cannot express (linear algebra of the
#: 1x1 convolutions; ``diag``, which LU-parametrised ones use); computed at export time.
CONSTANT_OPS: tuple[tuple[Any, str], ...] = tuple(
    (owner, name) for owner, names in (
        (torch, ("inverse", "slogdet", "logdet", "det", "lu", "lu_unpack", "diag")),
        (torch.linalg, ("inv", "inv_ex", "slogdet", "det", "lu", "lu_factor", "lu_factor_ex")),
        (torch.Tensor, ("inverse", "slogdet", "logdet", "det", "lu", "diag")))
    for name in names if hasattr(owner, name))


def _op_name(owner: Any, name: str) -> str:
    return f"{'Tensor' if owner is torch.Tensor else owner.__name__}.{name}"


@contextlib.contextmanager
def _patched_ops(wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name in CONSTANT_OPS]
    try:
        for owner, name, fn in saved:
            setattr(owner, name, wrap(_op_name(owner, name), fn))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _recording(calls: list[tuple[str, list[torch.Tensor]]]) -> Callable[..., Callable[..., Any]]:
    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, [a.detach().clone() for a in (*args, *kwargs.values()) if torch.is_tensor(a)]))
            return fn(*args, **kwargs)
        return op
    return wrap


def _constant(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` outside the trace: the tracer sees its result as a constant tensor."""
    def op(*args: Any, **kwargs: Any) -> Any:
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        finally:
            torch._C._set_tracing_state(state)
    return op


class _Method(torch.nn.Module):
    """One direction of the flow as the exporter sees it: ``module.<method>(tensor)``."""

    def __init__(self, module: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, tensor: torch.Tensor) -> Any:
        return getattr(self.module, self.method)(tensor)


class _Torch:
    """The PyTorch side: both directions, with the contract checked."""

    def __init__(self, spec: FlowSpec) -> None:
        self.spec, self.module = spec, spec.module
        self.forward_fn, self.inverse_fn = _Method(spec.module, spec.forward_method), _Method(spec.module, spec.inverse_method)
        self.name = type(spec.module).__name__

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.forward_fn(torch.from_numpy(np.ascontiguousarray(x)))
        where = f"{self.name}.{self.spec.forward_method}"
        if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(map(torch.is_tensor, out)):
            raise ConversionError(f"{where} must return (z, log_det) tensors, got {type(out).__name__}; a multi-scale "
                                  "flow concatenates its latents into one z (see edgegen.converters.flow.spec)")
        z, log_det = out
        if tuple(log_det.shape) != (len(x),):
            raise ConversionError(f"{where} returned log_det of shape {list(log_det.shape)}; it must be [B] = "
                                  f"[{len(x)}], one log|det dz/dx| per sample (add scalars to x.new_zeros(x.shape[0]))")
        if z.shape[0] != len(x) or z[0].numel() != x[0].size:
            raise ConversionError(f"{where} returned z of shape {list(z.shape)} for x of shape {list(x.shape)}; "
                                  "a flow keeps the batch and the number of values")
        return z.float().numpy(), log_det.double().numpy()

    @torch.no_grad()
    def inverse(self, z: np.ndarray) -> np.ndarray:
        x = self.inverse_fn(torch.from_numpy(np.ascontiguousarray(z)))
        if not torch.is_tensor(x) or tuple(x.shape) != (len(z), *self.spec.data_shape):
            got = list(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ConversionError(f"{self.name}.{self.spec.inverse_method} returned {got}; it must return "
                                  f"x [B, {', '.join(map(str, self.spec.data_shape))}] (data_shape)")
        return x.float().numpy()


def convert_flow(spec: FlowSpec, output: str | Path, *, overwrite: bool = False, report: Any = print,
                 **_ignored: Any) -> Path:
    """Convert ``spec`` into a flow artifact at ``output``; returns its path.

    Options of other converters (``optimize``, ``quantize``) are accepted and ignored: the
    graphs are exported as they are, in fp32.
    """
    module = spec.module
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"FlowSpec.module must be a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    c, h, w = spec.image_shape  # type: ignore[misc]
    pixels = dict(num_bins=spec.num_bins, data_range=list(spec.data_range), logit=bool(spec.logit),
                  dequantization_offset=float(spec.dequantization_offset))
    draft = FlowSampler(data_shape=spec.data_shape, latent_shape=spec.data_shape, image_shape=(c, h, w), **pixels)
    images = np.random.default_rng(0).integers(0, 256, (3, h, w, c), dtype=np.uint8)          # [3, H, W, C]
    x, log_jac = pixels_to_data(draft, images)                                                   # [3, *data_shape]

    started = time.perf_counter()
    ref = _Torch(spec)
    with _unchanged_weights(module):
        z_ref, log_det_ref = ref.forward(x)                                 # [3, *latent], [3]
        latents = np.random.default_rng(1).standard_normal((len(x), *z_ref.shape[1:])).astype(np.float32)
        x_ref = ref.inverse(latents)                                        # [3, *data_shape]
        roundtrip_torch = float(np.abs(ref.inverse(z_ref) - x).max())
        _check_weight_ops(ref, x, latents)
    if roundtrip_torch > INVERTIBLE_TOL * max(1.0, float(np.abs(x).max())):
        raise ConversionError(f"{type(module).__name__}: {spec.inverse_method}({spec.forward_method}(x)) differs from x "
                              f"by {roundtrip_torch:.2e} in PyTorch itself; the two methods must be exact inverses")
    report(f"reference: PyTorch forward/inverse, latent {list(z_ref.shape[1:])} ({time.perf_counter() - started:.1f} s)")

    sampler = {"data_shape": list(spec.data_shape), "latent_shape": list(z_ref.shape[1:]), "image_shape": [c, h, w],
               **pixels, "prior": "standard-normal"}
    source = Source(model_class=spec.name or f"{type(module).__module__}.{type(module).__qualname__}",
                    converter=f"torch.onnx.export (torch {torch.__version__}, opset {OPSET})", opset=OPSET,
                    checkpoint_sha256=spec.checkpoint_sha256, libraries=library_versions())
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        started = time.perf_counter()
        exported = {}
        with _patched_ops(_constant):   # weight-only linear algebra becomes constants in the trace
            for graph in _graphs(ref, x, z_ref.shape[1:]):
                exported[graph.role] = export_graph(graph, writer.path(f"{graph.role}.onnx"))
                if exported[graph.role].noise:
                    raise ConversionError(f"{graph.role}: {type(module).__name__} draws random numbers; a flow is a "
                                          "deterministic bijection (sample outside it)")
                writer.add_graph_file(graph.role, f"{graph.role}.onnx", precision="fp32")
        report(f"export: {source.converter}, {INVERSE} + {FORWARD}, checked at batch "
               f"{' and '.join(map(str, CHECK_BATCHES))} ({time.perf_counter() - started:.1f} s)")
        manifest = dict(family=FAMILY, source=source, sampler=sampler, defaults=dict(spec.defaults))
        writer.write(writer.manifest(**manifest))
        figures = {"batch_errors": {role: {str(b): e for b, e in g.errors.items()} for role, g in exported.items()},
                   **_compare(writer.stage, x, log_jac, latents, (z_ref, log_det_ref, x_ref), roundtrip_torch)}
        report(f"validate: max |x error| {figures['max_abs_error_x']:.2e}, |z error| {figures['max_abs_error_z']:.2e}, "
               f"log_det rel {figures['max_rel_error_log_det']:.2e}, round trip {figures['roundtrip_max_abs_error']:.2e} "
               f"(PyTorch {roundtrip_torch:.2e}), bits/dim {figures['bits_per_dim_artifact'][0]:.4f} vs PyTorch "
               f"{figures['bits_per_dim_torch'][0]:.4f}" + ("" if figures["passed"] else f"  FAILED: {figures['failure']}"))
        if not figures["passed"]:
            raise ConversionError(f"the converted flow does not match PyTorch: {figures['failure']}")
        writer.write(writer.manifest(**manifest, validation=figures))
        return writer.commit()


def _graphs(ref: _Torch, x: np.ndarray, latent_shape: tuple[int, ...]) -> list[GraphExport]:
    """The two graphs, with example inputs for any batch: latents from the generator, the fixed data rows."""
    def data(batch: int, _gen: torch.Generator) -> tuple[torch.Tensor]:
        return (torch.from_numpy(x[np.arange(batch) % len(x)]),)                # [B, *data_shape]

    def latents(batch: int, gen: torch.Generator) -> tuple[torch.Tensor]:
        return (torch.randn((batch, *latent_shape), generator=gen),)            # [B, *latent_shape]

    return [GraphExport(INVERSE, ref.inverse_fn, *GRAPH_IO[INVERSE], latents),
            GraphExport(FORWARD, ref.forward_fn, *GRAPH_IO[FORWARD], data, compare=_forward_error)]


def _forward_error(_inputs: Any, ref: tuple[torch.Tensor, ...], outs: list[np.ndarray]) -> float:
    """flow_forward's error figure: max of z's abs error and log_det's error relative to max(1, |log_det|)."""
    log_det = ref[1].double().numpy()
    return max(float(np.abs(ref[0].double().numpy() - outs[0]).max()),
               float((np.abs(log_det - outs[1]) / np.maximum(1.0, np.abs(log_det))).max()))


@contextlib.contextmanager
def _unchanged_weights(module: torch.nn.Module) -> Iterator[None]:
    """Refuse (and undo) a run that changes the module's parameters or buffers."""
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        yield
    finally:
        after = module.state_dict()
        changed = sorted(k for k in before if k not in after or after[k].shape != before[k].shape
                         or not torch.equal(after[k], before[k]))
        if changed:
            module.load_state_dict(before, strict=False)
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise ConversionError(f"running {type(module).__name__} changed its weights ({shown}): a data-dependent "
                              "initialisation (e.g. ActNorm) has not run yet; load the trained weights (or run one "
                              "batch of real data through it) before converting")


def _check_weight_ops(ref: _Torch, x: np.ndarray, latents: np.ndarray) -> None:
    """The CONSTANT_OPS calls must see the same values for any input: two runs, different inputs."""
    for direction, inputs, run in (("forward", x, ref.forward), ("inverse", latents, ref.inverse)):
        runs: list[list[tuple[str, list[torch.Tensor]]]] = []
        for batch in (inputs[:2], inputs[2:]):     # different values and batch sizes
            calls: list[tuple[str, list[torch.Tensor]]] = []
            with _patched_ops(_recording(calls)):
                run(batch)
            runs.append(calls)
        a, b = runs
        for i, ((name, args_a), (name_b, args_b)) in enumerate(zip(a, b)):
            if name != name_b or len(args_a) != len(args_b) or not all(
                    u.shape == v.shape and torch.equal(u, v) for u, v in zip(args_a, args_b)):
                raise UnsupportedModelError(
                    f"{type(ref.module).__name__}.{getattr(ref.spec, direction + '_method')}: {name} (call {i + 1}) "
                    "is applied to values that depend on the input; edgegen computes it at export time only from "
                    "the weights, and ONNX has no such op: rewrite that step without it")
        if len(a) != len(b):
            raise UnsupportedModelError(f"{type(ref.module).__name__} calls {', '.join(sorted({n for n, _ in a + b}))} "
                                        "a number of times that depends on the input; it cannot be exported")


def _compare(stage: Path, x: np.ndarray, log_jac: np.ndarray, latents: np.ndarray,
             ref: tuple[np.ndarray, np.ndarray, np.ndarray], roundtrip_torch: float) -> dict[str, Any]:
    """Run the staged artifact with the flow runtime and judge it against PyTorch's outputs."""
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.session import SessionConfig

    z_ref, log_det_ref, x_ref = ref
    flow = Flow.from_artifact(open_artifact(stage), SessionConfig(provider="cpu"))
    z, log_det = flow.encode(x)
    d = x[0].size
    log_p_torch = (-0.5 * np.sum(z_ref.astype(np.float64).reshape(len(x), -1) ** 2, axis=1)
                   - 0.5 * d * np.log(2 * np.pi) + log_det_ref)
    bpd_torch = -(log_p_torch + log_jac) / (d * np.log(2.0))
    bpd = -(flow.log_likelihood(x) + log_jac) / (d * np.log(2.0))
    figures: dict[str, Any] = {
        "batch_sizes": list(CHECK_BATCHES),
        "max_abs_error_x": float(np.abs(flow.decode(latents) - x_ref).max()),
        "max_abs_error_z": float(np.abs(z - z_ref).max()),
        "max_rel_error_log_det": float((np.abs(log_det - log_det_ref) / np.maximum(1.0, np.abs(log_det_ref))).max()),
        "roundtrip_max_abs_error": float(np.abs(flow.decode(z) - x).max()),
        "roundtrip_max_abs_error_torch": roundtrip_torch,
        "bits_per_dim_artifact": [round(float(v), 6) for v in bpd],
        "bits_per_dim_torch": [round(float(v), 6) for v in bpd_torch],
        "max_rel_error_bits_per_dim": float((np.abs(bpd - bpd_torch) / np.maximum(1.0, np.abs(bpd_torch))).max())}
    failures = [f"max {name.removeprefix('max_').replace('_error_', ' error of ')} {figures[name]:.2e} > {tol:g}"
                for name, tol in (("max_abs_error_x", ABS_TOL), ("max_abs_error_z", ABS_TOL),
                                  ("max_rel_error_log_det", REL_TOL), ("max_rel_error_bits_per_dim", REL_TOL))
                if not figures[name] <= tol]
    # The artifact may add its graphs' fp32 errors (<= ABS_TOL each, times the flow's gain) to PyTorch's own.
    if not figures["roundtrip_max_abs_error"] <= 10 * roundtrip_torch + ABS_TOL * max(1.0, float(np.abs(x).max())):
        failures.append(f"round trip flow_inverse(flow_forward(x)) is off by {figures['roundtrip_max_abs_error']:.2e}, "
                        f"PyTorch's by {roundtrip_torch:.2e}")
    return {**figures, "passed": not failures, "failure": "; ".join(failures) or None}


class NormflowsFlow(torch.nn.Module):
    """normflows' ``NormalizingFlow`` as a :class:`FlowSpec` module.

    normflows runs its ``flows`` from latent to data (``flow(z) -> (x, log_det)``, ``flow.inverse(x)``);
    here ``forward(x) -> (z, log_det)`` runs them backwards.  Its ``DiagGaussian`` base (learned
    ``loc``, ``log_scale``) is folded in as a last affine layer, so the prior is N(0, I)::

        z_std = (z - loc) / exp(log_scale),   log_det -= sum(log_scale)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        q0 = getattr(model, "q0", None)
        if not isinstance(getattr(model, "flows", None), torch.nn.ModuleList) or hasattr(model, "merges"):
            raise UnsupportedModelError(f"{type(model).__name__} is not a single-scale normflows NormalizingFlow "
                                        "(MultiscaleFlow has per-level bases); build a NormalizingFlow with "
                                        "Squeeze and GlowBlock flows")
        if not all(torch.is_tensor(getattr(q0, n, None)) for n in ("loc", "log_scale")) or \
                getattr(q0, "temperature", None) is not None:
            raise UnsupportedModelError(f"normflows base {type(q0).__name__}: edgegen's flows have a Gaussian prior; "
                                        "use DiagGaussian (its loc/log_scale are folded in) with temperature None")
        self.flows, self.q0 = model.flows, q0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])                                        # [B]
        for flow in reversed(self.flows):
            x, ld = flow.inverse(x)
            log_det = log_det + ld
        z = (x - self.q0.loc) * torch.exp(-self.q0.log_scale)                    # [B, *latent]
        return z, log_det - self.q0.log_scale.sum()

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x = self.q0.loc + torch.exp(self.q0.log_scale) * z                       # [B, *latent]
        for flow in self.flows:
            x, _ = flow(x)
        return x


def normflows_spec(model: torch.nn.Module, *, data_shape: tuple[int, ...], **options: Any) -> FlowSpec:
    """A FlowSpec for a normflows ``NormalizingFlow``; ``options`` are FlowSpec's other fields."""
    return FlowSpec(module=NormflowsFlow(model).eval(), data_shape=data_shape,
                    name=options.pop("name", f"normflows.{type(model).__name__}"), **options)
