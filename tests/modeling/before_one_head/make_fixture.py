"""Writes the checkpoints that guard the one-head refactor (issue 29): run once, with the code before it.

A tiny ``exgra_med`` model with the graph network (full checkpoint) and a LoRA adapter over it that
also saves the graph network (``modules_to_save``), each with the logits and the align loss of one
fixed training batch. ``tests/modeling/test_before_one_head.py`` loads them with today's code and
expects both numbers again. Usage (from the repository root):

    .venv/bin/python tests/modeling/before_one_head/make_fixture.py

The vocabulary is 64 ids (no tokenizer: the batch is ids), so the files stay a few hundred KB.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
VOCAB, PATCH_ID, START_ID, END_ID, PAD_ID = 64, 60, 61, 62, 63


def build_model():
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    from exgramed_plugin.tiny_checkpoints.exgra_med import tiny_vision_config
    config = ExGraMedConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=PAD_ID, vision_config=tiny_vision_config(28, 14, 16, 1), mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=True, im_patch_token_id=PATCH_ID, im_start_token_id=START_ID, im_end_token_id=END_ID,
        architectures=["ExGraMedForCausalLM"], mga_enabled=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ExGraMedForCausalLM(config)


def fixed_batch(config) -> dict[str, torch.Tensor]:
    """Three samples (two with an image, one text-only), their merged and extended answers packed."""
    generator = torch.Generator().manual_seed(1)
    tokens = config.num_image_tokens
    image = [START_ID] + [PATCH_ID] * tokens + [END_ID]
    rows = [[1, *image, 5, 6, 7, 8], [1, *image, 9, 10, 11, 12], [1, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22][:len(image) + 5]]
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [PAD_ID] * (length - len(r)) for r in rows])
    attention_mask = (input_ids != PAD_ID).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    size = config.vision_config.image_size
    texts = [torch.randint(3, 59, (n,), generator=generator).tolist() for n in (5, 7, 4, 9, 6, 8)]
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "mga_text_ids": torch.tensor([[t for text in texts for t in text]]),
        "mga_text_lengths": torch.tensor([len(t) for t in texts]),
        "mga_image_tokens": torch.tensor([tokens, tokens]),
        "mga_images_per_sample": torch.tensor([1, 1, 0]),
    }


def run(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and align loss of one training-mode forward (dropout seeded)."""
    model.train()
    torch.manual_seed(2)
    with torch.no_grad():
        out = model(**batch)
    return out.logits, out.align_loss


def lora(model):
    from peft import LoraConfig, get_peft_model
    adapted = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               modules_to_save=["mga"]))
    generator = torch.Generator().manual_seed(3)
    for name, parameter in adapted.named_parameters():  # B is zero at init: make the adapter matter
        if "lora_B" in name or "modules_to_save" in name:
            parameter.data += 0.05 * torch.randn(parameter.shape, generator=generator)
    return adapted


def main() -> None:
    model = build_model()
    batch = fixed_batch(model.config)
    logits, align = run(model, batch)
    model.save_pretrained(HERE / "full")
    adapted = lora(build_model())  # a fresh model: its first alignment call, as a loaded one's
    lora_logits, lora_align = run(adapted, batch)
    adapted.save_pretrained(HERE / "lora")
    save_file({"logits": logits.contiguous(), "align_loss": align.reshape(1), "lora_logits": lora_logits.contiguous(),
               "lora_align_loss": lora_align.reshape(1)}, str(HERE / "expected.safetensors"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    (HERE / "made_by.json").write_text(json.dumps({"commit": commit, "script": "make_fixture.py"}, indent=1) + "\n")
    print(f"align loss {align.item():.6f}, LoRA align loss {lora_align.item():.6f}")


if __name__ == "__main__":
    main()
