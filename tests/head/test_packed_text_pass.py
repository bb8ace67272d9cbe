"""Packed text passes of the alignment against a plain padded forward (fp32, tiny model)."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conftest import DATA_TEMPLATES
from exgramed_plugin.modeling.configuration import ExGraMedConfig
from exgramed_plugin.head.text_packing import attention_break_even, pack_padded, packed_text_nodes, plan_layout
from exgramed_plugin.settings import MGASettings

ATOL = 1e-5
# on the tiny model: 4 rows of 40 positions; one row of 311 (cheaper than rows of the longest, 300)
BUCKETED = [7, 40, 3, 38, 1, 25, 33, 12]
ONE_LONG = [300, 4, 2, 5]


def _model(checkpoint, attn: str = "sdpa", **fields):
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(checkpoint)
    config.mga_enabled = True
    for key, value in fields.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = ExGraMedForCausalLM.from_pretrained(checkpoint, config=config, attn_implementation=attn).train()
    model.model.mga.eval()  # no GNN dropout: two forwards must see the same alignment network
    return model


def _sequences(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 30000, (n,), generator=generator) for n in lengths]


def _padded(sequences, pad=0):
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)], mask[row, :len(s)] = s, 1
    return ids, mask


def _reference_nodes(model, sequences):
    """A plain padded forward of the decoder, then the masked mean (the layout before packing)."""
    ids, mask = _padded(sequences)
    hidden = model.model.embed_tokens(ids)
    if model.config.mga_after_de:
        hidden = model.model(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state
    return torch.stack([hidden[row, :len(s)].mean(0) for row, s in enumerate(sequences)])


def _packed(sequences):
    return torch.cat(sequences).unsqueeze(0), torch.tensor([len(s) for s in sequences])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lengths, rows", [(BUCKETED, 4), (ONE_LONG, 1)])
def test_packed_nodes_equal_a_padded_forward(tiny_checkpoint, attn, lengths, rows):
    model = _model(tiny_checkpoint, attn)
    layout = plan_layout(lengths, single_row=False, break_even=attention_break_even(model.config))
    assert layout.rows == rows  # rows of several samples each; or all samples in one row (as flash gets them)
    sequences = _sequences(lengths)
    with torch.no_grad():
        reference = _reference_nodes(model, sequences)
        ids, lengths = _packed(sequences)
        torch.testing.assert_close(model.alignment_head.text_nodes_of(model, ids, text_lengths=lengths), reference, atol=ATOL, rtol=0)
        # a padded batch is packed by the model: the same nodes
        torch.testing.assert_close(model.alignment_head.text_nodes_of(model, *_padded(sequences)), reference, atol=ATOL, rtol=0)


def test_token_embedding_nodes_are_packed_too(tiny_checkpoint):
    model = _model(tiny_checkpoint, mga_after_de=False)
    sequences = _sequences(BUCKETED)
    with torch.no_grad():
        ids, lengths = _packed(sequences)
        torch.testing.assert_close(model.alignment_head.text_nodes_of(model, ids, text_lengths=lengths), _reference_nodes(model, sequences),
                                   atol=ATOL, rtol=0)


def test_changing_one_sample_changes_only_its_node(tiny_checkpoint):
    model = _model(tiny_checkpoint)
    sequences = _sequences(BUCKETED)
    changed = [s.clone() for s in sequences]
    changed[3][5:] = torch.randint(5, 30000, (len(changed[3]) - 5,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ids, lengths = _packed(sequences)
        before = model.alignment_head.text_nodes_of(model, ids, text_lengths=lengths)
        ids, lengths = _packed(changed)
        after = model.alignment_head.text_nodes_of(model, ids, text_lengths=lengths)
    others = [i for i in range(len(sequences)) if i != 3]
    torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
    assert (after[3] - before[3]).abs().max() > 1e-3


def test_layout_places_every_sample_once_inside_one_row():
    lengths = [243, 17, 180, 15, 1, 99, 0, 64, 20, 243]
    layout = plan_layout(lengths, single_row=False, break_even=1280.0)
    taken = torch.zeros(layout.computed, dtype=torch.long)
    for start, length in zip(layout.starts, layout.lengths):
        assert start // layout.width == (start + max(length, 1) - 1) // layout.width  # no sample crosses a row
        taken[start:start + length] += 1
    assert int(taken.max()) == 1 and int(taken.sum()) == sum(lengths)
    # 921 x (1 + 307 / 1280): cheaper than one row of 882 (1490) or 4 rows of the longest sample, 243 (1157)
    assert (layout.rows, layout.width) == (3, 307)
    flash = plan_layout(lengths, single_row=True, break_even=1280.0)
    assert (flash.rows, flash.computed) == (1, sum(lengths))


class _RecordingDecoder(nn.Module):
    """A decoder that returns its input embeddings and records the call (the flash-attention branch)."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 4)
        self.config = SimpleNamespace(_attn_implementation="flash_attention_2", hidden_size=4, num_attention_heads=1,
                                      intermediate_size=8)
        self.calls = []

    def forward(self, inputs_embeds, position_ids, use_cache, **kwargs):
        self.calls.append(dict(shape=tuple(inputs_embeds.shape), position_ids=position_ids, **kwargs))
        return SimpleNamespace(last_hidden_state=inputs_embeds)


