"""Re-ID: which known individual is this animal?  Top matches from a gallery, side by side;
confirm a match or register a new individual (the gallery only ever grows)."""

import streamlit as st

import ui
from wildid import reid
from wildid.errors import WildidError
from wildid.imaging import MAX_UPLOAD_IMAGE_MB, check_upload, load_image
from wildid.registry import find_card

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp"]

st.title("Re-identify an individual")
st.caption(
    "Matches a photo against a gallery of known individuals by embedding similarity; below the "
    "gallery's threshold the animal is reported as unknown (possibly a new individual)."
)


GENERIC_NOTE = ("generic starting point: ImageNet features, not trained on individuals; "
                "train your own with `wildid train-reid DATA --out models/NAME`")


def model_label(card) -> str:
    generic = card.provenance.get("generic")
    return card.display_title + (" (generic starting point)" if generic else "")


def new_gallery_form() -> None:
    cards = [c for c in reid.embedding_cards() if c.has_weights]
    if not cards:
        st.info("No re-identification model installed: train one with "
                "`wildid train-reid DATA --out models/NAME` (one sub-folder of images per individual).")
        return
    by_name = {c.name: c for c in cards}
    with st.form("reid_new_gallery", clear_on_submit=True):
        name = st.text_input("Gallery name", key="reid_new_gallery_name")
        model = st.selectbox("Embedding model", list(by_name), format_func=lambda n: model_label(by_name[n]),
                             key="reid_new_gallery_model")
        if any(c.provenance.get("generic") for c in cards):
            st.caption("The generic model is a " + GENERIC_NOTE + ".")
        if st.form_submit_button("Create gallery"):
            try:
                reid.Gallery.create(name, find_card(model))
            except WildidError as exc:
                st.error(str(exc))
            else:
                # The gallery select box already exists in this run: choose the new gallery on the next one.
                st.session_state["reid_select_next"] = reid.check_name(name)
                st.rerun()


# Choices made by the previous run (a new gallery, a registered individual), applied before the
# widgets that show them are created.
if "reid_select_next" in st.session_state:
    st.session_state["reid_gallery"] = st.session_state.pop("reid_select_next")
if st.session_state.pop("reid_clear_new_name", False):
    st.session_state.pop("reid_new_name", None)
for message in st.session_state.pop("reid_flash", []):
    st.success(message)

names = reid.list_galleries()
if not names:
    st.info(f"No galleries yet in {reid.galleries_root()}. Create one here, or from labelled folders with "
            "`wildid gallery add FOLDER --gallery NAME --model MODEL` (one sub-folder per individual).")
    new_gallery_form()
    st.stop()

gallery_name = st.selectbox("Gallery", names, key="reid_gallery")
with st.expander("New gallery"):
    new_gallery_form()
try:
    gallery = reid.Gallery.open(gallery_name)
    card = find_card(gallery.model)
except WildidError as exc:
    st.error(str(exc))
    st.stop()
embedder = ui.get_predictor(card)
summary = gallery.summary()
threshold = gallery.threshold(card)
cols = st.columns(4)
cols[0].metric("Individuals", summary["individuals"])
cols[1].metric("Images", summary["images"])
cols[2].metric("Threshold", f"{threshold:.3f}")
cols[3].metric("Model", model_label(card))
if card.provenance.get("generic"):
    st.caption("This gallery uses the " + GENERIC_NOTE + ".")
st.caption(f"Threshold from the {gallery.meta.get('threshold_source', 'model card')}; "
           f"gallery folder {gallery.folder}")

upload_col, top_k_col = st.columns([3, 1])
upload = upload_col.file_uploader("Photo of the animal", type=UPLOAD_TYPES, key="reid_upload",
                                  max_upload_size=MAX_UPLOAD_IMAGE_MB)
top_k = top_k_col.number_input("Matches to show", 1, 10, 4, key="reid_top_k")
if upload is None or embedder is None:
    if embedder is not None:
        st.info("Upload a photo to compare it with the gallery.")
    st.stop()

data = upload.getvalue()
try:
    check_upload(upload.name, len(data))
    image = load_image(data)
    results = reid.identify(embedder, gallery, [image], top_k=top_k) if gallery.entries else []
except WildidError as exc:
    st.error(str(exc))
    st.stop()

query_col, verdict_col = st.columns([1, 3])
query_col.image(image, caption="Query", width="stretch")
with verdict_col:
    if not results:
        st.info("The gallery is empty: register this animal as its first individual.")
    elif results[0].known:
        st.success(f"{results[0].label} (similarity {results[0].similarity:.3f} ≥ {threshold:.3f})")
    else:
        best = results[0].matches[0]
        st.warning(f"Unknown individual: the closest, {best.individual}, has similarity {best.similarity:.3f} "
                   f"< {threshold:.3f}. A new individual?")

if results:
    st.subheader("Top matches")
    match_cols = st.columns(len(results[0].matches))
    for rank, (col, match) in enumerate(zip(match_cols, results[0].matches), start=1):
        with col:
            st.image(str(match.image), caption=f"{rank}. {match.individual}", width="stretch")
            verdict = ":green[above threshold]" if match.similarity >= threshold else ":red[below threshold]"
            st.markdown(f"Similarity **{match.similarity:.3f}** · {verdict}")
            others = gallery.individuals()[match.individual]
            st.caption(f"{others} gallery image{'s' if others != 1 else ''}")
            if st.button("Confirm match", key=f"reid_confirm_{rank}", help=f"Add this photo to {match.individual}"):
                try:
                    report = gallery.add(match.individual, [data], embedder, new_individual=False,
                                         source_names=[upload.name])
                except WildidError as exc:
                    st.error(str(exc))
                else:
                    if report.added:
                        # Rerun so the counts and matches above include the photo just added.
                        st.session_state["reid_flash"] = [
                            f"Added the photo to {match.individual} in gallery {gallery.name}."]
                        st.rerun()
                    st.info(f"This photo is already filed under {match.individual}.")

st.subheader("Register a new individual")
with st.form("reid_register"):
    new_name = st.text_input("Name of the new individual", value=gallery.next_individual_name(), key="reid_new_name")
    if st.form_submit_button("Register as new individual"):
        try:
            report = gallery.add(new_name, [data], embedder, new_individual=True, source_names=[upload.name])
        except WildidError as exc:
            st.error(str(exc))
        else:
            # Rerun so the counts, the matches and the next free name reflect the new individual.
            st.session_state["reid_flash"] = [f"Registered {reid.check_name(new_name, 'individual')} in gallery "
                                              f"{gallery.name} ({len(report.added)} image)."]
            st.session_state["reid_clear_new_name"] = True
            st.rerun()
