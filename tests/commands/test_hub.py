"""`exgramed download` against a local folder laid out like the hub cache, offline (no network)."""

import json
import os
import time
import zipfile

import pytest

from conftest import DATA_TEMPLATES, last_summary

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _vqa_rows(split):
    return [{"id": f"{split}-1", "image": "images/mri_head.png", "answer_type": "OPEN",
             "conversations": [{"from": "human", "value": "What modality?\n<image>"},
                               {"from": "gpt", "value": "mri"}]}]


def _fake_repo(cache, kind, repo_id, files):
    """<cache>/<kind>s--org--name/{refs/main, blobs/<n>, snapshots/<commit>/<path> -> ../../blobs/<n>}."""
    storage = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    (storage / "blobs").mkdir()
    for number, (relative, content) in enumerate(files.items()):
        blob = storage / "blobs" / f"blob{number}"
        blob.write_bytes(content)
        link = storage / "snapshots" / COMMIT / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "hub"
    image = (DATA_TEMPLATES / "images" / "mri_head.png").read_bytes()
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("images/mri_head.png", image)
    files = {f"{s}_w_options_new.json": json.dumps(_vqa_rows(s)).encode() for s in ("train", "val", "test")}
    _fake_repo(cache, "dataset", "MERGE-Group/VQA-RAD", {**files, "images.zip": archive.read_bytes()})
    _fake_repo(cache, "model", "MERGE-Group/exgra-med", {"config.json": b'{"model_type": "llava"}'})
    return cache


def test_offline_download_places_data_for_the_registered_names(cache, tmp_path, monkeypatch, registered):
    from exgramed_plugin.commands.hub import download
    data_root = tmp_path / "data"
    results = download(["VQA-RAD", "MERGE-Group/exgra-med"], cache_dir=cache, data_root=data_root, offline=True)
    data, model = results
    assert data.repo_id == "MERGE-Group/VQA-RAD" and data.problems == []
    assert data.local_path == str(data_root / "VQA-RAD") and data.files == 4
    test_file = data_root / "VQA-RAD" / "test_w_options_new.json"
    assert test_file.is_file() and not test_file.is_symlink()
    assert json.loads(test_file.read_text()) == _vqa_rows("test")
    extracted = data_root / "VQA-RAD" / "images" / "mri_head.png"
    assert extracted.read_bytes() == (DATA_TEMPLATES / "images" / "mri_head.png").read_bytes()
    assert model.snapshot == str(cache / "models--MERGE-Group--exgra-med" / "snapshots" / COMMIT)
    assert model.local_path is None

    # The registered dataset name now loads through swift, images resolved next to the file.
    from swift.dataset import load_dataset
    monkeypatch.setenv("EXGRAMED_DATA_ROOT", str(data_root))
    train, _ = load_dataset(["vqa_rad_test"], split_dataset_ratio=0)
    assert len(train) == 1 and train[0]["id"] == "test-1"
    assert train[0]["images"][0]["path"] == str(extracted.resolve())

    # Rerunning is a no-op (files already there, archive already extracted).
    again = download(["VQA-RAD"], cache_dir=cache, data_root=data_root, offline=True)
    assert again[0].problems == []


def test_missing_repo_fails_fast_naming_it_before_placing_anything(cache, tmp_path):
    from exgramed_plugin.commands.hub import HubDownloadError, download
    data_root = tmp_path / "data"
    started = time.monotonic()
    with pytest.raises(HubDownloadError) as error:
        download(["VQA-RAD", "SLAKE"], cache_dir=cache, data_root=data_root, offline=True)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "MERGE-Group/SLAKE" in message and "offline" in message
    assert "hf download MERGE-Group/SLAKE --repo-type dataset" in message
    assert str(data_root / "SLAKE") in message and "datasets--MERGE-Group--SLAKE/snapshots" in message
    assert not (data_root / "VQA-RAD").exists()


def test_cli_follows_hf_hub_offline(cache, tmp_path, capsys):
    from huggingface_hub import constants

    from exgramed_plugin.commands.hub import main
    assert constants.HF_HUB_OFFLINE  # set by conftest before huggingface_hub was imported
    assert main(["exgra-med-dci", "--cache-dir", str(cache), "--data-root", str(tmp_path / "d")]) == 2
    assert "MERGE-Group/exgra-med-dci" in capsys.readouterr().err
    assert main(["exgra-med", "--cache-dir", str(cache), "--checkpoints-dir", str(tmp_path / "ckpt")]) == 0
    assert json.loads((tmp_path / "ckpt" / "exgra-med" / "config.json").read_text()) == {"model_type": "llava"}
    assert last_summary(capsys.readouterr().out)["repos"][0]["repo_id"] == "MERGE-Group/exgra-med"


def test_names_and_groups():
    from exgramed_plugin.commands.hub import select_repos
    assert [r.repo_id for r in select_repos(["pathvqa", "SLAKE", "slake"])] == ["MERGE-Group/PATH-VQA",
                                                                               "MERGE-Group/SLAKE"]
    assert len(select_repos(["checkpoints"])) == 9 and len(select_repos(["data"])) == 4
    with pytest.raises(ValueError, match="unknown repo"):
        select_repos(["nope"])


def test_hub_probe_is_refused_offline_and_bounded_online(monkeypatch):
    """The probe goes through huggingface_hub's session: offline it sends nothing, online a silent
    endpoint costs at most the timeout and an answering one (any status) is reachable."""
    import socket

    from exgramed_llm_fakes import RecordedServer
    from huggingface_hub import constants

    from exgramed_plugin.commands.hub import hub_is_reachable
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.setblocking(False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert constants.HF_HUB_OFFLINE  # set by conftest
        assert hub_is_reachable(timeout=2.0) is False
        with pytest.raises(BlockingIOError):
            silent.accept()  # no connection was attempted
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        started = time.monotonic()
        assert hub_is_reachable(timeout=0.5) is False
        assert time.monotonic() - started < 3
    with RecordedServer(lambda request: (200, "")) as server:  # answers HEAD with 501: still an answer
        monkeypatch.setattr(constants, "ENDPOINT", server.base_url.removesuffix("/v1"))
        assert hub_is_reachable(timeout=5.0) is True
