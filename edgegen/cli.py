"""The ``edgegen`` command line: a thin shell over the library.

Each command checks its options with click types, imports its implementation inside the
callback (so ``edgegen --help`` stays fast and torch-free) and calls library functions.
:class:`_Group` is the one place that turns a library error into a one-line message and
a non-zero exit code; anything else is a bug, which :func:`main` (the ``edgegen`` script) still
reports in one line, and tests (which call :func:`cli`) or ``EDGEGEN_DEBUG=1`` see with its traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

import click

from edgegen import __version__
from edgegen.errors import EdgegenError, InvalidArgumentError, describe_os_error
from edgegen.runtimes.diffusion.scheduler_names import DIFFUSERS_CLASSES
from edgegen.runtimes.limits import MAX_DEVICE_ID, MAX_FREE_DIMENSION, MAX_THREADS

PROVIDER_CHOICE = click.Choice(["auto", "cpu", "cuda", "dml"])


def _free_dims(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for value in values:
        name, sep, size = value.partition("=")
        digits = size.lstrip("0")
        if not sep or not name or not (size.isascii() and size.isdigit()) or not digits:
            raise click.BadParameter(f"{value!r} is not NAME=SIZE (like batch=1 or denoiser.batch=2)")
        if len(digits) > 10 or int(digits) > MAX_FREE_DIMENSION:   # length first: Python refuses int() of 4300+ digits
            shown = value if len(value) <= 40 else f"{value[:30]}...({len(size)} digits)"
            raise click.BadParameter(f"{shown!r}: a dimension size must be at most {MAX_FREE_DIMENSION}")
        out[name] = int(size)
    return out


def runtime_options(command: Any) -> Any:
    """The options every command that loads an artifact takes, passed on as ``runtime`` (edgegen.load's keywords)."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, provider: str, threads: int | None, device_id: int, free_dims: dict[str, int],
                timeout: float | None, **kwargs: Any) -> Any:
        return command(*args, runtime={"provider": provider, "threads": threads, "device_id": device_id,
                                       "free_dimensions": free_dims, "timeout": timeout}, **kwargs)

    for option in reversed([
            click.option("--provider", type=PROVIDER_CHOICE, default="auto", show_default=True,
                         help="Where to run (auto: CUDA, then DirectML, then CPU)."),
            click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                         help="ONNX Runtime intra-op threads."),
            click.option("--device-id", type=click.IntRange(min=0, max=MAX_DEVICE_ID), default=0, show_default=True,
                         help="Which GPU (cuda, dml)."),
            click.option("--free-dim", "free_dims", multiple=True, metavar="NAME=SIZE", callback=_free_dims,
                         help="Fix a symbolic input dimension by its name (edgegen info lists them), e.g. "
                              "batch_size=1 for a language model, batch=1 for an image model, denoiser.batch=2 "
                              "for one graph (repeatable; DirectML plans static shapes faster)."),
            click.option("--timeout", type=float, default=None, metavar="SECONDS",
                         help="Stop a graph run that takes longer than this [default: no limit].")]):
        wrapper = option(wrapper)
    return wrapper


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgegenError as exc:
            if os.environ.get("EDGEGEN_DEBUG") and exc.__cause__ is not None:
                raise      # the traceback of what caused it (say, an exception in the user's own spec code)
            raise _UserError(str(exc), exc.exit_code) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="edgegen")
def cli() -> None:
    """Convert PyTorch generative models to ONNX artifacts and run them anywhere."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _echo_plain(line: str) -> None:
    """A line built from a manifest's strings, with control characters shown as escapes: an artifact from
    anywhere must not send a terminal escape sequence (or a fake second line) to the user's screen."""
    click.echo(_CONTROL.sub(lambda m: repr(m.group())[1:-1], line))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@cli.command(short_help="Show the execution providers and what 'auto' picks.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def providers(as_json: bool) -> None:
    """Show the execution providers this onnxruntime build offers, and what 'auto' picks."""
    import onnxruntime as ort

    from edgegen.runtimes.devices import devices
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
        "devices": [d.to_json() for d in devices([PROVIDERS[n].ort_name for n in offered])],
    }
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"onnxruntime {report['onnxruntime']} ({', '.join(dists) or 'distribution unknown'})")
        for row in report["providers"]:
            mark = "yes" if row["available"] else f"no  (install {row['package']}; needs {row['needs']})"
            click.echo(f"  {row['name']:<5} {row['onnxruntime_name']:<24} {mark}")
        click.echo(f"auto -> {report['auto']}")
        for d in report["devices"]:
            memory = "" if d["memory_total"] is None else f", {d['memory_total'] / 2**30:.1f} GiB total"
            memory += "" if d["memory_free"] is None else f", {d['memory_free'] / 2**30:.1f} GiB free"
            used = ", ".join(d["providers"]) or "no installed provider"
            click.echo(f"  device {d['kind']:<4} {d['name']}{memory} ({used})")
    if len(dists) > 1:
        click.echo(f"warning: {', '.join(dists)} are all installed and overwrite each other's files; "
                   f"uninstall all of them and install exactly one", err=True)


