"""Sizes and integer limits of the sampling families, through the library: memory estimates that refuse a
request before anything is drawn (and name how many would fit), labels a model does not take, and the
runtime limits the CLI's ranges mirror."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import edgegen
import image_support
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes import limits, memory
from edgegen.runtimes.latents import check_frames
from edgegen.runtimes.session import SessionConfig

dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
vae_artifact, vqvae_artifact = image_support.vae_artifact, image_support.vqvae_artifact
HUGE = 10**15


@pytest.fixture(scope="module")
def flow_artifact(tmp_path_factory):
    pytest.importorskip("torch")
    import flow_models as fm
    from edgegen.converters.flow.convert import convert_flow

    return convert_flow(fm.realnvp_spec(fm.make_realnvp()), tmp_path_factory.mktemp("flow") / "nvp",
                        report=lambda _l: None)


@pytest.fixture
def models(dcgan_artifact, vae_artifact, vqvae_artifact, flow_artifact, tiny_ddpm):
    paths = {"gan": dcgan_artifact, "vae": vae_artifact, "vq-vae": vqvae_artifact, "flow": flow_artifact,
             "diffusion": tiny_ddpm[1]}
    return {family: edgegen.load(path, provider="cpu") for family, path in paths.items()}


FAMILIES = ["gan", "vae", "vq-vae", "flow", "diffusion"]
OPTIONS = {"diffusion": {"steps": 2}}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_count_no_machine_holds_is_refused_before_anything_is_drawn(models, family):
    model = models[family]   # drawing first would fail inside numpy (no array that large), or run for minutes
    with pytest.raises(InvalidArgumentError, match=r"^sampling about 10\^15 images needs about .* of memory is "
                                                   r"available; ask for at most \d+ images at a time"):
        model.sample(HUGE, seed=0, **OPTIONS.get(family, {}))
    if family == "vq-vae":
        return   # no interpolation: its codes are discrete
    with pytest.raises(InvalidArgumentError, match=r"^interpolating about 10\^20 frames needs about"):
        model.interpolate(0, 1, frames=10**20, **OPTIONS.get(family, {}))
    if family == "vae":
        image = model.sample(1, seed=0)[0]
        with pytest.raises(InvalidArgumentError, match=r"^interpolating about 10\^20 frames"):
            model.interpolate_images(image, image, frames=10**20)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_count_the_message_names_fits_and_one_more_does_not(models, family, monkeypatch):
    """With 2 MiB available, the estimate's "at most K" is exact: K images sample, K + 1 are refused."""
    model = models[family]
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 2**20)
    with pytest.raises(InvalidArgumentError, match=r"at most (\d+) images") as info:
        model.sample(10**6, seed=0, **OPTIONS.get(family, {}))
    most = int(re.search(r"at most (\d+) images", str(info.value)).group(1))
    assert 1 <= most < 10**6
    with pytest.raises(InvalidArgumentError, match=f"at most {most} images"):
        model.sample(most + 1, seed=0, **OPTIONS.get(family, {}))
    if most <= 400:   # a request that fits runs (kept small: the tiny models take a few ms per image)
        assert len(model.sample(most, seed=0, **OPTIONS.get(family, {}))) == most


