"""Resuming: a killed job, rerun, ends with every item exactly once and reruns only the shards it lacked; a
failed shard fails alone; a folder of another job is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
from batch_prompts import PROMPTS

import edgegen
from edgegen import GenerationSettings
from tests_support import assert_one_line_error, run_cli


def seed_of(index: int, seed: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def test_a_killed_job_resumes_without_duplicates_or_gaps(ray_local, tiny_lm_artifact, tmp_path):
    prompts = (PROMPTS * 3)[:20]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    out = tmp_path / "out"
    args = ["batch", str(tiny_lm_artifact), "-i", str(source), "-o", str(out), "--shard-size", "1", "-n", "40",
            "--ignore-eos", "--seed", "3"]
    # its own process (and local Ray), killed outright once the first shard has landed
    proc = subprocess.Popen([sys.executable, "-m", "edgegen", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "shard-00000.jsonl").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard within 90 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    landed = sorted(p.name for p in out.glob("shard-*.jsonl"))
    assert 1 <= len(landed) < len(prompts), landed       # killed mid-way
    (out / ".partial-123-shard-00019.jsonl").write_text('{"index": 19, "half')   # as a write cut short leaves it
    before = {name: (out / name).read_bytes() for name in landed}

    result = run_cli(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)   # the killed run's actor may have finished one more shard meanwhile
    assert len(landed) <= summary["shards_skipped"] < len(prompts)
    assert summary["shards_written"] == len(prompts) - summary["shards_skipped"]
    assert {name: (out / name).read_bytes() for name in landed} == before       # finished shards untouched
    assert not list(out.glob(".partial-*"))
    lines = [json.loads(line) for f in sorted(out.glob("shard-*.jsonl")) for line in f.read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(len(prompts)))
    lm = edgegen.load(tiny_lm_artifact, "cpu")
    settings = GenerationSettings(max_new_tokens=40, ignore_eos=True)
    assert [r["text"] for r in lines] == [lm.complete([p], replace(settings, seed=seed_of(i, 3)))[0].text
                                          for i, p in enumerate(prompts)]


def test_a_failing_shard_fails_alone_and_a_rerun_skips_the_rest(ray_local, tiny_lm_artifact, tmp_path):
    source = tmp_path / "prompts.jsonl"       # line 2 is longer than the model's 96-token context
    source.write_text("\n".join(json.dumps(p) for p in ["x = 1", "word " * 200, "import os"]) + "\n")
    out = tmp_path / "out"
    args = ["batch", tiny_lm_artifact, "-i", source, "-o", out, "--shard-size", "1", "-n", "3"]
    result = run_cli(*args)
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "1 of 3 shards failed (shard 1:" in error[0] and "context" in error[0]
    assert sorted(p.name for p in out.iterdir()) == ["job.json", "shard-00000.jsonl", "shard-00002.jsonl"]
    again = run_cli(*args)
    assert again.exit_code == 1 and "1 of 3 shards failed" in again.output


def test_another_jobs_folder_is_refused_and_the_same_job_is_done_already(ray_local, image_artifact, tmp_path):
    out = tmp_path / "out"
    first = run_cli("batch", image_artifact, "--count", "3", "-o", out, "--seed", "1", "--json")
    assert first.exit_code == 0, first.output
    recorded = json.loads((out / "job.json").read_text())
    assert recorded["input"] == {"count": 3} and recorded["seed"] == 1 and recorded["family"] == "gan"
    assert_one_line_error(run_cli("batch", image_artifact, "--count", "3", "-o", out, "--seed", "2"),
                          "holds another batch job", "seed", "another --output", f"remove {out}")
    assert_one_line_error(run_cli("batch", image_artifact, "--count", "4", "-o", out, "--seed", "1"),
                          "differs in: input")
    same = run_cli("batch", image_artifact, "--count", "3", "-o", out, "--seed", "1", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["shards_skipped"] == 1
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("batch", image_artifact, "--count", "3", "-o", stranger),
                          "not empty", "job.json")


def test_an_artifact_that_fails_in_the_actors_is_one_line(ray_local, image_artifact, tmp_path):
    """Checksums are verified where the artifact loads, in each actor: a graph changed after edgegen.json was
    written fails there, and comes back as one line."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(image_artifact, broken)
    graph = next(broken.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-1] + bytes([graph.read_bytes()[-1] ^ 1]))
    result = run_cli("batch", broken, "--count", "2", "--shard-size", "1", "-o", tmp_path / "out")
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "2 of 2 shards failed" in error[0] and "does not load" in error[0], result.output
    assert "generator.onnx does not match the sha256" in error[0]
    assert "Traceback" not in result.output
