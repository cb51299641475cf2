"""Tiny image models (random weights, a few thousand parameters) for the gan, vae and vq-vae tests,
and the fixtures that convert them once per test module.

Importable as ``image_support`` because pytest puts tests/ (the conftest's folder) on sys.path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LATENT = 8          # GAN z size
CLASSES = 5         # conditional GAN
IMAGE = (3, 8, 8)   # GAN images [C, H, W]


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


def dcgan(seed: int = 0, latent: int = LATENT):
    """DCGAN generator: z [B, latent] -> ConvTranspose2d + BatchNorm (eval) + ReLU -> tanh image [B, 3, 8, 8]."""
    torch = _torch()
    nn = torch.nn

    class DCGAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.ConvTranspose2d(latent, 16, 4, 1, 0, bias=False), nn.BatchNorm2d(16), nn.ReLU(),   # [B, 16, 4, 4]
                nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Tanh())                                      # [B, 3, 8, 8]

        def forward(self, z):
            return self.net(z[:, :, None, None])                                                     # z [B, latent]

    torch.manual_seed(seed)
    model = DCGAN()
    with torch.no_grad():   # non-trivial running statistics, so eval-mode BatchNorm matters
        model.net[1].running_mean.uniform_(-0.5, 0.5)
        model.net[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def conditional_gan(seed: int = 0):
    """Class-conditional generator: label embedding times z -> Linear -> view -> conv -> [B, 1, 8, 8]."""
    torch = _torch()
    nn = torch.nn

    class CondGen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(CLASSES, LATENT)
            self.fc = nn.Linear(LATENT, 8 * 4 * 4)
            self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 1, 3, padding=1), nn.Tanh())

        def forward(self, z, labels):                                  # z [B, latent], labels [B] int64
            h = self.fc(z * self.embed(labels))                        # [B, 128]
            return self.up(h.view(h.shape[0], 8, 4, 4))                # [B, 1, 8, 8]

    torch.manual_seed(seed)
    return CondGen().eval()


def stylegan(seed: int = 0, w_avg: bool = False):
    """StyleGAN-like: mapping MLP z -> w [B, 16]; synthesis from a constant with per-layer style
    modulation and noise injection through torch.randn_like -> [B, 3, 8, 8]."""
    torch = _torch()
    nn = torch.nn

    class Mapping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(LATENT, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16))
            if w_avg:
                self.register_buffer("w_avg", torch.randn(16) * 0.1)

        def forward(self, z):
            z = z * torch.rsqrt((z * z).mean(1, keepdim=True) + 1e-8)   # pixel norm
            return self.net(z)                                         # w [B, 16]

    class StyleLayer(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.affine, self.conv = nn.Linear(16, cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.noise_strength = nn.Parameter(torch.full((1, cout, 1, 1), 0.3))

        def forward(self, x, w):
            x = self.conv(x * (1 + self.affine(w))[:, :, None, None])  # modulated input [B, cout, h, w]
            x = x + self.noise_strength * torch.randn_like(x[:, :1])   # noise [B, 1, h, w]
            return nn.functional.leaky_relu(x, 0.2)

    class Synthesis(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.const = nn.Parameter(torch.randn(1, 8, 4, 4))
            self.b4, self.b8 = StyleLayer(8, 8), StyleLayer(8, 8)
            self.to_rgb = nn.Conv2d(8, 3, 1)

        def forward(self, w):                                          # w [B, 16]
            x = self.b4(self.const.expand(w.shape[0], -1, -1, -1), w)  # [B, 8, 4, 4]
            x = self.b8(nn.functional.interpolate(x, scale_factor=2.0), w)   # [B, 8, 8, 8]
            return torch.tanh(self.to_rgb(x))

    torch.manual_seed(seed)
    return Mapping().eval(), Synthesis().eval()


def vae(seed: int = 0, noisy: bool = False, logits: bool = False):
    """Conv VAE on [1, 8, 8] images: encoder -> (mean, logvar) [B, 6]; decoder -> values in [-1, 1]
    (or Bernoulli logits); ``noisy``: the decoder adds 0.05 * torch.randn_like noise to its output."""
    torch = _torch()
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Flatten())   # [B, 128]
            self.mean, self.logvar = nn.Linear(128, 6), nn.Linear(128, 6)

        def forward(self, x):
            h = self.conv(x)
            return self.mean(h), self.logvar(h)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 128)
            self.deconv = nn.ConvTranspose2d(8, 1, 4, 2, 1)

        def forward(self, z):
            h = torch.relu(self.fc(z)).view(-1, 8, 4, 4)
            out = self.deconv(h)                                         # [B, 1, 8, 8]
            if logits:
                return out * 3
            out = torch.tanh(out)
            return out + 0.05 * torch.randn_like(out) if noisy else out

    torch.manual_seed(seed)
    return Encoder().eval(), Decoder().eval()


def vqvae(seed: int = 0):
    """VQ-VAE on [3, 8, 8] images: encoder -> z_e [B, 4, 4, 4]; codebook [16, 4]; decoder -> [B, 3, 8, 8]."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    decoder = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1),
                            nn.Tanh()).eval()
    codebook = torch.randn(16, 4)
    return encoder, decoder, codebook


# -- specs and converted artifacts ------------------------------------------------------------------------
def dcgan_spec(**kw):
    from edgegen import GANSpec

    return GANSpec(generator=dcgan(), latent_dim=LATENT, **kw)


def conditional_spec(**kw):
    from edgegen import GANSpec

    return GANSpec(generator=conditional_gan(), latent_dim=LATENT, num_classes=CLASSES, **kw)


def stylegan_spec(**kw):
    from edgegen import GANSpec

    mapping, synthesis = stylegan()
    return GANSpec(generator=synthesis, mapping=mapping, latent_dim=LATENT, **kw)


def vae_spec(**kw):
    from edgegen import VAESpec

    encoder, decoder = vae(noisy=kw.pop("noisy", False), logits=kw.get("decoder_output") == "logits")
    return VAESpec(encoder=encoder, decoder=decoder, latent_shape=(6,), image_shape=(1, 8, 8), **kw)


def vqvae_spec(**kw):
    from edgegen import VQVAESpec

    encoder, decoder, codebook = vqvae()
    return VQVAESpec(encoder=encoder, decoder=decoder, codebook=codebook, image_shape=(3, 8, 8), **kw)


def convert(spec, dest: Path) -> Path:
    import edgegen

    return edgegen.convert(spec, dest)


def _artifact(name: str, factory):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        pytest.importorskip("torch")
        return convert(factory(), tmp_path_factory.mktemp(name) / "artifact")
    return fixture


dcgan_artifact = _artifact("dcgan", dcgan_spec)
conditional_artifact = _artifact("conditional", conditional_spec)
stylegan_artifact = _artifact("stylegan", lambda: stylegan_spec(defaults={"truncation": 0.7}))
vae_artifact = _artifact("vae", lambda: vae_spec(noisy=True, defaults={"temperature": 0.8}))
vqvae_artifact = _artifact("vqvae", vqvae_spec)
