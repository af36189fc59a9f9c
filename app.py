"""wildid: identify animals from images.  Entry point: a router over app_pages/ and the frame
(sidebar model picker) that all pages share.   Run:  make run

Before any page runs: the listen address is checked (an open address needs an access secret:
the same rule the launcher `python -m wildid.serve` applies, repeated here for a server started
by hand), and with WILDID_ACCESS_SECRET set every new session must give it (ui.access_gate).
"""

import streamlit as st

import ui
from wildid.serve import ServeError, access_secret, check_serving

st.set_page_config(page_title="wildid", page_icon="🐾", layout="wide")

try:
    check_serving(st.get_option("server.address"), access_secret())
except ServeError as exc:
    ui.show_error(exc)
    st.stop()
if not ui.access_gate():
    st.stop()
ui.session_space()  # this session's work folder; also sweeps folders of servers that are gone

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
if ui.current_user():
    st.sidebar.caption(f"Signed in as {ui.md(ui.current_user())}")
st.sidebar.caption("wildid · offline animal identification")
navigation.run()
