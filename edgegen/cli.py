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


def _free_dims(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep or not name or not (size.isascii() and size.isdigit()) or int(size) < 1:
            raise click.BadParameter(f"{value!r} is not NAME=SIZE (like batch=1 or denoiser.batch=2)")
        out[name] = int(size)
    return out


def runtime_options(command: Any) -> Any:
    """The options every command that loads an artifact takes, passed on as ``runtime`` (edgegen.load's keywords)."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, provider: str, threads: int | None, device_id: int, free_dims: dict[str, int],
                **kwargs: Any) -> Any:
        return command(*args, runtime={"provider": provider, "threads": threads, "device_id": device_id,
                                       "free_dimensions": free_dims}, **kwargs)

    for option in reversed([
            click.option("--provider", type=PROVIDER_CHOICE, default="auto", show_default=True),
            click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads."),
            click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
                         help="Which GPU (cuda, dml)."),
            click.option("--free-dim", "free_dims", multiple=True, metavar="NAME=SIZE", callback=_free_dims,
                         help="Fix a symbolic input dimension, e.g. batch=1 or denoiser.batch=2 (repeatable; "
                              "DirectML plans static shapes faster).")]):
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
@click.option("--json", "as_json", is_flag=True, help="Print the validation figures as JSON at the end.")
def convert(source: str, output: str | None, check: bool, overwrite: bool, no_optimize: bool, quantize: str,
            target: str, min_psnr: float | None, max_ppl_increase: float | None, lm_head: str, attention: str,
            as_json: bool) -> None:
    """Convert SOURCE into a validated artifact.

    SOURCE is a Hugging Face model directory (config.json, weights, tokenizer) or
    path/to/file.py:function returning an edgegen spec (e.g. CausalLMSpec).
    """
    import edgegen
    from edgegen.runtimes.artifact import open_artifact

    if check:
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

    report = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    path = edgegen.convert(source, output, overwrite=overwrite, optimize=not no_optimize, quantize=quantize,
                           target=target, min_psnr=min_psnr, max_ppl_increase=max_ppl_increase, lm_head=lm_head,
                           report=report, attention=attention)
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
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print completions and timings as JSON (no streaming).")
def generate(artifact: str, prompts: tuple[str, ...], as_json: bool, runtime: dict[str, Any],
             stop: tuple[str, ...], stop_token_ids: tuple[int, ...], **sampling: Any) -> None:
    """Generate text from a causal-lm or rnn-lm ARTIFACT, streaming it to standard output."""
    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen import GenerationSettings

    texts = _read_prompts(prompts)
    settings = GenerationSettings(stop=stop or None, stop_token_ids=stop_token_ids or None,
                                  **sampling)
    family = open_artifact(artifact).manifest.family
    if family not in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; generate runs causal-lm and rnn-lm "
                                   "artifacts")
    lm = edgegen.load(artifact, **runtime)
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


#: ``edgegen sample`` options -> the keyword each image family's ``sample``/``interpolate`` takes.
_SAMPLE_OPTIONS = ("steps", "scheduler", "prompt", "negative_prompt", "guidance", "image", "strength",
                   "truncation", "label", "temperature")


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="PNG to write (a grid when -n > 1, unless --separate).")
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="How many images.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Same seed, same images.")
@click.option("--steps", type=int, default=None, help="Diffusion: denoising steps.")
@click.option("--scheduler", default=None, help="Diffusion: ddpm, ddim, euler, euler-a or dpm++.")
@click.option("--prompt", default=None, help="Text-to-image: what to draw.")
@click.option("--negative-prompt", default=None, help="Text-to-image: what to steer away from.")
@click.option("--guidance", type=float, default=None, help="Text-to-image: classifier-free guidance scale.")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Diffusion img2img: start image.")
@click.option("--strength", type=float, default=None, help="img2img: 0 keeps the image, 1 ignores it.")
@click.option("--truncation", type=float, default=None, help="GAN: truncation psi (1 = none).")
@click.option("--label", type=int, default=None, help="Class-conditional models: the class to draw.")
@click.option("--temperature", type=float, default=None, help="VAE/flow: scale of the prior's noise.")
@click.option("--interpolate", nargs=2, type=click.IntRange(min=0), default=None, metavar="SEED_A SEED_B",
              help="Draw a strip of --frames images between two seeds' latents.")
@click.option("--frames", type=click.IntRange(min=2), default=8, show_default=True,
              help="Images in an --interpolate strip.")
@click.option("--separate", is_flag=True, help="Write OUTPUT-0.png, OUTPUT-1.png, ... instead of a grid.")
@click.option("--upscale", type=click.IntRange(min=1, max=32), default=1, show_default=True,
              help="Enlarge the PNG by this factor (nearest neighbour), e.g. for 8x8 digits.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print the files written and timings as JSON.")
def sample(artifact: str, output: str, num: int, seed: int | None, interpolate: tuple[int, int] | None,
           frames: int, separate: bool, upscale: int, runtime: dict[str, Any], as_json: bool,
           **family_options: Any) -> None:
    """Draw images from an image-model ARTIFACT (diffusion, gan, vae, vq-vae, flow) into a PNG."""
    import inspect
    import time

    import edgegen
    from edgegen.runtimes.artifact import open_artifact
    from edgegen.runtimes.images import save_images

    family = open_artifact(artifact).manifest.family
    if family in ("causal-lm", "rnn-lm"):
        raise InvalidArgumentError(f"{artifact} is a {family!r} artifact; use 'edgegen generate' for text")
    if not output.lower().endswith(".png"):
        raise InvalidArgumentError(f"{output}: images are written as PNG; give a path ending in .png")
    started = time.perf_counter()
    model = edgegen.load(artifact, **runtime)
    load_s = time.perf_counter() - started
    method = getattr(model, "interpolate" if interpolate else "sample", None)
    if method is None:
        raise InvalidArgumentError(f"{family} artifacts do not support {'--interpolate' if interpolate else 'sample'}")
    accepted = inspect.signature(method).parameters
    given = {k: v for k, v in family_options.items() if v is not None}
    refused = [k for k in given if k not in accepted]
    if refused:
        names = ", ".join("--" + k.replace("_", "-") for k in refused)
        takes = ", ".join("--" + k.replace("_", "-") for k in _SAMPLE_OPTIONS if k in accepted) or "none"
        raise InvalidArgumentError(f"{names} do{'es' * (len(refused) == 1)} not apply to this {family} artifact "
                                   f"(its options: {takes})")
    if "progress" in accepted and not as_json and sys.stderr.isatty():
        given["progress"] = _progress_bar()
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
    click.echo(f"[{model.provider}: {len(images)} image{'s' * (len(images) != 1)} in {sample_s:.2f} s, "
               f"load {load_s:.2f} s]", err=True)


#: Families whose runtime encodes and decodes images (``reconstruct``).
_RECONSTRUCT_FAMILIES = ("vae", "vq-vae")


@cli.command()
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


def _progress_bar() -> Any:
    """A progress callback ``(done, total)`` that redraws one line on standard error."""
    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", err=True, nl=done >= total)
    return show


#: Families whose runtime gives exact likelihoods (``bits_per_dim``).
_SCORE_FAMILIES = ("flow",)


@cli.command()
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


_QUANT_FIGURES = ("scheme", "used", "reason", "greedy_agreement", "top1_agreement", "perplexity_delta_pct",
                  "max_ppl_increase_pct", "psnr_db", "min_psnr_db", "size_ratio", "decode_speedup", "speedup",
                  "speed_unit", "quantized_matmuls", "float_matmuls", "quantized_embeddings", "quantized_nodes",
                  "float_nodes", "excluded_nodes", "attempts", "warning")


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
