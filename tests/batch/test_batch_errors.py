"""What bad input and a bad environment get from ``edgegen batch``: one line and exit 1, before anything runs;
and Ray stays out of ``import edgegen`` and ``edgegen.load``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from import_blocker import run_many

from tests_support import assert_one_line_error, run_cli

BAD = ['"fine"', "{not json", '{"prompt": 3}', '{"messages": "hi"}', '"also fine"', "", '[1, 2]']


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD) + "\n", encoding="utf-8")
    return path


def test_bad_lines_stop_before_anything_runs(tiny_lm_artifact, bad_file, tmp_path):
    result = run_cli("batch", tiny_lm_artifact, "-i", bad_file, "-o", tmp_path / "out")
    assert_one_line_error(result, "bad.jsonl: 4 bad lines: 2 (not JSON", "3 (not a prompt)", "4 (not a prompt)",
                          "7 (not a prompt)", "--on-bad-line skip")
    assert not (tmp_path / "out").exists()


def test_bad_lines_skipped_are_recorded(ray_local, tiny_lm_artifact, bad_file, tmp_path):
    result = run_cli("batch", tiny_lm_artifact, "-i", bad_file, "-o", tmp_path / "out", "--on-bad-line", "skip",
                     "-n", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped_lines"] == [2, 3, 4, 7]
    assert json.loads((tmp_path / "out" / "job.json").read_text())["skipped_lines"] == [2, 3, 4, 7]
    lines = [json.loads(line) for line in (tmp_path / "out" / "shard-00000.jsonl").read_text().splitlines()]
    assert [(r["index"], r["line"], r["prompt"]) for r in lines] == [(0, 1, "fine"), (1, 5, "also fine")]


def test_many_bad_lines_are_counted_past_the_first_few(tiny_lm_artifact, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("{\n" * 12, encoding="utf-8")
    assert_one_line_error(run_cli("batch", tiny_lm_artifact, "-i", path, "-o", tmp_path / "out"),
                          "12 bad lines: 1 (", "5 (", "and 7 more")


@pytest.mark.parametrize("case", ["empty", "missing", "output-file", "count", "actors", "shard-size", "count-for-lm",
                                  "text-option-for-images", "chat-without-template", "steps-for-gan"])
def test_bad_arguments_are_one_line(case, tiny_lm_artifact, image_artifact, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"x"\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    out = tmp_path / "out"
    lm, img = str(tiny_lm_artifact), str(image_artifact)
    args, parts = {
        "empty": ([lm, "-i", empty, "-o", out], ["holds no prompts"]),
        "missing": ([lm, "-i", tmp_path / "nope.jsonl", "-o", out], ["no such input file"]),
        "output-file": ([lm, "-i", prompts, "-o", prompts], ["is a file", "--output"]),
        "count": ([img, "--count", "0", "-o", out], ["--count must be a positive integer"]),
        "actors": ([img, "--count", "2", "--actors", "0", "-o", out], ["--actors must be a positive integer"]),
        "shard-size": ([img, "--count", "2", "--shard-size", "-1", "-o", out], ["--shard-size"]),
        "count-for-lm": ([lm, "--count", "3", "-o", out], ["--input"]),
        "text-option-for-images": ([img, "--count", "2", "-t", "0.5", "-o", out], ["--temperature", "text"]),
        "chat-without-template": ([lm, "-i", chat, "-o", out], ["line 1", "chat template"]),
        "steps-for-gan": ([img, "--count", "2", "--steps", "4", "-o", out], ["--steps", "diffusion"]),
    }[case]
    assert_one_line_error(run_cli("batch", *args), *parts)
    assert not out.exists()


def test_an_unreachable_cluster_is_one_line_and_quick(image_artifact, tmp_path):
    with socket.socket() as s:      # a loopback port nobody listens on (bound, never listened, then closed)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"ray://127.0.0.1:{port}", f"127.0.0.1:{port}"):
        started = time.monotonic()
        result = run_cli("batch", image_artifact, "--count", "2", "-o", tmp_path / "out", "--address", address)
        assert_one_line_error(result, f"cannot reach the Ray cluster at {address}", "--address")
        assert time.monotonic() - started < 10


def test_without_ray_batch_names_the_extra(image_artifact, tmp_path):
    [result] = run_many([["batch", str(image_artifact), "--count", "2", "-o", str(tmp_path / "out")]],
                        blocked=("ray",), cwd=tmp_path)
    assert result["exit_code"] == 1 and result["exception"] is None, result
    assert result["output"].strip() == "Error: edgegen batch needs Ray: pip install 'edgegen[scale]'"


def test_import_and_load_import_no_ray(image_artifact):
    code = f"""
import json, sys
import edgegen, edgegen.batch, edgegen.cli
edgegen.load({str(image_artifact)!r}, "cpu").sample(1, seed=0)
print(json.dumps([m for m in ("ray", "pyarrow", "pandas", "torch") if m in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_condition_the_table_lacks_is_refused_before_starting(tabular_artifact, image_artifact, tmp_path):
    assert_one_line_error(run_cli("batch", tabular_artifact, "--count", "4", "--condition", "colour=red",
                                  "-o", tmp_path / "out"), "colour")
    assert_one_line_error(run_cli("batch", image_artifact, "--count", "4", "--condition", "color=red",
                                  "-o", tmp_path / "out"), "--condition applies to tabular")
    assert not (tmp_path / "out").exists()
