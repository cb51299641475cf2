"""The flow runtime on tiny converted RealNVP and Glow artifacts (tests/flow_models.py):
likelihoods and bits/dim against the models' own PyTorch references, sampling, interpolation,
the pixel map, and bad inputs and manifests."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import GraphMismatchError, InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import open_artifact
from edgegen.runtimes.flow.flow import Flow
from edgegen.runtimes.session import SessionConfig

torch = pytest.importorskip("torch")

import flow_models as fm  # noqa: E402
from edgegen.converters.flow.convert import convert_flow  # noqa: E402


def load(path: Path) -> Flow:
    return Flow.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))


@pytest.fixture(scope="module")
def realnvp(tmp_path_factory):
    model = fm.make_realnvp()
    path = convert_flow(fm.realnvp_spec(model), tmp_path_factory.mktemp("flow") / "realnvp", report=lambda _l: None)
    return model, path, load(path)


@pytest.fixture(scope="module")
def glow(tmp_path_factory):
    model = fm.make_glow()
    path = convert_flow(fm.glow_spec(model), tmp_path_factory.mktemp("flow") / "glow", report=lambda _l: None)
    return model, path, load(path)


def test_log_likelihood_matches_pytorch(realnvp, glow) -> None:
    """log p(x) = log N(z; 0, I) + log_det, z and log_det from the PyTorch model (float64 sums).
    |log p| ~ 100-200 nats over 64-192 values; 1e-3 nats is fp32 accumulation with margin (measured ~2e-5)."""
    for (model, _path, flow), inputs in ((realnvp, fm.realnvp_inputs), (glow, fm.glow_inputs)):
        x = inputs(fm.fixed_images(5, flow.image_shape[0], seed=11)).float()
        with torch.no_grad():
            z, log_det = model(x)
        want = torch.distributions.Normal(0.0, 1.0).log_prob(z.double()).sum(dim=(1, 2, 3)) + log_det.double()
        got = flow.log_likelihood(x.numpy())
        assert got.shape == (5,) and got.dtype == np.float64
        assert np.abs(got - want.numpy()).max() <= 1e-3


def test_bits_per_dim_matches_each_papers_reference(realnvp, glow) -> None:
    """RealNVP (logit, 8-bit) and Glow (5-bit, [-0.5, 0.5]) computed the way their code does it;
    1e-5 bits/dim is the 1e-3 nats above per value (and more), measured ~5e-7."""
    for (model, _path, flow), reference in ((realnvp, fm.realnvp_bits_per_dim), (glow, fm.glow_bits_per_dim)):
        images = fm.fixed_images(6, flow.image_shape[0], seed=12)   # includes levels 0 and 255
        got = flow.bits_per_dim(images)
        assert got.shape == (6,)
        assert np.abs(got - reference(model, images)).max() <= 1e-5
        assert np.all(np.isfinite(got)) and np.all(got > 0)


def test_bits_per_dim_formula_on_an_identity_flow(glow) -> None:
    """With z = x and log_det = 0, bits/dim = -(log N(x; 0, I) - D log(num_bins)) / (D ln 2) for Glow's
    (-0.5, 0.5) map: checks the formula, not the network."""
    _model, _path, flow = glow
    images = fm.fixed_images(2, 3, seed=13)
    x, log_jac = flow.pixels_to_data(images)
    assert np.allclose(log_jac, x[0].size * math.log(1.0 / 32))
    gauss = -0.5 * np.sum(x.astype(np.float64).reshape(2, -1) ** 2, axis=1) - 0.5 * x[0].size * math.log(2 * math.pi)
    want = -(gauss + log_jac) / (x[0].size * math.log(2))
    flow_identity = _IdentityScores(flow)
    assert np.allclose(flow_identity.bits_per_dim(images), want, rtol=0, atol=1e-12)


class _IdentityScores(Flow):
    """The runtime's bits/dim formula around an identity flow (z = x, log_det = 0)."""

    def __init__(self, flow: Flow) -> None:
        self.sampler, self.image_shape, self.sessions = flow.sampler, flow.image_shape, flow.sessions

    def encode(self, x):
        return x, np.zeros(len(x), dtype=np.float32)


