"""Where the commands find the package's own files (the commands live one floor below its root)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REGISTER_FILE = PACKAGE_DIR / "register.py"  # swift's entry file (--external_plugins / --custom_register_path)
RECIPES_DIR = PACKAGE_DIR / "recipes"
