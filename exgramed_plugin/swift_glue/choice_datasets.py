"""Registered swift names for the multiple-choice benchmarks (PMC-VQA, OmniMedVQA, MMMU-Med, MedXpertQA-MM).

``--val_dataset pmc_vqa_hf_test`` (also ``omnimedvqa_hf_test``, ``mmmu_med_hf_{dev,val,test}``,
``medxpertqa_mm_hf_{dev,test}``): the questions as ``exgramed eval`` asks them (MedEvalKit's prompt, the
answer letter as the reference reply, the ``mc_question`` column that ``--eval_metric exgra_mc`` scores
with), from ``$EXGRAMED_<NAME>_DIR`` (MedEvalKit's folder layout) or the hub copy. A benchmark with an
invalid question stops the load, naming every one (a training run must not score a silently smaller set).
"""

from __future__ import annotations

import dataclasses

from swift.dataset import DATASET_MAPPING, DatasetLoader, DatasetMeta, register_dataset

from ..data.mc_benchmarks import BENCHMARKS, load_choice_benchmark
from ..metrics.multiple_choice import question_row
from .datasets import keep_extra_columns
from .hub_datasets import standard_rows_dataset

SPLIT_SUFFIXES = {"dev": "dev", "validation": "val", "test": "test"}  # benchmark split -> name suffix


@dataclasses.dataclass
class ChoiceBenchmarkMeta(DatasetMeta):
    """A registered name for one split of one multiple-choice benchmark."""

    benchmark: str = ""


class ChoiceBenchmarkLoader(DatasetLoader):
    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        split = dataset_meta.split[0]
        loaded = load_choice_benchmark(dataset_meta.benchmark, split)
        loaded.require_valid()
        rows = [question_row(question, split) for question in loaded.questions]
        return standard_rows_dataset(self, rows, f"{BENCHMARKS[dataset_meta.benchmark].hub.repo_id} ({split})")


def choice_dataset_metas() -> list[ChoiceBenchmarkMeta]:
    metas = []
    for benchmark in BENCHMARKS.values():
        for split in benchmark.hub.splits:
            name = f"{benchmark.name}_hf_{SPLIT_SUFFIXES[split]}"
            metas.append(ChoiceBenchmarkMeta(
                dataset_name=name, ms_dataset_id=f"exgramed/{name}", hf_dataset_id=f"exgramed/{name}", split=[split],
                subsets=["default"], loader=ChoiceBenchmarkLoader, benchmark=benchmark.name,
                tags=["medical", "exgra_med", "hub", "multiple-choice"],
                help=f"{benchmark.hub.repo_id} {split} split, MedEvalKit's prompt (set {benchmark.hub.dir_env} to a "
                     "local copy)"))
    return metas


def register_choice_benchmarks() -> None:
    """Register the multiple-choice ``*_hf_*`` names with swift; safe to call more than once."""
    keep_extra_columns()
    for meta in choice_dataset_metas():
        if not isinstance(DATASET_MAPPING.get(meta.dataset_name), ChoiceBenchmarkMeta):
            register_dataset(meta, exist_ok=True)
