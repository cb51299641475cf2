"""Exporting one graph of an image family (gan, vae, vq-vae): the one place that calls the exporter.

1. Random draws inside the forward (``torch.randn_like``, ``randn``, ``rand``, ``rand_like``,
   ``bernoulli``) are recorded by running PyTorch at batch 2 and 3 under a
   ``TorchFunctionMode``; each becomes a graph input ``noise.{i}`` whose shape follows
   the batch (:class:`~edgegen.runtimes.noise_graph.NoiseInput`).  So do the in-place fills
   ``Tensor.normal_(mean, std)``, ``uniform_(from, to)`` and ``bernoulli_(p)`` (float p) of a
   fresh tensor (``x.new_empty(...)``, ``torch.empty``, ``zeros_like`` ...: only its shape
   matters; rosinality's StyleGAN2 noise): the noise input is N(0, 1) or U[0, 1) and the graph
   scales it (mean + std * n, from + (to - from) * u, u < p) and writes it into the tensor.
   Other random ops (``multinomial``, ``exponential_``, a fill of a tensor computed from the
   inputs, dropout in training mode, ...) are a ConversionError naming the op, the module path
   and the rewrite that lifts.
   Custom ops are swapped for plain-PyTorch fallbacks where the conversion has some
   (:class:`~edgegen.converters.export.rewrites.Fallbacks`); one left over (a ``torch.ops``
   op outside aten with no ONNX symbolic) is a ConversionError naming it and the module path.
   Conv calls whose ``groups`` follow the batch (StyleGAN2's modulated conv) are noted.
2. ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``, opset 17) of a wrapper that
   takes the noise as inputs and hands it back, in order, where the module draws, and runs the
   batch-grouped convs in a form whose batch stays dynamic (``rewrites.ANY_GROUPS``).
3. The exporter's dynamic axes are not trusted: the written graph's inputs must have a
   symbolic batch, and ONNX Runtime runs it at batch 1 and 3 against PyTorch fed the same
   inputs and noise (fp32 max abs <= 1e-4).  A batch baked into the graph, or any
   mismatch, is a ConversionError naming the graph, the batch size and the fix.

:func:`check` is the dry run: it lists what would block conversion (forward errors,
random ops that cannot be lifted, custom ops without fallback, ops with no ONNX symbolic at opset
17) without exporting.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from edgegen.converters.export.rewrites import ANY_GROUPS, Fallbacks, blocker, conv_groups, custom_op, describe
from edgegen.errors import ConversionError
from edgegen.runtimes.noise_graph import BATCH, NoiseInput

OPSET = 17
#: fp32 agreement every graph must reach against PyTorch (max abs over the outputs).
ATOL = 1e-4
EXPORT_BATCH = 2
CHECK_BATCHES = (1, 3)   # neither is the export batch, so a batch baked in at 2 shows

#: random op -> the distribution of the noise input that replaces it
LIFTED = {"randn": "normal", "randn_like": "normal", "rand": "uniform", "rand_like": "uniform",
          "bernoulli": "uniform", "normal_": "normal", "uniform_": "uniform", "bernoulli_": "uniform"}
#: in-place fill lifted when it fills a fresh tensor -> its parameters with their defaults
INPLACE = {torch.Tensor.normal_: (("mean", 0.0), ("std", 1.0)), torch.Tensor.uniform_: (("from", 0.0), ("to", 1.0)),
           torch.Tensor.bernoulli_: (("p", 0.5),)}
#: constructors whose result depends only on its shape: a fill of one of these lifts
FRESH = {"empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like", "empty_strided",
         "new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided"}
_FILL_FIX = ("fill a fresh tensor, x.new_empty(shape).normal_(mean, std) (or uniform_(from, to), bernoulli_(p) with a "
             "float p), or write torch.randn_like(x) * std + mean, which edgegen lifts")
_INPLACE_FIX = "write torch.randn_like(x) * std + mean (or torch.rand_like) instead, which edgegen lifts"
#: random op that cannot be lifted -> how to rewrite it
REFUSED = {
    "multinomial": "draw with torch.rand_like and the Gumbel-max trick, argmax(logits - log(-log(u))), which lifts",
    "normal": "write mean + std * torch.randn_like(mean) instead, which edgegen lifts",
    "randint": "draw torch.rand and scale it: (torch.rand(shape) * high).long(), which lifts",
    "randint_like": "draw torch.rand_like and scale it, which lifts", "randperm": "precompute the permutation",
    "poisson": "sample outside the model", "normal_": _FILL_FIX, "uniform_": _FILL_FIX,   # not Tensor's (nn.init's)
    "bernoulli_": "write torch.bernoulli(p) instead, which edgegen lifts", "exponential_": _INPLACE_FIX,
    "geometric_": _INPLACE_FIX, "cauchy_": _INPLACE_FIX, "log_normal_": _INPLACE_FIX, "random_": _INPLACE_FIX,
}
_BAKED = ("something in the module fixes the batch (e.g. x.view(2, ...), int(x.shape[0]), torch.zeros(2, ...)); "
          "use x.view(x.shape[0], ...), x.flatten(1) or *_like constructors so the batch stays dynamic")
#: functions that are random only when called with training=True (third positional argument)
DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}


@dataclass(frozen=True)
class GraphExport:
    """What to export as one graph (declarative; :func:`export_graph` does the work)."""

    role: str                                   # generator, mapping, encoder, decoder, quantize, decode_codes
    module: torch.nn.Module                     # forward(*inputs) -> tensor or tuple of tensors
    inputs: tuple[str, ...]                     # graph input names, each batch-first
    outputs: tuple[str, ...]
    example: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]   # inputs for a batch size
    #: (inputs, torch outputs, ORT outputs) -> the error figure (default: max abs difference)
    compare: Callable[[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], list[np.ndarray]], float] | None = None


@dataclass(frozen=True)
class Draw:
    op: str
    shape: tuple[int, ...]
    where: str                                  # module path that drew it


@dataclass(frozen=True)
class ExportedGraph:
    role: str
    noise: tuple[NoiseInput, ...]
    errors: dict[int, float]                    # batch size -> error figure vs PyTorch
    grouped_convs: int = 0                      # convs whose groups followed the batch, rewritten


@dataclass(frozen=True)
class Recording:
    """What recording PyTorch at two batch sizes found: the lifted noise, the batch-grouped conv calls."""

    noise: tuple[NoiseInput, ...]
    grouped: frozenset[int] = frozenset()       # indices among the forward's conv2d / conv_transpose2d calls


class _Record(TorchFunctionMode):
    """Run the real random ops, noting each draw; refuse those that cannot be lifted."""

    def __init__(self, root: torch.nn.Module) -> None:
        super().__init__()
        self.draws: list[Draw] = []
        self.convs: list[tuple[str, int]] = []      # (op, groups) of every conv call, in order
        self.blockers: dict[str, str] = {}         # custom op -> finding (its first module path)
        self.fresh: WeakIdKeyDictionary = WeakIdKeyDictionary()   # tensors from FRESH constructors
        self._names = {id(m): name for name, m in root.named_modules()}
        self._root = type(root).__name__
        self._stack: list[str] = []

    def __enter__(self) -> _Record:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def enter(module: torch.nn.Module, _inputs: Any) -> None:
            self._stack.append(self._path(module))

        def leave(_module: torch.nn.Module, _inputs: Any, _output: Any) -> None:   # None: keep the output
            if self._stack:
                self._stack.pop()

        self._hooks = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        super().__exit__(*exc)

    def where(self) -> str:
        """The module running now (after an exception: the one it came from)."""
        return self._stack[-1] if self._stack else self._root

    def _path(self, module: torch.nn.Module) -> str:
        name = self._names.get(id(module))
        if name is None:   # a module called but not registered under the root
            return f"{self._root} ({type(module).__name__})"
        return f"{self._root}.{name}" if name else self._root

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        where = self.where()
        op = custom_op(func, OPSET)
        if op is not None and not ((fallbacks := Fallbacks.current()) and fallbacks.lookup(func)):
            self.blockers.setdefault(op, blocker(op, func, where))
        if name in ANY_GROUPS and func is getattr(torch, name):
            self.convs.append((name, conv_groups(name, args, kwargs)))
        if func in INPLACE:
            problem = _fill_problem(func, args, kwargs, self.fresh)
            if problem:
                raise ConversionError(f"{where} calls torch {name} {problem}, a random op edgegen cannot lift into a "
                                      f"graph input; {_FILL_FIX}")
            self.draws.append(Draw(name, tuple(args[0].shape), where))
            return func(*args, **kwargs)
        if name in REFUSED or (name in DROPOUTS and (args[2] if len(args) > 2 else kwargs.get("training", True))):
            fix = REFUSED.get(name, "call the module in eval mode, or pass training=False")
            raise ConversionError(f"{where} calls torch {name}, a random op edgegen cannot lift into a graph input; "
                                  f"{fix}")
        if name == "bernoulli":
            prob = _bernoulli_prob(args, kwargs)
            self.draws.append(Draw(name, tuple(prob.shape), where))
            return (torch.rand_like(prob) < prob).to(prob.dtype)
        out = func(*args, **kwargs)
        if name in LIFTED:
            self.draws.append(Draw(name, tuple(out.shape), where))
        elif name in FRESH and func in (getattr(torch, name, None), getattr(torch.Tensor, name, None)):
            self.fresh[out] = True
        return out


def _fill_params(func: Any, args: tuple, kwargs: dict) -> list[Any]:
    """An in-place fill's parameters (mean, std / from, to / p), given or default."""
    return [args[i] if len(args) > i else kwargs.get(key, default) for i, (key, default) in enumerate(INPLACE[func], 1)]


