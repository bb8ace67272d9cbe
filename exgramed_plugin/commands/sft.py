"""``exgramed sft RECIPE [overrides]``: a recipe run through ``swift sft`` from any directory.

swift resolves a recipe's ``custom_register_path`` / ``external_plugins`` against the working
directory and asserts it exists before any plugin code runs (``AssertionError: py_dir: ...``), so
``swift sft recipes/x.yaml`` works only from the repository root. This command passes the recipe
unchanged and overrides only that entry with the installed plugin's absolute ``register.py``; every
other relative path in the recipe (``model``, ``dataset``, ``output_dir``) stays relative to the
working directory, as with ``swift sft``. ``ENV:`` blocks and overrides work as in swift.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..common.jsonio import print_summary
from .paths import REGISTER_FILE

PLUGIN_KEYS = ("custom_register_path", "external_plugins")


def _is_our_plugin(path: str) -> bool:
    parts = Path(path).parts
    return tuple(parts[-2:]) == ("exgramed_plugin", "register.py")


def plugin_overrides(recipe: dict[str, Any], cwd: str | os.PathLike) -> list[str]:
    """``--<key> <paths>`` arguments that replace the recipe's reference to this plugin by the
    installed ``register.py`` (other plugins it names are kept; a path that exists is kept)."""
    overrides: list[str] = []
    for key in PLUGIN_KEYS:
        value = recipe.get(key)
        if value is None:
            continue
        paths = [value] if isinstance(value, str) else [str(item) for item in value]
        resolved = [str(REGISTER_FILE) if _is_our_plugin(p) and not (Path(cwd) / p).is_file() else p for p in paths]
        if resolved != paths:
            overrides += [f"--{key}", *resolved]
    return overrides


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe's YAML mapping; a missing or malformed file names itself."""
    import yaml
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe not found")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of swift arguments, got {type(recipe).__name__}")
    return recipe


def swift_sft_command(recipe_path: Path, overrides: list[str], cwd: str | os.PathLike) -> list[str]:
    """The ``swift sft`` command line (through this interpreter) that runs the recipe from ``cwd``."""
    recipe = read_recipe(recipe_path)
    return [sys.executable, "-m", "swift.cli.main", "sft", str(recipe_path), *plugin_overrides(recipe, cwd),
            *overrides]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exgramed sft", description="run a swift sft recipe from any directory (the plugin path resolved)",
        epilog="Everything after RECIPE is passed to swift sft (e.g. --model DIR --max_steps 10).")
    parser.add_argument("recipe", type=Path, help="a swift YAML recipe, e.g. recipes/stage2_exgramed.yaml")
    args, overrides = parser.parse_known_args(argv)
    try:
        command = swift_sft_command(args.recipe, overrides, os.getcwd())
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    code = subprocess.run(command).returncode
    if code == 0:
        print_summary({"recipe": str(args.recipe), "command": command[1:]})
    return code
