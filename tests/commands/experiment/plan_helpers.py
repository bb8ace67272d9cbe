"""A git repository with a plan file in it, for the tests of the preregistered plan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from exgramed_plugin.commands.experiment.preregistration import BEGIN, END


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def plan_text(settings: dict, note: str = "") -> str:
    """A plan section holding ``settings`` as its json block."""
    return f"{BEGIN}\n## Plan\n{note}\n```json\n{json.dumps(settings, indent=1)}\n```\n{END}\n"


def commit(repo: Path, path: Path, text: str, message: str) -> str:
    """Write ``text`` to ``path`` and commit it; returns the commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(repo, "add", str(path))
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path):
    """An empty git repository."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    return tmp_path
