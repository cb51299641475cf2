"""edgegen's bundled tabular model: a CTGAN on scikit-learn's wine table: the data, ``spec()``, the card's metrics.

- ``load_data()``: the 178 wines as a DataFrame: the 13 continuous measurements, ``color_intensity_level``
  (``color_intensity`` binned at fixed cut points: low / medium / high) and ``cultivar`` (``class_0`` ..
  ``class_2``), both strings; ``split(frame)``: the fixed stratified split (25% held out, seed 0).
- ``spec()``: the edgegen TabularSpec of the checkpoint in models/wine_tabular/ (``edgegen convert
  models/wine_tabular.py:spec -o wine``); ``untrained_checkpoint``: the card's untrained twin.
- The quality card's figures on a synthetic table against real rows: ``column_similarity`` (1 - KS statistic
  for a continuous column, 1 - total variation distance for a categorical one), ``correlation_distance``,
  ``tstr_accuracy`` (train a random forest on one table, score it on another), ``quality`` (all of them).

models/train_wine_tabular.py trains the model and writes the card with these functions.  Loadable by path:
models/ is not a package.  Nothing runs on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parent / "wine_tabular"
TARGET = "cultivar"
LEVEL = "color_intensity_level"
#: color_intensity's cut points (its range is 1.3 .. 13; about a third of the wines fall in each bin)
LEVEL_CUTS = (3.5, 6.0)
LEVELS = ("low", "medium", "high")
DISCRETE = [LEVEL, TARGET]
HELDOUT_FRACTION, SPLIT_SEED = 0.25, 0


def load_data() -> Any:
    """The wine table (pandas DataFrame, 178 rows): 13 float columns, then ``color_intensity_level`` and
    ``cultivar`` (strings)."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.data.copy()
    frame = frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})   # a plain name for the CLI
    levels = np.digitize(frame["color_intensity"].to_numpy(), LEVEL_CUTS)            # 0, 1, 2
    frame[LEVEL] = np.asarray(LEVELS, dtype=object)[levels]
    frame[TARGET] = np.asarray([f"class_{k}" for k in bunch.target], dtype=object)
    return frame


def continuous_columns(frame: Any) -> list[str]:
    return [c for c in frame.columns if c not in DISCRETE]


def split(frame: Any) -> tuple[Any, Any]:
    """(training rows, held-out rows): 25% held out, stratified by cultivar, seed 0 (133 and 45 rows)."""
    from sklearn.model_selection import train_test_split

    train, heldout = train_test_split(frame, test_size=HELDOUT_FRACTION, stratify=frame[TARGET],
                                      random_state=SPLIT_SEED)
    return train.reset_index(drop=True), heldout.reset_index(drop=True)


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen TabularSpec of the bundled checkpoint: ``edgegen convert models/wine_tabular.py:spec -o wine``."""
    from edgegen.converters.tabular import TabularSpec

    folder = Path(checkpoint_dir or DEFAULT_DIR)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing; train the model with: "
                                "python models/train_wine_tabular.py")
    return TabularSpec.from_checkpoint(folder, name="models/wine_tabular.py (CTGAN on scikit-learn's wine table)")


def untrained_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """The untrained twin of a CTGAN checkpoint: the same architecture and fitted data transform (metadata kept),
    the generator's weights re-initialised as PyTorch initialises them (``nn.Linear``'s default, BatchNorm
    weight 1 and bias 0) from ``torch.manual_seed(seed)``.  Written as ``out_dir/model.safetensors``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = Path(checkpoint_dir) / "model.safetensors"
    with safe_open(str(source), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    torch.manual_seed(seed)
    fresh = {}
    for name in sorted(k for k in tensors if k.endswith(".weight") and ".bn." not in k):   # linear layers
        stem = name[: -len(".weight")]
        out_features, in_features = tensors[name].shape
        linear = torch.nn.Linear(in_features, out_features)
        fresh[name], fresh[f"{stem}.bias"] = linear.weight.data, linear.bias.data
    for name, t in tensors.items():
        if ".bn." in name:
            fresh[name] = torch.ones_like(t) if name.endswith(".weight") else torch.zeros_like(t)
    missing = set(tensors) - set(fresh)
    if missing:
        raise ValueError(f"{source}: tensors the twin does not rebuild: {sorted(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in fresh.items()}, str(out / "model.safetensors"), metadata=meta)
    return out / "model.safetensors"


# -- the card's figures ----------------------------------------------------------------------------------------
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between the two category frequency tables."""
    a, b = np.asarray(a, dtype=object).astype(str), np.asarray(b, dtype=object).astype(str)
    values = sorted(set(a) | set(b))
    fa = np.array([np.mean(a == v) for v in values])
    fb = np.array([np.mean(b == v) for v in values])
    return float(0.5 * np.abs(fa - fb).sum())


def column_similarity(synthetic: Any, real: Any) -> dict[str, float]:
    """Per column: 1 - KS statistic (continuous) or 1 - total variation distance (categorical); 1 is identical."""
    return {c: 1.0 - (total_variation if c in DISCRETE else ks_statistic)(np.asarray(synthetic[c]),
                                                                             np.asarray(real[c]))
            for c in real.columns}


def correlation_distance(synthetic: Any, real: Any) -> float:
    """Mean absolute difference of the Pearson correlation matrices over the continuous columns, off-diagonal
    pairs only (78 pairs; 0 is identical, at most 2).  A constant synthetic column counts as correlation 0."""
    cols = continuous_columns(real)

    def corr(frame: Any) -> np.ndarray:
        x = np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in cols])      # [rows, 13]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(np.corrcoef(x, rowvar=False))

    upper = np.triu_indices(len(cols), k=1)
    return float(np.mean(np.abs(corr(synthetic) - corr(real))[upper]))


def tstr_accuracy(train: Any, test: Any, seed: int = 0) -> float:
    """Accuracy on ``test`` of a random forest (200 trees, seed ``seed``) fitted on ``train`` to predict the
    cultivar from the 13 continuous columns."""
    from sklearn.ensemble import RandomForestClassifier

    cols = continuous_columns(test)
    features = lambda frame: np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in cols])  # noqa: E731
    labels = lambda frame: np.asarray(frame[TARGET], dtype=object).astype(str)                        # noqa: E731
    forest = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    forest.fit(features(train), labels(train))
    return float(np.mean(forest.predict(features(test)) == labels(test)))


def quality(synthetic: Any, real: Any) -> dict[str, Any]:
    """The card's figures of a synthetic table (a DataFrame or an edgegen Table) against the real held-out rows."""
    synthetic = synthetic.to_pandas() if hasattr(synthetic, "to_pandas") and not hasattr(synthetic, "iloc") \
        else synthetic
    similarity = column_similarity(synthetic, real)
    cont = [similarity[c] for c in continuous_columns(real)]
    return {"column_similarity": similarity, "mean_similarity": float(np.mean(list(similarity.values()))),
            "mean_continuous_similarity": float(np.mean(cont)),
            "mean_categorical_similarity": float(np.mean([similarity[c] for c in DISCRETE])),
            "correlation_distance": correlation_distance(synthetic, real),
            "tstr_accuracy": tstr_accuracy(synthetic, real)}


def class_share(table: Any, value: str = "class_1") -> float:
    """The share of rows whose cultivar is ``value``."""
    return float(np.mean(np.asarray(table[TARGET], dtype=object).astype(str) == value))
