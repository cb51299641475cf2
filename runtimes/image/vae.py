"""The vae and vq-vae runtimes: prior sampling, reconstruction, interpolation, code sampling.  No torch.

vae graphs (written by :mod:`edgegen.converters.image.convert`)::

    encoder  image [B, C, H, W] (value_range)      -> mean [B, *latent_shape], logvar [B, *latent_shape]
    decoder  latent [B, *latent_shape] (+ noise.{i}) -> image [B, C, H, W]      (decoder_output "values")
                                                     -> logits [B, C, H, W]     ("logits": Bernoulli logits,
                                                        the runtime returns sigmoid(logits) in [0, 1])

vq-vae graphs::

    encoder       image [B, C, H, W]                  -> latents [B, D, h, w]   (z_e)
    quantize      latents [B, D, h, w]                -> indices [B, h, w] int64 (nearest code, euclidean)
    decode_codes  indices [B, h, w] (+ noise.{i})     -> image [B, C, H, W]     (codebook lookup + decoder)
    decoder       latents [B, D, h, w] (+ noise.{i})  -> image [B, C, H, W]     (z_q -> image)

Randomness comes from ``np.random.default_rng(seed)``: the prior's z (vae) or the codes
(vq-vae) first, then each graph's lifted noise.  Reconstruction decodes the posterior mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgegen.errors import InvalidArgumentError, ManifestError
from edgegen.manifest import MAX_DIMENSION, count_problem, shape_problem
from edgegen.runtimes.artifact import Artifact, open_sessions
from edgegen.runtimes.image.checks import check_image_constants, check_noise_sizes, require_graphs
from edgegen.runtimes.images import check_images, from_uint8, to_uint8
from edgegen.runtimes.latents import check_count, check_frames, lerp, rng_for, slerp
from edgegen.runtimes.memory import GRAPH_WORKING_VALUES, check_count_fits
from edgegen.runtimes.noise_graph import BATCH, NoiseGraph, NoiseInput
from edgegen.runtimes.session import SessionConfig
from edgegen.strict import FieldError

__all__ = ["VAE", "VAEDefaults", "VAESampler", "VQVAE", "VQVAESampler"]


@dataclass(frozen=True)
class VAESampler:
    """The ``sampler`` section of a vae manifest."""

    latent_shape: tuple[int, ...]                   # without the batch axis, e.g. [16] or [4, 8, 8]
    image_shape: tuple[int, ...]                    # [C, H, W]
    value_range: tuple[float, ...] = (-1.0, 1.0)    # of the encoder's input and the decoded images
    decoder_output: Literal["values", "logits"] = "values"
    noise: dict[str, tuple[NoiseInput, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_image_constants(self.image_shape, self.value_range)
        check_noise_sizes(self.noise)
        if problem := shape_problem(self.latent_shape):
            raise FieldError(("latent_shape", problem))
        if self.decoder_output == "logits" and tuple(self.value_range) != (0.0, 1.0):
            raise ValueError("a decoder of Bernoulli logits decodes to [0, 1]: value_range must be [0, 1]")


@dataclass(frozen=True)
class VAEDefaults:
    temperature: float = 1.0


@dataclass(frozen=True)
class VQVAESampler:
    """The ``sampler`` section of a vq-vae manifest."""

    codebook_size: int                              # K
    code_dim: int                                   # D
    grid: tuple[int, ...]                           # [h, w] codes per image
    image_shape: tuple[int, ...]
    value_range: tuple[float, ...] = (-1.0, 1.0)
    noise: dict[str, tuple[NoiseInput, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_image_constants(self.image_shape, self.value_range)
        check_noise_sizes(self.noise)
        problems = [(key, p) for key, p in (("codebook_size", count_problem(self.codebook_size)),
                                            ("code_dim", count_problem(self.code_dim, 1, MAX_DIMENSION)),
                                            ("grid", shape_problem(self.grid, rank=2))) if p]
        if problems:
            raise FieldError(*problems)


@dataclass(frozen=True)
class VQVAEDefaults:
    pass


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)   # overflow-free logistic


def _check_temperature(t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise InvalidArgumentError(f"temperature must be a finite number >= 0 (1 = the prior, 0 = its mean), got {t!r}")
    return float(t)


def _as_batch(image: np.ndarray) -> np.ndarray:
    """One image, [H, W, C] or [1, H, W, C] -> [1, H, W, C] (check_images checks the rest)."""
    image = np.asarray(image)
    return image[None] if image.ndim == 3 else image


class _ImageCodec:
    """What both families share: loading, sampler parsing, images in and out."""

    family: str
    graph_io: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]   # role -> (inputs, outputs)
    sampler_type: type
    defaults_type: type

    def __init__(self, artifact: Artifact, provider: str, sampler: Any, defaults: Any,
                 graphs: dict[str, NoiseGraph]) -> None:
        self.artifact, self.provider, self.sampler, self.defaults, self.graphs = (artifact, provider, sampler,
                                                                                  defaults, graphs)
        self.image_shape = sampler.image_shape

    @classmethod
    def from_artifact(cls, artifact: Artifact, config: SessionConfig) -> Any:
        from edgegen.strict import from_json

        require_graphs(artifact, cls.family, tuple(cls.graph_io))
        sampler = from_json(cls.sampler_type, artifact.manifest.sampler, where="edgegen.json.sampler",
                            error=ManifestError, fix="re-convert the model")
        defaults = from_json(cls.defaults_type, artifact.manifest.defaults, where="edgegen.json.defaults",
                             error=ManifestError, fix="re-convert the model")
        cls._check_declared(artifact, sampler)
        provider, sessions = open_sessions(artifact, config, roles=tuple(cls.graph_io))
        graphs = {role: NoiseGraph(sessions[role], role, *cls._io(role, sampler), sampler.noise.get(role, ()))
                  for role in cls.graph_io}
        return cls(artifact, provider, sampler, defaults, graphs)

    @classmethod
    def _io(cls, role: str, sampler: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return cls.graph_io[role]

    @classmethod
    def _check_declared(cls, artifact: Artifact, sampler: Any) -> None:
        """The sampler's latent shape (vae) or code grid (vq-vae) against the input the graph declares."""
        role, name, key, tail = (("decoder", "latent", "latent_shape", sampler.latent_shape) if cls.family == "vae"
                                 else ("decode_codes", "indices", "grid", sampler.grid))
        spec = artifact.manifest.graphs[role].tensor(name)
        if spec is not None and not spec.fits(tail):
            raise ManifestError(f"{artifact.root}: edgegen.json.sampler.{key} is {list(tail)}, but the {role} graph "
                                f"declares its input {name} as {list(spec.shape)}; re-convert the model")

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, C, H, W] in value_range."""
        return from_uint8(check_images(images, self.image_shape), self.sampler.value_range)

    def _uint8(self, images: np.ndarray) -> np.ndarray:
        return to_uint8(images, self.sampler.value_range)

    def _check_memory(self, count: int, action: str, role: str, latent_values: int, noun: str = "images") -> None:
        """Refuse, before drawing anything, ``count`` images that cannot fit in memory: per image
        ``latent_values`` float32 values of latents (or codes), the ``role`` graph's noise, its output and
        working memory, to_uint8's copy and the uint8 image (the graph runs on all of them at once)."""
        pixels = math.prod(self.sampler.image_shape)
        noise = sum(math.prod(d for d in x.shape if d != BATCH) for x in self.graphs[role].noise)
        values = latent_values + noise + (4 + GRAPH_WORKING_VALUES) * pixels   # + sigmoid's two temporaries
        check_count_fits(count, 4 * values + pixels, action, noun)


