"""Batch generation on Ray Data: a job cut into shards, one loaded artifact per actor, each shard one file.

``edgegen batch`` calls :func:`run_batch`: the job (prompts from a JSON-lines file, or a count of images or
table rows) is cut into shards of ``shard_size`` items; ``ray.data.from_items(shards).map_batches(ShardWriter,
...)`` runs them on a pool of actors, each of which loads the artifact once (ONNX Runtime sessions do not
pickle) with as many threads as Ray gives it CPUs, and writes each shard's file atomically.  ``job.json`` in
the output folder records the job, so a rerun of the same command writes only the shards still missing.

Every item's seed comes from ``(seed, index)`` through numpy's SeedSequence (:func:`item_seed`): the output is
the same for any number of actors and any shard size.  Table rows come in blocks, each with its own stream of the
job's seed (:mod:`edgegen.runtimes.tabular.tabular`): shard k is ``sample_rows(rows, seed=seed,
first_row=k * shard_size)``, so the shards together are one ``sample_rows(count, seed=seed)``, for any number of
actors (bit for bit when the shard size is a multiple of the model's ``part_rows``, as the default is).

For your own Ray pipelines, :class:`Generator` maps a batch with a ``prompt`` column (text) or a ``seed``
column (images, table rows)::

    import ray
    from edgegen.batch import Generator
    ds = ray.data.from_items([{"prompt": "def add(a, b):"}, {"prompt": "import os"}])
    out = ds.map_batches(Generator, fn_constructor_kwargs={"artifact": "lm", "settings": {"max_new_tokens": 32}},
                         compute=ray.data.ActorPoolStrategy(size=2), batch_size=8)

Ray is the ``edgegen[scale]`` extra; it is imported inside the functions, so ``import edgegen.batch`` is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgegen.errors import ArtifactError, EdgegenError, InvalidArgumentError, write_error_line

JOB_FILE = "job.json"
JOB_FORMAT = "edgegen-batch/1"
#: the prefix of a shard still being written (removed when a job starts: a killed run's leftovers)
PARTIAL = ".partial-"
#: family -> what a batch of it makes
#: items per shard for prompts and images (table rows: see _row_shard_size)
DEFAULT_SHARD_SIZE = 64
KINDS = {"causal-lm": "text", "rnn-lm": "text", "seq2seq": "text", "gan": "images", "vae": "images", "vq-vae": "images",
         "flow": "images", "diffusion": "images", "tabular": "rows"}
ROW_FORMATS = ("parquet", "csv", "jsonl")
NEEDS_RAY = "edgegen batch needs Ray: pip install 'edgegen[scale]'"
#: bad input lines named in full in the error; the rest are counted
SHOWN_BAD_LINES = 5
CONNECT_TIMEOUT_S = 3.0


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a job seeded with ``seed``: ``SeedSequence([seed, index])``'s first 32-bit
    word, so that items are independent of each other and of how the job is cut."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def import_ray() -> Any:
    """``ray`` with Ray Data, or the one line naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EdgegenError(NEEDS_RAY) from None
    return ray


# -- the job: what job.json records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchJob:
    """One batch job, as ``job.json`` records it; two runs are the same job when every field but
    ``artifact`` (where it lies) agrees."""

    artifact: str                     # absolute path
    artifact_sha256: str              # of its edgegen.json, which holds every graph's sha256
    family: str
    input: dict[str, Any]             # {"path", "sha256"} of a prompts file, or {"count": N}
    seed: int
    shard_size: int
    settings: dict[str, Any]          # text: GenerationSettings' fields set; images: steps; rows: condition, format
    skipped_lines: tuple[int, ...] = ()
    format: str = JOB_FORMAT

    @property
    def kind(self) -> str:
        return KINDS[self.family]

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))    # tuples as lists, as a reread job.json has them

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        mine = self.to_json()
        return [key for key in mine if key != "artifact" and recorded.get(key) != mine[key]]


