"""The flow family's converter: tiny RealNVP and Glow (tests/flow_models.py) and a normflows Glow
converted with convert_flow, the artifact checked against PyTorch; blockers and bad specs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import ConversionError, InvalidArgumentError, UnsupportedModelError
from edgegen.runtimes.artifact import open_artifact
from edgegen.runtimes.session import SessionConfig

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import flow_models as fm  # noqa: E402
from edgegen.converters.flow.convert import convert_flow, normflows_spec  # noqa: E402
from edgegen.converters.flow.spec import FlowSpec  # noqa: E402
from edgegen.runtimes.flow.flow import Flow  # noqa: E402

QUIET = {"report": lambda _line: None}
MODELS = {"realnvp": (fm.make_realnvp, fm.realnvp_spec), "glow": (fm.make_glow, fm.glow_spec)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request, tmp_path_factory):
    make, spec = MODELS[request.param]
    model = make()
    path = convert_flow(spec(model), tmp_path_factory.mktemp("flow") / request.param, **QUIET)
    return request.param, model, path, Flow.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))


def test_manifest_records_graphs_sampler_and_passed_validation(converted) -> None:
    name, _model, path, flow = converted
    m = json.loads((path / "edgegen.json").read_text())
    assert m["family"] == "flow" and set(m["graphs"]) == {"flow_inverse", "flow_forward"}
    inverse, forward = m["graphs"]["flow_inverse"], m["graphs"]["flow_forward"]
    latent = [4, 4, 4] if name == "realnvp" else [12, 4, 4]
    data = [1, 8, 8] if name == "realnvp" else [3, 8, 8]
    assert inverse["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["batch", *latent]}]
    assert inverse["outputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", *data]}]
    assert [o["shape"] for o in forward["outputs"]] == [["batch", *latent], ["batch"]]
    s = m["sampler"]
    assert (s["data_shape"], s["latent_shape"], s["image_shape"], s["prior"]) == (data, latent, data, "standard-normal")
    if name == "realnvp":
        assert (s["num_bins"], s["data_range"], s["logit"]) == (256, [0.05, 1.0], True)
    else:
        assert (s["num_bins"], s["data_range"], s["logit"], m["defaults"]) == (32, [-0.5, 0.5], False, {"temperature": 0.7})
    v = m["validation"]
    assert v["passed"] and v["batch_sizes"] == [1, 3]
    assert {role: sorted(e) for role, e in v["batch_errors"].items()} == {"flow_inverse": ["1", "3"],
                                                                          "flow_forward": ["1", "3"]}
    assert max(e for errors in v["batch_errors"].values() for e in errors.values()) <= 1e-4
    assert v["max_abs_error_x"] <= 1e-4 and v["max_abs_error_z"] <= 1e-4 and v["max_rel_error_log_det"] <= 1e-4
    assert v["roundtrip_max_abs_error"] <= 1e-4
    assert np.allclose(v["bits_per_dim_artifact"], v["bits_per_dim_torch"], rtol=1e-5, atol=0)
    assert m["source"]["model_class"] == f"tests.{'RealNVP' if name == 'realnvp' else 'Glow'}"
    assert not list(path.parent.glob(".*edgegen-tmp*"))


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_artifact_matches_pytorch_on_fixed_latents_and_inputs(converted, batch) -> None:
    """fp32 max abs <= 1e-4 for x and z, log_det relative 1e-4, at batch sizes the export never saw."""
    name, model, _path, flow = converted
    z = np.random.default_rng(7).standard_normal((batch, *flow.sampler.latent_shape)).astype(np.float32)
    x = (fm.realnvp_inputs if name == "realnvp" else fm.glow_inputs)(fm.fixed_images(batch, flow.image_shape[0]))
    with torch.no_grad():
        x_torch = model.inverse(torch.from_numpy(z)).numpy()
        z_torch, log_det_torch = (t.numpy() for t in model(x.float()))
    assert np.abs(flow.decode(z) - x_torch).max() <= 1e-4
    z_onnx, log_det = flow.encode(x.float().numpy())
    assert np.abs(z_onnx - z_torch).max() <= 1e-4
    assert np.all(np.abs(log_det - log_det_torch) <= 1e-4 * np.maximum(1.0, np.abs(log_det_torch)))


def test_round_trip_through_the_artifact_gives_the_data_back(converted) -> None:
    name, _model, _path, flow = converted
    x, _ = flow.pixels_to_data(fm.fixed_images(4, flow.image_shape[0], seed=3))
    assert np.abs(flow.decode(flow.encode(x)[0]) - x).max() <= 1e-4
    z = flow.sample_latents(4, seed=2)
    assert np.abs(flow.encode(flow.decode(z))[0] - z).max() <= 1e-4


def test_glow_linear_algebra_becomes_constants(tmp_path) -> None:
    """Glow's torch.linalg.inv / torch.slogdet have no ONNX export: they are precomputed from the weights."""
    model = fm.make_glow()
    with pytest.raises(Exception, match="linalg_inv|slogdet"):   # what a plain export says
        torch.onnx.export(_Inverse(model), (torch.zeros(2, 12, 4, 4),), str(tmp_path / "plain.onnx"), dynamo=False,
                          opset_version=17)
    path = convert_flow(fm.glow_spec(model), tmp_path / "glow", **QUIET)
    ops = {n.op_type for role in ("flow_inverse", "flow_forward") for n in onnx.load(str(path / f"{role}.onnx")).graph.node}
    assert "Conv" in ops and not ops & {"Det", "Inverse"}   # fidelity of the constants: the tests above


