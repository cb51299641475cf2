"""Tiny artifacts of every family whose main graph holds a ``Loop`` that never ends (or ends after a few trips).

The hostile case of run_control: a graph whose ``Loop`` condition stays true forever never returns from
``session.run``.  Each builder writes a real, checksummed artifact (ArtifactWriter) with hand-made graphs:
the value flows through the loop unchanged, so the bounded variant (``trips=3``) computes what the family
expects and shows normal runs are unaffected.  Importable as ``looping_support`` (tests/ is on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgegen.manifest import Source

#: every family this module builds, and the graph role that loops in it
LOOPING_ROLE = {"causal-lm": "decoder", "rnn-lm": "step", "gan": "generator", "vae": "decoder",
                "vq-vae": "decode_codes", "flow": "flow_inverse", "diffusion": "denoiser"}
F, I64 = TensorProto.FLOAT, TensorProto.INT64
IMAGE = [1, 2, 2]                          # [C, H, W] of the image families
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
             "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True}


def loop_nodes(x: str, y: str, trips: int | None, prefix: str) -> tuple[list, list]:
    """Nodes and initializers for ``y = Loop(x)``: x passes through unchanged, forever (``trips=None``: the
    condition stays true and there is no trip count) or ``trips`` times."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        f"{prefix}_body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, None)])
    inits = [helper.make_tensor(f"{prefix}_true", TensorProto.BOOL, [], [True])]
    if trips is not None:
        inits.append(helper.make_tensor(f"{prefix}_trips", I64, [], [trips]))
    node = helper.make_node("Loop", ["" if trips is None else f"{prefix}_trips", f"{prefix}_true", x], [y], body=body)
    return [node], inits


def graph(nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "looping", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name: str, values: list, elem: int = I64) -> onnx.TensorProto:
    return helper.make_tensor(name, elem, [len(values)], values)


def _looped(x: str, y: str, inputs: list, outputs: list, trips: int | None, pre: list | None = None,
            post: list | None = None, inits: list | None = None) -> onnx.ModelProto:
    """A graph: ``pre`` nodes (into ``x``), the loop (x -> y), ``post`` nodes (from y to the outputs)."""
    nodes, loop_inits = loop_nodes(x, y, trips, "loop")
    return graph([*(pre or []), *nodes, *(post or [])], [*loop_inits, *(inits or [])], inputs, outputs)


def _lm_logits(vocab: int, trips: int | None) -> onnx.ModelProto:
    """input_ids [B, T] -> zero logits [B, T, V] through the loop (every token as likely)."""
    pre = [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=F),
           helper.make_node("Unsqueeze", ["ids_f", "axis2"], ["ids_3d"]),               # [B, T, 1]
           helper.make_node("Mul", ["ids_3d", "zeros_v"], ["x"])]                       # [B, T, V]
    inits = [_const("axis2", [2]), helper.make_tensor("zeros_v", F, [vocab], [0.0] * vocab)]
    return _looped("x", "logits", [vi("input_ids", I64, ["batch", "seq"])], [vi("logits", F, ["batch", "seq", vocab])],
                   trips, pre=pre, inits=inits)


def _rnn_step(vocab: int, trips: int | None) -> onnx.ModelProto:
    model = _lm_logits(vocab, trips)
    model.graph.input.append(vi("state.0", F, ["batch", 4]))
    model.graph.node.append(helper.make_node("Identity", ["state.0"], ["new_state.0"]))
    model.graph.output.append(vi("new_state.0", F, ["batch", 4]))
    onnx.checker.check_model(model)
    return model


def _image_from(name: str, elem: int, shape: list, trips: int | None, out: str = "image") -> onnx.ModelProto:
    """``name`` [B, *shape] -> ``out`` [B, 1, 2, 2] float32 through the loop (a reshape of its 4 values)."""
    pre = [helper.make_node("Cast", [name], ["as_f"], to=F), helper.make_node("Reshape", ["as_f", "img"], ["x"])]
    return _looped("x", out, [vi(name, elem, ["batch", *shape])], [vi(out, F, ["batch", *IMAGE])], trips, pre=pre,
                   inits=[_const("img", [-1, *IMAGE])])


