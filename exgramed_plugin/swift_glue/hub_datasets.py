"""Registered swift names for the public hub copies of VQA-RAD, PathVQA and SLAKE.

``--dataset vqa_rad_hf_test`` (also ``_train``), ``pathvqa_hf_{train,val,test}``,
``slake_hf_{train,val,test}`` with the language subsets ``slake_hf_test:en`` / ``:zh`` (no subset:
both languages). Rows come from :mod:`exgramed_plugin.data.hub_benchmarks` (files from
``$EXGRAMED_*_HF_DIR`` or the Hugging Face cache / hub) and then pass through the same strict
:class:`ExGraMedPreprocessor` as every other dataset of the plugin, so ``id`` and ``answer_type``
survive and no row is dropped.
"""

from __future__ import annotations

import dataclasses

from datasets import Dataset as HfDataset
from swift.dataset import DATASET_MAPPING, DatasetLoader, DatasetMeta, register_dataset
from swift.dataset.preprocessor import RowPreprocessor

from ..data.hub_benchmarks import BENCHMARKS, LANGUAGES, load_benchmark
from .datasets import ExGraMedPreprocessor, keep_extra_columns

_SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}  # hub split → name suffix


@dataclasses.dataclass
class HubBenchmarkMeta(DatasetMeta):
    """A registered name for one split (``split[0]``, the hub's name) of one hub benchmark."""

    benchmark: str = ""


def language_of(meta: HubBenchmarkMeta, subsets: list[str]) -> str:
    """``en`` / ``zh`` for one SLAKE language subset, ``all`` for none or both; else an error."""
    chosen = set(subsets) - {"all", "default"}
    if not chosen or (BENCHMARKS[meta.benchmark].layout == "slake" and chosen == set(LANGUAGES)):
        return "all"
    allowed = list(LANGUAGES) if BENCHMARKS[meta.benchmark].layout == "slake" else []
    unknown = sorted(chosen - set(allowed))
    if unknown:
        raise ValueError(f"dataset {meta.dataset_name!r}: unknown subset(s) {unknown}; subsets: {allowed or 'none'}")
    return chosen.pop()


def standard_rows_dataset(loader: DatasetLoader, rows: list[dict], source: str):
    """Rows a benchmark loader built, through the plugin's strict preprocessor, as swift's loaders return them."""
    dataset = ExGraMedPreprocessor(source=source)(HfDataset.from_list(rows), num_proc=loader.num_proc)
    if loader.remove_unused_columns:
        dataset = RowPreprocessor.remove_useless_columns(dataset)
    return dataset


class HubBenchmarkLoader(DatasetLoader):
    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        benchmark = BENCHMARKS[dataset_meta.benchmark]
        split = dataset_meta.split[0]
        rows = load_benchmark(benchmark.name, split, language=language_of(dataset_meta, dataset_syntax.subsets))
        return standard_rows_dataset(self, rows, f"{benchmark.repo_id} ({split})")


def hub_dataset_metas() -> list[HubBenchmarkMeta]:
    metas = []
    for benchmark in BENCHMARKS.values():
        subsets = list(LANGUAGES) if benchmark.layout == "slake" else ["default"]
        for split in benchmark.splits:
            name = f"{benchmark.name}_hf_{_SPLIT_NAMES[split]}"
            metas.append(HubBenchmarkMeta(
                dataset_name=name, ms_dataset_id=f"exgramed/{name}", hf_dataset_id=f"exgramed/{name}",
                split=[split], subsets=subsets, loader=HubBenchmarkLoader, benchmark=benchmark.name,
                tags=["medical", "exgra_med", "hub"],
                help=f"{benchmark.repo_id} {split} split (set {benchmark.dir_env} to a local copy)"))
    return metas


def register_hub_benchmarks() -> None:
    """Register the ``*_hf_*`` names with swift; safe to call more than once."""
    keep_extra_columns()
    for meta in hub_dataset_metas():
        if not isinstance(DATASET_MAPPING.get(meta.dataset_name), HubBenchmarkMeta):
            register_dataset(meta, exist_ok=True)
