"""`binsweep report NAME -o report.html`: one self-contained HTML page about a sweep.

Contents: the leaderboard (with the published reference values of the trainable's PaperReference, when it has one),
parameter importances from the sweep's Optuna study, one metric-versus-parameter plot per parameter that varies, and
the best trial's evaluation plots and summary, whatever its trainable's evaluation wrote (downloaded from its MLflow
artifacts under `evaluation/`, captioned by file name). Every
image is embedded as a base64 data URI and the style sheet is inline, so the file opens anywhere, offline. The page
is also logged to the sweep's parent run as the artifact `report.html`.

Optuna storage: BINSWEEP_OPTUNA_STORAGE, else `sqlite:///<BINSWEEP_HOME>/runs/optuna.db` (design.md); the study has
the sweep's name.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sweep_platform import leaderboard as lb
from sweep_platform import names, split_summary, tracking
from sweep_platform.storage import optuna_storage

log = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 3
EVALUATION_DIR = "evaluation"  # where training logs a run's evaluation files (training.evaluate_and_log)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_png_data_uri(png)}">'


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------- importances


def param_importances(study_name: str, storage: str | None = None) -> tuple[dict[str, float] | None, str]:
    """(importance per parameter, a note) from the stored Optuna study; (None, why not) when it cannot be computed."""
    import optuna

    storage = storage or optuna_storage()
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):])
        if not db.is_file():
            return None, f"no Optuna storage at {db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None, f"no Optuna study named {study_name!r} in {tracking.redact(storage)}"
    except Exception as exc:  # noqa: BLE001 - unreachable database, schema from another version
        return None, f"cannot open the Optuna study: {tracking.redact(str(exc))[:200]}"
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"only {len(done)} completed trial(s) in the Optuna study; parameter importances need at least "
                      f"{MIN_TRIALS_FOR_IMPORTANCE}")
    multi = len(study.directions) > 1
    try:
        importances = optuna.importance.get_param_importances(
            study, target=(lambda t: t.values[0]) if multi else None,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"parameter importances could not be computed: {exc}"
    if not importances:
        return None, "no parameter varies across the completed trials"
    note = (f"fANOVA over {len(done)} completed trials" + (", first objective" if multi else "")
            + "; parameters set in only some trials (conditional) are left out")
    return dict(importances), note


def _importance_png(importances: dict[str, float]) -> bytes:
    plt = _pyplot()
    params = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(params) + 1.2))
    ax.barh(params, [importances[p] for p in params], color="#4c72b0")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_xlim(0, max(1e-9, max(importances.values())) * 1.1)
    return _figure_png(fig)


# --------------------------------------------------------------------------------------------- metric vs param


def _as_number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def metric_vs_param_png(rows: list[dict], param: str) -> bytes | None:
    """Scatter of the ranking metric against one parameter (categories on a strip); None without two values."""
    import numpy as np

    plt = _pyplot()
    pts = [(r["params"].get(param), r["value"], not lb.is_fallback(r), r["rank"] == 1)
           for r in rows if r["value"] is not None and r["params"].get(param) is not None]
    if len({p[0] for p in pts}) < 2:
        return None
    metric = rows[0]["metric"]
    numbers = [_as_number(p[0]) for p in pts]
    numeric = all(n is not None for n in numbers)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    if numeric:
        xs = np.array(numbers)
        if (xs > 0).all() and xs.max() / xs.min() > 20:
            ax.set_xscale("log")
    else:
        cats = sorted({str(p[0]) for p in pts})
        rng = np.random.default_rng(0)
        xs = np.array([cats.index(str(p[0])) for p in pts]) + rng.uniform(-0.08, 0.08, len(pts))
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    ys = np.array([p[1] for p in pts])
    test = np.array([p[2] for p in pts])
    best = np.array([p[3] for p in pts])
    ax.scatter(xs[test], ys[test], color="#4c72b0", label=metric, zorder=2)
    if (~test).any():
        ax.scatter(xs[~test], ys[~test], facecolors="none", edgecolors="#4c72b0",
                   label=f"best validation epoch (no {metric})", zorder=2)
    if best.any():
        ax.scatter(xs[best], ys[best], marker="*", s=220, color="#dd8452", label="best", zorder=3)
    ax.set_xlabel(param)
    ax.set_ylabel(f"{metric} ({'lower' if rows[0].get('mode', 'min') == 'min' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _figure_png(fig)


# --------------------------------------------------------------------------------------------- best trial


def best_trial_artifacts(run_id: str) -> tuple[dict[str, bytes], str | None]:
    """The best trial's evaluation plots (every PNG its trainable's evaluation wrote: name -> PNG bytes, by name) and
    summary text, from its MLflow artifacts."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    c = tracking.client()
    try:
        present = sorted(Path(f.path).name for f in c.list_artifacts(run_id, EVALUATION_DIR) if not f.is_dir)
    except Exception:  # noqa: BLE001
        present = []
    images, summary = {}, None
    with tempfile.TemporaryDirectory(prefix="binsweep-report-") as d:
        for name in present:
            if not name.endswith(".png") and name != "summary.txt":
                continue
            try:
                local = Path(c.download_artifacts(run_id, f"{EVALUATION_DIR}/{name}", d))
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot download evaluation/%s of run %s: %s", name, run_id, exc)
                continue
            if name == "summary.txt":
                summary = local.read_text(errors="replace")
            else:
                images[name] = local.read_bytes()
    return images, summary


