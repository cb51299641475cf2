"""StyleGAN2 (rosinality/stylegan2-pytorch structure, tests/stylegan2_model.py) through the GAN converter:
batch-grouped modulated convs made batch-dynamic, fused ops exported through their fallbacks, and the
artifact against the model's own forward (its "compiled" fused ops, truncation, per-layer noise)."""

from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import pytest

from edgegen.errors import ConversionError, InvalidArgumentError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import edgegen  # noqa: E402
import stylegan2_model as sg  # noqa: E402
from edgegen.converters.export import rewrites as image_rewrites  # noqa: E402
from edgegen.converters.image.convert import check_spec  # noqa: E402
from edgegen.converters.export.graph import EXPORT_BATCH  # noqa: E402
from edgegen.converters.image.spec import GANSpec  # noqa: E402

#: fp32 agreement with PyTorch (the converter's own bar, export.graph.ATOL)
ATOL = 1e-4
GROUPED_CONVS = 8   # conv1, to_rgb1, 4 StyledConvs (2 transposed), 2 ToRGBs: each conv2d/conv_transpose2d(groups=B)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    spec = sg.spec(fallbacks=sg.FALLBACKS, defaults={"truncation": 0.7})
    return edgegen.convert(spec, tmp_path_factory.mktemp("stylegan2") / "artifact")


def manifest(path) -> dict:
    return json.loads((path / "edgegen.json").read_text())


def rosinality_forward(g, z: np.ndarray, psi: float, w_avg, noise: dict[str, np.ndarray]) -> np.ndarray:
    """The model's own forward: its extension ops, its truncation, the per-layer noise given as its noise= list."""
    layers = [torch.from_numpy(noise[f"noise.{i}"]) for i in range(g.num_layers)]
    with torch.no_grad():
        return g([torch.from_numpy(z)], truncation=psi, truncation_latent=w_avg, noise=layers)[0].numpy()


def test_artifact_matches_the_models_forward_with_truncation_and_noise(artifact) -> None:
    m = manifest(artifact)
    g = sg.build()
    w_avg = sg.spec(g).mapping.w_avg                                   # mean_latent(4096) from seed 1
    assert m["sampler"]["w_avg"] == w_avg.tolist() and m["defaults"] == {"truncation": 0.7}
    assert [n["shape"] for n in m["sampler"]["noise"]["generator"]] == [
        ["batch", 1, 4, 4], ["batch", 1, 8, 8], ["batch", 1, 8, 8], ["batch", 1, 16, 16], ["batch", 1, 16, 16]]
    assert m["validation"]["samples_max_abs_error"] <= ATOL
    gan = edgegen.load(artifact, provider="cpu", threads=1)
    for batch in (1, 3):                                               # neither is the export batch (2)
        rng = np.random.default_rng(batch)
        z, noise = gan.latents(batch, rng), gan.draw_noise(batch, rng)
        ours = gan.generate(z, truncation=0.7, noise=noise)
        ref = rosinality_forward(g, z, 0.7, w_avg, noise["generator"])
        assert ours.shape == (batch, 3, 16, 16) and np.abs(ours - ref).max() <= ATOL
    assert np.abs(ours - rosinality_forward(g, z, 1.0, w_avg, noise["generator"])).max() > 0.05   # psi matters


