"""Converting a recurrent LM (:class:`~edgegen.converters.rnn.spec.RNNLMSpec`) into an rnn-lm artifact.

1. PyTorch reference figures on the causal-LM converter's fixed prompts: whole-prompt
   logits, 32 greedy tokens per prompt (token by token, states passed on), mean NLL of a
   fixed text.
2. Export the module as one ``step`` graph (``torch.onnx.export``, TorchScript exporter,
   opset 17): inputs ``input_ids`` [B, T], ``state.{i}`` [B, *shape]; outputs ``logits``
   [B, T, V], ``new_state.{i}`` [B, *shape]; batch and sequence axes dynamic.
3. Validate by running the staged artifact with :class:`edgegen.runtimes.rnn.rnn_lm.RNNLM`
   (the real generation path: per-row prefill, then one-token steps with the state);
   the figures go into the manifest's ``validation``; a mismatch raises ConversionError.
4. The writer publishes the directory atomically.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegen.converters.rnn.spec import RNNLMSpec
from edgegen.converters.text.spec import special_tokens
from edgegen.converters.text.validation import GREEDY_TOKENS, NLL_TEXT, PROMPTS, Reference, judge, mean_nll
from edgegen.converters.versions import library_versions, quiet_libraries
from edgegen.converters.writer import ArtifactWriter
from edgegen.errors import ConversionError
from edgegen.manifest import Source

OPSET = 17
FAMILY = "rnn-lm"
#: Longest prompt / NLL text (tokens) used for validation.
PROMPT_TOKENS = 64
NLL_TOKENS = 256


class _FlatStates(torch.nn.Module):
    """The spec's forward as the exporter sees it: flat tensors in, flat tensors out."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, *new = self.module(input_ids, *states)
        return (logits, *new)


def zero_states(spec: RNNLMSpec, batch: int) -> list[torch.Tensor]:
    return [torch.zeros((batch, *shape), dtype=torch.float32) for shape in spec.state_shapes]   # [B, *shape]


