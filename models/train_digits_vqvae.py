"""Train edgegen's bundled VQ-VAE on scikit-learn's 8x8 digits.

    python models/train_digits_vqvae.py                         # the bundled checkpoint, into models/digits_vqvae/
    python models/train_digits_vqvae.py --steps 20 --channels 8 --out /tmp/x   # a smoke run

Data: models/digits.py (training split; pixels 0..16 scaled to [0, 1]).  Objective (van den
Oord et al. 2017): reconstruction MSE through the straight-through estimator plus 0.25 x the
commitment loss |z_e - sg(z_q)|^2; the codebook follows exponential moving averages (decay
0.99) of the encoder outputs assigned to each code (their appendix A.1), and a code that
falls out of use (EMA count < 0.1) restarts at a random encoder output of the batch.
Adam with cosine decay.  Fixed seeds, fixed threads.

Quality, next to the same figures of the untrained twin (same initial weights and codebook):
held-out reconstruction error (MSE, pixels in [0, 1]), how often models/digits.py's classifier
reads the right digit in the reconstructions of the held-out digits, and the codes they use.
Uniformly drawn code grids are scored too (the classifier's confident share): they make poor
digits, as expected without a learned prior over the codes.  Writes ``model.safetensors`` and
``MODEL_CARD.md`` into --out.  Loadable by path (tests do): nothing runs on import.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
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
digits_vqvae = training.sibling("digits_vqvae")

COMMITMENT, DECAY, DEAD = 0.25, 0.99, 0.1


@torch.no_grad()
def ema_update(model: torch.nn.Module, z_e: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor,
               sums: torch.Tensor, gen: torch.Generator) -> None:
    """Move each code to the EMA mean of the z_e assigned to it; restart the unused ones."""
    k = model.config.codes
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])                              # [B*h*w, D]
    onehot = torch.nn.functional.one_hot(indices.reshape(-1), k).float()                  # [B*h*w, K]
    counts.mul_(DECAY).add_(onehot.sum(0), alpha=1 - DECAY)                               # [K]
    sums.mul_(DECAY).add_(onehot.t() @ flat, alpha=1 - DECAY)                             # [K, D]
    n = counts.sum()
    smoothed = (counts + 1e-5) / (n + k * 1e-5) * n                                        # Laplace smoothing
    model.codebook.copy_(sums / smoothed[:, None])
    dead = counts < DEAD
    if dead.any():
        pick = flat[torch.randint(0, len(flat), (int(dead.sum()),), generator=gen)]
        model.codebook[dead], sums[dead], counts[dead] = pick, pick, 1.0


@torch.no_grad()
def score(model: torch.nn.Module, x_held: np.ndarray, y_held: np.ndarray, samples: int, seed: int) -> dict:
    model.eval()
    x = torch.from_numpy(x_held)
    indices, z_q = model.quantize(model.encoder(x))
    recon = model.decoder(z_q).clamp(0, 1).numpy()
    codes = torch.from_numpy(np.random.default_rng(seed).integers(0, model.config.codes, (samples, *indices.shape[1:])))
    uniform = model.decoder(model.codebook[codes].permute(0, 3, 1, 2)).clamp(0, 1).numpy()   # [n, 1, 8, 8]
    return {"heldout_recon_mse": float(np.mean((recon - x_held) ** 2)),
            "heldout_recon_accuracy": digits.quality(recon, y_held)["label_accuracy"],
            "heldout_codes_used": int(indices.unique().numel()),
            "uniform_codes_confident": digits.quality(uniform)["confident"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=digits_vqvae.DEFAULT_DIR, steps=4000, batch_size=64, lr=2e-3,
                                      codes=64, code_dim=16, channels=32,
                                      samples=training.flag(200, "uniform code grids scored"), seed=0, threads=2)
    return training.parse_command_line(parser, argv, __file__)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)

    images, labels = digits.load_data()
    x_train = torch.from_numpy(digits.split(images, labels, heldout=False)[0])         # [N, 1, 8, 8] in [0, 1]
    x_held, y_held = digits.split(images, labels, heldout=True)
    config = digits_vqvae.VQVAEConfig(codes=args.codes, code_dim=args.code_dim, channels=args.channels)
    model = digits_vqvae.DigitsVQVAE(config)
    untrained = copy.deepcopy(model).eval()
    counts, sums = torch.ones(config.codes), model.codebook.clone()                       # EMA state
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for step in range(args.steps):
        model.train()
        x = x_train[torch.randint(0, len(x_train), (args.batch_size,), generator=gen)]
        z_e = model.encoder(x)                                                             # [B, D, 4, 4]
        indices, z_q = model.quantize(z_e.detach())
        recon = model.decoder(z_e + (z_q - z_e).detach())                                  # straight through
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + COMMITMENT * torch.nn.functional.mse_loss(z_e, z_q)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema_update(model, z_e.detach(), indices, counts, sums, gen)
        losses.append(mse.item())
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step}: reconstruction MSE {np.mean(losses[-100:]):.5f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().save(args.out / "model.safetensors")
    trained = digits_vqvae.DigitsVQVAE.from_checkpoint(args.out / "model.safetensors")
    figures = {"trained": score(trained, x_held, y_held, args.samples, seed=1),
               "untrained": score(untrained, x_held, y_held, args.samples, seed=1),
               "train_seconds": round(train_s, 1)}
    write_card(args, figures, trained, float(np.mean(losses[-100:])))
    print(json.dumps(figures))
    return figures


def write_card(args: argparse.Namespace, figures: dict, model: torch.nn.Module, last: float) -> None:
    params = sum(p.numel() for p in model.parameters()) + model.codebook.numel()
    t, u = figures["trained"], figures["untrained"]
    training_line = training.digits_training_line(args, figures["train_seconds"], f"Adam lr {args.lr} (cosine decay)")
    (args.out / "MODEL_CARD.md").write_text(f"""# digits_vqvae: edgegen's bundled VQ-VAE