def read_prompts(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[tuple[int, str]], str]:
    """A JSON-lines file of prompts -> (items ``{"line", "prompt"|"messages"}``, bad lines ``(number, why)``,
    the file's sha256).  A line is ``"text"``, ``{"prompt": "text"}`` or ``{"messages": [{"role", "content"}]}``;
    blank lines are no items."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path}: no such input file; give a JSON-lines file of prompts as --input"
                                   ) from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"{path} is a folder; give a JSON-lines file of prompts as --input") from None
    items: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            items.append({"line": number, **_prompt_item(json.loads(raw.decode("utf-8")))})
        except UnicodeDecodeError:
            bad.append((number, "not UTF-8"))
        except json.JSONDecodeError as exc:
            bad.append((number, f"not JSON ({exc.msg})"))
        except ValueError as exc:
            bad.append((number, str(exc)))
    return items, bad, hashlib.sha256(data).hexdigest()


def _prompt_item(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, dict) and set(value) == {"prompt"} and isinstance(value["prompt"], str):
        return {"prompt": value["prompt"]}
    if isinstance(value, dict) and set(value) == {"messages"} and isinstance(value["messages"], list) and \
            value["messages"] and all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                      isinstance(m.get("content"), str) for m in value["messages"]):
        return {"messages": value["messages"]}
    raise ValueError("not a prompt")


def bad_lines_text(path: str | os.PathLike[str], bad: Sequence[tuple[int, str]]) -> str:
    """``prompts.jsonl: 3 bad lines: 2 (not JSON ...), 5 (...), 9 (...)``, the first few of them named."""
    shown = ", ".join(f"{n} ({why})" for n, why in bad[:SHOWN_BAD_LINES])
    more = f" and {len(bad) - SHOWN_BAD_LINES} more" if len(bad) > SHOWN_BAD_LINES else ""
    return f"{path}: {len(bad)} bad line{'s' * (len(bad) != 1)}: {shown}{more}"


def shard_name(job: BatchJob, shard: int) -> str:
    suffix = {"text": ".jsonl", "images": "", "rows": f".{job.settings.get('format', 'parquet')}"}[job.kind]
    return f"shard-{shard:05d}{suffix}"


def prepare_output(output: Path, job: BatchJob) -> None:
    """Make ``output`` this job's folder: new, empty, or holding this job's ``job.json`` (a killed run's partial
    shards are removed); another job's folder is refused."""
    if output.exists() and not output.is_dir():
        raise InvalidArgumentError(f"{output} is a file; give a folder (new or this job's) as --output")
    record = output / JOB_FILE
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        differs = job.differences(recorded if isinstance(recorded, dict) else {})
        if differs:
            raise InvalidArgumentError(f"{output} holds another batch job (its {JOB_FILE} differs in: "
                                       f"{', '.join(differs)}); give another --output, or remove {output} to start "
                                       "this job there")
    elif output.is_dir() and any(output.iterdir()):
        raise InvalidArgumentError(f"{output} is not empty and holds no {JOB_FILE}; give a new or empty --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
        for leftover in output.glob(f"*{PARTIAL}*"):     # ours, and Table.write's temporary beside ours
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        _write_atomically(record, json.dumps(job.to_json(), indent=2).encode())
    except OSError as exc:
        raise ArtifactError(write_error_line(exc, record, option="--output")) from None


# -- the actors --------------------------------------------------------------------------------------------------

def _fsync_one(path: Path) -> None:
    """Flush one file or folder entry to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder and the files in it, to the disk."""
    for p in [*sorted(path.iterdir()), path] if path.is_dir() else [path]:
        _fsync_one(p)


def _commit(tmp: Path, final: Path) -> None:
    """Put a written temporary (file or folder) in place: flushed, renamed, and the rename flushed."""
    _fsync(tmp)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):     # some file systems refuse to sync a folder
        _fsync_one(final.parent)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{PARTIAL}{path.name}")
    tmp.write_bytes(data)
    _commit(tmp, path)


