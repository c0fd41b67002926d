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
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also rerun the trials that failed (e.g. "
                                               "their node died more often than max_failures allows), each from "
                                               "its last checkpoint, in its own MLflow run.")] = False,
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Continue a sweep whose driver died or was stopped with Ctrl-C.

    Finished trials are kept (never rerun, failed ones neither unless --retry-failed); unfinished ones restart from their last checkpoint (their checkpoint
    folder is named after the trial) and keep their MLflow runs; the Optuna study goes on with the trials
    still to run. The ASHA scheduler's state is not saved by Ray Tune: after a resume its rungs start empty, so trials
    that reach a rung again are compared only with those that reach it after the resume. A local Ray cluster that
    died with the old driver is started afresh.

    Example: binsweep resume bast_smoke-1122-153012
    """
    from sweep_platform.sweep import resume_sweep

    as_json = format is opt.Format.json
    try:
        outcome = resume_sweep(name, retry_failed=retry_failed, say=_say_to(as_json))
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
    ctx: typer.Context,
    file: Annotated[Optional[Path], typer.Argument(help="Sweep file inside the working directory, e.g. "
                                                   "search_spaces/bast_smoke.yaml (a new sweep); leave it out with "
                                                   "--resume or --run.", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="NAME", help="Continue sweep NAME on the "
                                                  "cluster instead: `binsweep resume NAME` as the job.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="With --resume: also rerun the failed trials "
                                               "from their last checkpoints.")] = False,
    run: Annotated[Optional[str], typer.Option("--run", metavar="'COMMAND ARGS'", help="Run another binsweep command "
                                               "as the job, one of resume, promote, report or leaderboard with its "
                                               "arguments (checked here first), e.g. --run 'promote --sweep smoke1'. "
                                               "A report is kept by logging it to MLflow (its default --log).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new sweep (default: the file's name plus a "
                                                "timestamp); its job's submission id is binsweep-NAME.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray dashboard / Jobs API, e.g. http://127.0.0.1:8265 "
                                                   "(default: RAY_API_SERVER_ADDRESS, an http:// RAY_ADDRESS, or "
                                                   "http://127.0.0.1:8265).")] = None,
    working_dir: Annotated[Path, typer.Option(help="Folder uploaded as the job's working directory (.rayignore "
                                              "keeps data/, runs/, .git and .venv out); its git commit goes "
                                              "with the job as BINSWEEP_GIT_SHA.")] = Path("."),
    mlflow_uri: opt.JobMlflowUriOpt = None,
    ray_storage: opt.JobRayStorageOpt = None,
    optuna_storage: opt.JobOptunaStorageOpt = None,
    env: opt.JobEnvOpt = None,
    entrypoint_cpus: Annotated[float, typer.Option(help="CPUs reserved for the job's driver.", min=0)] = 1.0,
    driver_resource: Annotated[Optional[str], typer.Option(
        help="Custom resource that pins the driver to a node that stays (the head); '' to run it anywhere "
        "(default: sweep_driver for a sweep or --resume, none for the other commands).")] = None,
    concurrency: opt.ConcurrencyOpt = None,
    max_failures: opt.SweepMaxFailuresOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the job (its command, "
                                          "environment and `ray job submit` line) without sending it.")] = False,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Stream the job's logs until it ends; the "
                                         "exit code is then the job's (0 SUCCEEDED, 1 otherwise).")] = False,
) -> None:
    """Submit a sweep, or a binsweep command about one, to a running Ray cluster as a Ray job and print its id.

    The job gets the cluster's own MLflow and storage settings: only what you give (--mlflow-uri, --ray-storage,
    --optuna-storage, --env) travels in its environment, plus BINSWEEP_GIT_SHA, the commit of the uploaded checkout.
    A sweep's or resume's driver is pinned to the node offering `sweep_driver` (the head).

    Examples: binsweep submit search_spaces/bast_smoke.yaml --follow;
    binsweep submit --resume smoke1 --retry-failed; binsweep submit --run 'report smoke1' --dry-run
    """
    import shlex

    from rich.markup import escape

    from sweep_platform import jobs

    given = [what for what, value in (("FILE", file), ("--resume", resume), ("--run", run)) if value is not None]
    if len(given) != 1:
        raise jobs.SubmitError(("give only one of " if given else "give one of ") + "FILE (a new sweep), --resume "
                               "NAME or --run 'COMMAND ARGS'" + (f", not {' and '.join(given)}" if given else ""))
    if retry_failed and resume is None:
        raise jobs.SubmitError("--retry-failed goes with --resume NAME (or --run 'resume NAME --retry-failed')")
    new_only = [f for f, v in (("--name", name), ("--concurrency", concurrency), ("--max-failures", max_failures))
                if v is not None]
    if file is None and new_only:
        raise jobs.SubmitError(f"{', '.join(new_only)}: only for a new sweep (FILE); a resumed sweep keeps its own")
    if file is not None:
        from sweep_platform.sweep import default_name
        from sweep_platform.sweep_file import load_sweep

        command, sweep_name = None, name or default_name(load_sweep(file))  # a bad file fails here (exit 2)
    else:
        command = jobs.resume_command(resume, retry_failed) if resume is not None else jobs.parse_command(run)
        sweep_name = _job_command_sweep(ctx, command)
    if driver_resource is None:
        driver_resource = jobs.DRIVER_RESOURCE if command is None or command[0] == "resume" else ""
    flags = {"MLFLOW_TRACKING_URI": mlflow_uri, "BINSWEEP_RAY_STORAGE": ray_storage,
             "BINSWEEP_OPTUNA_STORAGE": optuna_storage}
    req = jobs.JobRequest(
        working_dir=working_dir, address=jobs.job_address(address), sweep_file=file, name=sweep_name,
        command=command, env=jobs.job_env(flags, jobs.parse_env(env or []), jobs.checkout_sha(working_dir)),
        entrypoint_cpus=entrypoint_cpus, driver_resource=driver_resource or None, max_failures=max_failures,
        concurrency=concurrency)
    what = escape(f"sweep {req.name}" if command is None else f"binsweep {shlex.join(command)}")
    if dry_run:
        req.check()
        console.print(f"would submit {what} to {req.address} as job {req.submission_id} (--dry-run: nothing sent)",
                      highlight=False)
        _print_job(req)
        return
    job_id = jobs.submit(req)
    console.print(f"submitted {what} to {req.address} as job {job_id}", highlight=False)
    _print_job(req)
    typer.echo(job_id)
    if not follow:
        results = f"\n  results: binsweep leaderboard --sweep {req.name}" if req.kind in ("sweep", "resume") else ""
        console.print(f"  follow:  ray job logs --follow {job_id}   (or binsweep submit ... --follow)\n"
                      f"  status:  ray job status {job_id}{results}", highlight=False)
        return
    status = jobs.follow(req.address, job_id, typer.echo, driver_resource=req.driver_resource)
    console.print(f"job {job_id}: {status}", highlight=False)
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def _job_command_sweep(ctx: typer.Context, argv: list[str]) -> str | None:
    """Parse a job's binsweep command with that command's own options, as the job will (an unknown option, a
    missing argument or a bad value fails here, before anything is sent); returns the sweep it names, if any."""
    import shlex

    from typer.exceptions import TyperException  # click's usage errors derive from it (typer vendors click)

    from sweep_platform.jobs import SubmitError

    root = ctx.find_root()
    get_command = getattr(root.command, "get_command", None)  # the root binsweep group
    command = get_command(root, argv[0]) if get_command else None
    if command is None:
        return None
    try:
        parsed = command.make_context(argv[0], list(argv[1:]), parent=root)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise SubmitError(f"binsweep {shlex.join(argv)}: {message} (see `binsweep {argv[0]} --help`)") from None
    sweep = parsed.params.get("sweep") or parsed.params.get("name")
    return sweep if isinstance(sweep, str) else None


def _print_job(req) -> None:
    """What travels: the job's environment (and what of this shell does not), the equivalent `ray job submit`."""
    from sweep_platform import jobs

    env = ", ".join(f"{k}={v}" for k, v in req.env.items()) or "none"
    console.print(f"  env:     {env}", highlight=False, soft_wrap=True, markup=False)
    left = jobs.not_sent(req.env)
    if left:
        console.print(f"  not sent: {', '.join(left)} of this shell (the cluster's own apply; --mlflow-uri, "
                      "--ray-storage, --optuna-storage or --env send a value)", highlight=False, soft_wrap=True,
                      markup=False)
    console.print(f"  same as: {req.command_line()}", highlight=False, soft_wrap=True, markup=False)
