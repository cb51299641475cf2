"""Converting gan, vae and vq-vae specs: fidelity against PyTorch at two batch sizes, lifting of
random draws, a batch baked into the graph, the dry run, and bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import ConversionError, InvalidArgumentError
import image_support
from image_support import CLASSES, LATENT, conditional_gan, dcgan, stylegan, vae, vae_spec, vqvae, vqvae_spec

torch = pytest.importorskip("torch")

import edgegen  # noqa: E402
from edgegen.converters.image.convert import check_spec  # noqa: E402
from edgegen.converters.image.spec import GANSpec, VAESpec, VQVAESpec  # noqa: E402

#: fp32 agreement with PyTorch (the converter's own bar, export.graph.ATOL)
ATOL = 1e-4
nn = torch.nn

# fixtures: the tiny models converted once for this module
dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
stylegan_artifact, vae_artifact = image_support.stylegan_artifact, image_support.vae_artifact
vqvae_artifact = image_support.vqvae_artifact


def load(path: Path):
    return edgegen.load(path, provider="cpu", threads=1)


def manifest(path: Path) -> dict:
    return json.loads((path / "edgegen.json").read_text())


class ReplayNoise:
    """Make torch.randn_like / rand / bernoulli return given tensors in order (independent of edgegen's lifting)."""

    def __init__(self, monkeypatch, tensors) -> None:
        self.tensors = [torch.from_numpy(np.asarray(t)) for t in tensors]
        for name in ("randn_like", "randn", "rand_like", "rand"):
            monkeypatch.setattr(torch, name, self.next)
        monkeypatch.setattr(torch, "bernoulli", lambda p: (self.next() < p).to(p.dtype))

    def next(self, *_args, **_kwargs):
        return self.tensors.pop(0)


# -- fidelity at two batch sizes -----------------------------------------------------------------------------
def test_dcgan_generator_matches_pytorch_at_batch_1_and_3(dcgan_artifact) -> None:
    figures = manifest(dcgan_artifact)["validation"]
    assert figures["graphs_batch_1"]["generator"] <= ATOL and figures["graphs_batch_3"]["generator"] <= ATOL
    assert figures["samples_max_abs_error"] <= ATOL and figures["samples_uint8_max_diff"] <= 1
    gan, model = load(dcgan_artifact), dcgan()       # same seed: the same weights and BatchNorm statistics
    for batch in (1, 3):
        z = np.random.default_rng(batch).standard_normal((batch, LATENT), dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(z)).numpy()
        assert np.abs(gan.generate(z) - ref).max() <= ATOL


def test_conditional_generator_takes_labels(conditional_artifact) -> None:
    gan, model = load(conditional_artifact), conditional_gan()
    assert manifest(conditional_artifact)["sampler"]["num_classes"] == CLASSES
    z = np.random.default_rng(0).standard_normal((3, LATENT), dtype=np.float32)
    labels = np.array([0, 2, 4])
    with torch.no_grad():
        ref = model(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    assert np.abs(gan.generate(z, labels) - ref).max() <= ATOL
    assert np.abs(gan.generate(z, labels) - gan.generate(z, labels[::-1].copy())).max() > 0.01   # labels matter


def test_stylegan_noise_is_lifted_and_truncation_matches_pytorch(stylegan_artifact, monkeypatch) -> None:
    m = manifest(stylegan_artifact)
    assert set(m["graphs"]) == {"mapping", "generator"}
    assert m["sampler"]["noise"] == {"generator": [
        {"name": "noise.0", "shape": ["batch", 1, 4, 4], "distribution": "normal"},
        {"name": "noise.1", "shape": ["batch", 1, 8, 8], "distribution": "normal"}]}
    assert m["validation"]["samples_max_abs_error"] <= ATOL and m["validation"]["truncation"] == 0.7
    assert m["validation"]["noise_inputs"] == {"generator": 2} and set(m["validation"]["graphs_batch_3"]) == {
        "mapping", "generator"}
    gan, (mapping, synthesis) = load(stylegan_artifact), stylegan()
    rng = np.random.default_rng(5)
    z, noise = gan.latents(3, rng), gan.draw_noise(3, rng)
    ours = gan.generate(z, truncation=0.5, noise=noise)
    w_avg = torch.tensor(m["sampler"]["w_avg"])
    ReplayNoise(monkeypatch, [noise["generator"]["noise.0"], noise["generator"]["noise.1"]])
    with torch.no_grad():
        w = mapping(torch.from_numpy(z))
        ref = synthesis(w_avg + 0.5 * (w - w_avg)).numpy()
    assert np.abs(ours - ref).max() <= ATOL


def test_w_avg_is_the_mean_w_or_the_modules_own(tmp_path) -> None:
    mapping, synthesis = stylegan(w_avg=True)
    carried = edgegen.convert(GANSpec(generator=synthesis, mapping=mapping, latent_dim=LATENT), tmp_path / "a")
    assert manifest(carried)["sampler"]["w_avg"] == mapping.w_avg.tolist()
    computed = edgegen.convert(GANSpec(generator=synthesis, mapping=stylegan()[0], latent_dim=LATENT), tmp_path / "b")
    with torch.no_grad():   # an independent estimate of E[w] from other z: agrees to Monte-Carlo error (~0.005)
        w = stylegan()[0](torch.randn(20_000, LATENT, generator=torch.Generator().manual_seed(7)))
    assert np.abs(np.array(manifest(computed)["sampler"]["w_avg"]) - w.mean(0).numpy()).max() < 0.02


def test_vae_decoder_noise_is_lifted(vae_artifact, monkeypatch) -> None:
    m = manifest(vae_artifact)
    assert m["sampler"]["noise"]["decoder"][0]["shape"] == ["batch", 1, 8, 8]
    v, (encoder, decoder) = load(vae_artifact), vae(noisy=True)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    mean, logvar = v.encode(images)
    with torch.no_grad():
        ref_mean, ref_logvar = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert np.abs(mean - ref_mean.numpy()).max() <= ATOL and np.abs(logvar - ref_logvar.numpy()).max() <= ATOL
    noise = v.graphs["decoder"].draw_noise(3, np.random.default_rng(1))
    ReplayNoise(monkeypatch, [noise["noise.0"]])
    with torch.no_grad():
        ref = decoder(torch.from_numpy(mean)).numpy()
    assert np.abs(v.decode(mean, noise=noise) - ref).max() <= ATOL


def test_bernoulli_and_rand_are_lifted_as_uniform_noise(tmp_path, monkeypatch) -> None:
    class Dropouty(nn.Module):           # draws with torch.rand (fixed shape) and torch.bernoulli (batch shape)
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(LATENT, 3 * 16)

        def forward(self, z):
            h = torch.tanh(self.fc(z)).view(-1, 3, 4, 4)
            return h * torch.bernoulli(torch.sigmoid(h)) + 0.1 * torch.rand(1, 1, 4, 4)

    torch.manual_seed(0)
    module = Dropouty().eval()
    path = edgegen.convert(GANSpec(generator=module, latent_dim=LATENT), tmp_path / "a")
    assert [(n["shape"], n["distribution"]) for n in manifest(path)["sampler"]["noise"]["generator"]] == [
        (["batch", 3, 4, 4], "uniform"), ([1, 1, 4, 4], "uniform")]
    gan = load(path)
    rng = np.random.default_rng(0)
    z, noise = gan.latents(3, rng), gan.draw_noise(3, rng)
    ReplayNoise(monkeypatch, [noise["generator"]["noise.0"], noise["generator"]["noise.1"]])
    with torch.no_grad():
        ref = module(torch.from_numpy(z)).numpy()
    assert np.abs(gan.generate(z, noise=noise) - ref).max() <= ATOL


def test_vqvae_quantize_and_decode_codes_match_pytorch(vqvae_artifact) -> None:
    vq, (encoder, decoder, codebook) = load(vqvae_artifact), vqvae()
    assert manifest(vqvae_artifact)["sampler"] | {"noise": {}} == {
        "codebook_size": 16, "code_dim": 4, "grid": [4, 4], "image_shape": [3, 8, 8], "value_range": [-1.0, 1.0],
        "noise": {}}
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with torch.no_grad():
        z_e = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)      # [3, 4, 4, 4]
        nearest = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, 4), codebook).argmin(-1).view(3, 4, 4)
        indices = vq.encode(images)
        ref = decoder(codebook[torch.from_numpy(indices)].permute(0, 3, 1, 2)).numpy()
    assert (indices == nearest.numpy()).all()
    assert np.abs(vq.decode_codes(indices) - ref).max() <= ATOL


