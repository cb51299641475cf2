"""The artifact contract: round trip and every rejection, each naming the key at fault."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.errors import ArtifactError, ManifestError, UnsupportedFormatError
from tests_support import json_parent, json_paths
from edgegen.manifest import (MANIFEST_NAME, FileRef, GraphSpec, Manifest, Source, TensorSpec,
                              manifest_to_json, parse_manifest, read_manifest, write_manifest)

SHA = "a" * 64


def make_manifest() -> Manifest:
    decoder = GraphSpec(
        file="decoder.onnx", sha256=SHA, precision="int8-dynamic",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("past_key_values.0.key", "float32", ("batch", 4, "past", 16))),
        outputs=(TensorSpec("logits", "float32", ("batch", "sequence", 50257)),),
        external_data=(FileRef("decoder.onnx.data", "b" * 64),))
    return Manifest(family="causal-lm", graphs={"decoder": decoder},
                    source=Source(model_class="GPT2LMHeadModel", converter="edgegen 0.1.0", opset=17,
                                  libraries={"torch": "2.13.0"}),
                    sampler={"eos_token_id": 50256, "context_length": 1024},
                    defaults={"temperature": 0.8, "stop": ["\n\n"]},
                    assets={"tokenizer": FileRef("tokenizer.json", "c" * 64)},
                    validation={"max_abs_logits_error": 1.5e-5, "greedy_match": True})


def good_json() -> dict:
    return json.loads(json.dumps(manifest_to_json(make_manifest())))


def test_round_trip_through_disk(tmp_path):
    manifest = make_manifest()
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    # And the file is plain JSON with the documented top-level keys.
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["format"] == "edgegen/1"
    assert data["graphs"]["decoder"]["inputs"][0] == {"name": "input_ids", "dtype": "int64",
                                                      "shape": ["batch", "sequence"]}


def test_files_lists_graphs_weights_and_assets():
    assert [r.file for r in make_manifest().files()] == ["decoder.onnx", "decoder.onnx.data", "tokenizer.json"]


@pytest.mark.parametrize("path, key", [
    ((), "surprise"),
    (("graphs", "decoder"), "weights"),
    (("graphs", "decoder", "inputs", 0), "layout"),
    (("source",), "git"),
])
def test_unknown_key_is_named(path, key):
    data = good_json()
    node = data
    for part in path:
        node = node[part]
    node[key] = 1
    with pytest.raises(ManifestError, match=f"unknown key '{key}'"):
        parse_manifest(data)


@pytest.mark.parametrize("path, value, where", [
    (("family",), 3, "edgegen.json.family: expected a string"),
    (("graphs", "decoder", "inputs", 1, "shape"), "batch", "inputs[1].shape: expected a list"),
    (("graphs", "decoder", "inputs", 1, "shape", 1), 4.5, "inputs[1].shape[1]: expected an integer or a string"),
    (("source", "opset"), True, "source.opset: expected an integer or null"),
    (("graphs", "decoder", "outputs"), {}, "outputs: expected a list"),
    (("graphs",), [], "graphs: expected an object"),
])
def test_wrong_type_is_named(path, value, where):
    data = good_json()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ManifestError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_manifest(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(family="transformer"), "family 'transformer' is not one of"),
    (lambda d: d["graphs"]["decoder"].update(precision="int3"), "precision 'int3'"),
    (lambda d: d["graphs"]["decoder"]["inputs"][0].update(dtype="float"), "dtype 'float'"),
    (lambda d: d["graphs"]["decoder"].update(sha256="XYZ"), "64 lowercase hex"),
    (lambda d: d["graphs"]["decoder"].update(file="../evil.onnx"), "must not contain '..'"),
    (lambda d: d["graphs"]["decoder"].update(file="/etc/passwd"), "relative to the artifact"),
    (lambda d: d["assets"]["tokenizer"].update(file="C:/x.json"), "relative to the artifact"),
    (lambda d: d["assets"]["tokenizer"].update(file="C:x.json"), "relative to the artifact"),
    (lambda d: d["assets"]["tokenizer"].update(file="sub\\x.json"), "or backslashes"),
    (lambda d: d["assets"]["tokenizer"].update(file="tok\x00.json"), "holds a control character"),
    (lambda d: d["assets"]["tokenizer"].update(file="tok\n.json"), "holds a control character"),
    (lambda d: d["assets"]["tokenizer"].update(file="tok\ud800.json"), "is not valid Unicode"),
    (lambda d: d["assets"]["tokenizer"].update(file="t" * 5000), "is too long .5,000 characters"),
    (lambda d: d["assets"]["tokenizer"].update(file="t" * 256), "at most 255 bytes per name"),
    (lambda d: d["assets"]["tokenizer"].update(file="é" * 128), "at most 255 bytes per name"),    # 256 bytes
    (lambda d: d["assets"]["tokenizer"].update(file="/".join(["d" * 200] * 6)), "1,024 characters in all"),
    (lambda d: d["graphs"]["decoder"]["outputs"].append(d["graphs"]["decoder"]["outputs"][0]), "output names repeat"),
    (lambda d: d.update(graphs={}), "at least one graph"),
    (lambda d: d["graphs"]["decoder"].pop("sha256"), "missing required key 'sha256'"),
])
def test_bad_values_are_refused(mutate, message):
    data = good_json()
    mutate(data)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        parse_manifest(data)


def test_every_problem_is_reported_at_once():
    data = good_json()
    data["family"] = 1
    data["source"]["extra"] = 2
    data["graphs"]["decoder"]["inputs"][0]["dtype"] = 5
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    text = str(info.value)
    assert "family" in text and "'extra'" in text and "inputs[0].dtype" in text


@pytest.mark.parametrize("fmt, error, fix", [
    ("edgegen/2", UnsupportedFormatError, "pip install -U edgegen"),
    ("edgegen/0", UnsupportedFormatError, "re-convert"),
    ("onnx/1", ManifestError, "not an edgegen format"),
    (1, ManifestError, "not an edgegen format"),
])
def test_format_versions(fmt, error, fix):
    data = good_json()
    data["format"] = fmt
    with pytest.raises(error, match=fix):
        parse_manifest(data)


def test_no_format_key():
    data = good_json()
    del data["format"]
    with pytest.raises(ManifestError, match="no 'format' key"):
        parse_manifest(data)


def test_read_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no edgegen.json"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="not a directory"):
        read_manifest(tmp_path / "nope")
    (tmp_path / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(ManifestError, match="not valid JSON .line 1"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        read_manifest(tmp_path)


def test_writer_refuses_to_write_what_reader_refuses(tmp_path):
    bad = copy.copy(make_manifest())
    object.__setattr__(bad, "sampler", {"x": object()})  # not JSON at all
    with pytest.raises(TypeError):
        write_manifest(tmp_path, bad)
    assert not (tmp_path / MANIFEST_NAME).exists()  # nothing half-written


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json_gives_only_manifest_errors(data):
    try:
        parse_manifest(data)
    except ManifestError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_manifest_gives_only_manifest_errors(data):
    """Replace one value anywhere in a valid manifest by arbitrary JSON: parse or ManifestError."""
    doc = good_json()
    path = data.draw(st.sampled_from(json_paths(doc)))
    node = json_parent(doc, path)
    node[path[-1]] = data.draw(json_values)
    try:
        parse_manifest(doc)
    except ManifestError:
        pass
