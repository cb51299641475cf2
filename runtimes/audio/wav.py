"""Audio out of the audio families' runtimes: WAV files, WAV bytes and spectrogram PNGs (numpy + stdlib).

Runtimes hand audio around as float arrays, ``[n]`` (mono) or ``[channels, n]``, with values nominally in
``[-1, 1]``.  16-bit PCM WAV is written by the standard library's :mod:`wave` (clipped to ``[-1, 1]``, scaled
by 32767, rounded to nearest); float32 WAV through the optional ``soundfile`` package
(``pip install 'edgegen[audio]'``), imported only when asked for.  Files are written under a temporary name
beside the target and renamed into place, so a failed write leaves neither a half file nor the temporary one.

:func:`spectrogram` is the magnitude STFT in dB that librosa / ``torch.stft(center=True)`` compute: periodic
Hann window, frames centred by reflect-padding ``n_fft // 2`` samples on both sides.
"""

from __future__ import annotations

import io
import math
import os
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError

__all__ = ["SAMPLE_FORMATS", "check_wav_path", "write_wav", "wav_bytes", "spectrogram", "save_spectrogram_png"]

#: sample_format -> what it writes
SAMPLE_FORMATS = {"pcm16": "16-bit integer PCM (stdlib wave)", "float": "32-bit IEEE float (soundfile)"}

_MAX_CHANNELS = 16           # more "channels" than this is almost surely [n, channels] given the wrong way round
_MAX_RATE = 2**24            # WAV stores the rate and the byte rate in 32 bits; no real audio is above this
_MAX_DATA_BYTES = 2**32 - 64  # a RIFF chunk's size is 32 bits
_MIN_FFT = 16
_MAX_PNG_ROWS = 512          # frequency bins above this are averaged in groups
_MAX_PNG_COLUMNS = 4096      # so are frames

# viridis at 9 evenly spaced points (matplotlib's table at 0, 1/8, ..., 1), linearly interpolated between them
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


# ----------------------------------------------------------------------------------------------- paths