@cli.command(short_help="Describe an artifact: graphs, sizes, defaults, validation.")
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
    _echo_plain(f"{art.root}")
    _echo_plain(f"  family     {m.family}  ({m.format})")
    opset = f"opset {m.source.opset}" if m.source.opset else ""   # converters name it in their own text too
    _echo_plain(f"  source     {m.source.model_class}, {m.source.converter}"
               + (f", {opset}" if opset and opset not in m.source.converter else ""))
    for role, graph in m.graphs.items():
        size = sum(sizes[ref.file] for ref in graph.files())
        _echo_plain(f"  graph      {role:<14} {graph.file:<24} {graph.precision:<13} {_mib(size)}")
    for name, ref in m.assets.items():
        _echo_plain(f"  asset      {name:<14} {ref.file:<24} {'':<13} {_mib(sizes[ref.file])}")
    _echo_plain(f"  total      {_mib(sum(sizes.values()))}")
    dims = sorted({d for g in m.graphs.values() for t in g.inputs for d in t.shape if isinstance(d, str)})
    if dims and m.family != "tabular":   # a CTGAN graph's batch must stay a multiple of its block of rows
        _echo_plain(f"  free dims  {', '.join(dims)}  (--free-dim NAME=SIZE fixes one)")
    if m.family == "diffusion" and isinstance(m.sampler.get("scheduler"), dict):   # what sample runs by default
        _echo_plain(f"  scheduler  {_scheduler_line(m.sampler['scheduler'])}")
    if m.family == "tabular":
        from edgegen.cli_tabular import columns_line

        line = columns_line(m.sampler)
        if line:
            _echo_plain(f"  columns    {line}")
    if m.defaults:   # what generate/sample use for every option not given
        _echo_plain(f"  defaults   {_short(m.defaults)}  (options override them)")
    for key, value in m.validation.items():
        if value is None:   # a figure that does not apply (no failure, no divergence)
            continue
        if key == "quantization" and isinstance(value, dict):  # the price of quantizing, vs the fp32 graph
            value = {k: value[k] for k in _QUANT_FIGURES if k in value}
        _echo_plain(f"  validation {key}: {_short(value)}")   # one line per figure: grep finds it
        if key == "quantization" and isinstance(value, dict) and "greedy_agreement" in value:
            _echo_plain(f"             ({_AGREEMENT})")
    if verify:
        _echo_plain("  verified   checksums, graphs load, inputs/outputs match, family checks")


def _scheduler_line(record: dict[str, Any]) -> str:
    """A diffusion manifest's ``sampler.scheduler`` record for people (as ``sample`` prints it), or what it holds
    when it is not one (info describes; load refuses)."""
    from edgegen.runtimes.diffusion.sampler import SchedulerRecord

    try:
        return SchedulerRecord(**record).describe()
    except (TypeError, KeyError):
        return _short(record)


@cli.command(short_help="Convert a model into a validated artifact.")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Artifact directory to write (written atomically); required unless --check.")
@click.option("--check", is_flag=True, help="Dry run: list what would block converting an image spec (gan, vae, "
              "vq-vae), export nothing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT.")
@click.option("--no-optimize", is_flag=True, help="Skip ONNX Runtime's transformer optimizer.")
@click.option("-q", "--quantize", type=click.Choice(["auto", "none", "fp16", "int8", "int4", "int8-static"]),
              default="auto", show_default=True, help="Quantize the graph (auto: the family's measured default for "
              "--target, see the README); its cost against fp32 is measured and recorded.")
@click.option("--target", type=click.Choice(["cpu", "cuda", "dml"]), default="cpu", show_default=True,
              help="Where the artifact will run: picks --quantize auto's scheme (fp16 on GPUs).")
@click.option("--min-psnr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Image models: quality gate of --quantize, dB of samples vs fp32 [default: 30].")
@click.option("--max-ppl-increase", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PCT",
              help="Causal LMs: quality gate of --quantize, % perplexity over fp32 [default: int8 2, int4 5, fp16 1].")
@click.option("--lm-head", type=click.Choice(["auto", "float", "int8", "int4"]), default="auto", show_default=True,
              help="Causal LMs, --quantize int8/int4: how the LM head is stored (auto: int8; int4: int4 only).")
@click.option("--attention", type=click.Choice(["auto", "standard", "gqa"]), default="auto", show_default=True,
              help="Hugging Face llama/mistral/qwen2: gqa writes ONNX Runtime GroupQueryAttention layers (faster; "
              "auto picks it where it applies and --target is cpu).")
@click.option("--scheduler", default=None, metavar="NAME",
              help="Diffusion: the artifact's default scheduler instead of the pipeline's own (recorded as your "
                   "choice): an edgegen name (edgegen sample --help lists them) or a diffusers class name.")
@click.option("--vocoder", type=click.Path(exists=True, file_okay=False), default=None,
              help="SpeechT5 text-to-speech: the SpeechT5HifiGan directory [default: SOURCE/vocoder].")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="Stable Diffusion / SDXL pipelines: fuse this diffusers or PEFT LoRA (.safetensors) into the "
                   "weights at SCALE [default: 1]; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the validation figures as JSON at the end.")
