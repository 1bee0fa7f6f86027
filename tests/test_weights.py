"""Weights resolution: offline first, hash-checked, weights_only, clear errors."""

import shutil
import time

import pytest
import torch

from sklearn_tl import WeightsNotFoundError
from sklearn_tl.models.registry import get_backbone_spec
from sklearn_tl.models.build import build_embedder
from sklearn_tl.models.registry import resolve_weights

MOBILENET = get_backbone_spec("mobilenet_v2")


def test_real_v1_weights_load_offline_with_hash_checked():
    resolved = resolve_weights(MOBILENET, "IMAGENET1K_V1")
    assert resolved.name == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert resolved.sha256.startswith("b0353104")
    assert resolved.state_dict["features.0.0.weight"].shape == (32, 3, 3, 3)


def test_missing_default_weights_fail_fast_with_what_to_do():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(MOBILENET, "DEFAULT")
    message = str(info.value)
    assert time.perf_counter() - start < 5
    assert "mobilenet_v2-7ebf99e0.pth" in message  # the file torchvision's DEFAULT (V2) needs
    assert "hub" in message and "checkpoints" in message  # every place searched
    assert "SKLEARN_TL_WEIGHTS_PATH" in message and "weights=" in message  # how to provide it
    assert "IMAGENET1K_V1" in message  # what this machine has instead


