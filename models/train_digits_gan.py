"""Train edgegen's bundled class-conditional DCGAN on scikit-learn's 8x8 digits.

    python models/train_digits_gan.py                        # the bundled checkpoint, into models/digits_gan/
    python models/train_digits_gan.py --steps 20 --channels 8 --samples 20 --out /tmp/x   # a smoke run

Data: models/digits.py (training split; pixels 0..16 scaled to [-1, 1]).  Objective: the hinge
loss (Lim & Ye 2017) against a projection discriminator (Miyato & Koyama 2018: a conv net whose
score adds <embedding(label), features>) with spectral normalisation on every layer; Adam
(beta1 0.5).  The checkpoint holds an exponential moving average of the generator's weights,
whose BatchNorm statistics are then re-estimated over 10,240 samples (eval mode uses them).
Fixed seeds, fixed threads.

Quality: 20 samples per digit, scored by models/digits.py's classifier (the share it is
confident is some digit, and how often it reads the digit asked for), next to the same
figures of the untrained twin (same initial weights).  Writes ``model.safetensors`` and
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
from torch import nn


if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]


digits = training.sibling("digits")
digits_gan = training.sibling("digits_gan")


class Discriminator(nn.Module):
    """Projection discriminator: score [B] of images [B, 1, 8, 8] given labels [B]."""

    def __init__(self, classes: int, channels: int) -> None:
        super().__init__()
        sn, c = nn.utils.spectral_norm, channels
        self.net = nn.Sequential(
            sn(nn.Conv2d(1, c, 3, 1, 1)), nn.LeakyReLU(0.2),                               # [B, C, 8, 8]
            sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),                           # [B, 2C, 4, 4]
            sn(nn.Conv2d(2 * c, 4 * c, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten())         # [B, 16C]
        self.out = sn(nn.Linear(16 * c, 1))
        self.embed = sn(nn.Embedding(classes, 16 * c))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.net(x)                                                                    # [B, 16C]
        return self.out(h)[:, 0] + (self.embed(labels) * h).sum(1)


@torch.no_grad()
def sample(generator: nn.Module, labels: np.ndarray, seed: int) -> np.ndarray:
    """Images [N, 1, 8, 8] in [-1, 1] for ``labels`` (z from ``np.random.default_rng(seed)``)."""
    generator.eval()
    z = np.random.default_rng(seed).standard_normal((len(labels), generator.config.latent), dtype=np.float32)
    return generator(torch.from_numpy(z), torch.from_numpy(labels.astype(np.int64))).numpy()


def score(generator: nn.Module, per_class: int, seed: int) -> dict:
    labels = np.repeat(np.arange(10), per_class)
    return digits.quality((sample(generator, labels, seed) + 1) / 2, labels)


@torch.no_grad()
def recalibrate(generator: nn.Module, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate BatchNorm's running statistics as plain averages over ``batches`` batches of samples."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                                                  # cumulative average
    generator.train()
    for _ in range(batches):
        z = torch.randn((batch_size, generator.config.latent), generator=gen)
        generator(z, torch.randint(0, generator.config.classes, (batch_size,), generator=gen))
    for m in norms:
        m.momentum = 0.1
    generator.eval()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=digits_gan.DEFAULT_DIR, steps=4000, batch_size=64, lr=2e-4,
                                      latent=32, channels=32,
                                      samples=training.flag(200, "samples scored (a multiple of 10)"),
                                      seed=0, threads=2)
    return training.parse_command_line(parser, argv, __file__)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)

    images, labels = digits.load_data()
    x_train, y_train = (torch.from_numpy(a) for a in digits.split(images, labels, heldout=False))
    x_train = x_train * 2 - 1                                                              # [N, 1, 8, 8] in [-1, 1]
    config = digits_gan.GeneratorConfig(latent=args.latent, channels=args.channels)
    g = digits_gan.DigitsGenerator(config)
    d = Discriminator(config.classes, args.channels)
    untrained, ema = copy.deepcopy(g).eval(), copy.deepcopy(g)
    opt_g = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=args.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[tuple[float, float]] = []
    for step in range(args.steps):
        g.train()
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=gen)
        real, y = x_train[idx], y_train[idx]
        z = torch.randn((args.batch_size, config.latent), generator=gen)
        y_fake = torch.randint(0, config.classes, (args.batch_size,), generator=gen)
        fake = g(z, y_fake)
        # 1. discriminator: hinge loss, real above +1, fake below -1
        loss_d = torch.relu(1 - d(real, y)).mean() + torch.relu(1 + d(fake.detach(), y_fake)).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # 2. generator: raise the discriminator's score of its samples
        loss_g = -d(fake, y_fake).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), g.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append((loss_d.item(), loss_g.item()))
        if step % 500 == 0 or step == args.steps - 1:
            ld, lg = np.mean(losses[-100:], axis=0)
            print(f"step {step}: loss D {ld:.3f} G {lg:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    recalibrate(ema, batches=40, batch_size=256, seed=args.seed + 1)
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    ema.save(args.out / "model.safetensors")
    trained = digits_gan.DigitsGenerator.from_checkpoint(args.out / "model.safetensors")
    per_class = max(1, args.samples // 10)
    figures = {"trained": score(trained, per_class, seed=1), "untrained": score(untrained, per_class, seed=1),
               "train_seconds": round(train_s, 1)}
    write_card(args, figures, trained, np.mean(losses[-100:], axis=0))
    print(json.dumps(figures))
    return figures


def write_card(args: argparse.Namespace, figures: dict, model: nn.Module, last: np.ndarray) -> None:
    params = sum(p.numel() for p in model.parameters())
    t, u = figures["trained"], figures["untrained"]
    training_line = training.digits_training_line(args, figures["train_seconds"],
                                                  f"Adam lr {args.lr} (betas 0.5, 0.999)")
    (args.out / "MODEL_CARD.md").write_text(f"""# digits_gan: edgegen's bundled class-conditional DCGAN

A {params:,}-parameter DCGAN generator (`models/digits_gan.py`): z ({args.latent} dims) and a
digit embedding -> 8x8 greyscale digit in [-1, 1].  edgegen's reference `gan` model.  Only the
generator is shipped; its discriminator is in the training script.

{training.digits_data_line('pixels scaled to [-1, 1].')}
- Objective: hinge loss against a spectrally normalised projection discriminator.
{training_line}  Final losses:
  discriminator {last[0]:.3f}, generator {last[1]:.3f}.  The checkpoint is the EMA (0.999) of the generator's
  weights with BatchNorm statistics re-estimated over 10,240 samples.
- Checkpoint: `model.safetensors` (float32, config in the metadata).

| figure | trained | untrained twin |
| --- | --- | --- |
| samples the digit classifier is confident about | {t['confident']:.3f} | {u['confident']:.3f} |
| samples read as the digit asked for | {t['label_accuracy']:.3f} | {u['label_accuracy']:.3f} |

Samples: {t['samples']} ({t['samples'] // 10} per digit), z ~ N(0, I) from seed 1; judged by `models/digits.py`'s
classifier (models/digits_classifier/MODEL_CARD.md).
""", encoding="utf-8")


if __name__ == "__main__":
    main()
