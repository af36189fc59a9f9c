"""Models: what is installed, each model's card and metrics, and adding a checkpoint."""

from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from wildid import registry
from wildid.backbones import SUPPORTED_ARCHS
from wildid.checkpoints import CHECKPOINT_SUFFIXES
from wildid.errors import WildidError

# Weights only: TorchScript (.torchscript, .jit) holds code and is refused anyway.
UPLOAD_TYPES = ["safetensors", "pt", "pth", "bin", "ckpt"]

st.title("Models")
listing = registry.scan_models()
for problem in listing.problems:
    st.warning(ui.md(problem))

rows = [card.summary() for card in listing.cards]
st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)

for card in listing.cards:
    ui.show_card(card)
    if not card.has_weights:
        st.caption(ui.md(registry.missing_weights_message(card)))

st.subheader("Add a checkpoint")
st.write(
    "Upload weights: safetensors, or a PyTorch state_dict (.pt/.pth). They are checked by their "
    "tensor shapes alone (nothing in the file is run) and saved as safetensors with a card in your "
    "models folder, so the next load needs nothing. TorchScript and whole pickled models hold code: "
    "the app refuses them; load those from the command line with `--trust-checkpoint`."
)
st.caption(ui.md(f"New models go to {registry.app_models_root()}; bundled models are never replaced."))
with st.form("import"):
    upload = st.file_uploader("Checkpoint", type=UPLOAD_TYPES)
    # Arriving from a slot without weights (Identify's "Import a checkpoint" link): fill in its name.
    name = st.text_input("Model name", value=st.query_params.get("slot", ""), placeholder="e.g. tracks, or my-voles")
    slot_names = [c.name for c in listing.cards if not c.has_weights]
    arch = st.selectbox("Architecture", ["(from the model slot)", *SUPPORTED_ARCHS])
    classes = st.text_area("Classes (one per line, or comma-separated; empty for a model slot)")
    nir = st.checkbox("Near-infrared model (grey input)")
    submitted = st.form_submit_button("Add model")
if submitted:
    if upload is None or not name.strip():
        st.error("Choose a checkpoint file and a model name.")
    else:
        try:
            space = ui.session_space()
            folder = registry.app_model_folder(name)
            suffix = Path(upload.name).suffix.lower()
            if suffix not in CHECKPOINT_SUFFIXES:
                raise WildidError(f"expected a checkpoint file ({', '.join(UPLOAD_TYPES)})")
            space.reserve(upload.size)
            staging = space.sub("import", fresh=True)
            path = staging / f"upload{suffix}"  # our own name: the upload's name is only a label
            path.write_bytes(upload.getvalue())
            try:
                card = registry.import_checkpoint(
                    path,
                    name=folder.name,
                    arch=None if arch.startswith("(") else arch,
                    classes=registry.classes_from_text(classes),  # text only: never opened as a path
                    channel_mode="nir" if nir else None,
                    root=folder.parent,
                    source_label=f"upload {Path(upload.name).name}",
                )
            finally:
                path.unlink(missing_ok=True)
        except WildidError as exc:
            ui.show_error(exc)
        else:
            space.remember(card.folder)
            st.success(ui.md(f"Added {card.name}: {card.arch}, {card.num_classes} classes, in {card.folder}"))
            st.cache_resource.clear()
if slot_names:
    st.caption(ui.md("Model slots waiting for weights: " + ", ".join(slot_names)))
