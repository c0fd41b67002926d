"""How a leaderboard's rows are shown: the one number formatter, the columns, the terminal table, CSV, JSON, markdown.

Numbers: `format_value` is the one formatter of every human-readable output (the terminal table, markdown, the HTML
report, the live progress table, predictions): at most 4 significant digits, scientific notation (`1.93e-3`) for
magnitudes below 1e-3 or from 1e5 and for learning rates and log-scaled parameters, integers as integers. CSV and
JSON keep full precision.

The terminal table fits 120 columns by default (`to_table`): rank, trial, state, the ranking metric with the
sweep's objective or the trainable's test metric beside it, epochs, wall time and as many of the parameters as fit,
under short (and, when needed, abbreviated) names; `wide` shows every column. The rows come from
`leaderboard.leaderboard`, which re-exports these names.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sweep_platform import names

FORMATS = ("table", "csv", "json", "markdown")


def trainable_spec(trainable: str):
    """The sweep's TrainableSpec, or None when that trainable is no longer installed (its sweeps still list)."""
    from trainables.registry import TrainableNotFoundError, get_trainable

    try:
        return get_trainable(trainable)
    except TrainableNotFoundError:
        return None


def test_metrics(trainable: str) -> tuple[str, ...]:
    """The test metrics every leaderboard of the trainable shows (with --wide; the first also by default)."""
    spec = trainable_spec(trainable)
    return spec.test_metrics if spec else ()


def default_metric(trainable: str) -> str:
    """The trainable's main test metric (`test_ad_deg`): shown beside the ranking metric, required and compared by
    the promotion gate, listed by `binsweep models`. Not the default ranking metric (the sweep's objective is)."""
    spec = trainable_spec(trainable)
    return spec.default_test_metric if spec is not None else "test_loss"  # uninstalled: val_loss's counterpart


def is_fallback(row: dict) -> bool:
    """Whether the row's value is not its ranking metric's own but a stand-in (the best validation epoch of a trial
    without the test metric it is ranked by)."""
    source = row.get("value_source")
    return source is not None and source.split(" ", 1)[0] != row["metric"]


def ranked_by(rows: list[dict]) -> str:
    """What the rows are ranked by, for a title: `val_ad_deg (best epoch), lower is better`."""
    metric = rows[0]["metric"]
    per_epoch = not metric.startswith("test_") and metric not in names.TRIAL_METRICS
    better = "higher" if rows[0].get("mode") == "max" else "lower"
    return f"{metric}{' (best epoch)' if per_epoch else ''}, {better} is better"


# ------------------------------------------------------------------------------------------------------ numbers

SIGNIFICANT = 4  # significant digits of a number in fixed notation
SCI_SIGNIFICANT = 3  # significant digits of a number in scientific notation (1.93e-3)
SCI_BELOW, SCI_FROM = 1e-3, 1e5  # magnitudes shown in scientific notation: below SCI_BELOW, from SCI_FROM
_NUMBER = re.compile(r"[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?(0|[1-9]\d*)")  # not 00012: an id, kept as written


def is_rate(name: str | None) -> bool:
    """A learning rate by its name: the last part of the key ends in `lr` (train.lr, head_lr) or says
    learning_rate."""
    last = (name or "").rsplit(".", 1)[-1].lower()
    return bool(last) and (last.endswith("lr") or "learning_rate" in last)


