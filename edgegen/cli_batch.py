"""``edgegen batch``: many completions, images or table rows on Ray Data, resumable (edgegen/batch.py).

Ray is the ``edgegen[scale]`` extra, imported inside the command: ``edgegen --help`` works without it, and
``edgegen batch`` without it says which install it needs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from edgegen.cli import _echo_json, cli, generation_options, settings_from_options

class _Progress:
    """``batch: 3/10 shards, 96 items, 12.3 items/s`` on standard error: redrawn in place on a terminal, else a
    line at most every ``EVERY_S`` seconds (and the last one)."""

    EVERY_S = 1.0

    def __init__(self) -> None:
        self.tty, self.last, self.open, self.unshown = sys.stderr.isatty(), -1.0, False, ""

    def __call__(self, done: int, total: int, items: int, seconds: float) -> None:
        rate = f", {items / seconds:.1f} items/s" if items and seconds > 0 else ""
        line = f"batch: {done}/{total} shards, {items} items written{rate}"
        if self.tty:
            click.echo(f"\r\033[K{line}", err=True, nl=done >= total)
            self.open = done < total
        elif done >= total or seconds - self.last >= self.EVERY_S:
            click.echo(line, err=True)
            self.last, self.unshown = seconds, ""
        else:
            self.unshown = line

    def close(self) -> None:
        """End the line a run left open (terminal), or show the last state not shown yet (a failed shard's run)."""
        if self.open:
            click.echo("", err=True)
        elif self.unshown:
            click.echo(self.unshown, err=True)
        self.open, self.unshown = False, ""


@cli.command(short_help="Generate many completions, images or table rows on Ray, resumably.")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-i", "--input", "prompts_file", type=click.Path(), default=None, metavar="PROMPTS.jsonl",
              help='Text artifacts: one prompt per line: "text", {"prompt": "text"} or {"messages": [...]}.')
@click.option("--count", type=int, default=None, help="Image and tabular artifacts: how many images / rows.")
@click.option("-o", "--output", required=True, type=click.Path(), metavar="DIR",
              help="Folder for job.json and the shard files (rerun into it to finish an interrupted job).")
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
              help="Run on this Ray cluster (auto: the one this machine belongs to; ray://HOST:PORT: its Ray Client "
                   "server; HOST:PORT: its head node) [default: a local Ray on this machine's cores]; its nodes "
                   "must see ARTIFACT and --output at the same paths.")
@click.option("--actors", type=int, default=1, show_default=True,
              help="Actors, each with the artifact loaded once and the cluster's CPUs / K threads.")
@click.option("--shard-size", type=int, default=None,
              help="Items per shard file (the unit of work, and of resuming) [default: 64; table rows: 4 runs of "
                   "the model's, e.g. 16,000; a multiple of the model's block of rows].")
@click.option("--on-bad-line", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="Input lines that are no prompt: stop before starting, or leave them out (job.json lists them).")
@click.option("--steps", type=int, default=None, help="Diffusion: denoising steps.")
@click.option("--condition", default=None, metavar="COLUMN=VALUE",
              help="Tabular (ctgan): condition every row on this value of a discrete column.")
@click.option("--format", "row_format", type=click.Choice(["parquet", "csv", "jsonl"]), default="parquet",
              show_default=True, help="Tabular: the shard files' format.")
@click.option("--provider", type=click.Choice(["cpu", "auto", "cuda", "dml"]), default="cpu", show_default=True,
              help="Where each actor runs.")
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print the job's summary as JSON at the end.")
def batch(artifact: str, prompts_file: str | None, count: int | None, output: str, address: str | None,
          actors: int, shard_size: int, on_bad_line: str, steps: int | None, condition: str | None,
          row_format: str, provider: str, as_json: bool, **options: Any) -> None:
    """Generate from ARTIFACT on Ray Data: a completion per line of --input (text artifacts), or --count images
    (PNG folders) or table rows (Parquet, CSV or JSON lines), into shard files in --output.

    Every item's seed comes from --seed (default 0) and its index, so the output does not depend on --actors or
    (but for table rows) --shard-size.  Rerunning the same command skips the shards already written.
    """
    from edgegen.batch import import_ray, run_batch
    from edgegen.cli_tabular import parse_condition

    import_ray()                                        # no Ray: one line naming the extra, before anything else
    seed = options.pop("seed")
    settings = settings_from_options(**options)        # image and tabular artifacts refuse any that is set
    bar = _Progress()
    try:
        summary = run_batch(artifact, output, prompts_file=prompts_file, count=count,
                            seed=0 if seed is None else seed, shard_size=shard_size, actors=actors, address=address,
                            settings=settings, steps=steps, condition=parse_condition(condition),
                            row_format=row_format, on_bad_line=on_bad_line, provider=provider, progress=bar)
    finally:
        bar.close()
    if as_json:
        _echo_json(summary)
        return
    skipped = summary["skipped_lines"]
    if skipped:
        click.echo(f"skipped {len(skipped)} bad input line{'s' * (len(skipped) != 1)}: "
                   f"{', '.join(map(str, skipped[:10]))}{' ...' if len(skipped) > 10 else ''} (listed in job.json)",
                   err=True)
    already = f" ({summary['shards_skipped']} already written)" if summary["shards_skipped"] else ""
    click.echo(f"wrote {summary['items']} item{'s' * (summary['items'] != 1)} in {summary['shards']} "
               f"shard{'s' * (summary['shards'] != 1)}{already} to {summary['output']}")
