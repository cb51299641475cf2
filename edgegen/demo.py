"""``edgegen demo``: convert the bundled reference models and generate from them, offline.

The models and their checkpoints live in the repository's ``models/`` folder (trained
there by the scripts beside them).  Artifacts go to ``<out>/artifacts/<name>`` and are
reused by the next run while the checkpoint they came from is unchanged (its sha256 is
in the artifact's manifest); outputs go to ``<out>/``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import ArtifactError, EdgegenError, write_error_line

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class Bundled:
    name: str
    spec: str                       # "<file>.py:function" inside models/, returning an edgegen spec, or a
                                    # model directory there (a transformers save_pretrained folder)
    checkpoint: str                 # relative to models/, for the reuse check
    run: Callable[[Any, Path, Callable[[str], None]], dict[str, Any]]


def _run_pycode(lm: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from edgegen import GenerationSettings

    # Prompts end where a line ends in the training text: a trailing "\n" would split the "\n    "
    # token the model knows, and it would not indent.
    prompts = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\n\ndef list_files(path):"]
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.3, max_new_tokens=64, stop=("\n\n\n",))
    sampled = GenerationSettings(temperature=0.7, top_k=40, repetition_penalty=1.1, seed=0, max_new_tokens=64,
                                 stop=("\n\n\n",))
    first = lm.complete(prompts[:1], greedy)[0]
    batch = lm.complete(prompts, sampled)
    lines = ["# greedy, repetition penalty 1.3", prompts[0] + first.text, ""]
    for prompt, done in zip(prompts, batch, strict=True):
        lines += ["# temperature 0.7, top-k 40, repetition penalty 1.1, seed 0", prompt + done.text, ""]
    (out / "pycode.txt").write_text("\n".join(lines), encoding="utf-8")
    say("code completion (greedy):")
    say("    " + (prompts[0] + first.text).replace("\n", "\n    ").rstrip())
    return {"output": str(out / "pycode.txt"), "prompt_tokens": first.prompt_tokens,
            "new_tokens": len(first.token_ids), "time_to_first_token_ms": round(1000 * first.time_to_first_token_s, 1),
            "decode_tokens_per_s": round(first.decode_tokens_per_s, 1),
            "batch_of_3_decode_tokens_per_s": round(batch[0].decode_tokens_per_s * len(prompts), 1)}


def _run_charlstm(lm: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from edgegen import GenerationSettings

    prompts = ["def ", "import ", "class "]
    sampled = GenerationSettings(temperature=0.8, top_k=20, seed=0, max_new_tokens=160)
    batch = lm.complete(prompts, sampled)
    text = "\n".join(f"# temperature 0.8, top-k 20, seed 0\n{p}{done.text}\n" for p, done in zip(prompts, batch))
    (out / "charlstm.txt").write_text(text, encoding="utf-8")
    say("character-level LSTM (temperature 0.8, seed 0):")
    say("    " + (prompts[0] + batch[0].text).replace("\n", "\n    ").rstrip())
    return {"output": str(out / "charlstm.txt"), "new_tokens": len(batch[0].token_ids),
            "time_to_first_token_ms": round(1000 * batch[0].time_to_first_token_s, 1),
            "batch_of_3_decode_tokens_per_s": round(batch[0].decode_tokens_per_s * len(prompts), 1)}


def _digit_grid(model: Any, out: Path, name: str, say: Callable[[str], None], what: str,
                **options: Any) -> dict[str, Any]:
    """Ten samples of each digit (one row per digit, 0 to 9) as an upscaled PNG grid."""
    import numpy as np

    from edgegen.runtimes.images import save_images

    labels = [int(k) for k in np.repeat(np.arange(10), 10)]
    started = time.perf_counter()
    images = model.sample(len(labels), seed=0, label=labels, **options)                  # [100, 8, 8, 1]
    seconds = time.perf_counter() - started
    path = save_images(images, out / f"{name}.png", columns=10, upscale=4)[0]
    say(f"{what}: wrote {path} (rows: digits 0-9)")
    return {"output": str(path), "images": len(images), "sample_s": round(seconds, 3)}


def _run_digits_ddpm(model: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    d = model.defaults
    return _digit_grid(model, out, "digits_ddpm", say,
                       f"class-conditional DDPM ({d.scheduler} {d.steps} steps, guidance {d.guidance}, seed 0)")


def _run_digits_gan(model: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    return _digit_grid(model, out, "digits_gan", say, "class-conditional DCGAN (seed 0)")


def _unconditional_grid(model: Any, out: Path, name: str, say: Callable[[str], None], what: str,
                        **options: Any) -> dict[str, Any]:
    from edgegen.runtimes.images import save_images

    started = time.perf_counter()
    images = model.sample(100, seed=0, **options)                                      # [100, 8, 8, 1]
    seconds = time.perf_counter() - started
    path = save_images(images, out / f"{name}.png", columns=10, upscale=4)[0]
    say(f"{what}: wrote {path}")
    return {"output": str(path), "images": len(images), "sample_s": round(seconds, 3)}


def _run_digits_vae(model: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    return _unconditional_grid(model, out, "digits_vae", say, "VAE prior samples (seed 0)")


def _run_digits_flow(model: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    return _unconditional_grid(model, out, "digits_flow", say, "RealNVP flow samples (default temperature, seed 0)")


def _run_wine(model: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """1,000 rows of the wine CTGAN (seed 0) to wine.csv, and the share of class_1 when conditioned on it."""
    started = time.perf_counter()
    table = model.sample_rows(1000, seed=0)
    seconds = time.perf_counter() - started
    path = table.write(out / "wine.csv")
    conditioned = model.sample_rows(1000, seed=0, condition={"cultivar": "class_1"})
    shown = ("cultivar", "alcohol", "color_intensity", "color_intensity_level", "proline")
    say(f"CTGAN wine rows (seed 0): wrote {path} ({len(table.columns)} columns); the first 3, in part:")
    for row in table.head(3).rows():
        say("    " + ", ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in shown))
    return {"output": str(path), "rows": len(table), "rows_per_s": round(len(table) / seconds),
            "class_1_share_conditioned": round(float((conditioned["cultivar"] == "class_1").mean()), 3)}


def _run_speech(voice: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Three digit phrases spoken by the bundled VITS voice (seed 0) to WAV files, each with its spectrogram."""
    from edgegen.runtimes.audio.wav import save_spectrogram_png, write_wav

    phrases = ["seven two", "nine four one", "three"]
    audio_s = speak_s = 0.0
    paths = []
    for i, phrase in enumerate(phrases):
        started = time.perf_counter()
        samples, rate = voice.speak(phrase, seed=0)                                       # [n] at rate Hz
        speak_s += time.perf_counter() - started
        audio_s += len(samples) / rate
        paths.append(write_wav(out / f"speech_{i}.wav", samples, rate))
        save_spectrogram_png(samples, rate, out / f"speech_{i}.spectrogram.png")
        say(f"VITS voice (seed 0): {phrase!r} -> {paths[-1]} ({len(samples) / rate:.2f} s, spectrogram beside it)")
    return {"output": str(paths[0]), "phrases": len(phrases), "audio_s": round(audio_s, 2),
            "real_time_factor": round(speak_s / max(audio_s, 1e-9), 4)}


