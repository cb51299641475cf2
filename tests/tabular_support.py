"""Tiny fitted ctgan models, and ctgan's ``sample`` with its random draws recorded, for the tabular tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

DISCRETE = ["color", "flag", "grade", "size"]


def table(rows: int = 240, seed: int = 0) -> Any:
    """A small mixed table: a bimodal float, an int, strings, booleans, ints and a string column with a null."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    bimodal = np.where(rng.random(rows) < 0.4, rng.normal(-3, 0.5, rows), rng.normal(4, 1.5, rows))
    size = rng.choice(["small", "large", None], rows, p=[0.5, 0.4, 0.1])
    return pd.DataFrame({"x": bimodal, "age": rng.integers(18, 80, rows),
                         "color": rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2]),
                         "flag": rng.choice([True, False], rows), "grade": rng.choice([1, 2, 3, 4], rows),
                         "size": size})


def fit(kind: str, epochs: int = 4, seed: int = 0) -> Any:
    """A CTGAN or TVAE fitted for a few epochs on :func:`table` (seeded: the same weights every run)."""
    import torch
    from ctgan import CTGAN, TVAE

    torch.manual_seed(seed)
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "ctgan":
            model = CTGAN(epochs=epochs, batch_size=60, pac=10, generator_dim=(24, 24), discriminator_dim=(24,),
                          embedding_dim=16)
        else:
            model = TVAE(epochs=epochs, batch_size=60, compress_dims=(24,), decompress_dims=(24, 24), embedding_dim=8)
        model.fit(table(), discrete_columns=DISCRETE)
    return model


@contextlib.contextmanager
def recorded(model: Any) -> Iterator[dict[str, list]]:
    """Run ctgan's own ``sample`` inside this block; the dict gets its draws: ``z`` (each torch.normal),
    ``cond`` (each sample_original_condvec), ``gumbel`` (each Gumbel-softmax's noise, per span), ``eps``
    (TVAE's np.random.normal noise, per continuous column).  Gumbel-softmax is recomputed here from its own
    noise exactly as torch's ``gumbel_softmax`` does (soft, tau 0.2)."""
    import torch
    from torch.nn import functional

    draws: dict[str, list] = {"z": [], "cond": [], "gumbel": [], "eps": []}
    normal, gumbel_softmax, np_normal = torch.normal, functional.gumbel_softmax, np.random.normal

    def record_normal(*args: Any, **kwargs: Any) -> Any:
        out = normal(*args, **kwargs)
        draws["z"].append(out.detach().numpy().copy())
        return out

    def record_gumbel(logits: Any, tau: float = 1, hard: bool = False, eps: float = 1e-10, dim: int = -1) -> Any:
        assert not hard and dim == -1
        g = -torch.empty_like(logits).exponential_().log()
        draws["gumbel"].append(g.numpy().copy())
        return ((logits + g) / tau).softmax(dim)

    def record_np_normal(loc: Any, scale: Any = 1.0, size: Any = None) -> Any:
        e = np.random.standard_normal(np.shape(loc))
        draws["eps"].append(e)
        return loc + scale * e

    sampler = getattr(model, "_data_sampler", None)
    original = sampler.sample_original_condvec if sampler is not None else None

    def record_cond(batch: int) -> Any:
        out = original(batch)
        draws["cond"].append(out.copy())
        return out

    torch.normal, functional.gumbel_softmax, np.random.normal = record_normal, record_gumbel, record_np_normal
    if sampler is not None:
        sampler.sample_original_condvec = record_cond
    try:
        yield draws
    finally:
        torch.normal, functional.gumbel_softmax, np.random.normal = normal, gumbel_softmax, np_normal
        if sampler is not None:
            del sampler.sample_original_condvec


def ctgan_noise(draws: dict[str, list], spans_per_block: int) -> dict[str, np.ndarray | None]:
    """The recorded CTGAN draws as the runtime's float path takes them: z, cond, gumbel [rows, softmax_dim]."""
    blocks = len(draws["z"])
    gumbel = [np.concatenate(draws["gumbel"][i * spans_per_block:(i + 1) * spans_per_block], axis=1)
              for i in range(blocks)]
    return {"z": np.concatenate(draws["z"]), "cond": np.concatenate(draws["cond"]) if draws["cond"] else None,
            "gumbel": np.concatenate(gumbel)}


def same_rows(ours: Any, frame: Any, discrete: list[str], rtol: float = 1e-5) -> None:
    """Our Table against ctgan's DataFrame: categories (and dtypes) exactly, continuous columns to ``rtol``."""
    assert ours.columns == list(frame.columns)
    for name in ours.columns:
        a, b = ours[name], frame[name].to_numpy()
        if name in discrete:
            assert [None if x is None or x != x else x for x in a.tolist()] == \
                   [None if x is None or x != x else x for x in b.tolist()], name
        else:
            assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol,
                                       atol=rtol * float(np.abs(b).max()), err_msg=name)
