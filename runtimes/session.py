"""ONNX Runtime sessions: provider choice and every provider-specific setting, in one place.

``provider`` is ``"auto" | "cpu" | "cuda" | "dml"``.  ``auto`` takes the best one the
installed onnxruntime build offers (CUDA, then DirectML, then CPU); an explicit provider
that the build lacks is a :class:`ProviderError` naming the package to install, never a
silent fallback.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import onnxruntime as ort

from edgegen.errors import GraphLoadError, GraphMismatchError, InvalidArgumentError, ProviderError
from edgegen.manifest import GraphSpec, TensorSpec
from edgegen.runtimes.limits import MAX_DEVICE_ID, MAX_FREE_DIMENSION, MAX_THREADS
from edgegen.runtimes.run_control import check_timeout, explain_failure, watched_run

ProviderName = Literal["cpu", "cuda", "dml"]


@dataclass(frozen=True)
class ProviderInfo:
    name: ProviderName
    ort_name: str
    package: str
    requirement: str


PROVIDERS: dict[str, ProviderInfo] = {
    "cuda": ProviderInfo("cuda", "CUDAExecutionProvider", "onnxruntime-gpu",
                         "an NVIDIA GPU with CUDA 12 and cuDNN 9 libraries"),
    "dml": ProviderInfo("dml", "DmlExecutionProvider", "onnxruntime-directml",
                        "Windows 10/11 with a DirectX 12 GPU"),
    "cpu": ProviderInfo("cpu", "CPUExecutionProvider", "onnxruntime", "any CPU"),
}
#: ``auto`` takes the first of these that the installed build offers.
AUTO_ORDER: tuple[ProviderName, ...] = ("cuda", "dml", "cpu")
#: edgegen provider -> the device name of ONNX Runtime's OrtValues in that provider's memory (IO binding;
#: DirectML's since ONNX Runtime 1.17, microsoft/onnxruntime#18124)
ORT_DEVICES: dict[str, str] = {"cuda": "cuda", "dml": "dml", "cpu": "cpu"}
#: The distributions that all install the ``onnxruntime`` module; exactly one may be installed.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml")

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: ONNX Runtime's type strings, in the manifest's numpy names.
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
    "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def available_providers() -> list[ProviderName]:
    """The edgegen names of the providers this onnxruntime build offers, best first."""
    offered = set(ort.get_available_providers())
    return [name for name in AUTO_ORDER if PROVIDERS[name].ort_name in offered]


def installed_ort_distributions() -> list[str]:
    """Which of onnxruntime / onnxruntime-gpu / onnxruntime-directml are installed (should be one)."""
    found = []
    for dist in ORT_DISTRIBUTIONS:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def _install_hint(info: ProviderInfo) -> str:
    others = " ".join(d for d in ORT_DISTRIBUTIONS if d != info.package)
    return f"pip uninstall -y {others} && pip install {info.package}"


def resolve_provider(requested: str, available: list[ProviderName] | None = None) -> ProviderName:
    """Map ``auto|cpu|cuda|dml`` to a provider the build offers, or raise with the fix."""
    offered = available_providers() if available is None else available
    if requested == "auto":
        for name in AUTO_ORDER:
            if name in offered:
                return name
        raise ProviderError("this onnxruntime build offers no usable execution provider; "
                            "reinstall it: pip install --force-reinstall onnxruntime")
    if requested not in PROVIDERS:
        raise InvalidArgumentError(f"unknown provider {requested!r}; choose one of auto, cpu, cuda, dml")
    if requested not in offered:
        info = PROVIDERS[requested]
        raise ProviderError(
            f"provider {requested!r} is not available in the installed onnxruntime {ort.__version__} "
            f"(it offers: {', '.join(offered) or 'none'}); it needs {info.requirement} and the "
            f"{info.package} build: {_install_hint(info)}")
    return requested  # type: ignore[return-value]


def default_threads() -> int:
    """The cores this process may run on (ONNX Runtime's own default can be lower)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionConfig:
    """How to open every graph of an artifact.  ``provider`` may still be ``auto``."""

    provider: str = "auto"
    threads: int | None = None
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    device_id: int = 0
    #: fix symbolic dimensions of the graphs' inputs: ``{"batch": 1}`` for every graph with a ``batch``
    #: dimension, ``{"denoiser.batch": 2}`` for one role's.  DirectML (and ORT's optimizer) can then plan
    #: for static shapes; a call with another size is refused.  Names: the graphs' own (``edgegen info --json``).
    free_dimensions: Mapping[str, int] = field(default_factory=dict)
    #: CUDA only: the most device memory each session's arena may take, in bytes (default: no limit); a
    #: pipeline opens one session per graph, each with its own arena
    gpu_memory_limit: int | None = None
    #: the most seconds one graph run may take (default: no limit); a run past it is stopped and raises
    #: RunTimeoutError (a graph that loops forever, a model far too big for the device)
    timeout: float | None = None

    def dimensions_for(self, role: str | None) -> dict[str, int]:
        """The overrides that apply to the graph of ``role``: the plain names, then ``role.name`` ones."""
        out = {k: v for k, v in self.free_dimensions.items() if "." not in k}
        if role is not None:
            out.update({k.split(".", 1)[1]: v for k, v in self.free_dimensions.items() if k.startswith(role + ".")})
        return out

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise InvalidArgumentError(f"threads must be a positive integer up to {MAX_THREADS}, got {self.threads!r}")
        if self.optimization not in _OPTIMIZATION:
            raise InvalidArgumentError(
                f"optimization {self.optimization!r} is not one of {', '.join(_OPTIMIZATION)}")
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int) or \
                not 0 <= self.device_id <= MAX_DEVICE_ID:
            raise InvalidArgumentError(f"device_id must be an integer >= 0 (at most {MAX_DEVICE_ID}), got "
                                       f"{self.device_id!r}")
        if not isinstance(self.free_dimensions, Mapping):
            raise InvalidArgumentError(f"free_dimensions must map dimension names to sizes, like {{'batch': 1}}; "
                                       f"got {type(self.free_dimensions).__name__}")
        object.__setattr__(self, "free_dimensions", MappingProxyType(dict(self.free_dimensions)))   # read-only
        for name, value in self.free_dimensions.items():
            if not isinstance(name, str) or not name.strip(".") or name.count(".") > 1:
                raise InvalidArgumentError(f"free_dimensions key {name!r} must be a dimension name ('batch') or "
                                           "role.name ('denoiser.batch')")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FREE_DIMENSION:
                raise InvalidArgumentError(f"free_dimensions[{name!r}] must be a positive integer up to "
                                           f"{MAX_FREE_DIMENSION}, got {value!r}")
        if self.gpu_memory_limit is not None and (isinstance(self.gpu_memory_limit, bool) or not isinstance(
                self.gpu_memory_limit, int) or self.gpu_memory_limit < 1):
            raise InvalidArgumentError(f"gpu_memory_limit must be a positive number of bytes, got "
                                       f"{self.gpu_memory_limit!r}")
        object.__setattr__(self, "timeout", check_timeout(self.timeout))


