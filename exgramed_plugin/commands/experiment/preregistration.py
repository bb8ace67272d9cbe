"""The preregistered plan: a marked section of docs/experiments.md, committed before the grid runs.

The section lies between :data:`BEGIN` and :data:`END` and holds one fenced ``json`` block, the
plan's machine-readable part (endpoint, Δ, arms and cells, blocks, budget, secondary contrasts,
the gate's figures). Its sha256 is taken over the section's bytes, markers included.

:func:`committed_plan` is what the grid checks before it runs: the section exists, holds no
:data:`PLACEHOLDER`, is the same in the working tree as in ``HEAD``; the plan's commit is the first
commit whose file holds this very section (so it names when the plan was committed, not when the
grid ran). ``results.json`` records both; a test recomputes them from git.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- preregistered plan: begin -->"
END = "<!-- preregistered plan: end -->"
PLACEHOLDER = "TO BE FILLED FROM THE PILOTS"
_JSON_BLOCK = re.compile(r"```json\n(?P<body>.*?)\n```", re.DOTALL)


class PlanError(ValueError):
    """The plan is missing, unfinished, uncommitted or edited."""


def plan_section(text: str, source: str = "the plan file") -> str:
    """The text from :data:`BEGIN` to :data:`END`, both included."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise PlanError(f"{source}: no preregistered plan (a section between '{BEGIN}' and '{END}')")
    return text[start:end + len(END)]


def section_sha256(section: str) -> str:
    return hashlib.sha256(section.encode("utf-8")).hexdigest()


def plan_settings(section: str, source: str = "the plan file") -> dict[str, Any]:
    """The plan's ``json`` block."""
    blocks = _JSON_BLOCK.findall(section)
    if len(blocks) != 1:
        raise PlanError(f"{source}: the plan section needs exactly one ```json block, found {len(blocks)}")
    try:
        return json.loads(blocks[0])
    except json.JSONDecodeError as error:
        raise PlanError(f"{source}: the plan's json block does not parse: {error}") from None


def _git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise PlanError(f"git {' '.join(args)} in {repo} failed: {completed.stderr.strip()}")
    return completed.stdout


def _repo_and_relative(path: Path) -> tuple[Path, str]:
    repo = Path(_git(path.parent, "rev-parse", "--show-toplevel").strip())
    return repo, path.resolve().relative_to(repo.resolve()).as_posix()


def section_at(path: str | Path, commit: str) -> str | None:
    """The plan section of the file ``path`` as it was at ``commit``, None if the file or the section is not there."""
    repo, relative = _repo_and_relative(Path(path).resolve())
    completed = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{relative}"], capture_output=True,
                               text=True, check=False)
    if completed.returncode != 0:
        return None
    try:
        return plan_section(completed.stdout)
    except PlanError:
        return None


def code_version(path: str | Path) -> dict[str, Any] | None:
    """The commit the code under ``path`` runs on, and whether the working tree differs from it
    (None outside a git checkout): what a run records, so that its numbers name their code."""
    try:
        commit = _git(Path(path), "rev-parse", "HEAD").strip()
        dirty = bool(_git(Path(path), "status", "--porcelain", "--untracked-files=no").strip())
    except PlanError:
        return None
    return {"commit": commit, "dirty": dirty}


@dataclass(frozen=True)
class Plan:
    settings: dict[str, Any]
    sha256: str
    commit: str
    path: Path


def committed_plan(path: str | Path) -> Plan:
    """The plan of ``path`` if it is finished and committed (module doc); else :class:`PlanError`."""
    path = Path(path).resolve()
    if not path.is_file():
        raise PlanError(f"{path}: no such plan file (--plan)")
    section = plan_section(path.read_text(encoding="utf-8"), str(path))
    if PLACEHOLDER in section:
        raise PlanError(f"{path}: the plan still says '{PLACEHOLDER}'; fill it from the pilots "
                        "(--plan-numbers prints the numbers) and commit it before the grid runs")
    settings = plan_settings(section, str(path))
    repo, relative = _repo_and_relative(path)
    if section_at(path, "HEAD") != section:
        raise PlanError(f"{path}: the plan section differs from the committed one (HEAD); commit the plan first, "
                        "and never edit it after the grid")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    for candidate in _git(repo, "log", "--format=%H", "--", relative).split():
        if section_at(path, candidate) != section:
            break
        commit = candidate
    return Plan(settings, section_sha256(section), commit, path)