class _Torch:
    """The PyTorch side of validation."""

    def __init__(self, spec: RNNLMSpec) -> None:
        self.spec, self.module = spec, spec.module

    @torch.no_grad()
    def run(self, ids: list[int] | torch.Tensor, states: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list]:
        seq = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids], dtype=torch.int64)     # [B, T]
        out = self.module(seq, *(states if states is not None else zero_states(self.spec, seq.shape[0])))
        if not isinstance(out, (tuple, list)) or len(out) != 1 + len(self.spec.state_shapes):
            raise ConversionError(
                f"{type(self.module).__name__} returned {type(out).__name__}"
                f"{'' if not isinstance(out, (tuple, list)) else f' of {len(out)}'}; the rnn-lm contract is "
                f"logits, *new_states = module(input_ids, *states) with {len(self.spec.state_shapes)} states "
                "(see edgegen.converters.rnn.spec)")
        logits, *new = out
        for i, (s, shape) in enumerate(zip(new, self.spec.state_shapes)):
            if tuple(s.shape[1:]) != tuple(shape):
                raise ConversionError(f"{type(self.module).__name__} returned new state {i} of shape "
                                      f"{tuple(s.shape)}, but state_shapes[{i}] is {shape} (plus the batch axis)")
        return logits.float(), list(new)

    def greedy(self, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        logits, states = self.run(ids)
        tokens, margins = [], []
        for _ in range(n):
            last = logits[0, -1]
            top2 = torch.topk(last, 2).values
            token = int(last.argmax())
            tokens.append(token)
            margins.append(float(top2[0] - top2[1]))
            logits, states = self.run([token], states)
        return tokens, margins


def convert_rnn_lm(spec: RNNLMSpec, output: str | Path, *, overwrite: bool = False, report: Any = print,
                   **_ignored: Any) -> Path:
    """Convert ``spec`` into an rnn-lm artifact at ``output``; returns its path.

    Options of other converters (``optimize``, ``quantize``) are accepted and ignored:
    the step graph is exported as is, in fp32.
    """
    import tokenizers

    module = spec.module
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"RNNLMSpec.module must be a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    tokenizer_json = spec.tokenizer_json()
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    sampler: dict[str, Any] = {
        "eos_token_ids": list(spec.eos_token_ids), "bos_token_id": spec.bos_token_id,
        "pad_token_id": spec.pad_token_id, "state_shapes": [list(s) for s in spec.state_shapes]}
    sampler["special_tokens"] = special_tokens(tokenizer, sampler)
    quiet_libraries()
    with ArtifactWriter(output, overwrite=overwrite) as writer:
        writer.add_asset("tokenizer", "tokenizer.json", tokenizer_json)

        started = time.perf_counter()
        ref = _Torch(spec)
        prompts = [(tokenizer.encode(text).ids or [0])[:PROMPT_TOKENS] for text in PROMPTS]
        ref_logits = [ref.run(ids)[0][0].numpy() for ids in prompts]                          # [T, V] each
        greedy = [ref.greedy(ids, GREEDY_TOKENS) for ids in prompts]
        nll_ids = (tokenizer.encode(NLL_TEXT).ids or [0])[:NLL_TOKENS]
        nll_torch = mean_nll(ref.run(nll_ids)[0][0].numpy(), nll_ids)
        report(f"reference: PyTorch logits, {GREEDY_TOKENS} greedy tokens x {len(prompts)} prompts, "
               f"NLL over {len(nll_ids) - 1} tokens ({time.perf_counter() - started:.1f} s)")

        started = time.perf_counter()
        _export(spec, writer.path("step.onnx"))
        converter = f"torch.onnx.export (torch {torch.__version__}, opset {OPSET})"
        report(f"export: {converter} ({time.perf_counter() - started:.1f} s)")

        writer.add_graph_file("step", "step.onnx", precision="fp32")
        source = Source(model_class=spec.name or f"{type(module).__module__}.{type(module).__qualname__}",
                        converter=converter, opset=OPSET, checkpoint_sha256=spec.checkpoint_sha256,
                        libraries=library_versions())
        writer.write(writer.manifest(family=FAMILY, source=source, sampler=sampler, defaults=dict(spec.defaults)))
        reference = Reference(prompts=prompts, logits=ref_logits, greedy=[g[0] for g in greedy],
                              margins=[g[1] for g in greedy], nll_ids=nll_ids, nll_torch=nll_torch,
                              nll_tokens=len(nll_ids) - 1)
        figures = _compare(writer.stage, reference)
        report(f"validate: max |logits error| {figures['max_abs_logits_error']:.2e}, greedy "
               f"{figures['greedy_matching_tokens']}/{figures['greedy_tokens']} identical, NLL "
               f"{figures['nll_artifact']:.4f} vs PyTorch {figures['nll_torch']:.4f}, "
               f"{figures['decode_ms_per_token']:.2f} ms/token"
               + ("" if figures["passed"] else f"  FAILED: {figures['failure']}"))
        if not figures["passed"]:
            raise ConversionError(f"the converted model does not match PyTorch: {figures['failure']}; "
                                  "check that the module follows the rnn-lm contract (edgegen.converters.rnn.spec)")
        writer.write(writer.manifest(family=FAMILY, source=source, sampler=sampler, defaults=dict(spec.defaults),
                                     validation=figures))
        return writer.commit()


def _export(spec: RNNLMSpec, path: Path) -> None:
    b, t = 2, 3   # distinct sizes so no axis is specialised to another's value
    ids = torch.randint(0, 2, (b, t), dtype=torch.int64)                      # [B, T]
    states = [torch.randn((b, *shape)) * 0.1 for shape in spec.state_shapes]   # [B, *shape]
    n = len(spec.state_shapes)
    state_names = [f"state.{i}" for i in range(n)]
    new_names = [f"new_state.{i}" for i in range(n)]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
        **{name: {0: "batch_size"} for name in state_names + new_names},
    }
    try:
        with warnings.catch_warnings():   # tracer chatter about code we do not own
            warnings.simplefilter("ignore")
            torch.onnx.export(_FlatStates(spec.module), (ids, *states), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["input_ids", *state_names],
                              output_names=["logits", *new_names], dynamic_axes=axes)
    except Exception as exc:
        raise ConversionError(
            f"torch.onnx.export failed for {type(spec.module).__name__}: {exc}; the module must follow the rnn-lm "
            "contract (logits, *new_states = module(input_ids, *states)), see edgegen.converters.rnn.spec") from exc


def _compare(stage: Path, ref: Reference) -> dict[str, Any]:
    """Run the staged artifact with the rnn-lm runtime and judge it against PyTorch's figures."""
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.rnn.rnn_lm import RNNLM, RNNGenerator
    from edgegen.runtimes.session import SessionConfig

    lm = RNNLM.from_artifact(open_artifact(stage), SessionConfig(provider="cpu"))
    return judge(ref, lambda ids: lm.graph.full_logits(np.array([ids], dtype=np.int64))[0],
                 lambda settings: RNNGenerator(lm.graph, lm.sampler, settings, batch=1))
