"""edgegen.runtimes.audio.wav against the reference readers and STFTs: soundfile and scipy.io.wavfile read
the WAVs back, scipy.signal's STFTs recompute the spectrogram, PIL reads the PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
import soundfile
from PIL import Image

from edgegen.errors import InvalidArgumentError
from edgegen.runtimes.audio import wav


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """Stereo noise [2, 3001] with values beyond [-1, 1] (clipping) and exact halves (rounding)."""
    x = np.random.default_rng(0).standard_normal((2, 3001)) * 0.6
    x[0, :4] = [1.5, -1.5, 0.5 / 32767, 2.5 / 32767]   # clipped both ways; .5 steps round half to even
    return x


def _expected_pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------- WAV


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_round_trip(tmp_path, noise, channels):
    """int16 values are round(clip(x) * 32767); soundfile and scipy agree on them, the rate and the layout."""
    x = noise[0] if channels == 1 else noise                                     # [n] or [2, n]
    path = wav.write_wav(tmp_path / "a.wav", x, 22050)
    assert path == tmp_path / "a.wav"
    expected = _expected_pcm16(x).T                                              # [n] or [n, 2]
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 22050 and data.shape == expected.shape
    np.testing.assert_array_equal(data, expected)
    rate, data = scipy.io.wavfile.read(path)
    assert rate == 22050 and data.dtype == np.int16
    np.testing.assert_array_equal(data, expected)
    info = soundfile.info(path)
    assert (info.channels, info.subtype, info.frames) == (channels, "PCM_16", x.shape[-1])
    assert _leftovers(tmp_path) == ["a.wav"]


@pytest.mark.filterwarnings("ignore:Chunk .non-data. not understood")   # libsndfile's PEAK chunk
def test_float_round_trip(tmp_path, noise):
    """sample_format='float': soundfile reads back exactly the float32 values (unclipped), subtype FLOAT."""
    path = wav.write_wav(tmp_path / "f.WAV", noise, 16000, sample_format="float")
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and soundfile.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(data, noise.astype(np.float32).T)
    rate, data = scipy.io.wavfile.read(path)
    np.testing.assert_array_equal(data, noise.astype(np.float32).T)


def test_wav_bytes_equal_the_file(tmp_path, noise):
    path = wav.write_wav(tmp_path / "b.wav", noise, 8000)
    assert wav.wav_bytes(noise, 8000) == path.read_bytes()
    assert wav.wav_bytes(noise[1], 8000) == wav.write_wav(tmp_path / "m.wav", noise[1], 8000).read_bytes()


def test_overwrites_an_existing_file(tmp_path, noise):
    target = tmp_path / "a.wav"
    target.write_bytes(b"old")
    wav.write_wav(target, noise, 8000)
    assert soundfile.info(target).frames == noise.shape[1]
    assert _leftovers(tmp_path) == ["a.wav"]


def test_import_needs_no_torch_scipy_soundfile_or_pil():
    code = ("import sys, edgegen.runtimes.audio.wav; "
            "print(sorted(m for m in ('torch', 'scipy', 'soundfile', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------- spectrogram


@pytest.mark.parametrize(("n", "n_fft", "hop"), [(5000, 1024, 256), (3001, 256, 100), (700, 64, 64)])
def test_spectrogram_matches_scipy(noise, n, n_fft, hop):
    """Against scipy.signal.ShortTimeFFT (unscaled, padding='even' = numpy 'reflect') and scipy.signal.stft
    (boundary='even', its 1/sum(window) scaling undone).  Tolerance: float64 rounding of two FFTs, 1e-9
    relative on magnitudes and 1e-9 dB where |X| is not tiny."""
    x = np.random.default_rng(n).standard_normal(n) * 0.3
    db, freqs, times = wav.spectrogram(x, 16000, n_fft=n_fft, hop=hop)
    frames = 1 + n // hop
    assert db.shape == (n_fft // 2 + 1, frames)
    window = scipy.signal.get_window("hann", n_fft)
    sft = scipy.signal.ShortTimeFFT(window, hop, 16000, scale_to=None)
    ref = np.abs(sft.stft(x, p0=0, p1=frames, padding="even"))                   # [bins, frames]
    np.testing.assert_allclose(10 ** (db / 20), ref, rtol=1e-9, atol=1e-12)
    big = ref > 1e-6
    np.testing.assert_allclose(db[big], 20 * np.log10(ref[big]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(freqs, sft.f)
    np.testing.assert_allclose(times, sft.t(n, p0=0, p1=frames))
    _, _, legacy = scipy.signal.stft(x, 16000, window="hann", nperseg=n_fft, noverlap=n_fft - hop,
                                     boundary="even", padded=False)
    np.testing.assert_allclose(np.abs(legacy) * window.sum(), ref, rtol=1e-9, atol=1e-12)


def test_spectrogram_of_a_sine_peaks_at_its_frequency():
    t = np.arange(16000) / 16000
    db, freqs, _ = wav.spectrogram(0.5 * np.sin(2 * np.pi * 1000 * t), 16000)
    peak = np.argmax(db.mean(axis=1))
    assert peak == np.argmin(np.abs(freqs - 1000)) == 64                         # 1000 Hz / (16000 / 1024)


def test_spectrogram_lowers_n_fft_for_short_signals():
    x = np.random.default_rng(1).standard_normal(300)
    db, freqs, _ = wav.spectrogram(x, 16000, n_fft=1024, hop=64)
    assert db.shape == (129, 1 + 300 // 64)                                      # n_fft 256 = 2**8 <= 300
    ref_db, _, _ = wav.spectrogram(x, 16000, n_fft=256, hop=64)
    np.testing.assert_array_equal(db, ref_db)
    assert db.min() >= 20 * np.log10(1e-10)


def test_silence_is_floored_at_minus_200_db():
    db, _, _ = wav.spectrogram(np.zeros(64), 8000, n_fft=16, hop=8)
    assert np.all(db == -200.0)


# ----------------------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize(("n_fft", "rows"), [(1024, 257), (256, 129), (2048, 342)])
def test_spectrogram_png(tmp_path, n_fft, rows):
    """A 200 Hz tone lights the bottom rows; bins above 512 are averaged in groups of
    ceil(bins / 512): 513 -> 257 rows (pairs), 1025 -> 342 (threes, the last one short)."""
    t = np.arange(16000) / 16000
    path = wav.save_spectrogram_png(0.5 * np.sin(2 * np.pi * 200 * t), 16000, tmp_path / "s.png", n_fft=n_fft)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        pixels = np.asarray(img, dtype=np.float64)                               # [H, W, 3]
    assert pixels.shape == (rows, 1 + 16000 // 256, 3)
    brightness = pixels.sum(axis=(1, 2))                                         # viridis: louder = brighter
    assert np.argmax(brightness) >= rows - 1 - rows * 400 // 8000                # at most 400 Hz up from bottom
    assert brightness[-rows // 8:].mean() > brightness[: rows // 2].mean()
    assert _leftovers(tmp_path) == ["s.png"]


def test_spectrogram_png_colours_span_the_map(tmp_path):
    """The loudest pixel is viridis' yellow end, the top_db floor its purple end."""
    x = np.random.default_rng(2).standard_normal(4000) * 0.1
    x[:2000] = 0                                                                 # silence: the floor
    with Image.open(wav.save_spectrogram_png(x, 8000, tmp_path / "n.png", n_fft=256, top_db=60)) as img:
        pixels = np.asarray(img).reshape(-1, 3)
    assert (pixels == [68, 1, 84]).all(axis=1).any()
    assert (pixels == [253, 231, 37]).all(axis=1).any()


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"samples": np.zeros(0)}, "empty"),
    ({"samples": np.zeros((2, 0))}, "empty"),
    ({"samples": np.array([0.1, np.nan, 0.2])}, "NaN"),
    ({"samples": np.array([0.1, np.inf])}, "infinite"),
    ({"samples": np.zeros((1, 2, 3))}, "shape (1, 2, 3)"),
    ({"samples": np.zeros(10, dtype=np.int16)}, "int16"),
    ({"samples": np.zeros(10, dtype=complex)}, "complex"),
    ({"samples": np.zeros((100, 2))}, "transpose"),
    ({"samples": ["a", "b"]}, "float array"),
    ({"rate": 0}, "rate"),
    ({"rate": -8000}, "rate"),
    ({"rate": 16000.5}, "rate"),
    ({"rate": True}, "rate"),
    ({"sample_format": "pcm24"}, "sample_format 'pcm24'"),
    ({"sample_format": "float", "samples": np.array([1e300])}, "float32"),
])
def test_bad_input_leaves_nothing(tmp_path, kwargs, words):
    args = {"samples": np.zeros(10), "rate": 8000, **kwargs}
    with pytest.raises(InvalidArgumentError) as err:
        wav.write_wav(tmp_path / "x.wav", args.pop("samples"), args.pop("rate"), **args)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(tmp_path) == []
    if "sample_format" not in kwargs:
        with pytest.raises(InvalidArgumentError):
            wav.wav_bytes(kwargs.get("samples", np.zeros(10)), kwargs.get("rate", 8000))


