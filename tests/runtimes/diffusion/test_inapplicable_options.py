"""``edgegen sample`` refuses what does not apply to the artifact, in one line, rather than running without it:
options of another family or conditioning (a label on text-to-image, a prompt on an unconditional model),
settings that change nothing where they are (a negative prompt with guidance off), and the command's own
options that the run would not read (``--frames`` without ``--interpolate``; ``--seed`` / ``-n`` with it),
every family alike.  What does apply still runs (the last test)."""

from __future__ import annotations

import pytest

from image_support import dcgan_artifact, vae_artifact  # noqa: F401  (fixtures)
from tests_support import assert_one_line_error, run_cli

pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def artifacts(tiny_ddpm, tiny_sd, dcgan_artifact, vae_artifact):   # noqa: F811
    return {"ddpm": tiny_ddpm[1], "sd": tiny_sd[1], "dcgan": dcgan_artifact, "vae": vae_artifact}


CASES = [
    # diffusion: by the artifact's conditioning
    ("sd", ["--label", "3", "--prompt", "a cat"], "takes a text prompt (--prompt), not a label; drop --label"),
    ("ddpm", ["--label", "3"], "not class-conditional: it takes nothing (it is unconditional), not a label"),
    ("ddpm", ["--prompt", "a cat"], "not text-conditioned: it takes no prompt"),
    ("ddpm", ["--guidance", "3"], "classifier-free guidance needs a text- or class-conditioned model"),
    ("sd", ["--prompt", "a cat", "--negative-prompt", "dog", "--guidance", "1"],
     "the negative prompt is the unconditional half of classifier-free guidance, which is off at guidance 1"),
    ("sd", ["--prompt", "a cat", "--strength", "0.5"], "strength applies to img2img; give an image"),
    # another family's options, listed as this artifact takes them
    ("ddpm", ["--truncation", "0.7"], "--truncation does not apply to this diffusion artifact (its options: "
                                      "--steps, --scheduler, --image, --strength)"),
    ("sd", ["--temperature", "0.5", "--prompt", "a cat"],
     "--temperature does not apply to this diffusion artifact (its options: --steps, --scheduler, --prompt, "
     "--negative-prompt, --guidance, --image, --strength)"),
    ("dcgan", ["--steps", "3"], "--steps does not apply to this gan artifact"),
    ("vae", ["--scheduler", "ddim"], "--scheduler does not apply to this vae artifact (its options: --temperature)"),
    # the command's own options the run would not read, every family alike
    *[(family, ["--frames", "4"], "--frames applies to an --interpolate strip") for family in ("ddpm", "dcgan", "vae")],
    *[(family, ["--interpolate", "1", "2", "--seed", "5"], "--seed does not apply to --interpolate")
      for family in ("ddpm", "dcgan", "vae")],
    ("dcgan", ["--interpolate", "1", "2", "-n", "3"], "-n does not apply to --interpolate"),
]


@pytest.mark.parametrize("family, args, message", CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in CASES])
def test_an_option_that_does_not_apply_is_refused_in_one_line(artifacts, tmp_path, family, args, message):
    out = tmp_path / "out.png"
    assert_one_line_error(run_cli("sample", artifacts[family], "-o", out, "--steps", "2", *args)
                          if family in ("ddpm", "sd") and "--steps" not in args else
                          run_cli("sample", artifacts[family], "-o", out, *args), message)
    assert not out.exists()


def test_what_applies_still_runs(artifacts, tmp_path):
    for family, args in [("sd", ["--prompt", "a cat", "--negative-prompt", "dog", "--guidance", "3", "--steps", "2"]),
                         ("ddpm", ["--guidance", "1", "--steps", "2"]),          # 1 is "off": accepted, as GAN's
                         ("ddpm", ["--interpolate", "1", "2", "--frames", "3", "--steps", "2"]),   # truncation 1
                         ("dcgan", ["--interpolate", "1", "2", "--frames", "3"]), ("vae", ["-n", "2", "--seed", "1"])]:
        result = run_cli("sample", artifacts[family], "-o", tmp_path / f"{family}.png", *args)
        assert result.exit_code == 0, (family, args, result.output)
