"""Identify: one photo -> species, confidence, explanation and species facts.

For hikers on a phone (one column unless the screen is wide), for biologists checking a
NIR frame (crop box, CLAHE), and for workshops (Grad-CAM, filters, activation maps,
several models side by side).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

import ui
from wildid import explain, taxonomy
from wildid.errors import WildidError
from wildid import scope
from wildid.imaging import MAX_UPLOAD_IMAGE_MB, box_from_selection, check_upload, enhance_nir, load_image, upright_size

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp"]
# Shown and explained at most this big; the model itself sees input_size anyway.
DISPLAY_SIDE = 1024
SOURCES = ("Upload", "Camera", "Example")


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.glob("*.*") if p.suffix.lower().lstrip(".") in UPLOAD_TYPES)


def pick_photo() -> tuple[str, bytes] | None:
    source = st.radio("Photo from", SOURCES, horizontal=True, key="identify_source")
    if source == "Upload":
        upload = st.file_uploader("Photo (JPEG, PNG, WebP, TIFF incl. 16-bit NIR, BMP)", type=UPLOAD_TYPES,
                                  key="identify_upload", max_upload_size=MAX_UPLOAD_IMAGE_MB)
        return (upload.name, upload.getvalue()) if upload is not None else None
    if source == "Camera":
        shot = st.camera_input("Take a photo", key="identify_camera")
        return ("camera.jpg", shot.getvalue()) if shot is not None else None
    files = example_files()
    if not files:
        st.info("No example images are installed (examples/ is empty).")
        return None
    path = st.selectbox("Example", files, format_func=lambda p: p.stem.replace("_", " "), key="identify_example")
    return path.name, path.read_bytes()


def as_upload(name: str, data: bytes) -> io.BytesIO:
    """The photo's bytes as a named file object: the same bytes `wildid predict` reads from disk."""
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


def draw_crop_box(display, digest: str):
    """The photo as a plotly image; a box drawn on it (box select) is the crop, as fractions.

    Until a box is drawn the full photo is used.  A grid of faint points lies over the image
    because plotly reports selections on point traces.
    """
    import numpy as np

    width, height = display.size
    step = max(width, height) / 48
    xs, ys = np.meshgrid(np.arange(step / 2, width, step), np.arange(step / 2, height, step))
    fig = go.Figure(go.Image(z=np.asarray(display), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(size=3, color="rgba(255,255,255,0.01)")))
    fig.update_layout(dragmode="select", height=min(520, max(160, int(440 * height / max(width, 1)))),
                      margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(visible=False, range=[0, width]),
                      yaxis=dict(visible=False, range=[height, 0], scaleanchor="x"))
    st.caption("Drag a box over the animal (or its track); the prediction then uses only the box. "
               "Double-click the photo to clear it.")
    event = st.plotly_chart(fig, key=f"identify_crop_chart_{digest}", on_select="rerun", selection_mode="box",
                            config={"displayModeBar": False})
    return box_from_selection((event or {}).get("selection"), width, height)