def convert(source: str, output: str | None, check: bool, overwrite: bool, no_optimize: bool, quantize: str,
            target: str, min_psnr: float | None, max_ppl_increase: float | None, lm_head: str, attention: str,
            scheduler: str | None, vocoder: str | None, loras: tuple[str, ...], as_json: bool) -> None:
    """Convert SOURCE into a validated artifact.

    SOURCE is a Hugging Face model directory (config.json, weights, tokenizer) or
    path/to/file.py:function returning an edgegen spec (e.g. CausalLMSpec).
    """
    import edgegen
    from edgegen.runtimes.artifact import open_artifact

    if check:
        with edgegen._needs_convert_extra():   # a runtime-only install: one line naming the extra
            from edgegen.converters.api import check_source

            problems = check_source(source)
        for problem in problems:
            click.echo(f"blocks conversion: {problem}")
        if problems:
            raise _UserError(f"{len(problems)} problem{'s' * (len(problems) > 1)} would block converting {source}", 1)
        click.echo(f"ok: nothing found that blocks converting {source}")
        return
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")

    with _StageClock((lambda line: click.echo(line, err=True)) if as_json else click.echo) as report:
        path = edgegen.convert(source, output, overwrite=overwrite, optimize=not no_optimize, quantize=quantize,
                               target=target, min_psnr=min_psnr, max_ppl_increase=max_ppl_increase,
                               lm_head=lm_head, report=report, attention=attention, scheduler=scheduler,
                               vocoder=vocoder, lora=list(loras) or None)
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
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"standard input is not UTF-8 text (byte {exc.start}: "
                               f"{data[exc.start:exc.start + 1]!r}); convert it to UTF-8 first, e.g. with iconv"
                               ) from None
    # `echo PROMPT |` and an editor's file end in a newline that is no part of the prompt (left on, it would
    # start every continuation on a fresh line): exactly one is dropped, as --help and the README say
    return [text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")]


def _setting_text(name: str, value: Any) -> str:
    if isinstance(value, tuple):
        value = json.dumps(list(value), ensure_ascii=False)
    return f"{name} {_short(value)}" + (" = greedy" if name == "temperature" and value == 0 else "")


def _clamped(asked: int, results: list[Any], context: int | None) -> list[dict[str, Any]]:
    """What the context cut from max_new_tokens, as --json and the stderr line give it."""
    budget = results[0].token_budget
    if budget is None or budget >= asked:
        return []
    longest = max(r.prompt_tokens for r in results)
    prompt = "the longest prompt" if len(results) > 1 else "the prompt"
    return [{"setting": "max_new_tokens", "asked": asked, "used": budget,
             "reason": f"the context is {context} tokens and {prompt} takes {longest}"}]


def generation_options(command: Any) -> Any:
    """The sampling and stopping options of the text commands (generate, chat): GenerationSettings' fields."""
    for option in reversed([
            click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), default=None,
                         help="Most tokens to generate, cut to what the context leaves [default: the artifact's, else 128]."),
            click.option("-t", "--temperature", type=float, default=None,
                         help="Randomness: 0 = greedy (the likeliest token every time), 1 = the model's own distribution."),
            click.option("--top-k", type=int, default=None, help="Sample among the K likeliest tokens only (0 = all)."),
            click.option("--top-p", type=float, default=None,
                         help="Nucleus sampling: among the likeliest tokens that hold this much probability (1 = all)."),
            click.option("--min-p", type=float, default=None,
                         help="Drop tokens less likely than this fraction of the likeliest one (0 = off)."),
            click.option("--typical-p", type=float, default=None,
                         help="Typical sampling: keep the tokens of most typical surprise holding this much probability "
                              "(1 = off)."),
            click.option("--repetition-penalty", type=float, default=None,
                         help="Make tokens already in the prompt or text less likely (1 = off; 1.1 to 1.3 curbs loops)."),
            click.option("--presence-penalty", type=float, default=None,
                         help="Lower the logit of every token already seen by this, -2 to 2 (0 = off)."),
            click.option("--frequency-penalty", type=float, default=None,
                         help="Lower each token's logit by this times its count so far, -2 to 2 (0 = off)."),
            click.option("--stop", multiple=True, help="Stop at this string (repeatable)."),
            click.option("--stop-token-id", "stop_token_ids", type=int, multiple=True,
                         help="Stop at this token id (repeatable)."),
            click.option("--seed", type=click.IntRange(min=0), default=None, help="Same seed, same text."),
            click.option("--truncate", "truncate_prompt", is_flag=True, default=None,
                         help="Keep the end of a prompt longer than the context."),
            click.option("--ignore-eos", is_flag=True, default=None, help="Keep going after end-of-sequence."),
            click.option("--logprobs", is_flag=True, default=None,
                         help="Record each token's log-probability (in --json, as OpenAI's logprobs.content)."),
            click.option("--top-logprobs", type=click.IntRange(min=0, max=20), default=None, metavar="N",
                         help="With --logprobs: the N likeliest alternatives at each token too."),
            click.option("--json-schema", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                         help="Constrain the output to JSON that validates against this JSON Schema file."),
            click.option("--regex", default=None, help="Constrain the output to text matching this regular expression."),
            click.option("--grammar", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                         help="Constrain the output to this grammar (a Lark file).")]):
        command = option(command)
    return command


