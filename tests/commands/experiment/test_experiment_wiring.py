"""The alignment-objective switch in the model, the extended answers and the experiment's arms and options."""

from __future__ import annotations

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
    from exgramed_plugin.commands.experiment.easy_vqa_data import extend_answer
    assert extend_answer("is there not a red shape?", "no") == "No. The image contains a red shape."
    assert extend_answer("is no circle present?", "yes") == "Yes. The image does not contain a circle."
    assert extend_answer("does the image contain a triangle?", "no") == "No. The image does not contain a triangle."
    assert extend_answer("what color is the shape?", "teal") == "Teal. The shape in the image is teal."
    assert extend_answer("what is the blue shape?", "circle") == "Circle. The blue shape in the image is a circle."
    assert extend_answer("what shape is present?", "rectangle") == "Rectangle. The image contains a rectangle."
    with pytest.raises(ValueError):
        extend_answer("how many shapes?", "1")


def test_every_easy_vqa_question_has_a_rule():
    from exgramed_plugin.commands.experiment.easy_vqa_data import _questions, extend_answer
    for split in ("train", "test"):
        for question, answer, _ in _questions(split):
            extend_answer(question, answer)


def test_command_line_budget_options():
    from exgramed_plugin.commands.experiment.data_efficiency import budget_from_args, build_parser
    from exgramed_plugin.commands.experiment.protocol import FULL, QUICK, budget_changes
    parse = build_parser().parse_args
    assert budget_from_args(parse(["data-efficiency", "--gate"]), FULL) == FULL
    budget = budget_from_args(parse(["data-efficiency", "--gate", "--downstream-images", "50",
                                     "--pretrain-epochs", "9"]), FULL)
    assert budget_changes(budget) == {"downstream_images": 50, "pretrain_epochs": 9}
    budget = budget_from_args(parse(["data-efficiency", "--quick", "--finetune-epochs", "3"]), QUICK)
    assert (budget.finetune_epochs, budget.pool_images) == (3, QUICK.pool_images)


def test_every_arm_has_its_stage2_settings():
    from exgramed_plugin.commands.experiment.protocol import ARMS, arm_settings
    from exgramed_plugin.settings import OBJECTIVES
    assert ARMS == ("none", "mga", "lm-long", "infonce", "siglip")
    assert arm_settings("none", 1.0) == arm_settings("lm-long", 1.0) == {"mga_alpha": 0}
    for arm in ("mga", "infonce", "siglip"):
        assert arm in OBJECTIVES and arm_settings(arm, 0.5) == {"mga_alpha": 0.5, "mga_objective": arm}
    with pytest.raises(ValueError):
        arm_settings("clip", 1.0)