def test_torch_hub_cache_is_honoured(tmp_path, monkeypatch, mobilenet_file):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(mobilenet_file, checkpoints / mobilenet_file.name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("sklearn_tl.models.weights.OFFLINE_WEIGHT_PACKAGES", ())
    assert resolve_weights(MOBILENET, "IMAGENET1K_V1").sha256.startswith("b0353104")


def test_search_path_env_is_honoured(tmp_path, monkeypatch, mobilenet_file):
    shutil.copy(mobilenet_file, tmp_path / mobilenet_file.name)
    monkeypatch.setenv("SKLEARN_TL_WEIGHTS_PATH", str(tmp_path))
    monkeypatch.setattr("sklearn_tl.models.weights.OFFLINE_WEIGHT_PACKAGES", ())
    assert resolve_weights(MOBILENET, "MobileNet_V2_Weights.IMAGENET1K_V1").state_dict


def test_without_any_source_the_error_lists_searched_places(monkeypatch):
    monkeypatch.setattr("sklearn_tl.models.weights.OFFLINE_WEIGHT_PACKAGES", ())
    with pytest.raises(WeightsNotFoundError, match="mobilenet_v2-b0353104.pth"):
        resolve_weights(MOBILENET, "IMAGENET1K_V1")


def test_file_and_directory_paths(tmp_path, mobilenet_file):
    copy = tmp_path / "my_mobilenet.pth"  # no hash in the name: loaded without a check
    shutil.copy(mobilenet_file, copy)
    from_file = resolve_weights(MOBILENET, str(copy))
    assert from_file.name == str(copy)
    from_dir = resolve_weights(MOBILENET, mobilenet_file.parent)
    assert from_dir.name == "MobileNet_V2_Weights.IMAGENET1K_V1"  # recognised by its file name
    assert from_file.sha256 == from_dir.sha256


def test_hash_in_file_name_is_checked(tmp_path, mobilenet_file):
    corrupt = tmp_path / mobilenet_file.name
    data = bytearray(mobilenet_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt.*b0353104"):
        resolve_weights(MOBILENET, corrupt)


class Payload:
    """An arbitrary object: a weights_only load must refuse to unpickle it."""


def test_files_are_loaded_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(ValueError, match="Cannot read weights file.*evil.pth"):
        resolve_weights(MOBILENET, path)


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="Unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        resolve_weights(MOBILENET, "IMAGENET9K")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(MOBILENET, "/nonexistent/weights.pth")


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(build_embedder("resnet18", None).module.trunk.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit backbone 'mobilenet_v2'.*missing keys"):
        build_embedder("mobilenet_v2", path)


def test_preprocessing_comes_from_the_weights_metadata():
    v1 = build_embedder("mobilenet_v2", "IMAGENET1K_V1").data_config
    assert (v1.crop_size, v1.resize_size) == (224, 256)  # V1 recipe; V2 would be 232
    effnet = build_embedder("efficientnet_b0", None).data_config
    assert effnet.interpolation == "bicubic"
    inception = build_embedder("inception_v3", None).data_config
    assert (inception.crop_size, inception.resize_size, inception.min_size) == (299, 342, 75)


class TestLocalWeightFiles:
    """The weights helpers `sklearn-tl weights` and `backbones` print."""

    def test_file_name_from_url_and_known_files(self):
        from torchvision.models import MobileNet_V2_Weights

        from sklearn_tl.models.weights import known_weight_files, weight_file_name

        assert weight_file_name(MobileNet_V2_Weights.IMAGENET1K_V1.url) == "mobilenet_v2-b0353104.pth"
        known = known_weight_files()
        assert known["mobilenet_v2-b0353104.pth"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
        assert known["mobilenet_v2-7ebf99e0.pth"] == "MobileNet_V2_Weights.IMAGENET1K_V2"

    @pytest.mark.parametrize("value, disabled", [("", False), ("0", False), ("false", False), ("No", False),
                                                 ("1", True), ("yes", True), ("TRUE", True)])
    def test_offline_flag(self, value, disabled, monkeypatch):
        from sklearn_tl.models.weights import downloads_disabled

        monkeypatch.setenv("SKLEARN_TL_OFFLINE", value)
        assert downloads_disabled() is disabled

    def test_local_names_files_and_hash_status(self, tmp_path, mobilenet_file):
        from torchvision.models import MobileNet_V2_Weights

        from sklearn_tl.models.weights import hash_status, local_weight_names, weight_files_in

        assert local_weight_names(MobileNet_V2_Weights) == ["IMAGENET1K_V1"]  # the offline package's file
        assert local_weight_names(MobileNet_V2_Weights, [tmp_path]) == []
        assert local_weight_names(None) == []
        good = tmp_path / mobilenet_file.name
        shutil.copy(mobilenet_file, good)
        corrupt = tmp_path / "resnet18-f37072fd.pth"
        corrupt.write_bytes(b"not resnet18")
        plain = tmp_path / "mine.safetensors"
        plain.write_bytes(b"x")
        (tmp_path / "notes.txt").write_text("not weights")
        assert [p.name for p in weight_files_in(tmp_path)] == sorted([good.name, corrupt.name, plain.name])
        assert local_weight_names(MobileNet_V2_Weights, [tmp_path]) == ["IMAGENET1K_V1"]
        assert hash_status(good) == "sha256 ok"
        assert hash_status(good, check=False) == "not checked"
        assert hash_status(corrupt) == "CORRUPT (sha256 does not match name)"
        assert hash_status(plain) == "no hash in name"

    def test_import_copies_checks_and_refuses(self, tmp_path, mobilenet_file):
        from sklearn_tl.exceptions import UnknownWeightsFileError
        from sklearn_tl.models.weights import import_weights_file

        dest = tmp_path / "dest"
        target, sha256, known, in_place = import_weights_file(mobilenet_file, dest)
        assert target == dest / mobilenet_file.name and target.read_bytes() == mobilenet_file.read_bytes()
        assert sha256.startswith("b0353104") and known == "MobileNet_V2_Weights.IMAGENET1K_V1" and not in_place
        assert import_weights_file(target, dest)[3] is True  # already there: nothing copied
        assert not list(dest.glob("*.partial"))

        renamed = tmp_path / "my_weights.pth"
        shutil.copy(mobilenet_file, renamed)
        with pytest.raises(UnknownWeightsFileError, match="force=True"):
            import_weights_file(renamed, dest)
        assert import_weights_file(renamed, dest, force=True)[2] is None
        with pytest.raises(WeightsNotFoundError, match="does not exist"):
            import_weights_file(tmp_path / "missing.pth", dest)
        corrupt = tmp_path / "x" / mobilenet_file.name
        corrupt.parent.mkdir()
        corrupt.write_bytes(mobilenet_file.read_bytes()[:1000])
        with pytest.raises(ValueError, match="corrupt"):
            import_weights_file(corrupt, tmp_path / "dest2")
        assert not (tmp_path / "dest2" / mobilenet_file.name).exists()
