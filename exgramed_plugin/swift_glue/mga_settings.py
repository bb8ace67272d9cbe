"""MGA knobs of a run: environment (a recipe's ``ENV:`` block or ``--model_kwargs``) → config.

``--model_kwargs '{"mga_alpha": 0.5}'`` becomes the environment variable ``MGA_ALPHA`` (swift
upper-cases the keys), exactly like ``MGA_ALPHA: 0.5`` in a recipe's ``ENV:`` block. The values end
up in the model config, which is saved with every checkpoint.

Whether the MGA module exists at all is decided per run, not read from a checkpoint: it is built
when the run trains with ``--loss_type exgra_mga`` (or ``MGA_ENABLED=1``) and ``mga_alpha > 0``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

logger = logging.getLogger(__name__)
LOSS_TYPE = "exgra_mga"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _optional_int(value: str) -> int | None:
    return None if value.strip().lower() in {"", "none", "null"} else int(value)


MGA_FIELDS: dict[str, Callable[[str], object]] = {
    "mga_alpha": float,
    "mga_k": int,
    "mga_lambda": float,
    "mga_gumbel_scale": float,
    "mga_solver": str,
    "mga_hidden_features": _optional_int,
    "mga_message_flow": str,
    "mga_use_message_passing": _bool,
    "mga_fidelity": _bool,
    "mga_pooling": str,
    "mga_after_de": _bool,
    "mga_global_graph": _bool,
    "mga_seed": int,
    "mga_objective": str,
}


def requested_loss_type(argv: list[str] | None = None) -> str | None:
    """The ``--loss_type`` of the swift command this process runs (swift turns recipes into argv)."""
    argv = sys.argv if argv is None else argv
    for index, token in enumerate(argv):
        if token == "--loss_type" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--loss_type="):
            return token.split("=", 1)[1]
    return None


def apply_mga_settings(config, environ: dict[str, str] | None = None, argv: list[str] | None = None) -> None:
    """Set ``config.mga_*`` from the environment and decide ``config.mga_enabled`` for this run."""
    environ = os.environ if environ is None else environ
    for field, parse in MGA_FIELDS.items():
        value = environ.get(field.upper())
        if value is not None:
            try:
                setattr(config, field, parse(value))
            except ValueError as error:
                raise ValueError(f"{field.upper()}={value!r}: {error}") from error
    enabled = environ.get("MGA_ENABLED")
    wants_mga = _bool(enabled) if enabled is not None else requested_loss_type(argv) == LOSS_TYPE
    config.mga_enabled = bool(wants_mga and config.mga_alpha > 0)
    if wants_mga:
        logger.info("multi-graph alignment %s: %s", "on" if config.mga_enabled else "off (mga_alpha = 0)",
                    {field: getattr(config, field) for field in MGA_FIELDS})
