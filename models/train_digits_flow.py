"""Train edgegen's bundled RealNVP flow on scikit-learn's 8x8 digits.

    python models/train_digits_flow.py                          # the bundled checkpoint, into models/digits_flow/
    python models/train_digits_flow.py --steps 20 --hidden 8 --samples 20 --out /tmp/x   # a smoke run

Data: models/digits.py (training split; the digits' 17 levels 0..16), into the model's logit
space as models/digits_flow.py says (uniform dequantization).  Objective: bits/dim of the
dequantized data, -(log N(z; 0, I) + log_det + log|dx/dk|) / (64 ln 2), an upper bound on the
discrete data's bits/dim; Adam with cosine decay, gradient clipping.  Fixed seeds, fixed threads.

Quality, next to the same figures of the untrained twin (same initial weights: the identity):
- held-out bits/dim at the bins' centres (u = 1/2): what ``edgegen score`` and the runtime's
  ``bits_per_dim`` compute from the same digits as 8-bit images;
- held-out dequantized bits/dim (the training objective, 10 draws of u per image);
- the share of samples at temperature 0.8 that models/digits.py's classifier is confident about
  (each value shown as the level whose bin holds it, as the runtime does).
Writes ``model.safetensors`` and ``MODEL_CARD.md`` into --out.  Loadable by path: nothing runs on import.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch


if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]


digits = training.sibling("digits")
digits_flow = training.sibling("digits_flow")
TEMPERATURE = 0.8


def bits_per_dim(model: torch.nn.Module, levels: torch.Tensor, u: torch.Tensor | float) -> torch.Tensor:
    """Bits/dim [B] of pixel levels [B, 1, 8, 8] dequantized by u: -(log p(x) + log|dx/dk|) / (D ln 2)."""
    x, log_jac = digits_flow.to_model_space(levels, u)
    z, log_det = model(x)
    d = x[0].numel()
    log_pz = -0.5 * (z ** 2).sum(dim=(1, 2, 3)) - 0.5 * d * math.log(2 * math.pi)
    return -(log_pz + log_det + log_jac) / (d * math.log(2))


@torch.no_grad()
def heldout_bits(model: torch.nn.Module, levels: torch.Tensor, draws: int = 10) -> dict:
    model.eval()
    gen = torch.Generator().manual_seed(123)
    dequantized = [bits_per_dim(model, levels, torch.rand(levels.shape, generator=gen)).mean() for _ in range(draws)]
    return {"bin_centre": float(bits_per_dim(model, levels, 0.5).mean()), "dequantized": float(np.mean(dequantized))}


@torch.no_grad()
def sample_levels(model: torch.nn.Module, n: int, seed: int, temperature: float = TEMPERATURE) -> np.ndarray:
    """n samples as pixel levels [n, 1, 8, 8] (0..16), z ~ N(0, T^2 I) from ``np.random.default_rng(seed)``."""
    model.eval()
    z = temperature * np.random.default_rng(seed).standard_normal((n, 4, 4, 4))
    v = torch.sigmoid(model.inverse(torch.from_numpy(z.astype(np.float32)))).double().numpy()
    a, k = digits_flow.ALPHA, digits_flow.NUM_BINS
    return np.clip(np.floor((v - a) / (1 - 2 * a) * k), 0, k - 1)


def score(model: torch.nn.Module, heldout: torch.Tensor, samples: int, seed: int) -> dict:
    images01 = (sample_levels(model, samples, seed) / (digits_flow.NUM_BINS - 1)).astype(np.float32)
    return {"heldout_bits_per_dim": heldout_bits(model, heldout), "samples": digits.quality(images01)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=digits_flow.DEFAULT_DIR, steps=3000, batch_size=64, lr=1e-3,
                                      hidden=48, samples=training.flag(200, "samples scored"), seed=0, threads=2)
    return training.parse_command_line(parser, argv, __file__)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)

    images, labels = digits.load_data()
    levels = {part: torch.from_numpy(np.round(digits.split(images, labels, heldout=part)[0] * 16))   # [N, 1, 8, 8]
              for part in (False, True)}
    train, heldout = levels[False], levels[True]
    model = digits_flow.DigitsFlow(digits_flow.FlowConfig(hidden=args.hidden))
    untrained = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for step in range(args.steps):
        model.train()
        batch = train[torch.randint(0, len(train), (args.batch_size,), generator=gen)]
        loss = bits_per_dim(model, batch, torch.rand(batch.shape, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step}: bits/dim {np.mean(losses[-100:]):.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().save(args.out / "model.safetensors")
    trained = digits_flow.DigitsFlow.from_checkpoint(args.out / "model.safetensors")
    figures = {"trained": score(trained, heldout, args.samples, seed=1),
               "untrained": score(untrained, heldout, args.samples, seed=1), "train_seconds": round(train_s, 1)}
    write_card(args, figures, trained, float(np.mean(losses[-100:])))
    print(json.dumps(figures))
    return figures


def write_card(args: argparse.Namespace, figures: dict, model: torch.nn.Module, last: float) -> None:
    params = sum(p.numel() for p in model.parameters())
    t, u = figures["trained"], figures["untrained"]
    c = model.config
    a = digits_flow.ALPHA
    levels = (f"levels 0..16 -> logit({a} + {1 - 2 * a:g} (k + u) / 17)\n"
              f"  (FlowSpec: num_bins 17, data_range ({a}, {1 - a}), logit).")
    training_line = training.digits_training_line(args, figures["train_seconds"],
                                                  f"Adam lr {args.lr} (cosine decay), grad clip 10")
    (args.out / "MODEL_CARD.md").write_text(f"""# digits_flow: edgegen's bundled RealNVP

A {params:,}-parameter RealNVP (`models/digits_flow.py`: {c.checker} checkerboard couplings on 1x8x8, squeeze,
{c.channel} channel-mask and {c.checker} checkerboard couplings on 4x4x4, coupling nets of {c.hidden} channels, a learned
diagonal affine last) on the digits' 17 grey levels.  edgegen's reference `flow` model.

{training.digits_data_line(levels)}
- Objective: dequantized bits/dim (u ~ U(0, 1)), including the logit's log-Jacobian.
{training_line}  Final training bits/dim {last:.4f}.
- Checkpoint: `model.safetensors` (float32, config in the metadata).

| figure | trained | untrained twin |
| --- | --- | --- |
| held-out bits/dim at the bins' centres (`edgegen score`) | {t['heldout_bits_per_dim']['bin_centre']:.4f} | {u['heldout_bits_per_dim']['bin_centre']:.4f} |
| held-out dequantized bits/dim (upper bound, 10 draws of u) | {t['heldout_bits_per_dim']['dequantized']:.4f} | {u['heldout_bits_per_dim']['dequantized']:.4f} |
| samples (temperature {TEMPERATURE}) the digit classifier is confident about | {t['samples']['confident']:.3f} | {u['samples']['confident']:.3f} |

Uniform over the 17 levels would be log2(17) = {math.log2(17):.3f} bits/dim.  Held out: the 180 held-out
digits; bits/dim at the bins' centres is minus log2 of (the density at each bin's centre times the bin's
width), per pixel, which is what edgegen's runtime computes for 8-bit images of these digits (level k shown
as round(255 k / 16)).  Samples: {t['samples']['samples']}, z ~ N(0, {TEMPERATURE}^2 I) from seed 1, each value shown as
the level whose bin holds it; judged by `models/digits.py`'s classifier (models/digits_classifier/MODEL_CARD.md).
""", encoding="utf-8")


if __name__ == "__main__":
    main()
