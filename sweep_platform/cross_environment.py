"""The cross-environment table (the BAST paper's Table 3) assembled from `binsweep evaluate` runs in MLflow.

Rows are what a model was trained on: its evaluation run's `binsweep.train_environments` tag, `both` when it was
trained on every environment (no restriction), else the environments joined with `+`. Columns are the environments
the models were tested on: every `{split}_ad_deg.{env}` metric of an evaluation run; for a dataset whose manifest
lists rooms (metrics `.family-{family}`), the room families instead of the single rooms, so a randomised-room
dataset gives a column per family (training rooms, held-out rooms) rather than one per room. When the runs scored
more than one dataset, a column is also named by its dataset (the folder name), so that, say, the anechoic test
split of a generated dataset and that of an imported one stay apart. A cell is the mean AD in degrees and the MSE
(eq. 2).

Scope (`binsweep report`): the models trained by the sweep's trials, i.e. the evaluation runs (in any experiment)
whose `binsweep.source_run_id` is one of the sweep's trial runs, which include its promoted champion. Where several
of those models share a row, the row is the best-ranked one on the sweep's leaderboard that has evaluation runs;
where one model was scored twice on the same column, the newest run counts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from sweep_platform import names, tracking
from sweep_platform.evaluation import (ALL_ENVIRONMENTS, ROLE_EVALUATION, TAG_DATASET_URI, TAG_MODEL_URI,
                                       TAG_SOURCE_RUN, TAG_SPLIT, TAG_TRAIN_ENVIRONMENTS)

BOTH = "both"  # the row of a model trained on every environment
FAMILY = "family-"  # metric suffix of a room family: test_ad_deg.family-heldout


@dataclass(frozen=True)
class Cell:
    ad_deg: float
    mse: float | None
    run_id: str  # the evaluation run it comes from


@dataclass
class Table3:
    """rows[train][column] = Cell; `models[train]` says which model (URI, source run) each row shows."""

    rows: dict[str, dict[str, Cell]]
    models: dict[str, tuple[str, str | None]]

    @property
    def columns(self) -> list[str]:
        return sorted({c for row in self.rows.values() for c in row})


def train_label(tag: str | None) -> str:
    """`all` (or nothing) -> both; `anechoic,reverberant` -> anechoic+reverberant."""
    if not tag or tag == ALL_ENVIRONMENTS:
        return BOTH
    return "+".join(tag.split(","))


def evaluation_runs(source_run_ids: set[str] | None = None) -> list:
    """Every evaluation run in the store, newest first; only those of models trained by `source_run_ids` when
    given."""
    from sweep_platform.leaderboard import experiment_ids, search_all

    c = tracking.client()
    ids = experiment_ids(c)
    if not ids:
        return []
    runs = search_all(c, ids, f"tags.`{names.TAG_ROLE}` = '{ROLE_EVALUATION}' and attributes.status = 'FINISHED'",
                      order_by=["attributes.start_time DESC"])
    if source_run_ids is not None:
        runs = [r for r in runs if r.data.tags.get(TAG_SOURCE_RUN) in source_run_ids]
    return runs


def _cells(run) -> dict[tuple[str, str], Cell]:
    """{(dataset, column): Cell} of one evaluation run: its families when it has any, else its environments."""
    split = run.data.tags.get(TAG_SPLIT, "test")
    dataset = (run.data.tags.get(TAG_DATASET_URI) or "?").rstrip("/").rsplit("/", 1)[-1]
    m = run.data.metrics
    head = f"{split}_ad_deg."
    groups = [k[len(head):] for k in m if k.startswith(head)]
    families = [g for g in groups if g.startswith(FAMILY)]
    chosen = families or groups
    return {(dataset, g.removeprefix(FAMILY)): Cell(m[head + g], m.get(f"{split}_mse.{g}"), run.info.run_id)
            for g in chosen}


def assemble(runs: list, rank: dict[str, int] | None = None) -> Table3:
    """Table 3 from evaluation runs (newest first). `rank`: source run id -> leaderboard rank, to pick the model of a
    row that several models share (best rank first; unranked models after, the most recently evaluated first)."""
    rank = rank or {}
    by_model: dict[str, list] = {}
    for run in runs:
        by_model.setdefault(run.data.tags.get(TAG_SOURCE_RUN) or run.data.tags.get(TAG_MODEL_URI, "?"), []).append(run)
    order = sorted(by_model, key=lambda k: (rank.get(k, 10**9), -max(r.info.start_time or 0 for r in by_model[k])))
    picked: dict[str, dict[tuple[str, str], Cell]] = {}
    models: dict[str, tuple[str, str | None]] = {}
    for key in order:
        model_runs = by_model[key]
        label = train_label(model_runs[0].data.tags.get(TAG_TRAIN_ENVIRONMENTS))
        if label in picked:
            continue  # a better-ranked model already holds this row
        cells: dict[tuple[str, str], Cell] = {}
        for run in reversed(model_runs):  # oldest first, so the newest run of a column wins
            cells.update(_cells(run))
        picked[label] = cells
        models[label] = (model_runs[0].data.tags.get(TAG_MODEL_URI, "?"), model_runs[0].data.tags.get(TAG_SOURCE_RUN))
    datasets = {d for cells in picked.values() for d, _ in cells}
    rows = {label: {(col if len(datasets) == 1 else f"{col} ({d})"): cell for (d, col), cell in cells.items()}
            for label, cells in picked.items()}
    return Table3(rows, models)


def markdown(table: Table3) -> str:
    """The table as markdown: `AD° / MSE` per cell, `–` where a model was not scored on that column."""
    cols = table.columns
    lines = ["| train \\ test | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for train in sorted(table.rows):
        lines.append(f"| {train} | " + " | ".join(_text(table.rows[train].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    return f"{cell.ad_deg:.2f}°" + ("" if cell.mse is None else f" / {cell.mse:.4f}")


def section(rows: list[dict]) -> str:
    """The report's Table 3 section for a sweep whose leaderboard rows are `rows` (see the module docstring)."""
    e = html.escape
    rank = {r["run_id"]: r["rank"] for r in rows if r.get("rank") is not None}
    runs = evaluation_runs({r["run_id"] for r in rows})
    out = ["<h2>Cross-environment evaluation (Table 3)</h2>"]
    if not runs:
        out.append('<p class="note">no evaluation runs of this sweep\'s models yet: score one on each test dataset '
                   "with <code>binsweep evaluate MODEL --data DIR_OR_URI</code></p>")
        return "\n".join(out)
    table = assemble(runs, rank)
    cols = table.columns
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join(f"<tr><td>{e(t)}</td>" + "".join(f"<td class=num>{e(_text(table.rows[t].get(c)))}</td>"
                                                     for c in cols) + "</tr>" for t in sorted(table.rows))
    out.append(f"<table><thead><tr><th>train \\ test</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    models = "; ".join(f"{e(t)}: {e(uri)}" + (f" (run <code>{e(run)}</code>)" if run else "")
                       for t, (uri, run) in sorted(table.models.items()))
    out.append(f'<p class="note">mean AD (°) / MSE (eq. 2) from {len(runs)} evaluation run(s) of this sweep\'s models '
               f"(<code>binsweep evaluate</code>); rows: the training environments, <i>both</i> = all; a row shows "
               f"the best-ranked model trained on them. Models: {models}.</p>")
    return "\n".join(out)