class VAE(_ImageCodec):
    """A loaded vae artifact."""

    family = "vae"
    graph_io = {"encoder": (("image",), ("mean", "logvar")), "decoder": (("latent",), ("image",))}
    sampler_type, defaults_type = VAESampler, VAEDefaults

    @classmethod
    def _io(cls, role: str, sampler: VAESampler) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if role == "decoder" and sampler.decoder_output == "logits":
            return ("latent",), ("logits",)
        return cls.graph_io[role]

    # -- the float path ----------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, H, W, C] -> posterior mean and log-variance, [N, *latent_shape] each
        (``rng`` fills the encoder's lifted noise, if it draws any)."""
        mean, logvar = self.graphs["encoder"].run({"image": self._pixels(images)}, rng=rng)
        return mean, logvar

    def decode(self, latents: np.ndarray, *, noise: dict[str, np.ndarray] | None = None,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """z [N, *latent_shape] -> images [N, C, H, W] float32 in value_range (sigmoid applied to logits)."""
        z = np.ascontiguousarray(latents, dtype=np.float32)
        if z.shape[1:] != tuple(self.sampler.latent_shape) or len(z) == 0:
            raise InvalidArgumentError(f"latents must be [N, {', '.join(map(str, self.sampler.latent_shape))}], "
                                       f"got {list(z.shape)}")
        (out,) = self.graphs["decoder"].run({"latent": z}, noise=noise, rng=rng)
        return _sigmoid(out) if self.sampler.decoder_output == "logits" else out

    def prior(self, n: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """z = temperature * N(0, I): [n, *latent_shape] float32."""
        return np.float32(temperature) * rng.standard_normal((n, *self.sampler.latent_shape), dtype=np.float32)

    # -- the image-family contract --------------------------------------------------------------------
    def sample(self, n: int, *, seed: int | None = None, temperature: float | None = None) -> np.ndarray:
        """``n`` images ``uint8 [n, H, W, C]`` decoded from the prior; same seed, same images."""
        n, t = check_count(n), _check_temperature(self.defaults.temperature if temperature is None else temperature)
        rng = rng_for(seed)
        self._check_memory(n, "sampling", "decoder", 2 * math.prod(self.sampler.latent_shape))
        z = self.prior(n, rng, t)
        return self._uint8(self.decode(z, rng=rng))

    def reconstruct(self, images: np.ndarray, *, seed: int | None = None) -> np.ndarray:
        """uint8 [N, H, W, C] -> their reconstructions (decoded posterior means), uint8 [N, H, W, C]."""
        rng = rng_for(seed)
        mean, _ = self.encode(images, rng=rng)
        return self._uint8(self.decode(mean, rng=rng))

    def interpolate(self, seed_a: int, seed_b: int, *, frames: int = 8, temperature: float | None = None) -> np.ndarray:
        """``frames`` images along the great circle between two seeds' prior latents (frame 0 is
        ``sample(1, seed=seed_a)``; seed_a's noise for every frame)."""
        t = _check_temperature(self.defaults.temperature if temperature is None else temperature)
        rng_a = rng_for(seed_a)
        frames = check_frames(frames)   # slerp's float64 path: 7 values per latent value
        self._check_memory(frames, "interpolating", "decoder", 7 * math.prod(self.sampler.latent_shape), "frames")
        z_a, z_b = self.prior(1, rng_a, t)[0], self.prior(1, rng_for(seed_b), t)[0]
        noise = {k: np.repeat(v, frames, axis=0) for k, v in self.graphs["decoder"].draw_noise(1, rng_a).items()}
        return self._uint8(self.decode(slerp(z_a, z_b, frames), noise=noise))

    def interpolate_images(self, a: np.ndarray, b: np.ndarray, *, frames: int = 8,
                           seed: int | None = None) -> np.ndarray:
        """``frames`` images on the line between two images' posterior means (a, b: uint8 [H, W, C])."""
        pair = [check_images(_as_batch(x), self.image_shape) for x in (a, b)]
        if len(pair[0]) != 1 or len(pair[1]) != 1:
            raise InvalidArgumentError("interpolate_images takes one image for each end, [H, W, C] or [1, H, W, C]")
        rng = rng_for(seed)
        frames = check_frames(frames)
        self._check_memory(frames, "interpolating", "decoder", 2 * math.prod(self.sampler.latent_shape), "frames")
        mean, _ = self.encode(np.concatenate(pair), rng=rng)                          # [2, *latent_shape]
        noise = {k: np.repeat(v, frames, axis=0) for k, v in self.graphs["decoder"].draw_noise(1, rng).items()}
        return self._uint8(self.decode(lerp(mean[0], mean[1], frames), noise=noise))


class VQVAE(_ImageCodec):
    """A loaded vq-vae artifact."""

    family = "vq-vae"
    graph_io = {"encoder": (("image",), ("latents",)), "quantize": (("latents",), ("indices",)),
                "decode_codes": (("indices",), ("image",)), "decoder": (("latents",), ("image",))}
    sampler_type, defaults_type = VQVAESampler, VQVAEDefaults

    def encode(self, images: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 images [N, H, W, C] -> code indices [N, h, w] int64."""
        (z_e,) = self.graphs["encoder"].run({"image": self._pixels(images)}, rng=rng)  # [N, D, h, w]
        (indices,) = self.graphs["quantize"].run({"latents": z_e})
        return indices

    def decode_codes(self, indices: np.ndarray, *, noise: dict[str, np.ndarray] | None = None,
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """indices [N, h, w] -> images [N, C, H, W] float32 in value_range."""
        idx = np.asarray(indices)
        k, grid = self.sampler.codebook_size, tuple(self.sampler.grid)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 3 or idx.shape[1:] != grid or len(idx) == 0 \
                or idx.min() < 0 or idx.max() >= k:
            raise InvalidArgumentError(f"indices must be integers in 0..{k - 1} of shape [N, {grid[0]}, {grid[1]}], "
                                       f"got {idx.dtype} {list(idx.shape)}")
        (out,) = self.graphs["decode_codes"].run({"indices": idx.astype(np.int64)}, noise=noise, rng=rng)
        return out

    def decode(self, latents: np.ndarray, *, noise: dict[str, np.ndarray] | None = None,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """Quantized latents z_q [N, D, h, w] -> images [N, C, H, W] float32."""
        (out,) = self.graphs["decoder"].run({"latents": np.ascontiguousarray(latents, dtype=np.float32)},
                                            noise=noise, rng=rng)
        return out

    def sample_codes(self, n: int, rng: np.random.Generator, prior: np.ndarray | None = None) -> np.ndarray:
        """Code grids [n, h, w]: uniform over the codebook, or from ``prior`` ([K] or [h, w, K] probabilities)."""
        k, (h, w) = self.sampler.codebook_size, self.sampler.grid
        if prior is None:
            return rng.integers(0, k, size=(n, h, w), dtype=np.int64)
        p = np.asarray(prior, dtype=np.float64)
        if p.shape not in ((k,), (h, w, k)) or not np.all(np.isfinite(p)) or p.min() < 0 \
                or not np.allclose(p.sum(-1), 1.0, atol=1e-3):
            raise InvalidArgumentError(f"prior must be probabilities over the {k} codes of shape [{k}] or "
                                       f"[{h}, {w}, {k}], each summing to 1; got shape {list(p.shape)}")
        cdf = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1).reshape(-1, k)       # [1 or h*w, K]
        u = rng.random((n, h * w))                                                    # [n, h*w]
        idx = np.stack([np.searchsorted(cdf[j % len(cdf)], u[:, j], side="right") for j in range(h * w)], axis=1)
        return np.minimum(idx, k - 1).reshape(n, h, w).astype(np.int64)

    def sample(self, n: int, *, seed: int | None = None, prior: np.ndarray | None = None) -> np.ndarray:
        """``n`` images ``uint8 [n, H, W, C]`` from codes drawn uniformly (or from ``prior``)."""
        rng = rng_for(seed)
        n = check_count(n)   # per code: int64 index, the prior's float64 draw and searchsorted's result
        self._check_memory(n, "sampling", "decode_codes", 6 * math.prod(self.sampler.grid))
        codes = self.sample_codes(n, rng, prior)
        return self._uint8(self.decode_codes(codes, rng=rng))

    def reconstruct(self, images: np.ndarray, *, seed: int | None = None) -> np.ndarray:
        """uint8 [N, H, W, C] -> encode, quantize, decode -> uint8 [N, H, W, C]."""
        rng = rng_for(seed)
        return self._uint8(self.decode_codes(self.encode(images, rng=rng), rng=rng))
