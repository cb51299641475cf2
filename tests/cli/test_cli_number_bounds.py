"""Numbers, text and sizes on the generation side: each bad value is one short error, never a traceback.

Values edgegen refuses are one ``Error: ...`` line and exit 1, with nothing written; values a click
range refuses (the runtime's static limits, ``edgegen.runtimes.limits``) are click usage errors, exit
2, whose last line is ``Error: ...`` (the convention of test_cli_bad_inputs.py).  Every case runs
against a real tiny artifact of its family.
"""

from __future__ import annotations

import json
import shutil
import traceback

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import image_support
from edgegen.cli import cli

dcgan_artifact, conditional_artifact = image_support.dcgan_artifact, image_support.conditional_artifact
vae_artifact, vqvae_artifact = image_support.vae_artifact, image_support.vqvae_artifact

HUGE = str(10**15)        # images or frames no machine holds (8x8 images of >= 100 bytes: 100 PB)
BIG = str(10**30)


@pytest.fixture(scope="module")
def flow_artifact(tmp_path_factory):
    pytest.importorskip("torch")
    import flow_models as fm
    from edgegen.converters.flow.convert import convert_flow

    return convert_flow(fm.glow_spec(fm.make_glow()), tmp_path_factory.mktemp("flow") / "glow", report=lambda _l: None)


def gen(*args: str) -> tuple[str, ...]:
    return ("generate", "{lm}", "-p", "hi", "-n", "2", *args)


def smp(artifact: str, *args: str) -> tuple[str, ...]:
    return ("sample", "{" + artifact + "}", "-o", "{out}", *args)


