"""What the app refuses: code in checkpoints, zip slip, zip bombs, folders outside the allowed
root, oversize uploads.  Each test proves the refusal with an input that would do harm.

Known gaps in code this file does not own are strict ``xfail`` tests: they turn into XPASS
(a failure) once fixed, so the marker can go.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from wildid.errors import CheckpointError, DataError, ImageError, WildidError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["gray fox", "bobcat", "coyote"]


# --- checkpoints: pickled code -------------------------------------------------------------------------
class Exploit:
    """Unpickling this calls Path.touch(marker): harmless, but it is code run by the loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"fc.weight": Exploit(marker), "fc.bias": torch.zeros(3)}
    paths = {}
    paths["torch-zip"] = folder / "evil.pt"
    torch.save(payload, paths["torch-zip"])  # torch's zip format, pickle inside
    paths["legacy"] = folder / "evil.pth"
    torch.save(payload, paths["legacy"], _use_new_zipfile_serialization=False)
    paths["raw-pickle"] = folder / "evil.ckpt"
    paths["raw-pickle"].write_bytes(pickle.dumps({"state_dict": payload}))
    return paths


def test_exploit_is_real_when_trusted(tmp_path):
    """The payload really runs code when a loader trusts it (so the refusals below mean something)."""
    marker = tmp_path / "pwned-trusted"
    path = _evil_checkpoints(tmp_path / "ckpt", marker)["torch-zip"]
    from wildid.checkpoints import read_checkpoint

    try:
        read_checkpoint(path, trust=True)
    except WildidError:
        pass
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch-zip", "legacy", "raw-pickle"])
def test_malicious_checkpoint_refused_by_every_loader(kind, tmp_path, models_root):
    marker = tmp_path / "pwned"
    path = _evil_checkpoints(tmp_path / "ckpt", marker)[kind]
    from wildid.registry import import_checkpoint, load_predictor

    with pytest.raises(CheckpointError) as err:
        load_predictor(path, arch="test_resnet", classes=CLASSES)
    assert "\n" not in str(err.value)
    with pytest.raises(WildidError):
        import_checkpoint(path, name="evil", arch="test_resnet", classes=CLASSES, root=tmp_path / "models")
    assert not (tmp_path / "models" / "evil" / "card.toml").exists()
    assert not marker.exists()


def test_malicious_weights_in_a_model_folder_and_the_cli(tmp_path, models_root):
    """A model folder whose card points at a pickle, loaded by name from the CLI: exit 2, one line."""
    marker = tmp_path / "pwned-cli"
    from wildid.cards import load_card

    folder = models_root / "evil-model"
    card = load_card(models_root / "tiny").replace(name="evil-model", weights="weights.pt", folder=folder)
    card.save(folder)
    torch.save({"fc.weight": Exploit(marker)}, folder / "weights.pt")
    image = tmp_path / "x.png"
    from tests.imagegen import class_image

    class_image("dark", 1).save(image)
    env = dict(os.environ, WILDID_MODELS=str(models_root))
    proc = subprocess.run([sys.executable, "-m", "wildid.cli", "predict", str(image), "--model", "evil-model"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-1000:])
    assert proc.stderr.startswith("error: ") and "--trust-checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


# --- zip uploads ----------------------------------------------------------------------------------------------
def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
        archive.writestr("ok.jpg", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.jpg", "a/../../evil.jpg", "/tmp/evil.jpg", "..\\evil.jpg",
                                  "C:/evil.jpg", "a/b/../../../evil.jpg"])
def test_zip_slip_refused_and_nothing_written(name, tmp_path):
    from wildid.batch import extract_zip

    dest = tmp_path / "work" / "zip"
    data = _zip({"good.jpg": b"fine", name: b"evil"})
    with pytest.raises(DataError) as err:
        extract_zip(io.BytesIO(data), dest)
    assert "outside" in str(err.value)
    assert not dest.exists() or not any(dest.rglob("*"))  # checked before anything is written
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "work" / "evil.jpg").exists()
    assert not Path("/tmp/evil.jpg").exists()


def test_zip_symlink_member_refused(tmp_path):
    from wildid.batch import extract_zip

    with pytest.raises(DataError, match="symbolic link"):
        extract_zip(io.BytesIO(_symlink_zip()), tmp_path / "zip")
    assert not (tmp_path / "zip" / "link.jpg").exists()


