"""Review: check predictions one image at a time; every label goes to an append-only journal.

Keys: 1-9 label with the numbered class, s skips, b goes back (Streamlit's button shortcuts).
The results file, queue and reviewer live in the URL, so a reload comes back to the same place.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

import ui
from wildid import registry, review
from wildid.errors import WildidError
from wildid.imaging import load_image

QUEUE_HELP = {
    review.QUEUE_BELOW_THRESHOLD: "images the model was unsure about, least confident first",
    review.QUEUE_PER_CLASS: "everything predicted as one class, least confident first",
    review.QUEUE_RANDOM: "a seeded random sample: an unbiased accuracy estimate",
    review.QUEUE_PER_BIN: "N images from each confidence bin: accuracy per bin (calibration)",
}


# Results tables can have 100k rows: one shared, read-only copy per file version, and queues
# and metrics cached per (file version, queue / journal version), so a label redraws fast.
@st.cache_resource(max_entries=4, show_spinner="Reading results…")
def load_results(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return review.read_results(path)


@st.cache_data(max_entries=32, show_spinner=False)
def queue_rows(path: str, mtime_ns: int, size: int, spec_fields: tuple) -> list:
    return list(review.build_queue(load_results(path, mtime_ns, size), review.QueueSpec(*spec_fields)).index)


@st.cache_data(max_entries=8, show_spinner=False)
def live_metrics(path: str, mtime_ns: int, size: int, journal_version: tuple) -> review.ReviewMetrics:
    return review.review_metrics(load_results(path, mtime_ns, size), review.replay_journal(path))


@st.cache_data(max_entries=8, show_spinner=False)
def class_buttons(path: str, mtime_ns: int, size: int, card_classes: tuple) -> list[str]:
    return review.class_options(load_results(path, mtime_ns, size), card_classes or None)


def file_version(path: Path) -> tuple:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def card_for(results: pd.DataFrame):
    names = [m for m in results["model"].unique() if m]
    if not names:
        return None
    try:
        return registry.find_card(names[0])
    except WildidError:
        return None


def param(name: str, default: str = "") -> str:
    return st.query_params.get(name, default)


def next_unreviewed(paths: list[str], done: set[str], start: int) -> int:
    for index in range(max(start, 0), len(paths)):
        if paths[index] not in done:
            return index
    return len(paths)


# --- callbacks: run before the next script run, so the new image is drawn at once -------------
# Two Streamlit facts shape these.  A key pressed while the page is redrawing also "clicks" the
# previous image's button, still on screen: each callback carries the position it was drawn for
# and does nothing once the reviewer has moved on.  And any st.session_state access inside a
# callback may abort it (a newer click is waiting), so all state is read first and the position
# is committed before the journal write: an abort leaves either nothing done or both done.
def on_label(results_path: str, paths: tuple[str, ...], pos: int, label: str, predicted: str, confidence: float) -> None:
    if st.session_state.get("rv_pos") != pos:
        return
    reviewer = st.session_state.get("rv_reviewer", "")
    done = set(review.replay_journal(results_path).labels) | {paths[pos]}
    st.session_state["rv_pos"] = next_unreviewed(list(paths), done, pos + 1)
    try:
        review.append_label(results_path, paths[pos], label, reviewer, predicted, confidence)
    except WildidError as exc:
        st.session_state["rv_pos"] = pos
        st.session_state["rv_message"] = ("error", str(exc))
        return
    st.session_state["rv_message"] = ("success", f"Saved {label} for image {pos + 1}.")


def on_other(results_path: str, paths: tuple[str, ...], pos: int, predicted: str, confidence: float) -> None:
    label = st.session_state.get("rv_other", "").strip()
    if label:
        on_label(results_path, paths, pos, label, predicted, confidence)
    else:
        st.session_state["rv_message"] = ("error", "Type a label first.")


def on_move(pos: int, step: int, total: int) -> None:
    if st.session_state.get("rv_pos") == pos:
        st.session_state["rv_pos"] = min(max(pos + step, 0), total)


# --- results file -----------------------------------------------------------------------------
st.title("Review predictions")
root = review.allowed_root()
source = st.radio("Results file", ["Path", "Upload"], horizontal=True, key="rv_source", label_visibility="collapsed")
if source == "Path":
    path_text = st.text_input(
        "Results CSV", value=param("results"), key="rv_results_path",
        placeholder=str(root / "run" / "results.csv"), help=f"a results file written by Batch, under {root}",
    ).strip()
else:
    upload = st.file_uploader("Results CSV", type=["csv"], key="rv_upload")
    path_text = str(review.store_upload(upload.name, upload.getvalue(), root)) if upload is not None else ""
if not path_text:
    st.info("Pick a results file from Batch (a CSV) to review its predictions.")
    st.stop()
try:
    results_path = review.check_allowed(path_text, root)
    if not results_path.is_file():
        raise WildidError(f"results file not found: {results_path}")
    results_key = (str(results_path), *file_version(results_path))
    results = load_results(*results_key)
except WildidError as exc:
    st.error(str(exc))
    st.stop()
st.query_params["results"] = str(results_path)

card = card_for(results)
classes = class_buttons(*results_key, tuple(card.classes) if card else ())
replay = review.replay_journal(results_path)
labels = replay.labels

# --- queue ------------------------------------------------------------------------------------
who, which, how = st.columns([2, 2, 3])
reviewer = who.text_input("Reviewer", value=param("reviewer"), key="rv_reviewer", placeholder="your name")
queue_index = review.QUEUES.index(param("queue")) if param("queue") in review.QUEUES else 0
kind = which.selectbox("Queue", review.QUEUES, index=queue_index, key="rv_queue", help="\n\n".join(f"**{k}**: {v}" for k, v in QUEUE_HELP.items()))
spec = review.QueueSpec(kind)
with how:
    if kind == review.QUEUE_BELOW_THRESHOLD:
        default = float(param("threshold") or (card.threshold if card else 0.5))
        use_status = st.checkbox("Flagged by batch (status review)", value=not param("threshold"), key="rv_use_status")
        if not use_status:
            threshold = st.slider("Confidence below", 0.0, 1.0, default, 0.05, key="rv_threshold")
            spec = review.QueueSpec(kind, threshold=threshold)
            st.query_params["threshold"] = str(threshold)
        else:
            st.query_params.pop("threshold", None)
    elif kind == review.QUEUE_PER_CLASS:
        predicted = sorted(set(results.loc[results["label"] != "", "label"])) or classes
        wanted = param("class")
        label = st.selectbox("Predicted class", predicted, index=predicted.index(wanted) if wanted in predicted else 0, key="rv_class")
        spec = review.QueueSpec(kind, label=label)
        st.query_params["class"] = label
    elif kind == review.QUEUE_RANDOM:
        a, b = st.columns(2)
        n = a.number_input("Images", 1, 100_000, int(param("n") or 50), key="rv_n")
        seed = b.number_input("Seed", 0, 1_000_000, int(param("seed") or 0), key="rv_seed")
        spec = review.QueueSpec(kind, n=int(n), seed=int(seed))
        st.query_params.update(n=str(n), seed=str(seed))
    else:
        a, b = st.columns(2)
        per_bin = a.number_input("Images per bin", 1, 10_000, int(param("per_bin") or 10), key="rv_per_bin")
        seed = b.number_input("Seed", 0, 1_000_000, int(param("seed") or 0), key="rv_seed")
        spec = review.QueueSpec(kind, per_bin=int(per_bin), seed=int(seed))
        st.query_params.update(per_bin=str(per_bin), seed=str(seed))
st.query_params["queue"] = kind
if reviewer.strip():
    st.query_params["reviewer"] = reviewer.strip()

try:
    queue = results.loc[queue_rows(*results_key, dataclasses.astuple(spec))]
except WildidError as exc:
    st.error(str(exc))
    st.stop()
paths = tuple(queue["path"])
queue_key = (str(results_path), spec.describe())
if st.session_state.get("rv_queue_key") != queue_key or "rv_pos" not in st.session_state:
    st.session_state["rv_queue_key"] = queue_key
    st.session_state["rv_pos"] = next_unreviewed(list(paths), set(labels), 0)
pos = st.session_state["rv_pos"] = min(st.session_state["rv_pos"], len(paths))

done, total = review.progress(queue, replay)
st.progress(done / total if total else 1.0, text=f"{done} of {total} reviewed in this queue · {len(labels)} in the journal")
# Every run draws the same elements in the same places: a key pressed during a redraw then meets
# only the new buttons, not leftovers from the previous image shifted further down.
note = st.empty()
message = st.session_state.pop("rv_message", None)
if message:
    (note.caption if message[0] == "success" else note.error)(message[1])

# --- the current image ------------------------------------------------------------------------
if not total:
    st.info("This queue is empty: pick another queue or change its settings.")
elif pos >= total:
    st.success(f"Queue finished: {done} of {total} reviewed. Press b to go back, or pick another queue.")
    st.button("Back", key=f"rv_back_{pos}", shortcut="b", on_click=on_move, args=(pos, -1, total))
else:
    row = queue.iloc[pos]
    path = row["path"]
    predicted_label, confidence = row["label"], float(row["confidence"])
    picture, panel = st.columns([3, 2], gap="large")
    with panel:
        # The buttons go out before the picture and the table, so by the time the new image
        # shows, its keys are live.
        st.subheader(f"Image {pos + 1} of {total}")
        about = st.container()
        for index, label in enumerate(classes):
            st.button(
                label, key=f"rv_c{index}_{pos}", width="stretch",
                shortcut=str(index + 1) if index < 9 else None,
                type="primary" if label == predicted_label else "secondary",
                on_click=on_label, args=(str(results_path), paths, pos, label, predicted_label, confidence),
            )
        skip, back = st.columns(2)
        skip.button("Skip", key=f"rv_skip_{pos}", shortcut="s", width="stretch", on_click=on_move, args=(pos, 1, total))
        back.button("Back", key=f"rv_back_{pos}", shortcut="b", width="stretch", on_click=on_move, args=(pos, -1, total), disabled=pos == 0)
    with picture:
        image_path = review.resolve_image_path(path, row["relpath"] or None, results_path.parent)
        try:
            review.check_allowed(image_path, root)
            st.image(load_image(image_path, draft_size=1600), width="stretch", caption=row["relpath"] or path)
        except WildidError as exc:
            st.error(str(exc))
    with about:
        if path in labels:
            entry = replay.latest.set_index("path").loc[path]
            st.success(f"Reviewed as **{entry['true_label']}** by {entry['reviewer']} ({entry['reviewed_at']})")
        else:
            st.caption("Not reviewed yet: press a number key or click the class.")
        top = review.parse_top_k(row["top_k"])[:3] or [(predicted_label, confidence)]
        st.dataframe(
            pd.DataFrame(top, columns=["model's top 3", "probability"]), hide_index=True, width="stretch",
            column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.2f")},
        )
        details = [f"status {row['status']}"] + [f"{k} {row[k]}" for k in ("datetime", "camera", "sequence_id") if row[k]]
        st.caption(" · ".join(details))
    with panel:
        with st.form("rv_other_form", clear_on_submit=True, border=False):
            st.text_input("Other label", key="rv_other", placeholder="e.g. empty, raccoon")
            st.form_submit_button(
                "Save other label", on_click=on_other, args=(str(results_path), paths, pos, predicted_label, confidence),
            )
        if not reviewer.strip():
            st.caption("Type your name above: labels are recorded as 'anonymous' until you do.")

# --- live metrics -----------------------------------------------------------------------------
st.divider()
st.subheader("Live metrics")
metrics = live_metrics(*results_key, file_version(review.journal_path(results_path)))
cols = st.columns(4)
cols[0].metric("Reviewed", metrics.n_reviewed)
cols[1].metric("Accuracy", "–" if metrics.accuracy is None else f"{metrics.accuracy:.1%}", help="model label == reviewed label")
cols[2].metric("Estimated overall", "–" if metrics.estimated_accuracy is None else f"{metrics.estimated_accuracy:.1%}",
               help="accuracy per confidence bin weighted by how many results fall in the bin")
cols[3].metric("Accepted labels", "–" if metrics.accepted_accuracy is None else f"{metrics.accepted_accuracy:.1%}",
               help="accuracy among reviewed images that batch accepted automatically")
if metrics.n_reviewed:
    chart, table = st.columns([3, 2])
    per_bin = metrics.per_bin[metrics.per_bin["n"] > 0]
    figure = px.bar(per_bin, x="bin", y="accuracy", text="n", range_y=[0, 1],
                    labels={"bin": "model confidence", "accuracy": "accuracy (reviewed)"}, height=300)
    figure.update_traces(texttemplate="n=%{text}", textposition="outside")
    chart.plotly_chart(figure, width="stretch")
    table.dataframe(metrics.per_bin, hide_index=True, width="stretch",
                    column_config={"share": st.column_config.NumberColumn("share of results", format="%.2f"),
                                   "accuracy": st.column_config.NumberColumn(format="%.2f")})
    with st.expander("Recently reviewed and corrections", expanded=True):
        recent = replay.entries.iloc[::-1].head(10)
        st.dataframe(recent[["path", "true_label", "predicted_label", "reviewer", "reviewed_at"]], hide_index=True, width="stretch")
        if len(metrics.corrections):
            st.dataframe(metrics.corrections.rename(columns={"predicted_label": "model said", "true_label": "reviewer said"}),
                         hide_index=True)
if replay.torn_tail or replay.skipped_lines:
    st.caption(f"{replay.skipped_lines} incomplete journal line(s) skipped (an interrupted write).")

# --- final data set and training export -------------------------------------------------------
st.divider()
st.subheader("Final data set")
st.caption(f"Journal: {review.journal_path(results_path)} (the results file is never changed)")
merge_col, export_col = st.columns(2)
with merge_col:
    st.write("Accepted automatic labels plus reviewed manual labels, with a `label_source` column.")
    if st.button("Merge", key="rv_merge"):
        try:
            out, final = review.write_final(results_path)
            st.session_state["rv_final"] = (str(out), final.to_csv(index=False).encode(), final["label_source"].value_counts().to_dict())
        except (WildidError, OSError) as exc:
            st.error(str(exc))
    if "rv_final" in st.session_state and st.session_state["rv_final"][0].startswith(str(results_path.with_suffix(""))):
        out, data, counts = st.session_state["rv_final"]
        st.success(f"Wrote {out}: {counts.get('manual', 0)} manual, {counts.get('auto', 0)} auto labels")
        st.download_button("Download final CSV", data, file_name=Path(out).name, mime="text/csv", key="rv_final_download")
with export_col:
    st.write("Reviewed images as a training set for `wildid train` (copies; originals untouched).")
    out_dir = st.text_input("Export to", value=str(results_path.parent / f"{results_path.stem}-training"), key="rv_export_dir")
    layout = st.radio("Layout", ["imagefolder", "csv"], horizontal=True, key="rv_layout",
                      format_func={"imagefolder": "folders per class (copies)", "csv": "CSV path,label"}.get)
    include_auto = st.checkbox("Also accepted automatic labels", key="rv_include_auto")
    if st.button("Export", key="rv_export"):
        try:
            target = review.check_allowed(out_dir, root)
            if layout == "csv" and target.suffix.lower() != ".csv":
                target = target / "labels.csv"
            summary = review.export_training_set(results_path, target, layout=layout, include_auto=include_auto)
            st.session_state["rv_export_summary"] = summary
        except (WildidError, OSError) as exc:
            st.error(str(exc))
    summary = st.session_state.get("rv_export_summary")
    if summary is not None:
        classes_text = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_class.items()))
        st.success(f"Exported {summary.n_images} images to {summary.out} ({classes_text})")
        if summary.missing:
            st.warning(f"{len(summary.missing)} image file(s) not found, left out")
        st.download_button("Download labels.csv", summary.labels_csv.read_bytes(), file_name="labels.csv", mime="text/csv",
                           key="rv_export_download")
        st.code(f"wildid train '{summary.labels_csv}' --groups group --out models/my-model", language="bash")
st.write("Results and reviewed labels (human classifications) as a Camtrap DP 1.0 package.")
ui.camtrap_export(results_path, "review")