def _fill_problem(func: Any, args: tuple, kwargs: dict, fresh: WeakIdKeyDictionary) -> str | None:
    """Why an in-place fill ``args[0].normal_(...)`` cannot be lifted, or None."""
    if args[0] not in fresh:
        return ("on a tensor not freshly made by x.new_empty, torch.empty, zeros, ... (it would overwrite values "
                "computed from the inputs)")
    if any(isinstance(p, torch.Tensor) for p in _fill_params(func, args, kwargs)):
        return "with a tensor argument"
    return None


def _fill(func: Any, noise: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Replay an in-place fill: the N(0, 1) / U[0, 1) noise (shaped like the tensor) mapped to the fill's
    distribution, written into the tensor (zero_ + add_: a copy_ does not export) and returned."""
    tensor, params = args[0], [float(p) for p in _fill_params(func, args, kwargs)]
    if func is torch.Tensor.bernoulli_:
        value = noise < params[0]                                                      # Bernoulli(p)
    elif func is torch.Tensor.normal_:
        mean, std = params
        value = noise.to(tensor.dtype)
        value = value if (mean, std) == (0.0, 1.0) else value * std + mean             # N(mean, std^2)
    else:
        low, high = params
        value = noise.to(tensor.dtype)
        value = value if (low, high) == (0.0, 1.0) else value * (high - low) + low     # U[low, high)
    return tensor.zero_().add_(value.to(tensor.dtype))


class _Replay(TorchFunctionMode):
    """Hand the given noise tensors back, in order, where the module draws."""

    def __init__(self, noise: tuple[torch.Tensor, ...], grouped: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.noise, self.used = noise, 0
        self.grouped, self.convs = grouped, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ANY_GROUPS and func is getattr(torch, name):
            self.convs += 1
            return (ANY_GROUPS[name] if self.convs - 1 in self.grouped else func)(*args, **kwargs)
        if name not in LIFTED or (name.endswith("_") and func not in INPLACE):   # (the recorder refused others)
            return func(*args, **kwargs)
        if self.used >= len(self.noise):
            raise ConversionError(f"the module drew more random tensors ({name}) than the {len(self.noise)} recorded: "
                                  "its draws depend on the input values; edgegen can lift only a fixed sequence")
        noise, self.used = self.noise[self.used], self.used + 1
        if name == "bernoulli":
            prob = _bernoulli_prob(args, kwargs)
            wanted, dtype = tuple(prob.shape), prob.dtype
        elif func in INPLACE:
            wanted, dtype = tuple(args[0].shape), args[0].dtype
        elif name.endswith("_like"):
            wanted, dtype = tuple(args[0].shape), kwargs.get("dtype") or args[0].dtype
        else:
            size = kwargs.get("size", args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)
            wanted, dtype = tuple(int(d) for d in size), kwargs.get("dtype") or torch.get_default_dtype()
        if wanted != tuple(noise.shape):
            raise ConversionError(f"random draw {self.used - 1} ({name}) asked for shape {list(wanted)} but was "
                                  f"recorded as {list(noise.shape)}: the module's draws change with its inputs")
        if name == "bernoulli":
            return (noise < prob).to(dtype)
        if func in INPLACE:
            return _fill(func, noise, args, kwargs)
        return noise.to(dtype)


def _bernoulli_prob(args: tuple, kwargs: dict) -> torch.Tensor:
    """torch.bernoulli(input) draws with probabilities input; bernoulli(input, p) with p everywhere."""
    p = args[1] if len(args) > 1 else kwargs.get("p")
    return args[0] if p is None else torch.full_like(args[0], float(p))


class Lifted(torch.nn.Module):
    """The module with its random draws as trailing inputs: forward(*inputs, *noise); the conv calls
    numbered in ``grouped`` run in their batch-dynamic form (for export)."""

    def __init__(self, module: torch.nn.Module, n_inputs: int, grouped: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.module, self.n_inputs, self.grouped = module, n_inputs, grouped
        self.training = module.training   # the exporter restores this mode, recursively, when it is done

    def forward(self, *args: torch.Tensor) -> Any:
        replay = _Replay(args[self.n_inputs:], self.grouped)
        with replay:
            out = self.module(*args[:self.n_inputs])
        if replay.used != len(replay.noise):
            raise ConversionError(f"the module drew {replay.used} random tensors, but {len(replay.noise)} were "
                                  "recorded: its draws depend on the input values")
        return out


def _as_tuple(out: Any, graph: GraphExport) -> tuple[torch.Tensor, ...]:
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(graph.outputs) or not all(isinstance(t, torch.Tensor) for t in outs):
        raise ConversionError(f"graph {graph.role!r}: {type(graph.module).__name__} returned "
                              f"{len(outs)} value(s), expected {len(graph.outputs)} tensor(s) "
                              f"({', '.join(graph.outputs)})")
    return outs


@torch.no_grad()
def record(graph: GraphExport, batch: int) -> tuple[_Record, tuple[torch.Tensor, ...]]:
    """Run PyTorch at ``batch`` on the example inputs, noting every random draw and conv call."""
    inputs = graph.example(batch, torch.Generator().manual_seed(batch))
    mode, fallbacks = _Record(graph.module), Fallbacks.current()
    if fallbacks:
        fallbacks.failed = None
    try:
        with mode:
            out = graph.module(*inputs)
    except ConversionError:
        raise
    except Exception as exc:
        if mode.blockers:
            raise ConversionError(f"graph {graph.role!r}: " + "; ".join(mode.blockers.values())) from exc
        failed = f"{type(exc).__name__}: {_first_line(exc)}"
        if fallbacks and fallbacks.failed:   # most likely a compiled extension that cannot run here
            fn = fallbacks.failed
            raise ConversionError(f"graph {graph.role!r}: {mode.where()} calls {describe(fn)}, a custom "
                                  f"autograd.Function that failed in PyTorch at batch {batch} ({failed}); if it calls "
                                  f"a compiled extension, give the spec fallbacks={{{fn.__name__}: <its plain-PyTorch "
                                  "version>}}") from exc
        raise ConversionError(f"graph {graph.role!r}: {type(graph.module).__name__} failed in PyTorch at batch "
                              f"{batch}: {failed} (check the spec's shapes; the forward must work for any batch size, "
                              "see edgegen.converters.image.spec)") from exc
    if mode.blockers:
        raise ConversionError(f"graph {graph.role!r}: " + "; ".join(mode.blockers.values()))
    return mode, _as_tuple(out, graph)


def recording(graph: GraphExport) -> Recording:
    """PyTorch at batch 2 and 3: the noise inputs replacing the module's draws (their shapes follow the
    batch or are fixed) and the conv calls whose groups follow the batch."""
    (r2, _), (r3, _) = record(graph, 2), record(graph, 3)
    d2, d3 = r2.draws, r3.draws
    if [d.op for d in d2] != [d.op for d in d3]:
        raise ConversionError(f"graph {graph.role!r}: the module draws {[d.op for d in d2]} at batch 2 but "
                              f"{[d.op for d in d3]} at batch 3; edgegen lifts only draws that do not depend on the "
                              "batch")
    noise = []
    for i, (a, b) in enumerate(zip(d2, d3)):
        if len(a.shape) != len(b.shape) or any(x != y and (x, y) != (2, 3) for x, y in zip(a.shape, b.shape)):
            raise ConversionError(f"graph {graph.role!r}: {a.where} draws {a.op} of shape {list(a.shape)} at batch 2 "
                                  f"and {list(b.shape)} at batch 3; only fixed sizes and the batch axis can be lifted")
        shape = tuple(BATCH if (x, y) == (2, 3) else x for x, y in zip(a.shape, b.shape))
        noise.append(NoiseInput(name=f"noise.{i}", shape=shape, distribution=LIFTED[a.op]))   # type: ignore[arg-type]
    if [op for op, _ in r2.convs] != [op for op, _ in r3.convs]:
        raise ConversionError(f"graph {graph.role!r}: the module's conv calls differ between batch 2 and 3; edgegen "
                              "exports only a forward whose ops do not depend on the batch")
    grouped = frozenset(i for i, ((_, g2), (_, g3)) in enumerate(zip(r2.convs, r3.convs)) if g2 != g3)
    return Recording(tuple(noise), grouped)


def draw(noise: tuple[NoiseInput, ...], batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    out = []
    for n in noise:
        shape = tuple(batch if d == BATCH else int(d) for d in n.shape)
        sampler = torch.randn if n.distribution == "normal" else torch.rand
        out.append(sampler(shape, generator=gen))
    return tuple(out)


def export_graph(graph: GraphExport, path: Path) -> ExportedGraph:
    """Export ``graph`` to ``path`` and prove it matches PyTorch at batch 1 and 3."""
    import onnx

    graph.module.eval()
    rec = recording(graph)
    noise = rec.noise
    names = [*graph.inputs, *(n.name for n in noise)]
    axes: dict[str, dict[int, str]] = {name: {0: BATCH} for name in (*graph.inputs, *graph.outputs)}
    axes.update({n.name: {i: BATCH for i, d in enumerate(n.shape) if d == BATCH} for n in noise})
    gen = torch.Generator().manual_seed(0)
    args = (*graph.example(EXPORT_BATCH, gen), *draw(noise, EXPORT_BATCH, gen))
    try:
        with warnings.catch_warnings():   # tracer chatter about code we do not own
            warnings.simplefilter("ignore")
            torch.onnx.export(Lifted(graph.module, len(graph.inputs), rec.grouped), args, str(path), dynamo=False,
                              opset_version=OPSET, input_names=names, output_names=list(graph.outputs),
                              dynamic_axes=axes)
    except ConversionError:
        raise
    except Exception as exc:
        try:
            blockers = [p.split(": ", 1)[1] for p in unsupported_ops(graph, _trace(graph, args, rec.grouped))]
        except Exception:   # the trace fails too: the exporter's message is all there is
            blockers = []
        raise ConversionError(f"graph {graph.role!r}: torch.onnx.export failed: {_first_line(exc)}"
                              + (f" ({'; '.join(blockers)})" if blockers else "") + _hint()) from exc
    model = onnx.load_model(str(path), load_external_data=False)
    for value in model.graph.input:
        fixed = [(i, d.dim_value) for i, d in enumerate(value.type.tensor_type.shape.dim)
                 if d.HasField("dim_value") and i in axes.get(value.name, {})]
        if fixed:
            raise ConversionError(f"graph {graph.role!r}: the exported input {value.name!r} has its batch fixed at "
                                  f"{fixed[0][1]}; the graph would run at that batch only: make the module's forward "
                                  "work for any batch size (no batch-dependent Python branches)")
    checked = {b: verify(graph, path, noise, b) for b in CHECK_BATCHES}
    _fix_output_shapes(model, path, [shapes for _, shapes in checked.values()])
    return ExportedGraph(graph.role, noise, {b: error for b, (error, _) in checked.items()}, len(rec.grouped))


def _fix_output_shapes(model: Any, path: Path, runs: list[list[tuple[int, ...]]]) -> None:
    """Write the output sizes that did not change with the batch into the graph (the exporter
    leaves some symbolic, e.g. after a Resize, where ONNX Runtime infers numbers)."""
    import onnx

    for i, value in enumerate(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            sizes = {shapes[i][axis] for shapes in runs}
            if axis > 0 and len(sizes) == 1:
                dim.dim_value = sizes.pop()
    onnx.save_model(model, str(path))


@torch.no_grad()
def verify(graph: GraphExport, path: Path, noise: tuple[NoiseInput, ...],
           batch: int) -> tuple[float, list[tuple[int, ...]]]:
    """Run the graph with ONNX Runtime at ``batch`` against PyTorch on the same inputs and noise;
    returns the error figure and the output shapes."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(1000 + batch)
    inputs, drawn = graph.example(batch, gen), draw(noise, batch, gen)
    ref = _as_tuple(Lifted(graph.module, len(graph.inputs))(*inputs, *drawn), graph)
    feed = {name: t.numpy() for name, t in zip((*graph.inputs, *(n.name for n in noise)), (*inputs, *drawn))}
    options = ort.SessionOptions()
    options.log_severity_level = 4   # the failure is reported below, once
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        outs = session.run(list(graph.outputs), feed)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        m = re.search(r"running (\w+) node\. Name:'([^']*)'", str(exc))
        where = f"its {m.group(1)} node {m.group(2)!r}: " if m else ""
        raise ConversionError(f"graph {graph.role!r}, exported at batch {EXPORT_BATCH}, fails in ONNX Runtime at batch "
                              f"{batch} ({where}...{str(exc).strip()[-90:]}): {_BAKED}") from None
    for name, r, o in zip(graph.outputs, ref, outs):
        if tuple(r.shape) != o.shape:
            raise ConversionError(f"graph {graph.role!r} at batch {batch}: output {name!r} is {list(o.shape)} in ONNX "
                                  f"Runtime but {list(r.shape)} in PyTorch: {_BAKED}")
    error = graph.compare(inputs, ref, outs) if graph.compare else max(
        float(np.max(np.abs(r.numpy().astype(np.float64) - o))) if o.size else 0.0 for r, o in zip(ref, outs))
    if not error <= ATOL:
        raise ConversionError(f"graph {graph.role!r} at batch {batch}: max abs error {error:.3g} against PyTorch "
                              f"exceeds {ATOL:g}; the exported graph computes something else (an op exported "
                              "differently, or state that changes between calls)" + _hint())
    return error, [o.shape for o in outs]


