"""Evaluation figures (plotly) and the self-contained HTML report, for the dashboard page and ``--html``.

Split from :mod:`wildid.evaluate` (which builds the reports these draw); names are re-exported
there, so ``wildid.evaluate.confusion_figure`` keeps working.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HOVER_FILES = 5


def cell_paths(report: Mapping[str, Any], true_label: str, predicted_label: str) -> list[str]:
    """The files of one confusion-matrix cell (true label, predicted label)."""
    return list(report["cells"].get(f"{true_label}\t{predicted_label}", []))


# --- figures (plotly) ----------------------------------------------------------------------------
def _hover_files(paths: list[str]) -> str:
    names = [html.escape(Path(p).name) for p in paths[:HOVER_FILES]]
    more = f"<br>… and {len(paths) - HOVER_FILES} more" if len(paths) > HOVER_FILES else ""
    return "<br>".join(names) + more if names else "(none)"


def confusion_figure(report: Mapping[str, Any], normalized: bool = False, clickable: bool = False):
    """Heatmap of the confusion matrix; hover shows the count, row share and the first file names.

    ``clickable`` overlays a near-invisible marker on every cell: plotly heatmaps emit no
    selection events, markers do, so the dashboard learns which cell was clicked.
    """
    import plotly.graph_objects as go

    labels = report["labels"]
    counts = np.asarray(report["confusion"]["counts"])
    share = np.asarray(report["confusion"]["normalized"])
    z = share if normalized else counts
    text = [[f"{share[i, j]:.0%}" if normalized else str(counts[i, j]) for j in range(len(labels))] for i in range(len(labels))]
    files = [[_hover_files(cell_paths(report, t, p)) for p in labels] for t in labels]
    custom = np.dstack([counts, share, np.asarray(files, dtype=object)]) if labels else None
    fig = go.Figure(
        go.Heatmap(
            z=z, x=labels, y=labels, text=text, texttemplate="%{text}", colorscale="Blues",
            zmin=0, zmax=1 if normalized else None, customdata=custom,
            hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{customdata[0]} (%{customdata[1]:.0%} of row)"
                          "<br>%{customdata[2]}<extra></extra>",
            colorbar={"title": "share of row" if normalized else "images"},
        )
    )
    if clickable and labels:
        xs, ys, data = [], [], []
        for i, t in enumerate(labels):
            for j, p in enumerate(labels):
                xs.append(p)
                ys.append(t)
                data.append([int(counts[i, j]), float(share[i, j]), files[i][j]])
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", customdata=data, showlegend=False, name="cells",
            marker={"symbol": "square", "size": 40, "opacity": 0, "color": "rgba(0,0,0,0)"},
            selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}},
            hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{customdata[0]} (%{customdata[1]:.0%} of row)"
                          "<br>%{customdata[2]}<extra></extra>",
        ))
        fig.data[0].hoverinfo = "skip"
        fig.data[0].hovertemplate = None
    fig.update_layout(
        title=f"Confusion matrix: {report['name']}" + (" (row-normalised)" if normalized else " (counts)"),
        xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
        height=max(360, 60 + 42 * len(labels)), margin={"t": 60, "l": 10, "r": 10, "b": 10},
    )
    return fig


def bins_figure(report: Mapping[str, Any]):
    import plotly.graph_objects as go

    bins = report["confidence_bins"]
    fig = go.Figure(
        go.Bar(
            x=[b["bin"] for b in bins], y=[b["accuracy"] for b in bins],
            text=[f"n={b['count']}" for b in bins], textposition="outside",
            hovertemplate="confidence %{x}<br>accuracy %{y:.1%}<br>%{text}<extra></extra>",
            marker_color="#3b7d4f",
        )
    )
    fig.update_layout(title="Accuracy per confidence bin", xaxis_title="confidence", yaxis_title="accuracy",
                      yaxis_range=[0, 1.12], yaxis_tickformat=".0%", height=360, margin={"t": 60, "b": 10})
    return fig


def coverage_figure(report: Mapping[str, Any], threshold: float | None = None):
    import plotly.graph_objects as go

    curve = report["coverage"]
    t = [row["threshold"] for row in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=[row["coverage"] for row in curve], name="coverage (share accepted)", mode="lines"))
    fig.add_trace(go.Scatter(x=t, y=[row["accuracy"] for row in curve], name="accuracy of accepted", mode="lines"))
    threshold = report["threshold"]["threshold"] if threshold is None else threshold
    fig.add_vline(x=threshold, line_dash="dash", line_color="grey", annotation_text=f"T={threshold:.2f}")
    fig.update_layout(title="Accept everything above T", xaxis_title="threshold T", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.05], height=360, margin={"t": 60, "b": 10}, legend={"orientation": "h", "y": -0.2})
    return fig


def reliability_figure(report: Mapping[str, Any]):
    import plotly.graph_objects as go

    cal = report["calibration"]
    bins = [b for b in cal["bins"] if b["count"]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dot", "color": "grey"}))
    fig.add_trace(go.Bar(x=[(b["lower"] + b["upper"]) / 2 for b in bins], y=[b["accuracy"] for b in bins], width=0.09,
                         name="accuracy", customdata=[[b["count"], b["mean_confidence"]] for b in bins],
                         hovertemplate="bin %{x:.2f}<br>accuracy %{y:.1%}<br>mean confidence %{customdata[1]:.1%}"
                                       "<br>n=%{customdata[0]}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[b["mean_confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="markers",
                             name="(mean confidence, accuracy)"))
    ece = cal["ece"]
    fig.update_layout(title=f"Reliability diagram (ECE {ece:.3f})" if ece is not None and not math.isnan(ece) else "Reliability diagram",
                      xaxis_title="confidence", yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1.05],
                      height=360, margin={"t": 60, "b": 10}, legend={"orientation": "h", "y": -0.2})
    return fig


def compare_figure(bundle: Mapping[str, Any]):
    import plotly.graph_objects as go

    rows = bundle["compare"]
    fig = go.Figure()
    for key, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"),
                       ("coverage", "coverage at T")):
        fig.add_trace(go.Bar(x=[r["name"] for r in rows], y=[r[key] for r in rows], name=title,
                             text=[f"{r[key]:.1%}" if r[key] is not None else "" for r in rows], textposition="outside"))
    fig.update_layout(barmode="group", title="Models side by side", yaxis_tickformat=".0%", yaxis_range=[0, 1.15],
                      height=380, margin={"t": 60, "b": 10})
    return fig


def per_class_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Raw per-class metrics with the corrected recall / F1 beside them when available."""
    corrected = {row["label"]: row for row in (report.get("corrected") or {}).get("per_class", [])}
    rows = []
    for row in report["per_class"]:
        out = dict(row)
        if row["label"] in corrected:
            out["corrected_precision"] = corrected[row["label"]]["precision"]
            out["corrected_recall"] = corrected[row["label"]]["recall"]
            out["corrected_f1"] = corrected[row["label"]]["f1"]
        rows.append(out)
    return rows


