"""One preprocessing path: the same file gives the same probabilities through the Identify page,
`wildid predict` and `wildid batch` (the page once decoded uploads at display size, so a 640 px
footprint photo got 45% in the app and 53.6% from the CLI)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from tests.test_identify_page import chart_probabilities
from wildid.cli import main

TRACKS = Path("/work/shared/data/tracks-families")


@pytest.fixture()
def footprint_photo(tmp_path) -> Path:
    """A real 640x640 footprint JPEG (CC BY 4.0, shared/data/tracks-families): big enough for draft decoding."""
    source = sorted((TRACKS / "canid").glob("*.jpg"))[0]
    folder = tmp_path / "photos"
    folder.mkdir()
    return Path(shutil.copy(source, folder / "wolf_track.jpg"))


@pytest.mark.parametrize("model", ["tiny", "tiny-vit"])
def test_identify_predict_and_batch_agree(models_root, footprint_photo, tmp_path, capsys, model):
    assert main(["predict", str(footprint_photo), "--model", model, "--json", "--top-k", "3"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    from_cli = {c["label"]: c["score"] for c in row["top_k"]}

    out = tmp_path / "results.csv"
    assert main(["batch", str(footprint_photo.parent), "--model", model, "--out", str(out), "--top-k", "3",
                 "--quiet"]) == 0
    [batch_row] = list(csv.DictReader(out.open()))
    from_batch = dict(json.loads(batch_row["top_k"]))

    at = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "identify.py"), default_timeout=60)
    at.session_state["model_name"] = model
    at.run()
    at.file_uploader(key="identify_upload").set_value((footprint_photo.name, footprint_photo.read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception and not at.error
    from_page = chart_probabilities(at)

    assert set(from_cli) == set(from_batch) == set(from_page)
    for label, probability in from_cli.items():
        assert from_batch[label] == pytest.approx(probability, abs=1e-5)
        assert from_page[label] == pytest.approx(probability, abs=1e-5)
    # The scores are not all equal (a model that ignores its input would pass trivially).
    assert max(from_cli.values()) - min(from_cli.values()) > 1e-3
