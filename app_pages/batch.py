"""Batch: a folder of camera-trap frames -> results table, progress, exports.

A server folder's results go to its project (``wildid-projects/<folder>-<hash>/`` under the
allowed folder): any session finds them again, resumes an unfinished run, and hands them to
Review and the Dashboard without a download.
"""

from collections import deque
from pathlib import Path

import plotly.express as px
import streamlit as st

import ui
from wildid import batch, cluster, defaults, detections, guard, project
from wildid.background import BackgroundRegions
from wildid.detections import DEFAULT_DETECTION_THRESHOLD
from wildid.errors import WildidError
from wildid.imaging import MAX_UPLOAD_IMAGE_MB

LIVE_ROWS = 200
LIVE_COLUMNS = ["relpath", "label", "confidence", "status", "empty_score", "datetime", "sequence_id", "error"]
TABLE_COLUMNS = LIVE_COLUMNS[:5] + ["mean_intensity", "laplacian_var", "dark", "overexposed", "blurry",
                                    "datetime", "camera", "sequence_id", "error"]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


st.title("Batch: classify a folder of frames")
card = ui.current_card()
if card is not None:
    ui.show_card(card)
backend = st.radio("Back end", ["onnx", "torch"], horizontal=True,
                   help="ONNX Runtime is usually 2-3x faster on CPU; torch is the reference")
predictor = ui.get_predictor(card, backend)

handed = st.session_state.pop("batch_handoff", None)  # from Train: run the new model on the project's folder
if handed:
    st.session_state.update(batch_source="Folder on the server", batch_folder=handed)
source = st.radio("Images from", ["Folder on the server", "Upload images", "Upload a zip"], horizontal=True,
                  key="batch_source")
root = guard.allowed_root()
folder_text, uploads, archive = "", [], None
proj = None
if source == "Folder on the server":
    st.session_state.setdefault("batch_folder", st.query_params.get("folder", ""))
    folder_text = st.text_input("Folder", key="batch_folder",
                                placeholder=str(root / "camera1"), help=ui.md(f"must lie inside {root}"))
    if folder_text.strip():
        try:
            proj = project.for_folder(guard.check_path(folder_text, root, kind="folder", what="folder"), root)
            st.query_params["folder"] = folder_text.strip()  # a reload comes back to this folder's results
        except WildidError as exc:
            ui.show_error(exc)
elif source == "Upload images":
    uploads = st.file_uploader("Images", accept_multiple_files=True, max_upload_size=MAX_UPLOAD_IMAGE_MB,
                               type=["jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp"])
else:
    archive = st.file_uploader("Zip of a folder of images (up to 2 GB)", type=["zip"])

with st.expander("Options"):
    cols = st.columns(4)
    recursive = cols[0].checkbox("Include sub-folders", value=defaults.RECURSIVE)
    previous = proj.run_for(card.name) if proj is not None and card is not None else None
    resume = cols[0].checkbox("Resume the previous run on this folder", value=previous is not None,
                              key=f"batch_resume_{previous is not None}",
                              help="keeps the rows already computed and classifies only the rest; "
                                   "unticked, the previous run of this model on this folder starts again")
    threshold = cols[1].slider("Accept at confidence ≥", 0.0, 1.0, defaults.accept_threshold(card), 0.05)
    sequence_gap = cols[2].number_input("Sequence gap (s)", 1.0, 3600.0, defaults.SEQUENCE_GAP, 5.0)
    batch_size = cols[3].number_input("Batch size", 1, 128, defaults.BATCH_SIZE)
    crop_mode = st.radio("Classify", ["Whole frames", "Background crop (fixed cameras)", "MegaDetector boxes"],
                         horizontal=True, help="Background crop: the largest change against the camera folder's "
                         "median background. MegaDetector boxes: each animal box of a MegaDetector output file.")
    detections_upload = None
    if crop_mode == "MegaDetector boxes":
        detections_upload = st.file_uploader("MegaDetector output (JSON, format 1.x)", type=["json"])
        detection_threshold = st.slider("Animal boxes at detector confidence ≥", 0.0, 1.0,
                                        DEFAULT_DETECTION_THRESHOLD, 0.05)
    # Only clusters the operator configured (WILDID_DASK_SCHEDULERS): a typed address would let a
    # visitor point the server at a scheduler of their own, whose replies the client unpickles.
    clusters = cluster.configured_schedulers()
    dask_address = ""
    if clusters:
        choice = st.selectbox("Run on", ["this server's cores", *clusters], key="batch_dask",
                              help="a Dask cluster set up by the operator; its workers must see the folder at the same path")
        dask_address = "" if choice == "this server's cores" else choice

