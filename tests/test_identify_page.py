"""AppTest of the Identify page: uploads, uncertain state, bad files, crop, explanations, compare."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from tests.imagegen import class_image, jpeg_bytes, png_header_only, truncated_jpeg
from wildid.errors import ImageError
from wildid.imaging import load_image

PAGE = str(PROJECT_ROOT / "app_pages" / "identify.py")


def page(model: str = "tiny", **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_name"] = model
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.file_uploader(key="identify_upload").set_value((name, data, mime))
    return at.run()


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def image_captions(at: AppTest) -> list[str]:
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def bright_jpeg(seed: int = 100) -> bytes:
    return jpeg_bytes(class_image("bright", seed=seed, size=(160, 120)))


def test_upload_shows_top1_chart_and_species_facts(models_root):
    at = upload(page(), "track.jpg", bright_jpeg())
    assert not at.exception
    assert not at.error
    [verdict] = texts(at.success)
    assert verdict.startswith("bobcat (") and verdict.endswith("%)")
    assert len(at.get("plotly_chart")) == 1
    assert "About this animal" in texts(at.subheader)
    facts = " ".join(texts(at.markdown))
    assert "Bobcat · *Lynx rufus*" in facts and "**Habitat:**" in facts and "**Tracks:**" in facts
    assert "**Look-alikes:**" in facts
    # The other top-3 candidates' facts are one click away.
    labels = [e.label for e in at.expander]
    assert any(label.startswith("gray fox (") for label in labels)
    assert any(label.startswith("coyote (") for label in labels)
    assert any("Model card: Tiny test_resnet" in label for label in labels)


def test_uncertain_state_shows_candidates_not_an_answer(models_root):
    from wildid.cards import load_card

    folder = models_root / "tiny"
    load_card(folder).replace(threshold=0.9999).save(folder)
    at = upload(page(), "track.jpg", bright_jpeg())
    assert not at.exception
    assert not at.success
    [warning] = texts(at.warning)
    assert warning.startswith("Uncertain: no class reaches this model's 100% threshold")
    assert "Top candidates: bobcat (" in warning and "gray fox (" in warning and "coyote (" in warning
    assert "About this animal" not in texts(at.subheader)
    candidate_panels = [e.label for e in at.expander if e.label.split(" (")[0] in {"bobcat", "gray fox", "coyote"}]
    assert len(candidate_panels) == 3


BAD_UPLOADS = {
    "text renamed .jpg": ("notes.jpg", b"field notes: fox tracks near the creek\n" * 20, "not an image"),
    "truncated JPEG": ("cut.jpg", truncated_jpeg(), "truncated image data"),
    "0-byte file": ("empty.jpg", b"", "empty file (0 bytes)"),
    "20000x20000 image": ("huge.png", png_header_only(20000, 20000), "20000x20000 (400 MP), over the"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_one_error_line_and_the_app_keeps_working(models_root, case):
    name, data, reason = BAD_UPLOADS[case]
    at = upload(page(), name, data, "image/png" if name.endswith(".png") else "image/jpeg")
    assert not at.exception
    [error] = texts(at.error)
    assert reason in error and name in error and "\n" not in error
    assert not at.success and not at.get("plotly_chart")
    # A good photo next works as usual.
    at = upload(at, "track.jpg", bright_jpeg())
    assert not at.exception and not at.error
    assert texts(at.success)[0].startswith("bobcat (")


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_the_decoder_behind_the_page_raises_one_line(case):
    name, data, reason = BAD_UPLOADS[case]
    buffer = io.BytesIO(data)
    buffer.name = name
    with pytest.raises(ImageError) as info:
        load_image(buffer, draft_size=256)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_sixteen_bit_tiff_and_camera_photo(models_root):
    at = page()
    grey16 = (np.asarray(class_image("striped", seed=101, size=(160, 120)).convert("L"), np.uint16) * 257)
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, "TIFF")
    at = upload(at, "nir.tif", buffer.getvalue(), "image/tiff")
    assert not at.exception and not at.error
    assert texts(at.success)[0].startswith("coyote (")

    at = page(identify_source="Camera")
    at.camera_input(key="identify_camera").set_value(("shot.jpg", jpeg_bytes(class_image("dark", seed=102)), "image/jpeg"))
    at.run()
    assert not at.exception
    assert texts(at.success)[0].startswith("gray fox (")


def test_example_picker(models_root):
    at = page(identify_source="Example")
    assert not at.exception
    picker = at.selectbox(key="identify_example")
    assert picker.options == ["chelsea cat", "chelsea cat close up", "night frame nir", "snow track", "track photo felid"]
    assert not at.error and len(at.get("plotly_chart")) == 1
    assert image_captions(at)[0] == "chelsea_cat.jpg · 451x300"
    picker.select_index(3).run()
    assert not at.exception and not at.error
    assert texts(at.success)[0].startswith("bobcat (")  # bright snow: the tiny model's "bright" class
    assert image_captions(at)[0] == "snow_track.png · 320x240"
    picker.select_index(2).run()  # 16-bit TIFF
    assert not at.exception and image_captions(at)[0] == "night_frame_nir.tif · 300x200"


def crop_state(digest: str, x: tuple[float, float], y: tuple[float, float]) -> dict:
    """What Streamlit stores for a box drawn on the crop chart (display pixels)."""
    return {"selection": {"points": [], "point_indices": [], "lasso": [],
                          "box": [{"xref": "x", "yref": "y", "x": list(x), "y": list(y)}]}}


def chart_probabilities(at: AppTest, index: int = -1) -> dict[str, float]:
    """Label -> probability from the top-k chart's figure (the exact numbers the page computed)."""
    import json

    figure = json.loads(at.get("plotly_chart")[index].proto.spec)
    [bar] = [trace for trace in figure["data"] if trace.get("type") == "bar"]
    return dict(zip(bar["y"], bar["x"]))


