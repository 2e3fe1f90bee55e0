"""The incremental cache gives the logits of full recomputation, whatever the order and size of appends."""

import sys

import pytest
import torch
from conftest import left_pad, source_text, text_ids

from blt_diffusion.cache_blt_diffusion import BltDiffusionCache, KeyValueBuffer

ATOL = 1e-4


def full_last_logits(model, input_ids):
    return model(input_ids).logits[:, -1]


@pytest.fixture(params=["tiny_model", "max_patch_model"])
def model(request):
    return request.getfixturevalue(request.param)


@torch.no_grad()
def test_cached_logits_equal_full_recomputation_at_every_step(model):
    input_ids = text_ids(source_text(160, 400))
    cache = model.new_cache(1, 8)
    prefill = model(input_ids[:, :10], cache=cache).logits
    torch.testing.assert_close(prefill, model(input_ids[:, :10]).logits, atol=ATOL, rtol=0)
    for end in range(11, input_ids.shape[1] + 1):
        step = model(input_ids[:, end - 1 : end], cache=cache).logits[:, -1]
        torch.testing.assert_close(step, full_last_logits(model, input_ids[:, :end]), atol=ATOL, rtol=0)
    assert cache.get_seq_length() == input_ids.shape[1]


@torch.no_grad()
def test_appending_chunks_equals_full_forward_of_each_prefix(model):
    # Each chunk's newest byte is the sequence's newest byte; with `max_patch_length` stock BLT decodes that byte
    # differently from how it decodes it once more bytes follow, so compare with the forward of the same prefix.
    input_ids = text_ids(source_text(120, 900))
    cache = model.new_cache(1, 4)
    for start, end in ((0, 1), (1, 30), (30, 31), (31, 77), (77, 121)):
        chunk_logits = model(input_ids[:, start:end], cache=cache).logits
        expected = model(input_ids[:, :end]).logits[:, start:end]
        torch.testing.assert_close(chunk_logits, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_crop_then_refeed_equals_full_forward(model):
    input_ids = text_ids(source_text(100, 1700))
    cache = model.new_cache(1, 128)
    model(input_ids, cache=cache)
    patches_before = cache.num_patches.clone()
    cache.crop(60)
    assert cache.lengths().tolist() == [60]
    assert cache.num_patches.item() < patches_before.item()
    for end in range(61, 71):
        step = model(input_ids[:, end - 1 : end], cache=cache).logits[:, -1]
        torch.testing.assert_close(step, full_last_logits(model, input_ids[:, :end]), atol=ATOL, rtol=0)


@torch.no_grad()
def test_left_padded_batch_equals_rows_alone(model):
    rows = [text_ids(source_text(length, offset)) for length, offset in ((50, 0), (17, 300), (1, 600), (33, 900))]
    batch, mask = left_pad(rows)
    cache = model.new_cache(len(rows), batch.shape[1])
    batch_logits = model(batch, attention_mask=mask, cache=cache).logits[:, -1]
    continuation = text_ids(source_text(12, 2000), bos=False)
    for index, row in enumerate(rows):
        torch.testing.assert_close(batch_logits[index], full_last_logits(model, row)[0], atol=ATOL, rtol=0)
    for step in range(continuation.shape[1]):
        next_bytes = continuation[:, step : step + 1].expand(len(rows), 1)
        step_logits = model(next_bytes, cache=cache).logits[:, -1]
        for index, row in enumerate(rows):
            alone = torch.cat([row, continuation[:, : step + 1]], dim=1)
            torch.testing.assert_close(step_logits[index], full_last_logits(model, alone)[0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_global_transformer_runs_once_per_closed_patch(tiny_model):
    input_ids = text_ids(source_text(80, 2500))
    cache = tiny_model.new_cache(1, 80)
    tiny_model(input_ids[:, :1], cache=cache)
    closed = [int(cache.patches_closed_last_call)]
    for position in range(1, input_ids.shape[1]):
        tiny_model(input_ids[:, position : position + 1], cache=cache)
        closed.append(int(cache.patches_closed_last_call))
    assert set(closed) <= {0, 1}
    assert closed[0] == 1
    assert sum(closed) == int(cache.num_patches)
    assert 2 < input_ids.shape[1] / sum(closed) < 8


def test_padding_after_the_prompt_is_rejected(tiny_model):
    cache = tiny_model.new_cache(1, 8)
    tiny_model(text_ids("ab"), cache=cache)
    with pytest.raises(ValueError, match="only allowed in the first call"):
        tiny_model(torch.tensor([[70, 71]]), attention_mask=torch.tensor([[0, 1]]), cache=cache)


@torch.no_grad()
def test_the_cache_argument_is_named_cache_and_past_key_values_still_works(tiny_model):
    """transformers 5 names the cache argument and output field `cache`; `past_key_values` is a deprecated alias."""
    input_ids = text_ids(source_text(30, 700))
    cache, legacy = tiny_model.new_cache(1, 8), tiny_model.new_cache(1, 8)
    output = tiny_model(input_ids, cache=cache)
    with pytest.warns(FutureWarning, match="past_key_values"):
        legacy_output = tiny_model(input_ids, past_key_values=legacy)
    assert output.cache is cache and legacy_output.cache is legacy
    assert legacy.get_seq_length() == cache.get_seq_length() == input_ids.shape[1]
    torch.testing.assert_close(legacy_output.logits, output.logits, atol=0, rtol=0)


@torch.no_grad()
def test_model_calls_change_the_cache_only_through_its_own_methods(tiny_model, monkeypatch):
    """The cache owns its state: every field of the cache and of its key/value buffers that changes while the model
    appends bytes or the cache is cropped is assigned by a method of the cache or of the buffer itself."""
    assigners = []

    def recording_setattr(instance, name, value):
        caller = sys._getframe(1).f_code.co_qualname
        assigners.append(caller)
        object.__setattr__(instance, name, value)

    cache = tiny_model.new_cache(1, 4)
    for owner in (BltDiffusionCache, KeyValueBuffer):
        monkeypatch.setattr(owner, "__setattr__", recording_setattr)
    input_ids = text_ids(source_text(40, 900))
    tiny_model(input_ids[:, :20], cache=cache)
    for end in range(21, input_ids.shape[1]):
        tiny_model(input_ids[:, end - 1 : end], cache=cache)
    cache.crop(10)
    assert assigners
    assert {caller.split(".")[0] for caller in assigners} <= {"BltDiffusionCache", "KeyValueBuffer"}, assigners