def text_item(model: Any, item: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """One prompt (or chat) -> ``{"text", "finish_reason"}`` (plus ``logprobs`` when the settings ask)."""
    if "messages" in item:
        reply = model.chat(item["messages"], settings)
        text, finish, completion = reply.content, reply.finish_reason, reply.completion
    elif model.family == "seq2seq":   # encoder-decoder: the artifact's own decoding (greedy, sampled or beams)
        ids = model.generate_ids(model.encode(item["prompt"]), settings)
        done = bool(ids) and ids[-1] in model.sampler.eos_token_ids
        return {"text": model.decode(ids), "finish_reason": "stop" if done else "length"}
    else:
        completion = model.complete([item["prompt"]], settings)[0]
        text, finish = completion.text, completion.finish_reason
    out = {"text": text, "finish_reason": finish}
    if completion.logprobs is not None:
        from edgegen.runtimes.text.logprobs import openai_logprobs

        out["logprobs"] = {"content": openai_logprobs(model.tokenizer, completion.logprobs)}
    return out


def _settings(job_settings: Mapping[str, Any]) -> Any:
    from edgegen.runtimes.text.settings import GenerationSettings

    return GenerationSettings(**job_settings)


class ShardWriter:
    """The actor of :func:`run_batch`'s pipeline: loads the artifact once, then writes each shard it is given
    (a batch of shard descriptors ``{"shard", "start", "stop", "payload"}``) and answers
    ``{"shard", "items", "seconds", "error"}``: an :class:`EdgegenError` (a prompt too long...) fails its
    shard only, and comes back as ``error``."""

    def __init__(self, job: dict[str, Any], output: str, threads: int, provider: str = "cpu") -> None:
        import edgegen

        self.job = BatchJob(**{**job, "skipped_lines": tuple(job["skipped_lines"])})
        self.output = Path(output)
        self.failure = ""      # an artifact that will not load here fails every shard, with its one line
        try:
            self.model = edgegen.load(self.job.artifact, provider, threads=threads)
        except EdgegenError as exc:
            self.failure = f"the artifact does not load on this actor: {exc}"
        self.base = _settings(self.job.settings) if self.job.kind == "text" else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "items": [], "seconds": [], "error": []}
        for shard, start, stop, payload in zip(batch["shard"], batch["start"], batch["stop"], batch["payload"]):
            started = time.perf_counter()
            error = self.failure
            try:
                if not error:
                    self._write(int(shard), int(start), int(stop), str(payload))
            except EdgegenError as exc:
                error = str(exc)
            except OSError as exc:      # the disk: full, read-only...
                error = write_error_line(exc, self.output / shard_name(self.job, int(shard)), option="--output")
            out["shard"].append(int(shard))
            out["items"].append(0 if error else int(stop) - int(start))
            out["seconds"].append(time.perf_counter() - started)
            out["error"].append(error)
        return out

    def _write(self, shard: int, start: int, stop: int, payload: str) -> None:
        final = self.output / shard_name(self.job, shard)
        tmp = self.output / f"{PARTIAL}{os.getpid()}-{final.name}"    # a killed run's straggler writes its own
        try:
            getattr(self, f"_write_{self.job.kind}")(tmp, shard, start, stop, payload)
            _commit(tmp, final)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()

    def _write_text(self, tmp: Path, _shard: int, start: int, _stop: int, payload: str) -> None:
        lines = []
        for index, item in enumerate(json.loads(payload), start=start):
            settings = replace(self.base, seed=item_seed(self.job.seed, index))
            asked = {k: item[k] for k in ("prompt", "messages") if k in item}
            lines.append(json.dumps({"index": index, "line": item["line"], **asked,
                                     **text_item(self.model, item, settings)}, ensure_ascii=False))
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def _write_images(self, tmp: Path, _shard: int, start: int, stop: int, payload: str) -> None:
        from edgegen.runtimes.images import save_png

        tmp.mkdir()
        digits = max(6, len(str(int(json.loads(payload)["total"]) - 1)))   # PNGs named by global index
        for index in range(start, stop):
            image = self.model.sample(1, seed=item_seed(self.job.seed, index), **self.job.settings)[0]   # [H, W, C]
            save_png(image, tmp / f"{index:0{digits}d}.png")

    def _write_rows(self, tmp: Path, shard: int, start: int, stop: int, _payload: str) -> None:
        settings = self.job.settings
        table = self.model.sample_rows(stop - start, seed=self.job.seed, first_row=start,
                                       condition=settings.get("condition"))
        table.write(tmp)        # the format from the suffix: .partial-<pid>-shard-00000.parquet


