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
@click.option("--template", "-t", default="quickstart", show_default=True, help="Bundled experiment to copy: quickstart, nanogpt, fraud, security or api.")
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
@click.option("--learn-from", "learn_from", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Learn from another run of the same metric (read only; repeatable): tune warm-starts from its "
                   "trials, llm/agent/hybrid get a digest of what it kept and refuted in their prompt.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Experiments at once on this machine, each in its own checkout with its own cores "
                   "(default: [resources] workers, 1).")
@click.option("--cpus-per-worker", type=click.IntRange(1), default=None, help="Cores per worker (default: split evenly).")
@click.option("--gpus-per-worker", type=click.IntRange(0), default=None,
              help="GPUs per worker via CUDA_VISIBLE_DEVICES (default: split evenly; 0: all workers share them).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
              help="Where workers run: this machine (local) or a Ray cluster (pip install -e \".[ray]\").")
@click.option("--address", default=None, help="The Ray cluster to join, e.g. auto (a running `ray start --head`).")
def run(directory: Path, max_experiments, max_time, max_cost, proposer, tag, new, quiet, learn_from, workers,
        cpus_per_worker, gpus_per_worker, backend, address) -> None:
    """Run the loop in DIRECTORY (default: here), resuming a run in progress.

    Loops until Ctrl-C or a stop condition. Ctrl-C stops cleanly: the running experiment is killed
    and recorded, nothing is half-written; run the same command again to continue.
    """
    from .loop import run_loop
    from .progress import default_progress

    run_loop(directory, max_experiments=max_experiments, max_time=max_time, max_cost=max_cost,
             proposer=proposer, tag=tag, new=new, progress=default_progress(quiet), learn_from=list(learn_from),
             resources={"workers": workers, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                        "backend": backend, "address": address})


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
    from .drive import request, under_drive, verdict_line

    if under_drive():  # inside `autoresearch drive`: the harness outside the sandbox does the work
        click.echo(request("try", description=message)["output"])
        return
    from .trymode import try_change
    from .progress import Progress

    # Unconfined: the agent that calls this runs with the user's rights, and the record says so.
    rec = try_change(directory, message, progress=Progress(quiet=True), proposal={"confined": False})
    click.echo(verdict_line(rec))


@main.command()
@DIR_ARG
@click.option("--last", default=10, show_default=True, help="How many recent experiments to list.")
def status(directory: Path, last: int) -> None:
    """Best so far, counts by status, cost, and the last experiments."""
    from .drive import request, under_drive

    if under_drive():
        click.echo(request("status", last=last)["output"], nl=False)
        return
    from .views import print_status

    print_status(directory, last=last, holdout=True)  # the user's view; an agent's (under drive) has no holdout


@main.command()
@DIR_ARG
@click.option("--status", "status_filter", help="Only experiments with this status (keep, discard, crash, ...).")
def log(directory: Path, status_filter: str | None) -> None:
    """Every experiment, kept or not, one line each."""
    from .drive import request, under_drive

    if under_drive():
        click.echo(request("log", status=status_filter)["output"], nl=False)
        return
    from .views import print_log

    print_log(directory, status_filter)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("experiment", type=int)
@click.option("--lines", default=30, show_default=True, help="Lines of the log tail to show.")
def show(directory: Path, experiment: int, lines: int) -> None:
    """One experiment: metrics, decision, reason, diff, log tail."""
    from .drive import request, under_drive

    if under_drive():
        click.echo(request("show", id=experiment, lines=lines)["output"], nl=False)
        return
    from .views import print_experiment

    print_experiment(directory, experiment, lines, holdout=True)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)  # after --: options are the agent's
@click.option("--max-time", callback=_duration, help="Stop the agent after this long, e.g. 8h (default: 30 days).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors and the summary.")
def drive(directory: Path, command: tuple[str, ...], max_time, quiet) -> None:
    """Agent-driven mode, confined: run the agent COMMAND (after --) in DIRECTORY's run worktree.

    The harness measures the baseline if there is none, then starts the agent under the sandbox
    (bubblewrap where it works) with only its worktree, its own config and a socket to the harness in
    sight. Inside, `autoresearch try -m "..."`, `status`, `log`, `show` (or the MCP server,
    `autoresearch mcp`) go through that socket. Stops when the agent exits, and prints a summary.
    """
    from .drive import drive as do_drive
    from .progress import default_progress

    argv = list(command)[1:] if command[:1] == ("--",) else list(command)
    s = do_drive(directory, argv, progress=default_progress(quiet), max_time=max_time)
    num = lambda v: f"{v:.6g}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    exit_s = "stopped" if s.agent_exit is None else f"exit {s.agent_exit}"
    click.echo(f"drive {s.tag}: the agent ended ({exit_s}, {'confined' if s.confined else 'NOT confined'}); "
               f"{s.experiments} experiments, {s.kept} kept; best {num(s.best)} (baseline {num(s.baseline)}); agent log {s.log}")