def test_flash_attention_gets_one_row_and_the_varlen_arguments():
    decoder = _RecordingDecoder()
    lengths = [3, 0, 5, 2]
    ids = torch.randint(0, 50, (1, sum(lengths)))
    nodes = packed_text_nodes(decoder, ids, torch.tensor(lengths), after_de=True)
    (call,) = decoder.calls
    assert call["shape"] == (1, 10, 4)
    assert call["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == [0, 3, 8, 10]
    assert call["cu_seq_lens_q"].dtype == torch.int32
    assert call["max_length_q"] == call["max_length_k"] == 5
    embeds = decoder.embed_tokens(ids[0])
    expected = torch.stack([embeds[0:3].mean(0), torch.zeros(4), embeds[3:8].mean(0), embeds[8:10].mean(0)])
    torch.testing.assert_close(nodes, expected)


def test_left_padded_mask_is_refused():
    with pytest.raises(ValueError, match="right-padded"):
        pack_padded(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 1, 1]]))


# ------------------------------------------------------------------------------------------------
# pooling precision: bf16 / fp16 states

class _CudaAtomicIndexAdd(TorchFunctionMode):
    """Emulates CUDA's ``index_add``: one atomic add per source row, each rounding the partial sum to
    the buffer's dtype (the CPU kernel accumulates bf16 more precisely, so it cannot show the defect).
    Records the dtype of every buffer it adds into."""

    def __init__(self):
        super().__init__()
        self.buffer_dtypes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in (torch.Tensor.index_add, torch.index_add):
            return func(*args, **kwargs)
        buffer, dim, index, source = args
        assert dim == 0 and not kwargs
        self.buffer_dtypes.append(buffer.dtype)
        out = buffer.detach().clone()
        for row in range(source.shape[0]):
            out[index[row]] = (out[index[row]].double() + source[row].double()).to(buffer.dtype)
        return out


def _token_states(lengths, dtype, offset, seed=0):
    """Token states with a shared component, as a decoder's last hidden states have (a node is not ~0)."""
    generator = torch.Generator().manual_seed(seed)
    shared = offset + torch.randn(64, generator=generator)
    return (shared + torch.randn(sum(lengths), 64, generator=generator)).to(dtype)


def _padded_path_nodes(states, lengths):
    """The padded path's pooling (``AlignmentHead._padded_text_nodes``) on the same states."""
    hidden = torch.zeros(len(lengths), max(lengths), states.shape[1], dtype=states.dtype)
    mask = torch.zeros(len(lengths), max(lengths), dtype=states.dtype)
    for row, part in enumerate(states.split(lengths)):
        hidden[row, :len(part)], mask[row, :len(part)] = part, 1
    mask = mask.unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _relative_errors(nodes, states, lengths):
    reference = torch.stack([part.double().mean(0) for part in states.split(lengths)])
    return (nodes.double() - reference).norm(dim=1) / reference.norm(dim=1)


def _embedding_only_decoder(states):
    embedding = nn.Embedding(*states.shape).to(states.dtype)
    embedding.weight.data.copy_(states)
    return SimpleNamespace(embed_tokens=embedding)


def test_bf16_nodes_are_pooled_in_float32_within_the_padded_paths_error():
    lengths = [1600, 400, 100, 7]
    states = _token_states(lengths, torch.bfloat16, offset=0.0)
    decoder = _embedding_only_decoder(states)
    atomics = _CudaAtomicIndexAdd()
    with torch.no_grad(), atomics:
        nodes = packed_text_nodes(decoder, torch.arange(sum(lengths))[None], torch.tensor(lengths), after_de=False)
    assert atomics.buffer_dtypes == [torch.float32]
    assert nodes.dtype == torch.bfloat16
    padded_error = _relative_errors(_padded_path_nodes(states, lengths), states, lengths)
    assert float(padded_error.max()) < 0.005  # one bf16 rounding of the float32 sum (2^-9)
    assert bool((_relative_errors(nodes, states, lengths) <= padded_error.max()).all())