def empty_roc_figure(report: Mapping[str, Any], threshold: float | None = None):
    """The empty score as a filter: share of empty frames hidden against share of animal frames
    hidden, one point per threshold (hover: the threshold); the chosen threshold is marked.

    Points carry their threshold in ``customdata``, so a click on the curve picks it."""
    import plotly.graph_objects as go

    empty = report.get("empty") or {}
    roc = empty.get("roc")
    fig = go.Figure()
    if not roc:
        fig.update_layout(title="Empty score: needs labelled empty and animal frames")
        return fig
    thresholds = [1.0 if t is None else min(float(t), 1.0) for t in roc["thresholds"]]
    fig.add_scatter(
        x=roc["hidden_animals"], y=roc["hidden_empty"], mode="lines+markers", name="thresholds",
        customdata=thresholds, marker={"size": 7},
        hovertemplate="empty_score ≥ %{customdata:.3f}<br>animal frames hidden %{x:.1%}<br>"
                      "empty frames hidden %{y:.1%}<extra></extra>",
    )
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, name="chance",
                    hoverinfo="skip")
    point = empty.get("summary") if threshold is None else None
    if threshold is not None:
        point = {"threshold": threshold, **_rates_at(report, threshold)}
    if point and point.get("animals") and point.get("empties"):
        fig.add_scatter(
            x=[point["animals_hidden"] / point["animals"]], y=[point["empties_hidden"] / point["empties"]],
            mode="markers", name=f"chosen: {point['threshold']:.2f}", hoverinfo="skip",
            marker={"size": 16, "symbol": "x", "color": "#d62728"},
        )
    fig.update_layout(
        title=f"Empty score against the labels (AUC {roc['auc']:.3f}; {roc['n_empty']} empty, {roc['n_animal']} animal frames)",
        xaxis={"title": "animal frames hidden (false positives)", "range": [-0.02, 1.02], "tickformat": ".0%"},
        yaxis={"title": "empty frames hidden (true positives)", "range": [-0.02, 1.02], "tickformat": ".0%"},
        height=420, margin={"t": 60, "b": 50}, clickmode="event+select",
    )
    return fig


