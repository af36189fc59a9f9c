"""What every page shares: the model picker, the cached model loader, error display, the
session's private work folder, the access gate, and Markdown escaping.

Pages stay thin: widgets plus calls into ``wildid``.  This module is the only place the
app touches the model registry's cache, so tests can patch ``load_model``.

Untrusted strings (file, class, report, model and person names) reach the browser only
through :func:`md` (escaped, when they sit inside Markdown: alerts, captions, headings,
widget labels, image captions) or through plain-text elements (st.text, st.code, dataframes).
"""

from __future__ import annotations

import re
import time

import streamlit as st

from wildid import registry
from wildid.cards import ModelCard, headline_metrics
from wildid.errors import WildidError
from wildid.serve import access_secret, secret_matches
from wildid.sessions import SessionSpace, sweep_stale

MODEL_KEY = "model_name"
PICKER_KEY = "_model_picker"
SPACE_KEY = "_wildid_session_space"
USER_KEY = "wildid_user"
# What gives untrusted text meaning in Streamlit's Markdown: links and images need [ ], HTML and
# autolinks < >, code ` , emphasis * ~ and _ at a word's edge, tables |, headings #, maths $,
# entities &, :emoji: / :material/icon: shortcodes (a colon before a word).  Each is escaped with a
# backslash and shows as itself.  Left alone because they form nothing there: ( ) ! - . , an
# underscore inside a word (snake_case, file names) and a colon before a space.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]<>#|~$&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|:(?=[\w/+-])")
# A failed access attempt costs this long (per session), so guessing online is slow.
FAILED_LOGIN_DELAY = 1.0


def md(text) -> str:
    """``text`` escaped for any Streamlit element that renders Markdown: shown as typed, never as
    a link, an image, HTML or formatting."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split()))


def show_error(exc: Exception | str) -> None:
    st.error(md(exc))


@st.cache_resource(show_spinner=False)
def _swept_at_start() -> int:
    """Once per server process: remove the work folders of sessions of servers that are gone."""
    return len(sweep_stale())


def session_space() -> SessionSpace:
    """This browser session's private work folder (uploads, zips, results); removed when the
    session ends, and quota-limited."""
    _swept_at_start()
    space = st.session_state.get(SPACE_KEY)
    if space is None or not space.alive:
        space = SessionSpace()
        st.session_state[SPACE_KEY] = space
    return space


def current_user() -> str | None:
    """The name given at the access gate (None when the app runs without an access secret)."""
    return st.session_state.get(USER_KEY)


def access_gate() -> bool:
    """With WILDID_ACCESS_SECRET set: True once this session has given the secret, else draws
    the sign-in form and returns False (the caller stops before any page runs)."""
    secret = access_secret()
    if not secret or st.session_state.get(USER_KEY):
        return True
    st.title("wildid")
    st.caption("This wildid server is shared. Enter your name and the access secret the organiser gave you.")
    with st.form("access_gate"):
        name = st.text_input("Your name", key="access_name", max_chars=60)
        given = st.text_input("Access secret", key="access_secret", type="password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        name = " ".join(name.split())
        if not secret_matches(given, secret):
            time.sleep(FAILED_LOGIN_DELAY)
            st.error("Wrong access secret.")
        elif not name:
            st.error("Enter your name: it is recorded with the labels you give.")
        else:
            st.session_state[USER_KEY] = name
            st.rerun()
    return False


@st.cache_resource(show_spinner=False)
def training_runs():
    """Every training run of this server, keyed by output name: a reload or another tab re-attaches."""
    from wildid.jobs import TrainingRuns

    return TrainingRuns()


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def load_model(name: str, backend: str = "torch"):
    """One shared predictor per model for all sessions (read-only after loading)."""
    return registry.load_predictor(name, backend=backend)


def available_cards() -> list[ModelCard]:
    return registry.list_cards()


def current_model_name() -> str:
    return st.session_state.get(MODEL_KEY, registry.DEFAULT_MODEL)


def model_picker(container=None) -> ModelCard | None:
    """The sidebar select box; the choice is remembered across pages in session state."""
    container = container or st.sidebar
    # Re-ID embeddings (e.g. the always-installed generic one) are picked per gallery on the Re-ID page.
    cards = [card for card in available_cards() if card.kind == "classifier"]
    if not cards:
        container.error("No models installed: add a folder with card.toml under models/.")
        return None
    names = [card.name for card in cards]
    by_name = {card.name: card for card in cards}
    # Seed the widget through session state, not `index=`: a changing index would give the
    # widget a new identity on every choice and reset it.
    if st.session_state.get(PICKER_KEY) not in names:
        wanted = current_model_name()
        st.session_state[PICKER_KEY] = wanted if wanted in names else names[0]

    def label(name: str) -> str:
        card = by_name[name]
        return f"{card.display_title}" + ("" if card.has_weights else " (no weights yet)")  # options are plain text

    choice = container.selectbox("Model", names, format_func=label, key=PICKER_KEY)
    st.session_state[MODEL_KEY] = choice
    return by_name[choice]


def current_card() -> ModelCard | None:
    name = current_model_name()
    for card in available_cards():
        if card.name == name:
            return card
    cards = available_cards()
    return cards[0] if cards else None


def switch_model(name: str) -> None:
    """Button callback: make ``name`` the sidebar's model (callbacks run before the picker exists)."""
    st.session_state[MODEL_KEY] = name
    st.session_state[PICKER_KEY] = name


