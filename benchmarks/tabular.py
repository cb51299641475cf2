"""Rows/s of tabular sampling: edgegen's runtime against ctgan's own ``sample``, on the same fitted models.

    python benchmarks/tabular.py                # ctgan's default sizes, 100,000 rows, 5 interleaved repeats
    python benchmarks/tabular.py --quick        # 10,000 rows, 3 repeats, to check the script

The models are CTGAN and TVAE at ctgan's default sizes (generator / decoder (256, 256), embedding 128, batch 500),
fitted for one epoch on a made-up 5,000-row table of 6 continuous and 4 discrete columns (the speed of sampling
does not depend on how well a model was fitted: the same network and transform run).  Each repeat times
``ctgan.sample(n)`` (rows as a pandas DataFrame) and edgegen's ``sample_rows(n)`` (rows as numpy columns; and, to
be fair to a user who wants a DataFrame, ``sample_rows(n).to_pandas()``), interleaved, after a warm-up; medians
with the spread (min..max), because shared machines are noisy.  Both run on the CPU with the threads they pick
(torch's and ONNX Runtime's defaults).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def made_up_table(rows: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = {f"c{i}": np.where(rng.random(rows) < 0.3, rng.normal(-2, 0.5, rows), rng.normal(3 + i, 1 + i, rows))
            for i in range(5)}
    data["count"] = rng.poisson(12, rows)
    for i, k in enumerate((2, 4, 7, 12)):
        data[f"d{i}"] = rng.choice([f"v{j}" for j in range(k)], rows)
    return pd.DataFrame(data)


def fitted(kind: str):
    import torch
    from ctgan import CTGAN, TVAE

    torch.manual_seed(0)
    frame = made_up_table(5000)
    discrete = [c for c in frame.columns if c.startswith("d")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CTGAN(epochs=1) if kind == "ctgan" else TVAE(epochs=1)
        model.fit(frame, discrete_columns=discrete)
    return model


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 10_000, 3
    import torch

    import edgegen
    from edgegen.converters.tabular import TabularSpec

    print(f"rows per call: {args.rows:,}; repeats: {args.repeats} (interleaved, after a warm-up); "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':<7} {'ctgan.sample':>16} {'edgegen rows':>16} {'+ to_pandas':>16} {'speed-up':>9}   (rows/s, median; "
          "min..max)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("ctgan", "tvae"):
            model = fitted(kind)
            art = edgegen.convert(TabularSpec(model=model), Path(tmp) / kind)
            ours = edgegen.load(art)
            runs = {"ctgan": lambda: model.sample(args.rows),
                    "edgegen": lambda: ours.sample_rows(args.rows, seed=0),
                    "pandas": lambda: ours.sample_rows(args.rows, seed=0).to_pandas()}
            for fn in runs.values():       # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    times[name].append(timed(fn))
            rate = {k: [args.rows / t for t in v] for k, v in times.items()}
            cell = lambda k: f"{statistics.median(rate[k]):>8,.0f} ({min(rate[k]) / 1000:.0f}k..{max(rate[k]) / 1000:.0f}k)"  # noqa: E731
            speedup = statistics.median(rate["edgegen"]) / statistics.median(rate["ctgan"])
            print(f"{kind:<7} {cell('ctgan'):>16} {cell('edgegen'):>16} {cell('pandas'):>16} {speedup:>8.1f}x")


if __name__ == "__main__":
    main()
