"""Review: blanks first, in pages of thumbnails; then the rest one at a time with the project's labels.

Keys: on a likely-empty page, Enter confirms the page (ticked frames hold an animal and go to
labelling); on one image, 1-9 label with the numbered label, s skips, b goes back, and the
type-ahead box holds every other label.  Every label goes to an append-only journal.
The results file, queue and reviewer live in the URL, so a reload comes back to the same place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections import Counter
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

import ui
from wildid import guard, labelset, project, registry, review
from wildid.errors import WildidError
from wildid.imaging import load_image

EMPTY_PAGE = 24  # thumbnails per likely-empty page: four rows of six, one screen
GRID_COLUMNS = 6
QUEUE_HELP = {
    review.QUEUE_LIKELY_EMPTY: "frames that look like their camera's empty background, most certainly empty first, "
                               "in pages of thumbnails: Enter confirms a page",
    review.QUEUE_TO_LABEL: "everything else that needs a label, in file order (bursts stay together)",
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
def queue_rows(path: str, mtime_ns: int, size: int, spec_fields: tuple, not_empty: frozenset) -> list:
    return list(review.build_queue(load_results(path, mtime_ns, size), review.QueueSpec(*spec_fields), not_empty).index)


@st.cache_data(max_entries=8, show_spinner=False)
def live_metrics(path: str, mtime_ns: int, size: int, journal_version: tuple) -> review.ReviewMetrics:
    return review.review_metrics(load_results(path, mtime_ns, size), review.replay_journal(path))


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, version: tuple) -> bytes:
    img = load_image(path, draft_size=480)
    img.thumbnail((320, 240))
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


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
    # Behind the access gate the reviewer is who signed in, whatever the field or URL says.
    reviewer = st.session_state.get(ui.USER_KEY) or st.session_state.get("rv_reviewer", "")
    done = set(review.replay_journal(results_path).labels) | {paths[pos]}
    st.session_state["rv_pos"] = next_unreviewed(list(paths), done, pos + 1)
    try:
        review.append_label(results_path, paths[pos], label, reviewer, predicted, confidence)
    except WildidError as exc:
        st.session_state["rv_pos"] = pos
        st.session_state["rv_message"] = ("error", ui.md(exc))
        return
    st.session_state["rv_message"] = ("success", f"Saved {ui.md(label)} for image {pos + 1}.")


def on_search(results_path: str, paths: tuple[str, ...], pos: int, predicted: str, confidence: float,
              labels: tuple[str, ...]) -> None:
    """A label picked (or typed anew) in the type-ahead box: saved, and added to the project's set."""
    label = (st.session_state.get(f"rv_search_{pos}") or "").strip()
    if not label:
        return
    if label not in labels:
        try:
            labelset.write(results_path, [*labels, label])
        except WildidError as exc:
            st.session_state["rv_message"] = ("error", str(exc))
            return
    on_label(results_path, paths, pos, label, predicted, confidence)


def on_move(pos: int, step: int, total: int) -> None:
    if st.session_state.get("rv_pos") == pos:
        st.session_state["rv_pos"] = min(max(pos + step, 0), total)


def on_confirm_page(results_path: str, page: tuple[tuple[str, str, float], ...], token: str) -> None:
    """Every frame of the page is 'empty' except the ticked ones, which go to the labelling queue."""
    if st.session_state.get("rv_empty_page") != token:
        return  # a second Enter for a page already confirmed
    flags = [bool(st.session_state.get(f"rv_flag_{token}_{k}")) for k in range(len(page))]
    reviewer = st.session_state.get("rv_reviewer", "")
    st.session_state["rv_empty_page"] = None
    try:
        project.add_not_empty(results_path, [path for (path, _, _), flagged in zip(page, flags) if flagged])
        review.append_labels(results_path, [(path, labelset.EMPTY, predicted, confidence)
                                            for (path, predicted, confidence), flagged in zip(page, flags) if not flagged],
                             reviewer)
    except WildidError as exc:
        st.session_state["rv_empty_page"] = token
        st.session_state["rv_message"] = ("error", str(exc))
        return
    n_flagged = sum(flags)
    st.session_state["rv_message"] = ("success", f"Confirmed {len(page) - n_flagged} empty frames"
                                      + (f"; {n_flagged} with an animal go to labelling." if n_flagged else "."))