def test_real_vector_quantize_pytorch_model(tmp_path) -> None:
    """vector-quantize-pytorch's VectorQuantize as the quantizer: edgegen's encode must pick its codes,
    and decode_codes must match decoding its get_output_from_indices."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    quantizer = vqp.VectorQuantize(dim=4, codebook_size=16, accept_image_fmap=True).eval()
    decoder = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1),
                            nn.Tanh()).eval()
    spec = VQVAESpec(encoder=encoder, decoder=decoder, codebook=quantizer.codebook, image_shape=(3, 8, 8))
    vq = load(edgegen.convert(spec, tmp_path / "a"))
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with torch.no_grad():
        quantized, indices, _ = quantizer(encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1))
        ref = decoder(quantized).numpy()
        from_indices = decoder(quantizer.get_output_from_indices(indices)).numpy()
    assert (vq.encode(images) == indices.numpy()).all()
    assert np.abs(vq.decode_codes(indices.numpy()) - ref).max() <= ATOL
    assert np.abs(vq.decode_codes(indices.numpy()) - from_indices).max() <= ATOL


# -- what blocks conversion ----------------------------------------------------------------------------------
class BakedBatch(nn.Module):
    """Works in PyTorch at any batch, but int() turns the traced batch into a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT, 3 * 16)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(int(z.shape[0]), 3, 4, 4)


