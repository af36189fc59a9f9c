"""wildid: identify animals from images.  Entry point: a router over pages/ and the frame
(sidebar model picker) that all pages share.   Run:  make run"""

import streamlit as st

import ui

st.set_page_config(page_title="wildid", page_icon="🐾", layout="wide")

pages = [
    st.Page("pages/identify.py", title="Identify", icon="🔎", default=True),
    st.Page("pages/batch.py", title="Batch", icon="🗂️"),
    st.Page("pages/models.py", title="Models", icon="🧠"),
    st.Page("pages/review.py", title="Review", icon="✅"),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/dashboard.py", title="Dashboard", icon="📊"),
    st.Page("pages/reid.py", title="Re-ID", icon="🐆"),
]
navigation = st.navigation(pages)
ui.model_picker()
st.sidebar.caption("wildid · offline animal identification")
navigation.run()
