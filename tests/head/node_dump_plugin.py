"""Test-only swift plugin for 2-process CPU runs (loaded after ``exgramed_plugin/register.py`` with
``--external_plugins``).

* Each rank saves the local nodes of its first alignment step: ``$ALIGNMENT_TEST_NODE_DUMP/rank<r>.pt``
  holds the image / text / extended nodes (before the global-graph gather) and the merged answer ids
  of the samples they belong to.
* Only process-group rank 0 writes checkpoints. On a CPU/gloo launch HF's ``TrainingArguments``
  sees a world size of 1, so every rank's ``should_save`` is true and both ranks write the same
  files; under ZeRO-3 rank 1 writes the partitioned (empty) tensors and, when it finishes last, the
  checkpoint is unusable. On GPUs only rank 0 saves.
"""

import os

import torch
from torch import distributed as dist
from transformers import TrainingArguments

from exgramed_plugin.head.head import AlignmentHead

_original_alignment = AlignmentHead.alignment
_original_align = AlignmentHead.align


def _alignment(self, model, lm_inputs_embeds, input_ids, batch, *args, **kwargs):
    self._dump_batch = {key: value.detach().cpu() for key, value in batch.items() if key.startswith("mga_text")}
    return _original_alignment(self, model, lm_inputs_embeds, input_ids, batch, *args, **kwargs)


def _align(self, network, z_image, z_text, z_extended, **kwargs):
    folder = os.environ["ALIGNMENT_TEST_NODE_DUMP"]
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = os.path.join(folder, f"rank{rank}.pt")
    if not os.path.exists(path):
        torch.save({"image": z_image.detach().cpu(), "text": z_text.detach().cpu(),
                    "extended": z_extended.detach().cpu(), **self._dump_batch}, path)
    return _original_align(self, network, z_image, z_text, z_extended, **kwargs)


AlignmentHead.alignment = _alignment
AlignmentHead.align = _align

_should_save = TrainingArguments.should_save
TrainingArguments.should_save = property(
    lambda self: _should_save.fget(self) and (not dist.is_initialized() or dist.get_rank() == 0))
