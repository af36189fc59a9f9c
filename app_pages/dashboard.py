"""Dashboard: how well does a model do on labelled data?  Confusion matrix, per-class
metrics, confidence bins, accept-above-T coverage, calibration, models side by side; the empty
filter against the labels (ROC, pick the threshold on it); warnings when the numbers cannot mean
what they seem (labels the model cannot predict, evaluated on its own training images)."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from wildid import evaluate as ev
from wildid import guard
from wildid import evaluation_checks as checks
from wildid import metrics, project
from wildid.background import DEFAULT_EMPTY_THRESHOLD
from wildid.errors import WildidError
from wildid.imaging import load_image

BUNDLE_KEY = "dashboard_bundle"
THUMBNAILS = 24
SOURCES = (
    "Labelled folder or CSV on the server",
    "Upload a results CSV + truth CSV",
    "Results CSV on the server + its reviewed journal",
    "Open a saved report (JSON)",
)

st.title("Evaluation dashboard")


def fmt(value, spec: str = ".1%") -> str:
    return "–" if value is None or value != value else format(value, spec)


def progress_callback(bar):
    started = {}

    def update(name: str, done: int, total: int) -> None:
        start = started.setdefault(name, time.monotonic())
        elapsed = time.monotonic() - start
        eta = elapsed / done * (total - done) if done else 0
        bar.progress(done / total if total else 1.0, text=ui.md(f"{name}: {done}/{total} images · ETA {eta:.0f} s"))

    return update


def evaluate_labelled(data: str, models: list[str], crops: bool, population: str, threshold: float):
    bar = st.progress(0.0, text="Starting…")
    root = guard.allowed_root()
    bundle = ev.evaluate(
        str(guard.check_path(data, root, what="folder or CSV file")), models, threshold=threshold, crops=crops,
        population=str(guard.check_path(population, root, kind="file", what="results CSV")) if population else None,
        progress=progress_callback(bar), confine=root,
    )
    bar.empty()
    return bundle


def evaluate_results(results_path: str, threshold: float) -> dict:
    path = guard.check_path(results_path, kind="file", what="results CSV")
    if not ev.journal_path_for(path).is_file():
        raise WildidError(f"no reviewed labels for {path.name} yet: review some frames first (Review these results), "
                          f"then evaluate")
    return ev.combine([ev.build_report(ev.from_journal(path), threshold)], str(path))


# --- data source ---------------------------------------------------------------------------------
# From Batch's "Evaluate": open on that results file (and its project's journal) at once.
handed = st.session_state.pop("dashboard_handoff", None) or st.query_params.get("results")
if handed and st.session_state.get("dashboard_results_for") != handed:
    st.session_state.update(dashboard_source=SOURCES[2], dashboard_results_path=handed, dashboard_results_for=handed)
    try:
        st.session_state[BUNDLE_KEY] = evaluate_results(handed, st.session_state.get("dashboard_threshold", ev.DEFAULT_THRESHOLD))
        st.session_state.pop("dashboard_handoff_error", None)
    except WildidError as exc:
        st.session_state.pop(BUNDLE_KEY, None)
        st.session_state["dashboard_handoff_error"] = (handed, str(exc))
failed = st.session_state.get("dashboard_handoff_error")
if failed and not st.session_state.get(BUNDLE_KEY):
    ui.show_error(failed[1])
    if st.button("Review these results", type="primary", key="dashboard_to_review"):  # no dead end
        st.session_state["rv_handoff"] = failed[0]
        st.switch_page("app_pages/review.py", query_params={"results": failed[0]})
source = st.radio("Data", SOURCES, horizontal=True, key="dashboard_source")
threshold = st.session_state.get("dashboard_threshold", ev.DEFAULT_THRESHOLD)
try:
    if source == SOURCES[0]:
        data = st.text_input("Folder (one sub-folder per class) or CSV with path,label", key="dashboard_data")
        cards = [card for card in ui.available_cards() if card.has_weights]
        current = ui.current_model_name()
        models = st.multiselect(
            "Models (pick several to compare)", [c.name for c in cards],
            default=[current] if current in {c.name for c in cards} else [], key="dashboard_models",
            format_func=lambda name: next(c.display_title for c in cards if c.name == name),
        )
        left, right = st.columns(2)
        crops = left.checkbox("Also evaluate on crops (CSV with a crop column): full-frame vs cropped", key="dashboard_crops")
        population = right.text_input("Optional: full results CSV, for the class-proportion correction", key="dashboard_population")
        if st.button("Evaluate", type="primary", disabled=not (data and models)):
            st.session_state[BUNDLE_KEY] = evaluate_labelled(data, models, crops, population, threshold)
    elif source == SOURCES[1]:
        left, right = st.columns(2)
        results_file = left.file_uploader("Results CSV (from batch)", type=["csv"], key="dashboard_results_upload")
        truth_file = right.file_uploader("Truth CSV (path,label)", type=["csv"], key="dashboard_truth_upload")
        if st.button("Evaluate", type="primary", disabled=not (results_file and truth_file)):
            run = ev.from_results(results_file, truth_file)
            st.session_state[BUNDLE_KEY] = ev.combine([ev.build_report(run, threshold)], results_file.name)
    elif source == SOURCES[2]:
        results_path = st.text_input("Results CSV; its journal <name>.reviewed.csv lies beside it", key="dashboard_results_path")
        if st.button("Evaluate", type="primary", disabled=not results_path):
            st.session_state[BUNDLE_KEY] = evaluate_results(results_path, threshold)
            st.query_params["results"] = results_path
            st.session_state["dashboard_results_for"] = results_path
    else:
        saved = st.file_uploader("Report JSON (from `wildid evaluate --out` or this page)", type=["json"], key="dashboard_json")
        if saved is not None and st.button("Open", type="primary"):
            st.session_state[BUNDLE_KEY] = ev.load_report(saved.getvalue())
except WildidError as exc:
    ui.show_error(exc)

bundle = st.session_state.get(BUNDLE_KEY)
if not bundle:
    st.info("Pick a data source above and press Evaluate.")
    st.stop()

# --- models side by side ---------------------------------------------------------------------
reports = bundle["models"]
if len(reports) > 1:
    st.subheader("Models side by side")
    st.plotly_chart(ev.compare_figure(bundle), key="dashboard_compare")
    st.dataframe(pd.DataFrame(bundle["compare"]).set_index("name"), column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in pd.DataFrame(bundle["compare"]).columns
        if c not in ("name", "n", "review")
    })
names = [r["name"] for r in reports]
report = reports[names.index(st.selectbox("Details for", names, key="dashboard_detail"))] if len(reports) > 1 else reports[0]

st.subheader(ui.md(report["name"]))
st.caption(ui.md(report.get("source", "")))
warnings_box = st.container()  # filled once the labels are mapped (or not)

# --- label mapping: score what the model can do when the labels are not its classes -----------
data_file = str(bundle.get("data", ""))
owner = project.of_results(data_file) if data_file.endswith(".csv") and Path(data_file).is_file() else None
empty_key = f"dashboard_empty_t_{report['name']}"
if empty_key not in st.session_state:
    st.session_state[empty_key] = float(owner.empty_threshold if owner and owner.empty_threshold is not None
                                        else DEFAULT_EMPTY_THRESHOLD)
check = report.get("label_check") or {}
all_labels = sorted({i["true"] for i in report["items"]} | {i["pred"] for i in report["items"]})
MAPPINGS = ("labels as they are", "animal or empty (the empty score says empty)", "my mapping")
with st.expander("Map labels", expanded=bool(check.get("none_known"))):
    st.caption("Score the model on what it can tell: e.g. every label but 'empty' becomes 'animal', and a frame whose "
               "empty_score reaches the empty-filter threshold (below) counts as predicted 'empty'.")
    how = st.radio("Score", MAPPINGS, key=f"dashboard_mapping_{report['name']}", horizontal=True)
    if how == MAPPINGS[1]:
        report = ev.remap(report, checks.animal_or_empty(all_labels), st.session_state[empty_key],
                          threshold=float(report["threshold"]["threshold"]))
    elif how == MAPPINGS[2]:
        table = st.data_editor(pd.DataFrame({"label": all_labels, "counts as": all_labels}), hide_index=True,
                               disabled=["label"], key=f"dashboard_mapping_table_{report['name']}", width="stretch")
        mapping = {row["label"]: str(row["counts as"] or row["label"]).strip() for _, row in table.iterrows()}
        report = ev.remap(report, mapping, threshold=float(report["threshold"]["threshold"]))
for warning in report.get("warnings", []):
    warnings_box.warning(ui.md(warning))
s = report["summary"]
cols = st.columns(5)
cols[0].metric("Images", s["n"])
cols[1].metric("Accuracy", fmt(s["accuracy"]))
cols[2].metric("Macro-F1", fmt(s["macro_f1"], ".3f"))
cols[3].metric("Balanced accuracy", fmt(s["balanced_accuracy"]))
cols[4].metric("ECE", fmt(report["calibration"]["ece"], ".3f"))
ranks = report.get("ranks")
if ranks:
    left, right = st.columns([1, 2])
    left.metric("Correct at the rank given", fmt(ranks["share_correct"]),
                help="An answer counts as right when the true label lies in the taxon answered: a rolled-up "
                     "'Artiodactyla' for an elk is right, an exact class is not needed.")
    left.caption(f"{ranks['answers']} answers, {ranks['uncertain']} uncertain; {ranks['checked']} answers could be "
                 "checked against the true labels' taxonomy.")
    right.dataframe(pd.DataFrame(ranks["per_rank"])[["rank", "n", "correct", "share_correct"]], hide_index=True,
                    column_config={"n": "answers", "share_correct": st.column_config.NumberColumn(
                        "correct at this rank", format="percent")}, key="dashboard_ranks")
for note in report.get("notes", []):
    st.caption(ui.md(note))
if report.get("errors"):
    with st.expander(f"{len(report['errors'])} files could not be classified"):
        st.dataframe(pd.DataFrame(report["errors"]), hide_index=True)

# --- confusion matrix ------------------------------------------------------------------------
st.subheader("Confusion matrix")
normalized = st.toggle("Row-normalised (share of each true class)", key="dashboard_normalized")
event = st.plotly_chart(ev.confusion_figure(report, normalized=normalized, clickable=True), key="dashboard_confusion",
                        on_select="rerun", selection_mode=("points", "box"))
labels = report["labels"]
counts = report["confusion"]["counts"]
cells = [(t, p) for i, t in enumerate(labels) for j, p in enumerate(labels) if counts[i][j]]
clicked = [(pt.get("y"), pt.get("x")) for pt in (event.selection.points if event else []) if pt.get("y") in labels]
clicked = [c for c in clicked if c in cells]
if cells:
    errors_first = sorted(cells, key=lambda c: (c[0] == c[1], -counts[labels.index(c[0])][labels.index(c[1])]))
    choice = st.selectbox(
        "Images in cell (click a cell in the matrix, or pick here)", errors_first,
        format_func=lambda c: f"true {c[0]} → predicted {c[1]} ({counts[labels.index(c[0])][labels.index(c[1])]})",  # plain text
        key="dashboard_cell", disabled=bool(clicked),
        help="A cell clicked in the matrix wins; double-click the matrix to clear it and pick here again.",
    )
    true_label, predicted_label = clicked[0] if clicked else choice
    paths = ev.cell_paths(report, true_label, predicted_label)
    confidence = {item["path"]: item["confidence"] for item in report["items"]}
    st.markdown(f"**true {ui.md(true_label)} → predicted {ui.md(predicted_label)}**: {len(paths)} images"
                + (f" (showing {THUMBNAILS})" if len(paths) > THUMBNAILS else ""))
    grid = st.columns(6)
    root = guard.allowed_root()
    for k, path in enumerate(paths[:THUMBNAILS]):
        caption = ui.md(f"{Path(path).name} · {confidence.get(path, 0):.0%}")
        # Paths come from the data or from an uploaded report: only images inside the allowed
        # folder are ever opened.
        try:
            thumb = load_image(guard.check_path(path, root, kind="file", what="image"), draft_size=160)
            thumb.thumbnail((160, 160))
            grid[k % 6].image(thumb, caption=caption)
        except WildidError as exc:
            reason = "outside the allowed folder" if "outside the allowed folder" in str(exc) else "not readable here"
            grid[k % 6].caption(f"{caption} (file {reason})")

# --- the empty filter ------------------------------------------------------------------------
st.subheader("Empty filter")
empty = report.get("empty") or {}
if not empty:
    st.caption("Needs a results table from Batch (it holds each frame's empty_score) with reviewed labels.")
elif not empty.get("roc"):
    st.caption("Needs frames labelled 'empty' and frames with an animal among the reviewed ones to judge the empty score.")
else:
    # A click on the curve picks its threshold (the slider follows); the slider fine-tunes it.
    picked = st.session_state.get("dashboard_empty_roc")
    points = picked.selection.points if picked and getattr(picked, "selection", None) else []
    value = next((p.get("customdata") for p in points if p.get("customdata") is not None), None)
    if value is not None and st.session_state.get("dashboard_empty_clicked") != value:
        st.session_state["dashboard_empty_clicked"] = value
        st.session_state[empty_key] = round(float(value), 3)
    chart, numbers = st.columns([3, 2])
    with numbers:
        empty_threshold = st.slider("Hide frames with empty_score ≥", 0.0, 1.0, step=0.005, key=empty_key, format="%.3f")
        scored = [i for i in report["items"] if "empty_score" in i]
        cost = metrics.empty_threshold_summary([i["true_is_empty"] for i in scored], [i["empty_score"] for i in scored],
                                               empty_threshold)
        st.metric("Recall of animals", "–" if cost["animal_recall"] is None else f"{cost['animal_recall']:.1%}",
                  help="share of the frames labelled with an animal that stay visible (not hidden as empty)")
        st.metric("Frames hidden", f"{cost['hidden']} of {cost['frames']} ({cost['hidden_share']:.0%})")
        st.metric("Animal frames hidden", f"{cost['animals_hidden']} of {cost['animals']}")
        if owner is not None:
            if st.button("Use this threshold for the project", key="dashboard_empty_save",
                         help="Batch and Review of this folder then start from it"):
                owner.save_settings(empty_threshold=round(float(empty_threshold), 3))
                st.success(f"Empty threshold {empty_threshold:.3f} saved for the project.")
            elif owner.empty_threshold is not None:
                st.caption(f"The project's threshold: {owner.empty_threshold:.3f}")
    chart.plotly_chart(ev.empty_roc_figure(report, empty_threshold), key="dashboard_empty_roc", on_select="rerun",
                       selection_mode="points")
    st.caption(ui.md(cost["text"]))

# --- per-class -------------------------------------------------------------------------------
st.subheader("Per class")
per_class = pd.DataFrame(ev.per_class_rows(report)).set_index("label")
st.dataframe(per_class, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in per_class.columns
                                       if c not in ("support", "predicted")})

corrected = report.get("corrected")
st.subheader("Class-proportion correction")
if corrected:
    cs = corrected["summary"]
    st.caption(f"The labelled sample of {corrected['sample_size']} images is reweighted to the predicted-class proportions "
               f"of all {corrected['population_size']} classified images. Precision stays; recall and accuracy move.")
    st.dataframe(pd.DataFrame(
        [{"": "raw", "accuracy": s["accuracy"], "macro-F1": s["macro_f1"], "balanced accuracy": s["balanced_accuracy"]},
         {"": "corrected", "accuracy": cs["accuracy"], "macro-F1": cs["macro_f1"], "balanced accuracy": cs["balanced_accuracy"]}]
    ).set_index(""))
    if corrected.get("unsampled"):
        st.warning(ui.md("Predicted in the full set but never in the labelled sample (left out): "
                         + ", ".join(f"{k} ({v})" for k, v in corrected["unsampled"].items())))
else:
    st.caption("Needs the full set's predictions: evaluate a results CSV, or give the full results CSV above.")

# --- confidence ------------------------------------------------------------------------------
st.subheader("Confidence")
left, right = st.columns(2)
left.plotly_chart(ev.bins_figure(report), key="dashboard_bins")
threshold = right.slider("Accept everything with confidence ≥ T", 0.0, 1.0, float(report["threshold"]["threshold"]), 0.01,
                         key="dashboard_threshold")
summary = ev.rethreshold(report, threshold)
right.plotly_chart(ev.coverage_figure(report, threshold), key="dashboard_coverage")
c1, c2, c3 = st.columns(3)
c1.metric("Accepted", f"{summary['kept']} ({summary['coverage']:.0%})")
c2.metric("Accuracy of accepted", fmt(summary["accuracy"]))
c3.metric("Left for review", summary["review"])
st.success(ui.md(summary["text"]))
with st.expander("Accuracy per confidence bin (table)"):
    st.dataframe(pd.DataFrame(report["confidence_bins"]).drop(columns=["lower", "upper"]), hide_index=True)

st.subheader("Calibration")
st.plotly_chart(ev.reliability_figure(report), key="dashboard_reliability")
st.caption("Expected calibration error: the count-weighted mean gap between accuracy and confidence over 10 bins.")

# --- export ----------------------------------------------------------------------------------
st.subheader("Export")
d1, d2 = st.columns(2)
d1.download_button("Download JSON", ev.to_json(bundle), file_name="wildid-report.json", mime="application/json")
if st.session_state.get("dashboard_html_for") is not bundle:
    st.session_state["dashboard_html"] = ev.to_html(bundle)
    st.session_state["dashboard_html_for"] = bundle
d2.download_button("Download HTML (self-contained)", st.session_state["dashboard_html"], file_name="wildid-report.html",
                   mime="text/html")