class Generator:
    """A callable class for ``ds.map_batches(Generator, fn_constructor_kwargs={"artifact": ...}, ...)``: text
    artifacts map a ``prompt`` column (or ``messages``, lists of chat messages) to ``text`` and
    ``finish_reason``; image artifacts a ``seed`` column to ``image`` (uint8 [H, W, C] per row); tabular ones
    a ``seed`` column (and an optional ``rows`` column, default 1) to the table's columns, one row per drawn row.

    A ``seed`` column seeds each text row too (else ``settings.seed``).  ``settings``: GenerationSettings, or a
    dict of its fields; ``steps``: diffusion; ``condition``: tabular ``{column: value}``.

        import ray
        from edgegen.batch import Generator
        ds = ray.data.from_items([{"seed": s} for s in range(64)])
        images = ds.map_batches(Generator, fn_constructor_kwargs={"artifact": "dcgan"},
                                compute=ray.data.ActorPoolStrategy(size=2), batch_size=16)
    """

    def __init__(self, artifact: str | os.PathLike[str], *, settings: Any = None, steps: int | None = None,
                 condition: Mapping[str, Any] | None = None, provider: str = "cpu", threads: int | None = None) -> None:
        import edgegen
        from edgegen.runtimes.text.settings import GenerationSettings

        self.model = edgegen.load(artifact, provider, threads=threads)
        self.kind = KINDS.get(self.model.artifact.manifest.family, "")
        if not self.kind:
            raise InvalidArgumentError(f"{artifact}: batch generation runs {', '.join(KINDS)} artifacts")
        self.settings = settings if isinstance(settings, GenerationSettings) else GenerationSettings(**(settings or {}))
        self.options = {"steps": steps} if steps is not None else {}
        self.condition = condition

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        seeds = [None if s is None else int(s) for s in batch["seed"]] if "seed" in batch else None
        if self.kind == "text":
            key = "prompt" if "prompt" in batch else "messages"
            rows = [text_item(self.model, {key: _plain(v)}, self.settings if seeds is None
                              else replace(self.settings, seed=seeds[i])) for i, v in enumerate(batch[key])]
            return {**batch, "text": [r["text"] for r in rows], "finish_reason": [r["finish_reason"] for r in rows]}
        if seeds is None:
            raise InvalidArgumentError(f"a batch for a {self.kind} artifact needs a 'seed' column")
        if self.kind == "images":
            return {**batch, "image": np.stack([self.model.sample(1, seed=s, **self.options)[0] for s in seeds])}
        from edgegen.runtimes.tabular.table import Table

        counts = [int(n) for n in batch["rows"]] if "rows" in batch else [1] * len(seeds)
        table = Table.concat([self.model.sample_rows(n, seed=s, condition=self.condition)
                              for s, n in zip(seeds, counts, strict=True)])
        return {"seed": np.repeat(np.asarray(seeds), counts), **{name: table[name] for name in table.columns}}


