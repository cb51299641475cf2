"""Images in and out of the image families' runtimes (numpy + Pillow, no torch).

Runtimes hand images around as float arrays ``[N, C, H, W]`` in a stated value range
(``[-1, 1]`` for diffusion, GANs and most VAEs; ``[0, 1]`` for some), and users get
``uint8`` arrays ``[N, H, W, C]`` (C = 1 or 3) that Pillow writes as PNG.

Reading checks an image's size from its header before decoding a pixel (a decompression bomb is
refused, not decoded) and scales 16-bit greys to 8 bits; writing goes through temporary names
renamed into place, so a failed write (full disk, read-only folder) leaves no partial PNG.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ArtifactError, InvalidArgumentError, write_error_line


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """``[N, C, H, W]`` floats in ``value_range`` -> ``[N, H, W, C]`` uint8 (clipped, rounded)."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {images.shape}")
    lo, hi = value_range
    scaled = np.subtract(images, lo, dtype=np.float32)                          # [N, C, H, W], one new buffer
    scaled /= hi - lo                                                           # in [0, 1]; in place from here
    scaled *= 255.0
    np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


def from_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """``[N, H, W, C]`` uint8 -> ``[N, C, H, W]`` float32 in ``value_range``."""
    lo, hi = value_range
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0) * (hi - lo) + lo


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``[N, H, W, C]`` uint8 images into one ``[H', W', C]`` image, row by row."""
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        out[y:y + h, x:x + w] = images[i]
    return out


def save_png(image: np.ndarray, path: str | os.PathLike[str], upscale: int = 1) -> Path:
    """Write one ``[H, W, C]`` uint8 image (C = 1 or 3) as PNG; ``upscale`` enlarges by nearest neighbour."""
    from PIL import Image

    if upscale > 1:
        image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
    path = Path(path)
    mode_image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode_image.save(path, format="PNG")
    return path


def save_images(images: np.ndarray, path: str | os.PathLike[str], *, as_grid: bool = True,
                upscale: int = 1, columns: int | None = None) -> list[Path]:
    """Write ``[N, H, W, C]`` uint8 images: one grid PNG at ``path`` (N > 1, ``as_grid``), or
    ``path`` for N = 1, or ``stem-0.png``, ``stem-1.png``, ... when not a grid."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"{path}: images are written as PNG; give a path ending in .png")
    if len(images) == 1:
        return _write_pngs([(images[0], path)], upscale)
    if as_grid:
        return _write_pngs([(grid(images, columns), path)], upscale)
    return _write_pngs([(img, path.with_name(f"{path.stem}-{i}{path.suffix}")) for i, img in enumerate(images)],
                       upscale)


def _write_pngs(targets: list[tuple[np.ndarray, Path]], upscale: int) -> list[Path]:
    """Write each image under a temporary name beside its target, then rename them all into place: a write
    that fails leaves none of them written (nor half-written) and no existing file replaced."""
    staged: list[tuple[Path, Path]] = []
    target = targets[0][1]
    try:
        for image, target in targets:
            above = next((p for p in target.absolute().parents if p.exists()), None)
            if above is not None and not above.is_dir():
                raise ArtifactError(f"cannot write {target}: {above} is a file, not a folder; choose another -o")
            staged.append((target.with_name(f".{target.name}.edgegen-tmp-{os.getpid()}"), target))
            save_png(image, staged[-1][0], upscale)
        for tmp, target in staged:
            os.replace(tmp, target)
    except OSError as exc:
        for tmp, _ in staged:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass   # the folder refuses writes: it holds no temporary file either
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(write_error_line(exc, target)) from None
    return [target for _, target in staged]


def load_image(path: str | os.PathLike[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Read an image file as ``[1, H, W, C]`` uint8 with the model's size and channels.

    A different size is an error that names both sizes (resize it yourself, so nothing is
    silently distorted); colour/grey conversion is done here.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    h, w = size
    try:
        with warnings.catch_warnings():   # Pillow warns of a decompression bomb and decodes it anyway: refuse it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.size != (w, h):     # from the header: nothing is decoded yet
                    raise InvalidArgumentError(f"{path} is {img.size[0]}x{img.size[1]} pixels but the model takes "
                                               f"{w}x{h}; resize it first (e.g. PIL.Image.resize)")
                array = _eight_bit(img, channels)
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgumentError(f"{path} is refused as a possible decompression bomb ({exc}); the model takes "
                                   f"{w}x{h} images: resize it first") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidArgumentError(f"{path} is not an image Pillow can read ({exc})") from None
    return (array[:, :, None] if channels == 1 else array)[None]


#: Pillow's modes of 16-bit greys (a 16-bit PNG opens as "I;16", or "I" in older Pillows)
_WIDE_GREYS = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _eight_bit(img: Any, channels: int) -> np.ndarray:
    """``[H, W]`` (channels 1) or ``[H, W, 3]`` uint8 pixels of a Pillow image; 16-bit greys are scaled to 8 bits
    (Pillow's own conversion clips them at 255: every pixel brighter than 255/65535 comes out white)."""
    from PIL import Image

    if img.mode in _WIDE_GREYS:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)                     # [H, W]
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))        # rounded, 65535 -> 255
    return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


def check_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """User images as ``uint8 [N, H, W, C]`` matching the model's ``[C, H, W]``, or a clear error."""
    c, h, w = image_shape
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, c) or len(images) == 0:
        raise InvalidArgumentError(f"images must be uint8 [N, {h}, {w}, {c}] (runtimes.images.load_image reads "
                                   f"one), got {images.dtype} {list(images.shape)}")
    return images
