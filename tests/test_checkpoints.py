"""Every supported architecture and checkpoint format loads behind one predictor interface."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.imagegen import class_image, noise_image
from wildid.backbones import build_model
from wildid.errors import CheckpointError, CardError, ModelNotAvailable
from wildid.registry import clear_cache, find_card, import_checkpoint, load_predictor

CLASSES = ["beaver", "otter", "mink", "raccoon"]
ARCHS = ["resnet18", "resnet50", "vit_base_patch16_224", "efficientnet_lite0", "torchvision:resnet18", "torchvision:resnet50"]


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDID_CACHE", str(tmp_path / "cache"))
    clear_cache()
    yield
    clear_cache()


def _check_predictions(predictor, n_images: int = 2) -> None:
    images = [noise_image(seed) for seed in range(n_images)]
    predictions = predictor.predict(images, top_k=len(CLASSES))
    assert len(predictions) == n_images
    for prediction in predictions:
        probs = [p for _, p in prediction.top_k]
        assert abs(sum(probs) - 1.0) < 1e-5
        assert sorted(label for label, _ in prediction.top_k) == sorted(CLASSES)
        assert probs == sorted(probs, reverse=True)
        assert prediction.label == prediction.top_k[0][0] and prediction.confidence == probs[0]
        assert prediction.model == predictor.card.name


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_loads_from_a_state_dict(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES)).eval()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    predictor = load_predictor(path, arch=arch, classes=CLASSES)
    _check_predictions(predictor)
    # Same weights, same outputs: the checkpoint really was loaded, not a fresh init.
    batch = torch.stack([predictor.preprocess(noise_image(5))])
    with torch.inference_mode():
        expected = torch.softmax(model(batch), dim=1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(batch), expected, atol=1e-5)


@pytest.fixture(scope="module")
def resnet18_model():
    torch.manual_seed(1)
    return build_model("resnet18", len(CLASSES)).eval()


def _probs(predictor, seed=3):
    return predictor.predict_proba(torch.stack([predictor.preprocess(noise_image(seed))]))


def test_safetensors_and_wrapped_prefixed_state_dicts_agree(resnet18_model, tmp_path):
    state = resnet18_model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    a = load_predictor(tmp_path / "m.safetensors", arch="resnet18", classes=CLASSES)
    b = load_predictor(tmp_path / "wrapped.pt", arch="resnet18", classes=CLASSES)
    _check_predictions(a)
    np.testing.assert_allclose(_probs(a), _probs(b), atol=1e-6)


def test_torchscript_checkpoint(resnet18_model, tmp_path):
    scripted = torch.jit.trace(resnet18_model, torch.zeros(1, 3, 224, 224))
    scripted.save(str(tmp_path / "scripted.pt"))
    # TorchScript is code: refused without trust, one line naming the way out.
    with pytest.raises(CheckpointError) as err:
        load_predictor(tmp_path / "scripted.pt", arch="resnet18", classes=CLASSES)
    assert "TorchScript" in str(err.value) and "--trust-checkpoint" in str(err.value) and "\n" not in str(err.value)
    predictor = load_predictor(tmp_path / "scripted.pt", arch="resnet18", classes=CLASSES, trust=True)
    _check_predictions(predictor)
    reference = load_predictor(_save_state(resnet18_model, tmp_path), arch="resnet18", classes=CLASSES)
    np.testing.assert_allclose(_probs(predictor), _probs(reference), atol=1e-5)


def _save_state(model, folder: Path) -> Path:
    path = folder / "plain.pth"
    torch.save(model.state_dict(), path)
    return path


def test_pickled_module_needs_trust(resnet18_model, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(resnet18_model, path)
    with pytest.raises(CheckpointError) as err:
        load_predictor(path, arch="resnet18", classes=CLASSES)
    message = str(err.value)
    assert "pickled Python objects" in message and "--trust-checkpoint" in message and "\n" not in message
    predictor = load_predictor(path, arch="resnet18", classes=CLASSES, trust=True)
    _check_predictions(predictor)


class _Exploit:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"fc.weight": _Exploit(str(marker))}, handle)
    with pytest.raises(CheckpointError):
        load_predictor(path, arch="resnet18", classes=CLASSES)
    assert not marker.exists()


def test_wrong_architecture_names_the_problem(resnet18_model, tmp_path):
    path = _save_state(resnet18_model, tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_predictor(path, arch="resnet50", classes=CLASSES)
    message = str(err.value)
    assert "does not fit arch 'resnet50'" in message and "looks like resnet18" in message
    assert "missing keys" in message or "another shape" in message


def test_wrong_class_count_names_the_problem(resnet18_model, tmp_path):
    path = _save_state(resnet18_model, tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_predictor(path, arch="resnet18", classes=CLASSES[:3])
    assert "checkpoint has 4 output classes" in str(err.value) and "card lists 3" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x89PNG\r\n\x1a\n0000"])
def test_non_checkpoints_get_one_line(content, tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_predictor(path, arch="resnet18", classes=CLASSES)
    assert "\n" not in str(err.value)


def test_bare_checkpoint_needs_arch_and_classes(resnet18_model, tmp_path):
    with pytest.raises(CardError) as err:
        load_predictor(_save_state(resnet18_model, tmp_path))
    assert "--arch" in str(err.value)


def test_import_writes_a_card_so_next_load_needs_nothing(resnet18_model, tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("WILDID_MODELS", str(root))
    source = _save_state(resnet18_model, tmp_path)
    before = source.read_bytes()
    import_checkpoint(source, name="otters", arch="resnet18", classes=CLASSES, task="custom")
    assert source.read_bytes() == before  # the original is only read
    assert (root / "otters" / "card.toml").is_file() and (root / "otters" / "model.safetensors").is_file()
    assert find_card("otters").classes == tuple(CLASSES)
    clear_cache()
    predictor = load_predictor("otters")
    np.testing.assert_allclose(_probs(predictor), _probs(load_predictor(source, arch="resnet18", classes=CLASSES)), atol=1e-6)


def test_import_into_slot_takes_its_classes(resnet18_model, tmp_path, monkeypatch):
    from wildid.cards import ModelCard

    root = tmp_path / "models"
    ModelCard(name="tracks", arch="resnet18", classes=tuple(CLASSES), task="tracks").save(root / "tracks")
    monkeypatch.setenv("WILDID_MODELS", str(root))
    with pytest.raises(ModelNotAvailable) as err:
        load_predictor("tracks")
    assert "has no weights yet" in str(err.value) and "wildid train" in str(err.value)
    card = import_checkpoint(_save_state(resnet18_model, tmp_path), name="tracks")
    assert card.task == "tracks" and card.classes == tuple(CLASSES) and card.has_weights


def test_onnx_matches_torch(models_root):
    for name in ("tiny", "tiny-vit", "tiny-nir"):
        torch_predictor = load_predictor(name)
        onnx_predictor = load_predictor(name, backend="onnx")
        images = [class_image(style, seed=50 + i) for i, style in enumerate(["dark", "bright", "striped"])]
        images += [noise_image(seed) for seed in range(3)]
        batch = torch.stack([torch_predictor.preprocess(img) for img in images])
        p_torch, p_onnx = torch_predictor.predict_proba(batch), onnx_predictor.predict_proba(batch)
        np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
        assert (p_onnx.argmax(1) == p_torch.argmax(1)).all()
        assert onnx_predictor.backend == "onnx"


def test_onnx_resnet18_matches_torch(resnet18_model, tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("WILDID_MODELS", str(root))
    import_checkpoint(_save_state(resnet18_model, tmp_path), name="r18", arch="resnet18", classes=CLASSES)
    torch_predictor, onnx_predictor = load_predictor("r18"), load_predictor("r18", backend="onnx")
    batch = torch.stack([torch_predictor.preprocess(noise_image(s)) for s in range(4)])
    np.testing.assert_allclose(onnx_predictor.predict_proba(batch), torch_predictor.predict_proba(batch), atol=1e-4)


def test_tiny_models_predict_their_classes(models_root, class_images):
    predictor = load_predictor("tiny")
    for label, path in class_images.items():
        [prediction] = predictor.predict([path])
        assert prediction.label == label
        assert prediction.card.name == "tiny"


def test_nir_model_sees_grey(models_root):
    predictor = load_predictor("tiny-nir")
    coloured = class_image("bright", seed=1)
    tinted = coloured.copy()
    tinted.paste((255, 0, 0), (0, 0, tinted.width, tinted.height // 2))
    x = predictor.preprocess(tinted)
    mean = torch.tensor(predictor.card.mean)[:, None, None]
    std = torch.tensor(predictor.card.std)[:, None, None]
    pixels = x * std + mean  # undo normalisation: grey means three identical channels
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)
