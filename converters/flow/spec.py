"""The spec that lets a normalizing flow (RealNVP, Glow, any bijection with a tractable
Jacobian) written as a ``torch.nn.Module`` become a ``flow`` artifact.

The module offers two methods (names configurable, e.g. normflows' ``NormalizingFlow`` has
them the other way round; :func:`edgegen.converters.flow.convert.normflows_spec` wraps one)::

    z, log_det = module.forward(x)     x float32 [B, *data_shape] -> z [B, *latent_shape],
                                       log_det [B] = log|det dz/dx| per sample
    x = module.inverse(z)              the exact inverse

with a standard-normal prior on z: log p(x) = log N(z; 0, I) + log_det (fold a learned
diagonal Gaussian base into the flow as a last affine layer).  ``z`` is one tensor: concatenate
the latents of a multi-scale flow.  The module must be in eval mode and initialised
(data-dependent ActNorm inits done, e.g. by loading trained weights): a run that changes the
module's parameters or buffers is refused.  Matrix inverses and (log-)determinants of the
weights (``torch.linalg.inv``, ``torch.inverse``, ``slogdet``, ``logdet``, ``det``, LU
factorisations) are computed at export time and stored as constants.

Pixels map to the model's input space as the training code did (the runtime uses this to
sample images and to compute bits/dim; see :mod:`edgegen.runtimes.flow.flow`)::

    k = pixel level in [0, num_bins);  s = lo + (hi - lo) * (k + dequantization_offset) / num_bins
    x = logit(s) if logit else s

Glow (5-bit CelebA): ``num_bins=32, data_range=(-0.5, 0.5)``; RealNVP: ``data_range=(alpha, 1),
logit=True`` (alpha = 0.05); plain [0, 1] data: the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.flow.flow import check_temperature, pixel_map_problems


@dataclass(frozen=True)
class FlowSpec:
    """A normalizing flow, the shape of its data and how pixels map to it."""

    module: Any                                 # torch.nn.Module following the contract above
    data_shape: tuple[int, ...]                 # x without the batch: [C, H, W] or flat [D]
    #: [C, H, W] (C = 1 or 3) of the images, when ``data_shape`` is flat; x holds their values in C, H, W order.
    image_shape: tuple[int, int, int] | None = None
    forward_method: str = "forward"             # x -> (z, log_det)
    inverse_method: str = "inverse"             # z -> x
    num_bins: int = 256                         # pixel levels of the training data (2 ** bits)
    data_range: tuple[float, float] = (0.0, 1.0)
    logit: bool = False
    dequantization_offset: float = 0.5          # where in its bin a pixel is evaluated (training adds U(0, 1))
    #: Default sampling settings stored in the artifact: ``{"temperature": 0.7}``.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Name recorded in the manifest's source (default: the module's class).
    name: str | None = None
    #: sha256 of the checkpoint the module was loaded from, recorded in the manifest.
    checkpoint_sha256: str | None = None

    def __post_init__(self) -> None:
        problems = []
        shape = self.data_shape
        if not isinstance(shape, (tuple, list)) or len(shape) not in (1, 3) or not all(map(_positive_int, shape)):
            problems.append(f"data_shape must be [C, H, W] or [D] (positive integers, no batch axis), got {shape!r}")
            shape = None
        else:
            object.__setattr__(self, "data_shape", tuple(shape))
        image = self.image_shape if self.image_shape is not None else (
            shape if shape is not None and len(shape) == 3 else None)
        if image is None:
            if shape is not None:
                problems.append(f"data_shape {tuple(shape)} is flat: give image_shape (C, H, W) with C*H*W = {shape[0]}")
        elif (not isinstance(image, (tuple, list)) or len(image) != 3 or not all(map(_positive_int, image))
              or image[0] not in (1, 3) or (shape is not None and math.prod(image) != math.prod(shape))):
            problems.append(f"image_shape must be (C, H, W) with C = 1 or 3 holding as many values as data_shape "
                            f"{shape!r}, got {image!r}")
        else:
            object.__setattr__(self, "image_shape", tuple(image))
        for name in ("forward_method", "inverse_method"):
            method = getattr(self, name)
            if not isinstance(method, str) or not callable(getattr(self.module, method, None)):
                problems.append(f"{name}: {type(self.module).__name__} has no method {method!r}")
        if not isinstance(self.data_range, (tuple, list)):
            problems.append(f"data_range must be (lo, hi), got {self.data_range!r}")
        else:
            object.__setattr__(self, "data_range", tuple(self.data_range))
            problems += pixel_map_problems(self.num_bins, self.data_range, bool(self.logit),
                                           self.dequantization_offset)
        if not isinstance(self.defaults, dict) or set(self.defaults) - {"temperature"}:
            problems.append(f"defaults may only set 'temperature', got {self.defaults!r}")
        elif "temperature" in self.defaults:
            try:
                check_temperature(self.defaults["temperature"])
            except InvalidArgumentError as exc:
                problems.append(f"defaults: {exc}")
        if problems:
            raise InvalidArgumentError("FlowSpec: " + "; ".join(problems))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