def train_handoff(results_path: Path, proj) -> dict:
    """What the Train page needs: the reviewed set (a CSV in the project) and a free model name."""
    summary = project.export_reviewed_set(results_path)
    taken = {card.name for card in ui.available_cards()} | {run.name for run in ui.training_runs().all()}
    base = proj.folder.name if proj else results_path.stem
    return {"data": str(summary.labels_csv), "groups": "group", "name": project.propose_model_name(base, taken),
            "folder": str(proj.folder) if proj else "", "counts": summary.per_class}


def on_label_the_rest() -> None:
    st.session_state["rv_queue"] = review.QUEUE_TO_LABEL  # a callback may set a widget's value


# --- results file -----------------------------------------------------------------------------
st.title("Review predictions")
root = guard.allowed_root()
space = ui.session_space()
handed = st.session_state.pop("rv_handoff", None)  # from Batch's "Review these results"
if handed:
    st.session_state["rv_results_path"] = handed
    st.session_state["rv_source"] = "Path"
source = st.radio("Results file", ["Path", "Upload"], horizontal=True, key="rv_source", label_visibility="collapsed")
uploaded = None
if source == "Path":
    st.session_state.setdefault("rv_results_path", param("results"))
    path_text = st.text_input(
        "Results CSV", key="rv_results_path",
        placeholder=str(root / "run" / "results.csv"), help=ui.md(f"a results file written by Batch, under {root}"),
    ).strip()
else:
    upload = st.file_uploader("Results CSV", type=["csv"], key="rv_upload")
    path_text = ""
    if upload is not None:
        try:
            space.reserve(upload.size)
            # The session's own folder: no other session can open this file or write its journal.
            uploaded = review.store_upload(upload.name, upload.getvalue(), space.sub("review"))
        except WildidError as exc:
            ui.show_error(exc)
            st.stop()
        path_text = str(uploaded)
if not path_text:
    st.info("Pick a results file from Batch (a CSV) to review its predictions.")
    st.stop()
try:
    results_path = uploaded if uploaded is not None else guard.check_path(path_text, root, kind="file", what="results CSV")
    results_key = (str(results_path), *file_version(results_path))
    results = load_results(*results_key)
except WildidError as exc:
    ui.show_error(exc)
    st.stop()
if uploaded is None:
    st.query_params["results"] = str(results_path)
else:
    st.query_params.pop("results", None)
    st.caption("This upload and its labels live only as long as this browser session: download the journal "
               "or the final CSV below before you leave, or keep results in the data folder and open them by path.")

proj = project.of_results(results_path)
if proj is not None:
    st.caption(ui.md(f"Project of {proj.folder} · {proj.path}"))
card = card_for(results)
replay = review.replay_journal(results_path)
labels = replay.labels

