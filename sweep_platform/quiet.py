"""Quiet by default: third-party lines that a user cannot act on are dropped, everything that signals a problem stays.

What is dropped (NOISE), by logger name and message where the line is a log record of this process, by its text where
it comes from a Ray worker or the raylet (printed by the driver through `ray._private.worker.print_to_stdstream`,
which `install_ray_filter` wraps before `ray.init`):
- Ray's "Token authentication is enabled" (our embedded cluster turns it on on purpose; the "disabled" warning stays),
  and the raylet's "N PYTHON worker processes have been started" (reused Tune actors and Train workers start many);
- Ray Train V2's INFO lines (worker group started, checkpoint created, result reported);
- MLflow's INFO lines (system-metrics monitoring, ...), artifact download bars and "🏃 View run / 🧪 View experiment"
  lines (off at the source too: QUIET_ENV, set for this process and, through ray_runtime's runtime env, for every
  worker), its database-creation lines, and its signature-inference / pickle warnings (binsweep logs its models with
  an explicit signature, as code and weights: neither appears in a sweep's -v output any more).

`binsweep -v` (BINSWEEP_VERBOSE=1) or BINSWEEP_DEBUG=1 shows everything; both variables reach Ray's workers.
"""

from __future__ import annotations

import logging
import os
import re

VERBOSE_VARIABLE = "BINSWEEP_VERBOSE"
DEBUG_VARIABLE = "BINSWEEP_DEBUG"

# (logger name, message pattern): records of this process that say nothing a user can act on
NOISE: tuple[tuple[str, str], ...] = (
    ("ray._private.authentication.authentication_token_setup", r"Token authentication is enabled for this Ray"),
    ("mlflow.system_metrics.system_metrics_monitor", r"monitoring|GPU metrics"),
    ("mlflow.store.db.utils", r"Creating initial MLflow database tables|Updating database tables"),
    ("alembic.runtime.migration", r"Context impl|Will assume|Running upgrade"),
    ("mlflow.models.signature", r"infer|signature"),
    ("mlflow.models.model", r"infer|signature|input example|Input example"),
    ("mlflow.types.utils", r"infer|schema"),
    ("mlflow.pyfunc", r"pickle|infer|signature"),
    ("mlflow.utils.requirements_utils", r"infer|requirements"),
)
# the same lines as printed text (a worker's stdout/stderr, the raylet's error messages, job logs)
NOISY_LINES = re.compile("|".join((
    r"Token authentication is enabled for this Ray cluster",
    r"\d+ PYTHON worker processes have been started",
    r"🏃 View run ", r"🧪 View experiment at",
    r"Creating initial MLflow database tables", r"INFO mlflow\.store\.db\.utils: Updating database tables",
    r"INFO mlflow\.system_metrics\.", r"Downloading artifacts: +\d+%",
    r"mlflow\.models\.(signature|model).*(infer|signature|input example)",
    r"Failed to infer (the )?(model )?signature", r"model signature", r"[Ii]nput example",
    r"\bpickle\b.*(mlflow|security|untrusted)|(mlflow|security|untrusted).*\bpickle\b",
    # Ray Train V2's INFO lines from its controller and workers (log_to_driver is on for tracebacks and warnings)
    r"^Requesting resources: ", r"Attempting to start training worker group", r"Started training worker group of size",
    r"^- \(ip=[^)]*\) world_rank=", r"Setting up process group for: ", r"^Moving model to device: ",
    r"^Checkpoint successfully created at: ", r"^Reporting training result \d+: ",
    r"has constructor arguments in the object store and max_restarts", r"^Wrapping provided model in Distributed",
    # Ray Train's retry report around a worker's error (the error itself stays, see condense)
    r"^\s*Source: worker group$", r"^\s*Error count: \d+", r"^(Error: |ray\.train\.WorkerGroupError: )?Training "
    r"failed due to worker errors:$", r"^\[Rank [\d,]+ Error Snippet\]:$", r"^Error in training function:$",
)))
TRACEBACK_HINT = "(worker tracebacks shortened to their last line; `binsweep -v` or BINSWEEP_DEBUG=1 shows them whole)"
# MLflow's own switches: no "View run" lines, no download progress bars, its INFO lines ("Started monitoring system
# metrics", ...) off; its warnings stay (read when mlflow is imported: set here, and in every Ray worker's env)
QUIET_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "MLFLOW_LOGGING_LEVEL": "WARNING"}


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE) == "1" or os.environ.get(DEBUG_VARIABLE) == "1"


def is_noise(line: str) -> bool:
    """Whether a printed line is one that `binsweep` hides unless -v."""
    return bool(NOISY_LINES.search(line))


class NoiseFilter(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to judge
            return True
        return not self.pattern.search(message)


def worker_env() -> dict[str, str]:
    """The variables every process of a run should see: verbosity, and MLflow's switches when quiet."""
    env = {k: os.environ[k] for k in (VERBOSE_VARIABLE, DEBUG_VARIABLE) if os.environ.get(k)}
    return env if verbose() else {**QUIET_ENV, **env}


def install() -> None:
    """Quiet this process (idempotent; does nothing with -v or BINSWEEP_DEBUG=1)."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, pattern in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoiseFilter) for f in logger.filters):
            logger.addFilter(NoiseFilter(pattern))
    import warnings

    warnings.filterwarnings("ignore", message=r".*(infer|signature|input example).*", module=r"mlflow\..*")


def condense(lines: list[str]) -> list[str]:
    """A batch of a worker's output lines less the noise, each traceback shortened to its exception line (a trial's
    whole traceback stays in its error.txt), blank lines dropped."""
    out: list[str] = []
    in_traceback = False
    for line in lines:
        text = line.rstrip()
        if text.strip() in ("Traceback (most recent call last):", "During handling of the above exception, another "
                            "exception occurred:", "The above exception was the direct cause of the following "
                            "exception:"):
            in_traceback = True
            continue
        if in_traceback and (not text or text[0].isspace()):
            continue  # frames, source lines, ^^^ markers
        in_traceback = False
        if text.strip() and not is_noise(text):
            out.append(line)
    return out


def install_ray_filter() -> None:
    """Drop noisy lines that Ray prints on the driver for its workers and the raylet; call before `ray.init`."""
    if verbose():
        return
    from ray._private import worker

    original = worker.print_to_stdstream
    if getattr(original, "_binsweep_quiet", False):
        return

    hinted = []

    def print_to_stdstream(data, ignore_prefix: bool):
        raw = data.get("lines", [])
        lines = condense(raw)
        if lines and not hinted and any("Traceback (most recent call last):" in line for line in raw):
            hinted.append(True)
            lines.append(TRACEBACK_HINT)
        if lines:
            original({**data, "lines": lines}, ignore_prefix=ignore_prefix)

    print_to_stdstream._binsweep_quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream
