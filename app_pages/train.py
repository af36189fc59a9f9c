"""Train: transfer learning from labelled images, with live curves and a stop button.

A run is a server-side job keyed by its output name (``wildid.jobs``): the page only watches
it.  The run's name sits in the URL, so a reload or another tab re-attaches to the same live
curves and stop button, and shows the result once it is done; a second run to a name in use
is refused.
"""


import plotly.express as px
import streamlit as st

import ui
from wildid import guard
from wildid import train as tr
from wildid.backbones import packaged_weights_for
from wildid.errors import WildidError
from wildid.registry import app_model_folder

JOB_KEY = "train_job"
ARCHS = [tr.DEFAULT_ARCH] + [a for a in ("tf_efficientnet_lite0", "tf_efficientnet_lite2") if a != tr.DEFAULT_ARCH] + ["resnet18", "resnet50", "vit_base_patch16_224", "torchvision:resnet18"]
WEIGHTS = {"package": "package (EfficientNet-Lite0/Lite2 ImageNet, offline)", "hub": "hub (downloads; needs internet)",
           "path": "local weights file", "none": "none (random init, for tests)"}

st.title("Train a model")
st.caption("Transfer learning from labelled images: an image folder with one sub-folder per class, or a CSV "
           "with path,label (optional group column and crop as x,y,w,h). The new model appears in the sidebar.")

# Arriving from a model slot without weights (Identify's "Train" link): that slot is the output.
slot = st.query_params.get("slot", "")
if slot:
    st.info(ui.md(f"Training weights for the model slot “{slot}”: point to labelled photos of its classes."))

runs = ui.training_runs()  # shared by every session of this server
handoff = st.session_state.pop("train_handoff", None)  # from Review's "Train on the reviewed frames"
if handoff:
    st.session_state.update(train_data=handoff["data"], train_name=handoff["name"], train_groups=handoff["groups"],
                            train_from_review=handoff)
from_review = st.session_state.get("train_from_review")
if from_review:
    counts = ", ".join(f"{label} {n}" for label, n in sorted(from_review["counts"].items(), key=lambda kv: -kv[1]))
    st.info(ui.md(f"From Review: {sum(from_review['counts'].values())} reviewed frames ({counts}), validated by camera "
                  f"folder (group column 'group'). Check the name and press Train."))

# On a shared server (access gate on) each person sees and stops only their own runs.
user = ui.current_user()


def visible(run):
    return run if run is not None and (user is None or run.meta.get("owner") == user) else None


# Which run this page shows: the one named in the URL (a reload, a shared link), else the one
# this session started, else whatever of the person's is running on the server (another tab).
attached = (visible(runs.get(st.query_params.get("run"))) or visible(runs.get(st.session_state.get(JOB_KEY)))
            or next((run for run in runs.running() if visible(run)), None))
busy = attached is not None and attached.running

with st.form("train_form"):
    data_text = st.text_input("Labelled data (folder or CSV on the server)", placeholder="/data/tracks or /data/labels.csv",
                              key="train_data")
    left, right = st.columns(2)
    st.session_state.setdefault("train_name", slot or "my-model")
    name = left.text_input("New model name", key="train_name")
    arch = right.selectbox("Architecture", ARCHS)
    mode = left.radio("Mode", tr.MODES, horizontal=True,
                      help="linear: frozen backbone, features computed once (fast). finetune: last blocks trained. "
                           "progressive: one more block unfrozen every few epochs.")
    groups = right.text_input("Group column (sequence, camera or site)", key="train_groups",
                              help="Frames of one group never sit on both sides of a split. "
                              "For an image folder, 'folder' uses class/GROUP/image.jpg.")
    folds = left.number_input("Validation folds (0 = none)", min_value=0, max_value=20, value=5)
    epochs = right.number_input("Epochs (0 = default for the mode)", min_value=0, max_value=500, value=0)
    nir = left.checkbox("Near-infrared images (grey input, no colour jitter)")
    overwrite = right.checkbox("Replace an existing model of this name")
    with st.expander("Advanced"):
        custom_arch = st.text_input("Any timm architecture (overrides the choice above)", placeholder="e.g. convnext_tiny")
        weights_choice = st.selectbox("Pretrained weights", list(WEIGHTS), format_func=WEIGHTS.get)
        weights_path = st.text_input("Local weights file (for 'local weights file')")
        a, b, c = st.columns(3)
        unfreeze = a.number_input("finetune: blocks to train", min_value=0, max_value=50, value=2)
        step = b.number_input("progressive: epochs per block", min_value=1, max_value=50, value=2)
        batch_size = c.number_input("Batch size", min_value=1, max_value=512, value=32)
        views = st.selectbox("Flipped / rotated views averaged", tr.VIEW_CHOICES,
                             help="auto: chosen by inner cross-validation among none, flip and d8 (all 8 flips and "
                                  "quarter-turns; for subjects without a fixed orientation, such as footprints)")
    submitted = st.form_submit_button("Train", type="primary")

