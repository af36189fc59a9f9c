"""What every page shares: the model picker, the cached model loader, error display.

Pages stay thin: widgets plus calls into ``wildid``.  This module is the only place the
app touches the model registry's cache, so tests can patch ``load_model``.
"""

from __future__ import annotations

import re

import streamlit as st

from wildid import registry
from wildid.cards import ModelCard, headline_metrics
from wildid.errors import WildidError

MODEL_KEY = "model_name"
PICKER_KEY = "_model_picker"
# What gives untrusted text meaning in Streamlit's Markdown (links, HTML, code, emphasis, tables,
# headings, maths, entities, shortcodes): escaped with a backslash so it shows as itself.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]<>#|~$&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|:(?=[\w/+-])")


def md(text) -> str:
    """``text`` escaped for any Streamlit element that renders Markdown: shown as typed."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split()))


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
        return f"{card.display_title}" + ("" if card.has_weights else " (no weights yet)")

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
    st.info(f"“{card.display_title}” has no weights yet: train it on your labelled photos, "
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
        st.error(str(exc))
        return None


def show_card(card: ModelCard, expanded: bool = False) -> None:
    with st.expander(f"Model card: {card.display_title}", expanded=expanded):
        cols = st.columns(4)
        cols[0].metric("Task", card.task)
        cols[1].metric("Architecture", card.arch)
        cols[2].metric("Classes", card.num_classes)
        cols[3].metric("Input", f"{card.input_size[1]}px {card.channel_mode.upper()}")
        if card.description:
            st.write(card.description)
        metrics = headline_metrics(card.metrics)
        if metrics:
            st.write(f"**Metrics:** {metrics}")
        if card.metrics.get("measured_by") or card.metrics.get("note"):
            st.caption(card.metrics.get("measured_by") or card.metrics.get("note"))
        st.caption("Classes: " + ", ".join(card.classes[:40]) + (" …" if card.num_classes > 40 else ""))


def show_error(exc: Exception) -> None:
    st.error(str(exc))


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
            st.error(str(exc))
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