BUNDLED = (
    Bundled("pycode", "pycode.py:spec", "pycode/model.safetensors", _run_pycode),
    Bundled("charlstm", "charlstm_bundled.py:spec", "charlstm/model.safetensors", _run_charlstm),
    Bundled("digits_ddpm", "digits_ddpm.py:spec", "digits_ddpm/model.safetensors", _run_digits_ddpm),
    Bundled("digits_gan", "digits_gan.py:spec", "digits_gan/model.safetensors", _run_digits_gan),
    Bundled("digits_vae", "digits_vae.py:spec", "digits_vae/model.safetensors", _run_digits_vae),
    Bundled("digits_flow", "digits_flow.py:spec", "digits_flow/model.safetensors", _run_digits_flow),
    Bundled("wine_tabular", "wine_tabular.py:spec", "wine_tabular/model.safetensors", _run_wine),
    Bundled("speech", "speech", "speech/model.safetensors", _run_speech),
)


#: how the summary line words each figure of a run (--json keeps the keys)
_FIGURE_TEXT = {"prompt_tokens": "{} prompt tokens", "new_tokens": "{} new tokens",
                "time_to_first_token_ms": "first token {} ms", "decode_tokens_per_s": "{} tokens/s",
                "batch_of_3_decode_tokens_per_s": "{} tokens/s in all for a batch of 3", "images": "{} images",
                "sample_s": "sampled in {} s", "rows": "{} rows", "rows_per_s": "{} rows/s",
                "class_1_share_conditioned": "class_1 share {} when conditioned on it", "phrases": "{} phrases",
                "audio_s": "{} s of audio", "real_time_factor": "real-time factor {}"}