def _scientific(x: float) -> str:
    """1.928e-03 -> 1.93e-3, 3e-04 -> 3e-4, 123456.0 -> 1.23e5: 3 significant digits, no trailing zeros, no + or
    leading zeros in the exponent."""
    mantissa, exponent = f"{x:.{SCI_SIGNIFICANT - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_value(v: Any, name: str | None = None, *, log: bool = False) -> str:
    """A number as every human-readable output shows it (terminal tables, markdown, the HTML report, progress).

    At most 4 significant digits in fixed notation (12.3456 -> 12.35, 0.7225254 -> 0.7225, 12345.6 -> 12350);
    scientific notation with 3 significant digits (1.93e-3, 2.5e5) for magnitudes below 1e-3 or from 1e5, and for
    every value of a learning rate (`name` ending in `lr`) or of a parameter sampled on a log scale (`log`), so that
    a column of them reads alike; integers (int) as they are; None as blank; anything else as str(v).
    Machine-readable outputs (CSV, JSON) keep full precision and never go through here.
    """
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return str(v)
    if isinstance(v, numbers.Integral) and not (log or is_rate(name)):
        return str(int(v))
    x = float(v)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    rounded = float(f"{x:.{SIGNIFICANT}g}")
    if log or is_rate(name) or not SCI_BELOW <= abs(rounded) < SCI_FROM:
        return _scientific(x)
    text = f"{rounded:.{SIGNIFICANT}g}"
    return f"{rounded:.0f}" if "e" in text else text  # 1e4 <= |x| < 1e5: .4g would write 1.235e+04


def typed(v: Any) -> Any:
    """A parameter as MLflow returns it (a string) as the number it was, when it was one: "32" -> 32,
    "0.0019280284410033446" -> 0.0019280284410033446; other strings ("NSP", "nan", "007") and non-strings
    unchanged."""
    if isinstance(v, str):
        t = v.strip()
        if _INTEGER.fullmatch(t):
            return int(t)
        if _NUMBER.fullmatch(t):
            return float(t)
    return v


def format_param(name: str, v: Any, log_params: Sequence[str] = ()) -> str:
    """A parameter's value for people: numbers through `format_value` (scientific for rates and log-scaled ones)."""
    return format_value(typed(v), name, log=name in log_params)


def format_duration(seconds: float | None) -> str:
    """Wall time for a table: 45s, 12m05s, 3h07m."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ------------------------------------------------------------------------------------------------------ formats

TABLE_WIDTH = 120  # the default terminal table fits this many columns
_WIDTHS = ((12, 12), (8, 8))  # (header, value) character limits of the parameter columns, tried in this order


@dataclass(frozen=True)
class Column:
    """One column of a rendering: `header` names it in CSV (and is what `get` returns, at full precision), `label`
    in human-readable renderings, whose cells `text` gives (formatted numbers)."""

    header: str
    get: Callable[[dict], Any]
    label: str = ""
    numeric: bool = False
    param: bool = False
    default: bool = True  # in the terminal table without --wide
    fmt: Callable[[Any], str] | None = None

    def text(self, row: dict) -> str:
        v = self.get(row)
        if self.fmt is not None:
            return self.fmt(v)
        if self.param:
            return format_param(self.header, v, row.get("log_params") or ())
        return format_value(v, self.header)

    @property
    def title(self) -> str:
        return self.label or self.header


def columns(rows: list[dict]) -> list[Column]:
    """Every column a rendering may show, in order: rank, trial, run, state, the ranking metric (and where a stand-in
    value came from), the sweep's objective and the test metrics beside it, paper values, epochs, wall time, GPU
    hours, the parameters, the error. The terminal table leaves out those with default=False unless --wide."""
    if not rows:
        return []
    first = rows[0]
    metric = first["metric"]
    objective = first.get("objective")
    test_metric = default_metric(first.get("trainable", "")) if first.get("trainable") else None
    tests = list(test_metrics(first.get("trainable", ""))) or ([test_metric] if test_metric else [])
    tests = [m for m in tests if m != metric and any(m in r["metrics"] for r in rows)]
    cols = [
        Column("rank", lambda r: r["rank"], numeric=True),
        Column("trial", lambda r: r["trial"]),
        Column("run", lambda r: f"{r['run_name']} ({r['run_id'][:8]})", default=False),
        Column("state", lambda r: r["state"]),
        Column(metric, lambda r: r["value"], numeric=True),
    ]
    if any(is_fallback(r) for r in rows):
        cols.append(Column("from", lambda r: r["value_source"] if is_fallback(r) else "", default=False))
    if objective and objective != metric and any(r.get("objective_value") is not None for r in rows):
        cols.append(Column(objective, lambda r: r.get("objective_value"), numeric=True))
    # --compare-paper: a published value `paper_X` sits right after the trial's own `test_X` (both shown by default),
    # so like is compared with like; the trainable names its paper columns after the metric on the paper's scale.
    partner = {f"test_{k[len('paper_'):]}": k for k in first if k.startswith("paper_")}
    tests += [m for m in partner if m not in tests and m != metric and any(m in r["metrics"] for r in rows)]
    for m in tests:
        cols.append(Column(m, lambda r, m=m: r["metrics"].get(m), numeric=True,
                           default=m == test_metric or m in partner))
        if m in partner:
            cols.append(Column(partner[m], lambda r, k=partner[m]: r.get(k), numeric=True))
    cols += [Column(k, lambda r, k=k: r.get(k), numeric=True) for m, k in partner.items() if m not in tests]
    cols += [Column("epochs", lambda r: r["epochs"], numeric=True),
             Column("wall_s", lambda r: r.get("wall_s"), label="wall", numeric=True, fmt=format_duration),
             Column("gpu_hours", lambda r: r["gpu_hours"], numeric=True, default=False)]
    if not any(r.get("wall_s") is not None for r in rows):
        cols.pop(-2)
    cols += [Column(k, lambda r, k=k: r["params"].get(k), param=True) for k in first["params"]]
    if any(r["error"] for r in rows):
        cols.append(Column("error", lambda r: r["error"], default=False))
    return cols


def _short(text: Any, width: int = 100) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def to_csv(rows: list[dict]) -> str:
    """Every column at full precision (parameters as logged, floats as repr)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    cols = columns(rows)
    writer.writerow([c.header for c in cols])
    for r in rows:
        writer.writerow(["" if (v := c.get(r)) is None else (repr(v) if isinstance(v, float) else str(v))
                         for c in cols])
    return out.getvalue()


