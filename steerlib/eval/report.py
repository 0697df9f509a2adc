"""Tables and pictures of a :func:`~steerlib.eval.compare.compare` run.

:func:`write_report` takes a :class:`~steerlib.eval.rows.CompareResult` (or the run's
``out_dir``) and writes, atomically, into the run's folder:

* ``report.md``: the markdown table of metrics per method / layer / alpha (proportions with
  their Wilson 95% interval), the best configuration of each method, and the plots;
* ``metrics.csv`` and ``metrics.json``: the same rows, every number (interval bounds included);
* ``metrics_vs_alpha.png``: each metric against alpha, one line per method (and layer), with
  the Wilson band; methods without a strength (no steering, prompting) are dashed lines;
* ``best_alpha.png``: per metric, one bar per method at its best configuration (by ``select``,
  default the ``score`` column) next to the baselines, with Wilson error bars.

Plots use matplotlib's object-oriented API on an Agg canvas (no pyplot, no global state).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingDependencyError
from ..persistence import write_text_atomic, writing
from .rows import CompareResult, load_result

__all__ = [
    "METRICS",
    "ReportPaths",
    "TableStyle",
    "best_rows",
    "markdown_table",
    "metric_columns",
    "metrics_vs_alpha_figure",
    "plot_best_bars",
    "plot_metrics_vs_alpha",
    "rows_to_csv",
    "write_report",
]


@dataclass(frozen=True)
class MetricInfo:
    """How a metric column reads: better direction, whether it is a proportion (has an interval)."""

    name: str
    higher_is_better: bool | None  # None: neither (e.g. the POPE yes-ratio, best near 0.5)
    proportion: bool
    description: str


#: Every metric column ``compare`` can produce, in table order.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("refusal", True, True, "refusal rate on harmful items"),
    MetricInfo("deferral", True, True, "expert deferral (phrase list) on advice / legal / financial / health items"),
    MetricInfo("deferral_strict", True, True, "expert deferral (strict regex) on the same items"),
    MetricInfo("unchanged", True, True, "benign items whose first N generated tokens equal the unsteered ones"),
    MetricInfo("false_refusal", False, True, "refusal rate on benign items"),
    MetricInfo("pope_acc", True, True, "POPE accuracy (parsed yes/no against the label)"),
    MetricInfo("pope_f1", True, False, "POPE F1, 'yes' positive"),
    MetricInfo("pope_yes_ratio", None, True, "fraction of 'yes' answers"),
    MetricInfo("pope_acc_paper", True, True, "paper's accuracy: GT word in the first 15 characters"),
    MetricInfo("pope_f1_paper", True, False, "paper code's 'F1' = 2 Acc / (1 + Acc)"),
    MetricInfo("unsafe@0.5", False, False, "E_{p>=0.5}[unsafe] from the judge"),
    MetricInfo("unsafe@0.7", False, False, "E_{p>=0.7}[unsafe] from the judge"),
    MetricInfo("unsafe@0.9", False, False, "E_{p>=0.9}[unsafe] from the judge"),
    MetricInfo("ppl_median", False, False, "median perplexity of the outputs under the unsteered model"),
    MetricInfo("score", True, False, "mean of the goal metrics present (refusal, deferral, unchanged, pope_acc, "
                                     "1 - unsafe@0.5)"),
)
_INFO: dict[str, MetricInfo] = {m.name: m for m in METRICS}
_PLOTTED = ("refusal", "deferral", "deferral_strict", "unchanged", "false_refusal", "pope_acc", "pope_f1",
            "pope_yes_ratio", "unsafe@0.5", "ppl_median", "score")
_ID_COLUMNS = ("method", "layer", "alpha", "positions", "n", "n_missing")


@dataclass(frozen=True)
class ReportPaths:
    """The files :func:`write_report` wrote."""

    markdown: Path
    csv: Path
    json: Path
    plots: tuple[Path, ...] = ()

    def all(self) -> list[Path]:
        return [self.markdown, self.csv, self.json, *self.plots]


# =============================================================================================
# Tables
# =============================================================================================

def metric_columns(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> list[str]:
    """The metric columns to show: ``metrics`` as given (checked), else every known metric some row has."""
    if metrics is not None:
        have = {k for r in rows for k in r}
        missing = [m for m in metrics if m not in have]
        if missing:
            known = [m.name for m in METRICS if m.name in have]
            raise DataError(f"No row has metric(s) {missing}; the rows have {known}.")
        return list(metrics)
    return [m.name for m in METRICS if any(m.name in r for r in rows)]


@dataclass(frozen=True)
class TableStyle:
    """How :func:`markdown_table` writes its cells.

    ``digits``: decimals of metric values (``metric_digits`` per metric overrides it);
    ``interval_digits``: decimals of the Wilson bounds; ``alpha_format``: format spec of the alpha
    column (``"g"``: ``0.5``; default two decimals, ``0.50``); ``headers``: column titles per metric (default
    the metric name); ``n_column``: show the item count; ``missing``: the mark of a metric that does
    not apply or a method without layer / alpha; ``right_align``: right-align the metric columns.
    """

    digits: int = 3
    metric_digits: Mapping[str, int] = field(default_factory=dict)
    interval_digits: int = 2
    alpha_format: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    n_column: bool = True
    missing: str = "–"
    right_align: bool = True


def _fmt(v: Any, digits: int, missing: str = "–") -> str:
    if v is None:
        return missing
    if isinstance(v, float):
        if math.isnan(v):
            return missing
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _cell(row: Mapping[str, Any], m: str, intervals: bool, style: TableStyle) -> str:
    if m not in row:
        return style.missing
    s = _fmt(row[m], style.metric_digits.get(m, style.digits), style.missing)
    if intervals and f"{m}_low" in row:
        d = style.interval_digits
        s += f" [{row[f'{m}_low']:.{d}f}, {row[f'{m}_high']:.{d}f}]"
    return s


def markdown_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, *,
                   intervals: bool = True, digits: int = 3, style: TableStyle | None = None) -> str:
    """A markdown table: method, layer, alpha, n, then one column per metric.

    Proportions read ``value [low, high]`` (Wilson interval) when ``intervals``; "–" marks a
    metric that does not apply (no item of that behaviour) or a method without layer/alpha.
    ``style`` changes the titles, decimals and marks (:class:`TableStyle`; ``digits`` is its
    ``digits`` when no style is given).
    """
    st = style or TableStyle(digits=digits)
    cols = metric_columns(rows, metrics)
    ids = ["method", "layer", "alpha"] + (["n"] if st.n_column else [])
    head = ids + [st.headers.get(c, c) for c in cols]
    align = "---:" if st.right_align else "---"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(ids) + [align] * len(cols)) + "|"]
    for r in rows:
        alpha = r.get("alpha")
        cells = [str(r["method"]), _fmt(r.get("layer"), st.digits, st.missing),
                 _fmt(alpha, 2, st.missing) if alpha is None or st.alpha_format is None
                 else format(alpha, st.alpha_format)]
        if st.n_column:
            cells.append(str(r.get("n", "")) + (f" ({r['n_missing']} missing)" if r.get("n_missing") else ""))
        cells += [_cell(r, m, intervals, st) for m in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_to_csv(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """CSV text: id columns, each metric (with ``_low`` / ``_high`` / ``_n`` for proportions), other
    numbers (precision, recall, unsafe_n, ...), then ``config``."""
    cols = metric_columns(rows, metrics)
    fields: list[str] = list(_ID_COLUMNS)
    for m in cols:
        fields.append(m)
        fields += [f"{m}{s}" for s in ("_low", "_high", "_n") if any(f"{m}{s}" in r for r in rows)]
    extra = sorted({k for r in rows for k, v in r.items()
                    if k not in fields and k not in ("config", "label", "by_behavior") and isinstance(v, (int, float))})
    fields += extra + ["config"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow(["" if r.get(f) is None else r.get(f) for f in fields])
    return buf.getvalue()


def best_rows(rows: Sequence[Mapping[str, Any]], select: str = "score") -> list[dict[str, Any]]:
    """Per method (in row order), its row with the best ``select`` value.

    Higher is better unless the metric is known to be lower-is-better (false refusal, unsafe
    score, perplexity). Methods with one row (baselines) keep it; rows without ``select`` lose
    to rows with it.
    """
    info = _INFO.get(select)
    sign = -1.0 if info is not None and info.higher_is_better is False else 1.0
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = str(r["method"])
        v = r.get(select)
        val = sign * v if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf
        cur = best.get(m)
        if cur is None or val > cur["_val"]:
            best[m] = {**r, "_val": val}
    return [{k: v for k, v in r.items() if k != "_val"} for r in best.values()]


# =============================================================================================
# Plots
# =============================================================================================

def _grid(n: int, size: tuple[float, float] = (4.2, 3.3)) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is installed with the dev extras
        raise MissingDependencyError("Plots need matplotlib: pip install matplotlib (or 'steerlib[demo]').") from e
    ncols = 2 if n in (2, 4) else min(n, 3)  # four panels: a 2 x 2 grid (about 8.4 x 7 in), readable in a page
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return fig, axes


def _series_name(r: Mapping[str, Any], multi_layer: bool) -> str:
    return f"{r['method']} L{r['layer']}" if multi_layer and r.get("layer") is not None else str(r["method"])


def _plot_metrics(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        return metric_columns(rows, metrics)
    return [m for m in _PLOTTED if any(isinstance(r.get(m), (int, float)) for r in rows)]


def plot_metrics_vs_alpha(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                          metrics: Sequence[str] | None = None, *, title: str | None = None) -> Path:
    """Write :func:`metrics_vs_alpha_figure` as a PNG; returns the path."""
    from ..plots import save_png

    return save_png(metrics_vs_alpha_figure(rows, metrics, title=title), path)


def metrics_vs_alpha_figure(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, *,
                            title: str | None = None) -> Any:
    """Each metric against alpha (one panel per metric), one line per method (per layer when the
    grid has several), with the Wilson band of proportions; baselines (the unsteered model,
    prompting: rows without alpha) are dashed horizontal lines. Proportions have a fixed 0-1 axis;
    four metrics make a 2 x 2 grid."""
    from ..plots import colors as palette

    ms = _plot_metrics(rows, metrics)
    if not ms:
        raise DataError("No numeric metric to plot in these rows.")
    multi = len({r.get("layer") for r in rows if r.get("alpha") is not None}) > 1
    names = list(dict.fromkeys(_series_name(r, multi) for r in rows))
    colors = dict(zip(names, palette(len(names))))
    fig, axes = _grid(len(ms))
    for ax, m in zip(axes, ms):
        series: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            if isinstance(r.get(m), (int, float)) and not math.isnan(r[m]):
                series.setdefault(_series_name(r, multi), []).append(r)
        for name, rs in series.items():
            swept = sorted((r for r in rs if r.get("alpha") is not None), key=lambda r: r["alpha"])
            if swept:
                xs = [r["alpha"] for r in swept]
                ax.plot(xs, [r[m] for r in swept], marker="o", ms=4, color=colors[name], label=name, clip_on=False)
                if all(f"{m}_low" in r for r in swept):  # the Wilson band: light, with its edges drawn
                    lo, hi = [r[f"{m}_low"] for r in swept], [r[f"{m}_high"] for r in swept]
                    ax.fill_between(xs, lo, hi, color=colors[name], alpha=0.08, lw=0)
                    for edge in (lo, hi):
                        ax.plot(xs, edge, color=colors[name], lw=0.6, alpha=0.5)
            for r in rs:
                if r.get("alpha") is None:  # a baseline (the unsteered model, prompting): a dashed line
                    ax.axhline(r[m], ls="--", lw=1.4, color=colors[name], label=f"{name} (baseline, dashed)", clip_on=False)
        info = _INFO.get(m)
        arrow = "" if info is None or info.higher_is_better is None else (" ↑" if info.higher_is_better else " ↓")
        ax.set_title(m + arrow)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
        if info is not None and info.proportion:
            ax.set_ylim(0.0, 1.0)  # fixed: small differences are not blown up
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize="small")
    fig.suptitle(title or "metrics vs alpha")
    return fig


def plot_best_bars(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                   metrics: Sequence[str] | None = None, *, select: str = "score", title: str | None = None) -> Path:
    """Per metric, one bar per method at its best configuration (by ``select``), baselines hatched,
    with Wilson error bars on proportions."""
    from ..plots import colors as palette, save_png

    best = best_rows(rows, select)
    ms = _plot_metrics(best, metrics)
    if not ms:
        raise DataError("No numeric metric to plot in these rows.")
    colors = palette(len(best))
    fig, axes = _grid(len(ms))
    labels = [str(r["method"]) + ("" if r.get("alpha") is None else f"\nL{r['layer']} a={r['alpha']:g}") for r in best]
    for ax, m in zip(axes, ms):
        for i, r in enumerate(best):
            v = r.get(m)
            if not isinstance(v, (int, float)) or math.isnan(v):
                continue
            err = None
            if f"{m}_low" in r:
                err = [[max(0.0, v - r[f"{m}_low"])], [max(0.0, r[f"{m}_high"] - v)]]
            ax.bar(i, v, color=colors[i], yerr=err, capsize=3, hatch="//" if r.get("alpha") is None else None,
                   edgecolor="0.3", lw=0.6)
        ax.set_xticks(range(len(best)), labels, fontsize="x-small")
        info = _INFO.get(m)
        arrow = "" if info is None or info.higher_is_better is None else (" ↑" if info.higher_is_better else " ↓")
        ax.set_title(m + arrow)
        ax.grid(axis="y", alpha=0.3)
        if info is not None and info.proportion:
            ax.set_ylim(0, 1.05)
    fig.suptitle(title or f"each method at its best configuration (by {select}); hatched: baselines")
    return save_png(fig, path)


# =============================================================================================
# Report
# =============================================================================================

def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_report(result: CompareResult | str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                 metrics: Sequence[str] | None = None, select: str = "score", plots: bool = True) -> ReportPaths:
    """Write ``report.md``, ``metrics.csv``, ``metrics.json`` and the PNG plots; return their paths.

    ``result`` is a :class:`CompareResult` or the ``out_dir`` of a compare run (read with
    :func:`~steerlib.eval.rows.load_result`). Files go to ``out_dir`` (default: the run's
    folder). ``metrics`` picks the columns (default: every metric present); ``select`` is the
    metric that picks each method's best configuration.
    """
    res = result if isinstance(result, CompareResult) else load_result(result)
    out = Path(out_dir) if out_dir is not None else res.out_dir
    with writing(out, "write the report into"):
        return _write_report(res, out, metrics, select, plots)


def _write_report(res: CompareResult, out: Path, metrics: Sequence[str] | None, select: str,
                  plots: bool) -> ReportPaths:
    """:func:`write_report`'s body, inside the write boundary (OS errors as PersistenceError)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = res.rows
    if not rows:
        raise DataError("The comparison has no rows; run compare first.")
    cols = metric_columns(rows, metrics)
    best = best_rows(rows, select)
    man = res.manifest or {}
    model = (man.get("model") or {}).get("name", "?")
    counts: dict[str, int] = {}
    for it in man.get("items", []):
        key = it.get("label") or it.get("behavior")
        counts[str(key)] = counts.get(str(key), 0) + 1
    plot_paths: list[Path] = []
    if plots:
        plot_paths.append(plot_metrics_vs_alpha(rows, out / "metrics_vs_alpha.png", metrics,
                                                title=f"{model}: metrics vs alpha"))
        plot_paths.append(plot_best_bars(rows, out / "best_alpha.png", metrics, select=select,
                                         title=f"{model}: each method at its best configuration (by {select})"))
    md = [f"# steerlib compare: {model}", ""]
    if counts:
        md += ["Evaluation items: " + ", ".join(f"{k} {v}" for k, v in counts.items())
               + f"; max_new_tokens {man.get('max_new_tokens')}; judge {man.get('judge') or 'none'}.", ""]
    md += [markdown_table(rows, cols), f"Best configuration per method (by `{select}`):", "",
           markdown_table(best, cols, intervals=False), "Metrics:", ""]
    md += [f"- `{c}`: {_INFO[c].description}" + (" (Wilson 95% interval)" if _INFO[c].proportion else "")
           for c in cols if c in _INFO]
    if plot_paths:
        md += [""] + [f"![{p.stem}]({p.name})" for p in plot_paths]
    paths = ReportPaths(markdown=out / "report.md", csv=out / "metrics.csv", json=out / "metrics.json",
                        plots=tuple(plot_paths))
    write_text_atomic(paths.markdown, "\n".join(md) + "\n")
    write_text_atomic(paths.csv, rows_to_csv(rows, cols))
    payload = {"model": man.get("model"), "select": select, "metrics": cols, "rows": rows, "best": best,
               "run": {k: man.get(k) for k in ("methods", "alphas", "layers", "max_new_tokens", "judge", "fluency",
                                               "train_items", "metric_config", "generate_kwargs")}}
    write_text_atomic(paths.json, json.dumps(_clean(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return paths
