"""Tiny random-weight checkpoints of other swift model types, built offline (tests, alignment work).

Why: comparing ExGra-Med with today's medical VLMs (Lingshu, HuatuoGPT-Vision: Qwen2/2.5-VL based)
goes through swift's own model types, and tests cannot download a real one. A checkpoint written
here has the real architecture, token ids and processor layout, with a few thousand-times smaller
dimensions and random weights, and loads with ``swift.model.get_model_processor(dir,
model_type=<type>)`` on a CPU in seconds (:data:`TINY_MODEL_TYPES`; the swift template of each type
is :data:`TINY_MODEL_TEMPLATES`). Every language model is hidden 64, 2 layers, 4 heads (2 KV
heads), intermediate 128, weights drawn with std :data:`TEXT_INIT_STD`, and the embedding rows of
ids the tiny tokenizer never produces are zero; every vision tower is 2 layers, hidden 32.

``qwen2_5_vl`` (``Qwen2_5_VLForConditionalGeneration``), shaped after Qwen2.5-VL-3B-Instruct:

* Tokenizer: a byte-level BPE trained here with the ``tokenizers`` library on
  :func:`medical_sentences` (Qwen2's normalizer, pre-tokenizer regex and decoder, taken from
  ``transformers.models.qwen2.tokenization_qwen2``), plus Qwen2.5-VL's special tokens **at their
  real ids** (151643 ``<|endoftext|>`` ... 151656 ``<|video_pad|>``): swift's ``Qwen2VLTemplate``
  hard-codes ``image_token_id = 151655`` / ``video_token_id = 151656``
  (``swift/template/templates/qwen.py``), so smaller ids would not expand into image tokens.
  The ids between the trained vocabulary and 151643 are unused; their (tied) embedding rows are
  zero, so greedy decoding picks real tokens rather than ids that decode to nothing.
* Chat template: Qwen2.5-VL-Instruct's ``chat_template.json`` (:data:`QWEN2_5_VL_CHAT_TEMPLATE`);
  swift's ``qwen2_5_vl`` template builds the same text itself, the Jinja one serves plain
  transformers users of the checkpoint.
* Vision: depth 2, hidden 32, patch 14, spatial merge 2, temporal patch 2 (the patch/merge sizes
  qwen_vl_utils resizes for: images become multiples of 28 px); text: hidden 64, 2 layers, 4 heads
  (2 KV heads), M-RoPE sections (2, 3, 3) = head_dim / 2.
* Text weights are drawn with std :data:`TEXT_INIT_STD` (0.3) instead of 0.02, so that greedy
  answers differ between questions.
* Image processor: ``min_pixels`` 4·28², ``max_pixels`` 16·28² (≤ 16 merged image tokens when the
  processor resizes; swift resizes with qwen_vl_utils instead, whose limits are its
  ``MIN_PIXELS``/``MAX_PIXELS`` environment variables).

``qwen3_vl`` (``Qwen3VLForConditionalGeneration``, template ``qwen3_vl``), shaped after
Qwen3-VL-2B-Instruct:

* Tokenizer: the same trained byte-level BPE, with Qwen2.5-VL's special tokens at the same ids
  (swift's ``Qwen3VLTemplate`` inherits ``image_token_id = 151655`` / ``video_token_id = 151656``;
  ``Qwen3VLConfig``'s defaults agree) plus the rest of the Qwen3 added-token block as plain added
  tokens: 151657-151664 (``<tool_call>`` ... ``<|file_sep|>``) and 151665-151668
  (``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``; swift's thinking prefix is
  ``<think>\\n``). Vocabulary 151936 rows, tied with lm_head; EOS ``<|im_end|>``, pad
  ``<|endoftext|>``. No Jinja chat template (swift builds the prompt itself).
* Vision: depth 2, hidden 32, patch 16, spatial merge 2, temporal patch 2, 64 learned position
  embeddings (an 8x8 grid, interpolated like the real 48x48 one) and one DeepStack layer,
  ``deepstack_visual_indexes = [0]`` (real towers tap three intermediate layers, ``Qwen3VLVisionConfig``'s
  default (8, 16, 24), into the first LLM layers; index 0 of a 2-layer tower into LLM layer 0 is the
  valid tiny counterpart). Text: head_dim 16, interleaved M-RoPE sections (4, 2, 2) = head_dim / 2
  (the real (24, 20, 20) of 64 gives T the most), rope_theta 5e6.
* Image processor: ``Qwen2VLImageProcessor`` with patch 16 / merge 2 (images become multiples of
  32 px), mean/std 0.5, 4-16 merged tokens when it resizes; swift resizes with qwen_vl_utils
  (``IMAGE_MIN_TOKEN_NUM``/``IMAGE_MAX_TOKEN_NUM``): a 48 px image becomes 64 px, 4 image tokens.
  Video: ``Qwen3VLVideoProcessor`` with the same patching.

``internvl`` (``InternVLForConditionalGeneration``, swift model type ``internvl``, template
``internvl_hf``), shaped after OpenGVLab/InternVL3-1B-hf:

* Tokenizer: the trained BPE with the Qwen2.5-VL-7B-Instruct added tokens (151643-151664) and the
  nine InternVL tokens transformers' ``convert_internvl_weights_to_hf.py`` adds to it, in its order:
  151665 ``<img>``, 151666 ``</img>``, 151667 ``<IMG_CONTEXT>`` (= ``InternVLConfig``'s default
  ``image_token_id``), 151668 ``<quad>`` ... 151673 ``</box>``; vocabulary 151674 rows (InternVL3-1B's
  ``llm_config.vocab_size``), tied. ``start_image_token``/``end_image_token``/``context_image_token``
  are named tokenizer attributes as in the hub tokenizer_config; the video token is the existing
  ``<|video_pad|>``, not the hub's ``<video>`` (not among the 151674 tokens; transformers 5 would
  add it at id 151674, past the embedding). EOS ``<|im_end|>`` (the converter forces 151645).
* Vision: InternViT layout (CLS token, qkv bias, layer scale 0.1, LayerNorm), 2 layers, hidden 32,
  image 56, patch 14; pixel shuffle 0.5 and the LayerNorm-MLP projector: 4 ``<IMG_CONTEXT>`` tokens
  per 56-px tile (``image_seq_length``; the real model: 448 px, 256).
* Image processor: ``GotOcr2ImageProcessor`` (what ``InternVLProcessor`` loads), 56x56 tiles,
  ImageNet mean/std, ``max_patches`` 2: a square image is 1 tile, a 2:1 one 2 tiles + a thumbnail.

``llava1_5_hf`` (``LlavaForConditionalGeneration``, template ``llava1_5_hf``), shaped after
llava-hf/llava-1.5-7b-hf:

* Tokenizer: the LLaMA-2 SentencePiece-BPE vocabulary of :mod:`.tiny` (PyPI ``wordllama``; ids
  0 ``<unk>``, 1 ``<s>`` = BOS, 2 ``</s>`` = EOS, as in LLaMA/Vicuna) plus ``<image>`` at 32000
  (llava-1.5-hf's ``image_token_index``) and ``<pad>`` at 32001 (its ``pad_token_id``); embedding
  and (untied) lm_head rows padded to 32064.
* Vision: CLIP ViT (quick_gelu), 2 layers, hidden 32, image 56, patch 14: 16 patches + CLS;
  ``vision_feature_layer`` -2 and strategy ``default`` (CLS dropped) as in llava-1.5, so
  ``LlavaProcessor(patch_size=14, num_additional_image_tokens=1, vision_feature_select_strategy=
  "default")`` and swift expand ``<image>`` to exactly the 16 features. Text: LLaMA, RMSNorm eps
  1e-5, untied lm_head. Image processor: ``CLIPImageProcessor`` (shortest edge 56, center crop 56).

``gemma3_vision`` (``Gemma3ForConditionalGeneration``, template ``gemma3_vision``), shaped after
gemma-3-4b-it / MedGemma-4B:

* Tokenizer: a ``GemmaTokenizer`` (BPE with byte fallback, spaces as ``▁``, BOS added) trained on
  the same corpus, with Gemma 3's special tokens at their ids: 0 ``<pad>``, 1 ``<eos>``, 2 ``<bos>``
  (``Gemma3TextConfig`` defaults), 255999 ``<start_of_image>``, 256000 ``<end_of_image>``, 262144
  ``<image_soft_token>`` (``Gemma3Config``'s boi/eoi/image token index defaults; swift's
  ``Gemma3VisionTemplate.boi_token_id`` is 255999), and 3 ``<unk>``, 4 ``<mask>``, 5 ``[multimodal]``,
  105 ``<start_of_turn>``, 106 ``<end_of_turn>`` (Gemma's tokenizer: neither transformers nor swift
  hard-codes these five). The 256 byte-fallback tokens (from 107) and the trained tokens after them
  are this file's layout, not Gemma's ids. Vocabulary 262208 rows, tied; generation stops at
  ``<eos>`` or ``<end_of_turn>``. ``boi_token``/``eoi_token``/``image_token`` are named tokenizer
  attributes, as ``Gemma3Processor`` needs.
* Vision: SigLIP (no pooling head), 2 layers, hidden 32, image 56, patch 14: 4x4 patches average-
  pooled 2x2 into ``mm_tokens_per_image`` = 4 soft tokens (the real model: 896 px, 64x64 -> 256).
  Text: head_dim 16 (= ``query_pre_attn_scalar``), one sliding (window 512, rope_theta 1e4) and one
  full-attention layer (linear rope factor 8, rope_theta 1e6), the 4b model's two rope kinds.
* Image processor: ``Gemma3ImageProcessor`` (56x56, mean/std 0.5, no pan-and-scan).

The four newer types are saved in bfloat16 (as the real checkpoints; it halves the files: 12-34 MB,
gemma's 262k-row embedding the largest); load them with ``torch_dtype=torch.float32`` on a CPU.
Weights depend only on ``seed``; the global RNG is left as it was.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GemmaTokenizer, LlamaTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

logger = logging.getLogger(__name__)

TINY_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl", "internvl", "llava1_5_hf", "gemma3_vision")
# swift template of each type (its ModelMeta's default template).
TINY_MODEL_TEMPLATES = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "internvl": "internvl_hf",
                        "llava1_5_hf": "llava1_5_hf", "gemma3_vision": "gemma3_vision"}

# Qwen2.5-VL's special tokens and their ids (tokenizer_config.json "added_tokens_decoder" of
# Qwen/Qwen2.5-VL-3B-Instruct; the same block in every Qwen2.5 tokenizer).
QWEN2_5_VL_SPECIAL_TOKENS: tuple[tuple[int, str], ...] = (
    (151643, "<|endoftext|>"), (151644, "<|im_start|>"), (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"), (151647, "<|object_ref_end|>"), (151648, "<|box_start|>"),
    (151649, "<|box_end|>"), (151650, "<|quad_start|>"), (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"), (151653, "<|vision_end|>"), (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"), (151656, "<|video_pad|>"),
)
QWEN2_5_VL_VOCAB_SIZE = 151936  # config.json of Qwen2.5-VL-3B-Instruct (embedding rows, tied)
# The rest of the Qwen2.5 added-token block (added, not special): tool calls and fill-in-the-middle.
QWEN2_5_PLAIN_TOKENS: tuple[tuple[int, str], ...] = (
    (151657, "<tool_call>"), (151658, "</tool_call>"), (151659, "<|fim_prefix|>"), (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"), (151662, "<|fim_pad|>"), (151663, "<|repo_name|>"), (151664, "<|file_sep|>"),
)
# Qwen3's additions (Qwen3-VL uses the Qwen3 tokenizer; swift's qwen3_vl template starts thinking with "<think>\n").
QWEN3_PLAIN_TOKENS: tuple[tuple[int, str], ...] = (
    (151665, "<tool_response>"), (151666, "</tool_response>"), (151667, "<think>"), (151668, "</think>"),
)
QWEN3_VL_VOCAB_SIZE = 151936  # config.json of Qwen3-VL-2B-Instruct (and Qwen3VLTextConfig's default)
# InternVL3-hf = the Qwen2.5-VL-7B-Instruct tokenizer + these (transformers' convert_internvl_weights_to_hf.py adds
# them in this order; 151667 is InternVLConfig's default image_token_id, the one the converter writes for Qwen2 LMs).
INTERNVL_SPECIAL_TOKENS: tuple[tuple[int, str], ...] = (
    (151665, "<img>"), (151666, "</img>"), (151667, "<IMG_CONTEXT>"), (151668, "<quad>"), (151669, "</quad>"),
    (151670, "<ref>"), (151671, "</ref>"), (151672, "<box>"), (151673, "</box>"),
)
# Tokenizer attributes InternVLProcessor reads. The hub's video token "<video>" is not one of InternVL3-1B-hf's
# 151674 tokens, and transformers 5 adds every named token to the vocabulary (as id 151674, past the embedding):
# the tiny tokenizer names the existing <|video_pad|> instead.
INTERNVL_NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<|video_pad|>"}
INTERNVL_VOCAB_SIZE = 151674  # llm_config.vocab_size of OpenGVLab/InternVL3-1B(-hf): 151665 + the 9 tokens above
# llava-hf/llava-1.5-7b-hf: LLaMA's 32000 tokens, then <image> (config image_token_index) and <pad> (pad_token_id);
# embedding rows padded to 32064.
LLAVA1_5_SPECIAL_TOKENS: tuple[tuple[int, str], ...] = (
    (0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<image>"), (32001, "<pad>"),
)
LLAVA1_5_VOCAB_SIZE = 32064
# Gemma 3 (gemma-3-4b-it, MedGemma-4B): pad/eos/bos and the image ids are Gemma3TextConfig / Gemma3Config defaults
# (boi_token_index, eoi_token_index, image_token_index); unk/mask/[multimodal]/turn ids from Gemma's tokenizer.
GEMMA3_SPECIAL_TOKENS: tuple[tuple[int, str], ...] = (
    (0, "<pad>"), (1, "<eos>"), (2, "<bos>"), (3, "<unk>"), (4, "<mask>"), (5, "[multimodal]"),
    (105, "<start_of_turn>"), (106, "<end_of_turn>"),
    (255999, "<start_of_image>"), (256000, "<end_of_image>"), (262144, "<image_soft_token>"),
)
GEMMA3_NAMED_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                       "image_token": "<image_soft_token>"}
GEMMA3_VOCAB_SIZE = 262208  # Gemma3TextConfig default = gemma-3-4b / MedGemma-4B text_config.vocab_size
GEMMA3_NAMED_IDS_START = 255999  # the first image token; trained tokens must stay below
GEMMA3_BYTE_OFFSET = 107  # our layout: 256 byte-fallback tokens from here, then the trained BPE (not Gemma's ids)
# chat_template.json of Qwen/Qwen2.5-VL-*-Instruct (default system turn, Picture/Video ids). The hub file
# itself could not be read from here: copied from public code that reproduces it verbatim (custom
# Qwen2_5_VLProcessor subclasses, role-aware Qwen2-VL training scripts); VLMEvalKit's copy lacks the system turn.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if "
    "add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Weight init std of the language model: at Qwen's 0.02 a 2-layer, 64-wide model answers "\n\n\n..." to every
# question; at 0.3 greedy answers differ between questions (what tests of scoring and resuming need).
TEXT_INIT_STD = 0.3
BPE_VOCAB_SIZE = 1024  # trained tokens (256 bytes + merges); the corpus may saturate earlier

_MODALITIES = ("x-ray", "CT scan", "MRI", "ultrasound", "fundus photograph", "histology slide")
_ORGANS = ("chest", "lung", "heart", "brain", "liver", "kidney", "spine", "knee", "eye", "colon")
_FINDINGS = ("a nodule", "an effusion", "a fracture", "a mass", "edema", "no abnormality",
             "a hemorrhage", "cardiomegaly", "pneumothorax", "inflammation")
_QUESTIONS = ("What modality is used to take this image?", "Which organ is shown in this image?",
              "Is there {finding} in the {organ}?", "Does this {modality} show the {organ}?",
              "Where is the abnormality located?", "What is the main finding?")


def medical_sentences() -> list[str]:
    """A few hundred short radiology-style sentences and VQA questions (the BPE training corpus)."""
    sentences = [f"This {modality} of the {organ} shows {finding}."
                 for modality, organ, finding in itertools.product(_MODALITIES, _ORGANS, _FINDINGS)
                 if (len(modality) + len(organ) + len(finding)) % 3 == 0]
    for question, (modality, organ, finding) in zip(itertools.cycle(_QUESTIONS),
                                                    itertools.product(_MODALITIES, _ORGANS, _FINDINGS[:3])):
        sentences.append(question.format(modality=modality, organ=organ, finding=finding))
    sentences += ["yes", "no", "Yes.", "No.", "left", "right", "Please output 'yes' or 'no'(no extra output).",
                  "Please answer the question concisely.", "Answer the question using a single word or phrase.",
                  "You are a helpful assistant."]
    return sentences


def _train_qwen_bpe(sentences: Sequence[str] | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained with Qwen2's normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    # Qwen2's pipeline (the same objects Qwen2Tokenizer builds), so the trained merges fit it.
    scaffold = Qwen2Tokenizer()._tokenizer
    trainee = Tokenizer(models.BPE())
    trainee.normalizer = scaffold.normalizer
    trainee.pre_tokenizer = scaffold.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    trainee.train_from_iterator(list(sentences or medical_sentences()), trainer=trainer)
    model = json.loads(trainee.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _build_qwen_tokenizer(special: Sequence[tuple[int, str]], plain: Sequence[tuple[int, str]] = (), *,
                          sentences: Sequence[str] | None = None, chat_template: str | None = None,
                          named_tokens: dict[str, str] | None = None, name: str = "Qwen2.5-VL") -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` over a trained BPE, with ``special`` (special) and ``plain`` (non-special) added tokens
    at the given ids; ``named_tokens`` become tokenizer attributes (``tokenizer.<name>`` / ``<name>_id``)."""
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _train_qwen_bpe(sentences)
    added = sorted([*special, *plain])
    if max(vocab.values()) >= added[0][0]:
        raise RuntimeError("trained BPE vocabulary reaches the special-token ids")
    vocab.update({token: token_id for token_id, token in added})
    extra = {"extra_special_tokens": dict(named_tokens)} if named_tokens else {}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
                               model_max_length=32768, clean_up_tokenization_spaces=False, **extra)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(token, special=True, normalized=False)
                                                                for _, token in special
                                                                if token not in ("<|endoftext|>", "<|im_end|>")]})
    if plain:
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for _, token in plain])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    _check_ids(tokenizer, added, name)
    return tokenizer


