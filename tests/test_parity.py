"""Our BLT reproduces stock `transformers.BltForCausalLM` on the same weights: logits and greedy bytes."""

import torch
from conftest import source_text, text_ids


def stock_patch_lengths(stock, input_ids):
    _, patch_lengths, _ = stock.model.patcher(
        input_ids,
        patch_size=stock.config.patch_size,
        threshold=stock.config.patching_threshold,
        max_patch_length=stock.config.max_patch_length,
    )
    return patch_lengths[patch_lengths > 0]


def test_random_models_make_multi_byte_patches_of_varied_length(model_pair):
    stock, _ = model_pair
    lengths = stock_patch_lengths(stock, text_ids(source_text(400, 3000)))
    assert 2.0 <= lengths.float().mean() <= 6.0
    assert len(set(lengths.tolist())) >= 3
    if stock.config.max_patch_length is not None:
        assert lengths.max() == stock.config.max_patch_length


@torch.no_grad()
def test_full_sequence_logits_match_stock(model_pair):
    stock, ours = model_pair
    for offset in (0, 5000):
        input_ids = text_ids(source_text(300, offset))
        expected = stock(input_ids, use_cache=False).logits
        torch.testing.assert_close(ours(input_ids).logits, expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_greedy_generation_matches_stock_byte_for_byte(model_pair):
    stock, ours = model_pair
    prompt = text_ids(source_text(24, 1200))
    settings = dict(max_new_tokens=130, min_new_tokens=130, do_sample=False)
    expected = stock.generate(prompt, use_cache=False, **settings)
    generated = ours.generate(prompt, **settings)
    assert generated.shape == (1, prompt.shape[1] + 130)
    assert torch.equal(generated, expected)


@torch.no_grad()
def test_loss_matches_stock(model_pair):
    stock, ours = model_pair
    input_ids = text_ids(source_text(200, 800))
    expected = stock(input_ids, labels=input_ids, use_cache=False).loss
    torch.testing.assert_close(ours(input_ids, labels=input_ids).loss, expected, atol=1e-5, rtol=1e-5)