def test_zip_bomb_refused_by_declared_size(tmp_path):
    """64 MB of zeros in a ~64 KB zip, against a 16 MB limit: refused before inflating anything."""
    from wildid.batch import extract_zip

    data = _zip({f"frame{i}.jpg": b"\0" * (16 << 20) for i in range(4)})
    assert len(data) < 200_000
    with pytest.raises(DataError, match="over the"):
        extract_zip(io.BytesIO(data), tmp_path / "zip", max_bytes=16 << 20)
    assert not (tmp_path / "zip").exists()


def test_zip_with_too_many_members_refused(tmp_path):
    from wildid.batch import extract_zip

    data = _zip({f"f{i}.jpg": b"" for i in range(300)}, zipfile.ZIP_STORED)
    with pytest.raises(DataError, match="300 files"):
        extract_zip(io.BytesIO(data), tmp_path / "zip", max_files=200)


def test_zip_limits_have_sane_defaults():
    from wildid import batch

    assert 0 < batch.MAX_ZIP_BYTES <= 16 * 1024**3 and 0 < batch.MAX_ZIP_FILES <= 1_000_000


def test_a_good_zip_extracts(tmp_path):
    from wildid.batch import extract_zip

    dest = extract_zip(io.BytesIO(_zip({"cam1/a.jpg": b"a", "cam1/sub/b.jpg": b"b"})), tmp_path / "zip")
    assert (dest / "cam1" / "a.jpg").read_bytes() == b"a" and (dest / "cam1" / "sub" / "b.jpg").read_bytes() == b"b"


def _lying_zip() -> bytes:
    """A member that declares 1000 bytes but inflates to 50 MB (headers patched)."""
    data = bytearray(_zip({"a.jpg": b"\0" * (50 << 20)}))
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, 22, 1000)
    struct.pack_into("<I", data, central + 24, 1000)
    return bytes(data)


def test_zip_member_lying_about_its_size_inflates_no_further(tmp_path):
    """Python's zipfile stops at the declared size, so a lying header cannot inflate 50 MB."""
    from wildid.batch import extract_zip

    with pytest.raises(DataError, match="could not be unpacked"):
        extract_zip(io.BytesIO(_lying_zip()), tmp_path / "zip", max_bytes=10 << 20)
    written = sum(p.stat().st_size for p in (tmp_path / "zip").rglob("*") if p.is_file())
    assert written <= 1000


def _crc_broken_zip() -> bytes:
    data = bytearray(_zip({"a.jpg": b"x" * 1000, "b.jpg": b"y" * 1000}, zipfile.ZIP_STORED))
    data[data.find(b"y" * 10)] = ord("z")
    return bytes(data)


def _patched_zip(offset_local: int, offset_central: int, value: int) -> bytes:
    data = bytearray(_zip({"a.jpg": b"x" * 100}, zipfile.ZIP_STORED))
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, offset_local, value)
    struct.pack_into("<H", data, central + offset_central, value)
    return bytes(data)


BROKEN_ZIPS = {
    "lying-size": _lying_zip,
    "bad-crc": _crc_broken_zip,
    "file-and-folder-same-name": lambda: _zip({"a": b"file", "a/b.jpg": b"x"}),
    "unsupported-method": lambda: _patched_zip(8, 10, 97),
    "encrypted": lambda: _patched_zip(6, 8, 1),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ZIPS))
def test_broken_zip_is_one_line_error_and_leaves_nothing(case, tmp_path):
    from wildid.batch import extract_zip

    with pytest.raises(DataError) as err:
        extract_zip(io.BytesIO(BROKEN_ZIPS[case]()), tmp_path / "zip", max_bytes=10 << 20)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "zip").exists()  # the folder extract_zip made is gone


@pytest.mark.parametrize("case", sorted(BROKEN_ZIPS))
def test_broken_zip_into_an_existing_folder_keeps_the_folder_empty(case, tmp_path):
    """As the Batch page calls it: a fresh empty folder stays, empty."""
    from wildid.batch import extract_zip

    dest = tmp_path / "zip"
    dest.mkdir()
    with pytest.raises(DataError):
        extract_zip(io.BytesIO(BROKEN_ZIPS[case]()), dest, max_bytes=10 << 20)
    assert dest.is_dir() and not any(dest.iterdir())


def test_zip_over_the_compression_ratio_refused(tmp_path):
    """Under the size limit, but 80 MB of zeros in a ~80 KB zip: over 100:1, nothing written."""
    from wildid.batch import extract_zip

    data = _zip({f"frame{i}.jpg": b"\0" * (20 << 20) for i in range(4)})
    with pytest.raises(DataError, match="compression limit"):
        extract_zip(io.BytesIO(data), tmp_path / "zip", max_bytes=1 << 30)
    assert not (tmp_path / "zip").exists()
    # The same ratio below the floor (a few blank frames) is fine.
    small = _zip({"blank.bmp": b"\0" * (4 << 20)})
    assert (extract_zip(io.BytesIO(small), tmp_path / "ok") / "blank.bmp").stat().st_size == 4 << 20


