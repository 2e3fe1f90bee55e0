"""Model outputs and options as transformers defines them, with stock `transformers.BltForCausalLM` on the same
weights as the reference: `ModelOutput`s with hidden states and attentions, `return_dict`, the attention-function
registry (`attn_implementation`), right padding, `logits_to_keep` and generation past the position limit."""

import copy
import logging

import pytest
import torch
from conftest import PARITY_CONFIGS, build_pair, diffusion_model_from, source_text, text_ids
from transformers.modeling_outputs import BaseModelOutputWithPast

from blt_diffusion import BltDiffusionForCausalLM

# Stock BLT: `max_patch_length` (so the newest byte's latent is provisional), grouped-query attention and
# cross-attention before every encoder layer, where most of what these tests touch can go wrong.
CONFIG = "max_patch_4_gqa_all_cross"


@pytest.fixture(scope="module")
def pair():
    return build_pair(**PARITY_CONFIGS[CONFIG])


@pytest.fixture(scope="module")
def eager_pair(pair):
    stock, ours = copy.deepcopy(pair)
    stock.set_attn_implementation("eager")
    ours.set_attn_implementation("eager")
    return stock, ours


def sub_config_implementations(model) -> set[str]:
    return {getattr(model.config, name)._attn_implementation for name in model.config.sub_configs}


