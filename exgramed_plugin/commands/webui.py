"""``exgramed webui``: swift's web UI with the plugin imported first.

``swift web-ui`` has no plugin option, and the UI builds its template list and validates the
training arguments *in its own process*. So the plugin must be imported before ``swift.ui``: then
the ``exgra_med`` template is in the template dropdown, a model directory of type ``exgra_med``
resolves when the UI checks the arguments, and ``--loss_type exgra_mga`` is a known loss. The
training itself runs in a ``swift sft`` subprocess, which imports the plugin again from
``--custom_register_path`` in the "Other params" box (docs/webui.md).

The Runtime panel plots the scalars listed in ``Runtime.sft_plot`` (TensorBoard tags); the
alignment run logs ``train/align_loss`` and ``train/lm_loss``, so they are added there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .paths import REGISTER_FILE

logger = logging.getLogger(__name__)

EXTRA_PLOTS: tuple[dict[str, object], ...] = (
    {"name": "train/align_loss", "smooth": 0.9},
    {"name": "train/lm_loss", "smooth": 0.9},
)


def add_alignment_plots(plots: list[dict[str, object]]) -> list[dict[str, object]]:
    """Append the alignment plots to swift's plot list in place (once, however often called)."""
    names = {plot["name"] for plot in plots}
    for plot in EXTRA_PLOTS:
        if plot["name"] not in names:
            plots.append(dict(plot))
    return plots


def add_model_type_choice() -> None:
    """Offer ``exgra_med`` in the UI's model-type dropdown.

    The dropdown lists the string attributes of swift's static ``ModelType`` classes, not the
    registry, so a plugin model type never appears there by itself.
    """
    from swift.model.constant import MLLMModelType

    from ..swift_glue.model import MODEL_TYPE
    if MODEL_TYPE not in vars(MLLMModelType).values():
        setattr(MLLMModelType, MODEL_TYPE, MODEL_TYPE)


def _put_this_python_first_on_path() -> None:
    """The UI launches training as ``swift sft`` from ``PATH``: make that the ``swift`` of this environment."""
    bin_dir = str(Path(sys.executable).parent)
    if (Path(bin_dir) / "swift").exists():
        parts = os.environ.get("PATH", "").split(os.pathsep)
        if not parts or parts[0] != bin_dir:
            os.environ["PATH"] = os.pathsep.join([bin_dir, *parts])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed webui",
        description="swift's web UI with the exgra_med model type, template, datasets and exgra_mga loss loaded. "
                    f"In the Train tab put the plugin in 'Other params', e.g. --custom_register_path {REGISTER_FILE} "
                    "--model_type exgra_med --template exgra_med --loss_type exgra_mga")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; the UI has no authentication and runs commands)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--lang", choices=("en", "zh"), default="en")
    parser.add_argument("--share", action="store_true", help="gradio share link (needs network; off by default)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a local browser tab (gradio opens one by default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("exgramed webui needs gradio: pip install 'exgramed-plugin[webui]' (or pip install gradio)",
              file=sys.stderr)
        return 2
    # The plugin first: the template dropdown and the UI's argument check are built from swift's
    # registries when swift.ui is imported / the Train button is pressed.
    from ..swift_glue import register_all
    register_all()
    from swift.ui import webui_main
    from swift.ui.llm_train.runtime import Runtime

    add_alignment_plots(Runtime.sft_plot)
    add_model_type_choice()
    _put_this_python_first_on_path()
    # swift reads WEBUI_SERVER / WEBUI_PORT before its own arguments: make ours win.
    os.environ.pop("WEBUI_SERVER", None)
    os.environ.pop("WEBUI_PORT", None)
    if args.no_browser:
        import webbrowser
        webbrowser.open = lambda *a, **k: False  # gradio's launch(inbrowser=True) and the UI's log/TensorBoard buttons
    logger.info("swift web UI on http://%s:%d with the exgra_med plugin (%s)", args.host, args.port, REGISTER_FILE)
    webui_main(["--server_name", args.host, "--server_port", str(args.port), "--lang", args.lang,
                "--share", str(args.share).lower()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