def _plain(value: Any) -> Any:
    """A Ray Data cell (numpy arrays for lists) as JSON-like Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- the driver --------------------------------------------------------------------------------------------------

#: progress(shards done, shards in all, items written by this run, seconds since it started)
Progress = Callable[[int, int, int, float], None]


def run_batch(artifact: str | os.PathLike[str], output: str | os.PathLike[str], *,
              prompts_file: str | os.PathLike[str] | None = None, count: int | None = None, seed: int = 0,
              shard_size: int | None = None, actors: int = 1, address: str | None = None, settings: Any = None,
              steps: int | None = None, condition: Mapping[str, Any] | None = None, row_format: str = "parquet",
              on_bad_line: str = "stop", provider: str = "cpu", progress: Progress | None = None) -> dict[str, Any]:
    """Run a batch job into the folder ``output`` and return its summary (what ``--json`` prints).

    Text artifacts take ``prompts_file`` (JSON lines, :func:`read_prompts`) and ``settings``
    (GenerationSettings; its seed is replaced by each item's); image and tabular artifacts take ``count``.
    ``address``: None runs an in-process local Ray on every core; "auto" or "ray://host:port" joins a cluster
    (whose nodes must see ``artifact`` and ``output`` at the same paths); a Ray already initialized in this
    process is used as it is.  ``actors`` each get the cluster's CPUs // actors as ONNX Runtime threads.
    """
    ray = import_ray()
    for name, value, least in (("--actors", actors, 1), ("--shard-size", shard_size, 1), ("--seed", seed, 0)):
        if value is None and name == "--shard-size":
            continue
        _check_int(name, value, least)
    job, items, total = plan_job(artifact, prompts_file=prompts_file, count=count, seed=seed,
                                 shard_size=shard_size, settings=settings, steps=steps, condition=condition,
                                 row_format=row_format, on_bad_line=on_bad_line)
    if address is not None and address != "auto":
        _probe(address)                     # before anything is written
    out = Path(output).absolute()
    prepare_output(out, job)
    shards = _shards(job, items, total)
    todo = [s for s in shards if not (out / shard_name(job, s["shard"])).exists()]
    done, written, errors, busy = len(shards) - len(todo), 0, [], 0.0
    pool, threads = min(actors, len(todo)), 0
    started = time.perf_counter()
    if progress is not None and not todo:
        progress(done, len(shards), 0, 0.0)
    if todo:
        with ray_session(ray, address), _quiet_ray_data(ray):
            started = time.perf_counter()     # once Ray is up: a cluster that is not is one line, nothing else
            threads = _actor_threads(ray, pool)
            if progress is not None:
                progress(done, len(shards), 0, 0.0)
            for row in _run_shards(ray, job, out, todo, pool, threads, provider):
                if row["error"]:
                    errors.append((int(row["shard"]), str(row["error"])))
                else:
                    done, written = done + 1, written + int(row["items"])
                busy += float(row["seconds"])
                if progress is not None:
                    progress(done, len(shards), written, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if errors:
        errors.sort()
        others = "no shard was written" if len(errors) == len(todo) else f"the other shards are written in {out}"
        raise EdgegenError(f"{len(errors)} of {len(shards)} shards failed (shard {errors[0][0]}: {errors[0][1]}); "
                           f"{others}: rerun the same command to retry the failed ones, or fix the cause and give "
                           "another --output")
    return {"output": str(out), "job": str(out / JOB_FILE), "family": job.family, "items": total,
            "items_written": written, "shards": len(shards), "shards_written": len(todo),
            "shards_skipped": len(shards) - len(todo), "seconds": round(seconds, 3),
            "shard_seconds": round(busy, 3),       # in the actors, writing shards (the rest: start, loads, Ray)
            "items_per_s": round(written / seconds, 3) if written and seconds > 0 else 0.0,
            "actors": pool, "threads_per_actor": threads,
            "skipped_lines": list(job.skipped_lines)}


def _actor_threads(ray: Any, pool: int) -> int:
    """ONNX Runtime threads per actor: the cluster's CPUs shared out among ``pool`` actors, at least 1."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // pool)


def _run_shards(ray: Any, job: BatchJob, out: Path, todo: list[dict[str, Any]], pool: int, threads: int,
                provider: str) -> Iterator[dict[str, Any]]:
    """Each shard's answer (:class:`ShardWriter`) as the actors finish them, in no particular order."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    results = ray.data.from_items(todo).map_batches(
        ShardWriter, fn_constructor_kwargs={"job": job.to_json(), "output": str(out), "threads": threads,
                                            "provider": provider},
        compute=ray.data.ActorPoolStrategy(size=pool), batch_size=1,
        num_cpus=threads if pool <= cpus else cpus / pool, max_restarts=0)   # more actors than CPUs: shared
    yield from results.iter_rows()


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive integer" if least == 1 else "a non-negative integer"
        raise InvalidArgumentError(f"{name} must be {what}, got {value!r}")


def plan_job(artifact: str | os.PathLike[str], *, prompts_file: Any, count: int | None, seed: int,
             shard_size: int | None,
             settings: Any, steps: int | None, condition: Mapping[str, Any] | None, row_format: str,
             on_bad_line: str) -> tuple[BatchJob, list[dict[str, Any]] | None, int]:
    """Check everything a job needs before anything runs; (the job, its prompts (text) or None, its number of
    items)."""
    from edgegen.runtimes.artifact import open_artifact

    art = open_artifact(artifact)
    family = art.manifest.family
    kind = KINDS.get(family)
    if kind is None:
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; edgegen batch runs {', '.join(KINDS)} "
                                   "artifacts")
    if on_bad_line not in ("stop", "skip"):
        raise InvalidArgumentError(f"--on-bad-line must be stop or skip, got {on_bad_line!r}")
    skipped: tuple[int, ...] = ()
    if kind == "text":
        if count is not None or prompts_file is None:
            raise InvalidArgumentError(f"a {family} artifact generates from prompts: give --input prompts.jsonl "
                                       "(not --count)")
        items, bad, sha = read_prompts(prompts_file)
        if bad and on_bad_line == "stop":
            raise InvalidArgumentError(f"{bad_lines_text(prompts_file, bad)}; a line is a JSON string, "
                                       '{"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}: fix '
                                       "them, or pass --on-bad-line skip to leave them out")
        skipped = tuple(n for n, _ in bad)
        if not items:
            raise InvalidArgumentError(f"{prompts_file} holds no prompts; give one JSON line per prompt")
        if any("messages" in it for it in items) and "chat_template" not in art.manifest.assets:
            first = next(it["line"] for it in items if "messages" in it)
            raise InvalidArgumentError(f"{prompts_file} line {first}: a chat ({{\"messages\": ...}}) needs a chat "
                                       f"template, and {artifact} has none; give {{\"prompt\": ...}} lines instead")
        job_input: dict[str, Any] = {"path": str(Path(prompts_file).absolute()), "sha256": sha}
        recorded = _text_settings(settings)
        if family == "seq2seq" and recorded.get("logprobs"):
            raise InvalidArgumentError("--logprobs applies to causal LMs; a seq2seq artifact's batch gives text and "
                                       "finish_reason: drop --logprobs")
    else:
        if prompts_file is not None or count is None:
            raise InvalidArgumentError(f"a {family} artifact draws {kind}: give --count N (not --input)")
        _check_int("--count", count, 1)
        given = _text_settings(settings) if settings is not None else {}
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise InvalidArgumentError(f"{names} appl{'y' if len(given) > 1 else 'ies'} to text artifacts, not to "
                                       f"this {family} artifact; drop {'them' if len(given) > 1 else 'it'}")
        recorded = _draw_settings(family, steps, condition, row_format)   # refuses a condition but for tables
        job_input, items = {"count": count}, None
        if family == "tabular":
            import edgegen

            model = edgegen.load(art.root, "cpu", threads=1)
            if condition:     # a column or value the table lacks: one line now, not a failed shard per actor later
                model.sample_rows(1, seed=0, condition=condition)
            shard_size = _row_shard_size(model, shard_size)   # whole blocks: the shards are parts of one seed's rows
    if shard_size is None:
        shard_size = DEFAULT_SHARD_SIZE
    job = BatchJob(artifact=str(art.root.absolute()), artifact_sha256=_sha256(art.root / "edgegen.json"),
                   family=family, input=job_input, seed=seed, shard_size=shard_size, settings=recorded,
                   skipped_lines=skipped)
    return job, items, len(items) if items is not None else count


def _row_shard_size(model: Any, shard_size: int | None) -> int:
    """Table rows per shard: a multiple of the model's block of rows (default: 4 of its runs, ``part_rows``)."""
    block, part = model.sampler.block_rows, model.part_rows
    if shard_size is None:
        return 4 * part
    if shard_size % block:
        raise InvalidArgumentError(f"--shard-size {shard_size}: a shard of table rows must be whole blocks of the "
                                   f"model's {block} rows (ctgan's batch_size); give a multiple of {block}, e.g. "
                                   f"{4 * part} (the default)")
    return shard_size


def _text_settings(settings: Any) -> dict[str, Any]:
    """GenerationSettings (or None) -> its fields that are set, less the seed (each item has its own), checked."""
    from edgegen.runtimes.text.settings import GenerationSettings, resolve

    settings = settings if settings is not None else GenerationSettings()
    resolve(settings, GenerationSettings())             # bad settings fail before anything runs
    fields = json.loads(json.dumps(asdict(settings)))
    return {k: v for k, v in fields.items() if v is not None and k != "seed"}


def _draw_settings(family: str, steps: int | None, condition: Mapping[str, Any] | None,
                   row_format: str) -> dict[str, Any]:
    if steps is not None and family != "diffusion":
        raise InvalidArgumentError(f"--steps applies to diffusion artifacts; this is a {family!r} artifact")
    if family != "tabular":
        if condition is not None:
            raise InvalidArgumentError(f"--condition applies to tabular artifacts; this is a {family!r} artifact")
        return {"steps": steps} if steps is not None else {}
    if row_format not in ROW_FORMATS:
        raise InvalidArgumentError(f"--format must be one of {', '.join(ROW_FORMATS)}, got {row_format!r}")
    return {"format": row_format, **({"condition": dict(condition)} if condition else {})}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shards(job: BatchJob, items: list[dict[str, Any]] | None, total: int) -> list[dict[str, Any]]:
    """The job's shard descriptors: ``{"shard", "start", "stop", "payload"}`` (text: the shard's prompts, which
    travel in the shards, not in job.json)."""
    out = []
    for shard, start in enumerate(range(0, total, job.shard_size)):
        stop = min(start + job.shard_size, total)
        payload = json.dumps(items[start:stop], ensure_ascii=False) if items is not None else \
            json.dumps({"total": total})
        out.append({"shard": shard, "start": start, "stop": stop, "payload": payload})
    return out


@contextlib.contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray for the job: the one this process already runs, else a local in-process one (``address`` None), else
    the cluster at ``address`` ("auto", "ray://host:port"); shut down after the job if started here.  A cluster
    that cannot be reached is one line naming it."""
    if address is not None and address != "auto":
        _probe(address)
    if ray.is_initialized():
        yield
        return
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = lines[0].split(". ")[0].rstrip(".")[:200]        # Ray's first sentence: the rest is advice
        raise EdgegenError(f"cannot reach the Ray cluster at {address or 'a local Ray'} ({reason}); check "
                           "--address (auto: the cluster this machine belongs to, ray://HOST:PORT: its Ray Client "
                           "port), or leave it out to run on this machine") from None
    try:
        yield
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when nothing listens at ``host:port``."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidArgumentError(f"--address {address!r}: give auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EdgegenError(f"cannot reach the Ray cluster at {address} ({reason}); check --address (auto: the "
                           "cluster this machine belongs to, ray://HOST:PORT: its Ray Client port), or leave it out "
                           "to run on this machine") from None


#: the loggers of Ray Data's notices at the start and end of every run (they hold no errors)
_RAY_DATA_NOTICES = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars, notices or deprecation warnings on the user's terminal while the job runs
    (the job reports its own progress)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)    # Ray's own, about its own options
        context = ray.data.DataContext.get_current()
        before = context.enable_progress_bars
        context.enable_progress_bars = False
        for name in _RAY_DATA_NOTICES:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            context.enable_progress_bars = before
