"""Weight files of a checkpoint folder: which files, which tensor names, and whether they are whole.

A truncated download otherwise surfaces as torch's zip error or a bare ``SafetensorError`` deep in
a loader; here every file is checked cheaply (headers and sizes, no tensor data read) before any
loader touches it, and a broken one is named with what is wrong with it.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from .jsonio import JsonFileError, read_json

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size


class CheckpointError(ValueError):
    """A checkpoint that is not what its config.json claims; the message names the file and the key."""


def _weight_index(model_dir: Path) -> tuple[Path, dict[str, str]] | None:
    """The shard index of a sharded checkpoint and its ``weight_map`` (tensor name -> file), or None."""
    for index_name in WEIGHT_INDEXES:
        index = model_dir / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: key 'weight_map' is missing")
            return index, weight_map
    return None


def weight_files(model_dir: str | os.PathLike) -> tuple[list[Path], Path]:
    """Weight files of a checkpoint and the file to name when a key is missing (the index, if sharded)."""
    model_dir = Path(model_dir)
    indexed = _weight_index(model_dir)
    if indexed is not None:
        index, weight_map = indexed
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        for path in files:
            if not path.is_file():
                key = next(k for k, v in weight_map.items() if v == path.name)
                raise FileNotFoundError(f"{index}: key {key!r} points to {path.name}, which is missing")
        return files, index
    for single in _SINGLE_FILES:
        if (model_dir / single).is_file():
            return [model_dir / single], model_dir / single
    shards = sorted(model_dir.glob("model-*.safetensors")) or sorted(model_dir.glob("pytorch_model-*.bin"))
    if shards:
        return shards, shards[0]
    raise FileNotFoundError(f"{model_dir}: no weights (pytorch_model*.bin, model*.safetensors or an index)")


def check_weight_file(path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` when it is truncated or not a weight file."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        _check_safetensors(path, size)
        return
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _ZIP_MAGIC:
        return  # torch's legacy (pre-1.6) pickle format: nothing cheap to check
    try:
        with zipfile.ZipFile(path) as archive:
            last = max((info.header_offset + info.compress_size for info in archive.infolist()), default=0)
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch weight file ({size} bytes; {error}); "
                              "download it again") from None
    if last > size:
        raise CheckpointError(f"{path}: truncated PyTorch weight file ({size} bytes, its records end at {last}); "
                              "download it again")


def _check_safetensors(path: Path, size: int) -> None:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header); download it again")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, header of "
                                  f"{header_size} bytes announced); download it again")
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: corrupt safetensors header ({error}); download it again") from None
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, its header describes {expected}); "
                              "download it again")


def check_weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """Check every weight file of a checkpoint folder; returns them."""
    files, _ = weight_files(model_dir)
    for path in files:
        check_weight_file(path)
    return files


_CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def has_weight_files(model_dir: str | os.PathLike) -> bool:
    """Whether a folder holds weights or a shard index (a folder of config files only has none to check)."""
    folder = Path(model_dir).expanduser()
    return any((folder / name).is_file() for name in (*WEIGHT_INDEXES, *_SINGLE_FILES)) or \
        any(folder.glob("model-*.safetensors")) or any(folder.glob("pytorch_model-*.bin"))


def check_checkpoint_folder(folder: str | os.PathLike) -> list[Path]:
    """Check every weight-like file directly in a training checkpoint or adapter folder (weights,
    adapter, optimizer, scheduler, RNG state): ``--resume_from_checkpoint`` and ``--adapters``."""
    files = sorted(path for path in Path(folder).expanduser().iterdir()
                   if path.is_file() and path.suffix in _CHECKPOINT_FILE_SUFFIXES)
    for path in files:
        check_weight_file(path)
    return files


def load_weight_file(path: Path) -> dict[str, Tensor]:
    """All tensors of one (checked) weight file, on the CPU."""
    check_weight_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def weight_names(model_dir: str | os.PathLike) -> set[str]:
    """Tensor names stored in a checkpoint folder (safetensors or .bin, sharded or not)."""
    indexed = _weight_index(Path(model_dir))
    if indexed is not None:
        return set(indexed[1])
    try:
        files, _ = weight_files(model_dir)
    except FileNotFoundError:
        return set()
    names: set[str] = set()
    for path in files:
        check_weight_file(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as handle:
                names.update(handle.keys())
        else:
            names.update(torch.load(path, map_location="meta", weights_only=True).keys())
    return names


def checkpoint_model_type(model: str | os.PathLike | None) -> str | None:
    """``model_type`` in a local checkpoint folder's config.json (``llava`` for the original layout);
    None for a hub id, a folder without config.json, or a broken one (its loader reports that, with
    the position)."""
    if model is None:
        return None
    config_path = Path(model).expanduser() / "config.json"
    if not config_path.is_file():
        return None
    try:
        value = read_json(config_path)
    except JsonFileError:
        return None
    return value.get("model_type") if isinstance(value, dict) else None