if proj is not None:
    st.caption(ui.md(f"Results of this folder are kept in its project: {proj.path}"))
    runs = proj.runs()
    if runs:
        st.dataframe([{"model": run.model, "files": run.rows, "written": run.modified.strftime("%Y-%m-%d %H:%M"),
                       "results file": run.path.name} for run in runs], hide_index=True)

if st.button("Classify", type="primary", disabled=predictor is None):
    try:
        space = ui.session_space()  # private to this session, removed when it ends
        confine = None
        exclude = []
        if source == "Folder on the server":
            folder = guard.check_path(folder_text, root, kind="folder", what="folder")
            proj = project.for_folder(folder, root).create()
            exclude = [project.projects_root(root)]  # when the folder holds the projects folder itself
            confine = root  # file links that lead out of the allowed folder become error rows
        elif source == "Upload images":
            if not uploads:
                raise WildidError("choose one or more images to upload")
            space.reserve(sum(u.size for u in uploads), replacing=space.folder / "uploads")
            folder, key = batch.save_uploads(uploads, space.sub("uploads", fresh=True)), "uploads"
            resume = False
        else:
            if archive is None:
                raise WildidError("choose a zip file to upload")
            declared = batch.zip_unpacked_size(archive)
            space.reserve(declared, replacing=space.folder / "zip")
            folder, key = batch.extract_zip(archive, space.sub("zip", fresh=True)), "zip"
            resume = False
        regions = None
        if crop_mode == "Background crop (fixed cameras)":
            regions = BackgroundRegions()
        elif crop_mode == "MegaDetector boxes":
            if detections_upload is None:
                raise WildidError("choose the MegaDetector output file (JSON) for these images")
            space.reserve(detections_upload.size, replacing=space.folder / "megadetector.json")
            md_path = space.folder / "megadetector.json"
            md_path.write_bytes(detections_upload.getvalue())
            regions = detections.DetectorRegions(detections.read_detections(md_path, folder), detection_threshold)
        if source == "Folder on the server":
            out = proj.results_path(predictor.card.name)
            # On a shared server (access gate on), a project's results are everyone's: another
            # session's run is completed (resume), never started again over it.
            if ui.current_user() is not None and out.exists() and not resume and not space.created_here(out):
                raise WildidError(f"this folder already has results of {predictor.card.name} from another session "
                                  f"({out.name}): tick 'Resume the previous run on this folder' to complete them")
            space.remember(out)
        else:
            out = space.folder / f"results-{key}.csv"
        resume = resume and out.exists()
        progress = st.progress(0.0, text="Reading the folder…")
        live = st.empty()
        recent: deque = deque(maxlen=LIVE_ROWS)
        options = dict(recursive=recursive, resume=resume, overwrite=not resume, threshold=threshold,
                       batch_size=int(batch_size), sequence_gap=sequence_gap, regions=regions)
        if dask_address:
            progress.progress(0.0, text="Connecting to the Dask scheduler…")
            steps = cluster.iter_batch_dask(dask_address, folder, predictor, out, **options)
        else:
            steps = batch.iter_batch(folder, predictor, out, confine=confine, exclude=exclude, **options)
        for step in steps:
            if isinstance(step, cluster.ClusterProgress) and step.processed == 0:
                st.text(f"Dask: {step.workers} worker processes" + (f", dashboard {step.dashboard}" if step.dashboard else ""))
            progress.progress(step.done / step.total,
                              text=f"{step.done}/{step.total} files · {step.rate:.1f} images/s · ETA {duration(step.eta)}")
            if step.rows:
                recent.extend({c: row[c] for c in LIVE_COLUMNS} for row in step.rows)
                live.dataframe(list(recent)[::-1], hide_index=True, width="stretch")
        live.empty()
        st.session_state["batch_results"] = str(out)
        st.session_state["batch_classes"] = list(predictor.card.classes)
    except WildidError as exc:
        ui.show_error(exc)