def _check_ids(tokenizer, expected: Sequence[tuple[int, str]], name: str) -> None:
    """Raise unless every token of ``expected`` got its id (a wrong id would silently break the template)."""
    wrong = {token: tokenizer.convert_tokens_to_ids(token) for token_id, token in expected
             if tokenizer.convert_tokens_to_ids(token) != token_id}
    if wrong:
        raise RuntimeError(f"special tokens got other ids than {name}'s: {wrong}")


def build_qwen2_5_vl_tokenizer(sentences: Sequence[str] | None = None) -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` with a BPE trained on ``sentences`` and Qwen2.5-VL's special tokens at their ids."""
    return _build_qwen_tokenizer(QWEN2_5_VL_SPECIAL_TOKENS, sentences=sentences,
                                 chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def build_qwen3_vl_tokenizer(sentences: Sequence[str] | None = None) -> Qwen2Tokenizer:
    """Qwen3(-VL)'s tokenizer layout: Qwen2.5-VL's special tokens plus the tool/FIM/think tokens, all at their ids."""
    return _build_qwen_tokenizer(QWEN2_5_VL_SPECIAL_TOKENS, (*QWEN2_5_PLAIN_TOKENS, *QWEN3_PLAIN_TOKENS),
                                 sentences=sentences, name="Qwen3-VL")


def build_internvl_tokenizer(sentences: Sequence[str] | None = None) -> Qwen2Tokenizer:
    """InternVL3-hf's tokenizer layout: Qwen2.5-VL's tokens plus ``<img>`` ... ``</box>`` (151665-151673)."""
    return _build_qwen_tokenizer((*QWEN2_5_VL_SPECIAL_TOKENS, *INTERNVL_SPECIAL_TOKENS), QWEN2_5_PLAIN_TOKENS,
                                 sentences=sentences, named_tokens=INTERNVL_NAMED_TOKENS, name="InternVL3-hf")


def build_llava1_5_tokenizer() -> LlamaTokenizerFast:
    """The LLaMA tokenizer of :mod:`.tiny` (BOS ``<s>``) plus llava-1.5-hf's ``<image>`` (32000), ``<pad>`` (32001)."""
    from transformers import AddedToken, LlamaTokenizerFast

    from .exgra_med import llama_tokenizer_file
    tokenizer = LlamaTokenizerFast(tokenizer_file=str(llama_tokenizer_file()), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=4096, padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", special=True,
                                                                            normalized=False)]})
    tokenizer.add_special_tokens({"pad_token": AddedToken("<pad>", special=True, normalized=False)})
    _check_ids(tokenizer, LLAVA1_5_SPECIAL_TOKENS, "llava-1.5-hf")
    return tokenizer


def build_gemma3_tokenizer(sentences: Sequence[str] | None = None) -> GemmaTokenizer:
    """A ``GemmaTokenizer`` (BPE with byte fallback, spaces as ``▁``) trained on ``sentences``, with Gemma 3's
    special tokens at their ids and the named ``boi``/``eoi``/``image`` tokens ``Gemma3Processor`` reads."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    trainee = Tokenizer(models.BPE())
    trainee.normalizer = normalizers.Replace(" ", "\u2581")
    # SentencePiece splits before whitespace too: pieces are "▁word", merges never cross a word boundary.
    trainee.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False, special_tokens=[])
    corpus = list(sentences or medical_sentences()) + ["user\n", "model\n", "\n\n"] * 2
    trainee.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(trainee.to_str())["model"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab = {token: GEMMA3_BYTE_OFFSET + i for i, token in enumerate(byte_tokens)}
    offset = GEMMA3_BYTE_OFFSET + len(byte_tokens)
    vocab.update({token: offset + token_id for token, token_id in model["vocab"].items() if token not in vocab})
    if max(vocab.values()) >= GEMMA3_NAMED_IDS_START:
        raise RuntimeError("trained BPE vocabulary reaches Gemma 3's image-token ids")
    vocab.update({token: token_id for token_id, token in GEMMA3_SPECIAL_TOKENS})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                               model_max_length=131072, padding_side="left",
                               clean_up_tokenization_spaces=False, extra_special_tokens=dict(GEMMA3_NAMED_TOKENS))
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, special=True, normalized=False) for _, token in GEMMA3_SPECIAL_TOKENS
        if token not in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")]})
    _check_ids(tokenizer, GEMMA3_SPECIAL_TOKENS, "Gemma 3")
    return tokenizer


def make_tiny_qwen2_5_vl(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random ``qwen2_5_vl`` checkpoint (model, tokenizer, processor, generation config) to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, \
        Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    tokenizer = build_qwen2_5_vl_tokenizer()
    ids = {token: token_id for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS}
    hidden = 64
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=QWEN2_5_VL_VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, rms_norm_eps=1e-6, use_sliding_window=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
                         initializer_range=TEXT_INIT_STD),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=hidden,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    used = torch.zeros(QWEN2_5_VL_VOCAB_SIZE, dtype=torch.bool)
    used[list(tokenizer.get_vocab().values())] = True
    with torch.no_grad():
        model.get_input_embeddings().weight[~used] = 0.0  # tied with lm_head: unused ids score 0
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               do_sample=False)
    image_processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("wrote a tiny qwen2_5_vl checkpoint (%d parameters, %d trained tokens) to %s",
                sum(p.numel() for p in model.parameters()), len(tokenizer) - len(QWEN2_5_VL_SPECIAL_TOKENS), out_dir)
    return out_dir


def _seeded_model(model_cls, config, seed: int):
    """``model_cls(config)`` with weights drawn from ``seed`` only, leaving the global RNG as it was."""
    import torch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def _zero_unused_rows(model, tokenizer, vocab_size: int) -> None:
    """Zero the embedding (and an untied lm_head's) rows of ids the tokenizer never produces: they score 0, so
    greedy decoding picks real tokens rather than ids that decode to nothing."""
    import torch
    used = torch.zeros(vocab_size, dtype=torch.bool)
    used[list(tokenizer.get_vocab().values())] = True
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[~used] = 0.0
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embedding.data_ptr():
            head.weight[~used] = 0.0


def _save_bf16(model, processor, out_dir: Path, model_type: str, tokenizer) -> Path:
    """Write model (bfloat16, like the real checkpoints: half the file of float32) and processor to ``out_dir``."""
    import torch
    model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("wrote a tiny %s checkpoint (%d parameters, %d tokens) to %s", model_type,
                sum(p.numel() for p in model.parameters()), len(tokenizer), out_dir)
    return out_dir


def _text_sizes(hidden: int = 64) -> dict:
    """The language-model sizes shared by every tiny type: hidden 64, 2 layers, 4 heads (2 KV heads)."""
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, initializer_range=TEXT_INIT_STD)


def make_tiny_qwen3_vl(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random ``qwen3_vl`` checkpoint (model, tokenizer, processor, generation config) to ``out_dir``."""
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out_dir = Path(out_dir)
    tokenizer = build_qwen3_vl_tokenizer()
    ids = {token: token_id for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS}
    hidden = 64
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=QWEN3_VL_VOCAB_SIZE, head_dim=16, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                             "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, **_text_sizes(hidden)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, architectures=["Qwen3VLForConditionalGeneration"],
    )
    model = _seeded_model(Qwen3VLForConditionalGeneration, config, seed)
    _zero_unused_rows(model, tokenizer, QWEN3_VL_VOCAB_SIZE)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               do_sample=False)
    size = {"shortest_edge": 4 * 32 * 32, "longest_edge": 16 * 32 * 32}  # 4 to 16 merged tokens per image
    vision = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(size=size, **vision), tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(size=size, **vision))
    return _save_bf16(model, processor, out_dir, "qwen3_vl", tokenizer)


def make_tiny_internvl(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random ``internvl`` (InternVL3-hf layout) checkpoint to ``out_dir``."""
    from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    out_dir = Path(out_dir)
    tokenizer = build_internvl_tokenizer()
    ids = {token: token_id for token_id, token in (*QWEN2_5_VL_SPECIAL_TOKENS, *INTERNVL_SPECIAL_TOKENS)}
    image_size, patch_size, downsample = 56, 14, 0.5
    image_seq_length = int((image_size // patch_size) ** 2 * downsample ** 2)  # 4 tokens per 56-px tile
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", vocab_size=INTERNVL_VOCAB_SIZE, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, use_sliding_window=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, **_text_sizes()),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size, attention_bias=True, use_qk_norm=False,
                           norm_type="layer_norm", layer_scale_init_value=0.1),
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=image_seq_length, downsample_ratio=downsample,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=True, architectures=["InternVLForConditionalGeneration"],
    )
    model = _seeded_model(InternVLForConditionalGeneration, config, seed)
    _zero_unused_rows(model, tokenizer, INTERNVL_VOCAB_SIZE)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=ids["<|im_end|>"], do_sample=False)
    pixels = dict(size={"height": image_size, "width": image_size}, image_mean=list(IMAGENET_DEFAULT_MEAN),
                  image_std=list(IMAGENET_DEFAULT_STD), do_convert_rgb=True)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(crop_to_patches=False, min_patches=1, max_patches=2, **pixels),
        tokenizer=tokenizer, video_processor=InternVLVideoProcessor(**pixels), image_seq_length=image_seq_length)
    return _save_bf16(model, processor, out_dir, "internvl", tokenizer)


def make_tiny_llava1_5_hf(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random ``llava1_5_hf`` (CLIP + LLaMA) checkpoint to ``out_dir``."""
    from transformers import CLIPImageProcessor, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, \
        LlavaProcessor

    from ..modeling.clip_common import CLIP_MEAN, CLIP_STD
    out_dir = Path(out_dir)
    tokenizer = build_llava1_5_tokenizer()
    ids = {token: token_id for token_id, token in LLAVA1_5_SPECIAL_TOKENS}
    image_size, patch_size = 56, 14
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=LLAVA1_5_VOCAB_SIZE, max_position_embeddings=4096,
                         rms_norm_eps=1e-5, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                         pad_token_id=ids["<pad>"], tie_word_embeddings=False, **_text_sizes()),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                           projection_dim=32, hidden_act="quick_gelu"),
        image_token_index=ids["<image>"], projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_seq_length=(image_size // patch_size) ** 2, tie_word_embeddings=False,
        architectures=["LlavaForConditionalGeneration"],
    )
    model = _seeded_model(LlavaForConditionalGeneration, config, seed)
    _zero_unused_rows(model, tokenizer, LLAVA1_5_VOCAB_SIZE)
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                               pad_token_id=ids["<pad>"], do_sample=False)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        do_convert_rgb=True)
    # CLS + 16 patches come out of CLIP; "default" drops the CLS: <image> expands to 16 tokens.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _save_bf16(model, processor, out_dir, "llava1_5_hf", tokenizer)


def make_tiny_gemma3_vision(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random ``gemma3_vision`` (SigLIP + Gemma 3) checkpoint to ``out_dir``."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, GenerationConfig
    from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor

    out_dir = Path(out_dir)
    tokenizer = build_gemma3_tokenizer()
    ids = {token: token_id for token_id, token in GEMMA3_SPECIAL_TOKENS}
    image_size, patch_size, mm_tokens = 56, 14, 4  # 4x4 patches, average-pooled 2x2 into 4 soft tokens
    config = Gemma3Config(
        text_config=dict(vocab_size=GEMMA3_VOCAB_SIZE, head_dim=16, query_pre_attn_scalar=16, sliding_window=512,
                         layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
                         rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                          "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                             "rope_theta": 1000000.0}},
                         rms_norm_eps=1e-6, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                         pad_token_id=ids["<pad>"], tie_word_embeddings=True, **_text_sizes()),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size, vision_use_head=False,
                           layer_norm_eps=1e-6),
        mm_tokens_per_image=mm_tokens, boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"],
        architectures=["Gemma3ForConditionalGeneration"],
    )
    model = _seeded_model(Gemma3ForConditionalGeneration, config, seed)
    _zero_unused_rows(model, tokenizer, GEMMA3_VOCAB_SIZE)
    # Gemma3MultiModalProjector starts its projection at zero: every image feature would be 0 (image nodes,
    # image-dependent answers); seeded random values instead
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projection.copy_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(seed)) * TEXT_INIT_STD)
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"],
                                               eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], do_sample=False)
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=mm_tokens)
    return _save_bf16(model, processor, out_dir, "gemma3_vision", tokenizer)


_BUILDERS = {"qwen2_5_vl": make_tiny_qwen2_5_vl, "qwen3_vl": make_tiny_qwen3_vl, "internvl": make_tiny_internvl,
             "llava1_5_hf": make_tiny_llava1_5_hf, "gemma3_vision": make_tiny_gemma3_vision}


def make_tiny_model(model_type: str, out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """A tiny checkpoint of ``model_type`` (one of :data:`TINY_MODEL_TYPES`)."""
    if model_type not in _BUILDERS:
        raise ValueError(f"no tiny builder for model type {model_type!r}; available: {', '.join(TINY_MODEL_TYPES)} "
                         "(exgra_med: `exgramed make-tiny`)")
    return _BUILDERS[model_type](out_dir, seed=seed)
