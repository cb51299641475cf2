"""Standalone diffusers autoencoders: an ``AutoencoderKL`` directory converts to a ``vae`` artifact and a ``VQModel``
directory to a ``vq-vae`` artifact with no flags, and the artifact's encode, decode and reconstruct match
diffusers' own model on the same inputs at fp32 (tiny configs, random weights; 1e-4 absolute on outputs of
scale ~1: ONNX Runtime's fp32 convolutions and group norms against torch's, measured ~1e-6).  The VQ codes
must be the same, except where two codes are equally near (none here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import edgegen  # noqa: E402
from edgegen.runtimes.artifact import open_artifact  # noqa: E402
from edgegen.runtimes.images import from_uint8  # noqa: E402
from tests_support import assert_one_line_error, run_cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
ATOL = 1e-4
BLOCKS = dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, sample_size=16,
              down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)     # [n, H, W, C]


@pytest.fixture(scope="module")
def kl(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoencoder-kl")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **BLOCKS).eval()
    vae.save_pretrained(root / "vae")
    return vae, edgegen.convert(root / "vae", root / "artifact")


@pytest.fixture(scope="module")
def vq(tmp_path_factory):
    root = tmp_path_factory.mktemp("vq-model")
    torch.manual_seed(0)
    model = diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=32, **BLOCKS).eval()
    model.save_pretrained(root / "vq")
    return model, edgegen.convert(root / "vq", root / "artifact")


@torch.no_grad()
def test_autoencoder_kl_directory_is_a_vae_artifact_matching_diffusers(kl):
    vae, artifact = kl
    m = open_artifact(artifact).manifest
    assert m.family == "vae" and m.source.model_class == "diffusers.AutoencoderKL"
    assert m.sampler["latent_shape"] == [4, 8, 8] and m.sampler["image_shape"] == [3, 16, 16]
    model = edgegen.load(artifact, provider="cpu")
    pixels = images(3, 1)
    x = torch.from_numpy(from_uint8(pixels))                                               # [3, 3, 16, 16]
    posterior = vae.encode(x).latent_dist
    mean, logvar = model.encode(pixels)
    np.testing.assert_allclose(mean, posterior.mean.numpy(), atol=ATOL)
    np.testing.assert_allclose(logvar, posterior.logvar.numpy(), atol=ATOL)
    z = np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.decode(z), vae.decode(torch.from_numpy(z)).sample.numpy(), atol=ATOL)
    want = vae.decode(posterior.mean).sample.numpy()                                       # reconstruct: the mean
    got = from_uint8(model.reconstruct(pixels))
    assert np.abs(got - np.clip(want, -1, 1)).max() <= 2 / 255 + ATOL                     # uint8 rounding


@torch.no_grad()
def test_vq_model_directory_is_a_vq_vae_artifact_matching_diffusers(vq):
    model_pt, artifact = vq
    m = open_artifact(artifact).manifest
    assert m.family == "vq-vae" and m.sampler["codebook_size"] == 32 and m.sampler["grid"] == [8, 8]
    model = edgegen.load(artifact, provider="cpu")
    pixels = images(3, 3)
    x = torch.from_numpy(from_uint8(pixels))
    z_e = model_pt.encode(x).latents                                                       # [3, 3, 8, 8]
    z_q, _, (_, _, codes) = model_pt.quantize(z_e)
    np.testing.assert_array_equal(model.encode(pixels), codes.reshape(3, 8, 8).numpy())
    np.testing.assert_allclose(model.decode(z_q.numpy()), model_pt.decode(z_q, force_not_quantize=True).sample.numpy(),
                               atol=ATOL)
    full = model_pt(x).sample.numpy()                                                      # encode, quantize, decode
    np.testing.assert_allclose(model.decode_codes(model.encode(pixels)), full, atol=ATOL)
    assert np.abs(from_uint8(model.reconstruct(pixels)) - np.clip(full, -1, 1)).max() <= 2 / 255 + ATOL


def test_reconstruct_from_the_shell_and_what_does_not_apply(kl, vq, tmp_path):
    from PIL import Image

    source = tmp_path / "in.png"
    Image.fromarray(images(1, 4)[0]).save(source)
    for _, artifact in (kl, vq):
        out = tmp_path / f"{Path(artifact).parent.name}.png"
        result = run_cli("reconstruct", artifact, source, "-o", out)
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == (16, 16)
    assert_one_line_error(run_cli("sample", kl[1], "-o", tmp_path / "s.png", "--steps", "3"),
                          "--steps does not apply to this vae artifact (its options: --temperature)")


def test_what_a_standalone_autoencoder_cannot_take_is_refused(kl, tmp_path):
    vae, _ = kl
    vae.save_pretrained(tmp_path / "vae")
    with pytest.raises(Exception, match="scheduler applies to diffusion models, not a diffusers AutoencoderKL"):
        edgegen.convert(tmp_path / "vae", tmp_path / "out", scheduler="ddim")
    for weights in (tmp_path / "vae").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(Exception, match="holds only pickled weights .*edgegen loads safetensors only"):
        edgegen.convert(tmp_path / "vae", tmp_path / "out")
    assert not (tmp_path / "out").exists()