def settings_from_options(stop: tuple[str, ...] = (), stop_token_ids: tuple[int, ...] = (),
                          json_schema: str | None = None, regex: str | None = None, grammar: str | None = None,
                          **sampling: Any) -> Any:
    """The text commands' options as GenerationSettings (a constraint's files read and checked here)."""
    from edgegen import GenerationSettings

    response_format = None
    if json_schema is not None or regex is not None or grammar is not None:
        from edgegen.runtimes.text.constrained import response_format_from_options

        response_format = response_format_from_options(json_schema, regex, grammar)
    return GenerationSettings(stop=stop or None, stop_token_ids=stop_token_ids or None,
                              response_format=response_format, **sampling)


def logprobs_json(lm: Any, completion: Any) -> dict[str, Any]:
    """``{"logprobs": {"content": [...]}}`` (OpenAI's shape) for a completion that recorded them, else {}."""
    if completion.logprobs is None:
        return {}
    from edgegen.runtimes.text.logprobs import openai_logprobs

    return {"logprobs": {"content": openai_logprobs(lm.tokenizer, completion.logprobs)}}


@cli.command(short_help="Generate text from a causal-lm or rnn-lm artifact.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-p", "--prompt", "prompts", multiple=True,
              help="Text to continue (repeat for a batch; default: standard input, less one final newline).")
@click.option("--chat", "as_chat", is_flag=True,
              help="Each prompt is a user message: rendered with the model's chat template, the reply ends at its "
                   "end-of-turn token, and only the reply is printed.")
@click.option("--system", default=None, help="With --chat (implied): the system message.")
@click.option("--template", default=None, metavar="chatml|FILE",
              help="With --chat (implied): this chat template instead of the artifact's (chatml, or a .jinja file).")
@click.option("--speculative", type=click.Choice(["off", "ngram"]), default=None,
              help="ngram: draft the next tokens from an earlier occurrence of the last few (prompt lookup) and "
                   "verify them in one decoder run: the same text, faster where it repeats (code edits) "
                   "[default: the artifact's, else off].")
@click.option("--num-beams", type=click.IntRange(min=1, max=64), default=None,
              help="seq2seq: beam search over this many beams (1 = greedy or sampled) [default: the artifact's].")
@click.option("--length-penalty", type=float, default=None,
              help="seq2seq beam search: finished beams score sum(logprobs) / length**this (>0 favours longer).")
@click.option("--early-stopping/--no-early-stopping", default=None,
              help="seq2seq beam search: stop once num_beams hypotheses finished [default: the artifact's].")
@click.option("--no-repeat-ngram-size", type=click.IntRange(min=0), default=None, metavar="N",
              help="seq2seq: never repeat an n-gram of this size (0 = off).")
@generation_options
@runtime_options
@click.option("--json", "as_json", is_flag=True,
              help="Print completions, the settings used (and where each came from) and timings as JSON (no "
                   "streaming).")
