"""The gan runtime: DCGAN-style, class-conditional and StyleGAN-style generators.  No torch.

Graphs (written by :mod:`edgegen.converters.image.convert`)::

    without a mapping network (DCGAN, conditional DCGAN):
      generator  z [B, latent_dim] float32 (+ labels [B] int64) (+ noise.{i}) -> image [B, C, H, W]
    StyleGAN-style:
      mapping    z [B, latent_dim] float32 (+ labels [B] int64) (+ noise.{i}) -> w [B, w_dim] or [B, L, w_dim]
      generator  w (+ noise.{i})                                              -> image [B, C, H, W]

Sampling: ``rng = np.random.default_rng(seed)`` draws, in this order, z ~ N(0, I)
``[n, latent_dim]``, the labels (uniform over the classes, when the model is conditional
and no label is given), then each graph's lifted noise.  Truncation (Karras et al. 2019,
"A Style-Based Generator Architecture", appendix B) pulls w towards the mean latent
``w_avg`` stored in the manifest: ``w' = w_avg + psi (w - w_avg)``; it needs the mapping
graph.  Images come out as ``uint8 [N, H, W, C]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.manifest import MAX_DIMENSION, count_problem
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.image.checks import check_image_constants, check_noise_sizes, require_graphs
from edgegen.runtimes.latents import check_count, check_frames, rng_for, slerp
from edgegen.runtimes.memory import GRAPH_WORKING_VALUES, check_count_fits
from edgegen.runtimes.noise_graph import BATCH, NoiseGraph, NoiseInput
from edgegen.runtimes.images import to_uint8
from edgegen.runtimes.session import SessionConfig
from edgegen.strict import FieldError

__all__ = ["GAN", "GANDefaults", "GANSampler"]


@dataclass(frozen=True)
class GANSampler:
    """The ``sampler`` section of a gan manifest."""

    latent_dim: int
    image_shape: tuple[int, ...]                    # [C, H, W]
    value_range: tuple[float, ...] = (-1.0, 1.0)    # the generator's output range
    num_classes: int | None = None                  # None: unconditional
    #: Mean of w over many z (the mapping graph's output, last axis): the truncation centre.
    w_avg: tuple[float, ...] | None = None
    #: graph role -> the noise inputs lifted out of it
    noise: dict[str, tuple[NoiseInput, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_image_constants(self.image_shape, self.value_range)
        check_noise_sizes(self.noise)
        problems = [(key, p) for key, p in (
            ("latent_dim", count_problem(self.latent_dim, 1, MAX_DIMENSION)),
            ("num_classes", None if self.num_classes is None else count_problem(self.num_classes))) if p]
        if problems:
            raise FieldError(*problems)


@dataclass(frozen=True)
class GANDefaults:
    """The ``defaults`` section: settings chosen by whoever converted the model."""

    truncation: float | None = None


class GAN:
    """A loaded gan artifact."""

    family = "gan"

    def __init__(self, artifact: Artifact, provider: str, sampler: GANSampler, defaults: GANDefaults,
                 generator: NoiseGraph, mapping: NoiseGraph | None) -> None:
        self.artifact, self.provider, self.sampler, self.defaults = artifact, provider, sampler, defaults
        self.generator, self.mapping = generator, mapping
        self.image_shape = sampler.image_shape

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> GAN:
        from edgegen.strict import from_json

        m = artifact.manifest
        require_graphs(artifact, cls.family, ("generator",))
        fix = "re-convert the model"
        sampler = from_json(GANSampler, m.sampler, where="edgegen.json.sampler", error=ManifestError, fix=fix)
        defaults = from_json(GANDefaults, m.defaults, where="edgegen.json.defaults", error=ManifestError, fix=fix)
        if ("mapping" in m.graphs) != (sampler.w_avg is not None):
            raise ManifestError(f"{artifact.root}: a gan artifact has a mapping graph exactly when its sampler has "
                                "w_avg; re-convert the model")
        z = m.graphs["mapping" if "mapping" in m.graphs else "generator"].tensor("z")
        if z is not None and not z.fits((sampler.latent_dim,)):
            raise ManifestError(f"{artifact.root}: edgegen.json.sampler.latent_dim is {sampler.latent_dim}, but the "
                                f"graph declares its input z as {list(z.shape)}; re-convert the model")
        provider, sessions = open_sessions(artifact, config)
        labels = ("labels",) if sampler.num_classes else ()
        mapping = None
        if "mapping" in sessions:
            mapping = NoiseGraph(sessions["mapping"], "mapping", ("z", *labels), ("w",),
                                 sampler.noise.get("mapping", ()))
        generator = NoiseGraph(sessions["generator"], "generator", ("w",) if mapping else ("z", *labels), ("image",),
                               sampler.noise.get("generator", ()))
        return cls(artifact, provider, sampler, defaults, generator, mapping)

    # -- the float path: explicit latents, labels and noise ---------------------------------------
    def latents(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """z ~ N(0, I): ``[n, latent_dim]`` float32."""
        return rng.standard_normal((n, self.sampler.latent_dim), dtype=np.float32)

    def draw_noise(self, n: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
        """Every graph's lifted noise for ``n`` images: ``{role: {input name: array}}``."""
        return {g.role: g.draw_noise(n, rng) for g in self._graphs() if g.noise}

    def generate(self, z: np.ndarray, labels: np.ndarray | None = None, *, truncation: float = 1.0,
                 noise: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """Images ``[N, C, H, W]`` float32 (in ``value_range``) from z ``[N, latent_dim]``.

        ``labels`` [N] for a conditional model; noise as :meth:`draw_noise` returns it, or drawn from ``rng``.
        """
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.sampler.latent_dim or len(z) == 0:
            raise InvalidArgumentError(f"z must be [N, {self.sampler.latent_dim}], got shape {list(z.shape)}")
        feed = {"z": z, **self._label_feed(labels, len(z))}
        noise = noise or {}
        if self.mapping is not None:
            (w,) = self.mapping.run(feed, noise=noise.get("mapping"), rng=rng)         # [N, (L,) w_dim]
            if truncation != 1.0:
                w_avg = np.asarray(self.sampler.w_avg, dtype=np.float32)              # [w_dim]
                w = w_avg + np.float32(truncation) * (w - w_avg)
            feed = {"w": np.ascontiguousarray(w, dtype=np.float32)}
        (images,) = self.generator.run(feed, noise=noise.get("generator"), rng=rng)    # [N, C, H, W]
        return images

    # -- the image-family contract --------------------------------------------------------------------
    def sample(self, n: int, *, seed: int | None = None, label: int | Sequence[int] | None = None,
               truncation: float | None = None) -> np.ndarray:
        """``n`` images ``uint8 [n, H, W, C]``; same seed, same images."""
        n = check_count(n)
        psi = self._truncation(truncation)
        rng = rng_for(seed)
        self._check_memory(n, "sampling")
        z = self.latents(n, rng)                                                      # [n, latent_dim]
        labels = self._labels(label, n, rng)                                          # [n] or None
        images = self.generate(z, labels, truncation=psi, noise=self.draw_noise(n, rng))
        return to_uint8(images, self.sampler.value_range)

    def interpolate(self, seed_a: int, seed_b: int, *, frames: int = 8, label: int | None = None,
                    truncation: float | None = None) -> np.ndarray:
        """``frames`` images ``uint8 [frames, H, W, C]`` along the great circle from seed_a's z to seed_b's.

        Label and noise are seed_a's for every frame (frame 0 is ``sample(1, seed=seed_a)``).
        """
        psi = self._truncation(truncation)
        rng_a = rng_for(seed_a)
        frames = check_frames(frames)
        self._check_memory(frames, "interpolating", "frames", slerp=True)
        z_a, z_b = self.latents(1, rng_a)[0], self.latents(1, rng_for(seed_b))[0]     # [latent_dim] each
        labels = self._labels(label, 1, rng_a)
        noise = {role: {k: np.repeat(v, frames, axis=0) for k, v in arrays.items()}
                 for role, arrays in self.draw_noise(1, rng_a).items()}
        z = slerp(z_a, z_b, frames)                                                   # [frames, latent_dim]
        images = self.generate(z, None if labels is None else np.repeat(labels, frames), truncation=psi, noise=noise)
        return to_uint8(images, self.sampler.value_range)

    # -- checks ---------------------------------------------------------------------------------------
    def _check_memory(self, count: int, action: str, noun: str = "images", slerp: bool = False) -> None:
        """Refuse, before drawing anything, ``count`` images that cannot fit in memory: per image its float32
        latent, w, noise, the generator's output and working memory, to_uint8's copy, a label and the uint8
        image (the graphs run on all of them at once); slerp's float64 path for an interpolation."""
        s = self.sampler
        pixels = math.prod(s.image_shape)
        noise = sum(math.prod(d for d in x.shape if d != BATCH) for g in self._graphs() for x in g.noise)
        values = s.latent_dim * (1 + 6 * slerp) + len(s.w_avg or ()) + noise + (2 + GRAPH_WORKING_VALUES) * pixels
        check_count_fits(count, 4 * values + 8 + pixels, action, noun)

    def _graphs(self) -> list[NoiseGraph]:
        return [g for g in (self.mapping, self.generator) if g is not None]

    def _truncation(self, truncation: float | None) -> float:
        psi = truncation if truncation is not None else self.defaults.truncation
        if psi is None:
            return 1.0
        if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi) or not 0 <= psi <= 1:
            raise InvalidArgumentError(f"truncation must be a number in [0, 1] (1 = none, 0 = the mean image), "
                                       f"got {psi!r}")
        if self.mapping is None and psi != 1.0:
            raise InvalidArgumentError("truncation needs a mapping network (StyleGAN-style w = mapping(z)); this "
                                       "DCGAN-style generator has none: drop --truncation")
        return float(psi)

    def _labels(self, label: int | Sequence[int] | None, n: int, rng: np.random.Generator) -> np.ndarray | None:
        k = self.sampler.num_classes
        if k is None:
            if label is not None:
                raise InvalidArgumentError(f"this GAN is unconditional (it takes no class label); drop --label {label}")
            return None
        if label is None:
            return rng.integers(0, k, size=n, dtype=np.int64)                         # [n]
        if isinstance(label, (list, tuple, np.ndarray)):                              # one label per image
            labels = np.asarray(label)
            if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
                    or labels.max() >= k:
                raise InvalidArgumentError(f"labels must be {n} class indices in 0..{k - 1} (one per image), got "
                                           f"{labels.tolist()!r}")
            return labels.astype(np.int64)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < k:
            raise InvalidArgumentError(f"label must be a class index in 0..{k - 1}, got {label!r}")
        return np.full(n, label, dtype=np.int64)

    def _label_feed(self, labels: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        k = self.sampler.num_classes
        if k is None:
            if labels is not None:
                raise InvalidArgumentError("this GAN is unconditional: pass labels=None")
            return {}
        labels = np.asarray(labels) if labels is not None else None
        if labels is None or labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) \
                or labels.min() < 0 or labels.max() >= k:
            raise InvalidArgumentError(f"this GAN is conditional: labels must be [{n}] integers in 0..{k - 1}")
        return {"labels": labels.astype(np.int64)}
