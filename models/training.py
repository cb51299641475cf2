"""What the training scripts in models/ (train_digits_*.py, train_pycode.py, train_charlstm.py) share.

- ``sibling(name)``: import models/<name>.py by path (models/ is not a package and is never on sys.path);
- ``argument_parser(doc, **flags)`` and ``flag(...)``: a script's command line, one ``--flag`` per keyword;
- ``parse_command_line(parser, argv, script)``: its arguments, with the command line kept for the card;
- ``start(opts)``: fixed threads and seed, the clock started;
- ``digits_data_line``, ``digits_training_line``, ``stdlib_data_lines``, ``lm_training_rows``: the model
  cards' data and training lines.

A script loads this file by path too (four lines at its top), then its siblings with ``sibling``.
Nothing runs on import.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch


def sibling(name: str):
    """Import models/<name>.py by path, once: it is kept as ``sys.modules[name]``, which the tests use too."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# -- command line ----------------------------------------------------------------------------
class Flag(NamedTuple):
    default: Any
    help: str | None = None
    type: Any = None


def flag(default: Any, help: str | None = None, type: Any = None) -> Flag:
    """A flag with a help text, or with a default of None (then ``type`` says how to read it)."""
    return Flag(default, help, type)


def argument_parser(doc: str, **flags: Any) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with ``--batch-size`` for ``batch_size=64`` and so
    on, in the keywords' order; a value is the default (its type reads the flag: Path, int, float) or a ``flag``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, value in flags.items():
        value = value if isinstance(value, Flag) else Flag(value)
        kind = value.type or (Path if isinstance(value.default, Path) else type(value.default))
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value.default, help=value.help)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """``argv`` (``sys.argv[1:]`` when None) parsed, with ``args.command`` = ``python models/<script> <argv>``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command = " ".join([f"python models/{Path(script).name}", *argv])
    return args


def start(opts: Any) -> float:
    """Fix torch's thread count and seed from ``opts.threads`` and ``opts.seed``; the clock's start
    (``time.perf_counter()``)."""
    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    return time.perf_counter()


# -- model cards -----------------------------------------------------------------------------
def digits_data_line(values: str) -> str:
    """The digits cards' ``- Data:`` line; ``values`` says what the pixels become, e.g. "pixels scaled to [0, 1]."."""
    return ("- Data: scikit-learn's digits (`load_digits`: the UCI optical digits set, CC BY 4.0), training split of\n"
            f"  models/digits.py (1,617 images), {values}")


def digits_training_line(args: argparse.Namespace, seconds: float, optimizer: str) -> str:
    """The digits cards' ``- Training:`` line up to "reproducible at the same thread count)."; ``optimizer``
    is what follows the batch, e.g. ``f"Adam lr {args.lr} (cosine decay)"``."""
    return (f"- Training: {args.steps} steps of batch {args.batch_size}, {optimizer}, seed {args.seed},\n"
            f"  {args.threads} CPU thread{'s' * (args.threads != 1)}, {seconds:.0f} s (`{args.command}`; bit-for-bit\n"
            "  reproducible at the same thread count).")


def stdlib_data_lines(skip_dirs: frozenset[str], heldout_percent: int, eos: str, files: tuple[int, int],
                      sizes: tuple[int, int], unit: str, licence_note: str, generated: str) -> str:
    """The LM cards' Data list (models/train_pycode.py's split of the standard library): ``files`` and
    ``sizes`` (in ``unit``) are (training, held out); ``licence_note`` ends the licence's line and
    ``generated`` lists the generated data left out."""
    tests = ", ".join(sorted(skip_dirs - {"site-packages", "__pycache__", "pydoc_data"}))
    return f"""- The `.py` files of the CPython {platform.python_version()} standard library (`Lib/`), under the
  Python Software Foundation License (PSF-2.0){licence_note}
- Left out: test folders ({tests}),
  site-packages, and generated data ({generated}).
- Split by file: a file is held out when the SHA-256 of its relative path, read as a number,
  is below {heldout_percent} mod 100.  {files[0]} training files ({sizes[0]:,} {unit}),
  {files[1]} held-out files ({sizes[1]:,} {unit}).
- Each file is followed by `{eos}`."""


def lm_training_rows(opts: Any, r: Any, order: str, setup: str) -> str:
    """The LM cards' Training table from the learning rate down: ``order`` is what the seeded generator orders
    ("data", "lane"); ``setup`` what the total time includes besides evaluation ("tokenizer", "data")."""
    return f"""| learning rate | {opts.lr:g}, linear warmup {opts.warmup} steps, cosine decay to {opts.lr * opts.min_lr_ratio:g} |
| gradient clipping | {opts.grad_clip} |
| seed | {opts.seed} (torch.manual_seed; {order} order from its own generator) |
| threads | {opts.threads} (torch.set_num_threads) |
| training time | {r.train_seconds:.0f} s wall for the steps ({r.total_seconds:.0f} s in all, with {setup} and evaluation), {platform.machine()} CPU |
| median step | {r.median_step_seconds:.3f} s, i.e. {r.median_step_seconds * r.steps:.0f} s for the steps when the cores are not shared |
| torch | {torch.__version__} |"""
