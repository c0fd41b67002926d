"""`binsweep sweep FILE`, `binsweep resume NAME` and `binsweep submit FILE`: run a sweep file on Ray Tune, continue
one whose driver died, or hand one to a Ray cluster as a job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sweep_platform import cli_options as opt
from sweep_platform import names
from sweep_platform.errors import INTERRUPTED, console, err_console


def sweep(
    file: opt.SweepFileArg,
    name: opt.SweepNameOpt = None,
    concurrency: opt.ConcurrencyOpt = None,
    max_failures: opt.SweepMaxFailuresOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the live table of trials (off "
                                           "with --format json).")] = True,
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Run a sweep: Optuna proposes each trial, ASHA stops the poor ones, every trial is an MLflow child run.

    Each trial trains on its own Ray resources (local Ray, or the cluster in RAY_ADDRESS; Ray Train's worker group
    when it has several workers) and scores its best checkpoint on the test split. Failed trials (e.g. a NaN loss)
    are recorded with their error while the others go on; the command exits 0 when at least one trial succeeded. Ctrl-C stops cleanly: continue with `binsweep resume NAME`.
    With --format json the final leaderboard goes to stdout as JSON and everything else to stderr.

    Example: binsweep sweep search_spaces/bast_smoke.yaml --name smoke1
    """
    from sweep_platform.sweep import default_name, start_sweep
    from sweep_platform.sweep_file import load_sweep

    sweep_name = name or default_name(load_sweep(file))  # a bad file fails here, before anything is created
    as_json = format is opt.Format.json
    try:
        outcome = start_sweep(file, sweep_name, max_failures=max_failures, concurrency=concurrency,
                              progress=progress and not as_json,
                              say=_say_to(as_json))
    except KeyboardInterrupt:
        _interrupted(sweep_name, as_json)
    _report(outcome, as_json)


