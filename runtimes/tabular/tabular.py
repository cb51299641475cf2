"""The tabular runtime: CTGAN and TVAE rows, sampled as ``ctgan``'s ``sample`` does.  No torch, no pandas.

Graphs (written by :mod:`edgegen.converters.tabular.convert`)::

    ctgan:  generator  z [B, embedding_dim] float32, cond [B, condition_dim] float32 -> logits [B, data_dim]
            (B a multiple of block_rows: each BatchNorm normalizes over its block of rows, as ctgan's generator
            runs in training mode while sampling; no cond input when the table has no discrete column)
    tvae:   decoder    z [B, embedding_dim] float32                                -> logits [B, data_dim]

Sampling, one block of ``block_rows`` rows at a time.  Block ``k`` draws from its own stream,
``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))``, so blocks are drawn in parallel
threads, ``sample_rows(n, seed=s)`` is a prefix of ``sample_rows(n + k, seed=s)``, and rows ``first_row`` on
(``sample_rows(n, seed=s, first_row=i)``, i a multiple of ``block_rows``) are the same rows wherever they are
drawn: a batch job's shards together equal one serial call.  Per block, in this order:

- ctgan: z ~ N(0, I); unless conditioned, each row's condition vector: one category of one discrete column,
  drawn with the training frequencies over all discrete columns' categories (``sample_original_condvec``);
  Gumbel noise for every softmax span.  Activations: tanh on each alpha, ``(logit + gumbel) / 0.2`` on the
  spans (the argmax of ctgan's Gumbel-softmax is the argmax of that).
- tvae: z ~ N(0, I); one N(0, 1) per continuous column and row, scaled by the decoder's sigma and added to
  ``tanh(alpha)`` (ctgan's ``inverse_transform(data, sigmas)``).

Then :func:`edgegen.runtimes.tabular.transform.inverse_transform` turns the matrix into columns.

Conditioning (ctgan only): every row's condition vector names ``column=value``.  ctgan 0.12's own ``sample``
sets the one-hot at the value's index counted from the first discrete column whichever column is named
(``_discrete_column_matrix_st`` is never filled: sdv-dev/CTGAN#169, #273), so it conditions on the named column
only when that is the first discrete one; edgegen sets the named column's own one-hot (the fix proposed in
sdv-dev/CTGAN#236): the same rows as ctgan for the first discrete column, the intended ones for the others.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.latents import rng_for
from edgegen.runtimes.memory import check_count_fits
from edgegen.runtimes.session import SessionConfig
from edgegen.runtimes.tabular.table import Table
from edgegen.runtimes.tabular.transform import GUMBEL_TAU, TabularSampler, inverse_transform, spans

__all__ = ["Tabular"]

#: rows handed to ONNX Runtime at once (whole blocks): enough to amortize a run, few enough to stay in cache
#: (measured: 2,000-4,000 rows per run are fastest for ctgan's default sizes; 32,000 take 1.5x as long)
ROWS_PER_RUN = 1 << 12
#: the most rows one call may ask for (a count, not memory: memory is checked separately)
MAX_ROWS = 1 << 31


def block_rng(entropy: int, block: int) -> np.random.Generator:
    """Block ``block``'s own stream of the seed whose SeedSequence entropy is ``entropy``."""
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(block,)))