def family_graphs(family: str, trips: int | None, vocab: int = 0) -> tuple[dict[str, onnx.ModelProto], dict]:
    """(graphs by role, sampler section) of a ``family`` artifact whose LOOPING_ROLE graph loops."""
    flat = [helper.make_node("Reshape", ["image", "flat"], ["mean"]),
            helper.make_node("Identity", ["mean"], ["logvar"])]
    if family == "causal-lm":
        return {"decoder": _lm_logits(vocab, trips)}, {"context_length": 64, "eos_token_ids": [0], "cache": "none"}
    if family == "rnn-lm":
        return {"step": _rnn_step(vocab, trips)}, {"state_shapes": [[4]], "eos_token_ids": [0]}
    if family == "gan":
        return {"generator": _image_from("z", F, [4], trips)}, {"latent_dim": 4, "image_shape": IMAGE}
    if family == "vae":
        encoder = graph(flat, [_const("flat", [-1, 4])], [vi("image", F, ["batch", *IMAGE])],
                         [vi("mean", F, ["batch", 4]), vi("logvar", F, ["batch", 4])])
        return ({"encoder": encoder, "decoder": _image_from("latent", F, [4], trips)},
                {"latent_shape": [4], "image_shape": IMAGE})
    if family == "vq-vae":
        encoder = graph([helper.make_node("Identity", ["image"], ["latents"])], [], [vi("image", F, ["batch", *IMAGE])],
                         [vi("latents", F, ["batch", *IMAGE])])
        quantize = graph([helper.make_node("Squeeze", ["latents", "axis1"], ["sq"]),
                           helper.make_node("Cast", ["sq"], ["indices"], to=I64)], [_const("axis1", [1])],
                          [vi("latents", F, ["batch", *IMAGE])], [vi("indices", I64, ["batch", 2, 2])])
        decoder = graph([helper.make_node("Identity", ["latents"], ["image"])], [],
                         [vi("latents", F, ["batch", *IMAGE])], [vi("image", F, ["batch", *IMAGE])])
        return ({"encoder": encoder, "quantize": quantize, "decode_codes": _image_from("indices", I64, [2, 2], trips),
                 "decoder": decoder}, {"codebook_size": 4, "code_dim": 1, "grid": [2, 2], "image_shape": IMAGE})
    if family == "flow":
        inverse = _looped("z", "x", [vi("z", F, ["batch", 4])], [vi("x", F, ["batch", 4])], trips)
        forward = _looped("x", "z", [vi("x", F, ["batch", 4])], [vi("z", F, ["batch", 4]), vi("log_det", F, ["batch"])],
                          trips, post=[helper.make_node("ReduceSum", ["z", "ax1"], ["log_det"], keepdims=0)],
                          inits=[_const("ax1", [1])])              # score loops too
        return ({"flow_inverse": inverse, "flow_forward": forward},
                {"data_shape": [4], "latent_shape": [4], "image_shape": IMAGE})
    if family == "diffusion":
        denoiser = _looped("sample", "out_sample", [vi("sample", F, ["batch", *IMAGE]), vi("timestep", F, ["batch"])],
                           [vi("out_sample", F, ["batch", *IMAGE])], trips)
        return ({"denoiser": denoiser}, {"scheduler_config": SCHEDULER, "sample_shape": IMAGE, "image_shape": IMAGE,
                                         "value_range": [-1.0, 1.0]})
    raise ValueError(family)


def write_looping_artifact(dest: Path, family: str, trips: int | None = None) -> Path:
    """An artifact of ``family`` whose LOOPING_ROLE graph loops forever (``trips=None``) or ``trips`` times."""
    from edgegen.converters.writer import ArtifactWriter

    tokenizer = None
    if family in ("causal-lm", "rnn-lm"):
        from tests_support import train_tiny_tokenizer

        tokenizer = train_tiny_tokenizer()
    graphs, sampler = family_graphs(family, trips, vocab=tokenizer.get_vocab_size() if tokenizer else 0)
    with ArtifactWriter(dest) as writer:
        for role, model in graphs.items():
            writer.add_graph(role, model, precision="fp32")
        if tokenizer is not None:
            writer.add_asset("tokenizer", "tokenizer.json", tokenizer.to_str())
        defaults = {"steps": 2, "scheduler": "ddim"} if family == "diffusion" else {}
        writer.write(writer.manifest(family=family, sampler=sampler, defaults=defaults,
                                     source=Source(model_class="tests.Looping", converter="tests", opset=17)))
        return writer.commit()


def images(n: int = 1) -> np.ndarray:
    """uint8 [n, 2, 2, 1] images for reconstruct / score."""
    return np.full((n, 2, 2, 1), 128, np.uint8)
