"""Every ``exgramed`` subcommand (``webui`` exempt: a server) ends its stdout with one JSON object: its
facts with ``"ok": true``, or ``{"ok": false, ...}`` when it fails (README, "CLI")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA_TEMPLATES, last_summary

TESTS = Path(__file__).resolve().parents[1]
# Where each subcommand's success summary is checked (a test that runs it for real and calls last_summary).
SUCCESS_CHECKED_IN = {
    "make-tiny": "tiny_checkpoints/test_builtin_vlms.py", "demo": "commands/test_demo.py", "eval-vqa": "eval/test_eval_vqa.py",
    "convert": "modeling/test_convert.py", "predict": "eval/test_predict.py", "reproduce": "commands/test_reproduce.py",
    "download": "commands/test_hub.py", "report": "eval/test_report.py", "compare": "eval/test_compare.py",
    "eval-chat": "eval/test_chat_judge.py", "experiment": "commands/experiment/test_data_efficiency_quick.py",
    "extend-captions": "data/test_extend_captions.py", "doctor": "commands/test_doctor.py",
    "sft": "swift_glue/test_builtin_guarantees_cli.py", "eval": "eval/test_suite.py",
    **{name: "commands/test_cli_summary.py" for name in ("make-demo-data", "subset", "build-candidates", "llava-to-swift",
                                                "swift-to-llava", "eval-zeroshot")},
}
EXEMPT = {"webui"}


def subcommands() -> list[str]:
    """The subcommands ``exgramed --help`` lists."""
    from exgramed_plugin.commands.cli import build_parser
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def run(argv: list[str], capsys) -> tuple[int, str]:
    from exgramed_plugin.commands.cli import main
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().out


def test_help_lists_every_subcommand_without_crashing(capsys):
    code, out = run(["--help"], capsys)
    assert code == 0 and "95 % CIs" in " ".join(out.split())  # an unescaped % once crashed argparse's help
    assert set(subcommands()) == set(SUCCESS_CHECKED_IN) | EXEMPT


@pytest.mark.parametrize("command", sorted(SUCCESS_CHECKED_IN))
def test_success_summary_is_checked_by_a_real_run(command):
    assert "last_summary(" in (TESTS / SUCCESS_CHECKED_IN[command]).read_text(), SUCCESS_CHECKED_IN[command]


@pytest.mark.parametrize("command", sorted(SUCCESS_CHECKED_IN))
def test_a_failing_command_ends_with_ok_false(command, capsys):
    code, out = run([command, "--no-such-option-anywhere"], capsys)
    assert code not in (0, None)
    assert last_summary(out, ok=False) == {"ok": False, "command": command, "exit_code": code}


def test_bad_input_error_is_in_the_summary(tmp_path, capsys):
    broken = tmp_path / "t.json"
    broken.write_text('[{"id": 1,')
    code, out = run(["llava-to-swift", str(broken), str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and last_summary(out, ok=False)["exit_code"] == 2


def test_data_tools_and_demo_data_end_with_their_facts(tmp_path, capsys):
    train = tmp_path / "train.json"
    train.write_text((DATA_TEMPLATES / "vqa.json").read_text())
    rows = len(json.loads(train.read_text()))
    code, out = run(["llava-to-swift", str(train), str(tmp_path / "t.jsonl")], capsys)
    assert code == 0 and last_summary(out)["rows"] == rows
    code, out = run(["swift-to-llava", str(tmp_path / "t.jsonl"), str(tmp_path / "back.json")], capsys)
    assert code == 0 and last_summary(out)["rows"] == rows
    code, out = run(["build-candidates", str(train), "--out", str(tmp_path / "c.json")], capsys)
    assert code == 0 and last_summary(out)["out"] == str(tmp_path / "c.json")
    code, out = run(["subset", "--in", str(train), "--out", str(tmp_path / "s.json"), "--fraction", "0.5"], capsys)
    assert code == 0 and last_summary(out)["fraction"] == 0.5
    code, out = run(["make-demo-data", str(tmp_path / "demo"), "--image-size", "32"], capsys)
    assert code == 0 and Path(last_summary(out)["vqa_test"]).is_file()


def test_eval_zeroshot_ends_with_its_facts(tiny_checkpoint, tmp_path, capsys):
    rows = [{"question_id": "a1", "dataset": "A", "modality_type": "MR", "question": "Which modality?",
             "option_A": "MRI", "option_B": "CT", "gt_answer": "MRI", "image_path": "mri_head.png"}]
    questions = tmp_path / "omni.json"
    questions.write_text(json.dumps(rows))
    code, out = run(["eval-zeroshot", "--model", str(tiny_checkpoint), "--questions", str(questions), "--images",
                     str(DATA_TEMPLATES / "images"), "--out", str(tmp_path / "z"), "--scoring", "likelihood"], capsys)
    assert code == 0 and last_summary(out) == {"ok": True, "summary": str(tmp_path / "z.json"),
                                               "samples": str(tmp_path / "z.samples.jsonl"), "questions": 1}
