"""exgra_med with a padding-free batch (one row of several samples, as --padding_free builds it):
the same nodes, lm_loss and align_loss as the padded batch."""

import json

import torch

from conftest import DATA_TEMPLATES, padded_and_padding_free

ATOL = 1e-5


def test_padding_free_batch_gives_the_padded_nodes_and_losses(registered, tiny_checkpoint):
    from swift.model import get_processor
    from swift.template import get_template

    from exgramed_plugin.data.formats import row_to_standard
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled = True
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config).train()
    for module in model.modules():  # deterministic: no dropout in the GNN
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    template = get_template(get_processor(str(tiny_checkpoint)))
    template.config = model.config
    template.set_mode("train")
    assert template.support_padding_free
    source = DATA_TEMPLATES / "llava_med_instruct.json"
    rows = [row_to_standard(r, str(source)) for r in json.loads(source.read_text())]
    assert any(not r["images"] for r in rows) and any(r["images"] for r in rows)  # a text-only row is in it
    padded, packed = padded_and_padding_free(template, rows)
    assert "attention_mask" not in packed
    assert packed["mga_images_per_sample"].tolist() == [len(r["images"]) for r in rows]
    seen = []
    original = model.model.mga.forward

    def record(z_image, z_text, z_extended, **kwargs):
        seen.append(torch.cat([z_image, z_text, z_extended], dim=1).detach())
        return original(z_image, z_text, z_extended, **kwargs)

    model.model.mga.forward = record
    try:
        model.alignment_head.calls = 0
        padded_out = model(**padded)
        model.alignment_head.calls = 0
        packed_out = model(**{k: v for k, v in packed.items() if not k.startswith(("cu_seq", "max_length"))})
    finally:
        del model.model.mga.forward
    torch.testing.assert_close(seen[1], seen[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(packed_out.align_loss, padded_out.align_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(packed_out.loss, padded_out.loss, atol=ATOL, rtol=0)