if submitted:
    try:
        space = ui.session_space()
        data_path = tr.resolve_data_path(data_text)
        # One name check; bundled models and models this session did not train are never replaced.
        out = app_model_folder(name, replace=overwrite, created_here=space.created_here)
        chosen_arch = custom_arch.strip() or arch
        weights = weights_choice
        if weights_choice == "path":
            weights = str(guard.check_path(weights_path, kind="file", what="weights file"))
        if weights_choice == "package" and packaged_weights_for(chosen_arch) is None:
            raise WildidError(f"packaged weights exist for tf_efficientnet_lite0 and tf_efficientnet_lite2 only; for {chosen_arch} pick a "
                              f"local weights file, the hub, or none (random init) under Advanced")
        config = tr.TrainConfig(arch=chosen_arch, mode=mode, weights=weights or None, epochs=int(epochs) or None,
                                folds=int(folds), nir=nir, batch_size=int(batch_size), unfreeze=int(unfreeze),
                                step=int(step), views=views)
        tr.resolve_weights(config.arch, config.weights)
        data = tr.load_labelled(data_path, groups=groups.strip() or None)
        guard.check_paths(sample.path for sample in data.samples)  # a CSV may list any path
        tr.check_data(data, config.folds)
        command = tr.command_line(str(data_path), str(out), config, groups=groups.strip() or None, overwrite=overwrite)
        if runs.busy(name.strip()):
            raise WildidError(f"a training run to '{name.strip()}' is already running: it is shown below; stop it or "
                              f"choose another model name")
        tr.check_out(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        space.remember(out)
        attached = runs.start(out.name, data, config, out, command, overwrite,
                              meta={"data": str(data_path), "folder": (from_review or {}).get("folder", ""), "owner": user})
    except WildidError as exc:
        ui.show_error(exc)
    else:
        st.session_state[JOB_KEY] = attached.name
        st.query_params["run"] = attached.name
        busy = True


def draw_curves(events) -> None:
    """Loss and accuracy per epoch, one colour per fold, dashed = held-out (plain graph objects: fast redraws)."""
    from plotly.subplots import make_subplots

    rows = tr.curve_rows(events)
    if not rows:
        return
    series: dict[tuple, list] = {}
    for row in rows:
        series.setdefault((row["run"], row["metric"], row["split"]), []).append((row["epoch"], row["value"]))
    runs = list(dict.fromkeys(row["run"] for row in rows))
    palette = px.colors.qualitative.Plotly
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for (run, metric, split), points in series.items():
        colour = palette[runs.index(run) % len(palette)]
        figure.add_scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="lines", name=f"{run}, {split}",
            line={"color": colour, "dash": "dash" if split == "held-out" else "solid"},
            legendgroup=run, showlegend=metric == "loss", row=1, col=1 if metric == "loss" else 2,
        )
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(height=360, margin={"t": 40, "b": 40})
    st.plotly_chart(figure)