A {params:,}-parameter VQ-VAE (`models/digits_vqvae.py`): conv encoder 8x8 -> 4x4 grid of
{args.code_dim}-dim vectors, codebook of {args.codes} codes, conv decoder back to 8x8 pixels in [0, 1].
edgegen's reference `vq-vae` model.

{training.digits_data_line('pixels scaled to [0, 1].')}
- Objective: reconstruction MSE (straight-through) + {COMMITMENT} x commitment; EMA codebook (decay {DECAY}),
  unused codes restarted.
{training_line}  Final training
  reconstruction MSE {last:.5f}.
- Checkpoint: `model.safetensors` (float32, config in the metadata; the codebook is the `codebook` tensor).

| figure | trained | untrained twin |
| --- | --- | --- |
| held-out reconstruction MSE (pixels in [0, 1]) | {t['heldout_recon_mse']:.4f} | {u['heldout_recon_mse']:.4f} |
| held-out reconstructions read as the right digit | {t['heldout_recon_accuracy']:.3f} | {u['heldout_recon_accuracy']:.3f} |
| codes used by the held-out digits (of {args.codes}) | {t['heldout_codes_used']} | {u['heldout_codes_used']} |
| uniformly drawn code grids the classifier is confident about | {t['uniform_codes_confident']:.3f} | {u['uniform_codes_confident']:.3f} |

Reconstructions: the 180 held-out digits, encoded, quantized, decoded and clipped to [0, 1].  Code grids
drawn uniformly ({args.samples}, seed 1) are what a vq-vae artifact's `sample` does without a prior: patchworks
of digit parts, rarely a digit; a learned prior over the 4x4 code grids (not part of this model) is what
makes a VQ-VAE generate.  Judged by `models/digits.py`'s classifier (models/digits_classifier/MODEL_CARD.md).
""", encoding="utf-8")


if __name__ == "__main__":
    main()