def _rates_at(report: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    from wildid.metrics import empty_threshold_summary

    items = [i for i in report["items"] if "empty_score" in i]
    return empty_threshold_summary([i["true_is_empty"] for i in items], [i["empty_score"] for i in items], threshold)


# --- HTML ------------------------------------------------------------------------------------------
def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3f}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(bundle: Mapping[str, Any]) -> str:
    """A self-contained page: plotly.js is inlined once, so it opens offline."""
    import plotly.io as pio

    figures_done = 0

    def fig_html(fig) -> str:
        nonlocal figures_done
        figures_done += 1
        return pio.to_html(fig, full_html=False, include_plotlyjs=figures_done == 1, config={"displaylogo": False})

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wildid evaluation report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eef}"
        ".grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}</style></head><body>",
        "<h1>wildid evaluation report</h1>",
        f"<p>Data: {html.escape(str(bundle.get('data', '')))}<br>Created: {html.escape(str(bundle.get('created', '')))}</p>",
    ]
    if len(bundle["models"]) > 1:
        parts += ["<h2>Models side by side</h2>", fig_html(compare_figure(bundle)), _table(bundle["compare"])]
    for report in bundle["models"]:
        s, t = report["summary"], report["threshold"]
        parts += [
            f"<h2>{html.escape(report['name'])}</h2>",
            f"<p>{html.escape(report.get('source', ''))}</p>",
            _table([{"images": s["n"], "accuracy": s["accuracy"], "macro-F1": s["macro_f1"],
                     "balanced accuracy": s["balanced_accuracy"], "ECE": report["calibration"]["ece"],
                     "unreadable": s.get("errors", 0)}]),
            f"<p><b>{html.escape(t['text'])}</b></p>",
        ]
        if report.get("ranks"):
            from wildid.metrics import rank_text

            parts += [f"<p>{html.escape(rank_text(report['ranks']).capitalize())}.</p>",
                      _table(report["ranks"]["per_rank"])]
        parts += [f"<p><i>{html.escape(note)}</i></p>" for note in report.get("notes", [])]
        parts += ["<div class='grid'>", fig_html(confusion_figure(report)), fig_html(confusion_figure(report, normalized=True)), "</div>"]
        parts += ["<h3>Per class</h3>", _table(per_class_rows(report))]
        corrected = report.get("corrected")
        if corrected:
            cs = corrected["summary"]
            parts += [
                "<h3>Class-proportion corrected</h3>",
                f"<p>Labelled sample of {corrected['sample_size']} reweighted to the predicted-class proportions of "
                f"{corrected['population_size']} images.</p>",
                _table([{"": "raw", "accuracy": s["accuracy"], "macro-F1": s["macro_f1"], "balanced accuracy": s["balanced_accuracy"]},
                        {"": "corrected", "accuracy": cs["accuracy"], "macro-F1": cs["macro_f1"], "balanced accuracy": cs["balanced_accuracy"]}]),
            ]
        parts += ["<div class='grid'>", fig_html(bins_figure(report)), fig_html(coverage_figure(report)), "</div>",
                  fig_html(reliability_figure(report)), "<h3>Confidence bins</h3>", _table(report["confidence_bins"])]
        if report.get("errors"):
            parts += ["<h3>Files that could not be classified</h3>", _table(report["errors"])]
    parts.append("</body></html>")
    return "\n".join(parts)


def save_html(bundle: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(bundle), encoding="utf-8")
    return path
