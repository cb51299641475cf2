"""Quantized copies of a causal-LM decoder graph, made with ONNX Runtime's own tools.

Schemes (the manifest's precision name in brackets):

- ``fp16`` (fp16): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True``: weights and compute in float16, but every graph input and output
  (logits, the KV cache) stays float32, so the runtime's cache code is unchanged.
- ``int8`` (int8-weight): ``MatMulNBitsQuantizer`` with ``bits=8``: symmetric block-wise int8
  weights (blocks of 128) in ``MatMulNBits`` with ``accuracy_level`` 4 (int8 compute on CPU,
  activations quantized per block inside the kernel).  Against ``quantize_dynamic``
  (MatMulInteger, one scale per weight tensor) on GPT-2 small, 2 cores, a one-off comparison of
  bare session.run loops: 1.95x fp32 decode vs 1.64x, both with the head in float; 3.0x with the
  head in 8 bits too; greedy tokens equal to fp32's 64/64 vs 21/64 (benchmarks/lm.py now gives
  2.30x for int8 with the 8-bit head through the runtime).
- ``int4`` (int4-weight): ``MatMulNBitsQuantizer``: symmetric block-wise int4 weights (blocks of
  128) in ``MatMulNBits`` nodes, with ``accuracy_level`` (4 = int8 compute on CPU; leaving it
  unset runs about 2x slower there).  Blocks of 128 rather than ONNX Runtime GenAI's 32, for
  speed: on a 100M Llama (GroupQueryAttention graph, bare decode loops, one run) 422 tok/s vs 346
  (64: 394), for held-out perplexity +1.41% vs +1.20% over fp32 on the bundled pycode LM.

The LM head (the MatMul/Gemm producing ``logits``): its errors go straight into the token
choice, and with a large vocabulary it is no longer one matrix among many (Llama 32k x 768: a
quarter of a 100M model, 98 MB of fp32 read per token, over twice the int4 body).  int8 and
int4 store it in 8 bits, blocks of 128 (``lm_head="int8"``, their default): for a 768 x 32000
head that reads about as fast as 4-bit blocks of 32 (0.63 vs 0.60 ms) at a ninth of the error
(0.010 vs 0.086 relative, random weights).  ``lm_head="float"`` keeps it float32;
``lm_head="int4"`` (int4 only) quantizes it like the body, in the same pass (what ONNX Runtime
GenAI's model builder does).

Embedding tables (``Gather`` of a float initializer: token and position embeddings) go to 8 bits
for int8 and int4 (``embeddings="int8"``, :func:`_quantize_embeddings`), so an int4 artifact's
size is not left to float embeddings.  ``exclude`` names more weight MatMuls to keep in float
(the quality gate's escalation, :mod:`edgegen.converters.lm.quant_gate`, which then also keeps
the head and the embeddings float).

Before int8/int4 the graph is put in the form the quantizers read: a ``Gemm`` with a
constant weight (torch exports GPT-2's Conv1D layers so) becomes ``MatMul`` + ``Add``,
and a ``Transpose`` of a constant weight feeding a MatMul is folded into the weight; both
quantizers only look at ``MatMul(x, initializer)``.  This rewrites the graph, it does not
quantize anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.converters.quantization.ort_tools import consumers, gemm_to_matmul, initializers, is_float
from edgegen.errors import ConversionError, InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import onnx

__all__ = ["LM_HEADS", "PRECISION", "SCHEMES", "quantize_decoder", "weight_matmuls"]

SCHEMES = ("fp16", "int8", "int4")
PRECISION = {"fp16": "fp16", "int8": "int8-weight", "int4": "int4-weight"}   # manifest precision names
#: How the LM head may be stored: float (fp16: with the body), block-wise int8 (int8, int4) or int4 (int4).
LM_HEADS = ("float", "int8", "int4")
#: Blocks along the weights' input axis: the body's per scheme, an 8-bit head's, an 8-bit embedding row's.
BLOCK_SIZE = {"int8": 128, "int4": 128}
HEAD_BLOCK = 128
#: Weight bits of the MatMulNBits schemes, and of an LM head stored as ``lm_head`` says.
BITS = {"int8": 8, "int4": 4}
EMBEDDING_BLOCK = 128
#: Graphs with more initializer bytes than this keep them in ``<name>.data`` (memory-mapped by ORT); None:
#: edgegen.converters.writer.EXTERNAL_WEIGHTS_BYTES (16 MB).
EXTERNAL_WEIGHTS_BYTES: int | None = None
#: Ops between the LM head's MatMul/Gemm and ``logits`` that do not change which op made them.
_PASS_THROUGH = {"Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Add"}


def quantize_decoder(src: Path, dst: Path, scheme: str, *, block_size: int | None = None, accuracy_level: int = 4,
                     lm_head: str = "float", embeddings: str = "float",
                     exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Write a quantized copy of the decoder graph at dst (weights over 16 MB go to f"{dst.name}.data" external data, all tensors in one file, so ORT memory-maps them); returns a JSON-able report: scheme, what tool/options, which MatMul nodes were quantized (count) and which were kept in float by name (the LM head — the MatMul/Gemm producing `logits` — is stored as ``lm_head`` says: float, or with int8/int4 in 8 bits, or with int4 in 4 bits; the weight MatMuls named in ``exclude`` stay float too), which embedding Gathers went to 8 bits (``embeddings="int8"``, int8/int4), and size of dst (+ data) in bytes.  ``block_size`` defaults to the scheme's (BLOCK_SIZE)."""  # noqa: E501
    if scheme not in SCHEMES:
        raise InvalidArgumentError(f"unknown quantization scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if lm_head not in LM_HEADS or (lm_head != "float" and scheme == "fp16") or (lm_head == "int4" and scheme != "int4"):
        raise InvalidArgumentError(f"lm_head={lm_head!r} is not available with {scheme}: use lm_head='float', "
                                   "'int8' (int8, int4) or 'int4' (int4)")
    if embeddings not in ("float", "int8") or (embeddings == "int8" and scheme == "fp16"):
        raise InvalidArgumentError(f"embeddings={embeddings!r} is not available with {scheme}: use 'float', or "
                                   "'int8' with the int8 and int4 schemes")
    if isinstance(exclude, str):
        raise InvalidArgumentError(f"exclude must be a list of node names, got the string {exclude!r}")
    exclude = list(dict.fromkeys(exclude))
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InvalidArgumentError(f"quantize_decoder: the output {dst} must differ from the input graph")
    import onnx
    import onnxruntime

    head_option, head_bits = lm_head, BITS.get(lm_head)  # bits None: float
    # from here on, lm_head names the head's nodes
    embedded: list[str] = []
    if scheme == "fp16":  # everything in float16, the LM head included (keep_io_types: logits float32)
        _check_exclude(onnx.load_model(str(src), load_external_data=False), exclude, src)
        model, tool, rewritten = _fp16(src, exclude), _fp16_tool(exclude), {}
        lm_head = _lm_head(model)
    else:
        model, lm_head, rewritten = _prepared(src)
        _check_exclude(model, exclude, src)
        if head_bits and set(lm_head) & set(exclude):
            raise InvalidArgumentError(f"exclude keeps the LM head {', '.join(sorted(set(lm_head) & set(exclude)))} "
                                       f"in float while lm_head={head_option!r} asks to "
                                       "quantize it: use lm_head='float' or drop it from exclude")
        if not _weight_matmuls(model) - set(lm_head) - set(exclude):   # the body is what pays
            raise ConversionError(f"{src.name}: nothing to quantize for {scheme}: the graph has no MatMul with a "
                                  f"float weight{' besides the LM head' if lm_head else ''}"
                                  + (" and the excluded nodes" if exclude else ""))
        model, tool = _nbits(model, lm_head, BITS[scheme], BLOCK_SIZE[scheme] if block_size is None else block_size,
                             accuracy_level, head_bits=head_bits, exclude=exclude)
        if embeddings == "int8":
            embedded = _quantize_embeddings(model)
        tool["options"]["embeddings"] = {"bits": 8, "block_size": EMBEDDING_BLOCK, "nodes": embedded} \
            if embedded else "float"
    quantized, kept = _census(model, scheme)
    files = _save(model, dst)
    return {
        "scheme": scheme, "precision": PRECISION[scheme], **tool, "onnxruntime": onnxruntime.__version__,
        "lm_head": lm_head, "rewritten_for_quantizer": rewritten,
        "quantized_matmuls": quantized, "float_matmuls": kept, "quantized_embeddings": embedded,
        "files": files, "size_bytes": sum((dst.parent / f).stat().st_size for f in files),
    }


# -- the tools ------------------------------------------------------------------------

def _fp16_tool(exclude: list[str]) -> dict[str, Any]:
    options = {"keep_io_types": True, "op_block_list": "float16.DEFAULT_OP_BLOCK_LIST"}
    if not exclude:
        return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "options": options}
    return {"tool": "onnxruntime.transformers.onnx_model.OnnxModel.convert_float_to_float16",
            "options": {**options, "use_symbolic_shape_infer": True, "node_block_list": exclude}}


