"""In-place random fills of a fresh tensor (rosinality's ``image.new_empty(b, 1, h, w).normal_()``,
``uniform_(from, to)``, ``bernoulli_(p)``) lifted into noise inputs: the artifact against PyTorch fed
the same noise at batch 1 and 3, and the runtime's fills distributed as PyTorch's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from image_support import LATENT

torch = pytest.importorskip("torch")

import edgegen  # noqa: E402
from edgegen.converters.image.spec import GANSpec  # noqa: E402

#: fp32 agreement with PyTorch (the converter's own bar, export.graph.ATOL)
ATOL = 1e-4
nn = torch.nn


class Filler(nn.Module):
    """z [B, latent] -> tanh(fc(z)) [B, 3, 4, 4] + a fill of new_empty(B, 1, 4, 4) (broadcast over channels)."""

    def __init__(self, method: str, args: tuple, chained: bool) -> None:
        super().__init__()
        self.fc, self.method, self.args, self.chained = nn.Linear(LATENT, 3 * 16), method, args, chained

    def forward(self, z):
        h = torch.tanh(self.fc(z)).view(-1, 3, 4, 4)
        batch, _, height, width = h.shape
        if self.chained:                                            # rosinality's form: the fill's result
            noise = getattr(h.new_empty(batch, 1, height, width), self.method)(*self.args)
        else:                                                       # the fill as a statement, its tensor used
            noise = torch.empty(batch, 1, height, width)
            getattr(noise, self.method)(*self.args)
        return h + noise


def fed(monkeypatch, method: str, arrays: list[np.ndarray]) -> None:
    """Make Tensor.<method> fill from the given N(0, 1) / U[0, 1) arrays, in order (independent of edgegen)."""
    def fill(self, *args):
        n = torch.from_numpy(arrays.pop(0))
        value = {"normal_": lambda mean=0.0, std=1.0: mean + std * n,
                 "uniform_": lambda low=0.0, high=1.0: low + (high - low) * n,
                 "bernoulli_": lambda p=0.5: (n < p).float()}[method](*args)
        self.copy_(value)
        return self

    monkeypatch.setattr(torch.Tensor, method, fill)


CASES = [("normal_", (), True, "normal"), ("uniform_", (-1.0, 1.0), True, "uniform"),
         ("normal_", (0.5, 2.0), True, "normal"), ("normal_", (0.5, 2.0), False, "normal"),
         ("bernoulli_", (0.3,), False, "uniform")]


@pytest.mark.parametrize("method, args, chained, distribution", CASES,
                         ids=[f"{m}{a}{'' if c else '-statement'}" for m, a, c, _ in CASES])
def test_fill_of_a_fresh_tensor_is_lifted(tmp_path, monkeypatch, method, args, chained, distribution) -> None:
    torch.manual_seed(0)
    module = Filler(method, args, chained).eval()
    path = edgegen.convert(GANSpec(generator=module, latent_dim=LATENT), tmp_path / "a")
    m = json.loads((path / "edgegen.json").read_text())
    assert m["sampler"]["noise"] == {"generator": [
        {"name": "noise.0", "shape": ["batch", 1, 4, 4], "distribution": distribution}]}
    assert max(m["validation"]["graphs_batch_1"].values()) <= ATOL and m["validation"]["samples_max_abs_error"] <= ATOL
    gan = edgegen.load(path, provider="cpu", threads=1)
    for batch in (1, 3):                                                  # neither is the export batch (2)
        rng = np.random.default_rng(batch)
        z, noise = gan.latents(batch, rng), gan.draw_noise(batch, rng)
        with monkeypatch.context() as patch, torch.no_grad():
            fed(patch, method, [noise["generator"]["noise.0"]])
            ref = module(torch.from_numpy(z)).numpy()
        assert np.abs(gan.generate(z, noise=noise) - ref).max() <= ATOL
    # the runtime's fills (output minus the noise-free part) against PyTorch's own fill of as many values
    z = gan.latents(512, np.random.default_rng(7))
    with torch.no_grad():
        clean = torch.tanh(module.fc(torch.from_numpy(z))).view(-1, 3, 4, 4).numpy()
    ours = (gan.generate(z, rng=np.random.default_rng(8)) - clean)[:, 0]          # [512, 4, 4]
    theirs = getattr(torch.empty(512, 4, 4), method)(*args, generator=torch.Generator().manual_seed(9)).numpy()
    tol = 0.05 * theirs.std()                     # 5 % of the spread: > 3 standard errors for 8192 values
    assert abs(ours.mean() - theirs.mean()) < tol and abs(ours.std() - theirs.std()) < tol
    assert ours.min() >= theirs.min() - 0.5 * theirs.std() and ours.max() <= theirs.max() + 0.5 * theirs.std()
    if method != "normal_":                                                       # bounded: [low, high), {0, 1}
        low, high = (0.0, 1.0) if method == "bernoulli_" else args
        assert ours.min() >= low - 1e-6 and ours.max() <= high + 1e-6
    if method == "bernoulli_":
        assert set(np.unique(np.round(ours, 5))) <= {0.0, 1.0}
