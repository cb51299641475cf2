"""Converting a :class:`TabularSpec` (a fitted CTGAN / TVAE, or edgegen's checkpoint) into a tabular artifact.

1. Read the model (:mod:`edgegen.converters.tabular.extract` or the checkpoint): tensors and the data
   transform as data.
2. Build the graph's module from the tensors (:class:`CTGANGenerator`, :class:`TVAEDecoder`) and export it
   (TorchScript exporter, opset 17, batch dynamic).  CTGAN's BatchNorm runs as ctgan's ``sample`` runs it, in
   training mode, so the module normalizes over each block of ``block_rows`` rows (a reshape to [blocks,
   block_rows, width]): many blocks go through ONNX Runtime in one run.
3. Check the graph against ctgan's own network (or, from a checkpoint, the rebuilt module) at one and three
   blocks (max abs <= 1e-4), then end to end: the staged artifact's runtime samples rows from its own draws,
   and ctgan's network and ``DataTransformer.inverse_transform`` turn the same draws into rows; continuous
   columns must agree to 1e-5 (relative), categories exactly.  The figures go into ``validation``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.tabular.extract import Network, extract
from edgegen.converters.tabular.spec import TabularSpec
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, InvalidArgumentError
from edgegen.manifest import Source

OPSET = 17
#: graph check (logits) and the end-to-end check (continuous columns, relative)
ATOL, RTOL = 1e-4, 1e-5
#: integer columns: the share of rows whose value may round the other way (float error at n + 0.5)
ROUNDING_FLIPS = 0.01
#: blocks sampled end to end at conversion
CHECK_BLOCKS = 2


class CTGANGenerator(torch.nn.Module):
    """ctgan's Generator on cat(z, cond), each BatchNorm over its block of ``block`` rows (training mode)."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.block = network.sampler["block_rows"]
        self.eps = list(network.bn_eps)
        t = network.tensors
        self.fc = torch.nn.ModuleList()
        self.bn = torch.nn.ParameterList()
        for i in range(len(self.eps)):
            fc = torch.nn.Linear(*reversed(t[f"residual.{i}.fc.weight"].shape))
            fc.weight.data, fc.bias.data = t[f"residual.{i}.fc.weight"], t[f"residual.{i}.fc.bias"]
            self.fc.append(fc)
            self.bn.append(torch.nn.Parameter(torch.stack([t[f"residual.{i}.bn.weight"], t[f"residual.{i}.bn.bias"]])))
        self.out = torch.nn.Linear(*reversed(t["output.weight"].shape))
        self.out.weight.data, self.out.bias.data = t["output.weight"], t["output.bias"]

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = z if cond is None else torch.cat([z, cond], dim=1)                       # [B, emb + cond]
        for fc, bn, eps in zip(self.fc, self.bn, self.eps):
            h = fc(x)                                                                 # [B, d]
            d = h.shape[1]
            g = h.reshape(-1, self.block, d)                                          # [B / block, block, d]
            mean = g.mean(dim=1, keepdim=True)
            var = ((g - mean) ** 2).mean(dim=1, keepdim=True)                         # biased, as BatchNorm's
            g = (g - mean) / torch.sqrt(var + eps) * bn[0] + bn[1]
            x = torch.cat([torch.relu(g.reshape(-1, d)), x], dim=1)                   # Residual: [out, input]
        return self.out(x)                                                            # [B, data_dim]