#: name -> (args, words the one error line must hold)
ONE_LINE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "temperature-nan": (gen("-t", "nan"), ("temperature must be a finite number >= 0", "nan")),
    "temperature-inf": (gen("-t", "inf"), ("temperature must be a finite number >= 0", "inf")),
    "top-p-five": (gen("--top-p", "5"), ("top_p must be in (0, 1]", "5.0")),
    "top-p-nan": (gen("--top-p", "nan"), ("top_p must be a finite number",)),
    "top-k-negative": (gen("--top-k", "-3"), ("top_k must be >= 0",)),
    "min-p-nan": (gen("--min-p", "nan"), ("min_p must be a finite number",)),
    "typical-p-zero": (gen("--typical-p", "0"), ("typical_p must be in (0, 1]",)),
    "repetition-penalty-inf": (gen("--repetition-penalty", "inf"), ("repetition_penalty must be a finite number",)),
    "presence-penalty-three": (gen("--presence-penalty", "3"), ("presence_penalty must be in [-2, 2]",)),
    "frequency-penalty-nan": (gen("--frequency-penalty", "nan"), ("frequency_penalty must be a finite number",)),
    "several-at-once": (gen("-t", "-1", "--top-p", "2"), ("temperature must be >= 0", "; top_p must be in (0, 1]")),
    "stop-token-id-negative": (gen("--stop-token-id", "-3"), ("stop_token_ids must be non-negative integers",)),
    # what Python makes of bytes that are not UTF-8 in argv (surrogateescape): b"\xff" -> "\udcff"
    "prompt-not-utf8": (("generate", "{lm}", "-p", "ab\udcff"),
                        ("the prompt is not valid UTF-8 (character 2 is the byte 0xff)", "iconv")),
    "prompt-lone-surrogate": (("generate", "{lm}", "-p", "\ud800"), ("the prompt is not valid UTF-8", "U+D800")),
    "stop-not-utf8": (gen("--stop", "\udcfe"), ("stop string 0 is not valid UTF-8", "0xfe")),
    "label-on-unconditional-diffusion": (smp("ddpm", "--label", "3"),
                                         ("not class-conditional: it takes nothing (it is unconditional)",
                                          "drop --label")),
    "label-on-text-to-image": (smp("sd", "--label", "3", "--prompt", "a cat"),
                               ("takes a text prompt (--prompt), not a label; drop --label",)),
    "sd-prompt-not-utf8": (smp("sd", "--prompt", "cat\udcff"), ("the prompt is not valid UTF-8", "0xff")),
    "sd-negative-prompt-surrogate": (smp("sd", "--prompt", "cat", "--negative-prompt", "\udfff"),
                                     ("the negative prompt is not valid UTF-8", "U+DFFF")),
    "sd-guidance-inf": (smp("sd", "--prompt", "cat", "--guidance", "inf"), ("guidance must be a finite number",)),
    "sd-guidance-nan": (smp("sd", "--prompt", "cat", "--guidance", "nan"), ("guidance must be a finite number",)),
    "sd-strength-two": (smp("sd", "--prompt", "cat", "--image", "{tmp}/start.png", "--strength", "2"),
                        ("strength must be between 0 and 1",)),
    "steps-huge": (smp("ddpm", "--steps", "100000000000000000000"), ("steps must be an integer from 1 to",)),
    "steps-negative": (smp("ddpm", "--steps", "-5"), ("steps must be an integer of at least 1",)),
    "ddpm-num-huge": (smp("ddpm", "-n", HUGE, "--separate"), ("sampling about 10^15 images needs about",
                                                              "ask for at most")),
    "ddpm-grid-huge": (smp("ddpm", "-n", HUGE), ("a grid PNG of about 10^15 images needs about", "--separate")),
    "ddpm-frames-huge": (smp("ddpm", "--interpolate", "0", "1", "--frames", HUGE, "--separate"),
                         ("interpolating about 10^15 frames needs about",)),
    "gan-num-huge": (smp("dcgan", "-n", HUGE, "--separate"), ("sampling about 10^15 images needs about",)),
    "gan-frames-huge": (smp("dcgan", "--interpolate", "0", "1", "--frames", HUGE, "--separate"),
                        ("interpolating about 10^15 frames",)),
    "gan-upscaled-grid": (smp("dcgan", "-n", "100000000", "--upscale", "32"), ("a grid PNG of 100000000 images",
                                                                               "use a smaller --upscale")),
    "gan-label-on-unconditional": (smp("dcgan", "--label", "3"), ("this GAN is unconditional", "drop --label 3")),
    "gan-label-huge": (smp("cond", "--label", BIG), ("label must be a class index in 0..4", BIG)),
    "gan-label-negative": (smp("cond", "--label", "-1"), ("label must be a class index in 0..4",)),
    "gan-truncation-nan": (smp("dcgan", "--truncation", "nan"), ("truncation must be a number in [0, 1]",)),
    "vae-num-huge": (smp("vae", "-n", HUGE, "--separate"), ("sampling about 10^15 images",)),
    "vae-frames-huge": (smp("vae", "--interpolate", "0", "1", "--frames", HUGE, "--separate"),
                        ("interpolating about 10^15 frames",)),
    "vae-temperature-nan": (smp("vae", "--temperature", "nan"), ("temperature must be a finite number >= 0",)),
    "vae-label": (smp("vae", "--label", "3"), ("--label does not apply to this vae artifact",
                                               "(its options: --temperature)")),
    "vqvae-num-huge": (smp("vqvae", "-n", HUGE, "--separate"), ("sampling about 10^15 images",)),
    "flow-num-huge": (smp("flow", "-n", HUGE, "--separate"), ("sampling about 10^15 images",)),
    "flow-frames-huge": (smp("flow", "--interpolate", "0", "1", "--frames", HUGE, "--separate"),
                         ("interpolating about 10^15 frames",)),
    "flow-temperature-inf": (smp("flow", "--temperature", "inf"), ("temperature must be a number > 0",)),
}

#: name -> (args, words the last line of click's usage error must hold)
CLICK_RANGE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "threads-huge": (gen("--threads", "1000000000000"), ("'--threads'", "is not in the range 1<=x<=1024")),
    "device-id-huge": (gen("--device-id", str(10**20)), ("'--device-id'", "is not in the range 0<=x<=32767")),
    "free-dim-huge": (gen("--free-dim", "batch_size=" + "9" * 20), ("a dimension size must be at most 2147483647",)),
    "free-dim-5000-digits": (smp("ddpm", "--free-dim", "batch=" + "9" * 5000), ("a dimension size must be at most",)),
    "free-dim-exponent": (gen("--free-dim", "batch_size=1e20"), ("is not NAME=SIZE",)),
    "seed-negative": (smp("dcgan", "--seed", "-1"), ("'--seed'", "is not in the range x>=0")),
    "frames-one": (smp("dcgan", "--interpolate", "0", "1", "--frames", "1"), ("'--frames'",)),
    "num-zero": (smp("dcgan", "-n", "0"), ("'-n' / '--num'",)),
    "seed-5000-digits": (smp("dcgan", "--seed", "9" * 5000), ("'--seed'", "is not a valid integer")),
}