def check_wav_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if a WAV file can be written there: suffix ``.wav``, an existing folder
    above it, and not itself a folder.  Raises :class:`InvalidArgumentError` otherwise."""
    return _check_output_path(path, ".wav", "audio is written as WAV")


def _check_output_path(path: str | os.PathLike[str], suffix: str, what: str) -> Path:
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise InvalidArgumentError(f"{target}: {what}; give a path ending in {suffix}")
    if target.is_dir():
        raise InvalidArgumentError(f"{target} is a folder; give a file path ending in {suffix} inside it")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise InvalidArgumentError(f"{parent} is a file, not a folder; choose another output path")
    if not parent.is_dir():     # say so by the path asked for, not by the temporary file's name
        raise InvalidArgumentError(f"{parent}: no such folder; create it or choose another output path")
    return target


def _write_via_temp(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``target``, then rename it into place; whatever
    happens, no temporary file is left behind (and ``target`` is untouched when ``write`` fails)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


# ----------------------------------------------------------------------------------------------- checks


def _as_channels(samples: Any) -> np.ndarray:
    """``[n]`` or ``[channels, n]`` floats -> float64 ``[channels, n]``, checked: non-empty, finite, real."""
    if isinstance(samples, np.ndarray) and samples.dtype.kind in "biu":
        raise InvalidArgumentError(f"samples must be floats in [-1, 1], got dtype {samples.dtype}; scale integer "
                                   "PCM by 1/32768 (samples / 32768.0)")
    if np.iscomplexobj(samples):
        raise InvalidArgumentError("samples are complex; pass real audio (e.g. the real part)")
    try:
        x = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"samples must be a float array [n] or [channels, n] ({exc})") from None
    if x.ndim == 1:
        x = x[None, :]                                                           # [1, n]
    elif x.ndim != 2:
        raise InvalidArgumentError(f"samples must be [n] (mono) or [channels, n], got shape {x.shape}")
    channels, n = x.shape
    if channels == 0 or n == 0:
        raise InvalidArgumentError(f"samples are empty (shape {x.shape}); there is no audio to write")
    if channels > _MAX_CHANNELS:
        raise InvalidArgumentError(f"samples of shape {x.shape} have {channels} channels (at most "
                                   f"{_MAX_CHANNELS}); samples are [channels, n]: transpose [n, channels] with .T")
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise InvalidArgumentError(f"samples hold {bad} NaN or infinite value(s); the model's output is broken, "
                                   "fix or drop them before writing")
    return x


def _check_rate(rate: Any) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1 <= rate <= _MAX_RATE:
        raise InvalidArgumentError(f"rate must be a whole number of samples per second in [1, {_MAX_RATE}], "
                                   f"got {rate!r}; e.g. rate=16000")
    return int(rate)


def _check_size(x: np.ndarray, bytes_per_sample: int) -> None:
    if x.size * bytes_per_sample > _MAX_DATA_BYTES:
        raise InvalidArgumentError(f"{x.shape[1]} samples x {x.shape[0]} channel(s) exceed a WAV file's 4 GiB "
                                   "limit; write it in shorter pieces")


# ----------------------------------------------------------------------------------------------- WAV


def _pcm16_frames(x: np.ndarray) -> bytes:
    """float64 ``[channels, n]`` -> little-endian int16 frames, interleaved by sample."""
    ints = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")                # [channels, n]
    return np.ascontiguousarray(ints.T).tobytes()                                # [n, channels] interleaved


def _write_pcm16(fh: Any, x: np.ndarray, rate: int) -> None:
    """Write a 16-bit PCM WAV of ``x`` ``[channels, n]`` to the binary file object ``fh``."""
    with wave.open(fh, "wb") as wav:
        wav.setnchannels(x.shape[0])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.setnframes(x.shape[1])
        wav.writeframes(_pcm16_frames(x))


def wav_bytes(samples: Any, rate: int) -> bytes:
    """A 16-bit PCM WAV file in memory (for HTTP responses); the same bytes :func:`write_wav` writes."""
    x, rate = _as_channels(samples), _check_rate(rate)
    _check_size(x, 2)
    buf = io.BytesIO()
    _write_pcm16(buf, x, rate)
    return buf.getvalue()


def write_wav(path: str | os.PathLike[str], samples: Any, rate: int, *, sample_format: str = "pcm16") -> Path:
    """Write ``samples`` (``[n]`` or ``[channels, n]`` floats in ``[-1, 1]``) as a WAV file at ``path``.

    ``sample_format="pcm16"``: 16-bit PCM, clipped to [-1, 1] and rounded (no extra package).
    ``sample_format="float"``: 32-bit float, values kept as float32 (needs ``soundfile``).
    Every argument is checked before anything is written.  Returns the path."""
    target = check_wav_path(path)
    if sample_format not in SAMPLE_FORMATS:
        raise InvalidArgumentError(f"sample_format {sample_format!r} is not one of {', '.join(SAMPLE_FORMATS)}; "
                                   "use 'pcm16' (16-bit) or 'float' (32-bit float)")
    x, rate = _as_channels(samples), _check_rate(rate)
    if sample_format == "pcm16":
        _check_size(x, 2)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                _write_pcm16(fh, x, rate)
    else:
        if np.abs(x).max() > np.finfo(np.float32).max:
            raise InvalidArgumentError("samples hold values beyond float32's range; scale them to [-1, 1]")
        x32 = x.astype(np.float32)                                               # [channels, n]
        _check_size(x32, 4)
        soundfile = _import_soundfile()

        def write(tmp: Path) -> None:
            soundfile.write(str(tmp), x32.T, rate, subtype="FLOAT", format="WAV")  # [n, channels]
    return _write_via_temp(target, write)


def _import_soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError):   # OSError: the package is there but its libsndfile is not
        raise InvalidArgumentError("writing float WAV needs soundfile: pip install 'edgegen[audio]', or use "
                                   "sample_format='pcm16'") from None
    return soundfile


# ----------------------------------------------------------------------------------------------- spectrogram


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window of length ``n`` (scipy.signal.get_window('hann', n), torch.hann_window(n))."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)                    # [n]


def _check_stft(n: int, n_fft: Any, hop: Any) -> tuple[int, int]:
    """Checked ``(n_fft, hop)``, ``n_fft`` lowered to the largest power of two <= ``n`` for short signals."""
    for name, value in (("n_fft", n_fft), ("hop", hop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive whole number, got {value!r}")
    n_fft, hop = int(n_fft), int(hop)
    if n_fft < _MIN_FFT or n_fft & (n_fft - 1):
        raise InvalidArgumentError(f"n_fft must be a power of two >= {_MIN_FFT}, got {n_fft}; e.g. 1024")
    if n < _MIN_FFT:
        raise InvalidArgumentError(f"the signal has {n} samples; a spectrogram needs at least {_MIN_FFT}")
    return min(n_fft, 1 << (n.bit_length() - 1)), hop


def spectrogram(samples: Any, rate: int, *, n_fft: int = 1024, hop: int = 256,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude STFT in dB of a mono signal ``[n]`` (or ``[1, n]``).

    Returns ``(db, freqs, times)``: ``db`` ``[n_fft//2 + 1, 1 + n//hop]`` is ``20 log10(max(|X|, 1e-10))``,
    ``freqs`` the bins' frequencies in Hz, ``times`` the frames' centres in seconds.  ``n_fft`` is lowered to
    the largest power of two that fits a signal shorter than it."""
    x = _as_channels(samples)
    if x.shape[0] != 1:
        raise InvalidArgumentError(f"spectrogram takes mono audio, got {x.shape[0]} channels; mix down with "
                                   "samples.mean(axis=0)")
    rate = _check_rate(rate)
    n = x.shape[1]
    n_fft, hop = _check_stft(n, n_fft, hop)
    # 1. centre the frames: reflect-pad n_fft//2 on both sides (x[1..pad] mirrored, edge sample not repeated)
    padded = np.pad(x[0], n_fft // 2, mode="reflect")                           # [n + 2 * (n_fft//2)]
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]      # [F, n_fft], a view
    # 2. window and FFT, a block of frames at a time so long audio needs no frames-sized float copy at once
    window = _hann(n_fft)                                                        # [n_fft]
    db = np.empty((n_fft // 2 + 1, len(frames)), dtype=np.float64)               # [bins, F]
    for start in range(0, len(frames), 1024):
        block = np.abs(np.fft.rfft(frames[start:start + 1024] * window, axis=1))  # [<=1024, bins]
        db[:, start:start + 1024] = 20.0 * np.log10(np.maximum(block, 1e-10)).T
    freqs = np.arange(n_fft // 2 + 1) * (rate / n_fft)                           # [bins] Hz
    times = np.arange(len(frames)) * (hop / rate)                                # [F] s
    return db, freqs, times


def _pool(values: np.ndarray, axis: int, limit: int) -> np.ndarray:
    """Average ``values`` along ``axis`` in groups of ``ceil(size / limit)`` (the last group may be short)."""
    size = values.shape[axis]
    if size <= limit:
        return values
    group = math.ceil(size / limit)
    starts = np.arange(0, size, group)
    counts = np.diff(np.append(starts, size))                                    # [groups]
    sums = np.add.reduceat(values, starts, axis=axis)
    shape = [1, 1]
    shape[axis] = len(counts)
    return sums / counts.reshape(shape)


def _colormap(unit: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8 through the viridis anchors."""
    anchors = np.linspace(0.0, 1.0, len(_VIRIDIS))                               # [9]
    rgb = np.stack([np.interp(unit, anchors, _VIRIDIS[:, c]) for c in range(3)], axis=-1)  # [H, W, 3]
    return np.rint(rgb).astype(np.uint8)


def save_spectrogram_png(samples: Any, rate: int, path: str | os.PathLike[str], *, n_fft: int = 1024,
                         hop: int = 256, top_db: float = 80.0) -> Path:
    """Write the dB spectrogram of mono ``samples`` as a PNG at ``path``: low frequencies at the bottom,
    time left to right, ``[max - top_db, max]`` dB mapped through viridis.  At most 512 rows and 4096
    columns (bins and frames beyond are averaged in groups).  Returns the path."""
    from edgegen.runtimes.images import save_png

    target = _check_output_path(path, ".png", "spectrograms are written as PNG")
    if isinstance(top_db, bool) or not isinstance(top_db, (int, float, np.number)) \
            or not math.isfinite(top_db) or top_db <= 0:
        raise InvalidArgumentError(f"top_db must be a positive number of decibels, got {top_db!r}; e.g. 80")
    db, _, _ = spectrogram(samples, rate, n_fft=n_fft, hop=hop)                  # [bins, F]
    floor = db.max() - float(top_db)
    db = _pool(_pool(np.maximum(db, floor), 0, _MAX_PNG_ROWS), 1, _MAX_PNG_COLUMNS)  # [H, W]
    unit = (db - floor) / float(top_db)                                          # [H, W] in [0, 1]
    image = _colormap(unit[::-1])                                                # [H, W, 3], row 0 = top freq

    def write(tmp: Path) -> None:
        save_png(image, tmp)
    return _write_via_temp(target, write)