class TVAEDecoder(torch.nn.Module):
    """ctgan's TVAE Decoder without its sigma (a constant in the manifest)."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        t, layers = network.tensors, []
        i = 0
        while f"linear.{i}.weight" in t:
            lin = torch.nn.Linear(*reversed(t[f"linear.{i}.weight"].shape))
            lin.weight.data, lin.bias.data = t[f"linear.{i}.weight"], t[f"linear.{i}.bias"]
            layers += [lin, torch.nn.ReLU()]
            i += 1
        self.seq = torch.nn.Sequential(*layers[:-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.seq(z)


def convert_tabular(spec: TabularSpec, output: str | Path, *, overwrite: bool = False, report: Any = print,
                    quantize: str = "none", **_ignored: Any) -> Path:
    """Convert a fitted ctgan model (or edgegen's tabular checkpoint) into a tabular artifact at ``output``.
    The graphs are small (MLPs): fp32 only."""
    from edgegen.converters.tabular.checkpoint import network_from_checkpoint
    from edgegen.converters.versions import library_versions
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.tabular.tabular import Tabular
    from edgegen.runtimes.session import SessionConfig
    from edgegen.runtimes.tabular.transform import TabularSampler
    from edgegen.strict import from_json

    if quantize not in ("none", "auto"):
        raise InvalidArgumentError(f"tabular models are small MLPs kept in fp32; --quantize {quantize} does not apply "
                                   "(drop it, or pass --quantize none)")
    started = time.perf_counter()
    network = extract(spec.model) if spec.model is not None else network_from_checkpoint(spec.loaded)
    sampler = from_json(TabularSampler, network.sampler, where="sampler", error=ConversionError,
                        fix="this model's data transform is not one edgegen can write")
    module = (CTGANGenerator if network.kind == "ctgan" else TVAEDecoder)(network).eval()
    reference = _reference_network(network, module)
    report(f"read: {network.kind} with {len(sampler.columns)} columns ({_kinds(sampler)}), {sampler.data_dim} "
           f"matrix values per row, {sum(t.numel() for t in network.tensors.values()):,} weights "
           f"({time.perf_counter() - started:.1f} s)")
    role = "generator" if network.kind == "ctgan" else "decoder"
    inputs = ("z", "cond") if sampler.condition_dim else ("z",)
    source = Source(model_class=spec.name or _model_class(spec), converter=f"torch.onnx.export (torch "
                    f"{torch.__version__}, opset {OPSET})", opset=OPSET, checkpoint_sha256=spec.checkpoint_sha256,
                    libraries=library_versions() | _ctgan_versions())
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        started = time.perf_counter()
        path = writer.path(f"{role}.onnx")
        example = _example(sampler, 1, torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=OPSET, input_names=list(inputs),
                              output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in (*inputs, "logits")})
        writer.add_graph_file(role, f"{role}.onnx", precision="fp32")
        errors = _check_graph(path, module, reference, sampler)
        report(f"export: graph {role} ({', '.join(inputs)} -> logits), max abs error vs "
               f"{'ctgan' if network.reference is not None else 'PyTorch'} "
               + ", ".join(f"{e:.1e} at {b} block{'s' * (b > 1)}" for b, e in errors.items())
               + f" ({time.perf_counter() - started:.1f} s)")
        writer.write(writer.manifest(family="tabular", source=source, sampler=network.sampler))
        model = Tabular.from_artifact(open_artifact(writer.stage), SessionConfig(provider="cpu"))
        figures = _validate(model, network, reference)
        figures["graph_max_abs_error"] = {f"blocks_{b}": e for b, e in errors.items()}
        report(f"validate: {figures['rows']} rows through the runtime vs "
               f"{'ctgan' if network.reference is not None else 'PyTorch'} on the same draws: continuous columns max "
               f"relative error {figures['continuous_max_rel_error']:.1e}, {figures['categories_differing']} "
               "categories differ")
        writer.write(writer.manifest(family="tabular", source=source, sampler=network.sampler, validation=figures))
        return writer.commit()


def _reference_network(network: Network, module: torch.nn.Module) -> Any:
    """ctgan's own network (a copy, in ctgan's sampling mode: the generator in training mode), else ``module``."""
    import copy

    if network.reference is None:
        return module
    if network.kind == "ctgan":
        gen = copy.deepcopy(network.reference._generator).cpu().train()   # its running stats are not ours to move

        def run(z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
            x = z if cond is None else torch.cat([z, cond], dim=1)
            block = network.sampler["block_rows"]
            return torch.cat([gen(x[i:i + block]) for i in range(0, len(x), block)])   # a block per run, as ctgan
        return run   # type: ignore[return-value]
    dec = copy.deepcopy(network.reference.decoder).cpu().eval()
    return lambda z: dec(z)[0]   # type: ignore[return-value]


def _example(sampler: Any, blocks: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    rows = blocks * sampler.block_rows
    z = torch.randn((rows, sampler.embedding_dim), generator=gen)
    if not sampler.condition_dim:
        return (z,)
    cond = torch.zeros((rows, sampler.condition_dim))
    cond[torch.arange(rows), torch.randint(0, sampler.condition_dim, (rows,), generator=gen)] = 1
    return z, cond


@torch.no_grad()
def _check_graph(path: Path, module: torch.nn.Module, reference: Any, sampler: Any) -> dict[int, float]:
    """ONNX Runtime on 1 and 3 blocks against the module and the reference network (the worse of the two)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    errors = {}
    for blocks in (1, 3):
        example = _example(sampler, blocks, torch.Generator().manual_seed(blocks))
        (ours,) = session.run(["logits"], {n: t.numpy() for n, t in zip(names, example)})
        nets = (module,) if reference is module else (module, reference)
        error = max(float(np.max(np.abs(ours - net(*example).numpy()))) for net in nets)
        if not error <= ATOL:
            raise ConversionError(f"the exported graph differs from the network by {error:.3g} "
                                  f"(> {ATOL:g}) at {blocks} block(s) of {sampler.block_rows} rows")
        errors[blocks] = error
    return errors