def page_link(page: str, label: str, icon: str | None = None, **query: str) -> None:
    """``st.page_link`` into the app's navigation; a page run on its own (AppTest) has no
    navigation to link into, so it gets the same link as plain Markdown."""
    from urllib.parse import urlencode

    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, label=label, icon=icon, query_params=query or None)
    except StreamlitAPIException:
        stem = page.rsplit("/", 1)[-1].removesuffix(".py")
        st.markdown(f"[{label}](/{stem}{'?' + urlencode(query) if query else ''})")


def missing_weights(card: ModelCard) -> None:
    """One line on a slot without weights, and the two ways to give it some."""
    st.info(f"“{md(card.display_title)}” has no weights yet: train it on your labelled photos, "
            f"or import a checkpoint for it.")
    cols = st.columns(2)
    with cols[0]:
        page_link("app_pages/train.py", f"Train {card.name}", ":material/school:", slot=card.name)
    with cols[1]:
        page_link("app_pages/models.py", "Import a checkpoint", ":material/upload:", slot=card.name)


def get_predictor(card: ModelCard | None, backend: str = "torch", explain_missing: bool = True):
    """The loaded predictor, or None after telling the user why (slot without weights, bad file)."""
    if card is None:
        st.error("No model selected.")
        return None
    if not card.has_weights:
        if explain_missing:
            missing_weights(card)
        return None
    try:
        return load_model(card.name, backend)
    except WildidError as exc:
        show_error(exc)
        return None


def show_card(card: ModelCard, expanded: bool = False) -> None:
    # Cards of imported models carry names and class lists typed by whoever imported them.
    with st.expander(f"Model card: {md(card.display_title)}", expanded=expanded):
        cols = st.columns(4)
        cols[0].metric("Task", card.task)
        cols[1].metric("Architecture", card.arch)
        cols[2].metric("Classes", card.num_classes)
        cols[3].metric("Input", f"{card.input_size[1]}px {card.channel_mode.upper()}")
        if card.description:
            st.text(card.description)
        metrics = headline_metrics(card.metrics)
        if metrics:
            st.markdown(f"**Metrics:** {md(metrics)}")
        if card.metrics.get("measured_by") or card.metrics.get("note"):
            st.caption(md(card.metrics.get("measured_by") or card.metrics.get("note")))
        st.caption(md("Classes: " + ", ".join(card.classes[:40]) + (" …" if card.num_classes > 40 else "")))


def camtrap_export(results_path, key: str, empty_threshold: float | None = None) -> None:
    """Button: the results (+ review journal) as a Camtrap DP 1.0 zip, what to fill in, download."""
    from pathlib import Path

    from wildid.camtrap import export_zip

    results_path = Path(results_path)
    stamp = results_path.stat().st_mtime_ns if results_path.exists() else 0
    state_key = f"{key}_camtrap"
    if st.button("Export Camtrap DP", key=f"{key}_camtrap_button",
                 help="a Camera Trap Data Package (TDWG standard) for GBIF, Agouti, Wildlife Insights"):
        try:
            data, summary = export_zip(results_path, empty_threshold=empty_threshold)
            st.session_state[state_key] = (str(results_path), stamp, data, summary)
        except (WildidError, OSError) as exc:
            show_error(exc)
    saved = st.session_state.get(state_key)
    if not saved or saved[:2] != (str(results_path), stamp):
        return
    _, _, data, summary = saved
    st.success("Camtrap DP 1.0 package: " + ", ".join(f"{n} {t}" for t, n in summary.counts.items()))
    if summary.to_fill:
        st.warning("Required fields to fill in before publishing (the results could not give them):")
        st.text("\n".join(f"• {item}" for item in summary.to_fill))  # labels are untrusted text
    if summary.notes:
        st.caption("Defaults to check:")
        st.text("\n".join(f"• {note}" for note in summary.notes))
    st.download_button("Download Camtrap DP (zip)", data, file_name=f"{results_path.stem}-camtrap-dp.zip",
                       mime="application/zip", key=f"{key}_camtrap_download")
