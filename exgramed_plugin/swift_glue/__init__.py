"""Thin swift glue: model type, template, datasets, the exgra_mga loss and the exgra_vqa metric."""

from .datasets import register_exgra_med_datasets
from .loss import register_exgra_mga_loss
from .metrics import register_exgra_vqa_metric
from .model import register_exgra_med_model
from .template import register_exgra_med_template


def register_all() -> None:
    """Register everything with swift; safe to call more than once."""
    register_exgra_med_template()
    register_exgra_med_model()
    register_exgra_med_datasets()
    register_exgra_mga_loss()
    register_exgra_vqa_metric()