def to_json(rows: list[dict]) -> str:
    """The rows as they are: full precision, for machines."""
    return json.dumps(rows, indent=2, default=str)


def to_markdown(rows: list[dict]) -> str:
    """Every column, numbers as `format_value` writes them."""
    cols = columns(rows)
    if not cols:
        return "(no trials)\n"

    def cell(c: Column, r: dict) -> str:
        text = c.text(r)
        if c.header == rows[0]["metric"] and is_fallback(r) and text:
            text += " (val)"
        return _short(text).replace("|", "\\|")

    lines = ["| " + " | ".join(c.title for c in cols) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, r) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _short_headers(headers: list[str]) -> dict[str, str]:
    """model.sharing -> sharing, loss.name -> loss, wherever the short name stays unique among the headers; where it
    does not, the sections' initials go before it (model.dropout -> m.dropout), and failing that the whole key."""

    def short(h: str) -> str:
        if "." not in h:
            return h
        first, last = h.split(".")[0], h.rsplit(".", 1)[-1]
        return first if last == "name" else last

    def initials(h: str) -> str:
        parts = h.split(".")
        return ".".join([p[:1] for p in parts[:-1]] + parts[-1:])

    shorts = [short(h) for h in headers]
    out = {}
    for h, s in zip(headers, shorts):
        if shorts.count(s) == 1:
            out[h] = s
        else:
            alt = initials(h)
            out[h] = alt if sum(initials(o) == alt for o, so in zip(headers, shorts) if so == s) == 1 else h
    return out


def abbreviate(name: str, limit: int) -> str:
    """A header in at most `limit` characters: as it is; else the words before the last cut to 3 letters
    (layers_center -> lay_center); else every word cut to 3 (pos_embedding -> pos_emb); else cut with an ellipsis
    (integration -> integr…)."""
    if len(name) <= limit:
        return name
    head, dot, tail = name.rpartition(".")
    words = tail.split("_")
    for candidate in ("_".join([w[:3] for w in words[:-1]] + words[-1:]), "_".join(w[:3] for w in words)):
        candidate = head + dot + candidate if head else candidate
        if len(words) > 1 and len(candidate) <= limit:
            return candidate
    return name[: limit - 1] + "…"