def test_crop_is_off_until_a_box_is_drawn(models_root):
    left = np.asarray(class_image("dark", seed=103, size=(200, 160)))
    right = np.asarray(class_image("bright", seed=104, size=(200, 160)))
    data = jpeg_bytes(Image.fromarray(np.concatenate([left, right], axis=1)))  # 400x160
    at = upload(page(), "half.jpg", data)
    full = chart_probabilities(at)
    at.toggle(key="identify_use_crop").set_value(True).run()
    assert not at.exception and not at.error
    # Crop mode on, nothing drawn yet: the full photo's answer, to the last digit.
    assert chart_probabilities(at) == full
    assert any("Drag a box" in c.value for c in at.caption)
    digest = hashlib.sha1(data).hexdigest()[:12]
    at.session_state[f"identify_crop_chart_{digest}"] = crop_state(digest, (220, 390), (10, 150))
    at.run()
    assert not at.exception and not at.error
    assert texts(at.success)[0].startswith("bobcat (")
    assert "half.jpg · 400x160 · crop" in image_captions(at)
    at.session_state[f"identify_crop_chart_{digest}"] = crop_state(digest, (10, 180), (10, 150))
    at.run()
    assert texts(at.success)[0].startswith("gray fox (")


def test_nir_enhancement_toggle(models_root):
    dark = Image.fromarray(np.clip(np.asarray(class_image("striped", seed=105)) * 0.25, 0, 255).astype(np.uint8))
    at = upload(page("tiny-nir"), "night.jpg", jpeg_bytes(dark))
    at.toggle(key="identify_nir").set_value(True).run()
    assert not at.exception and not at.error
    assert any(c.endswith("· CLAHE") for c in image_captions(at))
    assert at.success or at.warning


@pytest.mark.parametrize("model", ["tiny", "tiny-vit"])
def test_grad_cam_toggle_and_workshop(models_root, model):
    at = upload(page(model, identify_workshop=True), "track.jpg", bright_jpeg())
    at.toggle(key="identify_cam").set_value(True).run()
    assert not at.exception and not at.error
    captions = image_captions(at)
    layer = {"tiny": "layer4", "tiny-vit": "blocks.5.norm1"}[model]
    assert f"Grad-CAM for “bobcat” (layer {layer}): red = strongest evidence" in captions
    assert any(c.startswith("First-layer filters.") for c in captions)
    slider = at.select_slider(key="identify_layer")
    assert slider.options[-1] in ("layer4", "blocks.5")
    slider.set_value(slider.options[-1]).run()
    assert not at.exception
    assert any(c.startswith(f"Activation maps. {slider.options[-1]}:") for c in image_captions(at))


def test_compare_mode_runs_models_side_by_side(models_root):
    at = upload(page(), "track.jpg", bright_jpeg())
    at.multiselect(key="identify_compare").set_value(["tiny-vit", "tiny-nir"]).run()
    assert not at.exception and not at.error
    assert "Side by side" in texts(at.subheader)
    titles = texts(at.markdown)
    assert "**Tiny test_vit test model**" in titles and "**Tiny test_efficientnet test model**" in titles
    # The main result plus one per model in the comparison.
    assert len(at.get("plotly_chart")) == 4
    assert len(at.success) + len(at.warning) >= 4


def test_no_photo_yet_and_a_model_without_weights(models_root):
    at = page()
    assert not at.exception
    assert any("Upload a photo" in i.value for i in at.info)
    at = page("empty-slot")
    assert not at.exception
    # No dead end: the uploader stays, one line says why, and two links lead on.
    assert at.file_uploader(key="identify_upload") is not None
    [why] = [i.value for i in at.info if "no weights yet" in i.value]
    assert "train it on your labelled photos, or import a checkpoint" in why
    links = " ".join(m.value for m in at.markdown)
    assert "[Train empty-slot](/train?slot=empty-slot)" in links
    assert "[Import a checkpoint](/models?slot=empty-slot)" in links


def test_compare_says_why_it_has_nothing_to_offer(models_root, monkeypatch):
    from wildid import registry

    monkeypatch.setattr(registry, "model_roots", lambda: [models_root])
    for other in ("tiny-vit", "tiny-nir"):
        import shutil

        shutil.rmtree(models_root / other)
    at = upload(page(), "track.jpg", bright_jpeg())
    assert not at.exception
    assert not at.multiselect
    assert any("Compare needs a second model with weights: only this one has weights "
               "(slots still without weights: empty-slot)." in c.value for c in at.caption)


