"""The causal-LM conversion pipeline, the same for every source.

1. PyTorch reference figures on fixed prompts (logits, 32 greedy tokens, NLL of a text).
2. Export the decoder with its KV cache into the staging directory; release the torch
   model (so the weights are never held three times).
3. Candidates: the exported graph, and ONNX Runtime's transformer-optimizer output.
4. Each candidate is validated by running the staged artifact with the real runtime;
   the optimized graph is kept only if it passes and is not slower.
5. The manifest records the figures; the writer publishes the directory atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.converters.lm.quantize import PRECISION
from edgegen.converters.lm.source import LMSource
from edgegen.converters.lm.validate import compare, reference_figures
from edgegen.converters.text.chat_template import asset_json as chat_asset_json, summary as chat_summary
from edgegen.converters.text.spec import special_tokens
from edgegen.converters.versions import library_versions, quiet_libraries
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError, EdgegenError
from edgegen.manifest import Source

if TYPE_CHECKING:
    from edgegen.converters.lm.quant_gate import GateResult

log = logging.getLogger("edgegen.convert")
# Graphs with more weight bytes than edgegen.converters.writer.EXTERNAL_WEIGHTS_BYTES keep them in one external
# data file from the export on (decoder.onnx.data at the end, memory-mapped by ONNX Runtime): no step loads,
# sizes or serializes a protobuf holding the weights, which fails past protobuf's 2 GB limit.


@dataclass(frozen=True)
class Candidate:
    file: str
    label: str                     # "exported" | "optimized"
    fusions: dict[str, int]


def convert_lm(source: LMSource, output: str | Path, *, overwrite: bool = False, optimize: bool = True,
               quantize: str = "none", target: str = "cpu", max_ppl_increase: float | None = None,
               lm_head: str = "auto", report: Any = print) -> Path:
    """Convert ``source`` into a causal-lm artifact at ``output``; returns its path.
    ``quantize="auto"``: the family default for ``target`` (:mod:`edgegen.converters.quantization.defaults`), kept
    in fp32 when it misses the quality gate; an explicit scheme that misses it is an error.  The gate
    (``max_ppl_increase``, % perplexity over fp32; default per scheme) and ``lm_head`` ("auto": 8 bits for
    int8 and int4): :mod:`edgegen.converters.lm.quant_gate`."""
    import tokenizers

    from edgegen.converters.lm.quant_gate import check_options

    check_options(quantize, lm_head, max_ppl_increase)
    tokenizer = tokenizers.Tokenizer.from_str(source.tokenizer_json)
    if source.memory_estimate:
        report(source.memory_estimate)
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        writer.add_asset("tokenizer", "tokenizer.json", source.tokenizer_json)
        if source.chat_template is not None:
            writer.add_asset("chat_template", "chat_template.json", chat_asset_json(source.chat_template))
            report(chat_summary(source.chat_template, source.tokenizer_json))
        sampler = {**source.sampler, "special_tokens": special_tokens(tokenizer, source.sampler)}
        started = time.perf_counter()
        quiet_libraries()
        with _step(source, "the PyTorch reference run", "the model does not run in transformers as loaded"):
            reference = reference_figures(source, tokenizer, sampler.get("context_length"))
        report(f"reference: PyTorch logits, {len(reference.greedy[0])} greedy tokens x {len(reference.prompts)} "
               f"prompts, NLL over {reference.nll_tokens} tokens ({time.perf_counter() - started:.1f} s)")

        started = time.perf_counter()
        export_dir = writer.path("export")
        export_dir.mkdir()
        source.progress = report
        with warnings.catch_warnings(), _step(source, "the ONNX export", _EXPORT_FIX):
            warnings.simplefilter("ignore")   # tracer and exporter chatter about code we do not own
            exported = source.export(export_dir)
        source.release()   # the reference figures are computed: ONNX work from here on holds no torch weights
        plain = _adopt(writer, exported, "decoder_exported.onnx")
        keeps = _add_logits_to_keep(writer.path(plain))
        shutil.rmtree(export_dir)
        report(f"export: {source.converter} ({time.perf_counter() - started:.1f} s)"
               + ("; logits_to_keep added before the LM head" if keeps else ""))

        candidates = [Candidate(plain, "exported", {})]
        if optimize and source.optimizer_model_type:
            optimized = optimize_graph(writer.path(plain), writer.path("decoder_optimized.onnx"), source)
            if optimized is not None:
                candidates.append(optimized)

        manifest_source = Source(model_class=source.model_class, converter=source.converter, opset=source.opset,
                                 checkpoint_sha256=source.checkpoint_sha256, libraries=library_versions())
        results = []
        for cand in candidates:
            writer.add_graph_file("decoder", cand.file, precision="fp32")
            writer.write(writer.manifest(family="causal-lm", source=manifest_source, sampler=sampler,
                                         defaults=source.defaults))
            with _step(source, f"validating the {cand.label} graph with ONNX Runtime", _EXPORT_FIX):
                figures = compare(writer.stage, reference)
            results.append((cand, figures))
            report(f"validate {cand.label}: max |logits error| {figures['max_abs_logits_error']:.2e}, greedy "
                   f"{figures['greedy_matching_tokens']}/{figures['greedy_tokens']} identical, NLL "
                   f"{figures['nll_artifact']:.4f} vs PyTorch {figures['nll_torch']:.4f}, "
                   f"{figures['decode_ms_per_token']:.2f} ms/token" + ("" if figures["passed"] else
                                                                         f"  FAILED: {figures['failure']}"))
        chosen, figures = choose(results)
        started = time.perf_counter()
        final = _finalize(writer, chosen.file, [cand.file for cand, _ in results])
        if writer.path(f"{final}.data").is_file():
            report(f"finalize: {final} + {final}.data ({writer.path(f'{final}.data').stat().st_size / 1e9:.2f} GB, "
                   f"{time.perf_counter() - started:.1f} s)")
        figures = {**figures, "graph": chosen.label, "optimizer": _optimizer_summary(results, source)}
        precision = "fp32"
        required = True
        if quantize == "auto":
            from edgegen.converters.quantization.defaults import graph_params, report_lines, resolve

            quantize, why = resolve("causal-lm", target, graph_params(writer.path(final)))
            figures["quantization_default"] = {"target": target, "scheme": quantize, "reason": why}
            for line in report_lines(quantize, why):
                report(line)
            required = False
        if quantize != "none":
            gated = _quantize(writer, final, quantize, sampler, reference, lm_head=lm_head,
                              max_ppl_increase=max_ppl_increase, report=report)
            if gated.failure is None:
                final, precision, figures["quantization"] = gated.files[0], PRECISION[quantize], gated.figures
                q = figures["quantization"]
                report(f"quantize {quantize}: perplexity {q['perplexity_delta_pct']:+.2f}% vs fp32 (gate "
                       f"{q['max_ppl_increase_pct']:g}%), size {q['size_ratio']:.2f}x, decode "
                       f"{q['decode_speedup']:.2f}x")
                # a bare "greedy agreement 4%" alarms: untrained weights give near-tie logits any rounding flips
                report(f"  same token as fp32: greedy {q['greedy_agreement']:.0%}, top-1 {q['top1_agreement']:.0%} "
                       "(low on random weights, whose logits are near ties)")
            elif required:
                raise ConversionError(f"{gated.failure}; raise --max-ppl-increase (max_ppl_increase) or choose "
                                      "another --quantize scheme")
            else:   # auto: the default scheme did not pay here; fp32 stays, and the manifest says why
                figures["quantization_default"] |= {"used": False, "kept_fp32": gated.failure,
                                                    "attempts": gated.figures["attempts"]}
                report(f"quantize {quantize}: {gated.failure}; the decoder stays fp32")
        writer.add_graph_file("decoder", final, precision=precision)
        writer.write(writer.manifest(family="causal-lm", source=manifest_source, sampler=sampler,
                                     defaults=source.defaults, validation=figures))
        return writer.commit()


_EXPORT_FIX = ("please report it with the model's config.json; models of a supported architecture "
               "(llama, qwen2, qwen3_moe, ...) convert")


@contextmanager
def _step(source: LMSource, step: str, fix: str) -> Iterator[None]:
    """An unexpected exception in ``step`` becomes one line naming the architecture, the step, the root cause
    and ``fix`` (edgegen's own errors pass as they are)."""
    try:
        yield
    except EdgegenError:
        raise
    except Exception as exc:  # noqa: BLE001  (torch, transformers and ONNX Runtime raise many kinds)
        from edgegen.converters.lm.failures import cause_line

        raise ConversionError(f"converting {source.model_class}: {step} failed: {cause_line(exc)}; {fix}") from exc


def _quantize(writer: ArtifactWriter, fp32: str, scheme: str, sampler: dict[str, Any], reference: Any, *,
              lm_head: str, max_ppl_increase: float | None, report: Any) -> GateResult:
    """Quantize the validated fp32 graph under the quality gate, measuring each attempt against fp32;
    when it is met the chosen graph replaces fp32 in the stage (a ``GateResult``)."""
    from edgegen.converters.lm.quant_fidelity import quantization_fidelity
    from edgegen.converters.lm.quant_gate import DEFAULT_MAX_PPL_INCREASE, run_gate
    from edgegen.converters.lm.quantize import quantize_decoder

    # int8/int4: the LM head in 8 bits (float: 0.32x -> int8: 0.52x ORT GenAI's tok/s on a 100M Llama,
    # where the 32k-vocabulary head is a quarter of the weights; benchmarks/lm_genai.py), embeddings too
    head = ("float" if scheme == "fp16" else "int8") if lm_head == "auto" else lm_head

    def quantize(src: Path, dst: Path, scheme: str, **options: Any) -> dict[str, Any]:
        try:
            return quantize_decoder(src, dst, scheme, **options)
        except EdgegenError:
            raise
        except Exception as exc:  # noqa: BLE001  (ONNX Runtime's quantizers raise bare RuntimeErrors)
            raise ConversionError(f"{scheme} quantization failed: {str(exc).splitlines()[0][:300]}; try "
                                  "--no-optimize (quantize the exported graph) or another --quantize scheme") from exc

    gated = run_gate(writer.path(fp32), writer.stage, scheme, lm_head=head,
                     embeddings="float" if scheme == "fp16" else "int8",
                     gate=DEFAULT_MAX_PPL_INCREASE[scheme] if max_ppl_increase is None else max_ppl_increase,
                     nll_ids=reference.nll_ids, quantize=quantize,
                     measure=lambda graph: quantization_fidelity(writer.path(fp32), graph, sampler, reference),
                     report=report)
    if gated.failure is None:
        _remove_graph(writer, fp32)
    return gated


#: the optimized graph is kept unless clearly slower: at 1.05 the choice flipped with machine load
#: (a 100M Llama's int4 artifact kept the unfused graph under load, the fused one when quiet)
KEEP_OPTIMIZED_IF_WITHIN = 1.10


def choose(results: list[tuple[Candidate, dict[str, Any]]]) -> tuple[Candidate, dict[str, Any]]:
    """The exported graph, or the optimized one if it passed validation and is not slower."""
    plain, plain_figures = results[0]
    if not plain_figures["passed"]:
        raise ConversionError(f"the converted model does not match PyTorch: {plain_figures['failure']} "
                              f"(figures: {_brief(plain_figures)}); please report this model's config")
    for cand, figures in results[1:]:
        if figures["passed"] and figures["decode_ms_per_token"] <= KEEP_OPTIMIZED_IF_WITHIN * plain_figures[
                "decode_ms_per_token"]:
            return cand, figures
    return plain, plain_figures


def _brief(figures: dict[str, Any]) -> str:
    keys = ("max_abs_logits_error", "greedy_matching_tokens", "greedy_tokens", "nll_delta")
    return ", ".join(f"{k}={figures[k]}" for k in keys if k in figures)


def _optimizer_summary(results: list[tuple[Candidate, dict[str, Any]]], source: LMSource) -> dict[str, Any]:
    if len(results) < 2:
        return {"used": False, "reason": "not applicable" if not source.optimizer_model_type else "no fusion found"}
    (_, pf), (opt, of) = results[0], results[1]
    return {"used": of["passed"] and of["decode_ms_per_token"] <= KEEP_OPTIMIZED_IF_WITHIN * pf["decode_ms_per_token"],
            "model_type": source.optimizer_model_type, "fusions": opt.fusions, "passed": of["passed"],
            "decode_ms_per_token": {"exported": pf["decode_ms_per_token"], "optimized": of["decode_ms_per_token"]}}


def optimize_graph(path: Path, out: Path, source: LMSource) -> Candidate | None:
    """ONNX Runtime's transformer optimizer (offline fusions); None if it fused nothing or failed."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        model = optimize_model(str(path), model_type=source.optimizer_model_type, num_heads=source.num_heads,
                               hidden_size=source.hidden_size, opt_level=0, use_gpu=False)
        fusions = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        if not fusions:
            return None
        from edgegen.converters import writer

        large = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*")) > writer.EXTERNAL_WEIGHTS_BYTES
        model.save_model_to_file(str(out), use_external_data_format=large, all_tensors_to_one_file=True)
    except Exception as exc:  # noqa: BLE001  (the optimizer is best effort; the exported graph stays)
        log.warning("transformer optimizer skipped: %s", exc)
        return None
    return Candidate(out.name, "optimized", fusions)


def _adopt(writer: ArtifactWriter, exported: Path, name: str) -> str:
    """Move an exported .onnx to the stage's top level as ``name``, its weights in one ``<name>.data`` when over
    EXTERNAL_WEIGHTS_BYTES (an exporter's inline or one-file-per-tensor weights are rewritten tensor by tensor;
    one data file is renamed), so every later step works on an external-data graph."""
    from edgegen.converters.writer import move_graph

    move_graph(exported, writer.path(name))
    return name


def _add_logits_to_keep(path: Path) -> bool:
    """Give the exported graph a ``logits_to_keep`` [1] int64 input (transformers' name; 0 = every position):
    ``Slice(x, -k, end, axis 1)`` on the LM head's input, so generation computes the head for the last position
    only (a prompt's prefill otherwise runs it per position: 50257 x 768 x T multiply-adds for GPT-2, and a
    [B, T, V] logits tensor).  Only where that is certainly right: the head is a MatMul (then maybe
    position-wise ops with constant operands: a 1-D bias, Casts, logit scaling and softcapping, :func:`_lm_head`)
    writing the graph output ``logits`` declared [batch, sequence, vocab] (a MatMul keeps a 3-D input's sequence
    axis 1).  The graph's weights stay where they are (external data is not loaded).  Returns whether it was
    added."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_model(str(path), load_external_data=False)
    graph = model.graph
    out = next((o for o in graph.output if o.name == "logits"), None)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    head = _lm_head(graph, producer)
    if out is None or head is None or graph.node[head].op_type != "MatMul" \
            or len(out.type.tensor_type.shape.dim) != 3 or any(i.name == "logits_to_keep" for i in graph.input):
        return False
    x = graph.node[head].input[0]
    graph.initializer.extend([numpy_helper.from_array(np.array([2**63 - 1], np.int64), "logits_to_keep_end"),
                              numpy_helper.from_array(np.array([1], np.int64), "logits_to_keep_axis")])
    nodes = [helper.make_node("Neg", ["logits_to_keep"], ["logits_to_keep_start"], name="/logits_to_keep/Neg"),
             helper.make_node("Slice", [x, "logits_to_keep_start", "logits_to_keep_end", "logits_to_keep_axis"],
                              ["logits_to_keep_hidden"], name="/logits_to_keep/Slice")]        # [B, k or T, H]
    graph.node[head].input[0] = "logits_to_keep_hidden"
    for offset, node in enumerate(nodes):
        graph.node.insert(head + offset, node)
    graph.input.append(helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1]))
    out.type.tensor_type.shape.dim[1].dim_param = "logits_length"
    from edgegen.converters.writer import serialize

    serialize(model, path)   # loaded without its external data: the weights stay where they are
    return True


