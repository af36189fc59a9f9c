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
from wildid.imaging import crop, enhance_nir, load_image

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
        upload = st.file_uploader("Photo (JPEG, PNG, WebP, TIFF incl. 16-bit NIR, BMP)", type=UPLOAD_TYPES, key="identify_upload")
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


def decode(name: str, data: bytes, full_resolution: bool, draft_size: int) -> object:
    """The photo as RGB; JPEGs draft-decoded unless a crop box needs original pixels."""
    buffer = io.BytesIO(data)
    buffer.name = name
    return load_image(buffer, draft_size=None if full_resolution else max(draft_size, DISPLAY_SIDE))


def crop_box(image, digest: str) -> tuple[int, int, int, int]:
    """Typed box in the photo's pixels; defaults to the central half, reset per photo."""
    st.caption(f"Box in pixels of the {image.width}x{image.height} photo (x, y = top-left corner).")
    cols = st.columns(4)
    defaults = (image.width // 4, image.height // 4, image.width // 2, image.height // 2)
    labels = ("x", "y", "width", "height")
    return tuple(
        int(col.number_input(label, min_value=0, value=default, step=10, key=f"identify_crop_{label}_{digest}"))
        for col, label, default in zip(cols, labels, defaults)
    )


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
        candidates = ", ".join(f"{label} ({p:.0%})" for label, p in prediction.top_k[:3])
        st.warning(
            f"Uncertain: no class reaches this model's {prediction.card.threshold:.0%} threshold. "
            f"Top candidates: {candidates}"
        )
        st.caption("Try a tighter crop, the NIR enhancement, or another model.")
    else:
        st.success(f"{prediction.label} ({prediction.confidence:.0%})")


def facts_card(label: str, card) -> None:
    try:
        info = taxonomy.facts_for(label, card)
    except WildidError as exc:
        st.caption(f"Species facts unavailable: {exc}")
        return
    if info is None:
        st.caption(f"No species facts for “{_plain(label)}”.")
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
        with st.expander(f"{label} ({p:.0%})"):
            facts_card(label, prediction.card)


def show_grad_cam(predictor, display, prediction) -> None:
    try:
        result = explain.grad_cam(predictor, display, target=prediction.label)
    except WildidError as exc:
        st.error(str(exc))
        return
    if result.heatmap.max() <= 0:
        st.info("Grad-CAM found no positive evidence for this class in the image.")
        return
    st.image(explain.overlay(display, result.heatmap), width="stretch",
             caption=f"Grad-CAM for “{result.label}” (layer {result.layer}): red = strongest evidence")


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
            st.error(str(exc))
            return
        st.image(maps, caption=f"Activation maps. {text}")
        st.caption("Deep layers respond to larger, species-specific parts; their maps are coarse.")


def compare(models: list[str], image) -> None:
    by_name = {c.name: c for c in ui.available_cards()}
    columns = st.columns(len(models))
    for column, name in zip(columns, models):
        with column:
            card = by_name[name]
            st.markdown(f"**{card.display_title}**")
            predictor = ui.get_predictor(card)
            if predictor is None:
                continue
            try:
                [prediction] = predictor.predict([image], top_k=5)
            except WildidError as exc:
                st.error(str(exc))
                continue
            show_verdict(prediction)
            top_k_chart(prediction, key=f"identify_compare_chart_{name}")


# --- page --------------------------------------------------------------------------------
st.title("Identify an animal")
card = ui.current_card()
if card is not None:
    ui.show_card(card)
predictor = ui.get_predictor(card)
if predictor is None:
    st.stop()

photo = pick_photo()
if photo is None:
    st.info("Upload a photo, take one with the camera, or pick an example.")
    st.stop()
name, data = photo
digest = hashlib.sha1(data).hexdigest()[:12]

with st.expander("Options: crop box · NIR enhancement · compare models"):
    use_crop = st.toggle("Predict on a crop box", key="identify_use_crop")
    use_nir = st.toggle("Enhance a dark / NIR frame (CLAHE)", key="identify_nir")
    others = [c for c in ui.available_cards() if c.has_weights and c.name != card.name]
    compared = st.multiselect("Compare with (side by side)", [c.name for c in others], max_selections=2,
                              format_func=lambda n: next(c.display_title for c in others if c.name == n),
                              key="identify_compare")
try:
    image = decode(name, data, full_resolution=use_crop, draft_size=predictor.draft_size)
except WildidError as exc:
    st.error(str(exc))
    st.stop()
box = crop_box(image, digest) if use_crop else None

try:
    working = crop(image, box) if box else image
    if use_nir:
        working = enhance_nir(working)
    [prediction] = predictor.predict([working], top_k=5)
except WildidError as exc:
    st.error(str(exc))
    st.stop()

display = working.copy()
display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
photo_column, result_column = st.columns(2)
with photo_column:
    show_cam = st.toggle("Show what the model looked at (Grad-CAM)", key="identify_cam")
    if show_cam:
        show_grad_cam(predictor, display, prediction)
    else:
        details = [name, f"{image.width}x{image.height}"] + (["crop"] if box else []) + (["CLAHE"] if use_nir else [])
        st.image(display, width="stretch", caption=" · ".join(details))
with result_column:
    show_verdict(prediction)
    top_k_chart(prediction, key="identify_chart")
show_facts(prediction)
workshop(predictor, display)
if compared:
    st.subheader("Side by side")
    compare([card.name, *compared], working)