def test_batch_grouped_convs_are_rewritten(artifact, tmp_path) -> None:
    assert manifest(artifact)["validation"]["grouped_convs_rewritten"] == {"generator": GROUPED_CONVS}
    graph = onnx.load(str(artifact / "generator.onnx")).graph
    groups = [a.i for n in graph.node if n.op_type in ("Conv", "ConvTranspose") for a in n.attribute if a.name == "group"]
    assert groups and EXPORT_BATCH not in groups                      # only the depthwise im2col/col2im (channels)
    # the control: exported as it is, the modulated conv bakes the export batch into the Conv's group
    torch.manual_seed(0)
    conv = sg.ModulatedConv2d(4, 4, 3, 8).eval()
    args, path = (torch.randn(EXPORT_BATCH, 4, 8, 8), torch.randn(EXPORT_BATCH, 8)), str(tmp_path / "grouped.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tracer chatter
        with pytest.raises(Exception, match="kernel of unknown shape"):   # asked for a dynamic batch: refused
            torch.onnx.export(conv, args, path, dynamo=False, opset_version=17, input_names=["x", "w"],
                              dynamic_axes={"x": {0: "b"}, "w": {0: "b"}})
        torch.onnx.export(conv, args, path, dynamo=False, opset_version=17)
    assert [a.i for n in onnx.load(path).graph.node if n.op_type == "Conv" for a in n.attribute
            if a.name == "group"] == [EXPORT_BATCH]


def test_a_fused_op_without_fallback_is_named_with_its_module_path(tmp_path) -> None:
    spec = sg.spec(fallbacks={sg.FusedLeakyReLUFunction: sg.fused_leaky_relu_native})   # none for UpFirDn2d
    message = ("graph 'generator': Synthesis.g.convs.0.conv.blur calls UpFirDn2d (stylegan2_model), a custom "
               "autograd.Function running the custom op stylegan2_ext::upfirdn2d that has no ONNX export: give the "
               "spec fallbacks={UpFirDn2d: <its plain-PyTorch version>} (called with the same arguments as .apply)")
    with pytest.raises(ConversionError) as info:
        edgegen.convert(spec, tmp_path / "a")
    assert str(info.value) == message and not list(tmp_path.iterdir())   # one line, nothing half-written
    assert check_spec(spec) == [message]
    (problem,) = check_spec(sg.spec())                                    # no fallbacks: the mapping's comes first
    assert problem.startswith("graph 'mapping': Mapping.style.1 calls FusedLeakyReLUFunction (stylegan2_model)")


def test_convert_check_lists_it_from_the_shell(tmp_path) -> None:
    from click.testing import CliRunner

    from edgegen.cli import cli

    (tmp_path / "gen.py").write_text(textwrap.dedent("""
        import stylegan2_model

        def no_fallbacks():
            return stylegan2_model.spec()
    """))
    result = CliRunner().invoke(cli, ["convert", f"{tmp_path / 'gen.py'}:no_fallbacks", "--check"])
    assert result.exit_code != 0 and "Mapping.style.1 calls FusedLeakyReLUFunction" in result.output, result.output
    assert "Traceback" not in result.output


def test_fallbacks_for_torch_ops_ops(tmp_path) -> None:
    """Keyed by the custom op instead of the Function: the Function runs, its op is swapped, it exports inlined."""
    ops = torch.ops.stylegan2_ext
    fallbacks = {ops.fused_bias_act: sg.fused_leaky_relu_native, ops.upfirdn2d.default: sg.upfirdn2d_native}
    g = sg.build(seed=3)
    gan = edgegen.load(edgegen.convert(sg.spec(g, fallbacks=fallbacks), tmp_path / "a"), provider="cpu", threads=1)
    rng = np.random.default_rng(0)
    z, noise = gan.latents(2, rng), gan.draw_noise(2, rng)
    ref = rosinality_forward(g, z, 1.0, None, noise["generator"])
    assert np.abs(gan.generate(z, noise=noise) - ref).max() <= ATOL


def test_rosinalitys_own_classes_need_no_fallbacks(monkeypatch) -> None:
    """The built-in table matches FusedLeakyReLUFunction in op/fused_act.py and UpFirDn2d in op/upfirdn2d.py."""
    fused = type("FusedLeakyReLUFunction", (sg.FusedLeakyReLUFunction,), {"__module__": "op.fused_act"})
    upfirdn = type("UpFirDn2d", (sg.UpFirDn2d,), {"__module__": "op.upfirdn2d"})
    monkeypatch.setattr(sg, "FusedLeakyReLUFunction", fused)
    monkeypatch.setattr(sg, "UpFirDn2d", upfirdn)
    builtin = image_rewrites.Fallbacks()
    assert builtin.lookup(fused) is image_rewrites.fused_leaky_relu and builtin.lookup(upfirdn) is image_rewrites.upfirdn2d
    assert builtin.lookup(sg.FusedLeakyReLUFunction.__mro__[1]) is None   # the name alone does not match
    g, z = sg.build(), torch.randn(2, sg.STYLE_DIM, generator=torch.Generator().manual_seed(0))
    noise = [torch.randn(2, 1, 2 ** (2 + (i + 1) // 2), 2 ** (2 + (i + 1) // 2)) for i in range(g.num_layers)]
    with torch.no_grad():
        ref = g([z], noise=noise)[0]                                      # the "extension"
        with builtin:
            ours = g([z], noise=noise)[0]                                 # the built-in fallbacks
    assert torch.abs(ours - ref).max() <= 1e-5
    assert check_spec(sg.spec(g)) == []


def test_a_function_failing_in_pytorch_is_named(tmp_path) -> None:
    class NeedsCuda(torch.autograd.Function):          # what a CUDA-only extension does on a CPU machine
        @staticmethod
        def forward(ctx, x):
            raise RuntimeError("fused_bias_act: expected a CUDA tensor")

    class Gen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 48)

        def forward(self, z):
            return NeedsCuda.apply(self.fc(z)).view(-1, 3, 4, 4)

    with pytest.raises(ConversionError, match=r"^graph 'generator': Gen calls NeedsCuda \(.*\), a custom "
                                              r"autograd.Function that failed in PyTorch at batch 2 \(RuntimeError: "
                                              r"fused_bias_act: expected a CUDA tensor\); if it calls a compiled "
                                              r"extension, give the spec fallbacks=\{NeedsCuda: "):
        edgegen.convert(GANSpec(generator=Gen(), latent_dim=4), tmp_path / "a")
    spec = GANSpec(generator=Gen(), latent_dim=4, fallbacks={NeedsCuda: torch.tanh})
    assert check_spec(spec) == []


@pytest.mark.parametrize("fallbacks, message", [
    ([sg.fused_leaky_relu_native], "fallbacks must be a dict {custom Function class or torch.ops op: function}"),
    ({sg.fused_leaky_relu: sg.fused_leaky_relu_native}, "must be a torch.autograd.Function subclass or a torch.ops op"),
    ({sg.UpFirDn2d: "upfirdn2d_native"}, "its value a plain-PyTorch function (got str)"),
])
def test_bad_fallbacks_are_one_line_errors(fallbacks, message) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        sg.spec(fallbacks=fallbacks)
    assert message in str(info.value) and "\n" not in str(info.value)
