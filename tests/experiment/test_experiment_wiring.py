"""The alignment-objective switch in the model and the easy-vqa preparation of the experiment."""

from __future__ import annotations

import json

import pytest
import torch

from exgramed_plugin.alignment import MultiGraphAlignment
from exgramed_plugin.alignment.contrastive import ContrastiveAlignment
from exgramed_plugin.modeling.configuration import ExGraMedConfig
from exgramed_plugin.settings import apply_mga_to_config, parse_settings


def test_env_selects_objective():
    config = ExGraMedConfig()
    assert config.mga_objective == "mga"
    apply_mga_to_config(config, parse_settings({"MGA_OBJECTIVE": "siglip"}, loss_type="exgra_mga"))
    assert config.mga_objective == "siglip" and config.mga_enabled


@pytest.mark.parametrize("objective, expected", [("mga", MultiGraphAlignment), ("infonce", ContrastiveAlignment),
                                                  ("siglip", ContrastiveAlignment)])
def test_model_builds_the_chosen_module(tiny_checkpoint, objective, expected):
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled, config.mga_objective = True, objective
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config)
    assert isinstance(model.model.mga, expected)
    if objective != "mga":  # missing from the checkpoint: initialised to the documented values, not garbage
        for name, value in model.model.mga.initial_values().items():
            assert getattr(model.model.mga, name).item() == pytest.approx(value)


def test_unknown_objective_is_an_error(tiny_checkpoint):
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled, config.mga_objective = True, "clip"
    with pytest.raises(ValueError, match="mga_objective"):
        ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config)


def test_contrastive_forward_gives_an_alignment_loss(tiny_checkpoint):
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled, config.mga_objective = True, "infonce"
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config).train()
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    tokens = [config.im_start_token_id] + [config.im_patch_token_id] * config.num_image_tokens + [config.im_end_token_id]
    input_ids = torch.tensor([[1, *tokens, 100, 200], [1, *tokens, 300, 400], [1, *tokens, 500, 600]])
    pixels = torch.randn(3, 3, size, size, generator=generator)
    text_ids = torch.randint(5, 1000, (6, 5), generator=generator)
    out = model(input_ids=input_ids, pixel_values=pixels, labels=input_ids, mga_text_ids=text_ids,
                mga_text_mask=torch.ones_like(text_ids))
    assert out.align_loss is not None and torch.isfinite(out.align_loss)
    out.align_loss.backward()
    assert model.model.mga.logit_scale.grad is not None
    assert model.model.mm_projector[0].weight.grad is not None  # the image nodes are the projector outputs


pytest.importorskip("easy_vqa")


def test_extend_answer_rules():
    from exgramed_plugin.experiment.easy_vqa_data import extend_answer
    assert extend_answer("is there not a red shape?", "no") == "No. The image contains a red shape."
    assert extend_answer("is no circle present?", "yes") == "Yes. The image does not contain a circle."
    assert extend_answer("does the image contain a triangle?", "no") == "No. The image does not contain a triangle."
    assert extend_answer("what color is the shape?", "teal") == "Teal. The shape in the image is teal."
    assert extend_answer("what is the blue shape?", "circle") == "Circle. The blue shape in the image is a circle."
    assert extend_answer("what shape is present?", "rectangle") == "Rectangle. The image contains a rectangle."
    with pytest.raises(ValueError):
        extend_answer("how many shapes?", "1")


def test_every_easy_vqa_question_has_a_rule():
    from exgramed_plugin.experiment.easy_vqa_data import _questions, extend_answer
    for split in ("train", "test"):
        for question, answer, _ in _questions(split):
            extend_answer(question, answer)


def test_prepare_writes_nested_fractions(tmp_path):
    from exgramed_plugin.experiment.easy_vqa_data import prepare_easy_vqa
    data = prepare_easy_vqa(tmp_path, (0.1, 0.5, 1.0), n_open=5, n_closed=7, pool_images=40)
    ids = {f: {row["id"] for row in json.loads(e.alignment.read_text())} for f, e in data.fractions.items()}
    assert [len(ids[f]) for f in (0.1, 0.5, 1.0)] == [4, 20, 40]
    assert ids[0.1] < ids[0.5] < ids[1.0]
    test = json.loads(data.vqa_test.read_text())
    assert sum(r["answer_type"] == "OPEN" for r in test) == 5 and sum(r["answer_type"] == "CLOSED" for r in test) == 7
    for row in test:
        closed = row["conversations"][1]["value"] in ("yes", "no")
        assert row["conversations"][0]["value"].endswith(' (Answer with either "Yes" or "No").\n<image>') == closed
    row = json.loads(data.fractions[0.1].alignment.read_text())[0]
    assert len(row["conversations"]) == len(row["conversations_long"]) <= 8


def test_command_line_overrides_the_budget():
    from exgramed_plugin.experiment.data_efficiency import FULL, QUICK, budget_from_args, build_parser
    parse = build_parser().parse_args
    assert budget_from_args(parse(["data-efficiency"])) == FULL
    budget = budget_from_args(parse(["data-efficiency", "--finetune-steps", "1000", "--train-vision-tower"]))
    assert (budget.stage2_steps, budget.finetune_steps, budget.train_vision_tower) == (FULL.stage2_steps, 1000, True)
    budget = budget_from_args(parse(["data-efficiency", "--quick", "--stage2-steps", "3"]))
    assert (budget.stage2_steps, budget.finetune_steps, budget.test_per_answer) == (3, QUICK.finetune_steps,
                                                                                   QUICK.test_per_answer)
    budget = budget_from_args(parse(["data-efficiency", "--batch-size", "16", "--learning-rate", "1e-3",
                                     "--pool-images", "200", "--random-vision-tower", "--llama-tokenizer"]))
    assert (budget.stage2_batch, budget.finetune_batch, budget.learning_rate, budget.pool_images) == (16, 16, 1e-3, 200)
    assert budget.pretrained_vision is False and budget.small_tokenizer is False
    assert FULL.pretrained_vision and FULL.small_tokenizer and not FULL.train_vision_tower
    budget = budget_from_args(parse(["data-efficiency", "--balance-closed", "--image-first"]))
    assert budget.balance_closed and budget.image_first
    assert budget == FULL.__class__(**{**FULL.__dict__, "balance_closed": True, "image_first": True})


def test_every_arm_has_its_stage2_settings():
    from exgramed_plugin.experiment.data_efficiency import ARMS, arm_settings
    from exgramed_plugin.settings import OBJECTIVES
    assert ARMS == ("none", "infonce", "siglip", "mga")
    assert arm_settings("none") == {"mga_alpha": 0}
    for arm in ARMS[1:]:
        assert arm in OBJECTIVES and arm_settings(arm) == {"mga_alpha": 1.0, "mga_objective": arm}
    with pytest.raises(ValueError):
        arm_settings("clip")


@pytest.mark.parametrize("train_tower, freeze_vit", [(False, "true"), (True, "false")])
def test_vision_tower_switch_reaches_swift(train_tower, freeze_vit):
    from dataclasses import replace

    from exgramed_plugin.experiment.data_efficiency import FULL, _common_sft_args
    args = _common_sft_args(replace(FULL, train_vision_tower=train_tower), seed=0)
    assert args[args.index("--freeze_vit") + 1] == freeze_vit