class _Inverse(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.inverse(z)


def test_uninitialised_actnorm_is_refused_and_left_as_it_was(tmp_path) -> None:
    model = fm.make_glow(initialise=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError, match=r"changed its weights \(.*initialized.*ActNorm.*before converting"):
        convert_flow(fm.glow_spec(model), tmp_path / "glow", **QUIET)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "glow").exists() and not list(tmp_path.glob(".*edgegen-tmp*"))


class DataInverse(torch.nn.Module):
    """y = A x with A built from the batch itself: its slogdet cannot be a constant."""

    def forward(self, x):
        a = torch.eye(4) + 0.1 * torch.tanh(x.mean(dim=0))[None].expand(4, 4)       # [4, 4] from the batch
        return x @ a.T, x.new_zeros(x.shape[0]) + torch.slogdet(a)[1]

    def inverse(self, z):
        return z


class BakedBatch(torch.nn.Module):
    """log_det = torch.zeros(len(x)) + ...: len() makes the export batch a constant."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x * torch.exp(self.scale), torch.zeros(len(x)) + 4 * self.scale

    def inverse(self, z):
        return z * torch.exp(-self.scale)


class Reshaped(BakedBatch):
    """reshape(len(x), 4): the graph declares a dynamic batch, yet computes with the export's."""

    def forward(self, x):
        return (x * torch.exp(self.scale)).reshape(len(x), 4), x.new_zeros(x.shape[0]) + 4 * self.scale


class BatchScaled(BakedBatch):
    """Scales by len(x) / 2: shapes stay dynamic, but the graph computes with the export's batch (2)."""

    def forward(self, x):
        k = len(x) / 2
        return x * torch.exp(self.scale) * k, x.new_zeros(x.shape[0]) + 4 * (self.scale + math.log(k))

    def inverse(self, z):
        return z * torch.exp(-self.scale) / (len(z) / 2)


class ScalarLogDet(BakedBatch):
    def forward(self, x):
        return x * torch.exp(self.scale), 4 * self.scale


class NotInverse(BakedBatch):
    def forward(self, x):
        return x * torch.exp(self.scale), x.new_zeros(x.shape[0]) + 4 * self.scale

    def inverse(self, z):
        return z


FLAT = dict(data_shape=(4,), image_shape=(1, 2, 2))