@main.command(name="mcp")
def mcp_() -> None:
    """MCP server (stdio) with tools try_change, status, log, show, for an agent under `drive`.

    Add it to the agent's config, e.g. `claude mcp add autoresearch -- autoresearch mcp`; each tool
    forwards to the harness over $AUTORESEARCH_SOCKET. Needs `pip install "autoresearch[agent]"`.
    """
    from .mcp_server import serve

    serve()


@main.command()
@DIR_ARG
def report(directory: Path) -> None:
    """Write .autoresearch/progress.png and report.html (the dashboard's page as one file that opens offline)."""
    from .views import write_report

    for line in write_report(directory):
        click.echo(line)


@main.command()
@DIR_ARG
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port on 127.0.0.1 (0: any free one).")
def dashboard(directory: Path, port: int) -> None:
    """Serve the run's page on http://127.0.0.1:PORT, updated live as experiments land (read-only)."""
    from .dashboard import serve

    serve(directory, port, announce=click.echo)


@main.command()
@DIR_ARG
@click.option("--rerun", "rerun_best", type=click.IntRange(min=1), help="Also re-run the N best kept commits here and compare with the record.")
@click.option("--rerun-ids", help="Also re-run these experiments (comma-separated ids) and compare.")
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), help="Check an evidence bundle from `autoresearch export` instead of a folder.")
@click.option("--key", help="The run key you trust: its fingerprint (as the run printed it) or a public key file.")
@click.option("--in-toto", "in_toto", type=click.Path(dir_okay=False, path_type=Path), help="Check an in-toto export (needs --key).")
@click.option("--tsa-ca", type=click.Path(dir_okay=False, path_type=Path), help="PEM of the time-stamp authority to trust (default: [evidence] timestamp_ca).")
def verify(directory: Path, rerun_best: int | None, rerun_ids: str | None, bundle: Path | None, key: str | None,
           in_toto: Path | None, tsa_ca: Path | None) -> None:
    """Check the record: chain, signatures, commits, patches, logs, results.tsv. Exit 0 only if intact.

    With --rerun N (or --rerun-ids), re-measure claimed improvements on this machine: each must
    agree with its record within 3 x the run's measured noise. With --key, the record must also be
    signed by that key (without it, a bundle is only shown to agree with itself).
    """
    from .verify import rerun, verify_bundle, verify_run

    if in_toto:
        from .attest import verify_in_toto

        if not key:
            raise UserError("an in-toto export carries no key of its own; pass the run's key with --key FINGERPRINT (or its .pub.pem file)")
        rep = verify_in_toto(in_toto, key)
        bundle = in_toto  # nothing to re-run from a file
    else:
        rep = verify_bundle(bundle, key=key, tsa_ca=tsa_ca) if bundle else verify_run(directory, key=key, tsa_ca=tsa_ca)
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
@click.option("--format", "fmt", type=click.Choice(["bundle", "in-toto"]), default="bundle", show_default=True,
              help="bundle: a .tar.gz for `verify --bundle`; in-toto: one signed DSSE envelope per experiment (docs/evidence.md).")
@click.option("--mlflow", "mlflow_uri", is_flag=False, flag_value="", default=None, metavar="[URI]",
              help="Log every experiment as an MLflow run instead (default store: SQLite in DIR/.autoresearch/mlflow/; needs autoresearch[mlflow]).")
def export(directory: Path, out: Path | None, fmt: str, mlflow_uri: str | None) -> None:
    """Write a self-contained evidence bundle (ledger, patches, logs, public key).

    Check it on another machine, without the repository, with `autoresearch verify --bundle FILE
    --key FINGERPRINT`. With --format in-toto, write in-toto statements in DSSE envelopes instead.
    """
    if mlflow_uri is not None:
        from .mlflow_export import export_mlflow

        click.echo(export_mlflow(directory, mlflow_uri or None).line())
        return
    from .signing import fingerprint
    from .verify import export_bundle

    if fmt == "in-toto":
        from .attest import export_in_toto

        path, n, fp = export_in_toto(directory, out)
        click.echo(f"wrote {path} ({n} envelopes) and {path.name}.pub.pem; key fingerprint {fp}")
        return
    path = export_bundle(directory, out)
    from .ledger import Ledger
    from .workspace import STATE_DIR

    header = Ledger(Path(directory) / STATE_DIR).header() or {}
    try:
        shown = f"; key fingerprint {fingerprint(header.get('public_key', ''))}"
    except ValueError:  # an unsigned or damaged start record; `verify` names it
        shown = ""
    click.echo(f"wrote {path}{shown}")


if __name__ == "__main__":  # pragma: no cover
    main()