def test_where_the_platform_does_not_say_only_the_impossible_is_refused(models, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    with pytest.raises(InvalidArgumentError, match="more than any machine can address; ask for fewer images"):
        models["gan"].sample(10**20)
    assert len(models["gan"].sample(2, seed=0)) == 2


def test_labels_a_model_does_not_take_or_does_not_have(models, tiny_sd, conditional_artifact):
    ddpm = models["diffusion"]
    with pytest.raises(InvalidArgumentError, match=r"it takes nothing \(it is unconditional\), not a label"):
        ddpm.sample(1, label=3, steps=2)
    sd = edgegen.load(tiny_sd[1], provider="cpu")
    with pytest.raises(InvalidArgumentError, match=r"it takes a text prompt \(--prompt\), not a label"):
        sd.sample(1, label=3, prompt="a cat", steps=2)
    # a class-conditional sampler over the same graphs: its labels are checked before anything runs
    ddpm.sampler = dataclasses.replace(ddpm.sampler, conditioning="class", num_classes=3)
    for label, message in [(10**30, "label 1000000000000000000000000000000 is out of range: this model has "
                                    "classes 0..2"), (-1, "label -1 is out of range"), (True, "label True is out"),
                           (1.0, "label 1.0 is out"), ([0, 1], "2 labels for 1 images; give one label or 1"),
                           (np.array([[1]]), "1 labels for 1 images")]:
        with pytest.raises(InvalidArgumentError, match=re.escape(message)):
            ddpm.generate(1, label=label, steps=2)
    gan = edgegen.load(conditional_artifact, provider="cpu")
    with pytest.raises(InvalidArgumentError, match="label must be a class index in 0..4, got 10000"):
        gan.sample(1, label=10**30)


def test_prompts_utf8_cannot_encode_are_refused(tiny_sd):
    sd = edgegen.load(tiny_sd[1], provider="cpu")
    with pytest.raises(InvalidArgumentError, match=r"^the prompt is not valid UTF-8 \(character 3 is the byte 0xff\)"):
        sd.sample(1, prompt="cat\udcff", steps=2)
    with pytest.raises(InvalidArgumentError, match=r"^the negative prompt is not valid UTF-8 .*U\+D800"):
        sd.sample(1, prompt="cat", negative_prompt="\ud800", guidance=2.0, steps=2)
    with pytest.raises(InvalidArgumentError, match="the prompt must be a string, got int"):
        sd.sample(1, prompt=5, steps=2)


@pytest.mark.parametrize("frames", [1, 0, True, 2.0, "8"])
def test_frames_are_integers_of_at_least_two(frames):
    with pytest.raises(InvalidArgumentError, match="frames must be an integer >= 2"):
        check_frames(frames)


@pytest.mark.parametrize("field, ok, bad", [("threads", limits.MAX_THREADS, limits.MAX_THREADS + 1),
                                            ("device_id", limits.MAX_DEVICE_ID, limits.MAX_DEVICE_ID + 1)])
def test_session_config_takes_what_the_cli_takes(field, ok, bad):
    assert getattr(SessionConfig(**{field: ok}), field) == ok
    for value in (bad, 10**20, True):
        with pytest.raises(InvalidArgumentError, match=f"{field} must be"):
            SessionConfig(**{field: value})
    biggest = limits.MAX_FREE_DIMENSION
    assert SessionConfig(free_dimensions={"batch": biggest}).free_dimensions["batch"] == biggest
    with pytest.raises(InvalidArgumentError, match=r"free_dimensions\['batch'\] must be a positive integer up to"):
        SessionConfig(free_dimensions={"batch": limits.MAX_FREE_DIMENSION + 1})


@pytest.mark.parametrize("runtime", [{"threads": 10**12}, {"device_id": 10**20},
                                     {"free_dimensions": {"batch": 10**20}}])
def test_load_refuses_what_onnx_runtime_cannot_take(tiny_artifact, runtime):
    """These reached ONNX Runtime's bindings as a TypeError before."""
    with pytest.raises(InvalidArgumentError):
        edgegen.load(tiny_artifact, provider="cpu", **runtime)


def test_memory_messages_stay_short_for_any_count():
    for count in (10**400, 10**5000):
        with pytest.raises(InvalidArgumentError, match=r"^sampling about 10\^\d+ images needs about 10\^\d+ B") as info:
            memory.check_count_fits(count, 1000, "sampling", available=2**30)
        assert len(str(info.value)) < 250
    assert memory.count_text(10**12 - 1) == "999999999999" and memory.count_text(10**12) == "about 10^12"
    assert [memory._human(x) for x in (5, 2**40, 2**50)] == ["5.0 B", "1.0 TiB", "1.0 PiB"]
