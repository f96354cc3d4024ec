"""Command line: argument parsing only; the library does the work.

Exit codes: 0 success, 1 a check failed (verify), 2 a user error (one sentence naming the file and the fix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import UserError

EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2


class _Group(click.Group):
    """Turn UserError into one line on stderr and exit 2, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)


def _duration(ctx, param, value):
    if value is None:
        return None
    from .config import parse_duration  # pydantic is slow to import; `log` and `status` don't need it

    try:
        return parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


DIR_ARG = click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="autoresearch")
def main() -> None:
    """Run the modify -> verify -> keep loop on an experiment folder, and prove what it did.

    An experiment folder holds autoresearch.toml (the command, the metric, the editable files), the
    code, and after a run .autoresearch/ (ledger, results.tsv, logs, patches). Start with
    `autoresearch init myexp --template quickstart` and `autoresearch run myexp`.
    """


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--template", "-t", default="quickstart", show_default=True, help="Bundled experiment to copy (quickstart, nanogpt).")
def init(directory: Path, template: str) -> None:
    """Create DIRECTORY from a bundled experiment and make it a git repository."""
    from .templates import init as do_init

    for line in do_init(directory, template):
        click.echo(line)


@main.command()
@DIR_ARG
@click.option("--max-experiments", "-n", type=click.IntRange(min=0), help="Stop after N experiments (the baseline is not counted; 0 = baseline only).")
@click.option("--max-time", callback=_duration, help="Stop starting experiments after this long, e.g. 8h, 30m.")
@click.option("--max-cost", type=click.FloatRange(min=0), help="Stop when the proposer's API cost so far reaches this many USD.")
@click.option("--proposer", type=click.Choice(["tune", "llm", "agent", "hybrid"]), help="Override [proposer] kind.")
@click.option("--tag", help="Name of the run branch autoresearch/TAG (default: today's date, e.g. nov26).")
@click.option("--new", is_flag=True, help="Archive the folder's current run and start a fresh one.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def run(directory: Path, max_experiments, max_time, max_cost, proposer, tag, new, quiet) -> None:
    """Run the loop in DIRECTORY (default: here), resuming a run in progress.

    Loops until Ctrl-C or a stop condition. Ctrl-C stops cleanly: the running experiment is killed
    and recorded, nothing is half-written; run the same command again to continue.
    """
    from .loop import run_loop
    from .progress import default_progress

    run_loop(directory, max_experiments=max_experiments, max_time=max_time, max_cost=max_cost,
             proposer=proposer, tag=tag, new=new, progress=default_progress(quiet))


@main.command(name="try")
@click.option("-m", "--message", required=True, help="What the change tries (recorded as its description).")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdict line.")
def try_(message: str, directory: Path, quiet: bool) -> None:
    """Agent-driven mode: run, judge and record the uncommitted change in this checkout.

    Run it inside the run's worktree (.autoresearch/worktree) after editing the editable files.
    The harness commits the change, runs it, measures the metric itself, records the result and
    keeps the commit or resets the files. Prints one line: the verdict and the metric.
    """
    from .loop import try_change
    from .progress import Progress

    rec = try_change(directory, message, progress=Progress(quiet=True))
    value = rec.get("metric")
    shown = f"{value:.6g}" if isinstance(value, (int, float)) else "n/a"
    best = rec.get("best")
    best_s = f"{best:.6g}" if isinstance(best, (int, float)) else "n/a"
    click.echo(f"{rec['status']}: experiment {rec['id']} metric {shown} (best {best_s}) — {rec['reason']}")


@main.command()
@DIR_ARG
@click.option("--last", default=10, show_default=True, help="How many recent experiments to list.")
def status(directory: Path, last: int) -> None:
    """Best so far, counts by status, cost, and the last experiments."""
    from .views import print_status

    print_status(directory, last=last)


@main.command()
@DIR_ARG
@click.option("--status", "status_filter", help="Only experiments with this status (keep, discard, crash, ...).")
def log(directory: Path, status_filter: str | None) -> None:
    """Every experiment, kept or not, one line each."""
    from .views import print_log

    print_log(directory, status_filter)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("experiment", type=int)
@click.option("--lines", default=30, show_default=True, help="Lines of the log tail to show.")
def show(directory: Path, experiment: int, lines: int) -> None:
    """One experiment: metrics, decision, reason, diff, log tail."""
    from .views import print_experiment

    print_experiment(directory, experiment, lines)


@main.command()
@DIR_ARG
def report(directory: Path) -> None:
    """Write .autoresearch/progress.png and report.html."""
    from .views import write_report

    for line in write_report(directory):
        click.echo(line)


@main.command()
@DIR_ARG
@click.option("--rerun", "rerun_best", type=click.IntRange(min=1), help="Also re-run the N best kept commits here and compare with the record.")
@click.option("--rerun-ids", help="Also re-run these experiments (comma-separated ids) and compare.")
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), help="Check an evidence bundle from `autoresearch export` instead of a folder.")
def verify(directory: Path, rerun_best: int | None, rerun_ids: str | None, bundle: Path | None) -> None:
    """Check the record: chain, signatures, commits, patches, logs, results.tsv. Exit 0 only if intact.

    With --rerun N (or --rerun-ids), re-measure claimed improvements on this machine: each must
    agree with its record within 3 x the run's measured noise.
    """
    from .verify import rerun, verify_bundle, verify_run

    rep = verify_bundle(bundle) if bundle else verify_run(directory)
    for line in rep.lines:
        click.echo(line)
    ok = rep.ok
    if ok and not bundle and (rerun_best or rerun_ids):
        try:
            ids = [int(x) for x in rerun_ids.split(",")] if rerun_ids else None
        except ValueError:
            raise UserError(f"--rerun-ids takes comma-separated experiment numbers, not {rerun_ids!r}") from None
        click.echo("re-running on this machine ...")
        again, _ = rerun(directory, best=rerun_best, ids=ids)
        for line in again.lines:
            click.echo(line)
        ok = again.ok
    sys.exit(0 if ok else EXIT_CHECK_FAILED)


@main.command()
@DIR_ARG
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the bundle (default: DIR/autoresearch-evidence-TAG.tar.gz).")
def export(directory: Path, out: Path | None) -> None:
    """Write a self-contained evidence bundle (ledger, patches, logs, public key).

    Check it on another machine, without the repository, with `autoresearch verify --bundle FILE`.
    """
    from .verify import export_bundle

    click.echo(f"wrote {export_bundle(directory, out)}")


if __name__ == "__main__":  # pragma: no cover
    main()