def test_bad_paths(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"give a path ending in \.wav"):
        wav.check_wav_path(tmp_path / "a.mp3")
    missing = tmp_path / "nope" / "deeper"
    with pytest.raises(InvalidArgumentError, match="no such folder") as err:
        wav.write_wav(missing / "a.wav", np.zeros(10), 8000)
    assert str(missing) in str(err.value)
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        wav.write_wav(tmp_path / "d.wav", np.zeros(10), 8000)
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match="is a file, not a folder"):
        wav.check_wav_path(tmp_path / "file" / "a.wav")
    assert wav.check_wav_path(tmp_path / "ok.Wav") == tmp_path / "ok.Wav"
    with pytest.raises(InvalidArgumentError, match=r"ending in \.png"):
        wav.save_spectrogram_png(np.zeros(100), 8000, tmp_path / "s.jpg")
    with pytest.raises(InvalidArgumentError, match="no such folder") as err:
        wav.save_spectrogram_png(np.zeros(100), 8000, missing / "s.png")
    assert str(missing) in str(err.value)
    assert _leftovers(tmp_path) == ["d.wav", "file"]


def test_failed_write_removes_the_temporary_file(tmp_path, monkeypatch):
    """A write that fails midway (disk full, here a raising soundfile) leaves neither file nor temp file."""
    def boom(*args, **kwargs):
        Path(args[0]).write_bytes(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(soundfile, "write", boom)
    (tmp_path / "keep.wav").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        wav.write_wav(tmp_path / "keep.wav", np.zeros(10), 8000, sample_format="float")
    assert _leftovers(tmp_path) == ["keep.wav"] and (tmp_path / "keep.wav").read_bytes() == b"old"


def test_float_without_soundfile_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)                         # import soundfile -> ImportError
    with pytest.raises(InvalidArgumentError, match=r"pip install 'edgegen\[audio\]'.*pcm16"):
        wav.write_wav(tmp_path / "a.wav", np.zeros(10), 8000, sample_format="float")
    assert _leftovers(tmp_path) == []
    wav.write_wav(tmp_path / "a.wav", np.zeros(10), 8000)                        # pcm16 still works


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"samples": np.zeros((2, 100))}, "mono"),
    ({"samples": np.zeros(10)}, "at least 16"),
    ({"samples": np.array([0.0] * 99 + [np.nan])}, "NaN"),
    ({"n_fft": 1000}, "power of two"),
    ({"n_fft": 8}, "power of two"),
    ({"hop": 0}, "hop"),
    ({"hop": 2.5}, "hop"),
    ({"rate": 0}, "rate"),
])
def test_bad_spectrogram_input(tmp_path, kwargs, words):
    args = {"samples": np.zeros(100), "rate": 8000, "n_fft": 64, "hop": 16, **kwargs}
    with pytest.raises(InvalidArgumentError) as err:
        wav.spectrogram(args.pop("samples"), args.pop("rate"), **args)
    assert words in str(err.value)
    args = {"samples": np.zeros(100), "rate": 8000, "n_fft": 64, "hop": 16, **kwargs}
    with pytest.raises(InvalidArgumentError):
        wav.save_spectrogram_png(args.pop("samples"), args.pop("rate"), tmp_path / "s.png", **args)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("top_db", [0, -5, float("nan"), "80"])
def test_bad_top_db(tmp_path, top_db):
    with pytest.raises(InvalidArgumentError, match="top_db"):
        wav.save_spectrogram_png(np.zeros(100), 8000, tmp_path / "s.png", top_db=top_db)
    assert _leftovers(tmp_path) == []
