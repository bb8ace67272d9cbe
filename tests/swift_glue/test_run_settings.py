"""The swift glue of the settings: read from swift's arguments, start-up checks and adjustments."""

import json
from types import SimpleNamespace

import pytest

from exgramed_plugin.settings import SettingsError
from exgramed_plugin.swift_glue.run_settings import adapter_saves_mga, check_swift_run, settings_from_swift_args


def _sft_args(**values):
    defaults = dict(model_kwargs={}, loss_type="exgra_mga", resume_from_checkpoint=None, adapters=[],
                    per_device_train_batch_size=2, packing=False, padding_free=False, strict=False,
                    check_model=True, model=None)
    return SimpleNamespace(**{**defaults, **values})


def test_loss_type_and_model_kwargs_come_from_the_arguments_object():
    settings = settings_from_swift_args(_sft_args(model_kwargs={"mga_k": 4}), environ={"MGA_SEED": "9"})
    assert settings.mga.enabled and (settings.mga.k, settings.mga.seed) == (4, 9)
    assert not settings_from_swift_args(_sft_args(loss_type=None), environ={}).mga.enabled


def test_batch_of_one_is_refused_unless_the_global_graph_spans_processes(monkeypatch):
    args = _sft_args(per_device_train_batch_size=1)
    with pytest.raises(SettingsError, match="--per_device_train_batch_size is 1 on 1 process"):
        check_swift_run(args, settings_from_swift_args(args, environ={}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(SettingsError, match="on 2 process"):  # per-device graphs of 1 node each
        check_swift_run(args, settings_from_swift_args(args, environ={}))
    check_swift_run(args, settings_from_swift_args(args, environ={"MGA_GLOBAL_GRAPH": "1"}))  # 2 x 1 nodes
    check_swift_run(_sft_args(per_device_train_batch_size=1, packing=True),
                    settings_from_swift_args(args, environ={}))  # a packed row holds many samples


def test_batch_of_one_without_alignment_is_fine():
    args = _sft_args(per_device_train_batch_size=1, loss_type=None)
    check_swift_run(args, settings_from_swift_args(args, environ={}))
    args = _sft_args(per_device_train_batch_size=1)
    check_swift_run(args, settings_from_swift_args(args, environ={"MGA_ALPHA": "0"}))


def test_strict_is_turned_on_for_training_and_check_model_off_for_local_checkpoints(tiny_checkpoint, tmp_path):
    args = _sft_args(model=str(tiny_checkpoint))
    check_swift_run(args, settings_from_swift_args(args, environ={}))
    assert args.strict is True and args.check_model is False
    foreign = tmp_path / "other"  # any local folder: the hub cannot say anything about it
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    args = _sft_args(model=str(foreign), loss_type=None)
    check_swift_run(args, settings_from_swift_args(args, environ={}))
    assert args.check_model is False
    args = _sft_args(model="Qwen/Qwen2.5-VL-3B-Instruct", loss_type=None)  # a hub id: swift's own check
    check_swift_run(args, settings_from_swift_args(args, environ={}))
    assert args.check_model is True


def test_resume_reads_the_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "exgra_med", "mga_alpha": 1.0, "mga_k": 3,
                                                      "mga_enabled": True}))
    settings = settings_from_swift_args(_sft_args(resume_from_checkpoint=str(tmp_path)), environ={})
    assert settings.mga.k == 3
    with pytest.raises(SettingsError, match=r"MGA_K=7 \(saved: 3\)"):
        settings_from_swift_args(_sft_args(resume_from_checkpoint=str(tmp_path)), environ={"MGA_K": "7"})


def test_export_of_an_adapter_with_the_graph_network_builds_the_module(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"modules_to_save": ["mga"]}))
    assert adapter_saves_mga(tmp_path)
    export = SimpleNamespace(model_kwargs={}, adapters=[str(tmp_path)], resume_from_checkpoint=None)
    assert settings_from_swift_args(export, environ={}).mga.enabled
    (tmp_path / "adapter_config.json").write_text(json.dumps({"modules_to_save": None}))
    assert not settings_from_swift_args(export, environ={}).mga.enabled


def test_sequence_parallel_is_refused_with_the_alignment():
    args = _sft_args(sequence_parallel_size=2)
    with pytest.raises(SettingsError, match="--sequence_parallel_size 2 with --loss_type exgra_mga"):
        check_swift_run(args, settings_from_swift_args(args, environ={}))
    check_swift_run(args, settings_from_swift_args(args, environ={"MGA_ALPHA": "0"}))  # no text pass: fine


@pytest.mark.parametrize("engine, world, checkpointing_kwargs, refused", [
    ({}, 2, {"use_reentrant": True}, "DDP"),  # gloo: "Expected to mark a variable ready only once"
    ({}, 2, None, None),  # swift's default for DDP: non-reentrant
    ({}, 1, {"use_reentrant": True}, None),  # one process: no gradient reduction
    ({"deepspeed": "zero2"}, 2, None, "DeepSpeed ZeRO-2"),  # swift's default under DeepSpeed: reentrant
    ({"deepspeed": "zero2"}, 1, None, "DeepSpeed ZeRO-2"),  # "Gradient computed twice for this partition"
    ({"deepspeed": "zero2"}, 2, '{"use_reentrant": false}', None),
    ({"deepspeed": "zero3"}, 2, None, None),  # ZeRO-3 trains (tests/distributed/test_distributed_cpu.py)
])
def test_reentrant_checkpointing_with_a_second_decoder_pass_is_refused_by_name(engine, world, checkpointing_kwargs,
                                                                             refused):
    from exgramed_plugin.swift_glue.run_checks import reentrant_checkpointing_problem
    args = SimpleNamespace(gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing_kwargs, fsdp="",
                           **{"deepspeed": None, **engine})
    problem = reentrant_checkpointing_problem(args, world_size=world)
    if refused is None:
        assert problem is None
    else:
        assert f"reentrant gradient checkpointing under {refused}" in problem
        assert """--gradient_checkpointing_kwargs '{"use_reentrant": false}'""" in problem
    args.gradient_checkpointing = False
    assert reentrant_checkpointing_problem(args, world_size=world) is None


def test_deepspeed_stage_of_presets_and_files(tmp_path):
    from exgramed_plugin.swift_glue.run_checks import deepspeed_stage
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert [deepspeed_stage(v) for v in (None, "zero2", "zero3_offload", "zero1", str(config))] == [None, 2, 3, 1, 2]