# --- the project's labels ---------------------------------------------------------------------
declared = labelset.read(results_path)
used = list(dict.fromkeys(replay.entries["true_label"])) if len(replay.entries) else []
project_labels = declared or labelset.suggest(card.classes if card else (), used)
# Open while the project has no labels of its own yet (a model with few classes suggests its classes).
with st.expander(f"Labels of this project ({len(project_labels)})", expanded=not declared and len(project_labels) < 3):
    if not declared:
        st.info("Type this project's labels once, e.g. vole, stoat, empty: keys 1-9 go to the most used ones and "
                "the search box below each image finds the rest (and any class of the model).")
    st.text(", ".join(project_labels))  # labels are untrusted text
    text = st.text_area("Labels (comma-separated or one per line)", value="\n".join(project_labels), key="rv_labels_text",
                        height=100)
    from_data = st.text_input("…or read them from a labelled CSV (path,label) or an image folder (one sub-folder per label)",
                              key="rv_labels_from", placeholder=str(root / "labelled"))
    save_col, read_col = st.columns(2)
    if save_col.button("Save labels", key="rv_labels_save"):
        try:
            labelset.write(results_path, labelset.parse(text))
            st.rerun()
        except WildidError as exc:
            ui.show_error(exc)
    if read_col.button("Read labels", key="rv_labels_read", disabled=not from_data.strip()):
        try:
            labelset.write(results_path, labelset.from_data(guard.check_path(from_data.strip(), root, what="labelled data")))
            st.rerun()
        except WildidError as exc:
            ui.show_error(exc)

# Keys 1-9 on the most used labels, counted once per session and label set so they stay put
# under the reviewer's fingers while labelling.
order_key = (str(results_path), tuple(project_labels))
if st.session_state.get("rv_order_for") != order_key:
    st.session_state["rv_order_for"] = order_key
    st.session_state["rv_order"] = labelset.keyed_order(project_labels, Counter(labels.values()))
keyed = st.session_state["rv_order"][: labelset.MAX_KEYED]

# --- queue ------------------------------------------------------------------------------------
default_empty = proj.empty_threshold if proj is not None and proj.empty_threshold is not None else review.DEFAULT_EMPTY_THRESHOLD
try:
    empty_threshold = float(param("empty") or default_empty)
except ValueError:
    empty_threshold = default_empty
not_empty = frozenset(project.read_not_empty(results_path))
who, which, how = st.columns([2, 2, 3])
signed_in = ui.current_user()
if signed_in:  # behind the access gate: the signed-in name, not editable
    st.session_state["rv_reviewer"] = signed_in
    reviewer = who.text_input("Reviewer", key="rv_reviewer", disabled=True, help="the name given at sign-in")
else:
    reviewer = who.text_input("Reviewer", value=param("reviewer"), key="rv_reviewer", placeholder="your name")
if st.session_state.get("rv_queue_for") != str(results_path) or st.session_state.get("rv_queue") not in review.QUEUES:
    # A results file just opened: the queue in the URL (a reload), else blanks first when there
    # are any left to confirm, else the frames that need a label.
    st.session_state["rv_queue_for"] = str(results_path)
    if param("queue") in review.QUEUES:
        st.session_state["rv_queue"] = param("queue")
    else:
        blanks = queue_rows(*results_key, dataclasses.astuple(review.QueueSpec(review.QUEUE_LIKELY_EMPTY, empty_threshold=empty_threshold)), not_empty)
        left = any(results.loc[i, "path"] not in labels for i in blanks)
        st.session_state["rv_queue"] = review.QUEUE_LIKELY_EMPTY if left else review.QUEUE_TO_LABEL
kind = which.selectbox("Queue", review.QUEUES, key="rv_queue",
                       help="\n\n".join(f"**{k}**: {v}" for k, v in QUEUE_HELP.items()))
spec = review.QueueSpec(kind)
with how:
    if kind in review.EMPTY_QUEUES:
        empty_threshold = st.slider("Likely empty at empty_score ≥", 0.0, 1.0, empty_threshold, 0.01, key="rv_empty",
                                    help="1 = the frame looks like its camera's empty background. The Dashboard shows "
                                         "what each threshold costs, measured on your labels.")
        spec = review.QueueSpec(kind, empty_threshold=empty_threshold, labels=tuple(project_labels))
        st.query_params["empty"] = f"{empty_threshold:g}"
    elif kind == review.QUEUE_BELOW_THRESHOLD:
        default = float(param("threshold") or (card.threshold if card else 0.5))
        use_status = st.checkbox("Flagged by batch (status review)", value=not param("threshold"), key="rv_use_status")
        if not use_status:
            threshold = st.slider("Confidence below", 0.0, 1.0, default, 0.05, key="rv_threshold")
            spec = review.QueueSpec(kind, threshold=threshold)
            st.query_params["threshold"] = str(threshold)
        else:
            st.query_params.pop("threshold", None)
    elif kind == review.QUEUE_PER_CLASS:
        predicted = sorted(set(results.loc[results["label"] != "", "label"])) or project_labels
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
if reviewer.strip() and not signed_in:
    st.query_params["reviewer"] = reviewer.strip()

