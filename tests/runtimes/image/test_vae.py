"""The vae and vq-vae runtimes on tiny converted models: prior sampling with temperature,
reconstruction, interpolation, code sampling from a prior, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import edgegen
import image_support
from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.images import to_uint8

# fixtures: the tiny models converted once for this module
vae_artifact, vqvae_artifact = image_support.vae_artifact, image_support.vqvae_artifact


@pytest.fixture(scope="module")
def logits_vae_artifact(tmp_path_factory):
    pytest.importorskip("torch")
    spec = image_support.vae_spec(decoder_output="logits", value_range=(0, 1))
    return image_support.convert(spec, tmp_path_factory.mktemp("logits") / "artifact")


def load(path):
    return edgegen.load(path, provider="cpu", threads=1)


def images(n: int, shape=(8, 8, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_vae_sample_is_the_decoded_prior_with_temperature(vae_artifact) -> None:
    vae = load(vae_artifact)
    out = vae.sample(3, seed=2, temperature=0.5)
    assert out.shape == (3, 8, 8, 1) and out.dtype == np.uint8
    rng = np.random.default_rng(2)                                   # draw order: z, then the decoder's noise
    z = 0.5 * rng.standard_normal((3, 6), dtype=np.float32)
    assert np.array_equal(out, to_uint8(vae.decode(z, rng=rng)))
    assert np.array_equal(vae.sample(3, seed=2), vae.sample(3, seed=2, temperature=0.8))   # the artifact's default
    assert np.array_equal(vae.prior(2, np.random.default_rng(0), 0.0), np.zeros((2, 6), np.float32))
    for bad in (-1.0, float("inf"), "hot"):
        with pytest.raises(InvalidArgumentError, match="temperature must be a finite number >= 0"):
            vae.sample(1, temperature=bad)


def test_vae_reconstruct_decodes_the_posterior_mean(vae_artifact) -> None:
    vae = load(vae_artifact)
    x = images(2)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 6)
    out = vae.reconstruct(x, seed=5)
    assert np.array_equal(out, to_uint8(vae.decode(mean, rng=np.random.default_rng(5))))
    with pytest.raises(InvalidArgumentError, match=r"images must be uint8 \[N, 8, 8, 1\]"):
        vae.reconstruct(images(1, (8, 8, 3)))
    with pytest.raises(InvalidArgumentError, match=r"images must be uint8"):
        vae.reconstruct(x.astype(np.float32))


def test_vae_interpolations(vae_artifact) -> None:
    vae = load(vae_artifact)
    strip = vae.interpolate(3, 4, frames=5)
    assert strip.shape == (5, 8, 8, 1) and np.array_equal(strip[0], vae.sample(1, seed=3)[0])
    a, b = images(2, seed=1)
    between = vae.interpolate_images(a, b, frames=4, seed=9)
    assert between.shape == (4, 8, 8, 1)
    # the ends are the reconstructions (same posterior mean, same noise); the frames between differ from both
    assert np.array_equal(between[0], vae.reconstruct(a[None], seed=9)[0])
    assert np.array_equal(between[-1], vae.reconstruct(b[None], seed=9)[0])
    assert not np.array_equal(between[1], between[0]) and not np.array_equal(between[1], between[-1])
    with pytest.raises(InvalidArgumentError, match="one image for each end"):
        vae.interpolate_images(images(2), b)


def test_vae_with_a_bernoulli_decoder_returns_probabilities(logits_vae_artifact) -> None:
    torch = pytest.importorskip("torch")
    vae = load(logits_vae_artifact)
    _, decoder = image_support.vae(logits=True)
    z = np.random.default_rng(0).standard_normal((3, 6), dtype=np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(decoder(torch.from_numpy(z))).numpy()
    assert np.abs(vae.decode(z) - ref).max() <= 1e-4
    assert vae.sampler.value_range == (0.0, 1.0) and vae.sample(2, seed=0).shape == (2, 8, 8, 1)


def test_vqvae_codes_encode_decode_reconstruct(vqvae_artifact) -> None:
    vq = load(vqvae_artifact)
    x = images(3, (8, 8, 3))
    codes = vq.encode(x)
    assert codes.shape == (3, 4, 4) and codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < 16
    assert np.array_equal(vq.reconstruct(x), to_uint8(vq.decode_codes(codes)))
    # decode_codes is the codebook lookup followed by the decoder graph
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(vqvae_artifact / "decode_codes.onnx"))         # the codebook the artifact carries
    codebook = next(numpy_helper.to_array(t) for t in model.graph.initializer if list(t.dims) == [16, 4])
    z_q = codebook[codes].transpose(0, 3, 1, 2)                                # [3, 4, 4, 4]
    assert np.abs(vq.decode(z_q) - vq.decode_codes(codes)).max() <= 1e-5
    for bad in (codes + 16, codes[:, :2], codes.astype(np.float32)):
        with pytest.raises(InvalidArgumentError, match=r"indices must be integers in 0..15 of shape \[N, 4, 4\]"):
            vq.decode_codes(bad)


def test_vqvae_sampling_uniform_or_from_a_prior(vqvae_artifact) -> None:
    vq = load(vqvae_artifact)
    out = vq.sample(4, seed=1)
    assert out.shape == (4, 8, 8, 3) and np.array_equal(out, vq.sample(4, seed=1))
    codes = vq.sample_codes(400, np.random.default_rng(0))
    counts = np.bincount(codes.ravel(), minlength=16)
    assert counts.min() > 300                                        # 6400 draws, 400 expected per code
    one_hot = np.eye(16)[7]
    assert (vq.sample_codes(3, np.random.default_rng(0), one_hot) == 7).all()
    per_position = np.zeros((4, 4, 16))
    per_position[..., 2], per_position[0, 0] = 1.0, np.eye(16)[5]
    grid = vq.sample_codes(2, np.random.default_rng(0), per_position)
    assert (grid[:, 0, 0] == 5).all() and (grid[:, 1:] == 2).all()
    half = np.zeros(16)
    half[[0, 1]] = 0.5
    drawn = vq.sample_codes(500, np.random.default_rng(0), half)
    assert set(np.unique(drawn)) == {0, 1} and abs(drawn.mean() - 0.5) < 0.02
    for bad in (np.ones(16), np.ones(15) / 15, -np.eye(16)[0] + 2 * np.eye(16)[1]):
        with pytest.raises(InvalidArgumentError, match="prior must be probabilities over the 16 codes"):
            vq.sample(1, prior=bad)
