"""The ``edgegen`` command line: a thin shell over the library.

Each command checks its options with click types, imports its implementation inside the
callback (so ``edgegen --help`` stays fast and torch-free) and calls library functions.
:class:`_Group` is the one place that turns a library error into a one-line message and
a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from typing import Any

import click

from edgegen import __version__
from edgegen.errors import EdgegenError

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
@click.option("--verify", is_flag=True, help="Also check every file's sha256.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file sizes as JSON.")
def info(artifact: str, verify: bool, as_json: bool) -> None:
    """Describe an artifact: family, graphs, precisions, sizes and validation figures."""
    from edgegen.manifest import manifest_to_json
    from edgegen.runtimes.artifact import open_artifact, verify_checksums

    art = open_artifact(artifact)
    if verify:
        verify_checksums(art)
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
        click.echo(f"  validation {key}: {_short(value)}")
    if verify:
        click.echo("  checksums  ok")


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