def generate(artifact: str, prompts: tuple[str, ...], as_json: bool, runtime: dict[str, Any], as_chat: bool,
             system: str | None, template: str | None, num_beams: int | None, length_penalty: float | None,
             early_stopping: bool | None, no_repeat_ngram_size: int | None, **options: Any) -> None:
    """Generate text from a causal-lm or rnn-lm ARTIFACT.

    Standard output gets each prompt followed by its continuation, ending in a newline: one prompt
    streams as it is generated; several are generated as a batch and each block is headed by a line
    "== i/N: P prompt tokens, K new (finish reason) ==".  A prompt read from standard input loses one
    final newline.  Standard error gets the settings that came from the artifact, what the context
    clamped, and the token counts and speed.

    Sampling options left out take the artifact's defaults (edgegen info lists them), else built-in ones
    (128 tokens, temperature 1, no top-k, top-p, min-p or typical-p, no penalties).
    """
    import edgegen
    from edgegen import GenerationSettings
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.text.settings import check_text, resolve

    texts = _read_prompts(prompts)
    settings = settings_from_options(**options)
    resolve(settings, GenerationSettings())   # bad settings and prompts fail before the model loads
    for text in texts:
        check_text(text, "the prompt")   # a shell's bytes that are not UTF-8 arrive as lone surrogates
    family = open_artifact(artifact).manifest.family
    beams = {k: v for k, v in {"num_beams": num_beams, "length_penalty": length_penalty,
                               "early_stopping": early_stopping, "no_repeat_ngram_size": no_repeat_ngram_size}.items()
             if v is not None}
    if beams and family in ("causal-lm", "rnn-lm"):
        flags = ", ".join("--" + k.replace("_", "-") for k in beams)
        raise InvalidArgumentError(f"{flags} (beam search) apply to seq2seq artifacts, and {artifact} is a "
                                   f"{family!r} artifact; drop {'them' if len(beams) > 1 else 'it'}")
    if family == "seq2seq":
        model = edgegen.load(artifact, **runtime)
        outputs = [model.generate(text, settings, **beams) for text in texts]   # bad prompts: one line, exit 1
        click.echo(json.dumps([{"prompt": p, "text": t} for p, t in zip(texts, outputs)]) if as_json
                   else "\n\n".join(outputs))
        return
    if family not in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; generate runs causal-lm, rnn-lm and "
                                   "seq2seq artifacts")
    if as_chat or system is not None or template is not None:
        from edgegen.cli_chat import generate_chat

        generate_chat(artifact, texts, settings, system=system, template=template, as_json=as_json,
                      runtime=runtime)
        return
    lm = edgegen.load(artifact, **runtime)
    used = lm.settings_sources(settings)
    from_artifact = [_setting_text(name, value) for name, (value, origin) in used.items() if origin == "artifact"]
    stream = not as_json and len(texts) == 1
    bar = _progress_bar() if len(texts) > 1 and not as_json and sys.stderr.isatty() else None
    begun = []

    def begin() -> None:
        """Once the prompts passed the model's checks (a refused prompt is one error line, nothing else):
        the artifact defaults in use (temperature 0 changes what comes), then a streamed prompt."""
        if begun or as_json:
            return
        begun.append(True)
        if from_artifact:
            several = len(from_artifact) > 1
            click.echo(f"settings: {', '.join(from_artifact)} (artifact default{'s' * several}; options override "
                       f"{'them' if several else 'it'})", err=True)
        if stream:
            click.echo(texts[0], nl=False)

    def on_text(_row: int, piece: str) -> None:
        begin()
        if stream:
            click.echo(piece, nl=False)

    def progress(steps: int, budget: int) -> None:
        begin()
        if bar is not None:
            bar(steps, budget)

    try:
        results = lm.complete(texts, settings, on_text=on_text, progress=progress)
    except KeyboardInterrupt:
        click.echo("", err=True)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.close()
    begin()   # a run that gave no text at all
    clamped = _clamped(used["max_new_tokens"][0], results, getattr(lm.sampler, "context_length", None))
    if as_json:
        _echo_json({"provider": lm.provider,
                    "settings": {name: list(v) if isinstance(v, tuple) else v for name, (v, _) in used.items()},
                    "settings_from": {name: origin for name, (_, origin) in used.items()},   # caller/artifact/built-in
                    "clamped": clamped, "completions": [{
            "prompt": prompt, "text": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
            "new_tokens": len(r.token_ids), "token_budget": r.token_budget,
            "time_to_first_token_s": r.time_to_first_token_s,
            "prompt_tokens_per_s": r.prefill_tokens_per_s, "decode_tokens_per_s": r.decode_tokens_per_s,
            **logprobs_json(lm, r)}
            for prompt, r in zip(texts, results, strict=True)]})
        return
    if stream:
        if not (texts[0] + results[0].text).endswith("\n"):
            click.echo()
    else:
        for i, (prompt, r) in enumerate(zip(texts, results, strict=True)):
            click.echo(f"== {i + 1}/{len(texts)}: {_count(r.prompt_tokens, 'prompt token')}, {len(r.token_ids)} new "
                       f"({r.finish_reason}) ==")
            click.echo((prompt + r.text).removesuffix("\n"))   # a newline ends each block, never two
    for c in clamped:
        click.echo(f"clamped: {c['setting']} {c['asked']} -> {c['used']}: {c['reason']}", err=True)
    first_ms = 1000 * results[0].time_to_first_token_s
    if len(results) == 1:
        r = results[0]
        click.echo(f"[{lm.provider}: {_count(r.prompt_tokens, 'prompt token')}, {len(r.token_ids)} new "
                   f"({r.finish_reason}); first token {first_ms:.0f} ms, {r.decode_tokens_per_s:.1f} tokens/s]",
                   err=True)
    else:   # the rows share one run: totals, each labelled as such (per-row counts head the blocks)
        click.echo(f"[{lm.provider}: {len(results)} prompts, {sum(r.prompt_tokens for r in results)} prompt tokens "
                   f"and {sum(len(r.token_ids) for r in results)} new in all; first token {first_ms:.0f} ms, "
                   f"{sum(r.decode_tokens_per_s for r in results):.1f} tokens/s in all]", err=True)


#: ``edgegen sample`` options -> the keyword each image family's ``sample``/``interpolate`` takes.
_SAMPLE_OPTIONS = ("steps", "scheduler", "prompt", "negative_prompt", "guidance", "image", "strength", "mask",
                   "truncation", "label", "temperature")


@cli.command(short_help="Draw images (PNG), table rows (CSV, JSON lines, Parquet) or music (WAV) from an "
                        "artifact.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="PNG to write (a grid when -n > 1, unless --separate); tabular: .csv, .jsonl or .parquet; "
                   "music: .wav.")
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many images (tabular: rows).")
@click.option("--condition", default=None, metavar="COLUMN=VALUE",
              help="Tabular (ctgan): condition every row on this value of a discrete column.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Same seed, same images.")
@click.option("--steps", type=int, default=None, help="Diffusion: denoising steps.")
@click.option("--scheduler", default=None, metavar="NAME",
              help=f"Diffusion: the scheduler to run instead of the artifact's own (edgegen info shows it): "
                   f"{', '.join(DIFFUSERS_CLASSES)}, or the diffusers class name (PNDMScheduler, ...).")
