"""The ``edgegen`` command line: a thin shell over the library.

Each command checks its options with click types, imports its implementation inside the
callback (so ``edgegen --help`` stays fast and torch-free) and calls library functions.
:class:`_Group` is the one place that turns a library error into a one-line message and
a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from edgegen import __version__
from edgegen.errors import EdgegenError, InvalidArgumentError

PROVIDER_CHOICE = click.Choice(["auto", "cpu", "cuda", "dml"])


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgegenError as exc:
            raise _UserError(str(exc), exc.exit_code) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="edgegen")
def cli() -> None:
    """Convert PyTorch generative models to ONNX artifacts and run them anywhere."""


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def providers(as_json: bool) -> None:
    """Show the execution providers this onnxruntime build offers, and what 'auto' picks."""
    import onnxruntime as ort

    from edgegen.runtimes.session import (AUTO_ORDER, PROVIDERS, available_providers,
                                          installed_ort_distributions, resolve_provider)

    offered = available_providers()
    dists = installed_ort_distributions()
    report = {
        "onnxruntime": ort.__version__,
        "distributions": dists,
        "auto": resolve_provider("auto", offered),
        "providers": [{"name": name, "onnxruntime_name": PROVIDERS[name].ort_name, "available": name in offered,
                       "package": PROVIDERS[name].package, "needs": PROVIDERS[name].requirement}
                      for name in AUTO_ORDER],
    }
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"onnxruntime {report['onnxruntime']} ({', '.join(dists) or 'distribution unknown'})")
        for row in report["providers"]:
            mark = "yes" if row["available"] else f"no  (install {row['package']}; needs {row['needs']})"
            click.echo(f"  {row['name']:<5} {row['onnxruntime_name']:<24} {mark}")
        click.echo(f"auto -> {report['auto']}")
    if len(dists) > 1:
        click.echo(f"warning: {', '.join(dists)} are all installed and overwrite each other's files; "
                   f"uninstall all of them and install exactly one", err=True)


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True,
              help="Also check every file's sha256 and open every graph (as load does).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file sizes as JSON.")
def info(artifact: str, verify: bool, as_json: bool) -> None:
    """Describe an artifact: family, graphs, precisions, sizes and validation figures."""
    from edgegen.manifest import manifest_to_json
    from edgegen.runtimes.artifact import open_artifact, verify_checksums

    art = open_artifact(artifact)
    if verify:  # everything load does: checksums, graphs open on CPU, I/O cross-check, family checks
        from edgegen.runtimes.artifact import open_sessions
        from edgegen.runtimes.registry import RUNTIMES, runtime_class
        from edgegen.runtimes.session import SessionConfig

        verify_checksums(art)
        if art.manifest.family in RUNTIMES:
            runtime_class(art.manifest.family).from_artifact(art, SessionConfig(provider="cpu"))
        else:
            open_sessions(art, SessionConfig(provider="cpu"))
    m = art.manifest
    sizes = {ref.file: art.path(ref.file).stat().st_size for ref in m.files()}
    if as_json:
        _echo_json({**manifest_to_json(m), "sizes": sizes, "verified": verify})
        return
    click.echo(f"{art.root}")
    click.echo(f"  family     {m.family}  ({m.format})")
    click.echo(f"  source     {m.source.model_class}, {m.source.converter}"
               + (f", opset {m.source.opset}" if m.source.opset else ""))
    for role, graph in m.graphs.items():
        size = sum(sizes[ref.file] for ref in graph.files())
        click.echo(f"  graph      {role:<14} {graph.file:<24} {graph.precision:<13} {_mib(size)}")
    for name, ref in m.assets.items():
        click.echo(f"  asset      {name:<14} {ref.file:<24} {'':<13} {_mib(sizes[ref.file])}")
    click.echo(f"  total      {_mib(sum(sizes.values()))}")
    for key, value in m.validation.items():
        if key == "quantization" and isinstance(value, dict):  # the price of quantizing, vs the fp32 graph
            value = {k: value[k] for k in _QUANT_FIGURES if k in value}
        click.echo(f"  validation {key}: {_short(value)}")
    if verify:
        click.echo("  verified   checksums, graphs load, inputs/outputs match, family checks")


@cli.command()
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Artifact directory to write (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT.")
@click.option("--no-optimize", is_flag=True, help="Skip ONNX Runtime's transformer optimizer.")
@click.option("-q", "--quantize", type=click.Choice(["none", "fp16", "int8", "int4"]), default="none",
              show_default=True, help="Quantize the graph; its cost against fp32 is measured and recorded.")
@click.option("--json", "as_json", is_flag=True, help="Print the validation figures as JSON at the end.")
def convert(source: str, output: str, overwrite: bool, no_optimize: bool, quantize: str, as_json: bool) -> None:
    """Convert SOURCE into a validated artifact.

    SOURCE is a Hugging Face model directory (config.json, weights, tokenizer) or
    path/to/file.py:function returning an edgegen spec (e.g. CausalLMSpec).
    """
    import edgegen
    from edgegen.runtimes.artifact import open_artifact

    report = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    path = edgegen.convert(source, output, overwrite=overwrite, optimize=not no_optimize, quantize=quantize,
                           report=report)
    m = open_artifact(path).manifest
    if as_json:
        _echo_json({"artifact": str(path), "family": m.family, "validation": m.validation})
    else:
        click.echo(f"wrote {path} ({m.family}, {', '.join(g.precision for g in m.graphs.values())})")


def _read_prompts(prompts: tuple[str, ...]) -> list[str]:
    if prompts:
        return list(prompts)
    stdin = sys.stdin.buffer
    if stdin.isatty():
        raise click.UsageError("give a prompt with -p/--prompt or on standard input")
    data = stdin.read()
    try:
        return [data.decode("utf-8")]
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"standard input is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                               "convert it to UTF-8 first, e.g. with iconv") from None


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-p", "--prompt", "prompts", multiple=True,
              help="Text to continue (repeat for a batch; default: standard input).")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Most tokens to generate [default: the artifact's, else 128].")
@click.option("-t", "--temperature", type=float, default=None, help="0 = greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--min-p", type=float, default=None)
@click.option("--typical-p", type=float, default=None)
@click.option("--repetition-penalty", type=float, default=None)
@click.option("--presence-penalty", type=float, default=None)
@click.option("--frequency-penalty", type=float, default=None)
@click.option("--stop", multiple=True, help="Stop at this string (repeatable).")
@click.option("--stop-token-id", "stop_token_ids", type=int, multiple=True, help="Stop at this token id (repeatable).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Same seed, same text.")
@click.option("--truncate", "truncate_prompt", is_flag=True, default=None, help="Keep the end of a prompt longer than the context.")
@click.option("--ignore-eos", is_flag=True, default=None, help="Keep going after end-of-sequence.")
@click.option("--provider", type=PROVIDER_CHOICE, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print completions and timings as JSON (no streaming).")
def generate(artifact: str, prompts: tuple[str, ...], as_json: bool, provider: str, threads: int | None,
             stop: tuple[str, ...], stop_token_ids: tuple[int, ...], **sampling: Any) -> None:
    """Generate text from a causal-lm or rnn-lm ARTIFACT, streaming it to standard output."""
    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.lm_settings import GenerationSettings

    texts = _read_prompts(prompts)
    settings = GenerationSettings(stop=stop or None, stop_token_ids=stop_token_ids or None,
                                  **sampling)
    family = open_artifact(artifact).manifest.family
    if family not in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; generate runs causal-lm and rnn-lm "
                                   "artifacts")
    lm = edgegen.load(artifact, provider=provider, threads=threads)
    stream = not as_json and len(texts) == 1
    on_text = (lambda _row, piece: click.echo(piece, nl=False)) if stream else None
    try:
        results = lm.complete(texts, settings, on_text=on_text)
    except KeyboardInterrupt:
        click.echo("", err=True)
        raise SystemExit(130) from None
    if as_json:
        _echo_json({"provider": lm.provider, "completions": [{
            "prompt": prompt, "text": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
            "new_tokens": len(r.token_ids), "time_to_first_token_s": r.time_to_first_token_s,
            "prompt_tokens_per_s": r.prefill_tokens_per_s, "decode_tokens_per_s": r.decode_tokens_per_s}
            for prompt, r in zip(texts, results, strict=True)]})
        return
    if stream:
        click.echo()
    else:
        for i, r in enumerate(results):
            click.echo(f"--- [{i}] {r.finish_reason}\n{texts[i]}{r.text}")
    r = results[0]
    click.echo(f"[{lm.provider}: {r.prompt_tokens} prompt tokens, {sum(len(x.token_ids) for x in results)} new "
               f"({r.finish_reason}); first token {1000 * r.time_to_first_token_s:.0f} ms, "
               f"{r.decode_tokens_per_s:.1f} tokens/s]", err=True)


@cli.command()
@click.option("-o", "--out", type=click.Path(file_okay=False), default="edgegen-demo", show_default=True,
              help="Folder for the artifacts and the generated outputs (artifacts are reused next time).")
@click.option("--models", type=click.Path(exists=True, file_okay=False), default=None,
              help="The repository's models/ folder [default: the one next to this edgegen].")
@click.option("--provider", type=PROVIDER_CHOICE, default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the timings as JSON at the end.")
def demo(out: str, models: str | None, provider: str, as_json: bool) -> None:
    """Convert the bundled reference models and generate from them, offline."""
    import time
    from pathlib import Path

    from edgegen.demo import run_demo

    started = time.perf_counter()
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    report = run_demo(Path(out), Path(models) if models else None, provider=provider, say=say)
    total = time.perf_counter() - started
    if as_json:
        _echo_json({"total_s": round(total, 2), "models": report})
    else:
        click.echo(f"done in {total:.1f} s; outputs in {Path(out).resolve()}")


_QUANT_FIGURES = ("scheme", "greedy_agreement", "top1_agreement", "perplexity_delta_pct", "size_ratio",
                  "decode_speedup", "quantized_matmuls", "float_matmuls")


def _mib(size: int) -> str:
    return f"{size / 2**20:8.2f} MiB"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return str(value)


def main() -> None:
    cli(prog_name="edgegen")
