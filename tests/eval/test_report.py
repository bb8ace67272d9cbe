"""`exgramed report` on a fake swift run folder."""

import json

from PIL import Image

from conftest import last_summary

ROWS = [
    {"loss": 4.0, "lm_loss": 3.0, "align_loss": 1.0, "epoch": 0.25, "global_step/max_steps": "1/4"},
    {"loss": 3.0, "lm_loss": 2.5, "align_loss": 0.5, "epoch": 0.5, "global_step/max_steps": "2/4"},
    {"eval_loss": 2.75, "eval_average": 40.0, "eval_open_recall": 30.0, "eval_closed_acc": 50.0,
     "epoch": 0.5, "global_step/max_steps": "2/4"},
    {"loss": 2.0, "lm_loss": 1.5, "align_loss": 0.5, "epoch": 0.75, "global_step/max_steps": "3/4"},
    {"loss": 2.5, "lm_loss": 2.25, "align_loss": 0.25, "epoch": 1.0, "global_step/max_steps": "4/4"},
    {"train_runtime": 12.0, "train_loss": 2.875, "epoch": 1.0, "global_step/max_steps": "4/4"},
    {"model_parameter_info": "x", "last_model_checkpoint": "/nowhere/checkpoint-4"},
]
VQA_METRICS = {"counts": {"total": 6, "open": 2, "closed": 4, "skipped": 0},
               "original": {"closed_accuracy": 75.0, "open_recall": 50.0, "average": 62.5},
               "strict": {"closed_accuracy": 50.0, "open_recall": 25.0, "average": 37.5}}


def test_report_files_tables_and_plots(tmp_path, capsys):
    from exgramed_plugin.eval.report import main
    run = tmp_path / "output" / "v0-20250101-000000"
    run.mkdir(parents=True)
    (run / "logging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (run / "args.json").write_text(json.dumps({"model": "m", "max_steps": 4, "eval_metric": "exgra_vqa"}))
    metrics = tmp_path / "answers.metrics.json"
    metrics.write_text(json.dumps(VQA_METRICS))
    out = tmp_path / "report"
    # The parent output dir is accepted: the newest v*-* run inside it is used.
    assert main(["--run", str(run.parent), "--eval", str(metrics), "--out", str(out)]) == 0
    assert last_summary(capsys.readouterr().out)["markdown"] == str(out / "report.md")

    md = (out / "report.md").read_text()
    assert "| loss | 4 | 4.00 | 2.50 | 2.00 |" in md
    assert "| lm_loss | 4 | 3.00 | 2.25 | 1.50 |" in md
    assert "| align_loss | 4 | 1.00 | 0.25 | 0.25 |" in md
    assert "| eval_average | 1 | 40.00 | 40.00 | 40.00 |" in md
    assert "| answers | original | 2 | 4 | 75.00 | 50.00 | 62.50 |" in md
    assert "| answers | strict | 2 | 4 | 50.00 | 25.00 | 37.50 |" in md
    for name in ("losses.png", "eval_loss.png", "eval_metrics.png", "vqa_by_type.png"):
        assert f"]({name})" in md
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == (700, 400)
    html = (out / "report.html").read_text()
    assert '<img src="losses.png"' in html and "<table>" in html and "<td>align_loss</td>" in html

    machine = json.loads((out / "report.json").read_text())
    assert machine["max_steps"] == 4
    assert machine["train"]["loss"] == {"first": 4.0, "last": 2.5, "min": 2.0, "points": 4}
    assert machine["eval"]["eval_closed_acc"]["last"] == 50.0
    assert machine["evaluations"][0]["original"] == VQA_METRICS["original"]


def test_report_without_the_plugin_losses_says_so(tmp_path):
    from exgramed_plugin.eval.report import build_report
    (tmp_path / "logging.jsonl").write_text(json.dumps({"loss": 1.0, "global_step/max_steps": "1/1"}) + "\n")
    files = build_report(tmp_path, out_dir=tmp_path / "r")
    assert "Not logged in this run: lm_loss, align_loss." in files.markdown.read_text()
    assert [p.name for p in files.plots] == ["losses.png"]
