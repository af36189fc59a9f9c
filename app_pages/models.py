"""Models: what is installed, each model's card and metrics, and adding a checkpoint."""

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from wildid import registry
from wildid.backbones import SUPPORTED_ARCHS
from wildid.cli import parse_classes
from wildid.errors import WildidError

st.title("Models")
listing = registry.scan_models()
for problem in listing.problems:
    st.warning(problem)

rows = [card.summary() for card in listing.cards]
st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)

for card in listing.cards:
    ui.show_card(card)
    if not card.has_weights:
        st.caption(registry.missing_weights_message(card))

st.subheader("Add a checkpoint")
st.write(
    "Upload a checkpoint (safetensors, state_dict .pt/.pth, or TorchScript). It is copied into "
    "`models/NAME/` with a card, so the next load needs nothing; your file is only read."
)
with st.form("import"):
    upload = st.file_uploader("Checkpoint", type=["safetensors", "pt", "pth", "bin", "ckpt"])
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
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.name).name
            path.write_bytes(upload.getvalue())
            try:
                card = registry.import_checkpoint(
                    path,
                    name=name.strip(),
                    arch=None if arch.startswith("(") else arch,
                    classes=parse_classes(classes.replace("\n", ",")),
                    channel_mode="nir" if nir else None,
                )
            except WildidError as exc:
                st.error(str(exc))
            else:
                st.success(f"Added {card.name}: {card.arch}, {card.num_classes} classes, in {card.folder}")
                st.cache_resource.clear()
if slot_names:
    st.caption("Model slots waiting for weights: " + ", ".join(slot_names))
