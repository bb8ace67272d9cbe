"""Tiny random-weight checkpoints of other swift model types, built offline (tests, alignment work).

Why: comparing ExGra-Med with today's medical VLMs (Lingshu, HuatuoGPT-Vision: Qwen2/2.5-VL based)
goes through swift's own model types, and tests cannot download a real one. A checkpoint written
here has the real architecture, token ids and processor layout, with a few thousand-times smaller
dimensions and random weights, and loads with ``swift.model.get_model_processor(dir,
model_type="qwen2_5_vl")`` on a CPU in seconds.

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

Weights depend only on ``seed``; the global RNG is left as it was.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_MODEL_TYPES = ("qwen2_5_vl",)

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


def build_qwen2_5_vl_tokenizer(sentences: Sequence[str] | None = None):
    """A ``Qwen2Tokenizer`` with a BPE trained on ``sentences`` and Qwen2.5-VL's special tokens at their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken
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
    vocab: dict[str, int] = dict(model["vocab"])
    if max(vocab.values()) >= QWEN2_5_VL_SPECIAL_TOKENS[0][0]:
        raise RuntimeError("trained BPE vocabulary reaches the special-token ids")
    vocab.update({token: token_id for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
                               model_max_length=32768, clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(token, special=True, normalized=False)
                                                                for _, token in QWEN2_5_VL_SPECIAL_TOKENS
                                                                if token not in ("<|endoftext|>", "<|im_end|>")]})
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    wrong = {token: tokenizer.convert_tokens_to_ids(token) for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS
             if tokenizer.convert_tokens_to_ids(token) != token_id}
    if wrong:
        raise RuntimeError(f"special tokens got other ids than Qwen2.5-VL's: {wrong}")
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


def make_tiny_model(model_type: str, out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """A tiny checkpoint of ``model_type`` (one of :data:`TINY_MODEL_TYPES`)."""
    builders = {"qwen2_5_vl": make_tiny_qwen2_5_vl}
    if model_type not in builders:
        raise ValueError(f"no tiny builder for model type {model_type!r}; available: {', '.join(TINY_MODEL_TYPES)} "
                         "(exgra_med: `exgramed make-tiny`)")
    return builders[model_type](out_dir, seed=seed)
