"""A LLaMA-style tokenizer sized for the miniature, trained offline on the experiment's own text.

Why: in the tiny ``exgra_med`` checkpoints of :mod:`exgramed_plugin.tiny_checkpoints.exgra_med` the 32,000-token
LLaMA vocabulary is most of the parameters and of the compute (embedding + LM head rows, the
softmax); easy-vqa needs about a hundred words. This tokenizer keeps everything the plugin relies
on and shrinks only the vocabulary:

* the same class (``LlamaTokenizerFast``), SentencePiece-BPE layout and pipeline: ``▁`` word
  boundaries (Metaspace, prepend ``▁`` to the first word of each encoded chunk), byte fallback
  (ids 3-258 are ``<0x00>`` ... ``<0xFF>`` as in LLaMA, so any text still encodes), then the
  characters and merges learned here;
* the same special tokens as the plugin's tiny checkpoints: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2
  (``</s>`` is BOS *and* EOS, as in the LLaVA-Med lineage, docs/method.md §1.8) and the four added
  tokens ``[PAD] <im_patch> <im_start> <im_end>`` in the original order, right after the trained
  vocabulary (their ids come from the tokenizer, never hard-coded, see ``ExGraMedConfig``).

The BPE is trained with the ``tokenizers`` library on :func:`experiment_corpus`: the ``exgra_med``
template's fixed text (system prompt, ``### Human:`` / ``### Assistant:``, the §2.3 few-shot turn),
every easy-vqa question with and without the yes/no option text, every answer and every extended
answer, and the text-only warm-up's turns (:mod:`.warmup`). Words are learned whole (a
pre-tokenizer that splits at ``▁`` during training), so the
vocabulary stops growing once every word of the corpus is one token (a few hundred tokens).
"""

from __future__ import annotations

import logging
from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaTokenizerFast

from ...data.conversation import SEPARATOR, SIMPLE_FEW_SHOT, SYSTEM_PROMPT
from ...common.tokens import ADDED_TOKENS, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, \
    PAD_TOKEN

logger = logging.getLogger(__name__)
BASE_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))
DEFAULT_VOCAB_SIZE = 1000


def experiment_corpus() -> list[str]:
    """Every text the miniature tokenizes: template text, easy-vqa questions, answers, extended answers
    and the warm-up turns."""
    from .easy_vqa_data import YES_NO_OPTIONS, _questions, extend_answer
    from .warmup import warmup_turns

    texts = [SYSTEM_PROMPT, f"{SEPARATOR} Human: ", f"{SEPARATOR} Assistant: ", f"\n{SEPARATOR} ",
             SIMPLE_FEW_SHOT, "Assistant:", "Human:"]
    seen: set[tuple[str, str]] = set()
    for split in ("train", "test"):
        for question, answer, _ in _questions(split):
            if (question, answer) in seen:
                continue
            seen.add((question, answer))
            options = YES_NO_OPTIONS if answer in ("yes", "no") else ""
            texts += [question, question + options, answer, extend_answer(question, answer)]
    texts += sorted({text for turn in warmup_turns() for text in turn})
    return texts


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a SentencePiece-style BPE: base + byte tokens first, then the alphabet and merges."""
    texts = list(texts)
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    alphabet = sorted({char for text in texts for char in text.replace(" ", "▁")} | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*BASE_TOKENS, *BYTE_TOKENS],
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False,
                                  min_frequency=1)
    bpe.train_from_iterator(texts, trainer=trainer)
    vocab = bpe.get_vocab(with_added_tokens=True)
    expected = {token: index for index, token in enumerate((*BASE_TOKENS, *BYTE_TOKENS))}
    if any(vocab.get(token) != index for token, index in expected.items()):
        raise RuntimeError("the BPE trainer did not put <unk> <s> </s> and the byte tokens at ids 0-258")
    import json
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ", 1))
              for pair in json.loads(bpe.to_str())["model"]["merges"]]
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges


def build_experiment_tokenizer(texts: Iterable[str] | None = None,
                               vocab_size: int = DEFAULT_VOCAB_SIZE) -> LlamaTokenizerFast:
    """The small tokenizer: trained BPE + ``</s>`` as BOS/EOS + ``[PAD] <im_patch> <im_start> <im_end>``."""
    vocab, merges = train_bpe(experiment_corpus() if texts is None else texts, vocab_size)
    tokenizer = LlamaTokenizerFast(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=2048, padding_side="right",
                                   add_bos_token=False, add_eos_token=False)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN,
                                  "additional_special_tokens": [IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN]})
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(len(vocab), len(vocab) + len(ADDED_TOKENS))):
        raise RuntimeError(f"unexpected ids for the added tokens: {dict(zip(ADDED_TOKENS, ids))}")
    logger.info("experiment tokenizer: %d trained tokens + %d added (%d merges)", len(vocab), len(ADDED_TOKENS),
                len(merges))
    return tokenizer