def _trace(graph: GraphExport, args: tuple[torch.Tensor, ...], grouped: frozenset[int]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(Lifted(graph.module, len(graph.inputs), grouped), args, check_trace=False)


def _hint() -> str:
    fallbacks = Fallbacks.current()
    return fallbacks.hint() if fallbacks else ""


#: scalar conversions the exporter's erase-number-types pass removes before it looks for symbolics
#: (e.g. aten::Int from x.view(batch * channels, ...) with a traced batch)
_ERASED = {"aten::Int", "aten::Float", "aten::Bool", "aten::IntImplicit", "aten::FloatImplicit", "aten::ScalarImplicit"}


def unsupported_ops(graph: GraphExport, traced: Any) -> list[str]:
    """Ops in a trace of the lifted module that have no ONNX symbolic at OPSET, with their module paths."""
    try:
        from torch.onnx._internal.torchscript_exporter.registration import registry
    except ImportError:   # the private registry moved in this torch: the export itself will tell
        return []
    found: dict[str, str] = {}
    for node in traced.inlined_graph.nodes():
        kind = node.kind()
        namespace = kind.partition("::")[0]
        if namespace in ("prim", "onnx") or kind in _ERASED or (namespace == "aten" and (
                registry.is_registered_op(kind, OPSET) or registry.is_registered_op(kind.rstrip("_"), OPSET))):
            continue
        found.setdefault(kind, _module_path(node.scopeName(), graph.module))
    return [f"graph {graph.role!r}: {kind} in {where} has no ONNX export at opset {OPSET}: rewrite it with plain "
            "tensor ops (or use the module's pure-PyTorch fallback)" for kind, where in found.items()]


@torch.no_grad()
def baked_batch(graph: GraphExport, traced: Any, noise: tuple[NoiseInput, ...]) -> list[str]:
    """Run the batch-2 trace at batch 3 in PyTorch: a batch baked into the trace shows before any export."""
    gen = torch.Generator().manual_seed(3)
    args = (*graph.example(3, gen), *draw(noise, 3, gen))
    want = _as_tuple(Lifted(graph.module, len(graph.inputs))(*args), graph)
    try:
        got = _as_tuple(traced(*args), graph)
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__   # the interpreter's cause
        return [f"graph {graph.role!r}: traced at batch {EXPORT_BATCH}, it fails at batch 3 ({last[:160]}): "
                f"{_BAKED}"]
    return [f"graph {graph.role!r}: traced at batch {EXPORT_BATCH}, output {name!r} is {list(g.shape)} at batch 3 "
            f"instead of {list(w.shape)}: {_BAKED}"
            for name, w, g in zip(graph.outputs, want, got) if g.shape != w.shape]


def _module_path(scope: str, root: torch.nn.Module) -> str:
    """A traced node's scope ("__module.module/__module.module.up.1", or "Lifted::/pkg.Gen::module/nn.Conv2d::up")
    as a module path under the root: "Gen.up.1"."""
    last = scope.split("/")[-1]
    if last.startswith("__module."):
        attrs = last[len("__module."):].split(".")[1:]          # [0] is the wrapper's attribute "module"
    else:
        attrs = [part.rpartition("::")[2] for part in scope.split("/")[2:]]
    return ".".join([type(root).__name__, *attrs])


def check(graphs: list[GraphExport]) -> list[str]:
    """Dry run: every problem that would block exporting ``graphs``, without exporting: forward
    errors, random ops that cannot be lifted, custom ops without a fallback, ops with no ONNX symbolic, a batch
    baked into the trace."""
    problems = []
    for graph in graphs:
        graph.module.eval()
        try:
            rec = recording(graph)
            noise, gen = rec.noise, torch.Generator().manual_seed(0)
            traced = _trace(graph, (*graph.example(EXPORT_BATCH, gen), *draw(noise, EXPORT_BATCH, gen)), rec.grouped)
        except ConversionError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:
            problems.append(f"graph {graph.role!r}: tracing failed: {type(exc).__name__}: {_first_line(exc)}")
            continue
        problems += unsupported_ops(graph, traced) + baked_batch(graph, traced, noise)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
