"""Every `generate` output option with every strategy (issue 14): scores and logits per committed byte, continuing
from the returned cache without re-encoding the history."""

import pytest
import torch
from conftest import EOS, left_pad, spread_prompts

NEW_BYTES = 16


@pytest.fixture(scope="module")
def ragged_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 7, 14 and 21 bytes, left-padded, and their attention mask."""
    return left_pad(spread_prompts(3))


def generate(model, batch: tuple[torch.Tensor, torch.Tensor], **kwargs):
    input_ids, attention_mask = batch
    kwargs = dict(max_new_tokens=NEW_BYTES, min_new_tokens=NEW_BYTES, return_dict_in_generate=True) | kwargs
    return model.generate(input_ids, attention_mask=attention_mask, **kwargs)


# --- Scores and logits: one (batch, vocab) entry per committed byte --------------------------------------------------


def test_lossless_strategies_return_the_scores_and_logits_autoregressive_decoding_returns(
    diffusion_model, ragged_batch
):
    options = dict(output_scores=True, output_logits=True, repetition_penalty=1.3)
    expected = generate(diffusion_model, ragged_batch, **options)
    assert len(expected.scores) == len(expected.logits) == NEW_BYTES
    for decoding in ("self_speculative", "diffusion_verified"):
        output = generate(diffusion_model, ragged_batch, decoding=decoding, **options)
        assert torch.equal(output.sequences, expected.sequences), decoding
        # Rows accepted different numbers of bytes per round, yet every step lines up with autoregressive decoding.
        assert len(set(output.acceptance_rate.tolist())) > 1, decoding
        torch.testing.assert_close(torch.stack(output.scores), torch.stack(expected.scores), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.stack(output.logits), torch.stack(expected.logits), atol=1e-4, rtol=0)


def test_diffusion_scores_are_those_of_the_step_that_committed_each_byte(diffusion_model, ragged_batch):
    output = generate(diffusion_model, ragged_batch, decoding="diffusion", output_scores=True, output_logits=True)
    new_bytes = output.sequences[:, ragged_batch[0].shape[1] :]
    scores, logits = torch.stack(output.scores, dim=1), torch.stack(output.logits, dim=1)
    assert scores.shape == logits.shape == (3, NEW_BYTES, diffusion_model.config.vocab_size)
    # Greedy: every byte is the argmax of the scores it was committed from, its logits with EOS banned
    # (`min_new_tokens`).
    assert torch.equal(scores.argmax(dim=-1), new_bytes)
    assert torch.equal(scores, logits.index_fill(-1, torch.tensor([EOS]), -torch.inf))