def _source(item: Bundled, models: Path) -> str:
    """What ``edgegen.convert`` takes for ``item``: ``models/<file>.py:function``, or the model directory."""
    if ":" not in item.spec:
        return str(models / item.spec)
    file, function = item.spec.split(":")
    return f"{models / file}:{function}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_demo(out: Path, models: Path | None = None, provider: str = "auto", say: Callable[[str], None] = print,
             ) -> dict[str, Any]:
    """Convert (or reuse) every bundled model, generate from each; returns what was done and timings."""
    import edgegen
    from edgegen.manifest import read_manifest

    models = models or REPO_MODELS
    if not models.is_dir():
        raise EdgegenError(f"the demo needs the repository's models/ folder ({models} is missing); "
                           "run it from a clone of the edgegen repository or pass --models DIR")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(write_error_line(exc, out)) from None
    report: dict[str, Any] = {}
    for item in BUNDLED:
        checkpoint = models / item.checkpoint
        if not checkpoint.is_file():
            raise EdgegenError(f"bundled checkpoint {checkpoint} is missing; restore it with git or retrain it "
                               f"with the script in {models}")
        artifact = out / "artifacts" / item.name
        sha = _sha256(checkpoint)
        started = time.perf_counter()
        try:
            reused = (artifact / "edgegen.json").is_file() and read_manifest(artifact).source.checkpoint_sha256 == sha
        except EdgegenError as exc:   # converting over it would be refused too: say what to do
            raise EdgegenError(f"{artifact} holds a damaged artifact ({exc}); remove that folder and run the demo "
                               "again") from None
        if reused:
            say(f"{item.name}: reusing {artifact}")
        else:
            say(f"{item.name}: converting {checkpoint.relative_to(models.parent)} ...")
            edgegen.convert(_source(item, models), artifact, overwrite=True,
                            report=lambda line, name=item.name: say(f"  {line}"))
        convert_s = time.perf_counter() - started
        started = time.perf_counter()
        runtime = edgegen.load(artifact, provider=provider)
        load_s = time.perf_counter() - started
        try:
            figures = item.run(runtime, out, say)
        except ArtifactError:
            raise
        except OSError as exc:   # writing the sample text or images: full disk, read-only folder
            raise ArtifactError(write_error_line(exc, os.fsdecode(exc.filename) if exc.filename else out)) from None
        report[item.name] = {"artifact": str(artifact), "reused": reused, "convert_s": round(convert_s, 2),
                             "load_s": round(load_s, 3), "provider": runtime.provider, **figures}
        say(f"{item.name}: {'reused' if reused else f'converted in {convert_s:.1f} s'}, loaded in {load_s:.2f} s "
            f"on {runtime.provider}; " + ", ".join(_FIGURE_TEXT.get(k, f"{k} {{}}").format(v)
                                                   for k, v in figures.items() if k != "output"))
    return report
