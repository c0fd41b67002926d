"""Mean ± standard deviation over data splits, for a sweep that grids over them (e.g. FAIR-Play's ten splits).

A sweep whose space searches a split parameter (`data.split`, or any searched key ending in `.split`) trains each
configuration once per split. Its trials are grouped by their other searched parameters; each group reports, per
test metric of the trainable, the mean and the sample standard deviation (n − 1) over its completed trials, with the
splits it covers. Only the searched parameters define a configuration: the others are the sweep's base, the same in
every trial, or follow from the split (data.root names the split's view). Trials without the metric (failed, still
running, never tested) are left out and counted.
"""

from __future__ import annotations

import html
import statistics
from typing import Any

from sweep_platform import leaderboard as lb
from sweep_platform import names


def split_param(rows: list[dict]) -> str | None:
    """The searched parameter that is the split axis, or None when the sweep does not search one."""
    searched = rows[0].get("searched_params", []) if rows else []
    return next((k for k in searched if k == "data.split" or k.endswith(".split")), None)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(rows: list[dict], metrics: tuple[str, ...], split: str) -> tuple[list[dict[str, Any]], int]:
    """(one dict per configuration, trials left out). A configuration: {"params": {searched key: value} without the
    split, "splits": the split values it has the metrics for, "n": their count, "stats": {metric: (mean, std or
    None)}}, in the order of first appearance."""
    groups: dict[tuple, dict[str, Any]] = {}
    left_out = 0
    for r in rows:
        values = {m: r["metrics"].get(m) for m in metrics}
        if r["state"] == names.FAILED or any(v is None for v in values.values()):
            left_out += 1
            continue
        params = {k: r["params"].get(k) for k in r.get("searched_params", []) if k != split}
        g = groups.setdefault(tuple(params.items()), {"params": params, "splits": [], "values": {m: [] for m in
                                                                                                metrics}})
        g["splits"].append(r["params"].get(split))
        for m, v in values.items():
            g["values"][m].append(float(v))
    out = []
    for g in groups.values():
        splits = sorted(g["splits"], key=lambda s: (lb.typed(s) if isinstance(lb.typed(s), (int, float)) else 0,
                                                    str(s)))
        out.append({"params": g["params"], "splits": splits, "n": len(splits),
                    "stats": {m: _mean_std(v) for m, v in g["values"].items()}})
    return out, left_out


def _cell(stat: tuple[float, float | None], metric: str) -> str:
    mean, std = stat
    return lb.format_value(mean, metric) + ("" if std is None else " ± " + lb.format_value(std, metric))


def to_html(rows: list[dict], metrics: tuple[str, ...]) -> str | None:
    """The report's section (heading, table, note) or None when the sweep searches no split parameter."""
    split = split_param(rows)
    if split is None or not metrics:
        return None
    groups, left_out = aggregate(rows, metrics, split)
    e = html.escape
    note = (f"mean ± sample standard deviation over the {e(split)} values each configuration was tested on; "
            "configurations are the other searched parameters"
            + (f"; {left_out} trial(s) without {', '.join(metrics)} (failed, running or untested) left out"
               if left_out else "") + ".")
    if not groups:
        return f"<h2>Mean over splits</h2><p class=\"note\">no trial has {e(', '.join(metrics))} yet. {note}</p>"
    keys = list(groups[0]["params"])
    head = "".join(f"<th>{e(k)}</th>" for k in keys) + f"<th>{e(split)}</th><th>n</th>" + \
        "".join(f"<th>{e(m)} (mean ± std)</th>" for m in metrics)
    body = []
    for g in groups:
        cells = "".join(f"<td>{e(str(g['params'][k]))}</td>" for k in keys)
        cells += f"<td>{e(', '.join(str(s) for s in g['splits']))}</td><td class=num>{g['n']}</td>"
        cells += "".join(f"<td class=num>{e(_cell(g['stats'][m], m))}</td>" for m in metrics)
        body.append(f"<tr>{cells}</tr>")
    return (f"<h2>Mean over splits</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f'<p class="note">{note}</p>')
