"""Write the corpus of malformed artifacts next to this file: one directory per defect.

Run from the repository root after changing a case (the output is committed)::

    python tests/malformed/make_corpus.py

Every case starts from the same *valid* tiny causal-lm artifact (:func:`write_base`: a
one-node decoder graph in the style of ``tests_support.tiny_graph`` plus an 8-word
tokenizer, written with the real :class:`ArtifactWriter`) and breaks exactly one thing,
so the error a case gets is caused by its defect alone.  Where a defect would be
caught by the checksum before the thing it is about (a corrupt or unknown-op graph), the
recorded sha256 is fixed up so that the defect itself is reached.

``tests/runtimes/test_malformed_corpus.py`` holds what each case must raise; a
directory without an entry there fails a guard test.  The output is deterministic
(no timestamps, no library versions), so re-running leaves the corpus unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
VOCAB = ["<|endoftext|>", "hello", "world", "the", "cat", "sat", "on", "mat"]
#: The unregistered op of the unknown-op case, and the opset the base graph imports.
UNKNOWN_OP = "Frobnicate"
OPSET = 17


def tiny_decoder(op: str = "Gather") -> onnx.ModelProto:
    """logits[batch, sequence, V] = table[input_ids]: a valid cache-less decoder (V = len(VOCAB))."""
    n = len(VOCAB)
    table = helper.make_tensor("table", TensorProto.FLOAT, [n, n],
                               np.linspace(-1.0, 1.0, n * n, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node(op, ["table", "input_ids"], ["logits"])], "tiny_decoder",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", n])],
        initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def write_base(dest: Path) -> Path:
    """A complete, loadable causal-lm artifact (the unbroken twin of every case)."""
    from edgegen.converters.writer import ArtifactWriter
    from edgegen.manifest import Source

    with ArtifactWriter(dest, overwrite=dest.exists()) as writer:
        writer.add_graph("decoder", tiny_decoder(), precision="fp32")
        writer.add_asset("tokenizer", "tokenizer.json", tiny_tokenizer_json())
        writer.write(writer.manifest(
            family="causal-lm",
            source=Source(model_class="tests.malformed.TinyDecoder", converter="tests/malformed/make_corpus.py",
                          opset=OPSET),
            sampler={"context_length": 16, "eos_token_ids": [0], "cache": "none"},
            defaults={"max_new_tokens": 4, "temperature": 0.0}))
        return writer.commit()


# -- helpers for the cases ------------------------------------------------------------------

def _manifest(root: Path) -> dict:
    return json.loads((root / "edgegen.json").read_text(encoding="utf-8"))


def _save_manifest(root: Path, data: object) -> None:
    (root / "edgegen.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        data = _manifest(root)
        edit(data)
        _save_manifest(root, data)
    return apply


def _fix_checksum(root: Path, role: str = "decoder") -> None:
    data = _manifest(root)
    spec = data["graphs"][role]
    spec["sha256"] = hashlib.sha256((root / spec["file"]).read_bytes()).hexdigest()
    _save_manifest(root, data)


def _decoder(data: dict) -> dict:
    return data["graphs"]["decoder"]


# -- the cases: directory name -> what breaks it -----------------------------------------------

def manifest_not_json(root: Path) -> None:
    text = (root / "edgegen.json").read_text(encoding="utf-8")
    (root / "edgegen.json").write_text(text[: len(text) // 2], encoding="utf-8")  # cut mid-way


def manifest_not_utf8(root: Path) -> None:
    (root / "edgegen.json").write_bytes(b'{"format": "edgegen/1", "family": "caus\xe9al-lm"}\n')


def manifest_json_list(root: Path) -> None:
    _save_manifest(root, [_manifest(root)])


def graph_checksum_mismatch(root: Path) -> None:
    path = root / "decoder.onnx"
    data = bytearray(path.read_bytes())
    n = len(VOCAB)
    table = np.linspace(-1.0, 1.0, n * n, dtype=np.float32).tobytes()
    at = data.find(table) + len(table) // 2
    data[at] ^= 0x01  # one bit of one weight: still a parseable model, same size
    path.write_bytes(bytes(data))


def graph_truncated(root: Path) -> None:
    path = root / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:-60])
    _fix_checksum(root)


def graph_unknown_op(root: Path) -> None:
    onnx.save_model(tiny_decoder(op=UNKNOWN_OP), str(root / "decoder.onnx"))
    _fix_checksum(root)


def io_mismatch(data: dict) -> None:
    graph = _decoder(data)
    graph["inputs"][0]["dtype"] = "int32"                                                  # wrong dtype
    graph["inputs"].append({"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"]})  # extra
    graph["outputs"][0]["name"] = "scores"                                                 # renamed output


def symlink_outside(root: Path) -> None:
    # The test replaces tokenizer.json by a symlink to a copy of this sidecar outside the
    # directory at run time (git does not keep symlinks well on every platform).
    (root / "tokenizer.json").rename(root / "outside-tokenizer.json")


CASES: dict[str, Callable[[Path], None]] = {
    "manifest-not-json": manifest_not_json,
    "manifest-not-utf8": manifest_not_utf8,
    "manifest-json-list": manifest_json_list,
    "unknown-top-level-key": _edit(lambda d: d.update(colour="blue")),
    "wrong-field-type": _edit(lambda d: d["source"].update(opset="17")),
    "format-newer": _edit(lambda d: d.update(format="edgegen/99")),
    "format-other": _edit(lambda d: d.update(format="other/1")),
    "family-unknown": _edit(lambda d: d.update(family="music")),
    "precision-unknown": _edit(lambda d: _decoder(d).update(precision="fp8")),
    "graph-file-missing": lambda root: (root / "decoder.onnx").unlink(),
    "graph-checksum-mismatch": graph_checksum_mismatch,
    "graph-truncated": graph_truncated,
    "graph-unknown-op": graph_unknown_op,
    "io-mismatch": _edit(io_mismatch),
    "path-dotdot": _edit(lambda d: _decoder(d).update(file="../decoder.onnx")),
    "path-absolute": _edit(lambda d: _decoder(d).update(file="/tmp/decoder.onnx")),
    "symlink-outside": symlink_outside,
    "tokenizer-missing": lambda root: (root / "tokenizer.json").unlink(),
    # Family-level defects: the generic manifest is fine, the causal-lm runtime is not.
    "causal-lm-without-decoder": _edit(lambda d: d.update(graphs={"generator": _decoder(d)})),
    "causal-lm-without-tokenizer": _edit(lambda d: d.update(assets={"vocab": d["assets"]["tokenizer"]})),
    "sampler-wrong-type": _edit(lambda d: d["sampler"].update(context_length="16")),
}


def make_case(name: str, dest: Path, base: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    CASES[name](dest)
    return dest


def main(out: Path = HERE) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = write_base(Path(tmp) / "base")
        for name in CASES:
            make_case(name, out / name, base)
    # Case directories whose case is gone from CASES would linger untested: remove them.
    for stale in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in CASES and p.name != "__pycache__"):
        shutil.rmtree(stale)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    print(f"wrote {len(CASES)} cases to {out} ({total} bytes)")


if __name__ == "__main__":
    sys.exit(main())