def _caption(file_name: str) -> str:
    """A plot's caption from its file name: attention_rollout.png -> Attention rollout."""
    words = Path(file_name).stem.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


# --------------------------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
     color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{border:1px solid #ddd;padding:3px 7px}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{color:#a33} .meta{color:#555;font-size:.9em} .note{color:#666;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} figcaption{font-size:.8em;color:#555;max-width:520px}
img{max-width:100%} .grid img{max-width:520px} pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def _leaderboard_html(rows: list[dict]) -> str:
    """Every leaderboard column, numbers as the terminal table writes them (`lb.format_value`: 4 significant
    digits, learning rates and log-scaled parameters in scientific notation)."""
    cols = lb.columns(rows)
    if not cols:
        return '<p class="note">no trials</p>'
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=num" if c.numeric else ""}>{html.escape(c.text(r))}</td>' for c in cols)
        body.append(f'<tr{" class=failed" if r["state"] == names.FAILED else ""}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def trainable_notes(ref: lb.SweepRef, rows: list[dict]) -> list[str]:
    """What the trainable has to say about this sweep's trials and dataset (TrainableSpec.report_notes), e.g. a limit
    that the data and the architecture set together; [] when it says nothing or cannot tell."""
    spec = lb.trainable_spec(ref.trainable)
    notes = getattr(spec, "report_notes", None)
    if notes is None or not rows:
        return []
    sweep_file = ref.sweep_file()
    dataset = sweep_file.get("dataset") or ((sweep_file.get("base") or {}).get("data") or {}).get("root")
    fingerprint = next((r["dataset_fingerprint"] for r in rows
                        if r.get("dataset_fingerprint") not in (None, "unknown")), None)
    try:
        return list(notes([r["params"] for r in rows], dataset, fingerprint))
    except Exception as exc:  # noqa: BLE001 - a note must never cost the user the report
        log.warning("the trainable's report notes failed: %s", exc)
        return []


def build_html(sweep: str | None = None, *, metric: str | None = None, storage: str | None = None,
               trainable: str | None = None) -> tuple[str, lb.SweepRef]:
    """The report page as a string, and the sweep it describes."""
    ref = lb.find_sweep(sweep, trainable)
    paper = getattr(lb.trainable_spec(ref.trainable), "paper", None)
    rows = lb.leaderboard(ref, metric=metric, compare_paper=paper is not None)
    objective, mode = ref.objective()
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>binsweep report: {e(ref.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sweep {e(ref.name)}</h1>",
        f'<p class="meta">trainable <b>{e(ref.trainable)}</b> · objective {e(objective)} ({e(mode)}) · '
        f"{len(rows)} trials (" + ", ".join(f"{n} {e(s)}" for s, n in sorted(states.items())) + ") · "
        f"parent run <code>{e(ref.run_id)}</code> · "
        f"MLflow <code>{e(tracking.redact(tracking.tracking_uri()))}</code> · "
        f"generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        "<h2>Leaderboard</h2>",
        f'<p class="note">ranked by {e(lb.ranked_by(rows) if rows else metric or "")}'
        + ("; a value marked in <i>from</i> is the best validation epoch of a trial without a test score" if any(
            lb.is_fallback(r) for r in rows) else "")
        + "; failed trials last.</p>",
        _leaderboard_html(rows),
    ]
    if paper is not None:
        parts.append(f'<p class="note">{e(" / ".join(paper.columns))}: {e(paper.source)}.</p>')
    parts += [f"<p><b>Note.</b> {e(note)}</p>" for note in trainable_notes(ref, rows)]
    over_splits = split_summary.to_html(rows, lb.test_metrics(ref.trainable))  # a sweep over data splits
    if over_splits:
        parts.append(over_splits)

    parts.append("<h2>Parameter importances</h2>")
    importances, note = param_importances(ref.name, storage)
    if importances:
        table = "".join(f"<tr><td>{e(k)}</td><td class=num>{e(lb.format_value(v))}</td></tr>"
                        for k, v in importances.items())
        parts += [f'<div class="grid"><table><tr><th>parameter</th><th>importance</th></tr>{table}</table>',
                  _img(_importance_png(importances), "parameter importances") + "</div>",
                  f'<p class="note">{e(note)}</p>']
    else:
        parts.append(f'<p class="note">{e(note)}</p>')

    parts.append("<h2>Metric versus parameter</h2>")
    params = list(rows[0]["params"]) if rows else []
    plots = [(p, metric_vs_param_png(rows, p)) for p in params]
    plots = [(p, png) for p, png in plots if png is not None]
    if plots:
        parts.append('<div class="grid">' + "".join(
            f"<figure>{_img(png, f'metric versus {p}')}<figcaption>{e(p)}</figcaption></figure>"
            for p, png in plots) + "</div>")
    else:
        parts.append('<p class="note">no parameter takes two values among the scored trials</p>')

    best = next((r for r in rows if r["rank"] == 1), None)
    parts.append("<h2>Best trial</h2>")
    if best is None:
        parts.append('<p class="note">no trial has a score yet</p>')
    else:
        settings = ", ".join(f"{k} = {lb.format_param(k, v, best.get('log_params') or ())}"
                             for k, v in best["params"].items())
        parts.append(f"<p>trial <b>{e(str(best['trial']))}</b> (run <code>{e(best['run_id'])}</code>): "
                     f"{e(best['metric'])} {e(lb.format_value(best['value']))}"
                     + "".join(f", {e(m)} {e(lb.format_value(best['metrics'][m]))}"
                               for m in [lb.default_metric(ref.trainable)] if m != best["metric"]
                               and m in best["metrics"])
                     + f"; {e(settings)}</p>")
        images, summary = best_trial_artifacts(best["run_id"])
        if images:
            parts.append('<div class="grid">' + "".join(
                f"<figure>{_img(png, _caption(n))}<figcaption>{e(_caption(n))}</figcaption></figure>"
                for n, png in images.items()) + "</div>")
        else:
            parts.append(f'<p class="note">no plots in the run\'s {EVALUATION_DIR}/ artifacts</p>')
        if summary:
            parts.append(f"<pre>{e(summary)}</pre>")
    from sweep_platform import cross_environment

    parts.append(cross_environment.section(rows))  # Table 3 from `binsweep evaluate` runs of the sweep's models
    parts.append("</body></html>")
    return "\n".join(parts), ref


def write_report(sweep: str | None, out: str | Path, *, metric: str | None = None, storage: str | None = None,
                 trainable: str | None = None, log_to_mlflow: bool = True) -> tuple[Path, lb.SweepRef]:
    """Write the page to `out` and log it to the sweep's parent run as `report.html`."""
    page, ref = build_html(sweep, metric=metric, storage=storage, trainable=trainable)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if log_to_mlflow:
        c = tracking.client()
        with tempfile.TemporaryDirectory(prefix="binsweep-report-") as d:
            named = Path(d) / "report.html"
            shutil.copyfile(out, named)
            c.log_artifact(ref.run_id, str(named))
    return out, ref