@click.option("--prompt", default=None, help="Text-to-image: what to draw; music: what to play.")
@click.option("--negative-prompt", default=None, help="Text-to-image: what to steer away from.")
@click.option("--guidance", type=float, default=None, help="Text-to-image and music: classifier-free guidance scale.")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Diffusion img2img: start image.")
@click.option("--strength", type=float, default=None, help="img2img: 0 keeps the image, 1 ignores it.")
@click.option("--mask", type=click.Path(dir_okay=False), default=None,
              help="Inpainting: a mask image the size of --image, white where to repaint.")
@click.option("--truncation", type=float, default=None, help="GAN: truncation psi (1 = none).")
@click.option("--label", type=int, default=None, help="Class-conditional models: the class to draw.")
@click.option("--temperature", type=float, default=None,
              help="VAE/flow: scale of the prior's noise; music: sampling temperature (0: greedy).")
@click.option("--interpolate", nargs=2, type=click.IntRange(min=0), default=None, metavar="SEED_A SEED_B",
              help="Draw a strip of --frames images between two seeds' latents.")
@click.option("--frames", type=click.IntRange(min=2), default=8, show_default=True,
              help="Images in an --interpolate strip.")
@click.option("--separate", is_flag=True, help="Write OUTPUT-0.png, OUTPUT-1.png, ... instead of a grid.")
@click.option("--upscale", type=click.IntRange(min=1, max=32), default=1, show_default=True,
              help="Enlarge the PNG by this factor (nearest neighbour), e.g. for 8x8 digits.")
@click.option("--seconds", type=float, default=None, help="Music: seconds of audio [default: 5].")
@click.option("--spectrogram", is_flag=True,
              help="Music: also write the spectrogram as OUTPUT with .png for .wav (as edgegen speak).")
@click.option("--float", "as_float", is_flag=True, help="Music: write float32 samples (needs edgegen[audio]).")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print the files written and timings as JSON.")
def sample(artifact: str, output: str, num: int, seed: int | None, interpolate: tuple[int, int] | None,
           frames: int, separate: bool, upscale: int, runtime: dict[str, Any], as_json: bool,
           condition: str | None, seconds: float | None, spectrogram: bool, as_float: bool,
           **family_options: Any) -> None:
    """Draw images from an image-model ARTIFACT (diffusion, gan, vae, vq-vae, flow) into a PNG, rows from a
    tabular one into CSV, JSON lines or Parquet, or music from a music one into a WAV file."""
    import inspect
    import time

    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.images import save_images

    family = open_artifact(artifact).manifest.family
    if family in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; use 'edgegen generate' for text")
    if family == "tts":
        raise InvalidArgumentError(f"{artifact} is a tts artifact; use 'edgegen speak {artifact} \"text\" -o out.wav'")
    said = click.get_current_context().get_parameter_source   # options given, not defaulted, apply or are refused
    if family == "music":
        from edgegen.cli_music import MUSIC_OPTIONS, sample_music

        image_only = [k for k in ("num", "condition", "interpolate", "frames", "separate", "upscale",
                                  *_SAMPLE_OPTIONS) if k not in MUSIC_OPTIONS
                      and said(k) is not click.core.ParameterSource.DEFAULT]
        if image_only:
            raise InvalidArgumentError(f"--{image_only[0].replace('_', '-')} applies to image artifacts; a music "
                                       "artifact takes --prompt, --seconds, --seed, --guidance, --temperature, "
                                       "--spectrogram, --float and -o (.wav)")
        return sample_music(artifact, output, family_options["prompt"], seconds, seed, family_options["guidance"],
                            family_options["temperature"], spectrogram, as_float, runtime, as_json, _echo_json)
    audio_only = [k for k in ("seconds", "spectrogram", "as_float")
                  if said(k) is not click.core.ParameterSource.DEFAULT]
    if audio_only:
        name = {"as_float": "float"}.get(audio_only[0], audio_only[0])
        raise InvalidArgumentError(f"--{name} applies to music artifacts; this is a {family!r} artifact")
    if family == "tabular":
        from edgegen.cli_tabular import sample_tabular

        image_only = [k for k in ("interpolate", "frames", "separate", "upscale", *_SAMPLE_OPTIONS)
                      if said(k) is not click.core.ParameterSource.DEFAULT]
        if image_only:
            raise InvalidArgumentError(f"--{image_only[0].replace('_', '-')} applies to image artifacts; a tabular "
                                       "artifact takes -n, --seed, --condition and -o (.csv, .jsonl, .parquet)")
        return sample_tabular(artifact, output, num, seed, condition, runtime, as_json, _echo_json)
    if condition is not None:
        raise InvalidArgumentError(f"--condition applies to tabular artifacts; this is a {family!r} artifact "
                                   "(class-conditional image models take --label)")
    if not interpolate and said("frames") is not click.core.ParameterSource.DEFAULT:
        raise InvalidArgumentError("--frames applies to an --interpolate strip; add --interpolate SEED_A SEED_B or "
                                   "drop --frames")
    if interpolate and (seed is not None or said("num") is not click.core.ParameterSource.DEFAULT):
        option = "--seed" if seed is not None else "-n"
        raise InvalidArgumentError(f"{option} does not apply to --interpolate (the strip runs from SEED_A's latents "
                                   "to SEED_B's in --frames images); drop it")
    if not output.lower().endswith(".png"):
        raise InvalidArgumentError(f"{output}: images are written as PNG; give a path ending in .png")
    started = time.perf_counter()
    model = edgegen.load(artifact, **runtime)
    load_s = time.perf_counter() - started
    method = getattr(model, "interpolate" if interpolate else "sample", None)
    if method is None:
        raise InvalidArgumentError(f"{family} artifacts do not support {'--interpolate' if interpolate else 'sample'}")
    accepted = inspect.signature(method).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):   # diffusion's interpolate passes them on
        accepted = inspect.signature(model.generate).parameters
    given = {k: v for k, v in family_options.items() if v is not None}
    refused = [k for k in given if k not in accepted]
    if refused:
        names = ", ".join("--" + k.replace("_", "-") for k in refused)
        applies = getattr(model, "sample_options", None)   # what this artifact takes (diffusion: by conditioning)
        options = applies() if applies is not None else accepted
        takes = ", ".join("--" + k.replace("_", "-") for k in _SAMPLE_OPTIONS if k in options) or "none"
        raise InvalidArgumentError(f"{names} do{'es' * (len(refused) == 1)} not apply to this {family} artifact "
                                   f"(its options: {takes})")
    if "progress" in accepted and not as_json and sys.stderr.isatty():
        given["progress"] = _progress_bar()
    count, (c, h, w) = (frames if interpolate else num), model.sampler.image_shape
    if count > 1 and not separate:   # the grid, upscaled, and Pillow's copy of it
        from edgegen.runtimes.memory import check_fits, count_text

        check_fits(count * 2 * (h + 2) * (w + 2) * c * upscale**2, f"a grid PNG of {count_text(count)} images",
                   f"write them one by one with --separate{', use a smaller --upscale' * (upscale > 1)}, or ask "
                   "for fewer")
    started = time.perf_counter()
    if interpolate:
        images = method(interpolate[0], interpolate[1], frames=frames, **given)
    else:
        images = method(num, seed=seed, **given)
    sample_s = time.perf_counter() - started
    paths = save_images(images, output, as_grid=not separate, upscale=upscale,
                        columns=len(images) if interpolate else None)
    if as_json:
        _echo_json({"files": [str(p) for p in paths], "images": len(images), "provider": model.provider,
                    "load_s": round(load_s, 4), "sample_s": round(sample_s, 4)})
        return
    for p in paths:
        click.echo(f"wrote {p}")
    ran = ""
    if family == "diffusion":   # which scheduler ran, and whose choice it was (faithful or said)
        steps = given.get("steps") or model.defaults.steps
        ran = f"; scheduler {model.describe_scheduler(given.get('scheduler'))}, {steps} steps"
    click.echo(f"[{model.provider}: {len(images)} image{'s' * (len(images) != 1)} in {sample_s:.2f} s, "
               f"load {load_s:.2f} s{ran}]", err=True)


