"""Datasets for swift: our preprocessor for ``--dataset <file>`` and registered dataset names.

* ``--dataset data.json`` (LLaVA-Med / VQA JSON, or a swift JSONL with ``extended_answers``): the
  file is sniffed and, when it is one of our formats, preprocessed by :class:`ExGraMedPreprocessor`
  (images resolved against the file's folder, extra fields kept, every bad row an error).
* ``--dataset vqa_rad_train`` etc.: names whose files live under ``$EXGRAMED_DATA_ROOT`` in the
  layout of the original release; ``exgra_med_demo_*`` under ``$EXGRAMED_DEMO_DIR``
  (written by ``exgramed make-demo-data``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swift.dataset import DATASET_MAPPING, DatasetLoader, DatasetMeta, register_dataset
from swift.dataset.dataset_syntax import DatasetSyntax
from swift.dataset.preprocessor import RowPreprocessor

from ..data.formats import EXTRA_COLUMNS, DataFormatError, detect_format, row_to_standard
from ..common.jsonio import holds_no_rows, read_json_or_jsonl
from ..settings import LOSS_TYPE, current_settings

DATA_ROOT_ENV = "EXGRAMED_DATA_ROOT"
DEMO_DIR_ENV = "EXGRAMED_DEMO_DIR"
DEFAULT_DEMO_DIR = "~/.cache/exgramed/demo_data"
DEFAULT_DATA_ROOT = "~/exgramed_data"  # where `exgramed download` places the data by default
_SNIFF_BYTES = 65536
_OUR_FORMAT = re.compile(r'"(conversations|conversatons)"\s*:|"extended_answers"\s*:')
_MESSAGES_WITH_IMAGES = (re.compile(r'"messages"\s*:'), re.compile(r'"images?"\s*:'))


class ExGraMedPreprocessor(RowPreprocessor):
    """Converts our formats to swift rows; always strict (a bad row stops the run, naming itself).

    With multi-graph alignment on (the run's settings when the preprocessor is made), every row
    must carry extended answers: checked here, before training, rather than at encode time where
    swift would replace the row by a random other one.
    """

    def __init__(self, source: str | None = None, image_root: str | None = None,
                 require_extended_answers: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.image_root = image_root
        if require_extended_answers is None:
            settings = current_settings()
            require_extended_answers = settings.mga.active and settings.training
        self.require_extended_answers = require_extended_answers

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        standard = row_to_standard(row, self.source, self.image_root)
        if self.require_extended_answers and not standard.get("extended_answers"):
            field = "extended_answers" if detect_format(row) == "messages" else "conversations_long"
            raise DataFormatError(f"{self.source or '<dataset>'}, row id={standard.get('id')!r}, field {field!r}: "
                                  f"missing; --loss_type {LOSS_TYPE} needs extended answers for every training row "
                                  "(exgramed extend-captions writes them)")
        return standard

    def __call__(self, dataset, *, strict: bool = False, load_from_cache_file: bool = True, **kwargs):
        # Never drop rows silently, and re-check images on every load (a cached result would hide
        # an image deleted since).
        return super().__call__(dataset, strict=True, load_from_cache_file=False, **kwargs)


def keep_extra_columns() -> None:
    """Let ``id``, ``answer_type`` and ``extended_answers`` survive swift's column filtering."""
    for column in EXTRA_COLUMNS:
        if column not in RowPreprocessor.standard_keys:
            RowPreprocessor.standard_keys.append(column)


def is_our_format(path: str) -> bool:
    """Cheap sniff of the first 64 KiB: LLaVA-Med/VQA conversations, or swift rows with images or
    extended answers (so that their relative image paths resolve against the file's folder)."""
    if not path.endswith((".json", ".jsonl")):
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(_SNIFF_BYTES)
    return bool(_OUR_FORMAT.search(head)) or all(p.search(head) for p in _MESSAGES_WITH_IMAGES)


def check_json_file(path: str) -> None:
    """Parse the file before swift does: swift reports a broken file as a generic
    ``DatasetGenerationError``, or a bad JSONL line by 0-based row in a middle log line. Raises
    :class:`JsonFileError` (``FILE:LINE:COLUMN: what is wrong``)."""
    check_has_rows(path)
    read_json_or_jsonl(path)


def check_has_rows(path: str) -> None:
    """An empty data file (``[]``, e.g. when ``extend-captions`` got no usable reply) is named here;
    swift reports it as ``Instruction "train" corresponds to no data!`` without the file."""
    if path.endswith((".json", ".jsonl")) and os.path.isfile(path) and holds_no_rows(path):
        raise DataFormatError(f"{os.path.abspath(path)}: the data file holds no rows (an empty JSON list or "
                              "JSON Lines file); a dataset needs at least one row")


def file_dataset_meta(path: str, image_root: str | None = None) -> DatasetMeta:
    path = os.path.abspath(path)
    check_json_file(path)
    return DatasetMeta(dataset_path=path, preprocess_func=ExGraMedPreprocessor(source=path, image_root=image_root))


_PATCH_MARK = "_exgramed_patched"


def route_our_files_to_our_preprocessor() -> None:
    """Make ``--dataset <file>`` use :class:`ExGraMedPreprocessor` for files in our formats.

    swift picks ``AutoPreprocessor`` for unregistered files, which resolves relative image paths
    against the current directory and drops rows on errors; both are wrong for this data.
    """
    original = DatasetSyntax.get_dataset_meta
    if getattr(original, _PATCH_MARK, False):
        return

    def get_dataset_meta(self: DatasetSyntax, use_hf: bool) -> DatasetMeta:
        if self.dataset_type == "path":
            check_has_rows(self.dataset)
            registered = DatasetSyntax._get_dataset_meta_mapping().get(("path", self.dataset))
            if registered is None and is_our_format(self.dataset):
                return file_dataset_meta(self.dataset)
        return original(self, use_hf)

    setattr(get_dataset_meta, _PATCH_MARK, True)
    DatasetSyntax.get_dataset_meta = get_dataset_meta


@dataclasses.dataclass
class NamedDatasetMeta(DatasetMeta):
    """A registered name whose file is found at load time under an environment-chosen root."""

    root_env: str = DATA_ROOT_ENV
    default_root: str | None = None
    relative_path: str = ""

    def resolve_path(self, environ: Mapping[str, str] | None = None) -> str:
        """The file under the root named by ``environ`` (default: this process's environment)."""
        root = (os.environ if environ is None else environ).get(self.root_env) or self.default_root
        if root is None:
            raise FileNotFoundError(f"dataset {self.dataset_name!r}: set {self.root_env} to the folder that holds "
                                    f"{self.relative_path}")
        path = Path(root).expanduser() / self.relative_path
        if not path.is_file():
            hint = " (run `exgramed make-demo-data` first)" if self.root_env == DEMO_DIR_ENV else ""
            raise FileNotFoundError(f"dataset {self.dataset_name!r}: {path} not found{hint}")
        return str(path.resolve())


class NamedDatasetLoader(DatasetLoader):
    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        path = dataset_meta.resolve_path()
        check_json_file(path)
        meta = dataclasses.replace(dataset_meta, dataset_path=path,
                                   preprocess_func=ExGraMedPreprocessor(source=path))
        return self._load_dataset_path(path, dataset_meta=meta)


def _named(name: str, relative_path: str, root_env: str = DATA_ROOT_ENV, default_root: str | None = DEFAULT_DATA_ROOT,
           help_text: str = "") -> NamedDatasetMeta:
    return NamedDatasetMeta(
        dataset_name=name, ms_dataset_id=f"exgramed/{name}", hf_dataset_id=f"exgramed/{name}",
        loader=NamedDatasetLoader, root_env=root_env, default_root=default_root, relative_path=relative_path,
        tags=["medical", "exgra_med"], help=help_text)


def registered_datasets() -> list[NamedDatasetMeta]:
    metas = [
        _named("exgra_med_demo_alignment", "alignment_train.json", DEMO_DIR_ENV, DEFAULT_DEMO_DIR,
               "demo instruct data with extended answers (exgramed make-demo-data)"),
        _named("exgra_med_demo_vqa_train", "train_w_options_new.json", DEMO_DIR_ENV, DEFAULT_DEMO_DIR, "demo VQA train split"),
        _named("exgra_med_demo_vqa_test", "test_w_options_new.json", DEMO_DIR_ENV, DEFAULT_DEMO_DIR, "demo VQA test split"),
    ]
    for name, folder in (("vqa_rad", "VQA-RAD"), ("slake", "SLAKE"), ("pathvqa", "PATH-VQA")):
        for split in ("train", "val", "test"):
            metas.append(_named(f"{name}_{split}", f"{folder}/{split}_w_options_new.json",
                                help_text=f"{folder} {split} split, release layout of MERGE-Group/{folder}"))
    for fraction in (10, 40, 100):
        metas.append(_named(f"llava_med_alignment_{fraction}",
                            f"llava_med/llava_med_alignment_{fraction}_2_conversations.json",
                            help_text=f"stage-1 alignment data, {fraction}% subset with extended captions"))
        metas.append(_named(f"llava_med_instruct_{fraction}",
                            f"llava_med/llava_med_instruct_{fraction}_inline_mention_2_conversations.json",
                            help_text=f"stage-2 instruct data, {fraction}% subset with extended answers"))
    return metas


def register_exgra_med_datasets() -> None:
    keep_extra_columns()
    route_our_files_to_our_preprocessor()
    for meta in registered_datasets():
        if DATASET_MAPPING.get(meta.dataset_name) is not meta:
            register_dataset(meta, exist_ok=True)