def test_out_of_scope_photo_gets_no_answer_and_a_better_model_is_offered(models_root):
    """A real cat photo on a (scoped) track model: the out-of-scope state first, no species answer,
    and the general model, which knows such photos, one click away."""
    import skimage

    from tests.test_scope import make_scoped_model

    make_scoped_model(models_root)
    at = upload(page("tiny-scoped"), "cat.jpg", jpeg_bytes(Image.fromarray(skimage.data.chelsea()), quality=92))
    assert not at.exception and not at.error
    [warning] = texts(at.warning)
    assert warning.startswith("Not something this model was trained on: “Tiny scoped test model”")
    assert not at.success and "About this animal" not in texts(at.subheader)
    [offer] = [i for i in texts(at.info) if "was trained on images like this one" in i]
    assert offer.startswith("“General animals (ImageNet, EfficientNet-Lite0)”")
    at.button(key="identify_switch_model").click().run()
    assert not at.exception
    assert at.session_state["model_name"] == "general-animals"
    # The general model splits the cat over tabby, tiger cat and Egyptian cat; none reaches its 70%
    # threshold, the species they share does.
    assert not at.success
    assert any(unescaped(text).startswith("Species: domestic cat (Felis catus), 9") for text in texts(at.info))


# --- answers above species rank (taxonomic roll-up) ------------------------------------------------------
def fox_coyote_blend() -> bytes:
    """Between the tiny model's gray fox (dark) and coyote (striped): no class is sure, the dog family is."""
    dark = np.asarray(class_image("dark", seed=300, size=(160, 120)), float)
    striped = np.asarray(class_image("striped", seed=300, size=(160, 120)), float)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(0.3 * dark + 0.7 * striped, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def unescaped(text: str) -> str:
    return text.replace("\\", "")


def test_rolled_up_answer_shows_the_group_its_rank_closest_classes_and_members(models_root):
    from wildid.cards import load_card

    folder = models_root / "tiny"
    load_card(folder).replace(threshold=0.6).save(folder)
    at = upload(page(), "between.png", fox_coyote_blend(), "image/png")
    assert not at.exception and not at.error
    assert not at.success and not at.warning  # neither a species answer nor "uncertain"
    [verdict] = [unescaped(text) for text in texts(at.info)]
    assert verdict.startswith("Family: Dog family: wolves, coyotes, foxes and dogs (Canidae), 9") and verdict.endswith("%")
    captions = " ".join(unescaped(c.value) for c in at.caption)
    assert "No single class reaches this model's 60% threshold" in captions
    assert "Closest classes: gray fox (" in captions and "coyote (" in captions and "bobcat" not in captions.split("Closest")[1]
    assert "About this family" in texts(at.subheader)
    facts = " ".join(texts(at.markdown))
    assert "Dog family: wolves, coyotes, foxes and dogs · *Canidae*" in facts
    assert "Members you may meet in North America or Europe" in facts
    member_panels = [e.label for e in at.expander]
    for member in ("Grey wolf · Canis lupus", "Coyote · Canis latrans", "Red fox · Vulpes vulpes",
                   "Gray fox · Urocyon cinereoargenteus"):
        assert member in member_panels
    assert "Bobcat · Lynx rufus" not in member_panels  # a cat is no member of the dog family
    # The member species' own facts are inside their panels.
    assert "Grey wolf · *Canis lupus*" in facts and "**Tracks:**" in facts


def test_track_family_model_lists_species_of_the_family_with_print_sizes(models_root):
    import shutil

    from tests.conftest import PROJECT_ROOT as ROOT
    from wildid.cards import load_card

    # The tiny model's three outputs renamed to families, with the tracks-families taxonomy beside it.
    folder = models_root / "tiny-families"
    shutil.copytree(models_root / "tiny", folder)
    load_card(folder).replace(name="tiny-families", title="Tiny track families", classes=("canid", "felid", "deer"),
                              task="tracks").save(folder)
    shutil.copy(ROOT / "models" / "tracks-families" / "taxonomy.toml", folder / "taxonomy.toml")
    at = upload(page("tiny-families"), "print.jpg", bright_jpeg())  # bright -> the second output, "felid"
    assert not at.exception and not at.error
    [verdict] = texts(at.success)
    assert verdict.startswith("felid (")
    facts = " ".join(texts(at.markdown))
    assert "Cat family · *Felidae*" in facts and "Group entry (family)" in " ".join(c.value for c in at.caption)
    [table] = at.dataframe
    rows = table.value
    species_names = set(rows["species"])
    assert {"Cougar (Puma concolor)", "Bobcat (Lynx rufus)", "Canada lynx (Lynx canadensis)"} <= species_names
    cougar = rows[rows["species"] == "Cougar (Puma concolor)"].iloc[0]
    assert (cougar["toes front"], cougar["toes hind"]) == (4, 4) and "7.5-10.5 cm" in cougar["print size"]
    assert "Look-alikes" in facts
