"""Train edgegen's bundled VAE on scikit-learn's 8x8 digits.

    python models/train_digits_vae.py                          # the bundled checkpoint, into models/digits_vae/
    python models/train_digits_vae.py --steps 20 --hidden 16 --samples 20 --out /tmp/x   # a smoke run

Data: models/digits.py (training split; pixels 0..16 scaled to [0, 1]).  Objective: the negative
ELBO (Kingma & Welling 2014) with a Gaussian decoder of fixed standard deviation sigma:
``|x - decoder(z)|^2 / (2 sigma^2) + KL(q(z|x) || N(0, I))`` per image, z by the
reparametrisation trick.  Adam with cosine decay.  Fixed seeds, fixed threads.

Quality, next to the same figures of the untrained twin (same initial weights): the share of
prior samples (z ~ N(0, I), decoded means clipped to [0, 1]) that models/digits.py's classifier
is confident about, and the held-out reconstruction error (mean squared error of the decoded
posterior means, pixels in [0, 1]) with the classifier's accuracy on those reconstructions.
Writes ``model.safetensors`` and ``MODEL_CARD.md`` into --out.  Loadable by path: nothing runs on import.
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
digits_vae = training.sibling("digits_vae")


def neg_elbo(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The negative ELBO [B] in nats (up to the Gaussian's constant) of images x [B, 1, 8, 8] in [0, 1]."""
    recon, mean, logvar = model(x, eps)
    nll = ((recon - x) ** 2).sum(dim=(1, 2, 3)) / (2 * model.config.sigma ** 2)          # [B]
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(1)                           # [B]
    return nll + kl


@torch.no_grad()
def prior_samples(model: torch.nn.Module, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """n decoded prior samples [n, 1, 8, 8] clipped to [0, 1] (z from ``np.random.default_rng(seed)``)."""
    model.eval()
    z = np.random.default_rng(seed).standard_normal((n, model.config.latent), dtype=np.float32) * temperature
    return model.decoder(torch.from_numpy(z)).clamp(0, 1).numpy()


@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Decoded posterior means [N, 1, 8, 8] clipped to [0, 1] of images x [N, 1, 8, 8] in [0, 1]."""
    model.eval()
    mean, _ = model.encoder(torch.from_numpy(x))
    return model.decoder(mean).clamp(0, 1).numpy()


def score(model: torch.nn.Module, x_held: np.ndarray, y_held: np.ndarray, samples: int, seed: int) -> dict:
    recon = reconstruct(model, x_held)
    return {"prior": digits.quality(prior_samples(model, samples, seed)),
            "heldout_recon_mse": float(np.mean((recon - x_held) ** 2)),
            "heldout_recon_accuracy": digits.quality(recon, y_held)["label_accuracy"]}


@torch.no_grad()
def heldout_neg_elbo(model: torch.nn.Module, x: np.ndarray, draws: int = 10) -> float:
    """The negative ELBO per image (nats), averaged over the images x and ``draws`` fixed-seed z each."""
    gen, x = torch.Generator().manual_seed(123), torch.from_numpy(x)
    return float(np.mean([neg_elbo(model.eval(), x, torch.randn((len(x), model.config.latent), generator=gen)).mean()
                          for _ in range(draws)]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=digits_vae.DEFAULT_DIR, steps=8000, batch_size=128, lr=1e-3,
                                      latent=8, hidden=256,
                                      sigma=training.flag(0.3, "the decoder Gaussian's standard deviation"),
                                      samples=training.flag(200, "prior samples scored"), seed=0, threads=2)
    return training.parse_command_line(parser, argv, __file__)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)

    images, labels = digits.load_data()
    x_train = torch.from_numpy(digits.split(images, labels, heldout=False)[0])         # [N, 1, 8, 8] in [0, 1]
    x_held, y_held = digits.split(images, labels, heldout=True)
    config = digits_vae.VAEConfig(latent=args.latent, hidden=args.hidden, sigma=args.sigma)
    model = digits_vae.DigitsVAE(config)
    untrained = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for step in range(args.steps):
        model.train()
        x = x_train[torch.randint(0, len(x_train), (args.batch_size,), generator=gen)]
        loss = neg_elbo(model, x, torch.randn((len(x), config.latent), generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 1000 == 0 or step == args.steps - 1:
            print(f"step {step}: -ELBO {np.mean(losses[-100:]):.3f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().save(args.out / "model.safetensors")
    trained = digits_vae.DigitsVAE.from_checkpoint(args.out / "model.safetensors")
    figures = {"trained": score(trained, x_held, y_held, args.samples, seed=1),
               "untrained": score(untrained, x_held, y_held, args.samples, seed=1),
               "heldout_neg_elbo": heldout_neg_elbo(trained, x_held),
               "train_seconds": round(train_s, 1)}
    write_card(args, figures, trained, float(np.mean(losses[-100:])))
    print(json.dumps(figures))
    return figures


def write_card(args: argparse.Namespace, figures: dict, model: torch.nn.Module, last: float) -> None:
    params = sum(p.numel() for p in model.parameters())
    t, u = figures["trained"], figures["untrained"]
    training_line = training.digits_training_line(args, figures["train_seconds"], f"Adam lr {args.lr} (cosine decay)")
    (args.out / "MODEL_CARD.md").write_text(f"""# digits_vae: edgegen's bundled VAE

A {params:,}-parameter MLP VAE (`models/digits_vae.py`, latent {args.latent} dims, hidden {args.hidden}) on 8x8
greyscale digits in [0, 1], with a Gaussian decoder (sigma {args.sigma}; the artifact's decoder returns its
mean, `decoder_output="values"`).  edgegen's reference `vae` model.

{training.digits_data_line('pixels scaled to [0, 1].')}
- Objective: negative ELBO, |x - mean|^2 / (2 sigma^2) + KL(q(z|x) || N(0, I)).
{training_line}  Final training
  -ELBO {last:.3f} nats per image (without the Gaussian's normalising constant); held-out
  {figures['heldout_neg_elbo']:.3f} (10 draws of z per image).
- Checkpoint: `model.safetensors` (float32, config in the metadata).

| figure | trained | untrained twin |
| --- | --- | --- |
| prior samples the digit classifier is confident about | {t['prior']['confident']:.3f} | {u['prior']['confident']:.3f} |
| held-out reconstruction MSE (pixels in [0, 1]) | {t['heldout_recon_mse']:.4f} | {u['heldout_recon_mse']:.4f} |
| held-out reconstructions read as the right digit | {t['heldout_recon_accuracy']:.3f} | {u['heldout_recon_accuracy']:.3f} |

Prior samples: {t['prior']['samples']}, z ~ N(0, I) (temperature 1) from seed 1, decoded means clipped to
[0, 1]; reconstructions: the 180 held-out digits' posterior means, decoded.  Judged by `models/digits.py`'s
classifier (models/digits_classifier/MODEL_CARD.md).
""", encoding="utf-8")


if __name__ == "__main__":
    main()
