"""The endpoints of a cell, from one model and its template.

* **Likelihood-ranked accuracy** (the primary endpoint on the open items, a secondary one on the
  closed items): the model scores every answer the question can have (:func:`.easy_vqa_data.answer_options`)
  with the plugin's one likelihood scorer (:func:`~exgramed_plugin.eval.zeroshot.option_log_likelihoods`,
  the scorer of ``eval-zeroshot`` and ``exgramed eval``); its top option (first on ties) is its answer,
  compared with the ground truth case-insensitively. No generation, no string matching: a model
  that ranks the right colour first is right, whatever it would have generated.
* **Generated answers** (secondary, the paper's numbers): greedy answers through swift's
  transformers engine in the training prompt (``v0``, answers without ``Assistant:``), scored by
  ``eval-vqa``'s original ``run_eval.py`` metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data.formats import row_to_standard
from ...common.jsonio import read_json, write_jsonl
from ...metrics.multiple_choice import argmax_first
from ...eval.zeroshot import option_log_likelihoods
from .easy_vqa_data import answer_options


@dataclass(frozen=True)
class TestItem:
    """One VQA test row as the scorer needs it."""

    id: str
    content: str  # the user turn as in training: question (+ yes/no option text), then the <image> tag
    image: str
    answer: str
    options: tuple[str, ...]


def easy_vqa_options(row: dict[str, Any], question: str) -> tuple[str, ...]:
    """easy-vqa: every answer the question text can have."""
    return answer_options(question.split(" (Answer")[0])


def load_test_items(path: str | Path, options_for: Callable[[dict[str, Any], str], Sequence[str]] = easy_vqa_options
                    ) -> list[TestItem]:
    """The rows of a VQA test file (one question, its answer, one image; images resolved as in
    training); ``options_for(row, question)`` names the options each item's ranking scores."""
    items = []
    for row in read_json(path):
        standard = row_to_standard(row, str(path))
        human, answer = standard["messages"][0]["content"], standard["messages"][1]["content"]
        question = human.replace("<image>", "").strip()
        items.append(TestItem(str(row["id"]), human, standard["images"][0], answer,
                              tuple(options_for(row, question))))
    return items


def likelihood_accuracy(model, template, items: Sequence[TestItem]) -> dict[str, Any]:
    """Percent of ``items`` whose highest-likelihood option is the answer, and each item's choice."""
    model.eval()
    choices = []
    for item in items:
        scores = option_log_likelihoods(model, template, item.content, item.options, [item.image],
                                        batch_size=len(item.options))
        choices.append(item.options[argmax_first(scores)])
    correct = [choice.lower() == item.answer.lower() for choice, item in zip(choices, items)]
    return {"accuracy": 100.0 * sum(correct) / len(items), "n": len(items),
            "choices": {item.id: choice for item, choice in zip(items, choices)}}


def generate_answers(model, template, test_files: Sequence[str | Path], out_path: Path, *,
                     max_new_tokens: int, batch_size: int = 64) -> Path:
    """Greedy answers to every row of ``test_files`` as ``{"id", "response"}`` lines at ``out_path``."""
    from swift.infer_engine import InferRequest, RequestConfig, TransformersEngine

    from ...settings import TemplateSettings

    rows = [row for path in test_files for row in read_json(path)]
    previous = template.settings
    template.settings = TemplateSettings(prompt_style="v0", response_mode="clean")
    try:
        engine = TransformersEngine(model, template=template, max_batch_size=batch_size)
        requests = [InferRequest(messages=[{"role": "user", "content": row["conversations"][0]["value"]}],
                                 images=[row["image"]]) for row in rows]
        responses = engine.infer(requests, RequestConfig(max_tokens=max_new_tokens, temperature=0), use_tqdm=False)
    finally:
        template.settings = previous
        template.set_mode("train")
    write_jsonl(out_path, ({"id": row["id"], "response": response.choices[0].message.content}
                           for row, response in zip(rows, responses)))
    return out_path