def test_a_batch_baked_into_the_graph_is_a_clear_error(tmp_path) -> None:
    spec = GANSpec(generator=BakedBatch(), latent_dim=LATENT)
    with pytest.raises(ConversionError, match=r"graph 'generator', exported at batch 2, fails in ONNX Runtime at "
                                              r"batch 1 .*Reshape.*fixes the batch .*x.view\(x.shape\[0\]"):
        edgegen.convert(spec, tmp_path / "a")
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())   # nothing half-written
    (problem,) = check_spec(spec)
    assert "traced at batch 2, it fails at batch 3" in problem and "fixes the batch" in problem


class Sub(nn.Module):
    def forward(self, h):
        return h + torch.linalg.inv(torch.eye(4) + 0.1 * h)


class Drawer(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.fc, self.op = nn.Linear(LATENT, 3 * 16), op
        self.block = nn.Sequential(nn.Identity(), Sub())

    def forward(self, z):
        h = torch.tanh(self.fc(z)).view(-1, 3, 4, 4)
        if self.op == "multinomial":
            h = h + torch.multinomial(torch.softmax(h.flatten(1), -1), 1).view(-1, 1, 1, 1)
        elif self.op == "normal_":                      # overwrites part of h (a fill of a fresh tensor lifts)
            h[:, :1].normal_()
        elif self.op == "exponential_":
            h = h + torch.empty_like(h).exponential_()
        elif self.op == "bernoulli_":
            h = h * torch.empty_like(h).bernoulli_(torch.sigmoid(h))
        elif self.op == "inv":
            h = self.block(h)
        return h


@pytest.mark.parametrize("op, message", [
    ("multinomial", r"Drawer calls torch multinomial, a random op edgegen cannot lift.*Gumbel-max"),
    ("normal_", r"^Drawer calls torch normal_ on a tensor not freshly made by x.new_empty, torch.empty, zeros, .*; "
                r"fill a fresh tensor, x.new_empty\(shape\).normal_\(mean, std\) .*torch.randn_like\(x\) \* std"),
    ("exponential_", r"^Drawer calls torch exponential_, a random op edgegen cannot lift.*torch.randn_like\(x\)"),
    ("bernoulli_", r"^Drawer calls torch bernoulli_ with a tensor argument, a random op edgegen cannot lift.*float p"),
])
def test_random_ops_that_cannot_be_lifted_are_named(tmp_path, op, message) -> None:
    spec = GANSpec(generator=Drawer(op), latent_dim=LATENT)
    with pytest.raises(ConversionError, match=message) as info:
        edgegen.convert(spec, tmp_path / "a")
    assert "\n" not in str(info.value) and check_spec(spec) == [str(info.value)]


def test_an_op_without_onnx_export_is_named_with_its_module_path(tmp_path) -> None:
    spec = GANSpec(generator=Drawer("inv"), latent_dim=LATENT)
    assert check_spec(spec) == ["graph 'generator': aten::linalg_inv in Drawer.block.1 has no ONNX export at opset "
                                "17: rewrite it with plain tensor ops (or use the module's pure-PyTorch fallback)"]
    with pytest.raises(ConversionError, match=r"torch.onnx.export failed: .*linalg_inv.*in Drawer.block.1"):
        edgegen.convert(spec, tmp_path / "a")


def test_check_finds_nothing_in_convertible_specs() -> None:
    assert check_spec(vae_spec(noisy=True)) == [] and check_spec(vqvae_spec()) == []


def test_a_module_breaking_the_contract_is_named(tmp_path) -> None:
    encoder, decoder = vae()
    one_output = nn.Sequential(encoder.conv, encoder.mean)          # returns mean only
    with pytest.raises(ConversionError, match=r"graph 'encoder': Sequential returned 1 value\(s\), expected 2"):
        edgegen.convert(VAESpec(encoder=one_output, decoder=decoder, latent_shape=(6,), image_shape=(1, 8, 8)),
                        tmp_path / "a")
    with pytest.raises(ConversionError, match=r"output 'mean' is \[2, 6\] at batch 2, expected \[2, 5\]; the contract "
                                              r"is mean, logvar = encoder\(x\)"):
        edgegen.convert(VAESpec(encoder=encoder, decoder=decoder, latent_shape=(5,), image_shape=(1, 8, 8)),
                        tmp_path / "b")
    encoder, decoder, _ = vqvae()
    with pytest.raises(ConversionError, match=r"encoder returned \[2, 4, 4, 4\] .*codebook of 16 codes of dimension 5"):
        edgegen.convert(VQVAESpec(encoder=encoder, decoder=decoder, codebook=torch.randn(16, 5), image_shape=(3, 8, 8)),
                        tmp_path / "c")


@pytest.mark.parametrize("make, message", [
    (lambda: GANSpec(generator=dcgan(), latent_dim=0), "latent_dim must be a positive integer"),
    (lambda: GANSpec(generator="G", latent_dim=8), "generator must be a torch.nn.Module, got str"),
    (lambda: GANSpec(generator=dcgan(), latent_dim=8, value_range=(1, -1)), "value_range must be"),
    (lambda: GANSpec(generator=dcgan(), latent_dim=8, defaults={"truncation": 0.5}),
     "defaults truncation needs a mapping network"),
    (lambda: GANSpec(generator=dcgan(), latent_dim=8, defaults={"psi": 0.5}), "unknown key 'psi'"),
    (lambda: GANSpec(generator=stylegan()[1], mapping=stylegan()[0], latent_dim=8, defaults={"truncation": 2}),
     "defaults truncation must be in [0, 1]"),
    (lambda: VAESpec(encoder=vae()[0], decoder=vae()[1], latent_shape=(6,), image_shape=(1, 8, 8),
                     decoder_output="logits"), "value_range must be (0, 1)"),
    (lambda: VAESpec(encoder=vae()[0], decoder=vae()[1], latent_shape=(), image_shape=(2, 8, 8)),
     "latent_shape must be a non-empty tuple"),
    (lambda: VAESpec(encoder=vae()[0], decoder=vae()[1], latent_shape=(6,), image_shape=(2, 8, 8)),
     "1 or 3 channels"),
    (lambda: VQVAESpec(encoder=vqvae()[0], decoder=vqvae()[1], codebook="quantizer.embed", image_shape=(3, 8, 8)),
     "must start with 'encoder.' or 'decoder.'"),
    (lambda: VQVAESpec(encoder=vqvae()[0], decoder=vqvae()[1], codebook="decoder.codes", image_shape=(3, 8, 8)),
     "Sequential has no attribute 'codes'"),
    (lambda: VQVAESpec(encoder=vqvae()[0], decoder=vqvae()[1], codebook=torch.zeros(16), image_shape=(3, 8, 8)),
     "codebook must be a float tensor [K, D]"),
])
def test_bad_specs_are_one_line_errors(make, message) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_codebook_from_an_attribute_path_to_an_embedding() -> None:
    encoder, net, codebook = vqvae()
    decoder = nn.Module()
    decoder.net, decoder.quantizer = net, nn.Module()
    decoder.quantizer.embedding = nn.Embedding.from_pretrained(codebook)
    spec = VQVAESpec(encoder=encoder, decoder=decoder, codebook="decoder.quantizer.embedding", image_shape=(3, 8, 8))
    assert torch.equal(spec.codebook_tensor(), codebook)


def test_int4_is_refused_for_image_models(tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="int4 .* is for LMs"):
        edgegen.convert(vqvae_spec(), tmp_path / "a", quantize="int4")
    assert not (tmp_path / "a").exists()