class Tabular:
    """A loaded tabular artifact: ``sample_rows(n, seed=..., condition=...) -> Table``."""

    family = "tabular"

    def __init__(self, artifact: Artifact, provider: str, sampler: TabularSampler, session: Any) -> None:
        self.artifact, self.provider, self.sampler, self.session = artifact, provider, sampler, session
        self.columns = [c.name for c in sampler.columns]
        s = sampler
        alpha, soft = [], []                                                 # matrix columns by activation
        for column, start in spans(s):
            if column.kind == "continuous":
                alpha.append(start)
                soft.extend(range(start + 1, start + column.width))
            else:
                soft.extend(range(start, start + column.width))
        self._alpha, self._soft = np.asarray(alpha, dtype=np.int64), np.asarray(soft, dtype=np.int64)
        discrete = [c for c in s.columns if c.kind == "discrete"]
        self._cond_start = {}                                                # discrete column -> cond offset
        offset = 0
        for c in discrete:
            self._cond_start[c.name] = offset
            offset += len(c.categories)
        if s.model == "ctgan" and discrete:   # sample_original_condvec: all categories' probabilities, normalized
            flat = np.concatenate([np.asarray(p, dtype=np.float64) for p in s.condition_probabilities])
            flat = flat[flat != 0]
            self._cond_p = flat / flat.sum()
            self._cond_index = np.flatnonzero(np.concatenate([np.asarray(p) for p in s.condition_probabilities]))
        else:
            self._cond_p = self._cond_index = None

    @property
    def part_rows(self) -> int:
        """Rows of one ONNX Runtime run (whole blocks).  Parts of a seed's rows drawn with ``first_row`` at multiples
        of this are bit-identical to one call's; at other multiples of ``block_rows`` ctgan's BatchNorm statistics,
        reduced over a run's blocks together, may differ in the last float bits."""
        return max(1, ROWS_PER_RUN // self.sampler.block_rows) * self.sampler.block_rows

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Tabular:
        from edgegen.strict import from_json

        m = artifact.manifest
        fix = "re-convert the model"
        sampler = from_json(TabularSampler, m.sampler, where="edgegen.json.sampler", error=ManifestError, fix=fix)
        role = "generator" if sampler.model == "ctgan" else "decoder"
        if role not in m.graphs:
            raise ManifestError(f"{artifact.root}: this {sampler.model} artifact lacks its {role!r} graph (it has "
                                f"{sorted(m.graphs)}); {fix}")
        graph = m.graphs[role]
        for name, width in (("z", sampler.embedding_dim), ("logits", sampler.data_dim),
                            *((("cond", sampler.condition_dim),) if sampler.condition_dim else ())):
            tensor = graph.tensor(name)
            if tensor is None or not tensor.fits((width,)):
                raise ManifestError(f"{artifact.root}: the {role} graph should declare {name!r} as [batch, {width}] "
                                    f"(from edgegen.json.sampler), it declares "
                                    f"{None if tensor is None else list(tensor.shape)}; {fix}")
        if ("cond" in {t.name for t in graph.inputs}) != bool(sampler.condition_dim):
            raise ManifestError(f"{artifact.root}: the generator takes a 'cond' input exactly when the table has a "
                                f"discrete column; {fix}")
        provider, sessions = open_sessions(artifact, config)
        return cls(artifact, provider, sampler, sessions[role])

    # -- the family contract ------------------------------------------------------------------------------------
    def sample_rows(self, n: int, *, seed: int | None = None, condition: Mapping[str, Any] | None = None,
                    first_row: int = 0) -> Table:
        """``n`` rows as a :class:`Table` (columns in the training data's order and dtypes); same seed, same rows.

        ``condition``: ``{column: value}`` for one discrete column (ctgan): every row's condition vector names
        that value, which makes it far more likely, not certain (as in ctgan).  ``first_row`` (a multiple of
        ``block_rows``): start at that row of the seed's rows, for jobs that draw them in parts."""
        n = _check_rows(n)
        bs = self.sampler.block_rows
        if isinstance(first_row, bool) or not isinstance(first_row, (int, np.integer)) or first_row < 0 or \
                first_row % bs or first_row > MAX_ROWS:
            raise InvalidArgumentError(f"first_row must be a non-negative multiple of the model's block of {bs} rows, "
                                       f"got {first_row!r}")
        cond_row = self._condition(condition)
        rng_for(seed)                                                        # checks the seed
        entropy = np.random.SeedSequence(seed).entropy
        self._check_memory(n)
        first, blocks = first_row // bs, -(-n // bs)
        per_run = self.part_rows // bs
        runs = [range(start, min(start + per_run, first + blocks)) for start in range(first, first + blocks, per_run)]
        parts, alphas = [], []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:   # numpy fills release the GIL
            def draws(ks: range) -> list:
                return [pool.submit(self.draw_block, block_rng(entropy, k), cond_row) for k in ks]
            pending = draws(runs[0])
            for i in range(len(runs)):
                noise = [f.result() for f in pending]
                if i + 1 < len(runs):   # the next run's draws, while ONNX Runtime runs this one
                    pending = draws(runs[i + 1])
                stacked = {key: None if noise[0][key] is None else np.concatenate([b[key] for b in noise])
                           for key in noise[0]}
                act, alpha = self._activate(**stacked)
                parts.append(act)
                alphas.append(alpha)
        join = lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs)   # noqa: E731
        matrix, alpha = join(parts)[:n], None if alphas[0] is None else join(alphas)[:n]
        return Table(inverse_transform(self.sampler, matrix, alpha), {c.name: c.dtype for c in self.sampler.columns})

    def sample(self, n: int, *, seed: int | None = None, condition: Mapping[str, Any] | None = None,
               first_row: int = 0) -> Table:
        """The same as :meth:`sample_rows` (the name other families use)."""
        return self.sample_rows(n, seed=seed, condition=condition, first_row=first_row)

    # -- the float path: explicit noise ----------------------------------------------------------------------------
    def draw_block(self, rng: np.random.Generator, cond_row: np.ndarray | None = None) -> dict[str, Any]:
        """One block's draws, in the documented order: ``z`` [block_rows, embedding_dim], then ctgan's ``cond``
        [block_rows, condition_dim] (None when the table has no discrete column) and ``gumbel`` [block_rows,
        softmax_dim], or tvae's ``eps`` [block_rows, continuous columns]."""
        s, bs = self.sampler, self.sampler.block_rows
        z = rng.standard_normal((bs, s.embedding_dim), dtype=np.float32)
        if s.model == "tvae":
            return {"z": z, "cond": None, "gumbel": None,
                    "eps": rng.standard_normal((bs, len(self._alpha)))}
        cond = None
        if s.condition_dim:
            if cond_row is not None:
                cond = np.broadcast_to(cond_row, (bs, s.condition_dim)).copy()
            else:
                cond = np.zeros((bs, s.condition_dim), dtype=np.float32)
                cond[np.arange(bs), self._cond_index[rng.choice(len(self._cond_p), bs, p=self._cond_p)]] = 1
        # -log(Exp(1)), drawn in float64: a float32 exponential is 0 often enough (about 1 in 10**7) to give inf
        gumbel = (-np.log(rng.standard_exponential((bs, len(self._soft))))).astype(np.float32)
        return {"z": z, "cond": cond, "gumbel": gumbel, "eps": None}

    def logits(self, z: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        """The graph's output [B, data_dim] for z [B, embedding_dim] (and ctgan's cond); B a multiple of
        block_rows for ctgan (its BatchNorm normalizes over each block)."""
        s = self.sampler
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != s.embedding_dim or len(z) == 0:
            raise InvalidArgumentError(f"z must be [rows, {s.embedding_dim}], got shape {list(z.shape)}")
        feed = {"z": z}
        if s.model == "ctgan":
            if len(z) % s.block_rows:
                raise InvalidArgumentError(f"ctgan's generator runs on whole blocks of {s.block_rows} rows (its "
                                           f"BatchNorm normalizes over each block); got {len(z)} rows")
            if s.condition_dim:
                if cond is None or np.shape(cond) != (len(z), s.condition_dim):
                    raise InvalidArgumentError(f"cond must be [rows, {s.condition_dim}], got "
                                               f"{None if cond is None else list(np.shape(cond))}")
                feed["cond"] = np.ascontiguousarray(cond, dtype=np.float32)
        (out,) = self.session.run(["logits"], feed)
        return out

    def activate(self, z: np.ndarray, cond: np.ndarray | None = None, gumbel: np.ndarray | None = None,
                 eps: np.ndarray | None = None) -> np.ndarray:
        """The activated matrix from explicit noise: ctgan float32 ``tanh`` alphas and ``(logit + gumbel) / tau``
        spans; tvae ``tanh`` of everything, float64, with ``sigma * eps`` added to the alphas."""
        act, alpha = self._activate(z, cond, gumbel, eps)
        if alpha is None:
            return act
        act = act.astype(np.float64)
        act[:, self._alpha] = alpha
        return act

    def _activate(self, z: np.ndarray, cond: np.ndarray | None = None, gumbel: np.ndarray | None = None,
                  eps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the activated matrix in float32, tvae's noisy alphas in float64 [rows, continuous columns] or None)."""
        out = self.logits(z, cond)
        if self.sampler.model == "tvae":
            act = np.tanh(out, out=out)
            if not len(self._alpha):
                return act, None
            if eps is None or np.shape(eps) != (len(out), len(self._alpha)):
                raise InvalidArgumentError(f"eps must be [rows, {len(self._alpha)}]")
            return act, act[:, self._alpha].astype(np.float64) + np.asarray(self.sampler.sigmas) * eps
        if gumbel is None or np.shape(gumbel) != (len(out), len(self._soft)):
            raise InvalidArgumentError(f"gumbel must be [rows, {len(self._soft)}]")
        gumbel = np.asarray(gumbel, dtype=np.float32)
        act, used, tau = out, 0, np.float32(GUMBEL_TAU)      # in place, span by span (slices, not fancy indexing)
        for column, start in spans(self.sampler):
            if column.kind == "continuous":
                np.tanh(act[:, start], out=act[:, start])
                start, width = start + 1, column.width - 1
            else:
                width = column.width
            span = act[:, start:start + width]
            span += gumbel[:, used:used + width]
            span /= tau
            used += width
        return act, None

    def to_table(self, matrix: np.ndarray) -> Table:
        """Rows from an activated matrix (:meth:`activate`)."""
        return Table(inverse_transform(self.sampler, matrix), {c.name: c.dtype for c in self.sampler.columns})

    # -- checks ------------------------------------------------------------------------------------------------------
    def condition_vector(self, condition: Mapping[str, Any]) -> np.ndarray:
        """ctgan's condition vector [condition_dim] for ``{column: value}``."""
        row = self._condition(condition)
        if row is None:
            raise InvalidArgumentError("give a condition {column: value}")
        return row

    def _condition(self, condition: Mapping[str, Any] | None) -> np.ndarray | None:
        if not condition:
            return None
        s = self.sampler
        if s.model != "ctgan":
            raise InvalidArgumentError("this tvae model takes no condition (TVAE samples unconditionally); drop "
                                       "--condition")
        if not isinstance(condition, Mapping) or len(condition) != 1:
            raise InvalidArgumentError("a condition names one discrete column and one of its values: "
                                       "{column: value} (--condition column=value)")
        (name, value), = condition.items()
        column = next((c for c in s.columns if c.name == name), None)
        if column is None:
            raise InvalidArgumentError(f"no column {name!r}; the columns: {_listed(self.columns)}")
        if column.kind != "discrete":
            discrete = [c.name for c in s.columns if c.kind == "discrete"]
            raise InvalidArgumentError(f"column {name!r} is continuous; ctgan conditions only on a discrete column "
                                       f"({_listed(discrete) or 'this table has none'})")
        index = _category_index(column.categories, value)
        if index is None:
            raise InvalidArgumentError(f"column {name!r} has no value {value!r}; its values: "
                                       f"{_listed([str(c) for c in column.categories])}")
        row = np.zeros(s.condition_dim, dtype=np.float32)
        row[self._cond_start[name] + index] = 1
        return row

    def _check_memory(self, n: int) -> None:
        """The float32 matrix, noise and graph output per row, plus the float64 columns and their copies."""
        s = self.sampler
        rows = -(-n // s.block_rows) * s.block_rows
        per_row = 4 * (s.embedding_dim + s.condition_dim + 3 * s.data_dim) + 24 * len(s.columns)
        check_count_fits(rows, per_row, "sampling", "rows")


def _check_rows(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_ROWS:
        raise InvalidArgumentError(f"the number of rows must be an integer from 1 to {MAX_ROWS:,}, got {n!r}")
    return int(n)


def _category_index(categories: tuple[Any, ...], value: Any) -> int | None:
    """Where ``value`` is among the categories: equal, or (a string from the command line) equal to its text."""
    for i, c in enumerate(categories):
        if type(c) is type(value) and c == value:
            return i
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for i, c in enumerate(categories):
            if isinstance(c, (int, float)) and not isinstance(c, bool) and c == value:
                return i
    if isinstance(value, str):
        for i, c in enumerate(categories):
            if str(c) == value or (isinstance(c, bool) and value.lower() == str(c).lower()) or \
                    (c is None and value.lower() in ("", "null", "none", "nan")):
                return i
        try:   # "3" for 3.0
            number = float(value)
        except ValueError:
            return None
        for i, c in enumerate(categories):
            if isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(number) and c == number:
                return i
    return None


def _listed(items: list[str], most: int = 12) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")