_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def _register_shared_cpu_arena() -> None:
    """One CPU arena in ONNX Runtime's environment, for the sessions that opt in (once per process)."""
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, None)
            _shared_arena_registered = True


def session_options(config: SessionConfig, provider: ProviderName, memory_pattern: bool = True,
                    shared_cpu_arena: bool = False, role: str | None = None) -> tuple[ort.SessionOptions, list]:
    """The SessionOptions and provider list for ``provider``: the one place for per-provider settings.

    For graphs run one after another whose activations are large next to their weights (a
    diffusion pipeline's text encoder, denoiser and VAE decoder): ``memory_pattern=False`` (ORT's
    memory pattern reserves one block for all of a run's intermediates: ~140 MiB more at peak on
    the bench SD UNet, for no measured speed gain) and ``shared_cpu_arena=True`` (the sessions
    draw from one environment arena instead of one arena each, so the peak is the largest graph's,
    not the sum: 247 -> 235 MiB there)."""
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = memory_pattern
    if shared_cpu_arena:
        _register_shared_cpu_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.graph_optimization_level = _OPTIMIZATION[config.optimization]
    opts.intra_op_num_threads = config.threads or default_threads()
    opts.log_severity_level = 4  # fatal only: ORT's warnings are noise here, and its errors are raised (and
    #                             explained in one line) as exceptions, so a log line would say them twice
    for name, value in config.dimensions_for(role).items():
        opts.add_free_dimension_override_by_name(name, value)
    providers: list = []
    if provider == "dml":
        # DirectML cannot use memory patterns nor run nodes in parallel (ORT's DML docs).
        opts.enable_mem_pattern = False
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers.append((PROVIDERS["dml"].ort_name, {"device_id": config.device_id}))
    elif provider == "cuda":
        cuda = {"device_id": config.device_id,
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC"}
        if config.gpu_memory_limit is not None:
            cuda["gpu_mem_limit"] = config.gpu_memory_limit
        providers.append((PROVIDERS["cuda"].ort_name, cuda))
    providers.append(PROVIDERS["cpu"].ort_name)
    return opts, providers


_BAD_DIMS = re.compile(r"Got invalid dimensions for input: (\S+) for the following indices(.*?)Please fix", re.S)


class GuardedSession(ort.InferenceSession):
    """An InferenceSession with what its settings need around each call (``run``, ``run_with_ort_values``
    and ``run_with_iobinding``: the ways edgegen runs a graph).

    - ``serialize``: one call at a time.  DirectML's requirement: its command lists and resources are
      per session, and ORT's DirectML EP does not guard a session against concurrent calls.  Each of
      those calls takes the session's lock; other sessions run unhindered.
    - ``free_dimensions`` (the overrides the session was opened with): ONNX Runtime's refusal of a
      feed of another size becomes an InvalidArgumentError that names the override.
    - ``timeout`` and the calling thread's ``cancel_on`` events (:mod:`edgegen.runtimes.run_control`): a
      run in progress is stopped through its RunOptions and raises RunTimeoutError or CancelledError.
    """

    def __init__(self, *args: Any, serialize: bool = False, free_dimensions: Mapping[str, int] | None = None,
                 label: str = "graph", timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_lock: threading.Lock | contextlib.nullcontext[None] = \
            threading.Lock() if serialize else contextlib.nullcontext()
        self.free_dimensions = dict(free_dimensions or {})
        self._label = label
        self.timeout = check_timeout(timeout)

    def _explain(self, exc: Exception) -> None:
        if self.free_dimensions and (m := _BAD_DIMS.search(str(exc))):
            raise InvalidArgumentError(
                f"{self._label} was opened with free_dimensions {self.free_dimensions}, and input {m.group(1)!r} "
                f"breaks them ({' '.join(m.group(2).split())}); call it with those sizes, or load the artifact "
                "without free_dimensions") from None

    def _guarded(self, run: Any, run_options: ort.RunOptions | None) -> Any:
        """``run(options)`` under the lock, the time limit and the cancel events."""
        with self.run_lock:
            try:
                return watched_run(run, label=self._label, timeout=self.timeout, run_options=run_options)
            except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own pybind types)
                self._explain(exc)
                explain_failure(exc, self._label)
                raise

    def run(self, output_names: Any, input_feed: Any, run_options: ort.RunOptions | None = None) -> Any:
        return self._guarded(lambda options: super(GuardedSession, self).run(output_names, input_feed, options),
                             run_options)

    def run_with_iobinding(self, iobinding: Any, run_options: ort.RunOptions | None = None) -> Any:
        return self._guarded(lambda options: super(GuardedSession, self).run_with_iobinding(iobinding, options),
                             run_options)

    def run_with_ort_values(self, output_names: Any, input_dict_ort_values: Any,
                            run_options: ort.RunOptions | None = None) -> Any:
        return self._guarded(lambda options: super(GuardedSession, self).run_with_ort_values(
            output_names, input_dict_ort_values, options), run_options)


def check_free_dimensions(config: SessionConfig, graphs: Mapping[str, GraphSpec]) -> None:
    """Refuse overrides that name no input dimension (ONNX Runtime would ignore them silently)."""
    def names(specs: Any) -> set[str]:
        return {d for spec in specs for t in spec.inputs for d in t.shape if isinstance(d, str)}

    for key in config.free_dimensions:
        role, _, name = key.rpartition(".")
        if role and role not in graphs:
            raise InvalidArgumentError(f"free_dimensions {key!r}: this artifact has no graph {role!r} (it has "
                                       f"{', '.join(sorted(graphs))})")
        known = names([graphs[role]] if role else graphs.values())
        if name not in known:
            where = f"graph {role!r} has" if role else "this artifact's graphs have"
            raise InvalidArgumentError(f"free_dimensions {key!r}: {where} no input dimension {name!r} (known: "
                                       f"{', '.join(sorted(known)) or 'none'}; edgegen info --json lists them)")


#: DirectML sessions are serialized (see GuardedSession); the others run concurrently as ORT allows
SERIALIZED_PROVIDERS = frozenset({"dml"})


_UNREGISTERED = re.compile(r"(?:([\w.]+):)?(\w+)\(-?\d+\) is not a registered function/op")
_NO_KERNEL = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")
_FUTURE_OPSET = re.compile(r"Opset (\d+) is under development.*?till opset (\d+)", re.S)


def create_session(path: Path | bytes, config: SessionConfig, provider: ProviderName, label: str,
                   opset: int | None = None, memory_pattern: bool = True,
                   shared_cpu_arena: bool = False, role: str | None = None) -> ort.InferenceSession:
    """Open one graph (a file, or a serialized model) in the artifact role ``role``; a graph ONNX Runtime
    refuses is a GraphLoadError naming op and opset.  Every session is a :class:`GuardedSession` (time
    limit and cancellation; DirectML's serialized)."""
    opts, providers = session_options(config, provider, memory_pattern, shared_cpu_arena, role=role)
    source = path if isinstance(path, bytes) else str(path)
    try:
        session = GuardedSession(source, sess_options=opts, providers=providers, label=label,
                                 serialize=provider in SERIALIZED_PROVIDERS,
                                 free_dimensions=config.dimensions_for(role), timeout=config.timeout)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise GraphLoadError(explain_load_failure(label, str(exc), opset)) from None
    used = session.get_providers()[0]
    if used != PROVIDERS[provider].ort_name:
        info = PROVIDERS[provider]
        raise ProviderError(
            f"{label}: onnxruntime offers {provider!r} but could not start it (it fell back to {used}); "
            f"check that {info.requirement} are installed, or pass provider='cpu'")
    return session


def explain_load_failure(label: str, message: str, opset: int | None = None) -> str:
    """One line from ONNX Runtime's load error: which op, which opset, what to do."""
    version = ort.__version__
    fix = ("upgrade onnxruntime (pip install -U onnxruntime), or re-convert the model with an edgegen whose "
           "exporter targets this onnxruntime")
    if m := _FUTURE_OPSET.search(message):
        return (f"{label}: uses opset {m.group(1)} but onnxruntime {version} supports opsets up to "
                f"{m.group(2)}; {fix}")
    if m := _NO_KERNEL.search(message):
        return f"{label}: onnxruntime {version} has no op {m.group(1)} at opset {m.group(2)}; {fix}"
    if m := _UNREGISTERED.search(message):
        op = f"{m.group(1)}:{m.group(2)}" if m.group(1) else m.group(2)
        at = f" (artifact opset {opset})" if opset else ""
        return (f"{label}: op {op}{at} is not known to onnxruntime {version}; it is a custom op that needs "
                f"its own library, or {fix}")
    first = message.strip().splitlines()[0][:300] if message.strip() else "unknown error"
    return (f"{label}: onnxruntime {version} cannot load it ({first}); the file is corrupt or was not "
            "written by edgegen: re-convert it")


def _dims_agree(declared: int | str, actual: int | str | None, fixed: Mapping[str, int] = MappingProxyType({})) -> bool:
    if isinstance(declared, int):
        return actual == declared
    # Exporters rename symbolic dimensions; any symbolic (or unknown) dimension agrees, and so does the
    # size the session's free-dimension overrides gave this name.
    return not isinstance(actual, int) or fixed.get(declared) == actual


def io_mismatches(label: str, spec: GraphSpec, session: ort.InferenceSession) -> list[str]:
    """Every way the session's real inputs/outputs differ from what the manifest declares."""
    problems: list[str] = []
    fixed = getattr(session, "free_dimensions", {})
    for kind, declared, actual in (("input", spec.inputs, session.get_inputs()),
                                   ("output", spec.outputs, session.get_outputs())):
        real = {a.name: a for a in actual}
        for tensor in declared:
            if tensor.name not in real:
                problems.append(f"{label}: declared {kind} {tensor.name!r} is not in the graph")
                continue
            problems.extend(_tensor_mismatches(label, kind, tensor, real.pop(tensor.name), fixed))
        for name in real:
            problems.append(f"{label}: graph {kind} {name!r} is not declared in the manifest")
    return problems


def _tensor_mismatches(label: str, kind: str, tensor: TensorSpec, actual: ort.NodeArg,
                       fixed: Mapping[str, int] = MappingProxyType({})) -> list[str]:
    problems = []
    dtype = ORT_DTYPES.get(actual.type, actual.type)
    if dtype != tensor.dtype:
        problems.append(f"{label}: {kind} {tensor.name!r} is {dtype} in the graph, {tensor.dtype} in the manifest")
    shape = list(actual.shape or [])
    if len(shape) != len(tensor.shape):
        problems.append(f"{label}: {kind} {tensor.name!r} has rank {len(shape)} in the graph, "
                        f"{len(tensor.shape)} in the manifest")
    elif not all(_dims_agree(d, a, fixed) for d, a in zip(tensor.shape, shape, strict=True)):
        problems.append(f"{label}: {kind} {tensor.name!r} has shape {shape} in the graph, "
                        f"{list(tensor.shape)} in the manifest")
    return problems


def check_io(checks: list[tuple[str, GraphSpec, ort.InferenceSession]]) -> None:
    """Cross-check several graphs and raise one GraphMismatchError listing every mismatch."""
    problems = [p for label, spec, session in checks for p in io_mismatches(label, spec, session)]
    if problems:
        raise GraphMismatchError(
            f"the graphs do not match the manifest ({len(problems)} problem{'s' * (len(problems) > 1)}): "
            + "; ".join(problems) + "; the artifact was edited or mixed up: re-convert it")
