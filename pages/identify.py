"""Identify: one photo -> species, confidence and facts."""

import streamlit as st

import ui
from wildid.errors import WildidError
from wildid.imaging import load_image

st.title("Identify an animal")
card = ui.current_card()
if card is not None:
    ui.show_card(card)
predictor = ui.get_predictor(card)

upload = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp"])
if upload is not None and predictor is not None:
    try:
        image = load_image(upload)
        [prediction] = predictor.predict([image], top_k=5)
    except WildidError as exc:
        st.error(str(exc))
    else:
        st.image(image, width=320)
        if prediction.uncertain:
            st.warning(f"Uncertain: best guess {prediction.label} ({prediction.confidence:.0%})")
        else:
            st.success(f"{prediction.label} ({prediction.confidence:.0%})")
        st.dataframe([{"label": label, "probability": round(p, 4)} for label, p in prediction.top_k])
