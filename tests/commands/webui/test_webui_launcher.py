"""``exgramed webui`` without a browser: the CLI entry, the plots and the model-type choice."""

import pytest

from exgramed_plugin.commands import cli
from exgramed_plugin.commands.webui import EXTRA_PLOTS, add_alignment_plots, build_parser


def test_registered_as_a_delegated_command():
    assert cli.DELEGATED_COMMANDS["webui"][:2] == ("exgramed_plugin.commands.webui", "main")
    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)  # loopback unless asked otherwise


def test_alignment_plots_are_added_once():
    plots = [{"name": "train/loss", "smooth": 0.9}]
    add_alignment_plots(plots)
    add_alignment_plots(plots)
    assert [p["name"] for p in plots] == ["train/loss", "train/align_loss", "train/lm_loss"]
    assert plots[1:] == list(EXTRA_PLOTS)


def test_swift_ui_runtime_has_the_plot_list_we_extend():
    pytest.importorskip("gradio", reason="gradio is not installed (swift's web UI needs it)")
    from swift.ui.llm_train.runtime import Runtime
    assert isinstance(Runtime.sft_plot, list) and {"name": "train/loss", "smooth": 0.9} in Runtime.sft_plot


def test_model_type_appears_in_swift_dropdown_list(registered):
    from swift.model.constant import ModelType

    from exgramed_plugin.commands.webui import add_model_type_choice
    add_model_type_choice()
    add_model_type_choice()
    assert ModelType.get_model_name_list().count("exgra_med") == 1
