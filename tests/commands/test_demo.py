"""`exgramed demo`: the stages' quiet output and logs, and one full run from an installed wheel."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT, last_summary

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_a_failing_stage_shows_its_log_tail_and_path(tmp_path, caplog):
    from exgramed_plugin.common.logs import TAIL_LINES
    from exgramed_plugin.commands.demo_stages import LineProgress, StageFailed, Stages
    stages = Stages(tmp_path / "logs", 1)
    command = [sys.executable, "-c", "import sys\nfor i in range(50): print(f'line {i}')\nsys.exit(3)"]
    with caplog.at_level(logging.INFO), pytest.raises(StageFailed) as failed:
        stages.run("a fake command", command, log_name="fake", progress=LineProgress(tmp_path / "none", 1))
    log = tmp_path / "logs" / "fake.log"
    assert failed.value.returncode == 3 and failed.value.log_path == log and str(log) in str(failed.value)
    assert "line 0\n" in log.read_text() and "line 49\n" in log.read_text()
    shown = caplog.text
    assert "[1/1] a fake command failed (exit code 3)" in shown and str(log) in shown
    assert f"line {50 - TAIL_LINES}\n" in shown and "line 49" in shown and f"line {49 - TAIL_LINES}\n" not in shown


def test_a_verbose_stage_streams_its_output_and_still_logs_it(tmp_path, capsys):
    from exgramed_plugin.commands.demo_stages import LineProgress, Stages
    stages = Stages(tmp_path / "logs", 1, verbose=True)
    log = stages.run("echo", [sys.executable, "-c", "print('swift says hello')"], log_name="echo",
                     progress=LineProgress(tmp_path / "none", 1))
    assert "swift says hello\n" in capsys.readouterr().out and log.read_text().endswith("swift says hello\n")


def test_the_cli_exits_non_zero_when_a_stage_fails(tmp_path, monkeypatch, capsys):
    from exgramed_plugin.commands import cli, demo
    from exgramed_plugin.commands.demo_stages import StageFailed

    def failing(*args, **kwargs):
        raise StageFailed("[3/7] swift sft", 1, tmp_path / "logs" / "stage2.log")

    monkeypatch.setattr(demo, "run_demo", failing)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    assert f"full output: {tmp_path / 'logs' / 'stage2.log'}" in capsys.readouterr().err


def test_an_in_process_stage_writes_what_it_prints_to_its_log(tmp_path, caplog):
    from exgramed_plugin.commands.demo_stages import Stages
    stages = Stages(tmp_path / "logs", 2)
    with stages.in_process("quiet", log_name="quiet") as log:
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
    assert log.read_text() == "from fd 1\nfrom fd 2\n"
    with caplog.at_level(logging.INFO), pytest.raises(ZeroDivisionError):
        with stages.in_process("broken", log_name="broken"):
            os.write(2, b"about to fail\n")
            1 / 0
    assert "[2/2] broken failed" in caplog.text and "about to fail" in caplog.text


def test_training_progress_reads_steps_and_losses_of_a_growing_log(tmp_path):
    from exgramed_plugin.commands.demo_stages import TrainingProgress
    progress = TrainingProgress(tmp_path, 30)
    assert progress.poll() == (0, {})
    run = tmp_path / "v0-20250101-000000"
    run.mkdir()
    rows = [{"loss": 2.0, "align_loss": 0.5, "global_step/max_steps": "1/4"},
            {"loss": 1.5, "align_loss": 0.25, "global_step/max_steps": "2/4"}]
    (run / "logging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"loss": 1.')  # torn
    assert progress.poll() == (2, {"loss": 1.5, "align_loss": 0.25}) and progress.total == 4


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of the working tree, built from a copy so that the repository gets no build/ or egg-info."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "exgramed_plugin", source / "exgramed_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--wheel-dir", str(tmp_path / "wheels"), str(source)], check=True)
    (wheel,) = (tmp_path / "wheels").glob("exgramed_plugin-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path, dict[str, str]]:
    """A venv holding only the wheel; the test venv's third-party packages are visible through a plain
    path line in a .pth file, which does not run that site-packages' own .pth files (so the editable
    install of this project stays inactive)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OFFLINE, PATH=f"{venv / 'bin'}:/usr/bin:/bin")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "main_venv_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], env=env, check=True)
    imported = subprocess.run([python, "-c", "import exgramed_plugin; print(exgramed_plugin.__file__)"], env=env,
                              cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(imported).is_relative_to(site), imported
    assert not (venv / "bin" / "swift").exists() and (venv / "bin" / "exgramed").is_file()
    return venv, site, env


@pytest.mark.slow
def test_demo_from_an_installed_wheel_is_quiet_and_reports_before_and_after(tmp_path):
    venv, site, env = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    cwd, out = tmp_path / "elsewhere", tmp_path / "demo"
    cwd.mkdir()
    result = subprocess.run([venv / "bin" / "exgramed", "demo", "--max-steps", "2", "--out", str(out)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    output = result.stdout
    assert result.returncode == 0, output[-5000:]
    assert output.count("\n") < 60, output
    assert last_summary(output)["report_html"].endswith("report.html")
    assert "run sh:" not in output  # swift's own output is in the logs only

    logs = out / "logs"
    for name in ("tiny", "data", "stage2", "vqa", "infer_before", "infer"):
        assert f"(log {logs / name}.log)" in output, name
    for name, subcommand in (("stage2", "sft"), ("vqa", "sft"), ("infer_before", "infer"), ("infer", "infer")):
        text = (logs / f"{name}.log").read_text()
        # swift started by the wheel's interpreter; the recipe read from the installed package
        assert text.startswith(f"$ {venv / 'bin' / 'python'} -m swift.cli.main {subcommand} ")
        assert "run sh: `" in text and "[INFO:swift]" in text
    assert f"sft {site / 'exgramed_plugin' / 'recipes' / 'demo_cpu.yaml'} " in (logs / "stage2.log").read_text()

    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    html_images = re.findall(r'<img[^>]* src="([^"]+)"', html)
    for name in ("stage2_losses.png", "vqa_loss.png"):
        assert name in md_images and name in html_images
    for reference in {*md_images, *html_images}:
        assert reference.endswith(".png") and (out / reference).is_file(), reference

    questions = json.loads((out / "data" / "test_w_options_new.json").read_text())
    per_question = markdown.split("## Per question", 1)[1]
    rows = [line for line in per_question.splitlines() if line.startswith("| ") and "answer before" not in line]
    assert [row.split(" | ")[1] for row in rows] == [q["answer_type"] for q in questions]
    assert html.rsplit("<table>", 1)[1].count("<tr>") == len(questions) + 1
    for column in ("closed accuracy", "open recall", "average"):
        assert column in markdown.split("## Per question", 1)[0]
