"""`exgramed doctor`: passes here, names a fix for each failure, never connects offline."""

import importlib
import importlib.metadata
import socket
import threading
import time
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

from conftest import REPO_ROOT, last_summary
from exgramed_plugin.commands import doctor
from exgramed_plugin.commands.cli import main as cli_main

CHECK_NAMES = ("python", "exgramed-plugin", "ms-swift", "torch", "transformers", "peft", "deepspeed", "flash-attn",
               "CUDA / GPU", "qwen_vl_utils", "open_clip", "gradio", "easy_vqa", "register.py", "demo data",
               "data root", "hub")


def _no_network(*args, **kwargs):
    raise AssertionError(f"the doctor connected offline: {args}")


@pytest.fixture
def no_sockets(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)


def _by_name(checks, name):
    return next(check for check in checks if check.name == name)


def test_doctor_passes_on_this_machine(capsys, monkeypatch, no_sockets):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["doctor"]) == 0
    table = capsys.readouterr().out
    assert {check["name"] for check in last_summary(table)["checks"]} >= set(CHECK_NAMES)
    for name in CHECK_NAMES:
        assert f" {name} " in table, name
    assert "\nFAIL" not in table
    assert f"ms-swift{' ' * 3}" in table and importlib.metadata.version("ms-swift") in table
    assert "offline (HF_HUB_OFFLINE=1)" in table
    assert "0 failures: ready for CPU use" in table


def test_unimportable_required_package_fails_with_a_named_fix():
    def importer(module):
        if module == "peft":
            raise ImportError("No module named 'peft'")
        return doctor.default_importer(module)

    checks = doctor.run_checks(environ={"HF_HUB_OFFLINE": "1"}, importer=importer)
    peft = _by_name(checks, "peft")
    assert peft.status == "fail"
    assert "import peft` fails: ImportError: No module named 'peft'" in peft.detail
    assert peft.fix == "pip install --force-reinstall peft"
    assert all(_by_name(checks, name).status == "ok" for name in ("ms-swift", "torch", "transformers"))
    assert doctor.exit_status(checks) == 1
    table = doctor.render(checks)
    assert "FAIL   peft" in table and "fix: pip install --force-reinstall peft" in table
    assert "not ready" in table


def test_required_package_outside_the_supported_range_fails():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    swift_line = next(line for line in pyproject["project"]["dependencies"] if line.startswith("ms-swift"))
    supported = SpecifierSet(swift_line.removeprefix("ms-swift"))
    ranges = doctor.dependency_ranges(importlib.metadata.requires("exgramed-plugin"))
    assert ranges["ms-swift"] == supported
    swift = next(package for package in doctor.PACKAGES if package.dist == "ms-swift")
    check = doctor.check_package(swift, ranges["ms-swift"], "4.7.0", importlib.import_module)
    assert check.status == "fail" and "4.7.0 is outside the supported" in check.detail
    assert check.fix == f"pip install --force-reinstall 'ms-swift{supported}'"
    missing = doctor.check_package(swift, ranges["ms-swift"], None, importlib.import_module)
    assert missing.status == "fail" and missing.fix == f"pip install 'ms-swift{supported}'"


def test_a_broken_gpu_extra_reports_its_errors_first_line(tmp_path, monkeypatch):
    # A deepspeed that fails at import as one built for another CUDA toolkit does; imported in a child.
    (tmp_path / "deepspeed.py").write_text(
        'raise RuntimeError("CUDA version mismatch: deepspeed built for 12.1, torch has 13.0\\nsecond line")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    deepspeed = next(package for package in doctor.PACKAGES if package.dist == "deepspeed")
    check = doctor.check_package(deepspeed, SpecifierSet(), "0.19.8", doctor.default_importer)
    assert check.status == "warn"
    assert check.detail.endswith("fails: RuntimeError: CUDA version mismatch: deepspeed built for 12.1, torch has 13.0")
    assert "pip install --force-reinstall deepspeed" in check.fix and "CUDA" in check.fix


def test_absent_optional_extra_is_a_warning_with_its_pip_command():
    gradio = next(package for package in doctor.EXTRAS if package.module == "gradio")
    check = doctor.check_extra(gradio, SpecifierSet(">=6,<7"), present=False)
    assert (check.status, check.fix) == ("warn", "pip install 'gradio<7,>=6'")
    assert doctor.exit_status([check]) == 0


def test_data_root_with_a_missing_split(tmp_path):
    root, demo = tmp_path / "data", tmp_path / "demo"
    (root / "VQA-RAD").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "VQA-RAD" / f"{split}_w_options_new.json").write_text("[]")
    demo.mkdir()
    for name in ("alignment_train.json", "train_w_options_new.json", "test_w_options_new.json"):
        (demo / name).write_text("[]")

    checks = doctor.check_datasets({"EXGRAMED_DATA_ROOT": str(root), "EXGRAMED_DEMO_DIR": str(demo)})
    data = _by_name(checks, "data root")
    assert data.status == "warn"
    assert data.detail.splitlines()[0] == f"{root} ($EXGRAMED_DATA_ROOT)"
    assert "VQA-RAD: train, test present; val missing" in data.detail.splitlines()
    assert "SLAKE: train, val, test missing" in data.detail.splitlines()
    assert f"--data-root {root}" in data.fix
    demo_check = _by_name(checks, "demo data")
    assert demo_check.status == "ok" and demo_check.fix == ""
    assert "exgra_med_demo: alignment, vqa_train, vqa_test present" in demo_check.detail.splitlines()


def test_offline_mode_does_not_connect(no_sockets):
    calls = []
    started = time.monotonic()
    check = doctor.check_hub({"HF_HUB_OFFLINE": "1"}, probe=lambda timeout: calls.append(timeout) or True)
    default_probe = doctor.check_hub({"HF_HUB_OFFLINE": "1"})
    assert time.monotonic() - started < 5
    assert calls == []
    for result in (check, default_probe):
        assert result.status == "ok" and result.detail.startswith("offline (HF_HUB_OFFLINE=1)")


def test_hub_probe_is_bounded_when_the_network_hangs():
    release = threading.Event()
    started = time.monotonic()
    check = doctor.check_hub({}, probe=lambda timeout: release.wait(60))
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < doctor.HUB_TIMEOUT_S + 1.5
    assert check.status == "warn" and "no answer within 3 s" in check.detail and "HF_HUB_OFFLINE=1" in check.fix
    assert doctor.check_hub({}, probe=lambda timeout: True).status == "ok"


def test_a_name_missing_from_swifts_registry_fails(registered, monkeypatch):
    from swift.loss import loss_map
    assert doctor.check_registration(importlib.import_module).status == "ok"
    monkeypatch.delitem(loss_map, "exgra_mga")
    check = doctor.check_registration(importlib.import_module)
    assert check.status == "fail" and check.detail == "loss 'exgra_mga' not in swift.loss.loss_map"
