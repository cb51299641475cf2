"""Files on disk from the shell: PNGs written whole or not at all, images read safely (decompression bombs,
16-bit greys), a runtime-only install told which extra to add, and the last guard of ``edgegen``'s
entry point (one line even for a bug; EDGEGEN_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import errno
import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

import edgegen.cli as cli_module
import image_support
from edgegen.cli import cli
from edgegen.errors import ArtifactError, InvalidArgumentError
from edgegen.runtimes.images import load_image, save_images
from import_blocker import CONVERT_EXTRA, run_main

vae_artifact = image_support.vae_artifact     # [1, 8, 8] images, converted once for this module

EXTRA = "converting needs the [convert] extra ({name} is not installed): pip install -c constraints.txt -e " \
        "'.[convert]' in the edgegen checkout (or its wheel with the [convert] extra)"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def full_disk_on(monkeypatch, call: int) -> None:
    """PNG writes fail as on a full disk from the ``call``-th on (after writing part of the file)."""
    real, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) >= call:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


# -- writing PNGs ---------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_png_of_the_batch(tmp_path, monkeypatch):
    (tmp_path / "x-0.png").write_bytes(b"an older image")
    full_disk_on(monkeypatch, call=2)
    with pytest.raises(ArtifactError, match=rf"^no space left on device writing {tmp_path}/x-1.png: free space or "
                                            "choose another -o$"):
        save_images(np.zeros((3, 8, 8, 1), np.uint8), tmp_path / "x.png", as_grid=False)
    assert sorted(os.listdir(tmp_path)) == ["x-0.png"] and (tmp_path / "x-0.png").read_bytes() == b"an older image"


def test_sample_and_reconstruct_name_what_failed(vae_artifact, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    line = one_error_line(run("sample", vae_artifact, "-o", tmp_path / "file" / "x.png", "--seed", "0"))
    assert line == f"Error: cannot write {tmp_path}/file/x.png: {tmp_path}/file is a file, not a folder; choose " \
                   "another -o"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "grey16.png")
    assert run("reconstruct", vae_artifact, tmp_path / "grey16.png", "-o", tmp_path / "r.png").exit_code == 0
    full_disk_on(monkeypatch, call=1)
    for args in (("sample", vae_artifact, "-o", tmp_path / "s.png", "-n", "4"),
                 ("reconstruct", vae_artifact, tmp_path / "grey16.png", "-o", tmp_path / "r2.png")):
        line = one_error_line(run(*args))
        assert line == f"Error: no space left on device writing {args[-1] if args[0] == 'reconstruct' else args[3]}: " \
                       "free space or choose another -o", line
    assert sorted(os.listdir(tmp_path)) == ["file", "grey16.png", "r.png"]


# -- reading images -------------------------------------------------------------------------------------------


def test_16_bit_greys_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 40000, 65535]], np.uint16)                 # [1, 6]
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode in ("I;16", "I")                         # a real 16-bit PNG
    expected = np.array([[0, 1, 4, 128, 156, 255]], np.uint8)                           # v * 255 / 65535, rounded
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", (1, 6), 1)[0, :, :, 0], expected)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", (1, 6), 3)[0], np.repeat(expected[..., None], 3, 2))


def test_a_wrong_size_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    Image.new("L", (64, 48)).save(tmp_path / "big.png")

    def no_decoding(self):
        raise AssertionError("decoded an image it could refuse from its header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidArgumentError, match=r"big.png is 64x48 pixels but the model takes 8x8; resize it"):
        load_image(tmp_path / "big.png", (8, 8), 1)


@pytest.mark.parametrize("size", [(12, 12), (20, 20)])   # over the limit (Pillow warns) and over twice it (raises)
def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch, size):
    Image.new("L", size).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidArgumentError, match=r"bomb.png is refused as a possible decompression bomb .*the "
                                                   r"model takes 8x8 images"):
        load_image(tmp_path / "bomb.png", (8, 8), 1)


# -- a runtime-only install -----------------------------------------------------------------------------------


def test_a_runtime_only_install_is_told_which_extra_to_add(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for args in (["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "out")], ["demo", "-o", str(tmp_path / "d")]):
        proc = run_main(args, blocked=CONVERT_EXTRA, cwd=tmp_path)
        errors = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(errors) == 1, (args, proc.stdout, proc.stderr)
        assert errors[0] in {f"Error: {EXTRA.format(name=name)}" for name in CONVERT_EXTRA}, errors
    assert not (tmp_path / "out").exists()


# -- the entry point's last guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(("raised", "line"), [
    (ValueError("boom\nmore detail"),
     "edgegen: internal error: ValueError: boom (please report it; set EDGEGEN_DEBUG=1 for the traceback)"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.png"),
     "edgegen: no space left on device: /data/out.png; free space or choose another output path"),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/x"),
     "edgegen: permission denied: /etc/x; choose another output path you may write to, or fix the folder's permissions"),
])
def test_main_turns_any_other_exception_into_one_line(monkeypatch, capsys, raised, line):
    def broken(**_kwargs):
        raise raised

    monkeypatch.delenv("EDGEGEN_DEBUG", raising=False)
    monkeypatch.setattr(cli_module, "cli", broken)
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    assert exited.value.code == 1 and capsys.readouterr().err.strip().splitlines() == [line]
    monkeypatch.setenv("EDGEGEN_DEBUG", "1")
    with pytest.raises(type(raised)):       # the traceback, for whoever debugs it
        cli_module.main()


def test_main_keeps_edgegens_own_errors_and_exit_codes(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["edgegen", "convert", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"Error: {tmp_path / 'nothing'} does not exist; give a "
                                                            "model directory or file.py:function"]


# -- the user's own spec code --------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "words"), [
    ("import nothing_of_that_name\n", ("importing", "raised ModuleNotFoundError", "nothing_of_that_name")),
    ("def build():\n    raise ValueError('my checkpoint is missing')\n",
     ("build()", "raised ValueError: my checkpoint is missing", "fix that code")),
    ("def build(:\n", ("importing", "raised SyntaxError")),
])
def test_an_exception_in_the_users_spec_code_is_one_line_that_says_it_is_theirs(tmp_path, monkeypatch, source,
                                                                                 words):
    from click.testing import CliRunner

    from edgegen.cli import cli

    monkeypatch.delenv("EDGEGEN_DEBUG", raising=False)
    spec = tmp_path / "my_spec.py"
    spec.write_text(source)
    result = CliRunner().invoke(cli, ["convert", f"{spec}:build", "-o", str(tmp_path / "out")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "internal error" not in lines[0], result.output
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("EDGEGEN_DEBUG", "1")       # the user debugging their own code sees its traceback
    result = CliRunner().invoke(cli, ["convert", f"{spec}:build", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.exception is not None and result.exception.__cause__ is not None


def test_info_shows_a_manifests_control_characters_as_escapes(tmp_path):
    """A hostile model_class must not reach the terminal as an escape sequence or a second line."""
    import json

    from click.testing import CliRunner

    from edgegen.cli import cli
    from tests_support import write_tiny_artifact

    art = write_tiny_artifact(tmp_path / "art")
    manifest = json.loads((art / "edgegen.json").read_text())
    manifest["source"]["model_class"] = "Evil\x1b[2J\x1b]0;pwned\x07\nVerified: yes"
    (art / "edgegen.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["info", str(art)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "Evil\\x1b[2J" in result.output and not any(line.startswith("Verified") for line in result.output.splitlines())
