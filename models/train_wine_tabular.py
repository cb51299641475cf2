"""Train edgegen's bundled tabular model: a CTGAN on scikit-learn's wine table, and write its quality card.

    python models/train_wine_tabular.py                          # the bundled checkpoint, into models/wine_tabular/
    python models/train_wine_tabular.py --epochs 5 --samples 200 --out /tmp/x   # a smoke run

Data: models/wine_tabular.py (the training split, 133 of the 178 wines; 13 continuous columns, two categorical).
Model: ``ctgan.CTGAN`` (conditional GAN with mode-specific normalisation, Xu et al. 2019), seeded through
``set_random_state``, ``torch.manual_seed`` and ``np.random.seed``, fixed threads.  Written with edgegen's
``save_checkpoint`` (safetensors, no pickle).

Quality: the checkpoint is converted with edgegen and ``--samples`` rows are drawn with the artifact's
``sample_rows`` (seed 0); they are scored against the 45 held-out wines with models/wine_tabular.py's metrics,
next to the same figures of the untrained twin (same architecture and data transform, generator weights
re-initialised, converted and sampled the same way) and of the real training rows.  Writes
``model.safetensors`` and ``MODEL_CARD.md`` into --out.  Loadable by path (tests do): nothing runs on import.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]

wine = training.sibling("wine_tabular")

#: the condition the card checks: a cultivar asked for, and how often it comes out
CONDITION = {wine.TARGET: "class_1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=wine.DEFAULT_DIR, epochs=4000, batch_size=130,
                                      pac=training.flag(10, "samples the discriminator judges together (divides "
                                                        "--batch-size)"),
                                      samples=training.flag(2000, "synthetic rows scored for the card"),
                                      seed=0, threads=2)
    return training.parse_command_line(parser, argv, __file__)


def fit(train: Any, args: argparse.Namespace) -> Any:
    """A ctgan.CTGAN fitted on the training rows (seeded; the data transform's BayesianGMMs use np.random)."""
    from ctgan import CTGAN

    np.random.seed(args.seed)
    model = CTGAN(epochs=args.epochs, batch_size=args.batch_size, pac=args.pac)
    model.set_random_state(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # sklearn's GMM convergence warnings on 133 rows
        model.fit(train, discrete_columns=wine.DISCRETE)
    return model


def evaluate(checkpoint_dir: Path, heldout: Any, samples: int, work: Path) -> dict[str, Any]:
    """Convert a checkpoint with edgegen and score ``samples`` rows of its ``sample_rows`` (seed 0)."""
    import edgegen

    artifact = edgegen.convert(wine.spec(checkpoint_dir), work, overwrite=True, report=lambda _line: None)
    model = edgegen.load(artifact, provider="cpu")
    rows = model.sample_rows(samples, seed=0)
    figures = wine.quality(rows, heldout)
    figures["class_1_share"] = wine.class_share(rows)
    figures["class_1_share_conditioned"] = wine.class_share(model.sample_rows(samples, seed=0, condition=CONDITION))
    return figures


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)
    train, heldout = wine.split(wine.load_data())
    fitted = fit(train, args)
    train_s = time.perf_counter() - started
    print(f"fitted {args.epochs} epochs in {train_s:.0f} s", flush=True)

    from edgegen.converters.tabular import save_checkpoint

    save_checkpoint(fitted, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / "twin"
        wine.untrained_checkpoint(args.out, twin, seed=args.seed)
        figures = {"trained": evaluate(args.out, heldout, args.samples, Path(tmp) / "trained"),
                   "untrained": evaluate(twin, heldout, args.samples, Path(tmp) / "untrained")}
    figures["real"] = wine.quality(train, heldout)
    figures["real"]["class_1_share"] = wine.class_share(train)
    figures["train_seconds"] = round(train_s, 1)
    figures["load_average"] = round(os.getloadavg()[0], 1)   # other jobs on the cores stretch the time
    figures["steps"] = args.epochs * max(len(train) // args.batch_size, 1)
    figures["block_rows"] = args.batch_size          # ctgan samples (and edgegen's runtime) in blocks of a batch
    write_card(args, figures, fitted, len(train), len(heldout))
    print(json.dumps({k: v for k, v in figures.items()}, default=float))
    return figures


#: the card's main table: (row label, figure key); the tests read the card's numbers back by these labels
MAIN_ROWS = (("mean column similarity", "mean_similarity"),
             ("mean continuous column similarity (1 - KS)", "mean_continuous_similarity"),
             ("mean categorical column similarity (1 - TVD)", "mean_categorical_similarity"),
             ("correlation distance (lower is better)", "correlation_distance"),
             ("cultivar accuracy on held-out rows, forest trained on these rows", "tstr_accuracy"))


def card_table(figures: dict[str, Any]) -> str:
    """The card's figures as markdown tables (4 decimals)."""
    t, u, r = figures["trained"], figures["untrained"], figures["real"]
    lines = ["| figure | trained CTGAN | untrained twin | real training rows |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {t[key]:.4f} | {u[key]:.4f} | {r[key]:.4f} |" for label, key in MAIN_ROWS]
    lines += ["", "| column | trained CTGAN | untrained twin | real training rows |", "| --- | --- | --- | --- |"]
    lines += [f"| `{c}` | {t['column_similarity'][c]:.4f} | {u['column_similarity'][c]:.4f} | "
              f"{r['column_similarity'][c]:.4f} |" for c in r["column_similarity"]]
    lines += ["", f"| conditional sampling | trained CTGAN | untrained twin | real training rows |",
              "| --- | --- | --- | --- |",
              f"| share of rows with cultivar class_1, unconditioned | {t['class_1_share']:.4f} | "
              f"{u['class_1_share']:.4f} | {r['class_1_share']:.4f} |",
              f"| share of rows with cultivar class_1, conditioned on it | {t['class_1_share_conditioned']:.4f} | "
              f"{u['class_1_share_conditioned']:.4f} | - |"]
    return "\n".join(lines)


def write_card(args: argparse.Namespace, figures: dict, fitted: Any, n_train: int, n_heldout: int) -> None:
    import ctgan
    import torch

    params = sum(p.numel() for p in fitted._generator.parameters())
    threads = f"{args.threads} CPU thread{'s' * (args.threads != 1)}"
    (args.out / "MODEL_CARD.md").write_text(f"""# wine_tabular: edgegen's bundled CTGAN on the wine table

A `ctgan.CTGAN` (ctgan {ctgan.__version__}) with a {params:,}-parameter generator, trained on {n_train} rows:
edgegen's reference `tabular` model.  It draws wine rows (13 continuous measurements, a colour-intensity
level and the cultivar) and can be conditioned on either categorical column
(`sample_rows(n, seed=0, condition={{"cultivar": "class_1"}})`).  Only the generator and the fitted data
transform are shipped, as edgegen's safetensors checkpoint (no pickle); the discriminator is dropped.

- Data: scikit-learn's wine table (`load_wine`: the UCI Wine data set, CC BY 4.0; 178 wines, three
  cultivars), via `models/wine_tabular.py`: the 13 continuous columns (`od280/od315_of_diluted_wines`
  renamed `od280_od315`), `color_intensity_level` (`color_intensity` cut at {wine.LEVEL_CUTS[0]} and
  {wine.LEVEL_CUTS[1]}: low / medium / high) and `cultivar` (`class_0` .. `class_2`), both strings.
  Split with `train_test_split(test_size={wine.HELDOUT_FRACTION}, stratify=cultivar,
  random_state={wine.SPLIT_SEED})`: {n_train} training rows (the only ones fitted on), {n_heldout} held-out rows
  (the only ones scored against).
- Training: {args.epochs} epochs of batch {args.batch_size} (pac {args.pac}; {figures['steps']:,} generator steps),
  ctgan's defaults otherwise (generator {fitted._generator_dim}, discriminator {fitted._discriminator_dim}, embedding
  {fitted._embedding_dim}, Adam lr {fitted._generator_lr:g}), seed {args.seed}
  (`set_random_state`, `torch.manual_seed`, `np.random.seed`), {threads}, {figures['train_seconds']:.0f} s
  including the data transform's fit, {platform.machine()} CPU (1-minute load average {figures['load_average']}
  when it ended), torch {torch.__version__}.
- Card: `{args.command}` (trains, then writes this file; every number below is computed by it).
- Intended use: edgegen's tests, demo and documentation of the tabular family.  Not for anything about
  wine: {n_train} training rows make this a toy, and its rows copy the quirks of a tiny sample.

## Quality

{args.samples:,} synthetic rows from the CONVERTED artifact (edgegen's runtime,
`sample_rows({args.samples}, seed=0)`) against the {n_heldout} held-out real rows.  Column similarity:
1 - the two-sample Kolmogorov-Smirnov statistic for a continuous column, 1 - the total variation distance
of the category frequencies for a categorical one (1 is identical).  Correlation distance: the mean
absolute difference between the Pearson correlation matrices of the 13 continuous columns, over the 78
off-diagonal pairs (0 is identical).  Accuracy: a random forest (scikit-learn, 200 trees, random_state 0)
fitted on the table's 13 continuous columns to predict the cultivar, scored on the held-out rows ("train
on synthetic, test on real"; the real column is "train on real, test on real").  The untrained twin has
the same architecture and the same fitted data transform (so its values stay in each column's range),
with the generator's weights re-initialised as PyTorch initialises them (seed {args.seed};
`untrained_checkpoint` in models/wine_tabular.py), converted and sampled the same way.

{card_table(figures)}

Conditioning sets every row's condition vector to the named value, which makes it more likely, not certain
(as in ctgan: while sampling, each BatchNorm normalises over a block of {figures['block_rows']} rows that all
carry the same condition, which cancels its shift inside the hidden layers; it reaches the output through the
residual layers' pass-through of the input).
""", encoding="utf-8")


if __name__ == "__main__":
    main()
