"""The gan runtime on tiny converted generators: seeds, labels, truncation, interpolation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgegen
import image_support
from edgegen.errors import GraphMismatchError, InvalidArgumentError, ManifestError
from edgegen.runtimes.latents import slerp
from edgegen.runtimes.images import to_uint8
from image_support import CLASSES, LATENT

# fixtures: the tiny models converted once for this module
dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
stylegan_artifact = image_support.stylegan_artifact


def load(path):
    return edgegen.load(path, provider="cpu", threads=1)


def test_same_seed_same_images_and_the_contract_shapes(dcgan_artifact) -> None:
    gan = load(dcgan_artifact)
    images = gan.sample(5, seed=3)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 3) and gan.provider == "cpu"
    assert np.array_equal(images, gan.sample(5, seed=3))
    assert not np.array_equal(images, gan.sample(5, seed=4))
    assert len({img.tobytes() for img in images}) == 5                  # a batch of different images
    z = gan.latents(5, np.random.default_rng(3))                        # the documented draw order: z first
    assert np.array_equal(images, to_uint8(gan.generate(z)))


def test_labels(conditional_artifact) -> None:
    gan = load(conditional_artifact)
    rng = np.random.default_rng(1)
    z = gan.latents(4, rng)
    fixed = gan.sample(4, seed=1, label=3)
    assert np.array_equal(fixed, to_uint8(gan.generate(z, np.full(4, 3))))
    drawn = rng.integers(0, CLASSES, size=4)                            # random labels come right after z
    assert np.array_equal(gan.sample(4, seed=1), to_uint8(gan.generate(z, drawn)))
    for bad in (CLASSES, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match=f"label must be a class index in 0..{CLASSES - 1}"):
            gan.sample(1, label=bad)
    with pytest.raises(InvalidArgumentError, match="this GAN is conditional: labels must be"):
        gan.generate(z)
    per_image = [0, 3, 1, 2]                                            # one label per image
    assert np.array_equal(gan.sample(4, seed=1, label=per_image), to_uint8(gan.generate(z, np.array(per_image))))
    for bad in ([0, 1], [0, 1, 2, CLASSES], [0.5, 1, 2, 3]):
        with pytest.raises(InvalidArgumentError, match="labels must be 4 class indices"):
            gan.sample(4, label=bad)


def test_a_label_for_an_unconditional_model_is_refused(dcgan_artifact) -> None:
    with pytest.raises(InvalidArgumentError, match="this GAN is unconditional .*drop --label 2"):
        load(dcgan_artifact).sample(1, label=2)


def test_truncation(stylegan_artifact) -> None:
    gan = load(stylegan_artifact)
    # the artifact's default truncation (0.7) applies when none is given
    assert np.array_equal(gan.sample(3, seed=0), gan.sample(3, seed=0, truncation=0.7))
    assert not np.array_equal(gan.sample(3, seed=0), gan.sample(3, seed=0, truncation=1.0))
    # psi = 0: every z maps to w_avg, so with the same noise every image is the same
    rng = np.random.default_rng(0)
    noise = {role: {k: np.repeat(v, 4, axis=0) for k, v in d.items()} for role, d in gan.draw_noise(1, rng).items()}
    images = gan.generate(gan.latents(4, rng), truncation=0.0, noise=noise)
    assert np.abs(images - images[:1]).max() < 1e-6
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match=r"truncation must be a number in \[0, 1\]"):
            gan.sample(1, truncation=bad)


def test_truncation_without_a_mapping_network_is_refused(dcgan_artifact) -> None:
    gan = load(dcgan_artifact)
    with pytest.raises(InvalidArgumentError, match="truncation needs a mapping network .*drop --truncation"):
        gan.sample(1, truncation=0.5)
    assert np.array_equal(gan.sample(2, seed=0, truncation=1.0), gan.sample(2, seed=0))


def test_interpolation(dcgan_artifact, stylegan_artifact) -> None:
    gan = load(dcgan_artifact)
    strip = gan.interpolate(1, 2, frames=6)
    assert strip.shape == (6, 8, 8, 3)
    assert np.array_equal(strip[0], gan.sample(1, seed=1)[0]) and np.array_equal(strip[-1], gan.sample(1, seed=2)[0])
    style = load(stylegan_artifact)
    strip = style.interpolate(1, 2, frames=4, truncation=0.5)       # noise: seed 1's for every frame
    assert np.array_equal(strip[0], style.sample(1, seed=1, truncation=0.5)[0])
    with pytest.raises(InvalidArgumentError, match="frames must be an integer >= 2"):
        gan.interpolate(1, 2, frames=1)


def test_slerp_keeps_the_norm_between_equal_norm_ends() -> None:
    a, b = np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    path = slerp(a, b, 5)
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    assert np.allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)
    assert np.allclose(path[2], [np.sqrt(0.5), np.sqrt(0.5), 0.0], atol=1e-6)
    assert np.allclose(slerp(a, a, 3), a)                             # parallel ends: no division by zero


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_bad_counts(dcgan_artifact, n) -> None:
    with pytest.raises(InvalidArgumentError, match="number of images must be a positive integer"):
        load(dcgan_artifact).sample(n)


def test_bad_seeds_and_latents(dcgan_artifact) -> None:
    gan = load(dcgan_artifact)
    with pytest.raises(InvalidArgumentError, match="seed must be a non-negative integer"):
        gan.sample(1, seed=-1)
    with pytest.raises(InvalidArgumentError, match=rf"z must be \[N, {LATENT}\]"):
        gan.generate(np.zeros((2, LATENT + 1), np.float32))


def test_a_tampered_sampler_section_is_a_manifest_error(stylegan_artifact, tmp_path) -> None:
    import shutil

    for edit, message in ((lambda s: s.update(latent=4), "unknown key 'latent'"),
                          (lambda s: s.update(w_avg=None), "has a mapping graph exactly when its sampler has w_avg"),
                          (lambda s: s.update(image_shape=[2, 8, 8]), "image_shape must be"),
                          (lambda s: s["noise"]["generator"].pop(), "the 'generator' graph has inputs")):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(stylegan_artifact, copy)
        data = json.loads((copy / "edgegen.json").read_text())
        edit(data["sampler"])
        (copy / "edgegen.json").write_text(json.dumps(data))
        with pytest.raises((ManifestError, GraphMismatchError), match=message):
            load(copy)
