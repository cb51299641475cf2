"""scikit-learn's digits as training data for the bundled image models, and the digit classifier
that gives their samples a quality figure.

Data: ``sklearn.datasets.load_digits()`` — 1,797 greyscale 8x8 handwritten digits (values 0..16),
from the UCI "Optical Recognition of Handwritten Digits" set (CC BY 4.0), shipped inside
scikit-learn.  Split by index: every 10th image is held out (180), the rest (1,617) train.

Quality figure: :class:`DigitClassifier`, a small CNN trained on the training split plus an
11th "not a digit" class (uniform noise, and digits with their pixels shuffled), so that noise
is not mistaken for a digit (``python models/digits.py`` trains it into models/digits_classifier/;
figures in its model card).  A sample "looks like a digit" when the classifier gives one digit
class >= 0.9 probability; for class-conditional models, label accuracy is how often the digit it
reads is the one asked for.
Loadable by path (tests do): nothing runs on import, and only torch/numpy/safetensors are needed
to use a trained classifier (scikit-learn only to load the data).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSIFIER_DIR = Path(__file__).resolve().parent / "digits_classifier"
CONFIDENT = 0.9


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]) of all 1,797 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]          # [N, 1, 8, 8]
    return images, digits.target.astype(np.int64)


def split(images: np.ndarray, labels: np.ndarray, heldout: bool) -> tuple[np.ndarray, np.ndarray]:
    """The training (heldout=False) or held-out (every 10th image) part."""
    keep = (np.arange(len(images)) % 10 == 0) == heldout
    return images[keep], labels[keep]


class DigitClassifier(nn.Module):
    """Two conv layers and a linear head: 8x8 greyscale in [0, 1] -> 11 logits (digits 0-9, 10 = not a digit)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),                # [B, 64, 4, 4]
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 16, 11))               # 10 = not a digit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_classifier(seed: int = 0, epochs: int = 40) -> tuple[DigitClassifier, float]:
    """A classifier trained on the training split, and its held-out accuracy."""
    torch.manual_seed(seed)
    images, labels = load_data()
    x, y = (torch.from_numpy(a) for a in split(images, labels, heldout=False))
    x, y = torch.cat([x, _junk(x, seed)]), torch.cat([y, torch.full((len(x),), 10)])
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()           # +-1 pixel jitter
            batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    hx, hy = (torch.from_numpy(a) for a in split(images, labels, heldout=True))
    return model.eval(), float((predict(model, hx.numpy())[:, :10].argmax(1) == hy.numpy()).mean())


def _junk(x: torch.Tensor, seed: int) -> torch.Tensor:
    """As many non-digits as digits: half uniform noise, half digits with their pixels shuffled."""
    gen = torch.Generator().manual_seed(seed + 1)
    half = len(x) // 2
    noise = torch.rand((half, 1, 8, 8), generator=gen)
    flat = x[half:].reshape(len(x) - half, 64)
    shuffled = torch.stack([row[torch.randperm(64, generator=gen)] for row in flat]).reshape(-1, 1, 8, 8)
    return torch.cat([noise, shuffled])


@torch.no_grad()
def predict(model: nn.Module, images01: np.ndarray) -> np.ndarray:
    """Class probabilities [N, 11] of images [N, 1, 8, 8] in [0, 1] (column 10: not a digit)."""
    model.eval()
    return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(images01, dtype=np.float32))), -1).numpy()


def load_classifier(folder: Path = CLASSIFIER_DIR) -> DigitClassifier:
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train it with: python models/digits.py")
    model = DigitClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


def quality(images01: np.ndarray, labels: np.ndarray | None = None, classifier: nn.Module | None = None) -> dict:
    """How digit-like samples [N, 1, 8, 8] in [0, 1] are: the share the classifier is confident about
    (>= 0.9 for one class) and, given the labels asked for, how often it reads that label."""
    probs = predict(classifier or load_classifier(), images01)[:, :10]           # the digit classes
    out = {"confident": float((probs.max(1) >= CONFIDENT).mean()), "samples": len(images01)}
    if labels is not None:
        out["label_accuracy"] = float((probs.argmax(1) == labels).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the digit classifier used to score bundled image models.")
    parser.add_argument("--out", type=Path, default=CLASSIFIER_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    started = time.perf_counter()
    model, accuracy = train_classifier(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out / "model.safetensors")
    images, labels = load_data()
    x, _ = split(images, labels, heldout=True)
    real = quality(x, classifier=model)
    noise = quality(np.random.default_rng(0).random(x.shape, dtype=np.float32), classifier=model)
    params = sum(p.numel() for p in model.parameters())
    card = f"""# digits_classifier: the judge of the bundled image models

A small CNN (`DigitClassifier` in `models/digits.py`, {params:,} parameters) trained on scikit-learn's
digits (8x8 greyscale, values scaled to [0, 1]; the UCI optical digits set, CC BY 4.0), training
split = all but every 10th image, plus as many non-digits (class 10: uniform noise, digits
with shuffled pixels), 40 epochs, AdamW 3e-3, +-1 pixel jitter, seed {args.seed}.
Trained by `python models/digits.py` in {time.perf_counter() - started:.0f} s on 2 CPU threads.

| figure | value |
| --- | --- |
| held-out accuracy (180 images) | {accuracy:.3f} |
| held-out images it is confident about (max prob >= {CONFIDENT}) | {real['confident']:.3f} |
| uniform-noise images it is confident about | {noise['confident']:.3f} |

The bundled image models report the share of their samples this classifier is confident about
(and, for class-conditional ones, how often it reads the class that was asked for).
"""
    (args.out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(json.dumps({"heldout_accuracy": accuracy, "real_confident": real["confident"],
                      "noise_confident": noise["confident"]}))


if __name__ == "__main__":
    main()
