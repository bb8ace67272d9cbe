"""The ``exgra_med`` swift template: §2.1 training text, §2.3 inference prompt, stop word ``###``.

The conversation is encoded here rather than through swift's prefix/prompt/chat_sep machinery,
because the original's format (a shared ``###`` between turns, the image block appended after the
question at inference, per-chunk tokenization around the added tokens) does not fit it.
"""

from __future__ import annotations

from typing import Any

from swift.template import Template, TemplateMeta, register_template
from swift.template.template_inputs import StdTemplateInputs

from ..data.conversation import (IMAGE_TAG, SEPARATOR, SYSTEM_PROMPT, Segment, check_turns, image_block,
                                 inference_prompt, postprocess_response, tokenize_segments, training_segments)
from ..settings import TemplateSettings, current_settings
from .alignment_inputs import row_context

TEMPLATE_TYPE = "exgra_med"


class ExGraMedTemplate(Template):
    """Encodes conversations exactly as the original LLaVA-Med v0 code formats them (in training with
    MGA the alignment inputs come from the mixin every family's template gets, builtin_models.py).

    ``settings`` (prompt style, response mode, legacy tokenization) are the process's settings when
    the template is made; ``exgramed predict`` replaces them with its command-line choices.
    """

    skip_prompt = True
    support_padding_free = True  # the model takes packed rows (--padding_free / --packing, flash attention)
    settings: TemplateSettings

    def init_processor(self, processor) -> None:
        super().init_processor(processor)
        self.settings = current_settings().template
        if processor is None:
            return
        tokenizer = self.tokenizer
        self.im_patch_token_id = tokenizer.convert_tokens_to_ids("<im_patch>")
        if self.im_patch_token_id is None or self.im_patch_token_id == tokenizer.unk_token_id:
            raise ValueError("the tokenizer has no <im_patch> token: an exgra_med checkpoint must ship a tokenizer "
                             "with the added tokens [PAD], <im_patch>, <im_start>, <im_end>")
        self.placeholder_tokens = [self.im_patch_token_id]

    @property
    def _model_config(self):
        config = getattr(self, "config", None)
        if config is None and self.model_info is not None:
            config = self.model_info.config
        return config

    def _image_text(self) -> str:
        config = self._model_config
        return image_block(config.num_image_tokens, config.mm_use_im_start_end)

    def _legacy_tokenization(self) -> bool:
        if self.settings.legacy_tokenization is not None:
            return self.settings.legacy_tokenization
        return bool(getattr(self._model_config, "mm_legacy_tokenization", False))

    def _prompt_style(self) -> str:
        """``simple`` (default): the original evaluation prompt (§2.3). ``v0``: the training format
        (§2.1) ending in ``### Assistant:``, consistent with how the model was trained."""
        return self.settings.prompt_style

    def _encode(self, inputs: StdTemplateInputs) -> dict[str, Any]:
        context = row_context(inputs)
        messages = [dict(m) for m in inputs.messages if m["role"] != "system"]
        if not self.is_training and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the reference answer of a validation row
        check_turns(messages if self.is_training else messages + [{"role": "assistant", "content": "-"}],
                    context=context)
        if self.is_training and messages[-1]["role"] != "assistant":
            raise ValueError(f"a training conversation must end with an answer ({context})")
        images = inputs.images or []
        num_tags = sum(m["content"].count(IMAGE_TAG) for m in messages if m["role"] == "user")
        if num_tags != len(images):
            raise ValueError(f"{num_tags} <image> tag(s) in the human turns but {len(images)} image(s) ({context})")
        system = inputs.system if inputs.system is not None else SYSTEM_PROMPT
        image_text = self._image_text()
        if self.is_training:
            segments = training_segments(messages, system, image_text)
        elif self._prompt_style() == "v0":
            # The training format up to "### Assistant:" (no trailing space, so the answer's first
            # token is the same "▁word" token as in training).
            segments = training_segments(messages, system, image_text) + [Segment("Assistant:")]
        else:
            segments = [Segment(inference_prompt(messages, system, image_text))]
        input_ids, labels = tokenize_segments(
            self.tokenizer, segments, bos_token_id=self.tokenizer.bos_token_id,
            strip_around_special=self._legacy_tokenization())
        encoded: dict[str, Any] = {"input_ids": input_ids, "labels": labels if self.is_training else None}
        if images:
            rgb = [image.convert("RGB") for image in images]
            encoded["pixel_values"] = self.processor.image_processor(rgb, return_tensors="pt")["pixel_values"]
        return encoded

    def decode_generate_ids(self, generate_ids, *, is_finished: bool = True, first_token=True, template_inputs=None,
                            **kwargs) -> Any:
        """Decode like ``model_vqa_med.py``: skip special tokens, then cut at the first ``###`` (§2.4).

        ``exgramed_response_mode`` = ``original`` (default, keeps a leading ``Assistant:``),
        ``clean`` (drops it) or ``raw`` (the generated text untouched).
        """
        raw = self.tokenizer.decode(list(generate_ids), skip_special_tokens=True)
        if not is_finished:
            return raw
        return postprocess_response(raw, self.settings.response_mode)


def register_exgra_med_template() -> None:
    # prefix/prompt/chat_sep describe the §2.1 format for swift's bookkeeping (system support,
    # multi-round, stop word); the encoding itself is ExGraMedTemplate._encode.
    register_template(
        TemplateMeta(
            TEMPLATE_TYPE,
            prefix=["{{SYSTEM}}\n\n"],
            prompt=["### Human: {{QUERY}}\n### Assistant: "],
            chat_sep=["\n"],
            suffix=[f"\n{SEPARATOR} "],
            template_cls=ExGraMedTemplate,
            default_system=SYSTEM_PROMPT,
            stop_words=[SEPARATOR],
        ),
        exist_ok=True,
    )
