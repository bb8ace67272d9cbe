"""A global graph above 512 nodes is announced at start-up with its estimated cost per step."""

import logging
from types import SimpleNamespace

from exgramed_plugin.swift_glue.run_settings import check_swift_run, settings_from_swift_args


def _sft_args(per_device):
    return SimpleNamespace(model_kwargs={}, loss_type="exgra_mga", resume_from_checkpoint=None, adapters=[],
                           per_device_train_batch_size=per_device, packing=False, padding_free=False, strict=True,
                           check_model=False, model=None)


def test_large_global_graph_is_warned_with_its_cost(monkeypatch, caplog):
    monkeypatch.setenv("WORLD_SIZE", "64")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with caplog.at_level(logging.WARNING, logger="exgramed_plugin.swift_glue.run_settings"):
        args = _sft_args(16)
        check_swift_run(args, settings_from_swift_args(args, environ={"MGA_GLOBAL_GRAPH": "1"}))  # 1,024 nodes
        args = _sft_args(8)
        check_swift_run(args, settings_from_swift_args(args, environ={"MGA_GLOBAL_GRAPH": "1"}))  # 512: no warning
        args = _sft_args(16)
        check_swift_run(args, settings_from_swift_args(args, environ={}))  # per-device graphs of 16: no warning
    warnings = [r.getMessage() for r in caplog.records if "MGA_GLOBAL_GRAPH=1" in r.getMessage()]
    assert len(warnings) == 1 and "one graph of 1024 nodes" in warnings[0] and "s of CPU per step" in warnings[0]
