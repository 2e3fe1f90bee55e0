"""BLT-S (draft length 8) on random weights: greedy output equals autoregressive decoding on 64
prompts x 256 bytes, alone and in left-padded batches of 4."""

import pytest
from conftest import check_lossless_sweep, lossless_sweep


@pytest.fixture(scope="module")
def sweep():
    return lossless_sweep()


@pytest.mark.parametrize("batch_size", [4, 1])
def test_greedy_output_equals_autoregressive_on_64_prompts(sweep, batch_size):
    check_lossless_sweep(sweep, batch_size, "self_speculative", draft_length=8)
