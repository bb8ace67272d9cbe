"""The demo's stages on screen: one progress bar and one result line each, the rest in a log file.

Why: swift's own output (argument dumps, model summaries, per-step dicts, several progress bars) runs
to hundreds of lines per command and buries what the demo shows. Quiet by default, each stage's full
output goes to ``<out>/logs/<stage>.log``, named on screen; ``verbose`` streams it as well. A failing
stage shows the tail of its log, so the cause is on screen without opening the file.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tqdm import tqdm

from ..common.jsonio import read_growing_jsonl
from ..common.logs import log_tail

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Off a terminal (CI logs, captured output) a bar redraws at most this often, so it stays a few lines.
NON_TTY_MININTERVAL = 30.0


class StageFailed(RuntimeError):
    """A stage's command exited non-zero (its log tail has been shown)."""

    def __init__(self, title: str, returncode: int, log_path: Path) -> None:
        super().__init__(f"{title} failed with exit code {returncode}; full output: {log_path}")
        self.returncode = returncode
        self.log_path = log_path


class Progress(Protocol):
    """What a stage's bar shows, read from files the command writes (never from its console output)."""

    total: int
    unit: str

    def poll(self) -> tuple[int, dict[str, float]]:
        """(units done, postfix values)."""


@dataclass
class TrainingProgress:
    """Steps and losses of a ``swift sft`` run, from the ``logging.jsonl`` of its newest ``v*-*`` folder."""

    output_dir: Path
    total: int
    keys: tuple[str, ...] = ("loss", "align_loss")
    unit: str = "step"

    def poll(self) -> tuple[int, dict[str, float]]:
        logs = sorted(self.output_dir.glob("v*-*/logging.jsonl"), key=lambda p: p.stat().st_mtime)
        step, values = 0, {}
        for row in read_growing_jsonl(logs[-1]) if logs else []:
            done, _, planned = str(row.get("global_step/max_steps", "")).partition("/")
            if done.isdigit() and planned.isdigit():
                step, self.total = int(done), int(planned)
            values.update({k: row[k] for k in self.keys if isinstance(row.get(k), (int, float))})
        return step, values


@dataclass
class LineProgress:
    """Rows written to a JSON Lines result file (``swift infer --result_path``) out of ``total``."""

    path: Path
    total: int
    unit: str = "question"

    def poll(self) -> tuple[int, dict[str, float]]:
        return len(read_growing_jsonl(self.path)), {}


def _pump(source: IO[bytes], log: IO[bytes], echo: IO[bytes] | None) -> None:
    """Copy a command's output to its log (and to the terminal when verbose) as it comes."""
    while chunk := source.read1(65536):  # type: ignore[attr-defined]
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(chunk)
            echo.flush()


@dataclass
class Stages:
    """Numbered demo stages writing their logs under ``logs_dir``."""

    logs_dir: Path
    total: int
    verbose: bool = False
    index: int = field(default=0, init=False)

    def _start(self, title: str, log_name: str) -> tuple[str, Path]:
        self.index += 1
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        header = f"[{self.index}/{self.total}] {title}"
        if self.verbose:
            logger.info("%s", header)
        return header, self.logs_dir / f"{log_name}.log"

    def _bar(self, header: str, progress: Progress, stream: IO[str] | None = None) -> tqdm:
        stream = stream or sys.stderr
        interactive = hasattr(stream, "isatty") and stream.isatty()
        return tqdm(total=progress.total, desc=header, unit=progress.unit, file=stream, disable=self.verbose,
                    mininterval=0.1 if interactive else NON_TTY_MININTERVAL, dynamic_ncols=interactive)

    def run(self, title: str, command: Sequence[str], *, log_name: str, progress: Progress,
            cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
        """Run a command with its output in ``<logs_dir>/<log_name>.log``; raise :class:`StageFailed`
        after showing the log's tail when it exits non-zero. Returns the log's path."""
        header, log_path = self._start(title, log_name)
        with open(log_path, "wb") as log:
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            echo = sys.stdout.buffer if self.verbose else None
            pump = threading.Thread(target=_pump, args=(process.stdout, log, echo), daemon=True)
            pump.start()
            with self._bar(header, progress) as bar:
                while process.poll() is None:
                    time.sleep(POLL_SECONDS)
                    _update(bar, progress)
                pump.join()
                _update(bar, progress)
        if process.returncode != 0:
            logger.error("%s failed (exit code %d). Last lines of %s:\n%s", header, process.returncode, log_path,
                         log_tail(log_path))
            raise StageFailed(header, process.returncode, log_path)
        return log_path

    @contextmanager
    def in_process(self, title: str, *, log_name: str) -> Iterator[Path]:
        """A stage run in this process (writing files, scoring): whatever it prints or logs, the C
        libraries' output included, goes to its log while a one-step bar stands for it on screen."""
        header, log_path = self._start(title, log_name)
        with open(log_path, "w", encoding="utf-8") as log:
            if self.verbose:
                handler = logging.StreamHandler(log)
                logging.getLogger().addHandler(handler)
                try:
                    yield log_path
                finally:
                    logging.getLogger().removeHandler(handler)
                return
            try:
                with _terminal_output_to(log) as terminal, self._bar(header, _ONE_STEP, terminal) as bar:
                    yield log_path
                    bar.update(1)
            except Exception:
                log.flush()
                logger.error("%s failed. Last lines of %s:\n%s", header, log_path, log_tail(log_path))
                raise


@dataclass
class _OneStep:
    total: int = 1
    unit: str = "stage"

    def poll(self) -> tuple[int, dict[str, float]]:
        return 0, {}


_ONE_STEP = _OneStep()


def _update(bar: tqdm, progress: Progress) -> None:
    done, values = progress.poll()
    bar.total = max(progress.total, done)
    if values:
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
    bar.update(done - bar.n)


@contextmanager
def _terminal_output_to(log: IO[str]) -> Iterator[IO[str]]:
    """Point file descriptors 1 and 2 at ``log`` (Python's streams, other loggers' handlers and C
    libraries all write there); yield a stream on the original stderr for the progress bar."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", encoding="utf-8")
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
