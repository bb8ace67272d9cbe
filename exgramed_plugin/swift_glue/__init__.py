"""Thin swift glue: model type, template, datasets, the exgra_mga loss, the exgra_vqa / exgra_mc metrics, and
the alignment head on swift's built-in VLMs."""

import logging

from .builtin_models import register_builtin_alignment
from .choice_datasets import register_choice_benchmarks
from .datasets import register_exgra_med_datasets
from .hub_datasets import register_hub_benchmarks
from .loss import register_exgra_mga_loss
from .metrics import register_exgra_vqa_metric
from .model import register_exgra_med_model
from .resume import register_resume_callback
from .run_settings import capture_swift_arguments
from .template import register_exgra_med_template
from .training_guard import install_non_finite_guard


def show_plugin_logs() -> None:
    """Let the plugin's INFO lines (settings, start-up adjustments, end-of-training counts) reach a
    swift run's console, as swift's own do; idempotent."""
    plugin_logger = logging.getLogger("exgramed_plugin")
    if plugin_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(levelname)s:exgramed] %(message)s"))
    plugin_logger.addHandler(handler)
    plugin_logger.setLevel(logging.INFO)
    plugin_logger.propagate = False


def register_all() -> None:
    """Register everything with swift; safe to call more than once."""
    show_plugin_logs()
    capture_swift_arguments()
    register_exgra_med_template()
    register_exgra_med_model()
    register_exgra_med_datasets()
    register_hub_benchmarks()
    register_choice_benchmarks()
    register_exgra_mga_loss()
    register_exgra_vqa_metric()
    register_builtin_alignment()
    register_resume_callback()
    install_non_finite_guard()