#: Position-wise ops that may follow the LM head: unary ones, and binary ones whose other operand is a
#: constant scalar or a 1-D [V] vector (a bias; logit scaling: Cohere's Mul, Granite's Div; Gemma 2's
#: softcapping Div -> Tanh -> Mul).  Slicing the positions before the head commutes with each of them.
_AFTER_HEAD_UNARY = frozenset({"Cast", "Tanh", "Identity"})
_AFTER_HEAD_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


def _lm_head(graph: Any, producer: dict[str, int]) -> int | None:
    """The index of the MatMul that computes ``logits`` through only :data:`_AFTER_HEAD_UNARY` /
    :data:`_AFTER_HEAD_BINARY` ops with constant scalar or 1-D operands, or None."""
    constant_dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constant_dims[node.output[0]] = list(node.attribute[0].t.dims)
    head = producer.get("logits")
    while head is not None and graph.node[head].op_type in _AFTER_HEAD_UNARY | _AFTER_HEAD_BINARY:
        node = graph.node[head]
        if node.op_type in _AFTER_HEAD_UNARY:
            rest = list(node.input[:1])
        else:
            rest = [x for x in node.input if x not in constant_dims or len(constant_dims[x]) > 1]
        head = producer.get(rest[0]) if len(rest) == 1 else None
    return head if head is not None and graph.node[head].op_type == "MatMul" else None


def _finalize(writer: ArtifactWriter, chosen: str, candidates: list[str]) -> str:
    """Keep only the chosen graph, as ``decoder.onnx``; weights over EXTERNAL_WEIGHTS_BYTES go
    to ``decoder.onnx.data``, which ONNX Runtime memory-maps instead of copying through a
    protobuf: loading then peaks at about the model's size, not twice it."""
    from edgegen.converters.writer import move_graph

    for file in candidates:
        if file != chosen:
            _remove_graph(writer, file)
    move_graph(writer.path(chosen), writer.path("decoder.onnx"))   # renamed, not loaded: no copy in memory
    return "decoder.onnx"


def _remove_graph(writer: ArtifactWriter, file: str) -> None:
    import onnx

    from edgegen.converters.writer import external_data_files

    model = onnx.load_model(str(writer.path(file)), load_external_data=False)
    for data in external_data_files(model):
        writer.path(data).unlink(missing_ok=True)
    writer.path(file).unlink()
