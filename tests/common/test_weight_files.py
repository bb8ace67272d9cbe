"""Weight files are checked before loading: a truncated or foreign file is named, with what is wrong."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from exgramed_plugin.common.weight_files import (CheckpointError, check_weight_file, check_weight_files,
                                                    load_weight_file, weight_names)


@pytest.fixture()
def tensors():
    generator = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(8, 4, generator=generator), "b.bias": torch.randn(16, generator=generator)}


def test_whole_files_pass_and_load(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "model.safetensors"))
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    for name in ("model.safetensors", "pytorch_model.bin"):
        loaded = load_weight_file(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert weight_names(tmp_path) == set(tensors)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_safetensors_is_named(tmp_path, tensors, keep):
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=f"{path}: truncated"):
        check_weight_file(path)


def test_truncated_bin_shard_is_named(tmp_path, tensors):
    path = tmp_path / "pytorch_model-00001-of-00002.bin"
    torch.save(tensors, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path}: truncated or corrupt PyTorch weight file"):
        check_weight_file(path)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(CheckpointError, match=f"{path}: truncated or not a safetensors file"):
        check_weight_file(path)


def test_sharded_checkpoint_names_the_broken_shard(tiny_checkpoint, tmp_path, tensors):
    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    check_weight_files(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated safetensors file"):
        check_weight_files(folder)