@pytest.mark.parametrize("module, error, message", [
    (DataInverse(), UnsupportedModelError, r"DataInverse\.forward: torch\.slogdet.*depend on the input.*rewrite"),
    (BakedBatch(), ConversionError, r"'flow_forward', exported at batch 2, fails in ONNX Runtime at batch 1 .*fixes the batch"),
    (Reshaped(), ConversionError, r"'flow_forward', exported at batch 2, fails in ONNX Runtime at batch 1 \(its Reshape node"),
    (BatchScaled(), ConversionError, r"'flow_inverse' at batch 1: max abs error 1.01 against PyTorch exceeds 0.0001"),
    (ScalarLogDet(), ConversionError, r"returned log_det of shape \[\]; it must be \[B\]"),
    (NotInverse(), ConversionError, r"inverse\(forward\(x\)\) differs from x.*exact inverses"),
])
def test_modules_breaking_the_contract_get_a_clear_error(tmp_path, module, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        convert_flow(FlowSpec(module=module, **FLAT), tmp_path / "out", **QUIET)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(data_shape=(1, 8)), r"data_shape must be \[C, H, W\] or \[D\]"),
    (dict(data_shape=(64,)), r"data_shape \(64,\) is flat: give image_shape \(C, H, W\) with C\*H\*W = 64"),
    (dict(image_shape=(2, 4, 8)), "image_shape must be"),
    (dict(num_bins=512), "num_bins must be an integer in 2..256"),
    (dict(data_range=(1.0, 0.0)), "data_range must be"),
    (dict(data_range=(0.0, 1.0), dequantization_offset=0.0), r"with logit, data_range \(0.0, 1.0\) must map"),
    (dict(dequantization_offset=1.0), r"dequantization_offset must be in \[0, 1\)"),
    (dict(defaults={"temperature": 0}), "temperature must be a number > 0"),
    (dict(defaults={"steps": 4}), "defaults may only set 'temperature'"),
    (dict(inverse_method="sample"), "RealNVP has no method 'sample'"),
])
def test_bad_specs_are_refused_with_the_fix(overrides, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        fm.realnvp_spec(fm.make_realnvp(), **overrides)


def test_edgegen_convert_takes_a_flow_spec_and_refuses_quantization(tmp_path) -> None:
    import edgegen

    spec = fm.realnvp_spec(fm.make_realnvp())
    with pytest.raises(InvalidArgumentError, match="flow artifacts are fp32 for now.*--quantize none"):
        edgegen.convert(spec, tmp_path / "q", quantize="int8")
    path = edgegen.convert(spec, tmp_path / "a")
    assert open_artifact(path).manifest.family == "flow"


# -- normflows (a public implementation from the package index) --------------------------------

def normflows_glow(nf, initialise: bool = True):
    """A single-scale normflows Glow on 1x8x8: two GlowBlocks (LU and full 1x1 convs), a squeeze,
    a trainable DiagGaussian base moved off N(0, I)."""
    torch.manual_seed(0)
    flows = [nf.flows.GlowBlock(4, 8, split_mode="channel", init_zeros=False, use_lu=True),
             nf.flows.GlowBlock(4, 8, split_mode="channel", init_zeros=False, use_lu=False),
             nf.flows.Squeeze()]
    q0 = nf.distributions.DiagGaussian((4, 4, 4), trainable=True)
    with torch.no_grad():
        q0.loc.normal_(0, 0.1)
        q0.log_scale.normal_(0, 0.1)
    model = nf.NormalizingFlow(q0, flows)
    if initialise:   # ActNorm's data-dependent init (normflows runs it on the first log_prob)
        with torch.no_grad():
            model.log_prob(fm.realnvp_inputs(fm.fixed_images(16, 1, seed=1)).float())
    return model


def normflows_flow_spec(model):
    # normflows' bitsPerDim evaluates logit(a + (1 - a) x): RealNVP's map, alpha = 0.05
    return normflows_spec(model, data_shape=(1, 8, 8), data_range=(fm.ALPHA, 1.0), logit=True)


def test_normflows_glow_converts_and_scores_as_normflows_does(tmp_path) -> None:
    nf = pytest.importorskip("normflows")
    model = normflows_glow(nf)
    path = convert_flow(normflows_flow_spec(model), tmp_path / "nf", **QUIET)
    flow = Flow.from_artifact(open_artifact(path), SessionConfig(provider="cpu"))
    images = fm.fixed_images(4, 1, seed=5)
    y = fm.realnvp_inputs(images).float()
    with torch.no_grad():
        log_prob = model.log_prob(y).double().numpy()
        bpd = nf.utils.bitsPerDim(model, y).double().numpy()
        z = flow.sample_latents(3, seed=0, temperature=0.8)
        x_nf = model.forward(model.q0.loc + torch.exp(model.q0.log_scale) * torch.from_numpy(z)).numpy()
    # log p over 64 values ~ -120 nats: 1e-3 is fp32 accumulation, 1e-5 bits/dim the same in bits per value
    assert np.abs(flow.log_likelihood(y.numpy()) - log_prob).max() <= 1e-3
    assert np.abs(flow.bits_per_dim(images) - bpd).max() <= 1e-5
    assert np.abs(flow.decode(z) - x_nf).max() <= 1e-4
    assert json.loads((path / "edgegen.json").read_text())["source"]["model_class"] == "normflows.NormalizingFlow"


def test_normflows_uninitialised_actnorm_and_multiscale_are_refused(tmp_path) -> None:
    nf = pytest.importorskip("normflows")
    with pytest.raises(ConversionError, match=r"changed its weights \(flows\.0\.flows\.2\.data_dep_init_done"):
        convert_flow(normflows_flow_spec(normflows_glow(nf, initialise=False)), tmp_path / "a", **QUIET)
    multiscale = nf.MultiscaleFlow([nf.distributions.DiagGaussian((4, 4, 4))], [[nf.flows.Squeeze()]], [])
    with pytest.raises(UnsupportedModelError, match="MultiscaleFlow has per-level bases"):
        normflows_flow_spec(multiscale)
    with pytest.raises(UnsupportedModelError, match="use DiagGaussian"):
        normflows_flow_spec(nf.NormalizingFlow(nf.distributions.UniformGaussian(64, [0]), [nf.flows.Squeeze()]))


def test_converting_needs_no_files_outside_the_artifact(converted, tmp_path) -> None:
    """The artifact moves: copy it elsewhere and it still loads and samples the same images."""
    import shutil

    _name, _model, path, flow = converted
    copy = Path(shutil.copytree(path, tmp_path / "moved"))
    moved = Flow.from_artifact(open_artifact(copy), SessionConfig(provider="cpu"))
    assert np.array_equal(moved.sample(3, seed=4), flow.sample(3, seed=4))