def test_not_a_zip_is_one_line(tmp_path):
    from wildid.batch import extract_zip

    for data in (b"", b"PK\x03\x04garbage", b"hello"):
        with pytest.raises(DataError, match="not a readable zip"):
            extract_zip(io.BytesIO(data), tmp_path / "zip")


# --- server folders: the allowed root --------------------------------------------------------------------------------
@pytest.fixture()
def allowed(tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    (root / "cam1").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret", target_is_directory=True)
    (root / "inside-link").symlink_to(root / "cam1", target_is_directory=True)
    (tmp_path / "allowed-sibling").mkdir()
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(root))
    return root


@pytest.mark.parametrize("text", ["..", "../secret", "cam1/../../secret", "escape", "escape/", "/", "/etc",
                                  "{tmp}/secret", "{tmp}/allowed-sibling", "{tmp}/allowed/../secret", "~"])
def test_folder_outside_the_allowed_root_refused(text, allowed, tmp_path):
    from wildid.batch import resolve_allowed_folder

    with pytest.raises(DataError) as err:
        resolve_allowed_folder(text.format(tmp=tmp_path))
    assert "outside the allowed folder" in str(err.value) and "WILDID_ALLOWED_ROOT" in str(err.value)


def test_folders_inside_the_allowed_root_accepted(allowed):
    from wildid.batch import resolve_allowed_folder

    assert resolve_allowed_folder("cam1") == allowed / "cam1"
    assert resolve_allowed_folder(str(allowed / "cam1")) == allowed / "cam1"
    assert resolve_allowed_folder("inside-link") == allowed / "cam1"  # a link that stays inside is fine
    assert resolve_allowed_folder(str(allowed)) == allowed
    for text in ("", "  ", "nope"):
        with pytest.raises(DataError):
            resolve_allowed_folder(text)


def test_folder_with_nul_byte_is_one_line(allowed):
    from wildid.batch import resolve_allowed_folder

    for text in ("cam1\x00/../..", "\x00", "a" * 5000):
        with pytest.raises(DataError) as err:
            resolve_allowed_folder(text)
        assert "\n" not in str(err.value) and "\x00" not in str(err.value)


def test_batch_page_refuses_a_folder_outside_the_root(allowed, models_root, tmp_path):
    page = PROJECT_ROOT / "app_pages" / "batch.py"
    if not page.exists():
        pytest.skip("app_pages/batch.py not in this tree yet")
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    at = AppTest.from_file(str(page), default_timeout=60)
    at.session_state["model_name"] = "tiny"
    at.run()
    at.text_input[0].set_value(str(tmp_path / "secret")).run()
    [button] = [b for b in at.button if "Classify" in b.label]
    button.click().run()
    assert not at.exception
    assert any("outside the allowed folder" in e.value for e in at.error)
    assert "batch_results" not in at.session_state
    st.cache_resource.clear()


# --- upload size -------------------------------------------------------------------------------------------------------------
def test_upload_limit_configured_and_enforced_in_code(tmp_path, monkeypatch):
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    limit_mb = config["server"]["maxUploadSize"]
    assert limit_mb == 2048  # checkpoints (a ResNet-50 is ~94 MB) and zips of frames
    from wildid import imaging

    # Photos keep their own cap (per uploader and in code), which the decoder's limit backs up
    # for the CLI, batch folders and direct calls.
    assert 1 <= imaging.MAX_UPLOAD_IMAGE_MB * 1024 * 1024 <= imaging.MAX_FILE_BYTES <= 1024**3
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 10_000)
    from tests.imagegen import noise_image

    big = tmp_path / "big.png"
    noise_image(size=(200, 200)).save(big)
    assert big.stat().st_size > 10_000
    with pytest.raises(ImageError, match="over the"):
        imaging.load_image(big)
    upload = io.BytesIO(big.read_bytes())
    upload.name = "big.png"
    with pytest.raises(ImageError, match="over the"):
        imaging.load_image(upload)


def test_upload_limit_also_for_raw_bytes(tmp_path, monkeypatch):
    from tests.imagegen import noise_image
    from wildid import imaging

    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 10_000)
    buffer = io.BytesIO()
    noise_image(size=(200, 200)).save(buffer, "PNG")
    with pytest.raises(ImageError, match="over the"):
        imaging.load_image(buffer.getvalue())


def test_no_network_or_telemetry_configured():
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] in ("none", False)
