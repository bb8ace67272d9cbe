"""Shared fixtures: offline mode, the plugin registered once, tiny checkpoints built once per run."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_TEMPLATES = REPO_ROOT / "data_templates"


@pytest.fixture(scope="session")
def registered():
    """The plugin registered into swift, as ``--custom_register_path`` would do."""
    import exgramed_plugin.register  # noqa: F401
    return True


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from exgramed_plugin.data.tiny import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-exgra-med")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from exgramed_plugin.data.tiny import build_tokenizer
    return build_tokenizer()