@pytest.fixture
def places(tiny_lm_artifact, tiny_ddpm, tiny_sd, dcgan_artifact, conditional_artifact, vae_artifact,
           vqvae_artifact, flow_artifact, tmp_path):
    return {"lm": str(tiny_lm_artifact), "ddpm": str(tiny_ddpm[1]), "sd": str(tiny_sd[1]), "dcgan": str(dcgan_artifact),
            "cond": str(conditional_artifact), "vae": str(vae_artifact), "vqvae": str(vqvae_artifact),
            "flow": str(flow_artifact), "out": str(tmp_path / "out.png"), "tmp": str(tmp_path)}


def invoke(args, places):
    result = CliRunner().invoke(cli, [a.format(**places) if "{" in a else a for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))
    return result, result.output.strip().splitlines()


@pytest.mark.parametrize("name", list(ONE_LINE))
def test_bad_value_is_one_line_exit_1_and_writes_nothing(name, places, tmp_path):
    args, words = ONE_LINE[name]
    result, lines = invoke(args, places)
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output and result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing is written"


@pytest.mark.parametrize("name", list(CLICK_RANGE))
def test_value_past_a_static_limit_is_a_click_range_error(name, places, tmp_path):
    args, words = CLICK_RANGE[name]
    result, lines = invoke(args, places)
    assert result.exit_code == 2, result.output
    assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[-1], lines[-1]
    assert list(tmp_path.iterdir()) == []


def test_values_at_the_limits_and_huge_seeds_work(places, tmp_path):
    """The limits are not off by one, and a seed past int64 is a seed (default_rng takes any such integer)."""
    out = tmp_path / "x.png"
    result, _ = invoke(smp("dcgan", "-n", "2", "--seed", BIG, "--device-id", "32767", "--provider", "cpu", "--json"),
                       {**places, "out": str(out)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 2 and out.is_file()
    result, _ = invoke(gen("--seed", BIG, "--free-dim", "batch_size=1", "--stop-token-id", BIG), places)
    assert result.exit_code == 0, result.output


def test_diffusion_interpolation_takes_the_sampling_options(places, tmp_path):
    """Diffusion's interpolate passes its options on to generate: --steps applies (it was refused as 'none')."""
    out = tmp_path / "strip.png"
    result, _ = invoke(smp("ddpm", "--interpolate", "0", "1", "--frames", "3", "--steps", "2", "--json"),
                       {**places, "out": str(out)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 3


def test_an_onnx_runtime_failure_mid_run_is_one_line(conditional_artifact, tmp_path):
    """A hostile manifest (more classes than the graph's embedding has rows) fails inside ONNX Runtime; the
    error names the node and the cause, in one line."""
    hostile = tmp_path / "hostile"
    shutil.copytree(conditional_artifact, hostile)
    manifest = json.loads((hostile / "edgegen.json").read_text())
    manifest["sampler"]["num_classes"] = 1000
    (hostile / "edgegen.json").write_text(json.dumps(manifest))
    out = tmp_path / "x.png"
    result = CliRunner().invoke(cli, ["sample", str(hostile), "-o", str(out), "--label", "999"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ONNX Runtime failed running graph 'generator' (generator.onnx), Gather node"), \
        lines[0]
    assert "idx=999" in lines[0] and "re-convert the model" in lines[0]
    assert not out.exists()


NUMBER = st.one_of(st.integers(min_value=-10**30, max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0, 1, -1, 1e-38, 5e-324, 1e308, 2**63, -2**63 - 1]))
OPTIONS = ("--temperature", "--top-k", "--top-p", "--min-p", "--typical-p", "--repetition-penalty",
           "--presence-penalty", "--frequency-penalty", "--seed", "--stop-token-id")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(OPTIONS), NUMBER, min_size=1, max_size=4))
def test_fuzzed_sampling_options_never_crash_the_cli(tiny_lm_artifact, values):
    """Any numbers on generate's sampling options: text (exit 0), one error line (exit 1) or a click range
    error (exit 2), never a traceback."""
    integer = {"--top-k", "--seed", "--stop-token-id"}
    args = ["generate", str(tiny_lm_artifact), "-p", "hi", "-n", "2", "--provider", "cpu"]
    for option, value in values.items():
        args += [option, str(int(value) if option in integer and isinstance(value, float) and value == value
                             and abs(value) < 1e30 else value)]
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"{args}: " + "".join(traceback.format_exception(result.exception)))
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