def _fp16(src: Path, exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if not exclude:
        # A path (not a proto): ORT runs shape inference file to file (works past 2 GB) and loads
        # the model once.  Values outside float16's range are clamped to +-65504 by the converter.
        return convert_float_to_float16(str(src), keep_io_types=True)
    # Nodes kept in float32 need every value's type, to place Casts around them: onnx's shape inference
    # cannot type the transformer optimizer's fused com.microsoft ops (an untyped FastGelu output left
    # a float16 x float32 MatMul that failed to load), ORT's symbolic shape inference can, and
    # OnnxModel.convert_float_to_float16 runs it first -- on the whole model in memory, which serializes it (fails
    # past 2 GB).  So the types are inferred here on the graph without its weights (they stay in their file:
    # inference needs their shapes only), merged as OnnxModel merges them, and the conversion then runs with
    # shape inference off, followed by OnnxModel's Cast clean-up.
    import onnx
    from onnx import TensorProto, ValueInfoProto
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

    stripped = onnx.load_model(str(src), load_external_data=False)
    typed = SymbolicShapeInferenceHelper(stripped).infer_shapes(stripped, auto_merge=True, guess_output_rank=False)
    model = onnx.load_model(str(src))
    known = {vi.name for vi in model.graph.value_info}
    for vi in typed.graph.value_info if typed is not None else []:
        if vi.name and vi.name not in known and vi.type.tensor_type.elem_type != TensorProto.UNDEFINED:
            copy = ValueInfoProto()
            copy.CopyFrom(vi)
            copy.type.tensor_type.ClearField("shape")
            model.graph.value_info.append(copy)
    converted = OnnxModel(convert_float_to_float16(model, disable_shape_infer=True, keep_io_types=True,
                                                   node_block_list=exclude))
    converted.remove_cascaded_cast_nodes()
    converted.remove_useless_cast_nodes()
    return converted.model


def _nbits(model: onnx.ModelProto, lm_head: list[str], bits: int, block_size: int, accuracy_level: int,
           head_bits: int | None, exclude: list[str]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The body in ``bits`` (blocks of ``block_size``); the head (``head_bits``) in float (None), in 8 bits with
    blocks of HEAD_BLOCK, or in 4 bits like the body -- in the body's pass when its bits and block are the
    body's, else in a second pass over the head alone; the nodes in ``exclude`` in float through both."""
    if block_size < 16 or block_size & (block_size - 1):
        raise InvalidArgumentError(f"block_size must be a power of two >= 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise InvalidArgumentError(f"accuracy_level must be 0..4 (4: int8 compute, fastest on CPU), "
                                   f"got {accuracy_level}")
    import inspect

    nbits = _import_nbits_quantizer()
    known = inspect.signature(nbits.DefaultWeightOnlyQuantConfig).parameters  # older ORTs lack the last two

    def quantize(model: onnx.ModelProto, exclude: list[str], bits: int, block: int) -> onnx.ModelProto:
        wanted = {"block_size": block, "is_symmetric": True, "accuracy_level": accuracy_level,
                  "op_types_to_quantize": ("MatMul",), "bits": bits}
        config = nbits.DefaultWeightOnlyQuantConfig(**{k: v for k, v in wanted.items() if k in known})
        quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)  # in place
        log = logging.getLogger(nbits.__name__)
        level = log.level
        log.setLevel(logging.WARNING)  # it logs a line per node at INFO
        try:
            quantizer.process()
        finally:
            log.setLevel(level)
        return quantizer.model.model

    head_block = block_size if head_bits == 4 else HEAD_BLOCK
    together = (head_bits, head_block) == (bits, block_size)
    first = [*exclude, *([] if together else lm_head)]
    model = quantize(model, first, bits, block_size)
    if head_bits and not together:  # second pass: the head alone (every other MatMul excluded)
        body = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in lm_head]
        model = quantize(model, body, head_bits, head_block)
    options = {"algorithm": "DEFAULT (round to nearest)", "bits": bits, "block_size": block_size,
               "is_symmetric": True, "accuracy_level": accuracy_level, "op_types_to_quantize": ["MatMul"],
               "nodes_to_exclude": list(exclude) if head_bits else first,
               "lm_head": next((name for name, b in BITS.items() if b == head_bits), "float"),
               **({"lm_head_bits": head_bits, "lm_head_block_size": head_block} if head_bits else {})}
    return model, {"tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
                   "options": options}