def _priority(rows: list[dict], params: list[str]) -> list[str]:
    """The parameters in the order the table keeps them when it must leave some out: the trainable's key
    parameters, learning rates and log-scaled ones, the sweep's other searched ones, then the rest."""
    first = rows[0]
    spec = trainable_spec(first.get("trainable", ""))
    key = [k for k in (spec.key_params if spec else ()) if k in params]
    log = first.get("log_params") or []
    rates = [k for k in params if k not in key and (is_rate(k) or k in log)]
    searched = [k for k in (first.get("searched_params") or []) if k in params and k not in key + rates]
    return key + rates + searched + [k for k in params if k not in key + rates + searched]


def natural_width(renderable) -> int:
    """The width a rich renderable takes when nothing limits it."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=100_000)
    return Measurement.get(console, console.options, renderable).maximum


def to_table(rows: list[dict], title: str | None = None, *, wide: bool = False, width: int = TABLE_WIDTH):
    """A rich Table for a terminal, numbers through `format_value`; failed trials in red (`failed_lines` lists their
    errors); a stand-in value from the best validation epoch is marked "(val)".

    By default it fits `width` columns: rank, trial, state, the ranking metric with the sweep's objective or the
    trainable's test metric beside it, paper values when asked for, epochs, wall time, then the parameters under
    short names, abbreviated headers and values when needed, and as many of them as fit (in `_priority` order; the
    caption names the ones left out). `wide` shows every column (run, every test metric, GPU hours, every parameter)
    at full length."""
    from rich import box
    from rich.table import Table

    metric = rows[0]["metric"] if rows else ""
    cols = [c for c in columns(rows) if c.header != "error" and (wide or c.default)]
    short = _short_headers([c.header for c in cols if c.param])

    def build(shown: list[Column], limits: tuple[int, int] | None, hidden: list[str]) -> Table:
        caption = None
        if hidden:
            caption = (f"{len(hidden)} more parameter{'s' if len(hidden) > 1 else ''} not shown: "
                       f"{', '.join(short[h] for h in hidden)} (--wide shows every column)")
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
                      caption_justify="left")
        for c in shown:
            header = short.get(c.header, c.title) if c.param else c.title
            if limits and c.param:  # one word (integration) stays whole up to the widest limit: no integra…
                header = abbreviate(header, limits[0] if "_" in header else _WIDTHS[0][0])
            table.add_column(header, justify="right" if c.numeric else "left", overflow="fold")

        def cell(r: dict, c: Column) -> str:
            text = _short(c.text(r), limits[1] if limits and c.param else 40 if not wide else 100)
            if c.header == metric and is_fallback(r) and text:
                text += " (val)"
            return text

        for r in rows:
            table.add_row(*[cell(r, c) for c in shown], style="red" if r["state"] == names.FAILED else None)
        return table

    if wide or not rows:
        return build(cols, None, [])
    for limits in _WIDTHS:
        table = build(cols, limits, [])
        if natural_width(table) <= width:
            return table
    params = [c.header for c in cols if c.param]
    hidden: list[str] = []
    for name in reversed(_priority(rows, params)):
        hidden.insert(0, name)
        shown = [c for c in cols if c.header not in hidden]
        table = build(shown, _WIDTHS[-1], [h for h in params if h in hidden])
        if natural_width(table) <= width:
            break
    return table


def failed_lines(rows: list[dict]) -> list[str]:
    """`trial N (run): error` for every failed trial."""
    return [f"trial {r['trial']} ({r['run_name']}, {r['run_id'][:8]}): {r['error'] or 'no error recorded'}"
            for r in rows if r["state"] == names.FAILED]


def render(rows: list[dict], fmt: str) -> str:
    """csv, json or markdown as text (the table format is `to_table`)."""
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        return to_json(rows)
    if fmt == "markdown":
        return to_markdown(rows)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
