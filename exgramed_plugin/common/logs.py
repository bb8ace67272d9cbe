"""Reading back the logs of the commands a run starts (the demo's stages, the experiment's cells)."""

from __future__ import annotations

from pathlib import Path

TAIL_LINES = 30


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log; progress-bar redraws (``\\r``) keep only their final state."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")[-lines:])
