"""The batch schedules of a block, drawn once and shared by every arm of the block.

Pre-training (:func:`distinct_description_batches`): the alignment losses treat the other samples
of a batch as negatives, so two rows with the same description (the same shape and colour) in one
batch would make a true match a "wrong" one. Each epoch deals the rows into batches in which no
description repeats: the descriptions with the most rows left go first, which keeps their counts
level so that batches stay full until the epoch's last few rows. Every fraction gets the same
number of epochs, so 10 % of the pool gets about 10 % of the steps.

Fine-tuning (:func:`shuffled_batches`): a fresh permutation of the downstream rows per epoch, the
last batch of an epoch short (as a ``DataLoader`` without ``drop_last``).

Both are lists of row indices, written to the block's folder and read by every cell of the block.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def distinct_description_batches(descriptions: Sequence[Hashable], batch_size: int, epochs: int,
                                 rng: np.random.Generator) -> list[list[int]]:
    """Batches of row indices, epoch after epoch; no two rows of a batch share a description.

    Within an epoch every row appears once. A batch takes one row from each of the ``batch_size``
    descriptions with the most rows left (ties in a random order drawn per epoch); a batch is short
    only when fewer descriptions than ``batch_size`` have rows left. The epoch's batches are then
    shuffled, and so are the rows inside each batch.
    """
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch size {batch_size} and epochs {epochs} must be >= 1")
    schedule: list[list[int]] = []
    for _ in range(epochs):
        queues: dict[Hashable, list[int]] = {}
        for index in rng.permutation(len(descriptions)).tolist():
            queues.setdefault(descriptions[index], []).append(index)
        keys = list(queues)
        tie = {keys[position]: rank for rank, position in enumerate(rng.permutation(len(keys)).tolist())}
        epoch: list[list[int]] = []
        while queues:
            chosen = sorted(queues, key=lambda key: (-len(queues[key]), tie[key]))[:batch_size]
            batch = []
            for key in chosen:
                batch.append(queues[key].pop())
                if not queues[key]:
                    del queues[key]
            epoch.append([batch[i] for i in rng.permutation(len(batch)).tolist()])
        schedule += [epoch[i] for i in rng.permutation(len(epoch)).tolist()]
    return schedule


def shuffled_batches(num_rows: int, batch_size: int, epochs: int, rng: np.random.Generator) -> list[list[int]]:
    """Per epoch a permutation of ``range(num_rows)`` cut into batches (the last one short)."""
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch size {batch_size} and epochs {epochs} must be >= 1")
    schedule: list[list[int]] = []
    for _ in range(epochs):
        order = rng.permutation(num_rows).tolist()
        schedule += [order[start:start + batch_size] for start in range(0, num_rows, batch_size)]
    return schedule
