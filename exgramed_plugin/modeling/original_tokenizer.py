"""The tokenizer of a published LLaVA-Med / ExGra-Med checkpoint, giving the ids it was trained with
(docs/method.md §1.8, §2.5).

The original layout ships a slow SentencePiece tokenizer whose BOS is ``</s>``; transformers 5
converts it to a BPE that gives other ids for some prompts. This module loads it with the
checkpoint's own special tokens and makes the converted tokenizer SentencePiece-exact.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..common.jsonio import read_json
from ..common.tokens import ADDED_TOKENS
from ..common.weight_files import CheckpointError

logger = logging.getLogger(__name__)

_ORIGINAL_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                             "added_tokens.json")


def make_sentencepiece_exact(tokenizer: PreTrainedTokenizerBase, sp_model_file: str | os.PathLike
                             ) -> PreTrainedTokenizerBase:
    """Make the tokenizers-backed LLaMA tokenizer give the ids of the SentencePiece model itself.

    transformers 5 converts ``tokenizer.model`` to a BPE whose merge order is not SentencePiece's
    (whitespace-only pieces such as ``"▁▁"`` have score -1e9 there, i.e. merge last) and whose
    Metaspace pre-tokenizer adds no dummy prefix to a text that starts with a space. Both change
    ids of the original prompts (the §2.3 prompt has ``"there!  How"``: SentencePiece gives
    ``▁ ▁How``, the converted tokenizer ``▁▁ How``). The fix, kept in tokenizer.json when saved:
    merges ranked by the SentencePiece score of the merged piece, the dummy ``▁`` prepended to
    every text chunk as a normalizer (as the old slow tokenizer encoded each chunk), and added
    tokens matched on the raw text. The result is a plain ``TokenizersBackend`` (``LlamaTokenizer``
    would rebuild its default normalizer when the saved tokenizer.json is loaded again). Needs
    the ``sentencepiece`` package; without it the converted tokenizer is returned unchanged with a
    warning.
    """
    try:
        import sentencepiece
    except ImportError:
        logger.warning("sentencepiece is not installed: the tokenizer of %s may give other ids than the original "
                       "slow tokenizer for runs of spaces (pip install sentencepiece)", sp_model_file)
        return tokenizer
    from tokenizers import Tokenizer
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_file))
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or not model.get("merges"):
        logger.warning("%s: the tokenizer is not a converted SentencePiece BPE; left unchanged", sp_model_file)
        return tokenizer

    def rank(merge: list[str] | str) -> tuple[float, int]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        piece_id = processor.piece_to_id(left + right)
        return -processor.get_score(piece_id), piece_id

    model["merges"] = sorted(model["merges"], key=rank)
    state["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    state["pre_tokenizer"] = None
    for added in state.get("added_tokens", []):
        added["normalized"] = False
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)), bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token, unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token,
        model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        clean_up_tokenization_spaces=False)


def load_original_tokenizer(model_dir: str | os.PathLike, *, legacy_sentencepiece: bool = True
                            ) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer, BOS as its special_tokens_map.json says (``</s>`` = 2 expected).

    ``legacy_sentencepiece``: give exactly the SentencePiece ids (:func:`make_sentencepiece_exact`),
    as the slow tokenizer the published weights were trained with.

    The original layout ships a slow SentencePiece tokenizer (§1.8); all four of its files are
    required, because a missing special_tokens_map.json or added_tokens.json would silently change
    BOS or the image-token ids. A checkpoint re-saved with a ``tokenizer.json`` is accepted too.
    """
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        required: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json")
    else:
        required = _ORIGINAL_TOKENIZER_FILES
    for name in required:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing: the checkpoint's tokenizer needs "
                                    f"{', '.join(required)} (docs/method.md §1.8)")
    tokenizer_class = read_json(model_dir / "tokenizer_config.json").get("tokenizer_class") or ""
    if tokenizer_class in ("", "LlamaTokenizer", "LlamaTokenizerFast"):
        # Not AutoTokenizer: with config.json saying model_type "llava" it builds a generic backend
        # without the SentencePiece dummy prefix, which changes every id (§2.5).
        tokenizer = LlamaTokenizer.from_pretrained(str(model_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if legacy_sentencepiece and (model_dir / "tokenizer.model").is_file():
        tokenizer = make_sentencepiece_exact(tokenizer, model_dir / "tokenizer.model")
    added_path = model_dir / "added_tokens.json"
    added = read_json(added_path) if added_path.is_file() else {}
    for token in ADDED_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        known = token_id is not None and token_id != tokenizer.unk_token_id
        if token in added and token_id != added[token]:
            raise CheckpointError(f"{added_path}: key {token!r} is id {added[token]} but the tokenizer maps it to "
                                  f"{token_id}")
        if not known and token != ADDED_TOKENS[0]:
            raise CheckpointError(f"{added_path}: key {token!r} is missing; LLaVA-Med checkpoints add "
                                  f"{', '.join(ADDED_TOKENS)} to the LLaMA vocabulary")
    logger.info("tokenizer of %s: %d tokens, BOS %r (id %s), pad %r", model_dir, len(tokenizer), tokenizer.bos_token,
                tokenizer.bos_token_id, tokenizer.pad_token)
    return tokenizer
