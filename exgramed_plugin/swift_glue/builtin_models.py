"""Every model family with ``--loss_type exgra_mga``: the template mixin, and the built-in VLMs' loader hook.

* Templates: each family's template class (``exgra_med``'s own and swift's built-in ones) gets
  :class:`AlignmentTemplateMixin` (swift's ``TEMPLATE_MAPPING`` entry points to the subclass), which
  in training with MGA adds the merged (extended) answer ids and per-image token counts to a row
  and the text passes to the batch. Inference, ``swift infer`` / ``deploy`` and generation are
  untouched: the mixin does nothing outside training with MGA.
* Loading: after swift loads a model (``ModelLoader.load``), a run with MGA active attaches the
  alignment head (head/builtin.py, head/head.py), with the graph network of the checkpoint's side file when it
  has one; an unsupported model type stops there, listing the supported ones.
* Resuming: see resume.py.
"""

from __future__ import annotations

import logging
from typing import Any

from swift.model.register import ModelLoader
from swift.template import TEMPLATE_MAPPING

from ..head.builtin import attach_alignment_head
from ..head.families import BUILTIN_FAMILIES, FAMILIES, NETWORK_NAME, unsupported_model_type_error
from ..head.side_file import load_side_file, side_file_path
from ..settings import MGASettings, current_settings, mga_settings_of
from .alignment_inputs import collate_alignment_inputs, image_token_counts, merged_answer_ids, row_context

logger = logging.getLogger(__name__)
_PATCH_MARK = "_exgramed_alignment"
_OWN_MODEL_TYPES = ("exgra_med",)


class AlignmentTemplateMixin:
    """Training rows and batches for the alignment head, on top of a family's swift template.

    ``mga_settings``: the run's effective MGA settings for this model (:func:`mga_settings_of`), read
    once, when swift gives the template its model config (``init_processor``), and again only if a
    new config is given.
    """

    mga_family = None  # the ModelFamily, set on each installed subclass
    mga_settings: MGASettings | None = None

    @property
    def config(self):
        return self.__dict__.get("_model_config_value")

    @config.setter
    def config(self, value) -> None:
        self.__dict__["_model_config_value"] = value
        self.mga_settings = mga_settings_of(value)

    def _mga_run_settings(self) -> MGASettings:
        if self.mga_settings is None:  # a template swift never gave a config
            self.mga_settings = mga_settings_of(None)
        return self.mga_settings

    def _encode(self, inputs) -> dict[str, Any]:
        encoded = super()._encode(inputs)
        if not (self.is_training and self._mga_run_settings().active):
            return encoded
        context = row_context(inputs)
        answers = [m["content"] for m in inputs.messages if m["role"] == "assistant"]
        encoded.update(merged_answer_ids(self.tokenizer, answers, (inputs.extra_kwargs or {}).get("extended_answers"),
                                         max_length=self.max_length, context=context))
        encoded["mga_image_tokens"] = image_token_counts(encoded["input_ids"],
                                                         self.mga_family.image_token_id(self.config),
                                                         len(inputs.images or []), context=context)
        return encoded

    def _data_collator(self, batch: list[dict[str, Any]], *, padding_to: int | None = None) -> dict[str, Any]:
        alignment = {}
        if batch and "merged_answer_ids" in batch[0]:  # before swift's collation: padding-free packs `batch` in place
            settings = self._mga_run_settings()
            alignment = collate_alignment_inputs(batch, packed=settings.text_packing and settings.pooling != "padded",
                                                 pad_token_id=self.tokenizer.pad_token_id)
        result = super()._data_collator(batch, padding_to=padding_to)
        result.update(alignment)
        return result

    def _post_encode(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """swift keeps only what ``_post_encode`` returns (plus a few keys): carry the alignment keys,
        and the input ids (the image-token positions) when it replaces them by ``inputs_embeds``."""
        encoded = super()._post_encode(model, inputs)
        if encoded is inputs or "mga_text_ids" not in inputs:
            return encoded
        encoded = dict(encoded)
        encoded.update({key: value for key, value in inputs.items() if key.startswith("mga_")})
        if "input_ids" not in encoded:
            encoded["mga_input_ids"] = inputs["input_ids"]
        return encoded


def install_alignment_templates() -> None:
    """Point each family's template at its alignment subclass (idempotent)."""
    for family in FAMILIES.values():
        meta = TEMPLATE_MAPPING.get(family.template)
        if meta is None or getattr(meta.template_cls, _PATCH_MARK, False):
            continue
        base = meta.template_cls
        meta.template_cls = type(base.__name__, (AlignmentTemplateMixin, base),
                                 {_PATCH_MARK: True, "__module__": __name__, "mga_family": family,
                                  "__doc__": f"swift's {base.__name__} with the alignment head's training inputs."})


def attach_head_after_load() -> None:
    """Wrap ``ModelLoader.load``: runs with MGA active get the alignment head on built-in models."""
    original = ModelLoader.load
    if getattr(original, _PATCH_MARK, False):
        return

    def load(self: ModelLoader):
        model, processor = original(self)
        settings = current_settings().mga
        model_type = getattr(self.model_meta, "model_type", None)
        if model is None or getattr(self, "return_dummy_model", False) or not settings.active \
                or model_type in _OWN_MODEL_TYPES:
            return model, processor
        if model_type not in BUILTIN_FAMILIES:
            raise unsupported_model_type_error(model_type)
        attach_alignment_head(model, model_type, settings, processor)
        model_dir = self.model_info.model_dir
        if load_side_file(getattr(model, NETWORK_NAME), model_dir):
            logger.info("graph network loaded from %s", side_file_path(model_dir))
        return model, processor

    setattr(load, _PATCH_MARK, True)
    ModelLoader.load = load


def register_builtin_alignment() -> None:
    install_alignment_templates()
    attach_head_after_load()