#: Families whose runtime encodes and decodes images (``reconstruct``).
_RECONSTRUCT_FAMILIES = ("vae", "vq-vae")


@cli.command(short_help="Encode and decode an image with a vae or vq-vae artifact.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of any noise the model draws.")
@click.option("--compare", is_flag=True, help="Write the input and its reconstruction side by side.")
@click.option("--upscale", type=click.IntRange(min=1, max=32), default=1, show_default=True,
              help="Enlarge the PNG by this factor (nearest neighbour).")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print the file written and timings as JSON.")
def reconstruct(artifact: str, image: str, output: str, seed: int | None, compare: bool, upscale: int,
                runtime: dict[str, Any], as_json: bool) -> None:
    """Encode IMAGE and decode it again with a vae or vq-vae ARTIFACT; write the result as PNG."""
    import time

    import numpy as np

    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.images import load_image, save_images

    if not output.lower().endswith(".png"):
        raise InvalidArgumentError(f"{output}: images are written as PNG; give a path ending in .png")
    family = open_artifact(artifact).manifest.family
    if family not in _RECONSTRUCT_FAMILIES:
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; reconstruct runs "
                                   f"{' and '.join(_RECONSTRUCT_FAMILIES)} artifacts")
    model = edgegen.load(artifact, **runtime)
    channels, height, width = model.image_shape
    pixels = load_image(image, (height, width), channels)                      # [1, H, W, C] uint8
    started = time.perf_counter()
    out = model.reconstruct(pixels, seed=seed)
    seconds = time.perf_counter() - started
    paths = save_images(np.concatenate([pixels, out]) if compare else out, output, upscale=upscale, columns=2)
    if as_json:
        _echo_json({"files": [str(p) for p in paths], "provider": model.provider, "reconstruct_s": round(seconds, 4)})
        return
    click.echo(f"wrote {paths[0]}")
    click.echo(f"[{model.provider}: reconstructed in {seconds:.3f} s]", err=True)


