"""Train edgegen's bundled class-conditional DDPM on scikit-learn's 8x8 digits.

    python models/train_digits_ddpm.py                      # the bundled checkpoint, into models/digits_ddpm/
    python models/train_digits_ddpm.py --steps 30 --channels 16 --samples 20 --out /tmp/x   # a smoke run

Data: models/digits.py (training split; pixels 0..16 scaled to [-1, 1]).  Objective: the DDPM
epsilon loss (Ho et al. 2020) on DDPM's linear schedule (1000 steps, betas 1e-4..0.02); the label
is replaced by "no label" (10) 10% of the time so classifier-free guidance works.  AdamW with
warmup and cosine decay; the checkpoint holds an exponential moving average of the weights.
Fixed seeds, fixed threads.

Quality: samples drawn with edgegen's own numpy DPM-Solver++ (20 steps, guidance 2; the same
scheduler the artifact uses) around the PyTorch model, scored by models/digits.py's classifier,
next to the same figures of the untrained twin (same initial weights).  Writes ``model.safetensors``
and ``MODEL_CARD.md`` into --out.  Loadable by path (tests do): nothing runs on import.
"""

from __future__ import annotations

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
digits_ddpm = training.sibling("digits_ddpm")


def alphas_cumprod() -> torch.Tensor:
    c = digits_ddpm.SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"], c["beta_end"], c["num_train_timesteps"], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)                                       # [T]


@torch.no_grad()
def sample(model: torch.nn.Module, labels: np.ndarray, seed: int, steps: int = 20, guidance: float = 2.0) -> np.ndarray:
    """Images [N, 1, 8, 8] in [-1, 1] for ``labels``, with edgegen's numpy DPM-Solver++ and guidance."""
    from edgegen.runtimes.diffusion.schedulers import make_scheduler

    model.eval()
    sched = make_scheduler("dpm++", digits_ddpm.SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(labels), 1, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma)
    y = torch.from_numpy(np.concatenate([np.full(len(labels), model.null_label), labels]).astype(np.int64))
    for t in sched.timesteps:
        inp = torch.from_numpy(np.concatenate([x, x]))
        out = model(inp, torch.full((len(inp),), float(t)), y).numpy()
        uncond, cond = out[:len(labels)], out[len(labels):]
        x = sched.step(uncond + guidance * (cond - uncond), t, x, rng=rng)
    return x


def score(model: torch.nn.Module, per_class: int, seed: int) -> dict:
    labels = np.repeat(np.arange(10), per_class)
    images = sample(model, labels, seed)
    return digits.quality(np.clip((images + 1) / 2, 0, 1), labels)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, acp: torch.Tensor) -> float:
    """Epsilon MSE on the held-out digits at fixed timesteps and noise."""
    model.eval()
    gen = torch.Generator().manual_seed(123)
    t = torch.randint(0, len(acp), (len(x),), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    a = acp[t][:, None, None, None]
    return float(torch.nn.functional.mse_loss(model(a.sqrt() * x + (1 - a).sqrt() * noise, t.float(), y), noise))


def main(argv: list[str] | None = None) -> dict:
    parser = training.argument_parser(__doc__, out=digits_ddpm.DEFAULT_DIR, steps=5000, batch_size=128, lr=2e-3,
                                      channels=32, samples=training.flag(200, "samples scored (a multiple of 10)"),
                                      seed=0, threads=2)
    args = parser.parse_args(argv)
    started = training.start(args)

    images, labels = digits.load_data()
    x_train, y_train = (torch.from_numpy(a) for a in digits.split(images, labels, heldout=False))
    x_held, y_held = (torch.from_numpy(a) for a in digits.split(images, labels, heldout=True))
    x_train, x_held = x_train * 2 - 1, x_held * 2 - 1                                # [-1, 1]
    config = digits_ddpm.DenoiserConfig(channels=args.channels)
    model = digits_ddpm.DigitsDenoiser(config)
    untrained = copy.deepcopy(model).eval()
    ema = copy.deepcopy(model).eval()
    acp = alphas_cumprod()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = min(100, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for step in range(args.steps):
        model.train()
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=gen)
        x0, y = x_train[idx], y_train[idx].clone()
        y[torch.rand(len(y), generator=gen) < 0.1] = model.null_label                 # for guidance
        t = torch.randint(0, len(acp), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t][:, None, None, None]
        loss = torch.nn.functional.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), y), noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    ema.save(args.out / "model.safetensors")
    trained = digits_ddpm.DigitsDenoiser.from_checkpoint(args.out / "model.safetensors")
    per_class = max(1, args.samples // 10)
    figures = {"trained": score(trained, per_class, seed=1), "untrained": score(untrained, per_class, seed=1),
               "heldout_eps_mse": heldout_loss(trained, x_held, y_held, acp),
               "untrained_heldout_eps_mse": heldout_loss(untrained, x_held, y_held, acp)}
    params = sum(p.numel() for p in trained.parameters())
    (args.out / "MODEL_CARD.md").write_text(f"""# digits_ddpm: edgegen's bundled class-conditional DDPM

A {params:,}-parameter UNet (`models/digits_ddpm.py`) that denoises 8x8 greyscale digits, conditioned
on the digit (label 10 = none, for classifier-free guidance).  edgegen's reference `diffusion` model.

{training.digits_data_line('pixels scaled to [-1, 1].')}
- Objective: epsilon MSE, DDPM linear schedule (1000 steps), labels dropped 10% of the time.
- Training: {args.steps} steps of batch {args.batch_size}, AdamW lr {args.lr} (warmup, cosine), grad clip 1,
  EMA 0.999 (the checkpoint), seed {args.seed}, {args.threads} CPU threads, {train_s:.0f} s
  (`python models/train_digits_ddpm.py`).  Final training loss {np.mean(losses[-100:]):.4f}.
- Checkpoint: `model.safetensors` (float32, config in the metadata).

| figure | trained | untrained twin |
| --- | --- | --- |
| held-out epsilon MSE | {figures['heldout_eps_mse']:.4f} | {figures['untrained_heldout_eps_mse']:.4f} |
| samples the digit classifier is confident about | {figures['trained']['confident']:.3f} | {figures['untrained']['confident']:.3f} |
| samples read as the digit asked for | {figures['trained']['label_accuracy']:.3f} | {figures['untrained']['label_accuracy']:.3f} |

Samples: {figures['trained']['samples']} (20 per digit), edgegen's numpy DPM-Solver++ 20 steps, guidance 2,
seed 1; judged by `models/digits.py`'s classifier (models/digits_classifier/MODEL_CARD.md).
""", encoding="utf-8")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
