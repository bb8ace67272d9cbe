"""Processor = the checkpoint's tokenizer + CLIP image processor, saved and loaded together."""

from __future__ import annotations

from transformers import ProcessorMixin


class ExGraMedProcessor(ProcessorMixin):
    """Holds ``tokenizer`` and ``image_processor``; swift's templates read both from it.

    Prompt building and image-token expansion live in the ``exgra_med`` swift template, not here.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