def test_fp16_sums_past_the_fp16_range_do_not_overflow():
    lengths = [1600, 30]
    states = _token_states(lengths, torch.float16, offset=60.0)  # a sum of ~96,000 > 65,504
    with torch.no_grad():
        nodes = packed_text_nodes(_embedding_only_decoder(states), torch.arange(sum(lengths))[None],
                                  torch.tensor(lengths), after_de=False)
    assert bool(torch.isfinite(nodes).all())
    assert float(_relative_errors(nodes, states, lengths).max()) < 2 ** -10


# ------------------------------------------------------------------------------------------------
# through the exgra_med template's collator and the model's forward

def _template(model, checkpoint):
    from swift.model import get_processor
    from swift.template import get_template
    template = get_template(get_processor(str(checkpoint)))
    template.config = model.config
    template.set_mode("train")
    return template


def _rows():
    from exgramed_plugin.data.formats import row_to_standard
    source = DATA_TEMPLATES / "llava_med_instruct.json"
    return [row_to_standard(r, str(source)) for r in json.loads(source.read_text())]


def _align_grads(model, batch):
    model.zero_grad(set_to_none=True)
    model.alignment_head.calls = 0  # the same Gumbel noise for both layouts
    out = model(**batch)
    out.align_loss.backward()
    return out.align_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_and_padded_batches_give_the_same_alignment_gradients(registered, tiny_checkpoint):
    model = _model(tiny_checkpoint)
    template = _template(model, tiny_checkpoint)
    encoded = [template.encode(r) for r in _rows()]
    packed = template.data_collator(encoded)
    model.config.mga_text_packing = False
    model.alignment_head.settings = MGASettings.from_config(model.config)  # head and template read them once
    template.mga_settings = model.alignment_head.settings
    padded = template.data_collator(encoded)
    sequences = [e["merged_answer_ids"] for e in encoded] + [e["extended_answer_ids"] for e in encoded]
    assert packed["mga_text_ids"].shape == (1, sum(map(len, sequences))) and "mga_text_mask" not in packed
    assert packed["mga_text_lengths"].tolist() == [len(s) for s in sequences]
    assert padded["mga_text_ids"].shape == (len(sequences), max(map(len, sequences)))
    loss_padded, grads_padded = _align_grads(model, padded)
    model.config.mga_text_packing = True
    model.alignment_head.settings = MGASettings.from_config(model.config)
    template.mga_settings = model.alignment_head.settings
    loss_packed, grads_packed = _align_grads(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, atol=ATOL, rtol=0)
    assert grads_packed.keys() == grads_padded.keys()
    assert any("layers.0.mlp" in n for n in grads_packed)  # through the text passes
    for name, grad in grads_packed.items():  # GNN biases reach |grad| ~ 30 (lambda = 80): fp32 rtol on top
        torch.testing.assert_close(grad, grads_padded[name], atol=ATOL, rtol=1.3e-6, msg=name)


def test_padded_pooling_uses_the_padded_pass_and_says_so_once(registered, tiny_checkpoint, caplog):
    model = _model(tiny_checkpoint, mga_pooling="padded")
    template = _template(model, tiny_checkpoint)
    batch = template.data_collator([template.encode(r) for r in _rows()])
    assert "mga_text_mask" in batch and "mga_text_lengths" not in batch
    ids, mask = batch["mga_text_ids"], batch["mga_text_mask"]
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="exgramed_plugin.modeling.modeling"):
        nodes = model.alignment_head.text_nodes_of(model, ids, mask)
        model.alignment_head.text_nodes_of(model, ids, mask)
        hidden = model.model(inputs_embeds=model.model.embed_tokens(ids), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(nodes, hidden.mean(dim=1), atol=ATOL, rtol=0)  # the mean over padding too
    assert sum("because mga_pooling=padded" in r.message for r in caplog.records) == 1
    packed_ids, lengths = pack_padded(ids, mask)
    with pytest.raises(ValueError, match="mga_pooling='padded'"):
        model.alignment_head.text_nodes_of(model, packed_ids, text_lengths=lengths)


def test_embedding_hooks_see_a_batch_dimension(tiny_checkpoint):
    """NEFTune (swift's web UI always passes --neftune_noise_alpha) hooks the embedding and reads
    output.size(2): the packed pass must call it with [1, T], as every other call does."""
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    from exgramed_plugin.head.text_packing import packed_text_nodes
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config).eval()
    shapes = []
    handle = model.model.embed_tokens.register_forward_hook(lambda module, args, output: shapes.append(output.shape))
    try:
        ids = torch.arange(5, 12, dtype=torch.long)[None]
        nodes = packed_text_nodes(model.model, ids, torch.tensor([3, 4]), after_de=True)
    finally:
        handle.remove()
    assert nodes.shape == (2, config.hidden_size)
    assert shapes and all(len(shape) == 3 for shape in shapes)