def padded_batch(rows: list[torch.Tensor], sides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (1, len) padded to one width, each on its side ("left" or "right"), and the attention mask."""
    width = max(row.shape[1] for row in rows)
    batch = torch.full((len(rows), width), 3)
    mask = torch.zeros_like(batch)
    for index, (row, side) in enumerate(zip(rows, sides, strict=True)):
        columns = slice(width - row.shape[1], width) if side == "left" else slice(0, row.shape[1])
        batch[index, columns], mask[index, columns] = row[0], 1
    return batch, mask


@torch.no_grad()
def test_forward_returns_model_outputs_with_stock_blts_hidden_states_and_attentions(eager_pair):
    """`hidden_states` and `attentions` are the local decoder's, as stock `BltModel` records them after its
    patcher's, which are `patcher_*`; the other stacks report theirs too; `return_dict=False` gives tuples."""
    stock, ours = eager_pair
    input_ids = text_ids(source_text(40, 600))
    expected = stock.model(input_ids, use_cache=False, output_hidden_states=True, output_attentions=True)
    output = ours.model(input_ids, output_hidden_states=True, output_attentions=True)
    assert isinstance(output, BaseModelOutputWithPast)
    config = ours.config
    assert len(output.hidden_states) == config.decoder_config.num_hidden_layers + 1
    assert len(output.patcher_hidden_states) == config.patcher_config.num_hidden_layers + 1
    # Stock's hooks record the patcher's stack, then the decoder's layers (its first input is not the first state).
    for actual, reference in zip(
        output.patcher_hidden_states + output.hidden_states[1:], expected.hidden_states, strict=True
    ):
        torch.testing.assert_close(actual, reference, atol=1e-5, rtol=1e-5)
    for actual, reference in zip(output.patcher_attentions + output.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(actual, reference, atol=1e-6, rtol=1e-5)
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)

    num_patches = output.global_hidden_states[0].shape[1]
    num_bytes = input_ids.shape[1]
    stacks = {
        "local_encoder": (config.encoder_config, num_bytes),
        "global_transformer": (config.global_config, num_patches),
    }
    prefixes = {"local_encoder": "local_encoder", "global_transformer": "global"}
    for stack, (sub_config, length) in stacks.items():
        states, weights = output[f"{prefixes[stack]}_hidden_states"], output[f"{prefixes[stack]}_attentions"]
        assert len(states) == sub_config.num_hidden_layers + 1 == len(weights) + 1
        assert {tuple(state.shape) for state in states} == {(1, length, sub_config.hidden_size)}
        assert {tuple(weight.shape) for weight in weights} == {(1, sub_config.num_attention_heads, length, length)}

    lm_output = ours(input_ids, output_hidden_states=True, output_attentions=True)
    for name, value in output.items():
        if name not in ("last_hidden_state", "cache"):
            assert len(lm_output[name]) == len(value) and all(map(torch.equal, lm_output[name], value)), name
    as_tuple = ours.model(input_ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.last_hidden_state)
    assert len(as_tuple) == 5  # last_hidden_state and the four stacks' hidden states
    assert torch.equal(ours(input_ids, return_dict=False)[0], lm_output.logits)
    with pytest.raises(ValueError, match="True or False"):
        ours(input_ids, output_hidden_states=[-1])


@torch.no_grad()
def test_cached_calls_report_the_new_bytes_and_a_global_transformer_that_did_not_run(pair):
    _, ours = pair
    input_ids = text_ids(source_text(60, 1500))
    cache = ours.new_cache(1, 8)
    ours(input_ids[:, :20], cache=cache)
    global_ran = []
    for index in range(20, 60):
        output = ours.model(input_ids[:, index : index + 1], cache=cache, output_hidden_states=True)
        # The decoder re-reads the byte before after a patch closes with `max_patch_length`; only new bytes count.
        assert {tuple(state.shape) for state in output.hidden_states} == {
            (1, 1, ours.config.decoder_config.hidden_size)
        }
        assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
        global_ran.append(output.global_hidden_states != ())
    assert any(global_ran) and not all(global_ran)


@torch.no_grad()
def test_eager_attention_gives_what_sdpa_gives(pair, eager_pair):
    _, sdpa = pair
    _, eager = eager_pair
    rows = [text_ids(source_text(length, offset)) for length, offset in ((30, 0), (45, 900), (38, 2000))]
    batch, mask = padded_batch(rows, ["left", "right", "left"])
    expected = sdpa(batch, attention_mask=mask, output_hidden_states=True)
    actual = eager(batch, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-5)
    for name in ("hidden_states", "patcher_hidden_states", "local_encoder_hidden_states", "global_hidden_states"):
        for actual_states, expected_states in zip(actual[name], expected[name], strict=True):
            torch.testing.assert_close(actual_states, expected_states, atol=1e-5, rtol=1e-5)
    settings = dict(attention_mask=mask, max_new_tokens=24, min_new_tokens=24)
    assert torch.equal(eager.generate(batch, **settings), sdpa.generate(batch, **settings))


def test_attention_implementation_is_chosen_and_refused_as_in_transformers(pair, caplog):
    """Every stack follows `attn_implementation`, at load and later; what BLT cannot run is refused; `sdpa` gives
    no attention weights, with stock's warning and empty attentions."""
    _, ours = pair
    model = BltDiffusionForCausalLM._from_config(copy.deepcopy(ours.config), attn_implementation="eager")
    assert model.config._attn_implementation == "eager" and sub_config_implementations(model) == {"eager"}
    with caplog.at_level(logging.WARNING):
        model.set_attn_implementation("sdpa")
    assert not caplog.records
    assert model.config._attn_implementation == "sdpa" and sub_config_implementations(model) == {"sdpa"}
    for refused in ("flex_attention", "flash_attention_2", "paged|eager"):
        with pytest.raises(ValueError):
            model.set_attn_implementation(refused)
    assert sub_config_implementations(model) == {"sdpa"}
    with caplog.at_level(logging.WARNING), torch.no_grad():
        output = model(text_ids("attention"), output_attentions=True)
    assert "eager" in caplog.text
    assert output.attentions == () and output.global_attentions == ()


@torch.no_grad()
def test_right_padded_rows_give_what_each_row_gives_alone(pair):
    """In forward, in a cache that later calls extend, and in generate, whose output keeps the prompts as given; each
    row alone as stock computes it."""
    stock, ours = pair
    rows = [text_ids(source_text(length, offset)) for length, offset in ((37, 300), (50, 1200), (21, 2500))]
    batch, mask = padded_batch(rows, ["right", "left", "right"])
    mask[1, -1], batch[1, -1] = 0, 3  # padding on both sides
    rows[1] = rows[1][:, :-1]
    logits = ours(batch, attention_mask=mask).logits
    cache = ours.new_cache(3, 8)
    ours(batch, attention_mask=mask, cache=cache)
    following = text_ids("xyz", bos=False).T
    next_logits = ours(following, cache=cache).logits[:, -1]
    generated = ours.generate(batch, attention_mask=mask, max_new_tokens=16, min_new_tokens=16)
    assert torch.equal(generated[:, : batch.shape[1]], batch)
    for index, row in enumerate(rows):
        columns = mask[index].bool()
        torch.testing.assert_close(logits[index, columns], stock(row, use_cache=False).logits[0], atol=1e-4, rtol=0)
        extended = torch.cat([row, following[index : index + 1]], dim=1)
        torch.testing.assert_close(
            next_logits[index], stock(extended, use_cache=False).logits[0, -1], atol=1e-4, rtol=0
        )
        alone = stock.generate(row, max_new_tokens=16, min_new_tokens=16, do_sample=False, use_cache=False)
        assert torch.equal(generated[index, batch.shape[1] :], alone[0, row.shape[1] :])


@torch.no_grad()
def test_logits_to_keep_selects_positions_as_stock_does(pair):
    stock, ours = pair
    input_ids = text_ids(source_text(30, 4000))
    keep_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    keep_mask[0, 3], keep_mask[0, 20:23] = True, True
    for logits_to_keep in (1, 4, torch.tensor([0, 7, 29]), torch.tensor([[2, 5, 30]]), keep_mask):
        expected = stock(input_ids, use_cache=False, logits_to_keep=logits_to_keep).logits
        actual = ours(input_ids, logits_to_keep=logits_to_keep).logits
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    settings = dict(max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(ours.generate(input_ids, logits_to_keep=1, **settings), ours.generate(input_ids, **settings))


@torch.no_grad()
def test_generation_past_the_position_limit_warns_and_matches_stock(caplog):
    stock, ours = build_pair(max_position_embeddings=24)
    prompt = text_ids(source_text(20, 700))
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    with caplog.at_level(logging.WARNING):
        generated = ours.generate(prompt, **settings)
    assert "max_position_embeddings" in caplog.text
    assert generated.shape[1] > ours.config.max_position_embeddings
    assert torch.equal(generated, stock.generate(prompt, use_cache=False, **settings))


def test_block_diffusion_objective_refuses_what_it_cannot_honour(pair):
    stock, _ = pair
    model = diffusion_model_from(stock, block_size=4)
    input_ids = text_ids(source_text(40, 100))
    for request, message in (
        (dict(output_hidden_states=True), "output_hidden_states"),
        (dict(output_attentions=True), "output_attentions"),
        (dict(logits_to_keep=1), "logits_to_keep"),
    ):
        with pytest.raises(ValueError, match=message):
            model(input_ids, labels=input_ids, **request)
