"""wildid: identify animals from images.  Entry point: a router over app_pages/ and the frame
(sidebar model picker) that all pages share.   Run:  make run"""

import streamlit as st

import ui

st.set_page_config(page_title="wildid", page_icon="🐾", layout="wide")

pages = [
    st.Page("app_pages/identify.py", title="Identify", icon=":material/search:", default=True),
    st.Page("app_pages/batch.py", title="Batch", icon=":material/folder_open:"),
    st.Page("app_pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("app_pages/dashboard.py", title="Dashboard", icon=":material/monitoring:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/school:"),
    st.Page("app_pages/models.py", title="Models", icon=":material/model_training:"),
    st.Page("app_pages/reid.py", title="Re-ID", icon=":material/pets:"),
]
navigation = st.navigation(pages)
ui.model_picker()
st.sidebar.caption("wildid · offline animal identification")
navigation.run()
