"""``edgegen batch`` on Ray Data against a plain serial loop over ``edgegen.load``, on this machine.

    python benchmarks/batch.py                 # GPT-2-shaped 4-layer LM + a 32x32 DCGAN, 5 rounds
    python benchmarks/batch.py --quick         # fewer items and rounds, to check the script

Contenders, on the same items with the same per-item seeds (edgegen.batch.item_seed):

- serial:    ``edgegen.load`` (all cores as ONNX Runtime threads), then one item at a time:
             ``lm.complete([prompt], settings with the item's seed)`` / ``model.sample(1, seed=...)``, and
             the same outputs written (one JSON-lines file / a PNG per image; no fsync);
- batch xK:  ``edgegen.batch.run_batch`` with K actors (each loads the artifact once, with cores // K threads)
             on a local Ray started once for the whole run, writing shard files to a fresh folder each round.

Both figures are end to end: items / wall seconds from the call to the last item written, so the
serial loop pays its ``load`` and the batch pays its actors' start and its loads (what a user waits for).
Rounds are interleaved (the contenders' order rotates each round); each figure is the median over rounds,
with the spread (min-max) beside it.  ``same`` checks every batch output against the serial one.
Random weights, no downloads: compare ratios, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))     # benchmarks/ is not a package: lm.py's tokenizer builder
SEED = 0


def build_lm(root: Path, quick: bool) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import edgegen
    from lm import save_tokenizer

    torch.manual_seed(0)
    size = dict(n_layer=2, n_head=4, n_embd=64) if quick else dict(n_layer=4, n_head=4, n_embd=256)
    model = GPT2LMHeadModel(GPT2Config(**size, n_positions=256, vocab_size=1000, bos_token_id=0,
                                       eos_token_id=0)).eval()
    model.save_pretrained(root / "hf")
    save_tokenizer(root / "hf", Path(HERE.parent / "lm.py").read_text(), ["<|endoftext|>"], eos_token="<|endoftext|>")
    return edgegen.convert(root / "hf", root / "lm", quantize="none")


def build_gan(root: Path) -> Path:
    """DCGAN-style generator z [B, 64] -> [B, 3, 32, 32] (ngf 32), random weights."""
    import torch
    from torch import nn

    import edgegen
    from edgegen import GANSpec

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.ConvTranspose2d(64, 128, 4, 1, 0, bias=False), nn.BatchNorm2d(128), nn.ReLU(),    # [B, 128, 4, 4]
                nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),     # [B, 64, 8, 8]
                nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),      # [B, 32, 16, 16]
                nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Tanh())                                       # [B, 3, 32, 32]

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z[:, :, None, None])

    torch.manual_seed(0)
    return edgegen.convert(GANSpec(generator=Generator().eval(), latent_dim=64), root / "gan", quantize="none")


def serial_lm(artifact: Path, prompts: list[str], settings, out: Path) -> list[str]:
    """The plain loop a user writes: load, then each prompt's completion, written as one JSON line each."""
    import edgegen
    from edgegen.batch import item_seed

    lm = edgegen.load(artifact, "cpu")
    texts = [lm.complete([p], replace(settings, seed=item_seed(SEED, i)))[0].text for i, p in enumerate(prompts)]
    out.write_text("".join(json.dumps({"index": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return texts


def serial_gan(artifact: Path, count: int, out: Path) -> list[np.ndarray]:
    """The plain loop: load, then each image drawn with its own seed and written as a PNG."""
    import edgegen
    from edgegen.batch import item_seed
    from edgegen.runtimes.images import save_png

    model = edgegen.load(artifact, "cpu")
    out.mkdir()
    images = [model.sample(1, seed=item_seed(SEED, i))[0] for i in range(count)]
    for i, image in enumerate(images):
        save_png(image, out / f"{i:06d}.png")
    return images


def batch_outputs(kind: str, out: Path) -> list:
    if kind == "lm":
        return [json.loads(line)["text"] for f in sorted(out.glob("shard-*.jsonl"))
                for line in f.read_text().splitlines()]
    from PIL import Image

    return [np.asarray(Image.open(f)) for f in sorted(out.glob("shard-*/*.png"))]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)

    import ray

    from edgegen import GenerationSettings
    from edgegen.batch import run_batch

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    n_prompts, new_tokens, n_images = (8, 16, 16) if args.quick else (32, 32, 128)
    root = Path(tempfile.mkdtemp(prefix="edgegen-bench-batch-"))
    try:
        lm, gan = build_lm(root, args.quick), build_gan(root)
        prompts = [f"def function_{i}(x):" if i % 2 else f"The story number {i} begins" for i in range(n_prompts)]
        source = root / "prompts.jsonl"
        source.write_text("".join(json.dumps(p) + "\n" for p in prompts))
        settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.8, ignore_eos=True)
        cases = {
            "lm": (n_prompts, lambda out: serial_lm(lm, prompts, settings, out),
                   lambda out, k: run_batch(lm, out, prompts_file=source, seed=SEED, settings=settings, actors=k,
                                            shard_size=max(1, n_prompts // 8))),
            "gan": (n_images, lambda out: serial_gan(gan, n_images, out),
                    lambda out, k: run_batch(gan, out, count=n_images, seed=SEED, actors=k,
                                             shard_size=max(1, n_images // 8))),
        }
        contenders = ["serial", "batch x1", "batch x2"]
        rows = []
        for kind, (items, serial, batch) in cases.items():
            times: dict[str, list[float]] = {c: [] for c in contenders}
            working: dict[str, list[float]] = {c: [] for c in contenders[1:]}   # actor-seconds per actor
            reference, agree = None, True
            for r in range(rounds):
                for c in contenders[r % 3:] + contenders[:r % 3]:     # rotate the order each round
                    out = root / f"out-{kind}-{c.replace(' ', '')}-{r}"
                    started = time.perf_counter()
                    result = serial(out) if c == "serial" else batch(out, int(c[-1]))
                    times[c].append(time.perf_counter() - started)
                    if c == "serial":
                        reference = result if reference is None else reference
                        shutil.rmtree(out) if out.is_dir() else out.unlink()
                    else:
                        working[c].append(result["shard_seconds"] / int(c[-1]))
                        outputs = batch_outputs(kind, out)
                        agree = agree and same(reference, outputs)   # round 0 runs serial first
                        shutil.rmtree(out)
            rows.append((kind, items, times, working, agree))
        cores = os.cpu_count()
        print(f"\nedgegen batch vs serial, {cores} cores, {rounds} rounds (median items/s, min-max); "
              f"LM: {n_prompts} prompts x {new_tokens} sampled tokens; GAN: {n_images} 32x32 images")
        print(f"{'model':<6}{'items':>6}  " + "".join(f"{c:>24}" for c in contenders) + f"{'x2 / serial':>13}  same")
        for kind, items, times, working, agree in rows:
            rates = {c: [items / t for t in ts] for c, ts in times.items()}
            cells = "".join(f"{statistics.median(v):>9.1f} ({min(v):6.1f}-{max(v):6.1f})" for v in rates.values())
            ratio = statistics.median(rates["batch x2"]) / statistics.median(rates["serial"])
            print(f"{kind:<6}{items:>6}  {cells}{ratio:>12.2f}x  {'yes' if agree else 'NO'}")
        print("\nin the actors alone (items / shard-writing seconds per actor; the rest of the wall time is Ray, "
              "actor start and loads):")
        for kind, items, times, working, _ in rows:
            parts = [f"{c}: {statistics.median([items / w for w in ws]):.1f} items/s, overhead "
                     f"{statistics.median([t - w for t, w in zip(times[c], ws)]):.2f} s" for c, ws in working.items()]
            print(f"  {kind:<5} " + "; ".join(parts))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
