"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests_support import write_tiny_artifact


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Path:
    return write_tiny_artifact(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_lm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight GPT-2 with a trained byte-level BPE tokenizer, converted once per session."""
    pytest.importorskip("torch")
    import edgegen
    from tests_support import write_tiny_hf_lm

    root = tmp_path_factory.mktemp("tiny-lm")
    return edgegen.convert(write_tiny_hf_lm(root / "hf", "gpt2"), root / "artifact", optimize=False)


@pytest.fixture(scope="session")
def heldout_texts() -> list[str]:
    """Three held-out stdlib files of the bundled models' split (models/train_pycode.py)."""
    from tests_support import load_models_file

    train_pycode = load_models_file("train_pycode")
    files = [f for f in train_pycode.list_source_files() if train_pycode.is_heldout(f)]
    assert len(files) >= 3, "the stdlib should give a held-out set"
    return [text for _, text in train_pycode.read_sources(files[:3])]


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(diffusers DDPMPipeline directory, its artifact): a tiny random UNet2DModel, converted once."""
    pytest.importorskip("diffusers")
    import edgegen
    from diffusion_support import write_tiny_ddpm_pipeline

    root = tmp_path_factory.mktemp("tiny-ddpm")
    source = write_tiny_ddpm_pipeline(root / "pipe")
    return source, edgegen.convert(source, root / "artifact")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(diffusers StableDiffusionPipeline directory, its artifact): tiny CLIP + UNet + VAE, converted once."""
    pytest.importorskip("diffusers")
    import edgegen
    from diffusion_support import write_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("tiny-sd")
    source = write_tiny_sd_pipeline(root / "pipe")
    return source, edgegen.convert(source, root / "artifact")


@pytest.fixture(scope="session")
def tiny_voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{"single": (VitsModel directory, its artifact), "speakers": (...)}: tiny random VITS voices
    (tests/tts_support.py), the second with 3 speakers and the deterministic duration predictor; converted once
    per session (about 35 s each)."""
    import edgegen
    from tts_support import make_voice

    root = tmp_path_factory.mktemp("tiny-voices")
    out = {}
    for name, options in (("single", {}), ("speakers", {"speakers": 3, "stochastic": False})):
        source = make_voice(root / f"{name}-hf", **options)
        out[name] = (source, edgegen.convert(str(source), root / name))
    return out


@pytest.fixture(scope="session")
def tiny_speecht5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(SpeechT5ForTextToSpeech directory with its x-vector speaker.npy, its SpeechT5HifiGan directory, the artifact):
    tiny random models (tests/speecht5_support.py) whose stop head stops after a few dozen frames; converted once
    per session (about 15 s)."""
    pytest.importorskip("sentencepiece")
    import edgegen
    from speecht5_support import make_speecht5

    root = tmp_path_factory.mktemp("tiny-speecht5")
    source, vocoder = make_speecht5(root / "speecht5")
    return source, vocoder, edgegen.convert(str(source), root / "artifact", vocoder=str(vocoder))


@pytest.fixture(scope="session")
def tiny_tabular(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, Path]]:
    """{"ctgan": (fitted CTGAN, its artifact), "tvae": (fitted TVAE, its artifact)}: tiny models fitted for a few
    epochs on tests/tabular_support.py's mixed table, converted once per session."""
    pytest.importorskip("ctgan")
    import edgegen
    from edgegen.converters.tabular import TabularSpec
    from tabular_support import fit

    root = tmp_path_factory.mktemp("tiny-tabular")
    out = {}
    for kind in ("ctgan", "tvae"):
        model = fit(kind)
        out[kind] = (model, edgegen.convert(TabularSpec(model=model), root / kind))
    return out


@pytest.fixture(scope="session")
def tiny_musicgen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(MusicgenForConditionalGeneration directory, its artifact): a tiny random MusicGen (tests/music_support.py),
    converted once per session (about 20 s)."""
    pytest.importorskip("transformers")
    import edgegen
    from music_support import make_musicgen

    root = tmp_path_factory.mktemp("tiny-musicgen")
    source = make_musicgen(root / "hf")
    return source, edgegen.convert(str(source), root / "artifact")