def show_results(result: tr.TrainResult) -> None:
    card, metrics = result.card, result.metrics
    st.success(ui.md(f"Saved model {card.name} ({card.arch}, {len(result.data.samples)} images) to {card.folder} in "
                     f"{result.seconds:.0f} s. Pick it in the sidebar model picker."))
    for warning in result.warnings:
        st.warning(ui.md(warning))
    if "fold_accuracy" not in metrics:
        st.info("Not validated (0 folds): no accuracy to report.")
        return
    cols = st.columns(4)
    cols[0].metric("Mean accuracy", f"{metrics['accuracy']:.1%}", help=metrics["measured_by"])
    cols[1].metric("Std over folds", f"{metrics['accuracy_std']:.1%}")
    cols[2].metric("Macro F1", f"{metrics['macro_f1']:.3f}")
    if "ece" in metrics:
        cols[3].metric("Calibration error (ECE)", f"{metrics['ece']:.3f}",
                       help=f"before temperature scaling {metrics['ece_uncalibrated']:.3f}; temperature {card.temperature:.2f}, "
                            f"views {card.views}")
    st.caption(ui.md(metrics["measured_by"] + " · folds: " + ", ".join(f"{a:.1%}" for a in metrics["fold_accuracy"])))
    left, right = st.columns(2)
    left.dataframe([{"class": c, **row} for c, row in metrics["per_class"].items()], hide_index=True)
    cm = metrics["confusion_matrix"]
    heat = px.imshow(cm["matrix"], x=cm["labels"], y=cm["labels"], text_auto=True, color_continuous_scale="Blues",
                     labels={"x": "predicted", "y": "true", "color": "images"}, title="Confusion matrix (held-out folds)")
    right.plotly_chart(heat)
    st.code(card.provenance.get("command", ""), language="bash")


def classify_folder_button(run) -> None:
    """After training on a project's reviewed frames: run the new model over the same folder."""
    folder = run.meta.get("folder")
    if not folder or run.job.result is None:
        return
    def pick_model() -> None:  # a callback runs before the sidebar picker exists, so it may set it
        st.session_state.update({ui.MODEL_KEY: run.name, ui.PICKER_KEY: run.name, "batch_handoff": folder})

    if st.button(f"Classify the folder with {run.name}", type="primary", key="train_to_batch", on_click=pick_model,
                 help=ui.md(f"Batch on {folder} with the new model (its results go beside the first run's)")):
        st.switch_page("app_pages/batch.py", query_params={"folder": folder})


others = [run for run in runs.all() if visible(run) and (attached is None or run.name != attached.name)]
if others:
    with st.expander(f"Other training runs on this server ({len(others)})"):
        for run in others:
            state = "running" if run.running else ("done" if run.job.result is not None else "ended")
            if st.button(f"{run.name} ({state})", key=f"train_open_{run.name}"):
                st.query_params["run"] = run.name
                st.session_state[JOB_KEY] = run.name
                st.rerun()

if attached is not None:
    job = attached.job
    st.subheader(ui.md(f"Run: {attached.name}"))

    @st.fragment(run_every=1.5 if busy else None)
    def live() -> None:
        events, features = job.snapshot()
        if job.running:
            if features is not None and features.total:
                label = "computing features" if job.config.mode == "linear" else "reading images"
                st.progress(min(1.0, features.done / features.total), text=f"{label}: {features.done}/{features.total}")
            last = next((e for e in reversed(events) if e.stage == "epoch"), None)
            if last is not None:
                where = f"fold {last.fold}/{last.folds}" if last.fold else "final model on all data"
                st.progress(last.epoch / last.epochs, text=f"{where}: epoch {last.epoch}/{last.epochs}, loss {last.loss:.3f}")
            if job.stop_event.is_set():
                st.info("Stopping after the current step…")
            elif st.button("Stop training", key="train_stop"):
                job.stop()
                st.info("Stopping after the current step…")
        draw_curves(events)
        if not job.running and st.session_state.get("_train_shown") != (attached.name, id(job)):
            st.session_state["_train_shown"] = (attached.name, id(job))
            st.rerun()  # whole app: the sidebar then lists the new model

    live()
    if not job.running:
        if job.result is not None:
            show_results(job.result)
            classify_folder_button(attached)
        elif job.stopped:
            st.warning(ui.md(job.error))
        elif job.error:
            ui.show_error(job.error)