try:
    queue = results.loc[queue_rows(*results_key, dataclasses.astuple(spec), not_empty if kind in review.EMPTY_QUEUES else frozenset())]
except WildidError as exc:
    ui.show_error(exc)
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
    (note.caption if message[0] == "success" else note.error)(ui.md(message[1]))


def empty_pages() -> None:
    """Likely-empty frames, a page of thumbnails at a time: Enter saves the page as empty, except
    the frames ticked as holding an animal."""
    left = [i for i, path in zip(queue.index, paths) if path not in labels]
    if not left:
        st.success(f"All {total} likely-empty frames are confirmed." if total else "No frame looks empty at this threshold.")
        st.button("Label the rest", type="primary", key="rv_to_label", on_click=on_label_the_rest)
        return
    page_rows = results.loc[left[:EMPTY_PAGE]]
    page = tuple((row.path, row.label, float(row.confidence)) for row in page_rows.itertuples())
    token = hashlib.sha1("\n".join(p for p, _, _ in page).encode()).hexdigest()[:10]
    st.session_state["rv_empty_page"] = token
    st.subheader(f"Likely empty: {len(left)} frames to confirm")
    st.caption("Tick every frame that shows an animal, then press Enter: the rest are saved as empty, the ticked ones "
               "go to the labelling queue.")
    with st.form("rv_empty_form", border=False):
        submit = st.container()
        cells = st.columns(GRID_COLUMNS)
        for k, row in enumerate(page_rows.itertuples()):
            image_path = review.resolve_image_path(row.path, row.relpath or None, results_path.parent)
            with cells[k % GRID_COLUMNS]:
                try:
                    image_path = guard.check_path(image_path, root, kind="file", what="image")
                    st.image(thumbnail(str(image_path), file_version(image_path)), width="stretch")
                except WildidError as exc:
                    st.caption(ui.md(str(exc)))
                st.checkbox(f"animal · {ui.md(row.relpath or Path(row.path).name)}", key=f"rv_flag_{token}_{k}")
        submit.form_submit_button(f"Confirm {len(page)} as empty (Enter)", type="primary", shortcut="Enter",
                                  on_click=on_confirm_page, args=(str(results_path), page, token))