def top_k_chart(prediction, key: str) -> None:
    labels = [label for label, _ in prediction.top_k][::-1]
    probs = [p for _, p in prediction.top_k][::-1]
    colour = "#2f6b3a" if prediction.species_confident else "#b0b4a8"
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker_color=colour,
                           text=[f"{p:.0%}" for p in probs], textposition="auto"))
    fig.add_vline(x=prediction.card.threshold, line_dash="dash", line_color="#a33",
                  annotation_text="threshold", annotation_position="top")
    fig.update_layout(height=80 + 34 * len(labels), margin=dict(l=0, r=10, t=24, b=0),
                      xaxis=dict(range=[0, 1], tickformat=".0%"), yaxis=dict(automargin=True))
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def _plain(text) -> str:
    """Markdown-escaped, so names from model cards and taxonomy files show as text, never as markup."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(text))


def show_verdict(prediction) -> None:
    if prediction.out_of_scope:
        title = ui.md(prediction.card.display_title)
        if prediction.excluded_as:  # a kind of image the card names as one it mistakes for its own
            reason = f"this looks like {ui.md(prediction.excluded_as)}, which “{title}” was not trained on"
        else:
            reason = (f"“{title}” does not recognise this kind of image (scope score {prediction.scope_score:.2f}, "
                      f"below its {prediction.card.scope_threshold:.2f})")
        st.warning(f"Not something this model was trained on: {reason}, so it gives no species answer.")
        return
    if prediction.rolled_up:
        names = taxonomy.taxonomy_for(prediction.card)
        rank = taxonomy.describe_rank(prediction.rank)
        st.info(_plain(f"{rank.capitalize()}: {taxonomy.taxon_title(prediction.taxon, names)}, "
                       f"{prediction.taxon_confidence:.0%}"))
        probability = dict(prediction.top_k)
        closest = ", ".join(f"{label} ({probability[label]:.0%})" if label in probability else label
                            for label in prediction.closest)
        st.caption(_plain(f"No single class reaches this model's {prediction.card.threshold:.0%} threshold, but "
                          f"together the classes of this {rank} do. Closest classes: {closest}."))
        return
    if prediction.uncertain:
        candidates = ui.md(", ".join(f"{label} ({p:.0%})" for label, p in prediction.top_k[:3]))
        st.warning(
            f"Uncertain: no class reaches this model's {prediction.card.threshold:.0%} threshold. "
            f"Top candidates: {candidates}"
        )
        st.caption("Try a tighter crop, the NIR enhancement, or another model.")
    else:
        st.success(ui.md(f"{prediction.label} ({prediction.confidence:.0%})"))


def facts_card(label: str, card) -> None:
    try:
        info = taxonomy.facts_for(label, card)
    except WildidError as exc:
        st.caption(ui.md(f"Species facts unavailable: {exc}"))
        return
    if info is None:
        st.caption(ui.md(f"No species facts for “{label}”."))
        return
    render_facts(info)


def render_facts(info) -> None:
    with st.container(border=True):
        st.markdown(f"#### {info.common_name} · *{info.scientific_name}*")
        if info.taxonomy is not None and info.taxonomy.rank != "species":
            st.caption(f"Group entry ({info.taxonomy.rank}): {info.taxonomy.describe()}")
        lines = [f"**Habitat:** {info.habitat}", f"**Range:** {info.range}", f"**Size:** {info.size}"]
        if info.tracks is not None:
            t = info.tracks
            lines.append(f"**Tracks:** {t.description}")
            lines.append(
                f"- Print: {_clause(t.print_size)}\n- Toes: {t.toes_front} front, {t.toes_hind} hind\n"
                f"- Claw marks: {_clause(t.claw_marks)}\n- Gait: {_clause(t.gait)}"
            )
        lines.append("**Look-alikes:**\n" + "\n".join(f"- {_clause(item)}" for item in info.look_alikes))
        lines.append(f"**Did you know?** {info.notable_fact}")
        st.markdown("\n\n".join(lines))


def _clause(text: str) -> str:
    """One fact per list item, without a doubled full stop."""
    return text.strip().rstrip(".")


def suggest_models(image, current: str, also: bool = False) -> None:
    """Other installed models that say they know this kind of image, with a button to switch.

    ``also``: the current model answered too; mention another model only when one fits, quietly.
    """
    # Only models with a scope check can say "I know this kind of image".
    candidates = [c for c in ui.available_cards()
                  if c.name != current and c.has_weights and c.kind == "classifier" and c.scope_kind]
    predictors = [p for p in (ui.get_predictor(c, explain_missing=False) for c in candidates) if p is not None]
    try:
        fits = scope.better_fits(image, predictors)
    except WildidError as exc:
        st.caption(ui.md(f"Could not ask the other models: {exc}"))
        return
    if not fits:
        if not also:
            st.caption("No other installed model recognises this kind of image either.")
        return
    best = fits[0]
    if also:
        st.caption(ui.md(f"“{best.card.display_title}” was also trained on images like this one "
                         f"(it would say {best.label}, {best.confidence:.0%})."))
    else:
        st.info(ui.md(f"“{best.card.display_title}” was trained on images like this one "
                      f"(it would say {best.label}, {best.confidence:.0%})."))
    st.button(ui.md(f"Use {best.card.display_title}"), key="identify_switch_model", on_click=ui.switch_model,
              args=(best.card.name,), type="primary")


def show_group(taxon: str, rank: str, card) -> None:
    """What the group is, and its members a hiker is likely to meet, so the person can finish by eye."""
    info = taxonomy.group_facts(taxon)
    if info is not None:
        render_facts(info)
    else:
        st.caption(_plain(f"No facts for the {taxonomy.describe_rank(rank)} {taxon}."))
    show_members(taxon, rank, card)


def show_members(taxon: str, rank: str, card) -> None:
    groups = taxonomy.members_by_family(taxon)
    if not groups:
        return
    count = sum(len(members) for _, members in groups)
    st.markdown(f"**Members you may meet in North America or Europe** ({count}): compare them by eye.")
    if card.task == "tracks":
        rows = [{"species": f"{info.common_name} ({info.scientific_name})", "toes front": info.tracks.toes_front,
                 "toes hind": info.tracks.toes_hind, "print size": info.tracks.print_size}
                for _, members in groups for info in members if info.tracks is not None]
        if rows:
            st.dataframe(rows, hide_index=True)
    for family, members in groups:
        if rank in ("order", "class") and family:
            st.caption(_plain(taxonomy.taxon_title(family, taxonomy.taxonomy_for(card))))
        for info in members:
            with st.expander(f"{info.common_name} · {info.scientific_name}"):
                render_facts(info)


def show_facts(prediction) -> None:
    if prediction.out_of_scope:
        return
    shown = set()
    if prediction.rolled_up:
        st.subheader(f"About this {taxonomy.describe_rank(prediction.rank)}")
        show_group(prediction.taxon, prediction.rank, prediction.card)
    elif not prediction.uncertain:
        st.subheader("About this animal")
        facts_card(prediction.label, prediction.card)
        shown.add(prediction.label)
        if prediction.rank not in ("", "species"):  # the class itself is a group: "canid", ImageNet "badger"
            show_members(prediction.taxon, prediction.rank, prediction.card)
    others = [(label, p) for label, p in prediction.top_k[:3] if label not in shown]
    if others:
        st.caption("Facts for the top candidates (open to compare):")
    for label, p in others:
        with st.expander(ui.md(f"{label} ({p:.0%})")):
            facts_card(label, prediction.card)


def show_grad_cam(predictor, display, prediction) -> None:
    try:
        result = explain.grad_cam(predictor, display, target=prediction.label)
    except WildidError as exc:
        ui.show_error(exc)
        return
    if result.heatmap.max() <= 0:
        st.info("Grad-CAM found no positive evidence for this class in the image.")
        return
    st.image(explain.overlay(display, result.heatmap), width="stretch",
             caption=f"Grad-CAM for “{ui.md(result.label)}” (layer {ui.md(result.layer)}): red = strongest evidence")


def workshop(predictor, display) -> None:
    panel = st.expander("Workshop: inside the network", key="identify_workshop", on_change="rerun")
    if not panel.open:
        return
    with panel:
        model = getattr(predictor, "model", None)
        if model is None:
            st.info("Filters and activations need the torch back end.")
            return
        try:
            filters, text = explain.first_layer_filters(model)
            st.image(filters, caption=f"First-layer filters. {text}")
            st.caption("Early filters are generic: edges, colour blobs and stripes, the same for any photo.")
            layers = explain.layer_choices(model, predictor.card.input_size)
            layer = st.select_slider("Layer (shallow → deep)", options=layers, value=layers[len(layers) // 2],
                                     key="identify_layer")
            maps, text = explain.activation_maps(model, explain.preprocess_for(predictor, display), layer)
        except WildidError as exc:
            ui.show_error(exc)
            return
        st.image(maps, caption=f"Activation maps. {text}")
        st.caption("Deep layers respond to larger, species-specific parts; their maps are coarse.")


def compare(models: list[str], image) -> None:
    by_name = {c.name: c for c in ui.available_cards()}
    columns = st.columns(len(models))
    for column, name in zip(columns, models):
        with column:
            card = by_name[name]
            st.markdown(f"**{ui.md(card.display_title)}**")
            predictor = ui.get_predictor(card)
            if predictor is None:
                continue
            try:
                [prediction] = predictor.predict([image], top_k=5)
            except WildidError as exc:
                ui.show_error(exc)
                continue
            show_verdict(prediction)
            top_k_chart(prediction, key=f"identify_compare_chart_{name}")


# --- page --------------------------------------------------------------------------------
st.title("Identify an animal")
card = ui.current_card()
if card is not None:
    ui.show_card(card)
predictor = ui.get_predictor(card)

photo = pick_photo()
if photo is None:
    st.info("Upload a photo, take one with the camera, or pick an example.")
    st.stop()
name, data = photo
digest = hashlib.sha1(data).hexdigest()[:12]
try:
    check_upload(name, len(data))
except WildidError as exc:
    ui.show_error(exc)
    st.stop()
if predictor is None:
    # The slot has no weights (explained above); the photo can still go to another model.
    if card is not None and card.kind == "classifier":
        suggest_models(as_upload(name, data), card.name)
    st.stop()

others = [c for c in ui.available_cards() if c.has_weights and c.name != card.name and c.kind == "classifier"]
with st.expander("Options: crop · NIR enhancement · compare models"):
    use_crop = st.toggle("Crop: draw a box on the photo", key="identify_use_crop")
    use_nir = st.toggle("Enhance a dark / NIR frame (CLAHE)", key="identify_nir")
    if others:
        compared = st.multiselect("Compare with (side by side)", [c.name for c in others], max_selections=2,
                                  format_func=lambda n: next(c.display_title for c in others if c.name == n),
                                  key="identify_compare")
    else:
        compared = []
        slots = [c.name for c in ui.available_cards() if not c.has_weights]
        st.caption("Compare needs a second model with weights: only this one has weights"
                   + (f" (slots still without weights: {', '.join(slots)})." if slots else "."))
try:
    # Shown at screen size; the model gets its own decode of the same bytes (predictor.load), the
    # one path that `wildid predict` and `wildid batch` take too.
    display = load_image(as_upload(name, data), draft_size=DISPLAY_SIDE)
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    width, height = upright_size(as_upload(name, data))
except WildidError as exc:
    ui.show_error(exc)
    st.stop()

photo_column, result_column = st.columns(2)
with photo_column:
    box = draw_crop_box(display, digest) if use_crop else None
try:
    working = predictor.load(as_upload(name, data), box=box)
    if use_nir:
        working = enhance_nir(working)
    [prediction] = predictor.predict([working], top_k=5)
except WildidError as exc:
    ui.show_error(exc)
    st.stop()

shown = working.copy() if (box or use_nir) else display
shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
with photo_column:
    show_cam = st.toggle("Show what the model looked at (Grad-CAM)", key="identify_cam")
    if show_cam:
        show_grad_cam(predictor, shown, prediction)
    elif not use_crop or box:
        details = [name, f"{width}x{height}"] + (["crop"] if box else []) + (["CLAHE"] if use_nir else [])
        st.image(shown, width="stretch", caption=ui.md(" · ".join(details)))  # the file name is the uploader's
with result_column:
    show_verdict(prediction)
    if prediction.out_of_scope:
        suggest_models(working, card.name)
        with st.expander("What it would guess anyway"):
            top_k_chart(prediction, key="identify_chart")
    else:
        top_k_chart(prediction, key="identify_chart")
        if card.task == "animals":  # the general model: a specialised model may know this photo better
            suggest_models(working, card.name, also=True)
show_facts(prediction)
workshop(predictor, shown)
if compared:
    st.subheader("Side by side")
    compare([card.name, *compared], working)
