"""Write the corpus of malformed artifacts next to this file: one directory per defect.

Run from the repository root after changing a case (the output is committed)::

    python tests/malformed/make_corpus.py

Every case starts from the same *valid* tiny causal-lm artifact (:func:`write_base`: a
one-node decoder graph in the style of ``tests_support.tiny_graph`` plus an 8-word
tokenizer, written with the real :class:`ArtifactWriter`) and breaks exactly one thing,
so the error a case gets is caused by its defect alone.  Where a defect would be
caught by the checksum before the thing it is about (a corrupt or unknown-op graph, a broken
tokenizer.json), the recorded sha256 is fixed up so that the defect itself is reached.

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


def _fix_asset_checksum(root: Path, name: str = "tokenizer") -> None:
    data = _manifest(root)
    ref = data["assets"][name]
    ref["sha256"] = hashlib.sha256((root / ref["file"]).read_bytes()).hexdigest()
    _save_manifest(root, data)


def _decoder(data: dict) -> dict:
    return data["graphs"]["decoder"]


def _raw(edit: Callable[[str], str]) -> Callable[[Path], None]:
    """A case that edits the manifest's text (what json.dumps cannot write: NaN, repeated keys...)."""
    def apply(root: Path) -> None:
        path = root / "edgegen.json"
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return apply


def _value(value: str) -> Callable[[str], str]:
    """Put ``value`` (JSON text) first in the manifest, under the key "x" (refused before keys are checked)."""
    return lambda text: text.replace("{", '{"x": ' + value + ", ", 1)


def _tokenizer(edit: Callable[[dict], None] | None = None, text: str | None = None) -> Callable[[Path], None]:
    """A case that rewrites tokenizer.json (and fixes its sha256, so the defect itself is reached)."""
    def apply(root: Path) -> None:
        path = root / "tokenizer.json"
        if text is None:
            data = json.loads(path.read_text(encoding="utf-8"))
            edit(data)
            path.write_text(json.dumps(data), encoding="utf-8")
        else:
            path.write_text(text, encoding="utf-8")
        _fix_asset_checksum(root)
    return apply


def _catastrophic_regex(tok: dict) -> None:
    # (a+)+$ backtracks exponentially on a long run of "a" not at the end: Oniguruma gives up, tokenizers panics
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}


def _one_more_word(tok: dict) -> None:
    tok["model"]["vocab"]["dog"] = len(VOCAB)   # id 8: the decoder's logits have 8 entries (ids 0..7)


def _rename_tokenizer(name: str) -> Callable[[dict], None]:
    return lambda d: d["assets"]["tokenizer"].update(file=name)


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
    "family-unknown": _edit(lambda d: d.update(family="hologram")),
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
    # Values that parse as JSON but no manifest holds (round two of hostile artifacts).
    "manifest-nan": _raw(_value("NaN")),
    "manifest-number-overflow": _raw(_value("1e999")),
    "manifest-long-integer": _raw(_value("9" * 5000)),
    "manifest-deep-nesting": _raw(_value("[" * 5000 + "]" * 5000)),
    "manifest-repeated-key": _raw(lambda text: text.replace('"family": "causal-lm",',
                                                            '"family": "causal-lm", "family": "gan",', 1)),
    "path-nul": _edit(_rename_tokenizer("tok\u0000enizer.json")),
    "path-too-long": _edit(_rename_tokenizer("t" * 5000 + ".json")),
    "path-backslash": _edit(_rename_tokenizer("sub\\tokenizer.json")),
    "sampler-eos-beyond-vocab": _edit(lambda d: d["sampler"].update(eos_token_ids=[len(VOCAB)])),
    "sampler-pad-beyond-vocab": _edit(lambda d: d["sampler"].update(pad_token_id=99)),
    "sampler-bos-negative": _edit(lambda d: d["sampler"].update(bos_token_id=-1)),
    "sampler-context-zero": _edit(lambda d: d["sampler"].update(context_length=0)),
    "sampler-context-absurd": _edit(lambda d: d["sampler"].update(context_length=10**12)),
    "defaults-out-of-range": _edit(lambda d: d["defaults"].update(max_new_tokens=0)),
    "tokenizer-empty-object": _tokenizer(text="{}"),
    "tokenizer-regex-panics": _tokenizer(_catastrophic_regex),
    "tokenizer-larger-than-logits": _tokenizer(_one_more_word),
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