def _quantize_embeddings(model: onnx.ModelProto) -> list[str]:
    """Every ``Gather(float initializer [V, H], ids)`` on axis 0 whose table feeds nothing else becomes a
    com.microsoft ``GatherBlockQuantized`` with 8-bit blocks along H (uint8, zero point 128: symmetric);
    returns the rewritten nodes' names.

    Written here because ONNX Runtime's MatMulNBitsQuantizer quantizes Gather to 4 bits only ("Gather only
    supports 4 bits quantization"), while its GatherBlockQuantized kernel takes ``bits=8``: 0.6% relative
    error on a random table (4 bits: 9%), a quarter of the float bytes, only gathered rows dequantized."""
    import numpy as np
    from onnx import helper, numpy_helper

    from edgegen.converters.writer import read_array

    inits, uses = initializers(model), consumers(model)
    done, nodes = [], []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or not is_float(table) \
                or uses.get(table.name, 0) != 1 or table.dims[1] % 16:
            nodes.append(node)
            continue
        block = next(b for b in (EMBEDDING_BLOCK, 64, 32, 16) if table.dims[1] % b == 0)
        values = read_array(table).astype(np.float32)                               # [V, H] (from its file)
        blocks = values.reshape(values.shape[0], -1, block)                         # [V, H / block, block]
        scale = np.abs(blocks).max(axis=-1) / 127.0                                 # [V, H / block]
        scale[scale == 0] = 1.0
        data = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        name = table.name
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([
            numpy_helper.from_array(data.reshape(values.shape), f"{name}_Q8"),      # [V, H] uint8
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scales"),    # [V, H / block]
            numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), f"{name}_zero_points")])
        nodes.append(helper.make_node(
            "GatherBlockQuantized", [f"{name}_Q8", node.input[1], f"{name}_scales", f"{name}_zero_points"],
            list(node.output), name=node.name, domain="com.microsoft", bits=8, block_size=block, gather_axis=0,
            quantize_axis=1))
        done.append(node.name)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _import_nbits_quantizer() -> Any:
    """ORT's matmul_nbits_quantizer calls ``logging.basicConfig(level=INFO)`` when imported,
    which would make every library's INFO lines print in the caller's process: undo that."""
    import sys

    name = "onnxruntime.quantization.matmul_nbits_quantizer"
    if name in sys.modules:
        return sys.modules[name]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import onnxruntime.quantization.matmul_nbits_quantizer as nbits

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return nbits