def one_image() -> None:
    if not total:
        st.info("This queue is empty: pick another queue or change its settings.")
        return
    if pos >= total:
        st.success(f"Queue finished: {done} of {total} reviewed. Press b to go back, or pick another queue.")
        st.button("Back", key=f"rv_back_{pos}", shortcut="b", on_click=on_move, args=(pos, -1, total))
        return
    row = queue.iloc[pos]
    path = row["path"]
    predicted_label, confidence = row["label"], float(row["confidence"])
    picture, panel = st.columns([3, 2], gap="large")
    with panel:
        # The buttons go out before the picture and the table, so by the time the new image
        # shows, its keys are live.
        st.subheader(f"Image {pos + 1} of {total}")
        about = st.container()
        for index, label in enumerate(keyed):
            st.button(
                ui.md(label), key=f"rv_c{index}_{pos}", width="stretch", shortcut=str(index + 1),
                type="primary" if label == predicted_label else "secondary",
                on_click=on_label, args=(str(results_path), paths, pos, label, predicted_label, confidence),
            )
        options = labelset.search_options(project_labels, card.classes if card else (), results["label"])
        st.selectbox(
            "Any other label (type to search, or type a new one)", options, index=None, key=f"rv_search_{pos}",
            placeholder=f"search {len(options)} labels…", accept_new_options=True,
            on_change=on_search, args=(str(results_path), paths, pos, predicted_label, confidence, tuple(project_labels)),
        )
        skip, back = st.columns(2)
        skip.button("Skip", key=f"rv_skip_{pos}", shortcut="s", width="stretch", on_click=on_move, args=(pos, 1, total))
        back.button("Back", key=f"rv_back_{pos}", shortcut="b", width="stretch", on_click=on_move, args=(pos, -1, total), disabled=pos == 0)
    with picture:
        image_path = review.resolve_image_path(path, row["relpath"] or None, results_path.parent)
        try:
            image_path = guard.check_path(image_path, root, kind="file", what="image")
            st.image(load_image(image_path, draft_size=1600), width="stretch", caption=ui.md(row["relpath"] or path))
        except WildidError as exc:
            ui.show_error(exc)
    with about:
        if path in labels:
            entry = replay.latest.set_index("path").loc[path]
            st.success(f"Reviewed as **{ui.md(entry['true_label'])}** by {ui.md(entry['reviewer'])} ({ui.md(entry['reviewed_at'])})")
        else:
            st.caption("Not reviewed yet: press a number key, click a label, or search below.")
        top = review.parse_top_k(row["top_k"])[:3] or [(predicted_label, confidence)]
        st.dataframe(
            pd.DataFrame(top, columns=["model's top 3", "probability"]), hide_index=True, width="stretch",
            column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.2f")},
        )
        details = [f"status {row['status']}"] + [f"{k} {row[k]}" for k in ("datetime", "camera", "sequence_id") if row[k]]
        if row.get("taxon") and row.get("rank") not in ("", "species") and row["status"] == "review":
            try:  # no class was sure, a higher taxon was: the model's answer is that taxon
                details.insert(0, f"model's answer {row['taxon']} ({row['rank']}, {float(row['taxon_confidence']):.0%})")
            except (TypeError, ValueError):
                pass
        if pd.notna(row["empty_score"]):
            details.append(f"empty_score {row['empty_score']:.2f}")
        st.caption(ui.md(" · ".join(details)))
    if not reviewer.strip():
        panel.caption("Type your name above: labels are recorded as 'anonymous' until you do.")


# --- the current page of blanks, or the current image -------------------------------------------
if kind == review.QUEUE_LIKELY_EMPTY:
    empty_pages()
else:
    one_image()

# --- train on what was reviewed -----------------------------------------------------------------
st.divider()
reviewed_counts = Counter(labels.values())
st.subheader("Train on the reviewed frames")
if reviewed_counts:
    st.text(", ".join(f"{label} {n}" for label, n in reviewed_counts.most_common()))  # labels are untrusted text
if st.button("Train on the reviewed frames", type="primary", key="rv_train", disabled=len(reviewed_counts) < 2,
             help="Opens Train with every reviewed frame and its label (a CSV in the project), validated by camera "
                  "folder so the score is for cameras the model has not seen."):
    try:
        st.session_state["train_handoff"] = train_handoff(results_path, proj)
    except (WildidError, OSError) as exc:
        ui.show_error(exc)
    else:
        st.switch_page("app_pages/train.py")

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
    with st.expander("Recently reviewed and corrections", expanded=False):
        recent = replay.entries.iloc[::-1].head(10)
        st.dataframe(recent[["path", "true_label", "predicted_label", "reviewer", "reviewed_at"]], hide_index=True, width="stretch")
        if len(metrics.corrections):
            st.dataframe(metrics.corrections.rename(columns={"predicted_label": "model said", "true_label": "reviewer said"}),
                         hide_index=True)
