"""Real-time factor of audio generation: edgegen's runtimes against transformers in PyTorch eager, on the same
random-weight models: a VITS voice, SpeechT5 + HiFi-GAN (benchmarks/_audio_speecht5.py) and MusicGen
(benchmarks/_audio_music.py).

    python benchmarks/audio.py            # full-sized models (MMS-TTS, SpeechT5, MusicGen-small), 7 / 3 / 3 repeats
    python benchmarks/audio.py --quick    # tiny models, 3 repeats, to check the script
    python benchmarks/audio.py --only vits   # one family: vits, speecht5 or musicgen

The voice is transformers' default ``VitsConfig`` (MMS-TTS's sizes: hidden 192, 6 encoder layers, HiFi-GAN from
512 channels, upsampling 8x8x2x2 = 256 samples per frame, 16 kHz) with random weights; random weights speak noise
but run the same graphs, and the duration predictor is nudged so that each token gets several frames (as a trained
voice's do), since the vocoder's cost follows the frames.  Each repeat speaks the same sentences with
``VitsModel(ids)`` under ``torch.no_grad()`` and with edgegen's ``speak`` (fp32, and with the decoder in fp16 and
int8), interleaved, batch 1, after a warm-up;
the real-time factor is seconds of compute per second of audio (lower is faster), median with min..max over
repeats, because shared machines are noisy.  Both run on the CPU with their default threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

SENTENCES = ["the quick brown fox jumps over the lazy dog",
             "a desktop app reads this sentence aloud without any network at all",
             "hello world"]


def make_voice(root: Path, quick: bool) -> Path:
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    symbols = ["k", "'", " ", "-", *"abcdefghijlmnopqrstuvwxyz0123456789"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    VitsTokenizer(str(root / "vocab.json"), pad_token="k", phonemize=False).save_pretrained(root)
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, flow_size=32, upsample_initial_channel=32,
                 upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], duration_predictor_filter_channels=32) \
        if quick else {}
    model = VitsModel(VitsConfig(vocab_size=len(symbols), **sizes)).eval()
    with torch.no_grad():   # several frames per token, as a trained voice gives (reverse flow: log-duration ~ 1.5, ~5 frames)
        model.duration_predictor.flows[0].translate.fill_(-1.5) if hasattr(model.duration_predictor, "flows") else None
    model.save_pretrained(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", choices=("vits", "speecht5", "musicgen"), default=None)
    args = parser.parse_args()
    if args.only in (None, "vits"):
        vits(args, args.repeats or (3 if args.quick else 7))
    for family, module in (("speecht5", "_audio_speecht5"), ("musicgen", "_audio_music")):
        if args.only in (None, family):
            others(module, args.quick, args.repeats or 3)


def others(module: str, quick: bool, repeats: int) -> None:
    """Rows of a family's run(): seconds per repeat of each side, as real-time factors (median, min..max)."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    for row in importlib.import_module(module).run(quick, repeats):
        audio = row["audio_s"]
        print(f"{row['model']}: {audio:.2f} s of audio per repeat, {repeats} interleaved repeats, CPU")
        meds = {}
        for name, times in row["times_s"].items():
            rtf = [t / audio for t in times]
            meds[name] = statistics.median(rtf)
            fidelity = row.get("quantized_fidelity", {}).get(name)
            note = "" if not fidelity else (f"  logits {fidelity['min_logits_snr_db']} dB SNR vs float32, top-1 "
                                            f"agreeing {fidelity['min_top1_agreement']:.1%}")
            note = note or ("" if name not in row.get("quantized_snr_db", {}) else
                            f"  waveform {row['quantized_snr_db'][name]} dB SNR vs edgegen fp32")
            print(f"  {name:<16}RTF {meds[name]:.4f} ({min(rtf):.4f}..{max(rtf):.4f}){note}")
        eager = meds.pop("pytorch eager")
        print("  vs PyTorch eager (issue 23's target: >= 1.5x): "
              + ", ".join(f"{name} {eager / m:.2f}x" for name, m in meds.items()))


def vits(args: argparse.Namespace, repeats: int) -> None:

    import torch
    from transformers import VitsModel, VitsTokenizer

    import edgegen

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = make_voice(Path(tmp) / "voice", args.quick)
        started = time.perf_counter()
        artifact = edgegen.convert(str(source), Path(tmp) / "voice.edgegen")
        convert_s = time.perf_counter() - started
        voices = {"edgegen fp32": edgegen.load(artifact, provider="cpu")}
        refused = {}
        for scheme in ("fp16", "int8"):   # the decoder quantized, the encoder fp32; the SNR gate may refuse
            try:
                voices[f"edgegen {scheme}"] = edgegen.load(edgegen.convert(
                    str(source), Path(tmp) / f"voice-{scheme}", quantize=scheme), provider="cpu")
            except edgegen.errors.ConversionError as exc:
                refused[scheme] = str(exc)
        model = VitsModel.from_pretrained(source).eval()
        tok = VitsTokenizer.from_pretrained(source)
        ids = [tok(s, return_tensors="pt").input_ids for s in SENTENCES]

        def eager() -> float:
            with torch.no_grad():
                return sum(model(i).waveform.shape[1] for i in ids) / model.config.sampling_rate

        def ours(voice):
            return lambda: sum(len(voice.speak(s, seed=0)[0]) for s in SENTENCES) / voice.sampling_rate

        fns = {"pytorch eager": eager, **{name: ours(v) for name, v in voices.items()}}
        runs: dict[str, list[float]] = {name: [] for name in fns}
        audio = {name: fn() for name, fn in fns.items()}                  # warm-up; seconds of audio per repeat
        for _ in range(repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                runs[name].append((time.perf_counter() - t) / audio[name])
    print(f"VITS {'tiny' if args.quick else 'MMS-TTS-sized'} voice, random weights, {len(SENTENCES)} sentences "
          f"({audio['edgegen fp32']:.1f} s of audio per repeat), {repeats} interleaved repeats, CPU, "
          f"torch {torch.get_num_threads()} threads; converted in {convert_s:.0f} s")
    print(f"{'runtime':<16}{'RTF median':>12}{'min..max':>18}{'x real time':>14}")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"{name:<16}{med:>12.4f}{f'{min(values):.4f}..{max(values):.4f}':>18}{1 / med:>13.1f}x")
    for scheme, why in refused.items():
        print(f"edgegen {scheme}: refused at conversion: {why}")
    for name in voices:
        speedup = statistics.median(runs["pytorch eager"]) / statistics.median(runs[name])
        print(f"{name} vs PyTorch eager: {speedup:.2f}x (issue 23's target: >= 1.5x)")


if __name__ == "__main__":
    main()