# -- graph preparation and census -----------------------------------------------------------

def _prepared(src: Path) -> tuple[onnx.ModelProto, list[str], dict[str, int]]:
    """The graph in the MatMul form the quantizers read, and its LM head.  The weights stay in their external
    data file (absolute locations, :func:`edgegen.converters.writer.load_lazily`): ONNX Runtime's quantizer reads
    each MatMul's weight from there as it quantizes it, so no float copy of the whole model is held; only the
    weights the rewrites below transpose (a Gemm's, a Transpose's input) are read in."""
    from edgegen.converters.writer import load_lazily, read_array

    model = load_lazily(src)
    rewrites = {n.input[1] for n in model.graph.node if n.op_type == "Gemm" and len(n.input) > 1} | {
        n.input[0] for n in model.graph.node if n.op_type == "Transpose"}
    for tensor in model.graph.initializer:
        if tensor.name in rewrites and tensor.data_location == onnx_external():
            from onnx import numpy_helper

            tensor.CopyFrom(numpy_helper.from_array(read_array(tensor), tensor.name))
    rewritten = {"gemm_to_matmul": gemm_to_matmul(model), "transpose_folded": _fold_weight_transposes(model)}
    return model, _lm_head(model), rewritten


def _fold_weight_transposes(model: onnx.ModelProto) -> int:
    """MatMul(x, Transpose(W)) with a constant 2-D W read only by that Transpose -> MatMul(x, W^T)."""
    from onnx import helper, numpy_helper

    inits, uses = initializers(model), consumers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    folded: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        t = producers.get(node.input[1])
        if t is None or t.op_type != "Transpose" or t.output[0] in folded:
            continue
        w = inits.get(t.input[0])
        perm = next((list(helper.get_attribute_value(a)) for a in t.attribute if a.name == "perm"), [1, 0])
        if (w is None or not is_float(w) or len(w.dims) != 2 or perm != [1, 0] or uses.get(w.name, 0) != 1
                or any(n.op_type != "MatMul" for n in model.graph.node if t.output[0] in n.input)
                or t.output[0] in {o.name for o in model.graph.output}):
            continue
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), t.output[0]))
        folded.add(t.output[0])
    if folded:
        keep = [n for n in model.graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
        model.graph.ClearField("node")
        model.graph.node.extend(keep)
    return len(folded)


def _lm_head(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Gemm nodes producing ``logits`` (through reshapes, casts, a bias Add)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consts = set(initializers(model)) | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    heads, seen, todo = [], set(), ["logits"]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            heads.append(node.name)
        elif node.op_type in _PASS_THROUGH:
            data = [i for i in node.input if i and i not in consts]
            if node.op_type != "Add" or len(data) == 1:  # an Add only as a constant bias
                todo.append(data[0] if node.op_type == "Add" else node.input[0])
    return heads


def weight_matmuls(src: Path, scheme: str) -> tuple[list[str], list[str]]:
    """(the LM head's nodes, the other weight MatMul/Gemm nodes in graph order) of a decoder graph, named as
    ``quantize_decoder(..., scheme, exclude=...)`` takes them (int8/int4 read the graph in the quantizers' form)."""
    import onnx

    model = onnx.load_model(str(src), load_external_data=False) if scheme == "fp16" else _prepared(Path(src))[0]
    head, weights = _lm_head(model), _weight_matmuls(model)
    return head, [n.name for n in model.graph.node if n.name in weights and n.name not in head]


def _check_exclude(model: onnx.ModelProto, exclude: list[str], src: Path) -> None:
    weights = _weight_matmuls(model)
    unknown = [name for name in exclude if name not in weights]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
        raise InvalidArgumentError(f"exclude names {len(unknown)} node(s) that are not weight MatMuls of "
                                   f"{src.name}: {shown}"
                                   "; name MatMul/Gemm nodes with a constant weight (edgegen.converters.lm.quantize.weight_matmuls lists "
                                   "them)")


def _weight_matmuls(model: onnx.ModelProto) -> set[str]:
    """Names of MatMul/Gemm nodes whose weight (input 1) is a float initializer."""
    inits = initializers(model)
    return {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
            and n.input[1] in inits and is_float(inits[n.input[1]])}


def _census(model: onnx.ModelProto, scheme: str) -> tuple[int, list[str]]:
    """(how many weight MatMuls were quantized, names of weight MatMul/Gemm nodes left in float32)."""
    from onnx import TensorProto

    ops = [n.op_type for n in model.graph.node]
    if scheme in ("int4", "int8"):
        quantized = ops.count("MatMulNBits")
    else:
        inits = initializers(model)
        quantized = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
                        and n.input[1] in inits and inits[n.input[1]].data_type == TensorProto.FLOAT16)
    inits = initializers(model)
    kept = sorted(n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
                  and n.input[1] in inits and inits[n.input[1]].data_type == TensorProto.FLOAT)
    return quantized, kept


def onnx_external() -> int:
    from onnx import TensorProto

    return TensorProto.EXTERNAL


def _save(model: onnx.ModelProto, dst: Path) -> list[str]:
    """Save at dst; initializers over EXTERNAL_WEIGHTS_BYTES in total go to one ``<dst>.data``, tensor by tensor
    (quantized ones from memory, float ones the quantizers left copied from the source graph's data file):
    the model is never sized or serialized with its weights inside."""
    from edgegen.converters.writer import save_external

    dst.with_name(f"{dst.name}.data").unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_external(model, dst, threshold=EXTERNAL_WEIGHTS_BYTES)
