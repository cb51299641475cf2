"""Every family's ``sampler`` and ``defaults`` sections: out-of-range values are ManifestErrors at load, each
naming its key and the fix, raised before any session opens; and for any JSON value the parsers raise
ManifestError and nothing else (hypothesis)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import edgegen
from edgegen.cli import cli
from edgegen.errors import ManifestError
from edgegen.runtimes.diffusion.sampler import DiffusionDefaults, DiffusionSampler
from edgegen.runtimes.flow.flow import FlowDefaults, FlowSampler
from edgegen.runtimes.image.gan import GANDefaults, GANSampler
from edgegen.runtimes.image.vae import VAEDefaults, VAESampler, VQVAESampler
from edgegen.runtimes.lm.sampler import CausalLMSampler
from edgegen.runtimes.rnn.rnn_lm import RNNLMSampler
from tests_support import json_parent, json_paths
from edgegen.runtimes.text.loop import load_defaults
from edgegen.strict import from_json
from tests_support import tiny_graph

DDPM = {"scheduler_config": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                             "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"},
        "sample_shape": [1, 8, 8], "image_shape": [1, 8, 8], "value_range": [-1.0, 1.0], "conditioning": "class",
        "num_classes": 10, "null_label": 10}
FLOW = {"data_shape": [1, 8, 8], "latent_shape": [4, 4, 4], "image_shape": [1, 8, 8], "num_bins": 17,
        "data_range": [0.05, 0.95], "logit": True}


def _strict(cls: type) -> Callable[[Any], Any]:
    return lambda section: from_json(cls, section, where="edgegen.json.sampler", error=ManifestError,
                                     fix="re-convert the model")


#: family -> (a valid sampler section, its parser: what from_artifact runs on it before any session opens)
SECTIONS: dict[str, tuple[dict, Callable[[Any], Any]]] = {
    "causal-lm": ({"context_length": 16, "eos_token_ids": [0], "pad_token_id": 0}, CausalLMSampler.from_manifest),
    "rnn-lm": ({"state_shapes": [[2, 8], [2, 8]], "eos_token_ids": [0]}, RNNLMSampler.from_manifest),
    "diffusion": (DDPM, lambda s: DiffusionDefaults.from_manifest({"steps": 20}, DiffusionSampler.from_manifest(s))),
    "gan": ({"latent_dim": 32, "image_shape": [1, 8, 8], "num_classes": 10}, _strict(GANSampler)),
    "vae": ({"latent_shape": [8], "image_shape": [1, 8, 8], "value_range": [0.0, 1.0]}, _strict(VAESampler)),
    "vq-vae": ({"codebook_size": 64, "code_dim": 16, "grid": [4, 4], "image_shape": [1, 8, 8]},
               _strict(VQVAESampler)),
    "flow": (FLOW, FlowSampler.from_manifest),
}
DEFAULTS: dict[str, Callable[[Any], Any]] = {
    "causal-lm": load_defaults,
    "diffusion": lambda d: DiffusionDefaults.from_manifest(d, DiffusionSampler.from_manifest(DDPM)),
    "gan": lambda d: from_json(GANDefaults, d, where="edgegen.json.defaults", error=ManifestError),
    "vae": lambda d: from_json(VAEDefaults, d, where="edgegen.json.defaults", error=ManifestError),
    "flow": FlowDefaults.from_manifest,
}


@pytest.mark.parametrize("family", SECTIONS)
def test_the_valid_sections_parse(family):
    section, parse = SECTIONS[family]
    parse(copy.deepcopy(section))


# -- out of range: each names edgegen.json.sampler.<key> and the fix ---------------------------------------

HUGE = [1, 100_000, 100_000]


@pytest.mark.parametrize("family, change, words", [
    ("causal-lm", {"context_length": 0}, "sampler.context_length: must be an integer from 2"),
    ("causal-lm", {"context_length": 10**12}, "sampler.context_length: must be an integer from 2 to 16,777,216"),
    ("causal-lm", {"eos_token_ids": [0, -1]}, "sampler.eos_token_ids: must be an integer from 0"),
    ("causal-lm", {"pad_token_id": 2**40}, "sampler.pad_token_id: must be an integer from 0 to 16,777,215"),
    ("rnn-lm", {"state_shapes": [[100_000, 100_000]]}, "sampler.state_shapes[0]: [100000, 100000] has an axis"),
    ("rnn-lm", {"state_shapes": []}, "sampler.state_shapes: must list 1 to 256 shapes"),
    ("rnn-lm", {"state_shapes": [[2, 0]]}, "sampler.state_shapes[0]: must be a non-empty list of positive"),
    ("rnn-lm", {"bos_token_id": -5}, "sampler.bos_token_id: must be an integer from 0"),
    ("diffusion", {"sample_shape": HUGE}, "sampler.sample_shape: [C, H, W] [1, 100000, 100000] has an axis over"),
    ("diffusion", {"image_shape": [3, 64]}, "sampler.image_shape: [C, H, W] must have 3 axes"),
    ("diffusion", {"sample_shape": [0, 8, 8]}, "sampler.sample_shape: [C, H, W] must be a non-empty list"),
    ("diffusion", {"value_range": [1.0, -1.0]}, "sampler.value_range: must be [low, high] with low < high"),
    ("diffusion", {"value_range": [1.0, 2.0, 3.0]}, "sampler.value_range: expected a list of 2 items, got 3"),
    ("diffusion", {"num_classes": 10**12}, "sampler.num_classes: must be an integer from 1 to 16,777,216"),
    ("diffusion", {"null_label": 5000}, "sampler.null_label: must be an integer from 0 to 10"),
    ("diffusion", {"conditioning": "text"}, "sampler.text: a text-conditioned model needs a 'text' section"),
    ("diffusion", {"conditioning": "text", "text": {"max_length": 10**9, "pad_token_id": -1}},
     "sampler.text.max_length: must be an integer from 1 to 65,536"),
    ("diffusion", {"vae": {"scaling_factor": 0.0}}, "sampler.vae: scaling_factor must be a non-zero number"),
    ("diffusion", {"scheduler_config": {**DDPM["scheduler_config"], "num_train_timesteps": 10**12}},
     "sampler.scheduler_config.num_train_timesteps: must be an integer from 1 to 1,048,576"),
    ("diffusion", {"scheduler_config": {**DDPM["scheduler_config"], "num_train_timesteps": 10}},
     "defaults.steps: must be an integer from 1 to 10, got 20 (the model's num_train_timesteps)"),
    ("diffusion", {"scheduler_config": {**DDPM["scheduler_config"], "beta_end": 7.0}},
     "sampler.scheduler_config: beta_start and beta_end must lie in (0, 1)"),
    ("gan", {"latent_dim": 10**9}, "sampler.latent_dim: must be an integer from 1 to 65,536"),
    ("gan", {"num_classes": 0}, "sampler.num_classes: must be an integer from 1"),
    ("gan", {"image_shape": HUGE}, "image_shape [1, 100000, 100000] has an axis over 65,536"),
    ("gan", {"noise": {"generator": [{"name": "noise.0", "shape": ["batch", 100_000, 100_000],
                                      "distribution": "normal"}]}}, "noise.generator 'noise.0': shape"),
    ("vae", {"latent_shape": [100_000, 100_000]}, "sampler.latent_shape: [100000, 100000] has an axis"),
    ("vae", {"value_range": [0.0, 0.0]}, "value_range must be [low, high] with low < high"),
    ("vq-vae", {"codebook_size": 10**12}, "sampler.codebook_size: must be an integer from 1 to 16,777,216"),
    ("vq-vae", {"grid": [100_000, 100_000]}, "sampler.grid: [100000, 100000] has an axis over 65,536"),
    ("vq-vae", {"grid": [4]}, "sampler.grid: must have 2 axes"),
    ("flow", {"data_shape": HUGE, "image_shape": HUGE, "latent_shape": HUGE},
     "sampler.data_shape: [1, 100000, 100000] has an axis"),
])
def test_out_of_range_values_name_the_key_and_the_fix(family, change, words):
    section, parse = SECTIONS[family]
    with pytest.raises(ManifestError) as info:
        parse({**copy.deepcopy(section), **change})
    message = str(info.value)
    assert words in message and message.endswith("re-convert the model") and "\n" not in message, message


@pytest.mark.parametrize("family, defaults, words", [
    ("causal-lm", {"max_new_tokens": 0}, "edgegen.json.defaults: max_new_tokens must be a positive integer"),
    ("causal-lm", {"temperature": -1.0}, "edgegen.json.defaults: temperature"),
    ("diffusion", {"steps": 0}, "edgegen.json.defaults.steps: must be an integer from 1 to 1,000"),
    ("diffusion", {"scheduler": "warp"}, "edgegen.json.defaults.scheduler: 'warp' is not one of ddpm"),
    ("diffusion", {"guidance": -2.0}, "edgegen.json.defaults.guidance: must be a number >= 0"),
    ("flow", {"temperature": 0.0}, "temperature must be a number > 0"),
])
def test_out_of_range_defaults(family, defaults, words):
    with pytest.raises(ManifestError, match="re-convert the model") as info:
        DEFAULTS[family](defaults)
    assert words in str(info.value), str(info.value)


# -- at load, before any session opens --------------------------------------------------------------------

def write_artifact(dest: Path, family: str, roles: tuple[str, ...], sampler: dict, defaults: dict | None = None,
                   tokenizer: str | None = None) -> Path:
    from edgegen.converters.writer import ArtifactWriter
    from edgegen.manifest import Source

    with ArtifactWriter(dest) as writer:
        for role in roles:
            writer.add_graph(role, tiny_graph(), precision="fp32")
        if tokenizer is not None:
            writer.add_asset("tokenizer", "tokenizer.json", tokenizer)
        writer.write(writer.manifest(family=family, source=Source(model_class="tests.Tiny", converter="tests"),
                                     sampler=sampler, defaults=defaults or {}))
        return writer.commit()


ROLES = {"diffusion": ("denoiser",), "gan": ("generator",), "vae": ("encoder", "decoder"),
         "vq-vae": ("encoder", "quantize", "decode_codes", "decoder"), "flow": ("flow_inverse",)}
SESSIONS = {"diffusion": "edgegen.runtimes.diffusion.diffusion.open_sessions",
            "gan": "edgegen.runtimes.image.gan.open_sessions", "vae": "edgegen.runtimes.image.vae.open_sessions",
            "vq-vae": "edgegen.runtimes.image.vae.open_sessions", "flow": "edgegen.runtimes.flow.flow.open_sessions"}
ABSURD = {"diffusion": {"sample_shape": HUGE}, "gan": {"latent_dim": 10**9}, "vae": {"latent_shape": HUGE[1:]},
          "vq-vae": {"grid": HUGE[1:]}, "flow": {"data_shape": HUGE, "latent_shape": HUGE, "image_shape": HUGE}}


@pytest.mark.parametrize("family", ROLES)
def test_load_refuses_absurd_sizes_before_any_session_opens(family, tmp_path, monkeypatch):
    def no_sessions(*args, **kwargs):
        raise AssertionError("a session was opened before the sampler section was checked")

    monkeypatch.setattr(SESSIONS[family], no_sessions)
    root = write_artifact(tmp_path / family, family, ROLES[family], {**SECTIONS[family][0], **ABSURD[family]})
    with pytest.raises(ManifestError, match="re-convert the model"):
        edgegen.load(root, provider="cpu")
    result = CliRunner().invoke(cli, ["sample", str(root), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ") and "edgegen.json.sampler." in result.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("family, change, words", [
    ("gan", {"latent_dim": 5}, "sampler.latent_dim is 5, but the graph declares its input z as ['batch', 4]"),
    ("vae", {"latent_shape": [5]}, "sampler.latent_shape is [5], but the decoder graph declares its input latent"),
])
def test_sizes_that_disagree_with_the_declared_graph_inputs(family, change, words, tmp_path):
    """tiny_graph's input is x [batch, 4]: renamed so the family's graph declares z / latent of [batch, 4]."""
    root = write_artifact(tmp_path / family, family, ROLES[family], {**SECTIONS[family][0], **change})
    data = json.loads((root / "edgegen.json").read_text())
    role, name = ("generator", "z") if family == "gan" else ("decoder", "latent")
    data["graphs"][role]["inputs"][0]["name"] = name
    (root / "edgegen.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as info:
        edgegen.load(root, provider="cpu")
    assert words in str(info.value), str(info.value)


# -- any JSON value: ManifestError or a parsed section, nothing else ---------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from([0, -1, 2**31, 2**63, 10**12, 10**39])
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=12)


def mutate(data: st.DataObject, section: dict) -> dict:
    """The section with one value anywhere in it replaced by arbitrary JSON (or one key added or dropped)."""
    doc = copy.deepcopy(section)
    path = data.draw(st.sampled_from(json_paths(doc)))
    node = json_parent(doc, path)
    action = data.draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "drop" and isinstance(node, dict):
        del node[path[-1]]
    elif action == "add" and isinstance(node, dict):
        node[data.draw(st.text(max_size=6))] = data.draw(json_values)
    else:
        node[path[-1]] = data.draw(json_values)
    return doc


@pytest.mark.parametrize("family", SECTIONS)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_fuzz_sampler_sections_give_only_manifest_errors(family, data):
    section, parse = SECTIONS[family]
    value = data.draw(json_values) if data.draw(st.booleans()) else mutate(data, section)
    try:
        parse(value)
    except ManifestError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("family", DEFAULTS)
@settings(max_examples=50, deadline=None)
@given(value=json_values | st.dictionaries(st.sampled_from(["steps", "scheduler", "guidance", "temperature",
                                                             "max_new_tokens", "top_k", "truncation"]),
                                           json_values, max_size=3))
def test_fuzz_defaults_sections_give_only_manifest_errors(family, value):
    try:
        DEFAULTS[family](value)
    except ManifestError as exc:
        assert "\n" not in str(exc)
