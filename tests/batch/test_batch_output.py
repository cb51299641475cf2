"""A batch job on Ray gives what the serial runtime gives, item for item, at any number of actors and shard size.

The reference is the plain runtime (``edgegen.load``) called one item at a time with the seed the batch
documents for that item: ``SeedSequence([seed, index]).generate_state(1)[0]``, computed here by hand.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from batch_prompts import PROMPTS

import edgegen
from edgegen import GenerationSettings

SEED = 7
SETTINGS = GenerationSettings(max_new_tokens=6, temperature=0.9, top_k=40)


def seed_of(index: int, seed: int = SEED) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def read_lines(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(out.glob("shard-*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def serial_texts(tiny_lm_artifact: Path) -> list[tuple[str, str]]:
    lm = edgegen.load(tiny_lm_artifact, "cpu")
    out = []
    for i, prompt in enumerate(PROMPTS):
        c = lm.complete([prompt], replace(SETTINGS, seed=seed_of(i)))[0]
        out.append((c.text, c.finish_reason))
    return out


@pytest.mark.parametrize("actors,shard_size", [(1, 3), (2, 2)])
def test_text_job_equals_the_serial_runtime(ray_local, tiny_lm_artifact, prompts_file, serial_texts, tmp_path,
                                            actors, shard_size):
    from edgegen.batch import run_batch

    summary = run_batch(tiny_lm_artifact, tmp_path / "out", prompts_file=prompts_file, seed=SEED,
                        settings=SETTINGS, actors=actors, shard_size=shard_size)
    assert summary["shards"] == -(-len(PROMPTS) // shard_size) and summary["items_written"] == len(PROMPTS)
    lines = read_lines(tmp_path / "out")
    assert [r["index"] for r in lines] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in lines] == PROMPTS
    assert [(r["text"], r["finish_reason"]) for r in lines] == serial_texts
    assert len({t for t, _ in serial_texts}) > 1          # items are seeded apart, not all alike


@pytest.mark.parametrize("actors,shard_size", [(1, 3), (2, 2)])
def test_image_job_equals_the_serial_runtime(ray_local, image_artifact, tmp_path, actors, shard_size):
    from PIL import Image

    from edgegen.batch import run_batch

    count = 5
    run_batch(image_artifact, tmp_path / "out", count=count, seed=SEED, actors=actors, shard_size=shard_size)
    files = sorted((tmp_path / "out").glob("shard-*/*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(count)]
    assert [f.parent.name for f in files] == [f"shard-{i // shard_size:05d}" for i in range(count)]
    model = edgegen.load(image_artifact, "cpu")
    for i, f in enumerate(files):
        png = np.asarray(Image.open(f))                                  # [H, W, 3] uint8
        np.testing.assert_array_equal(png, model.sample(1, seed=seed_of(i))[0])
    first, second = (np.asarray(Image.open(f)) for f in files[:2])
    assert not np.array_equal(first, second)


def test_tabular_job_is_one_serial_call_at_any_number_of_actors(ray_local, tabular_artifact, tmp_path):
    """Shard k draws rows k * shard_size on of the job's seed (first_row=): the shards together are one
    sample_rows(count, seed) call, bit for bit at shard sizes that are multiples of part_rows."""
    from edgegen.batch import run_batch
    from edgegen.runtimes.tabular.table import Table

    model = edgegen.load(tabular_artifact, "cpu")
    shard_size = model.part_rows
    count = 2 * shard_size + 7
    for actors in (1, 2):
        run_batch(tabular_artifact, tmp_path / f"a{actors}", count=count, seed=SEED, actors=actors,
                  shard_size=shard_size, row_format="csv")
    one = [f.read_text() for f in sorted((tmp_path / "a1").glob("shard-*.csv"))]
    two = [f.read_text() for f in sorted((tmp_path / "a2").glob("shard-*.csv"))]
    assert len(one) == 3 and one == two
    serial = model.sample_rows(count, seed=SEED)
    parts = [Table({k: v[start:start + shard_size] for k, v in serial.data.items()}, serial.dtypes)
             for start in range(0, count, shard_size)]
    assert [p.to_csv() for p in parts] == one


def test_tabular_shards_are_whole_blocks(tabular_artifact, tmp_path):
    from edgegen.batch import run_batch
    from edgegen.errors import InvalidArgumentError

    block = edgegen.load(tabular_artifact, "cpu").sampler.block_rows
    with pytest.raises(InvalidArgumentError, match=f"multiple of {block}"):
        run_batch(tabular_artifact, tmp_path / "x", count=10, shard_size=block + 1)


def test_generator_maps_ray_datasets(ray_local, tiny_lm_artifact, image_artifact, serial_texts):
    from edgegen.batch import Generator

    ds = ray_local.data.from_items([{"prompt": p, "seed": seed_of(i)} for i, p in enumerate(PROMPTS[:4])])
    rows = ds.map_batches(Generator, fn_constructor_kwargs={
        "artifact": str(tiny_lm_artifact), "settings": {"max_new_tokens": 6, "temperature": 0.9, "top_k": 40}},
        compute=ray_local.data.ActorPoolStrategy(size=1), batch_size=2).take_all()
    assert [(r["text"], r["finish_reason"]) for r in sorted(rows, key=lambda r: PROMPTS.index(r["prompt"]))] == \
        serial_texts[:4]
    images = ray_local.data.from_items([{"seed": s} for s in (3, 4, 5)]).map_batches(
        Generator, fn_constructor_kwargs={"artifact": str(image_artifact)},
        compute=ray_local.data.ActorPoolStrategy(size=1), batch_size=3).take_all()
    model = edgegen.load(image_artifact, "cpu")
    for row in images:
        np.testing.assert_array_equal(row["image"], model.sample(1, seed=int(row["seed"]))[0])


def test_chat_lines_equal_the_serial_chat(ray_local, chat_lm_artifact, tmp_path):
    from edgegen.batch import run_batch

    chats = [[{"role": "user", "content": "hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]]
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join([json.dumps({"messages": chats[0]}), json.dumps("import os"),
                                 json.dumps({"messages": chats[1]})]) + "\n")
    run_batch(chat_lm_artifact, tmp_path / "out", prompts_file=source, seed=SEED, settings=SETTINGS, shard_size=2)
    lines = read_lines(tmp_path / "out")
    lm = edgegen.load(chat_lm_artifact, "cpu")
    assert [r.get("messages") for r in lines] == [chats[0], None, chats[1]]
    assert [r["text"] for r in lines] == [
        lm.chat(chats[0], replace(SETTINGS, seed=seed_of(0))).content,
        lm.complete(["import os"], replace(SETTINGS, seed=seed_of(1)))[0].text,
        lm.chat(chats[1], replace(SETTINGS, seed=seed_of(2))).content]


def test_seq2seq_job_equals_the_serial_runtime(ray_local, prompts_file, tmp_path):
    """Text-to-text artifacts batch like causal LMs: each line's output is the artifact's own decoding with the
    item's seed."""
    pytest.importorskip("transformers")
    from seq2seq_support import write_tiny_seq2seq

    from edgegen.batch import run_batch

    art = edgegen.convert(write_tiny_seq2seq(tmp_path / "hf", "t5"), tmp_path / "t5")
    run_batch(art, tmp_path / "out", prompts_file=prompts_file, seed=SEED, settings=SETTINGS, shard_size=3)
    model = edgegen.load(art, "cpu")
    serial = [model.decode(model.generate_ids(model.encode(p), replace(SETTINGS, seed=seed_of(i))))
              for i, p in enumerate(PROMPTS)]
    lines = read_lines(tmp_path / "out")
    assert [r["text"] for r in lines] == serial and len(set(serial)) > 1
    assert {r["finish_reason"] for r in lines} <= {"stop", "length"}
