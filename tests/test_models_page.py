"""AppTest of the Models page and of the app frame."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from wildid.backbones import build_model


def test_models_page_lists_cards(models_root):
    at = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "models.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert {"tiny", "general-animals", "empty-slot", "tracks"} <= set(table["name"])
    assert table.set_index("name").loc["empty-slot", "weights"] == "missing"
    assert any("has no weights yet" in c.value for c in at.caption)


def test_app_frame_runs_with_the_default_model(models_root):
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    picker = at.sidebar.selectbox[0]
    assert picker.value == "general-animals"  # the bundled default
    assert "Tiny test_resnet test model" in picker.options


def test_app_frame_keeps_the_chosen_model(models_root):
    # AppTest drops sidebar widgets on reruns under st.navigation (a Streamlit test-harness
    # limitation; the browser test covers switching), so the choice is seeded in session state.
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)
    at.session_state["model_name"] = "tiny"
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox[0].value == "tiny"
    assert any("Tiny test_resnet" in e.label for e in at.expander)


def test_import_helper_used_by_the_page(models_root, tmp_path):
    """The page's form calls registry.import_checkpoint; a bad class count is one line."""
    from wildid.errors import CheckpointError
    from wildid.registry import import_checkpoint

    model = build_model("test_resnet", 3)
    path = tmp_path / "x.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="card lists 2"):
        import_checkpoint(path, name="x", arch="test_resnet", classes=["a", "b"], root=models_root)
    card = import_checkpoint(path, name="x", arch="test_resnet", classes=["a", "b", "c"], root=models_root)
    assert card.num_classes == 3 and (models_root / "x" / "card.toml").exists()


def test_links_from_a_slot_preselect_it_on_train_and_models(models_root):
    """Identify's links for a slot without weights (?slot=NAME) arrive with the slot filled in."""
    train = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "train.py"), default_timeout=60)
    train.query_params["slot"] = "empty-slot"
    train.run()
    assert not train.exception
    assert train.text_input[1].label == "New model name" and train.text_input[1].value == "empty-slot"
    assert any("model slot “empty-slot”" in i.value for i in train.info)
    models = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "models.py"), default_timeout=60)
    models.query_params["slot"] = "empty-slot"
    models.run()
    assert not models.exception
    [name] = [t for t in models.text_input if t.label == "Model name"]
    assert name.value == "empty-slot"
