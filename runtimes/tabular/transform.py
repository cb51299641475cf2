"""The tabular family's data transform, as data: what the manifest's ``sampler`` section holds, and its inverse.

CTGAN and TVAE (the ``ctgan`` package, Xu et al. 2019, "Modeling Tabular data using Conditional GAN") do not
generate rows: they generate a matrix that ctgan's ``DataTransformer`` turns back into rows.  Per column, in
the table's order:

- **continuous** (mode-specific normalization): ``1 + K`` values, a scalar alpha in [-1, 1] (``tanh``) and
  the K valid components of a Bayesian GMM fitted to the column (``softmax``, sampled with Gumbel noise).  The
  row's value is ``clip(alpha, -1, 1) * 4 * std[k] + mean[k]`` for its component ``k`` (rdt's
  ``ClusterBasedNormalizer``), rounded to an integer for integer columns;
- **discrete**: one value per category (``softmax``); the row takes the category of the largest.

This module holds those fitted numbers (:class:`TabularSampler`, parsed strictly from the manifest) and
turns a generated matrix back into columns in numpy (:func:`inverse_transform`) exactly as ctgan 0.12 / rdt 2.0
do, operation for operation, so the same matrix gives the same rows.  No pandas, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgegen.manifest import MAX_COUNT, MAX_DIMENSION, count_problem
from edgegen.strict import FieldError, short

__all__ = ["Column", "TabularSampler", "inverse_transform", "DTYPES"]

#: rdt's ClusterBasedNormalizer.STD_MULTIPLIER: alpha in [-1, 1] spans 4 standard deviations of its component
STD_MULTIPLIER = 4
#: the temperature of ctgan's Gumbel-softmax (``_apply_activate``); argmax does not depend on it, but the
#: division is done in float32 as ctgan does, so that ties break the same way
GUMBEL_TAU = 0.2
#: the pandas dtypes a column may come back as (ctgan's final ``astype`` to the training data's dtypes)
DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
          "bool", "object", "category", "string")
#: the longest column name, and most columns / categories per column a manifest may declare
MAX_NAME_CHARS = 256
MAX_COLUMNS = 1 << 12
MAX_CATEGORIES = 1 << 16


@dataclass(frozen=True)
class Column:
    """One column of the table, and the numbers that invert its part of the matrix."""

    name: str
    kind: Literal["continuous", "discrete"]
    dtype: str                                      # the training data's pandas dtype: what the column comes back as
    means: tuple[float, ...] = ()                   # continuous: the valid GMM components' means
    stds: tuple[float, ...] = ()                    # ... and standard deviations (sqrt of the covariances)
    categories: tuple[Any, ...] = ()                # discrete: in the one-hot's order (str, int, float, bool, null)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME_CHARS:
            problems.append(("name", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters"))
        if self.dtype not in DTYPES:
            problems.append(("dtype", f"must be one of {', '.join(DTYPES)}, got {short(self.dtype)}"))
        if self.kind == "continuous":
            k = len(self.means)
            if not 1 <= k <= MAX_DIMENSION or len(self.stds) != k:
                problems.append(("means", f"means and stds must be equally long, 1 to {MAX_DIMENSION:,} components"))
            elif not all(math.isfinite(m) for m in self.means) or not all(math.isfinite(s) and s > 0 for s in self.stds):
                problems.append(("stds", "means must be finite and stds finite and positive"))
            if self.categories:
                problems.append(("categories", "a continuous column has no categories"))
            if self.dtype in ("object", "category", "string", "bool"):
                problems.append(("dtype", f"a continuous column cannot be {self.dtype}"))
        else:
            if not 1 <= len(self.categories) <= MAX_CATEGORIES:
                problems.append(("categories", f"must hold 1 to {MAX_CATEGORIES:,} categories"))
            elif not all(c is None or isinstance(c, (str, bool, int)) or (isinstance(c, float) and math.isfinite(c))
                         for c in self.categories):
                problems.append(("categories", "categories must be strings, numbers, booleans or null"))
            if self.means or self.stds:
                problems.append(("means", "a discrete column has no GMM components"))
        if problems:
            raise FieldError(*problems)

    @property
    def width(self) -> int:
        """How many matrix columns it takes: 1 + K components, or one per category."""
        return 1 + len(self.means) if self.kind == "continuous" else len(self.categories)


@dataclass(frozen=True)
class TabularSampler:
    """The ``sampler`` section of a tabular manifest."""

    model: Literal["ctgan", "tvae"]
    embedding_dim: int                              # z ~ N(0, I) [rows, embedding_dim]
    columns: tuple[Column, ...]
    #: ctgan: rows per generator run.  ctgan's ``sample`` runs its generator in training mode, so each
    #: BatchNorm normalizes over the rows of its block (issue sdv-dev/CTGAN#309); the graph does the same over
    #: every block of this many rows.  tvae: the batch size it was fitted with (no effect on the rows).
    block_rows: int
    #: ctgan: per discrete column, its categories' probabilities (the training frequencies, log-scaled when
    #: fitted with log_frequency): unconditioned rows draw their condition vector from them
    condition_probabilities: tuple[tuple[float, ...], ...] = ()
    #: tvae: the decoder's learned sigma at each continuous column's alpha (added as N(0, sigma) noise)
    sigmas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problems = [(key, p) for key, p in (
            ("embedding_dim", count_problem(self.embedding_dim, 1, MAX_DIMENSION)),
            ("block_rows", count_problem(self.block_rows, 1, MAX_COUNT))) if p]
        if not 1 <= len(self.columns) <= MAX_COLUMNS:
            problems.append(("columns", f"must hold 1 to {MAX_COLUMNS:,} columns"))
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            problems.append(("columns", "column names must be unique"))
        discrete = [c for c in self.columns if c.kind == "discrete"]
        continuous = [c for c in self.columns if c.kind == "continuous"]
        if self.model == "ctgan":
            probs = self.condition_probabilities
            if len(probs) != len(discrete) or any(len(p) != len(c.categories) for p, c in zip(probs, discrete)):
                problems.append(("condition_probabilities", "must hold one probability per category of each "
                                                            "discrete column"))
            elif not all(math.isfinite(x) and 0 <= x <= 1 for p in probs for x in p) or \
                    not all(abs(sum(p) - 1) < 1e-6 for p in probs):
                problems.append(("condition_probabilities", "each column's probabilities must lie in [0, 1] and "
                                                            "sum to 1"))
            if self.sigmas:
                problems.append(("sigmas", "a ctgan model has no sigmas"))
        else:
            if len(self.sigmas) != len(continuous) or not all(math.isfinite(s) and s >= 0 for s in self.sigmas):
                problems.append(("sigmas", "must hold one finite, non-negative sigma per continuous column"))
            if self.condition_probabilities:
                problems.append(("condition_probabilities", "a tvae model takes no condition"))
        if problems:
            raise FieldError(*problems)

    @property
    def data_dim(self) -> int:
        """Columns of the generated matrix."""
        return sum(c.width for c in self.columns)

    @property
    def condition_dim(self) -> int:
        """Width of ctgan's condition vector: every discrete column's categories, in order (0 for tvae)."""
        return sum(len(c.categories) for c in self.columns if c.kind == "discrete") if self.model == "ctgan" else 0

    @property
    def softmax_dim(self) -> int:
        """Matrix columns sampled through the Gumbel-softmax (components and categories)."""
        return sum(c.width - (c.kind == "continuous") for c in self.columns)


def spans(sampler: TabularSampler) -> list[tuple[Column, int]]:
    """Each column with where its part of the matrix starts."""
    out, start = [], 0
    for column in sampler.columns:
        out.append((column, start))
        start += column.width
    return out


def inverse_transform(sampler: TabularSampler, data: np.ndarray,
                      alphas: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns from the activated matrix ``data`` [rows, data_dim] (float32 as ctgan's generator gives it, or
    float64 where TVAE's noise was added): ``{name: array}`` in the table's order, each in its column's dtype
    (object arrays of Python values for object, category and string columns).

    Continuous: ctgan's ``_inverse_transform_continuous`` then rdt's ``ClusterBasedNormalizer`` (clip, the
    component from the argmax, ``alpha * 4 * std + mean``, round for integer dtypes); discrete: rdt's
    ``OneHotEncoder`` (the argmax's category).  ``alphas`` [rows, continuous columns] float64, when given,
    replaces the matrix's alpha values (TVAE's, with their noise added in float64 over a float32 matrix)."""
    out: dict[str, np.ndarray] = {}
    j = 0
    for column, start in spans(sampler):
        part = data[:, start:start + column.width]
        if column.kind == "continuous":
            alpha = part[:, 0] if alphas is None else alphas[:, j]
            j += 1
            alpha = np.clip(alpha.astype(np.float64), -1, 1)                             # [rows]
            k = np.argmax(part[:, 1:], axis=1)                                          # [rows]
            means, stds = np.asarray(column.means), np.asarray(column.stds)
            values = alpha * STD_MULTIPLIER * stds[k] + means[k]                        # rdt's order of operations
            out[column.name] = _as_dtype(values, column.dtype)
        else:
            picked = np.argmax(part, axis=1)                                            # [rows]
            out[column.name] = _categories(column, picked)
    return out


def _as_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype.startswith(("int", "uint")):
        return values.round(0).astype(dtype)     # FloatFormatter: round integers, then the column's dtype
    return values.astype(dtype)


def _categories(column: Column, picked: np.ndarray) -> np.ndarray:
    """The picked categories as the column's dtype: numbers and booleans as numpy arrays where every category
    is one (null as NaN in float columns), else an object array of the Python values."""
    cats = list(column.categories)
    if column.dtype not in ("object", "category", "string"):
        if column.dtype == "bool" and all(isinstance(c, bool) for c in cats):
            return np.asarray(cats, dtype=bool)[picked]
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) or c is None for c in cats):
            table = np.asarray([np.nan if c is None else c for c in cats], dtype=np.float64)
            if column.dtype.startswith(("int", "uint")) and not np.isnan(table).any():
                return table[picked].astype(column.dtype)
            return table[picked].astype(column.dtype if column.dtype.startswith("float") else np.float64)
    table = np.empty(len(cats), dtype=object)
    table[:] = cats
    return table[picked]