@torch.no_grad()
def _validate(model: Any, network: Network, reference: Any) -> dict[str, Any]:
    """The runtime's rows from its own draws against the reference's rows from the same draws."""
    rng = np.random.default_rng(0)
    draws = [model.draw_block(rng) for _ in range(CHECK_BLOCKS)]
    noise = {k: None if draws[0][k] is None else np.concatenate([d[k] for d in draws]) for k in draws[0]}
    ours = model.to_table(model.activate(**noise))
    logits = reference(*(torch.from_numpy(noise[k]) for k in ("z", "cond") if noise[k] is not None)).numpy()
    matrix = _reference_activation(model, logits, noise)
    if network.reference is not None:   # ctgan's own inverse transform on the same matrix
        transformer = network.reference._transformer if network.kind == "ctgan" else network.reference.transformer
        frame = transformer.inverse_transform(matrix)
        theirs = {name: np.asarray(frame[name] if hasattr(frame, "columns") else frame[:, i])
                  for i, name in enumerate(model.columns)}
    else:
        theirs = model.to_table(matrix).data
    figures = _compare(model, ours.data, theirs)
    figures["reference"] = "ctgan DataTransformer.inverse_transform" if network.reference is not None else \
        "PyTorch network, edgegen's inverse transform"
    if figures["continuous_max_rel_error"] > RTOL or figures["categories_differing"] > 0 or \
            figures["integer_rounding_flips"] > ROUNDING_FLIPS * figures["rows"]:
        raise ConversionError(f"the converted {network.kind} does not match "
                              f"{'ctgan' if network.reference is not None else 'PyTorch'} on the same draws (continuous "
                              f"relative error {figures['continuous_max_rel_error']:.3g}, "
                              f"{figures['categories_differing']} categories differ, {figures['integer_rounding_flips']} "
                              "integers rounded the other way); this ctgan model is not one "
                              "edgegen reproduces")
    return figures


def _reference_activation(model: Any, logits: np.ndarray, noise: dict[str, Any]) -> np.ndarray:
    """ctgan's activations in torch on the same draws: tanh, and softmax((logit + gumbel) / tau) per span."""
    from edgegen.runtimes.tabular.transform import GUMBEL_TAU, spans

    x = torch.from_numpy(logits)
    if model.sampler.model == "tvae":
        act = torch.tanh(x).numpy().astype(np.float64)
        alpha = [start for column, start in spans(model.sampler) if column.kind == "continuous"]
        act[:, alpha] += np.asarray(model.sampler.sigmas) * noise["eps"]
        return act
    gumbel, used, parts = torch.from_numpy(noise["gumbel"]), 0, []
    for column, start in spans(model.sampler):
        if column.kind == "continuous":
            parts.append(torch.tanh(x[:, start:start + 1]))
            start, width = start + 1, column.width - 1
        else:
            width = column.width
        parts.append(torch.softmax((x[:, start:start + width] + gumbel[:, used:used + width]) / GUMBEL_TAU, dim=-1))
        used += width
    return torch.cat(parts, dim=1).numpy()


def _compare(model: Any, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Continuous columns: the largest error relative to max(|value|, the widest component's std); integer
    columns are rounded from such values, so a value within float error of n + 0.5 may round either way: those
    count as rounding flips (|difference| = 1), allowed up to ROUNDING_FLIPS of the rows; categories exactly."""
    worst, differing, flips = 0.0, 0, 0
    for column in model.sampler.columns:
        a, b = ours[column.name], theirs[column.name]
        if column.kind == "continuous":
            a, b = a.astype(np.float64), b.astype(np.float64)
            if column.dtype.startswith(("int", "uint")):
                flipped = np.abs(a - b) == 1
                flips += int(flipped.sum())
                a, b = a[~flipped], b[~flipped]
            scale = np.maximum(np.abs(b), max(column.stds))
            worst = max(worst, float(np.max(np.abs(a - b) / scale, initial=0.0)))
        else:
            differing += sum(not _same(x, y) for x, y in zip(a.tolist(), b.tolist()))
    rows = len(next(iter(ours.values())))
    return {"rows": rows, "continuous_max_rel_error": worst, "categories_differing": differing,
            "integer_rounding_flips": flips,
            "tolerance": {"continuous_rel": RTOL, "categories": 0, "integer_rounding_flips": ROUNDING_FLIPS}}


def _same(x: Any, y: Any) -> bool:
    nan = lambda v: v is None or (isinstance(v, float) and v != v)   # noqa: E731
    return (nan(x) and nan(y)) or x == y


def _kinds(sampler: Any) -> str:
    d = sum(c.kind == "discrete" for c in sampler.columns)
    return f"{len(sampler.columns) - d} continuous, {d} discrete"


def _model_class(spec: TabularSpec) -> str:
    return f"{type(spec.model).__module__}.{type(spec.model).__qualname__}"


def _ctgan_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ctgan", "rdt"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
