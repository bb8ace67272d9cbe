"""Shared fixtures: offline mode, the plugin registered once, tiny checkpoints built once per run."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_TEMPLATES = REPO_ROOT / "data_templates"
DEMO_QUESTIONS = 8  # questions of the `demo` fixture (the first of the demo test split)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (a process group's master, a local server)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_summary(stdout: str, ok: bool = True) -> dict:
    """The JSON object an ``exgramed`` command prints as its last stdout line (README), checked for ``ok``."""
    import json
    lines = stdout.strip().splitlines()
    assert lines, "the command printed nothing on stdout"
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict) and summary.get("ok") is ok, lines[-1]
    return summary


def padded_and_padding_free(template, rows):
    """The same training rows collated padded and padding-free (one row, as --padding_free builds it)."""
    encoded = [template.encode(row, return_length=True) for row in rows]
    padded = template.data_collator([dict(e) for e in encoded])
    template.padding_free = True
    try:
        packed = template.data_collator([dict(e) for e in encoded])
    finally:
        template.padding_free = False
    assert packed["input_ids"].shape[0] == 1
    return padded, packed


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Each test sees the plugin settings of its own environment, not those of an earlier test."""
    from exgramed_plugin.settings import clear_settings
    clear_settings()
    yield
    clear_settings()


@pytest.fixture(scope="session")
def registered():
    """The plugin registered into swift, as ``--custom_register_path`` would do."""
    import exgramed_plugin.register  # noqa: F401
    return True


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from exgramed_plugin.tiny_checkpoints.exgra_med import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-exgra-med")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from exgramed_plugin.tiny_checkpoints.exgra_med import build_tokenizer
    return build_tokenizer()


def _tiny_model_fixture(model_type: str, note: str):
    """A session fixture building a tiny random swift ``model_type`` checkpoint: one body for every type."""
    def fixture(tmp_path_factory) -> Path:
        from exgramed_plugin.tiny_checkpoints.builtin_vlms import make_tiny_model
        return make_tiny_model(model_type, tmp_path_factory.mktemp(f"tiny-{model_type}") / f"tiny-{model_type}")
    fixture.__doc__ = f"A tiny random swift ``{model_type}`` checkpoint ({note})."
    return pytest.fixture(scope="session", name=f"tiny_{model_type}")(fixture)


tiny_qwen2_5_vl = _tiny_model_fixture("qwen2_5_vl", "load with model_type/template ``qwen2_5_vl``")
tiny_qwen3_vl = _tiny_model_fixture("qwen3_vl", "model type and template ``qwen3_vl``")
tiny_internvl = _tiny_model_fixture("internvl", "InternVL3-hf layout; template ``internvl_hf``")
tiny_llava1_5_hf = _tiny_model_fixture("llava1_5_hf", "model type and template ``llava1_5_hf``")
tiny_gemma3_vision = _tiny_model_fixture("gemma3_vision", "model type and template ``gemma3_vision``")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data and a question file with its first DEMO_QUESTIONS test questions: (data, path, rows)."""
    import json
    from exgramed_plugin.data.demo_data import make_demo_data
    data = make_demo_data(tmp_path_factory.mktemp("demo"), image_size=56)
    rows = json.loads(data.vqa_test.read_text())[:DEMO_QUESTIONS]
    questions = data.root / "q8.json"
    questions.write_text(json.dumps(rows))
    return data, questions, rows
