"""The warning for frozen image-node modules names, for each model type and tuner, the swift arguments
that train them; following it (through swift's own model preparation) trains them and silences it."""

from __future__ import annotations

import pytest

from prepared_models import TINY_FIXTURES, prepared_model

FROZEN = {"loss_type": "exgra_mga", "per_device_train_batch_size": 2, "freeze_vit": True, "freeze_aligner": True}
TUNERS = {"full": {"tuner_type": "full"},
          "lora": {"tuner_type": "lora", "target_modules": ["all-linear"], "modules_to_save": ["mga"]}}


@pytest.mark.parametrize("tuner", sorted(TUNERS))
@pytest.mark.parametrize("model_type", sorted(TINY_FIXTURES))
def test_following_the_warning_trains_the_image_node_modules(registered, request, model_type, tuner, tmp_path):
    from exgramed_plugin.head.families import FAMILIES, frozen_image_nodes, model_with_head
    model_dir = request.getfixturevalue(TINY_FIXTURES[model_type])
    template = FAMILIES[model_type].template if model_type in FAMILIES else model_type
    arguments = {**FROZEN, **TUNERS[tuner], "model_type": model_type, "template": template}
    frozen = frozen_image_nodes(model_with_head(prepared_model(arguments, model_dir, tmp_path)), model_type)
    assert frozen is not None, "swift's default (--freeze_aligner true) leaves the image-node modules frozen"
    assert all(f"--{flag}" in frozen.message for flag in frozen.flags)
    for flag, value in frozen.flags.items():  # a list is added to the run's own list
        arguments[flag] = [*arguments.get(flag, []), *value] if isinstance(value, list) else value
    assert frozen_image_nodes(model_with_head(prepared_model(arguments, model_dir, tmp_path)), model_type) is None
