"""BLT-S (draft length 8) and BLT-DV (one-step drafts of 8 bytes) on random weights: greedy output equals
autoregressive decoding on 64 prompts (BLT-DV: the first 32, its random drafts are verified nearly byte by byte,
which makes it the suite's costliest test) x 256 bytes in left-padded batches of 4, and on 8 of them alone."""

import pytest
from conftest import BATCH_OF_ONE_PROMPTS, check_lossless_sweep, lossless_sweep

pytestmark = pytest.mark.slow

STRATEGIES = {"self_speculative": {"draft_length": 8}, "diffusion_verified": {}}
SWEPT_PROMPTS = {"self_speculative": None, "diffusion_verified": range(32)}


@pytest.fixture(scope="module")
def sweep():
    return lossless_sweep()


@pytest.mark.parametrize("decoding", sorted(STRATEGIES))
def test_greedy_output_equals_autoregressive_on_the_swept_prompts_in_left_padded_batches_of_4(sweep, decoding):
    check_lossless_sweep(sweep, 4, decoding, prompts=SWEPT_PROMPTS[decoding], **STRATEGIES[decoding])


@pytest.mark.parametrize("decoding", sorted(STRATEGIES))
def test_greedy_output_equals_autoregressive_on_8_of_the_prompts_alone(sweep, decoding):
    check_lossless_sweep(sweep, 1, decoding, prompts=BATCH_OF_ONE_PROMPTS, **STRATEGIES[decoding])