results = st.session_state.get("batch_results")
if proj is not None and (not results or project.of_results(results) != proj):
    # Another session (or yesterday's) classified this folder: its results are here to open.
    found = proj.run_for(card.name) if card is not None else None
    found = found or next(iter(proj.runs()), None)
    results = str(found.path) if found else None
if results and Path(results).exists():
    frame = batch.results_frame(results)
    st.subheader("Results")
    counts = frame["status"].value_counts()
    cols = st.columns(6 if counts.get("empty") else 5)
    if counts.get("empty"):
        cols[5].metric("Empty (no animal box)", int(counts.get("empty", 0)))
    cols[0].metric("Files", len(frame))
    cols[1].metric("Accepted", int(counts.get("accepted", 0)))
    cols[2].metric("To review", int(counts.get("review", 0)))
    cols[3].metric("Out of scope", int(counts.get("out_of_scope", 0)),
                   help="Not something this model was trained on (e.g. a footprint sent to a photo model)")
    cols[4].metric("Errors", int(counts.get("error", 0)))
    st.caption(ui.md(f"Results file: {results}"))
    owner = project.of_results(results)
    chosen = owner.empty_threshold if owner is not None else None
    empty_threshold = st.slider(
        "Likely empty at empty_score ≥", 0.0, 1.0, defaults.EMPTY_THRESHOLD if chosen is None else chosen, 0.01,
        help="empty_score: 1 = the frame looks like its camera's median background (no animal). The Dashboard "
             "measures what each threshold costs on your labels and can set it for the project.",
    )
    # Hand-offs: the next pages open on this very file, no download and upload.
    if owner is not None:
        review_col, evaluate_col = st.columns(2)
        if review_col.button("Review these results", type="primary", key="batch_to_review",
                             help="blanks first in pages of thumbnails, then the rest with your project's labels"):
            st.session_state["rv_handoff"] = str(results)
            st.switch_page("app_pages/review.py", query_params={"results": str(results), "empty": f"{empty_threshold:g}"})
        if evaluate_col.button("Evaluate", key="batch_to_dashboard",
                               help="the model and the empty filter against the labels reviewed so far"):
            st.session_state["dashboard_handoff"] = str(results)
            st.switch_page("app_pages/dashboard.py", query_params={"results": str(results)})
    else:
        st.caption(ui.md(f"Review and Evaluate open results of a folder under {root} directly; uploaded images live only "
                         f"in this session, so download the results to keep them."))
    likely_empty = frame["empty_score"] >= empty_threshold
    hide_empty = st.checkbox(f"Hide {int(likely_empty.sum())} likely empty frames", value=defaults.HIDE_LIKELY_EMPTY)
    shown = frame[~likely_empty] if hide_empty else frame
    boxed = bool(frame["box_source"].astype(str).str.len().gt(0).any()) if "box_source" in frame else False
    st.dataframe(shown[TABLE_COLUMNS + (["box_source", "detection_count", "box"] if boxed else [])],
                 hide_index=True, width="stretch")
    classified = frame[frame["status"] != "error"]
    if len(classified):
        figure = px.histogram(classified, x="confidence", color="status", range_x=[0, 1],
                              title="Confidence of the top label", color_discrete_map={"accepted": "#2f6b3a", "review": "#d08c2b",
                                                                      "out_of_scope": "#8a8f99"})
        figure.update_traces(xbins={"start": 0.0, "end": 1.0, "size": 0.05})
        st.plotly_chart(figure, width="stretch")
    json_path = Path(results).with_suffix(".json")
    classes = st.session_state.get("batch_classes") if results == st.session_state.get("batch_results") else None
    batch.export_json(results, json_path, classes, empty_threshold)
    cols = st.columns(2)
    cols[0].download_button("Download CSV", Path(results).read_bytes(), file_name="wildid_results.csv",
                            mime="text/csv")
    cols[1].download_button("Download JSON (MegaDetector / Timelapse format)", json_path.read_bytes(),
                            file_name="wildid_results.json", mime="application/json")
    ui.camtrap_export(results, "batch", empty_threshold)