def resume(
    name: Annotated[str, typer.Argument(help="Name of the sweep to continue, e.g. bast_smoke-1122-153012.")],
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Continue a sweep whose driver died or was stopped with Ctrl-C.

    Finished trials are kept (never rerun); unfinished ones restart from their last checkpoint (their checkpoint
    folder is named after the trial) and keep their MLflow runs; the Optuna study goes on with the trials
    still to run. The ASHA scheduler's state is not saved by Ray Tune: after a resume its rungs start empty, so trials
    that reach a rung again are compared only with those that reach it after the resume. A local Ray cluster that
    died with the old driver is started afresh.

    Example: binsweep resume bast_smoke-1122-153012
    """
    from sweep_platform.sweep import resume_sweep

    as_json = format is opt.Format.json
    try:
        outcome = resume_sweep(name, say=_say_to(as_json))
    except KeyboardInterrupt:
        _interrupted(name, as_json)
    _report(outcome, as_json)


def _out(as_json: bool):
    return err_console if as_json else console  # with --format json, stdout carries the JSON document alone


def _say_to(as_json: bool):
    def say(text: str) -> None:
        _out(as_json).print(text, highlight=False, soft_wrap=True)

    return say


def _interrupted(name: str, as_json: bool) -> None:
    _out(as_json).print(f"[yellow]sweep {name} interrupted.[/yellow] Continue it with: binsweep resume {name}",
                        highlight=False)
    raise typer.Exit(INTERRUPTED)


def _report(outcome, as_json: bool) -> None:
    from sweep_platform import leaderboard as lb

    out = _out(as_json)
    if as_json:
        typer.echo(lb.render(outcome.trials, "json"))
    elif outcome.trials:
        console.print(lb.to_table(outcome.trials, title=f"sweep {outcome.name}"))
    states = (names.COMPLETED, names.STOPPED, names.FAILED, names.INTERRUPTED)
    counts = ", ".join(f"{outcome.count(s)} {s}" for s in states if outcome.count(s))
    out.print(f"{len(outcome.trials)} trials ({counts or 'none'}) in {outcome.wall_s:.0f} s; MLflow parent run "
              f"{outcome.parent_run_id}", highlight=False)
    for line in lb.failed_lines(outcome.trials):
        out.print(f"failed: {line}", style="red", highlight=False, soft_wrap=True, markup=False)
    if outcome.state == names.INTERRUPTED:
        _interrupted(outcome.name, as_json)
    best = outcome.best
    if best is not None:
        out.print(f"best: trial {best['trial']} ({best['metric']} {best['value']:.4g}, run {best['run_id']}); "
                  f"see `binsweep leaderboard --sweep {outcome.name}`", highlight=False)
    if outcome.succeeded == 0:
        out.print("[red]no trial succeeded[/red]")
        raise typer.Exit(1)


def submit(
    file: Annotated[Path, typer.Argument(help="Sweep file inside the working directory, e.g. "
                                         "search_spaces/bast_smoke.yaml.")],
    name: Annotated[Optional[str], typer.Option(help="Sweep name (default: the file's name plus a timestamp); the "
                                                "job's submission id is binsweep-NAME.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray dashboard / Jobs API, e.g. http://127.0.0.1:8265 "
                                                   "(default: RAY_API_SERVER_ADDRESS, an http:// RAY_ADDRESS, or "
                                                   "http://127.0.0.1:8265).")] = None,
    working_dir: Annotated[Path, typer.Option(help="Folder uploaded as the job's working directory (.rayignore "
                                              "keeps data/, runs/ and .venv out).")] = Path("."),
    env: Annotated[Optional[list[str]], typer.Option(help="Extra KEY=VALUE for the job's environment (repeatable). "
                                                     "MLFLOW_TRACKING_URI and BINSWEEP_RAY_STORAGE / "
                                                     "BINSWEEP_OPTUNA_STORAGE of this shell go by themselves; "
                                                     "credentials are refused.")] = None,
    entrypoint_cpus: Annotated[float, typer.Option(help="CPUs reserved for the sweep driver.", min=0)] = 1.0,
    driver_resource: Annotated[str, typer.Option(help="Custom resource that pins the driver to a node that stays "
                                                 "(the head); '' to run it anywhere.")] = "sweep_driver",
    concurrency: opt.ConcurrencyOpt = None,
    max_failures: opt.SweepMaxFailuresOpt = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Stream the job's logs until it ends; the "
                                         "exit code is then the job's (0 SUCCEEDED, 1 otherwise).")] = False,
) -> None:
    """Submit a sweep to a running Ray cluster as a Ray job and print its id (`ray job submit` with binsweep's
    defaults: driver pinned to the head, MLflow and storage settings in the job's environment).

    Example: eval "$(cluster/local/start.sh)" && binsweep submit search_spaces/bast_smoke.yaml --follow
    """
    from sweep_platform import jobs
    from sweep_platform.sweep import default_name
    from sweep_platform.sweep_file import load_sweep

    req = jobs.JobRequest(
        sweep_file=file, working_dir=working_dir, name=name or default_name(load_sweep(file)),
        address=jobs.job_address(address), env=jobs.forwarded_env(jobs.parse_env(env or [])),
        entrypoint_cpus=entrypoint_cpus, driver_resource=driver_resource or None, max_failures=max_failures,
        concurrency=concurrency)
    job_id = jobs.submit(req)
    console.print(f"submitted sweep [bold]{req.name}[/bold] to {req.address} as job {job_id}", highlight=False)
    console.print(f"  same as: {req.command_line()}", highlight=False, soft_wrap=True, markup=False)
    typer.echo(job_id)
    if not follow:
        console.print(f"  follow:  ray job logs --follow {job_id}   (or binsweep submit ... --follow)\n"
                      f"  status:  ray job status {job_id}\n"
                      f"  results: binsweep leaderboard --sweep {req.name}", highlight=False)
        return
    status = jobs.follow(req.address, job_id, typer.echo, driver_resource=req.driver_resource)
    console.print(f"job {job_id}: {status}", highlight=False)
    if status != "SUCCEEDED":
        raise typer.Exit(1)