def test_pixel_map_round_trips_every_level(realnvp, glow) -> None:
    for _model, _path, flow in (realnvp, glow):
        c = flow.image_shape[0]
        levels = np.arange(256, dtype=np.uint8)
        images = np.broadcast_to(levels[:, None, None, None], (256, 8, 8, c)).copy()
        x, _ = flow.pixels_to_data(images)
        back = flow.data_to_pixels(x)
        step = 256 // flow.sampler.num_bins          # 5-bit Glow: levels 0, 8, 16, ...
        assert np.array_equal(back, (images // step) * step)


def test_sample_is_the_inverse_graph_at_temperature_scaled_latents(realnvp) -> None:
    model, _path, flow = realnvp
    eps = np.random.default_rng(3).standard_normal((4, 4, 4, 4))
    z = flow.sample_latents(4, seed=3, temperature=0.6)
    assert np.allclose(z, 0.6 * eps, rtol=0, atol=1e-6)              # temperature scales the latent
    images = flow.sample(4, seed=3, temperature=0.6)
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
    with torch.no_grad():
        x_torch = model.inverse(torch.from_numpy(z)).numpy()
    want = flow.data_to_pixels(x_torch)
    # same pixels as PyTorch's inverse, but for values within fp32 error of a bin edge (one level off)
    diff = np.abs(images.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99


def test_same_seed_same_images_and_defaults(realnvp, glow) -> None:
    _model, _path, flow = glow
    a = flow.sample(3, seed=5)
    assert np.array_equal(a, flow.sample(3, seed=5))
    assert not np.array_equal(a, flow.sample(3, seed=6))
    assert np.array_equal(a, flow.sample(3, seed=5, temperature=0.7))   # the artifact's default
    assert not np.array_equal(a, flow.sample(3, seed=5, temperature=1.0))
    assert flow.sample(2).shape == (2, 8, 8, 3)                         # seed None: fresh entropy
    assert np.array_equal(realnvp[2].sample_latents(1, seed=5), realnvp[2].sample_latents(1, seed=5, temperature=1.0))

def test_sampling_in_chunks_gives_the_same_images_and_reports_progress(realnvp, monkeypatch) -> None:
    import edgegen.runtimes.flow.flow as flow_module

    flow = realnvp[2]
    whole = flow.sample(5, seed=8)
    calls = []
    monkeypatch.setattr(flow_module, "SAMPLE_BATCH", 2)
    assert np.array_equal(flow.sample(5, seed=8, progress=lambda done, total: calls.append((done, total))), whole)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_interpolate_runs_from_one_seed_to_the_other(glow) -> None:
    _model, _path, flow = glow
    strip = flow.interpolate(1, 2, frames=5)
    assert strip.shape == (5, 8, 8, 3) and strip.dtype == np.uint8
    assert np.array_equal(strip[0], flow.sample(1, seed=1)[0])
    assert np.array_equal(strip[-1], flow.sample(1, seed=2)[0])
    assert len({frame.tobytes() for frame in strip}) == 5


def test_graphs_with_other_inputs_and_outputs_are_refused(tmp_path) -> None:
    from edgegen.converters.writer import ArtifactWriter
    from edgegen.manifest import Source
    from tests_support import tiny_graph

    with ArtifactWriter(tmp_path / "odd") as writer:   # x [batch, 4] -> y, z: not a flow's z -> x
        writer.add_graph("flow_inverse", tiny_graph(), precision="fp32")
        writer.write(writer.manifest(family="flow", source=Source(model_class="tests.Odd", converter="tests"),
                                     sampler={"data_shape": [4], "latent_shape": [4], "image_shape": [1, 2, 2]}))
        path = writer.commit()
    with pytest.raises(GraphMismatchError, match=r"flow_inverse has inputs \['x'\] and outputs \['y', 'z'\], "
                                                 r"expected \['z'\] -> \['x'\]"):
        load(path)


@pytest.mark.parametrize("call, message", [
    (lambda f: f.sample(2, temperature=0), "temperature must be a number > 0"),
    (lambda f: f.sample(2, temperature=-1.0), "temperature must be a number > 0"),
    (lambda f: f.sample(2, temperature=float("nan")), "temperature must be a number > 0"),
    (lambda f: f.sample(2, temperature="hot"), "temperature must be a number > 0"),
    (lambda f: f.interpolate(0, 1, temperature=0.0), "temperature must be a number > 0"),
    (lambda f: f.sample(0), "the number of images must be a positive integer"),
    (lambda f: f.sample(1, seed=-1), "seed must be a non-negative integer"),
    (lambda f: f.interpolate(0, 1, frames=1), "frames must be an integer >= 2"),
    (lambda f: f.bits_per_dim(np.zeros((2, 8, 8, 3), np.uint8)), r"images must be uint8 \[N, 8, 8, 1\].*got uint8 \[2, 8, 8, 3\]"),
    (lambda f: f.bits_per_dim(np.zeros((2, 8, 8, 1), np.float32)), r"images must be uint8 .*got float32"),
    (lambda f: f.decode(np.zeros((2, 64), np.float32)), r"z must be \[N, 4, 4, 4\] for this model, got shape \[2, 64\]"),
    (lambda f: f.log_likelihood(np.zeros((1, 8, 8), np.float32)), r"x must be \[N, 1, 8, 8\]"),
])
def test_bad_arguments_get_a_clear_error(realnvp, call, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        call(realnvp[2])
    assert "\n" not in str(info.value)


def edited(path: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(path, tmp_path / "edited"))
    manifest = json.loads((copy / "edgegen.json").read_text())
    edit(manifest)
    (copy / "edgegen.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["sampler"].update(colour="red"), r"sampler: unknown key 'colour'"),
    (lambda m: m["sampler"].update(num_bins=0), r"num_bins must be an integer in 2..256"),
    (lambda m: m["sampler"].update(data_range=[0.0, 1.0], dequantization_offset=0.0), "with logit, data_range"),
    (lambda m: m["sampler"].update(latent_shape=[4, 4, 5]), r"must hold as many values"),
    (lambda m: m["sampler"].update(latent_shape=[8, 2, 4]), r"flow_inverse input z has shape \['batch', 4, 4, 4\]"),
    (lambda m: m["sampler"].update(prior="laplace"), r"'laplace' is not one of 'standard-normal'"),
    (lambda m: m["defaults"].update(temperature=-1), "temperature must be a number > 0"),
    (lambda m: m["graphs"].pop("flow_inverse"), r"lacks a 'flow_inverse' graph .*re-convert"),
])
def test_bad_manifests_are_refused_on_load(realnvp, tmp_path, edit, message) -> None:
    with pytest.raises((ManifestError, GraphMismatchError), match=message):
        load(edited(realnvp[1], tmp_path, edit))


def test_an_artifact_without_the_forward_graph_samples_but_cannot_score(realnvp, tmp_path) -> None:
    flow = load(edited(realnvp[1], tmp_path, lambda m: m["graphs"].pop("flow_forward")))
    assert np.array_equal(flow.sample(2, seed=1), realnvp[2].sample(2, seed=1))
    with pytest.raises(InvalidArgumentError, match="has no 'flow_forward' graph, so it cannot score"):
        flow.bits_per_dim(fm.fixed_images(1, 1))


def test_edgegen_load_returns_the_flow_runtime(realnvp) -> None:
    import edgegen

    flow = edgegen.load(realnvp[1], provider="cpu")
    assert isinstance(flow, Flow) and flow.provider == "cpu" and flow.image_shape == (1, 8, 8)