class _ProgressBar:
    """A progress callback ``(done, total)`` that redraws one line on standard error (the one progress
    display: diffusion steps, a batch's tokens); ``close`` ends a line a run left short of ``total``
    (every row of a text batch stopped before the token budget)."""

    def __init__(self) -> None:
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = width * min(done, total) // max(total, 1)
        click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", err=True, nl=done >= total)
        self.open = done < total

    def close(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


def _progress_bar() -> _ProgressBar:
    return _ProgressBar()


class _StageClock:
    """The report callback of a conversion (``with _StageClock(echo) as report``): each line goes to ``echo``;
    on a terminal, a stage that runs for seconds with no line yet (PyTorch's reference run, an export)
    shows them on one standard-error line ("  ... 12 s"), erased when its line comes.  Not a terminal: quiet."""

    SHOW_AFTER_S = 3.0

    def __init__(self, echo: Any) -> None:
        import threading

        self.echo, self.lock, self.stop = echo, threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True) if sys.stderr.isatty() else None
        self.last, self.shown = 0.0, False

    def __enter__(self) -> Any:
        self.last = time.monotonic()
        if self.thread is not None:
            self.thread.start()
        return self.line

    def __exit__(self, *_exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            self._erase()

    def line(self, text: str) -> None:
        with self.lock:
            self._erase()
            self.echo(text)
            self.last = time.monotonic()

    def _erase(self) -> None:
        if self.shown:
            click.echo("\r\033[K", err=True, nl=False)
            self.shown = False

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                idle = time.monotonic() - self.last
                if idle >= self.SHOW_AFTER_S:
                    click.echo(f"\r  ... {idle:.0f} s", err=True, nl=False)
                    self.shown = True


#: Families whose runtime gives exact likelihoods (``bits_per_dim``).
_SCORE_FAMILIES = ("flow",)


@cli.command(short_help="Bits per dimension of images under a flow artifact.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def score(artifact: str, images: tuple[str, ...], runtime: dict[str, Any], as_json: bool) -> None:
    """Bits per dimension of each of IMAGES under a flow ARTIFACT (exact likelihood; lower = more likely)."""
    import numpy as np

    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.images import load_image

    family = open_artifact(artifact).manifest.family
    if family not in _SCORE_FAMILIES:
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; score needs exact likelihoods, which "
                                   f"{', '.join(_SCORE_FAMILIES)} artifacts give")
    model = edgegen.load(artifact, **runtime)
    c, h, w = model.image_shape
    bits = model.bits_per_dim(np.concatenate([load_image(path, (h, w), c) for path in images]))   # [N]
    if as_json:
        _echo_json({"provider": model.provider, "images": [
            {"file": path, "bits_per_dim": float(b)} for path, b in zip(images, bits, strict=True)]})
        return
    for path, b in zip(images, bits, strict=True):
        click.echo(f"{b:.4f}  {path}")


@cli.command(short_help="Convert the bundled models and generate from them, offline.")
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
    with _StageClock((lambda line: click.echo(line, err=True)) if as_json else click.echo) as say:
        report = run_demo(Path(out), Path(models) if models else None, provider=provider, say=say)
    total = time.perf_counter() - started
    if as_json:
        _echo_json({"total_s": round(total, 2), "models": report})
    else:
        click.echo(f"done in {total:.1f} s; outputs in {Path(out).resolve()}")


_QUANT_FIGURES = ("scheme", "used", "reason", "greedy_agreement", "top1_agreement", "perplexity_delta_pct",
                  "max_ppl_increase_pct", "psnr_db", "min_psnr_db", "size_ratio", "decode_speedup", "speedup",
                  "speed_unit", "quantized_matmuls", "float_matmuls", "quantized_embeddings", "quantized_nodes",
                  "float_nodes", "excluded_nodes", "attempts", "warning")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _mib(size: int) -> str:
    return f"{size / 2**20:8.2f} MiB"


#: what the agreement figures of an LM's quantization mean, next to where they are printed
_AGREEMENT = "agreement: share of tokens chosen as fp32 chooses them; low on random weights, whose logits are near ties"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):   # None: a figure that does not apply
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items() if v is not None)
    return str(value)


from edgegen import cli_chat  # noqa: E402,F401  (registers `chat` on the group; it imports this module)
from edgegen import cli_serve  # noqa: E402,F401
from edgegen import cli_batch  # noqa: E402,F401
from edgegen import cli_speak  # noqa: E402,F401


def main() -> None:
    """The ``edgegen`` script: :func:`cli` with a last guard, so that not even a bug shows a user a traceback
    (``EDGEGEN_DEBUG=1`` shows it; tests call :func:`cli`, which keeps it)."""
    if os.environ.get("EDGEGEN_DEBUG"):
        cli(prog_name="edgegen")
        return
    try:
        cli(prog_name="edgegen")
    except Exception as exc:  # noqa: BLE001  (the last guard: EdgegenErrors and click's never get here)
        click.echo(f"edgegen: {_unexpected_error_line(exc)}", err=True)
        sys.exit(1)


def _unexpected_error_line(exc: Exception) -> str:
    described = describe_os_error(exc, option="output path") if isinstance(exc, OSError) else None
    if described is not None:
        where = f": {os.fsdecode(exc.filename)}" if exc.filename else ""
        return f"{described[0]}{where}; {described[1]}"
    lines = str(exc).strip().splitlines()
    return (f"internal error: {type(exc).__name__}: {lines[0][:300] if lines else '(no message)'} "
            "(please report it; set EDGEGEN_DEBUG=1 for the traceback)")