if replay.torn_tail or replay.skipped_lines:
    st.caption(f"{replay.skipped_lines} incomplete journal line(s) skipped (an interrupted write).")

# --- final data set and training export -------------------------------------------------------
# Writes go to new files, or to files this session made: another session's work is never replaced.
st.divider()
st.subheader("Final data set")
journal = review.journal_path(results_path)
st.caption(ui.md(f"Journal: {journal} (the results file is never changed)"))
if journal.is_file():
    st.download_button("Download the journal", journal.read_bytes(), file_name=journal.name, mime="text/csv",
                       key="rv_journal_download")
merge_col, export_col = st.columns(2)
with merge_col:
    st.write("Accepted automatic labels plus reviewed manual labels, with a `label_source` column.")
    if st.button("Merge", key="rv_merge"):
        try:
            target = review.final_path(results_path)
            if target.exists() and not space.created_here(target):
                target = space.sub("final") / target.name  # someone else's: keep theirs, offer ours for download
            out, final = review.write_final(results_path, target)
            space.remember(out)
            st.session_state["rv_final"] = (str(out), str(results_path), final.to_csv(index=False).encode(),
                                            final["label_source"].value_counts().to_dict())
        except (WildidError, OSError) as exc:
            ui.show_error(exc)
    if "rv_final" in st.session_state and st.session_state["rv_final"][1] == str(results_path):
        out, _, data, counts = st.session_state["rv_final"]
        st.success(ui.md(f"Wrote {out}: {counts.get('manual', 0)} manual, {counts.get('auto', 0)} auto labels"))
        st.download_button("Download final CSV", data, file_name=Path(out).name, mime="text/csv", key="rv_final_download")
with export_col:
    st.write("Reviewed images as a training set for `wildid train` (copies; originals untouched).")
    export_parent = results_path.parent if guard.is_inside(results_path.parent, root) else root
    out_dir = st.text_input("Export to", value=str(export_parent / f"{review.safe_name(results_path.stem)}-training"),
                            key="rv_export_dir", help=ui.md(f"a new folder (or .csv file) under {root}"))
    layout = st.radio("Layout", ["imagefolder", "csv"], horizontal=True, key="rv_layout",
                      format_func={"imagefolder": "folders per class (copies)", "csv": "CSV path,label"}.get)
    include_auto = st.checkbox("Also accepted automatic labels", key="rv_include_auto")
    if st.button("Export", key="rv_export"):
        try:
            target = guard.check_path(out_dir, root, must_exist=False, what="export folder")
            guard.check_name(target.name, "export folder name")
            if layout == "csv" and target.suffix.lower() != ".csv":
                target = target / "labels.csv"
            if target.exists() and not space.created_here(target):
                raise WildidError(f"{target} already exists and was not made in this session: "
                                  f"exports go to a new folder (or a new .csv file); pick another name")
            summary = review.export_training_set(results_path, target, layout=layout, include_auto=include_auto,
                                                 confine=root)
            space.remember(target)
            st.session_state["rv_export_summary"] = summary
        except (WildidError, OSError) as exc:
            ui.show_error(exc)
    summary = st.session_state.get("rv_export_summary")
    if summary is not None:
        classes_text = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_class.items()))
        st.success(ui.md(f"Exported {summary.n_images} images to {summary.out} ({classes_text})"))
        if summary.missing:
            st.warning(f"{len(summary.missing)} image file(s) not found, left out")
        if summary.refused:
            st.warning(ui.md(f"{len(summary.refused)} row(s) refused, left out: e.g. {summary.refused[0]}"))
        st.download_button("Download labels.csv", summary.labels_csv.read_bytes(), file_name="labels.csv", mime="text/csv",
                           key="rv_export_download")
        st.code(f"wildid train '{summary.labels_csv}' --groups group --out models/my-model", language="bash")
st.write("Results and reviewed labels (human classifications) as a Camtrap DP 1.0 package.")
ui.camtrap_export(results_path, "review")
