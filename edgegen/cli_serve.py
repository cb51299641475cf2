"""``edgegen serve``: serve artifacts over OpenAI's HTTP API, with a web page at ``/`` (edgegen/serve/).

FastAPI, uvicorn and sse-starlette are the ``edgegen[serve]`` extra, imported inside the command: ``edgegen
--help`` works without them, and ``edgegen serve`` without them says which install it needs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from typing import Any

import click

from edgegen.cli import cli, runtime_options
from edgegen.errors import InvalidArgumentError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """The warning for listening where other machines reach the server without a key (None: loopback, or a key)."""
    if api_key:
        return None
    try:
        if host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass       # a host name: it may resolve to anything
    return (f"warning: listening on {host} without --api-key: anyone who can reach this machine on port {port} can "
            "use these models; pass --api-key KEY, or --host 127.0.0.1 for this machine only")


def model_names(args: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by its directory) -> {name: path}; names must be unique."""
    named: dict[str, str] = {}
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep or os.path.exists(arg):
            name, path = os.path.basename(os.path.normpath(arg)), arg
        if not _NAME.match(name):
            raise InvalidArgumentError(f"{name!r} cannot name a model (letters, digits and . _ : - only, up to 64); "
                                       "give one as NAME=PATH")
        if not os.path.isdir(path):
            raise InvalidArgumentError(f"{path} is not an artifact directory; give ART or NAME=ART")
        if name in named:
            raise InvalidArgumentError(f"two models are named {name!r} ({named[name]} and {path}); name one as "
                                       "NAME=PATH")
        named[name] = path
    return named


@cli.command(short_help="Serve artifacts over an OpenAI-compatible HTTP API, with a web page.")
@click.argument("artifacts", nargs=-1, required=True, metavar="ART|NAME=ART...")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback lets other machines in: use --api-key).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one; the line printed at start says which).")
@click.option("--api-key", envvar="EDGEGEN_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1 and /metrics [env EDGEGEN_API_KEY].")
@click.option("--max-queue", type=click.IntRange(min=1, max=100_000), default=64, show_default=True,
              help="Requests that may wait per model; more are answered 429.")
@click.option("--max-batch", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
              help="Rows (choices) a text model generates at once; more wait in the queue.")
@click.option("--max-request-bytes", type=click.IntRange(min=1024), default=4 << 20, show_default=True,
              help="Largest request body; larger ones are answered 413.")
@runtime_options
def serve(artifacts: tuple[str, ...], host: str, port: int, api_key: str | None, max_queue: int, max_batch: int,
          max_request_bytes: int, runtime: dict[str, Any]) -> None:
    """Serve each ARTIFACT (named by its directory, or NAME=ART) over OpenAI's API: /v1/chat/completions,
    /v1/completions, /v1/images/generations, /v1/models, plus /health, /metrics and a chat page at /.

    Requests to one text model are scheduled together: a new request joins at the next decoding step.
    Ctrl-C stops the server (requests still running are answered 503).
    """
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise click.ClickException(f"edgegen serve needs the serve extra ({exc.name} is missing): "
                                   "pip install 'edgegen[serve]'") from None
    import edgegen
    from edgegen.serve.app import Limits, Server

    named = model_names(artifacts)
    warning = exposure_warning(host, port, api_key)
    if warning:
        click.echo(warning, err=True)
    models = {}
    for name, path in named.items():
        models[name] = edgegen.load(path, **runtime)
    server = Server(models, api_key=api_key, limits=Limits(max_batch=max_batch, max_queue=max_queue,
                                                           max_request_bytes=max_request_bytes))
    listing = ", ".join(f"{name} ({m.artifact.manifest.family}, {m.provider})" for name, m in models.items())

    class _Uvicorn(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.should_exit:   # the port was taken: uvicorn said so
                return
            bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            click.echo(f"edgegen serve: listening on http://{shown}:{bound[1]} (web page at /, API at /v1); "
                       f"models: {listing}; Ctrl-C stops", err=True)
            sys.stderr.flush()

        def handle_exit(self, sig: int, frame: Any) -> None:
            server.close(wait=False)   # running requests end now (503), so the connections close at once
            super().handle_exit(sig, frame)

    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    runner = _Uvicorn(config)
    try:
        runner.run()
    except KeyboardInterrupt:   # uvicorn raises the Ctrl-C again once it has shut down: a clean, asked-for stop
        pass
    finally:
        server.close(wait=True)
    if runner.started:
        click.echo("edgegen serve: stopped", err=True)
    if not runner.started:
        raise click.ClickException(f"could not listen on {host}:{port} (see above); choose another --port or --host")
