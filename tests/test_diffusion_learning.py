"""A tiny BLT-D model learns a deterministic byte language on the CPU and decodes it in parallel blocks.

The language is records `key=abc;val=abc;end\\n` with random three-letter words: after `key=abc;` the next 16 bytes
(`val=abc;end\\nkey=`) are fully determined, two blocks of 8. Held-out words never occur in training, so exact
continuations need the copy rule, not memorisation.
"""

import random

import pytest
import torch
from conftest import BOS, assert_same_greedy_bytes, generate_new_bytes

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
from blt_diffusion.random_init import calibrate_random_model, tiny_blt_config

LETTERS = "abcdefgh"
TRAINING_STEPS = 460
BATCH_SIZE = 8
RECORDS_PER_ROW = 6

# Every test reads the trained model, more than a minute of CPU to train.
pytestmark = pytest.mark.slow


def record(word: str) -> str:
    return f"key={word};val={word};end\n"


def records(rng: random.Random, words: list[str], count: int) -> str:
    return "".join(record(rng.choice(words)) for _ in range(count))


def byte_ids(text: str) -> list[int]:
    return [BOS] + [byte + 4 for byte in text.encode()]


def split_words() -> tuple[list[str], list[str]]:
    words = [a + b + c for a in LETTERS for b in LETTERS for c in LETTERS]
    random.Random(0).shuffle(words)
    return words[32:], words[:32]


def tiny_blt_d(train_words: list[str], **config_overrides) -> BltDiffusionForCausalLM:
    """A random BLT-D model (block size 8) calibrated to patch the record language like a trained one."""
    torch.manual_seed(0)
    # Copying a byte 8 positions back needs RoPE frequencies that resolve short distances: BLT's theta of 500000
    # leaves 16-dimensional heads about two such pairs, 10000 leaves four.
    local = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, rope_parameters={"rope_theta": 10000.0})
    blt_config = tiny_blt_config(
        encoder_config=local,
        decoder_config=dict(local, num_hidden_layers=3),
        global_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2),
    )
    config = BltDiffusionConfig.from_blt_config(blt_config, diffusion_block_size=8, **config_overrides)
    model = BltDiffusionForCausalLM(config)
    sample = torch.tensor([byte_ids(records(random.Random(1), train_words, 40))])
    calibrate_random_model(model, sample, bytes_per_patch=4.0, head_gain=1.0)
    return model


def train_on_records(
    model: BltDiffusionForCausalLM, train_words: list[str], steps: int = TRAINING_STEPS
) -> BltDiffusionForCausalLM:
    """Train `model` in place on random records of `train_words` (AdamW, lr 3e-3), then return it in eval mode."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    data_rng = random.Random(2)
    model.train()
    for _ in range(steps):
        batch = torch.tensor([byte_ids(records(data_rng, train_words, RECORDS_PER_ROW)) for _ in range(BATCH_SIZE)])
        output = model(batch, labels=batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    train_words, heldout_words = split_words()
    return train_on_records(tiny_blt_d(train_words), train_words), train_words, heldout_words


def decode_heldout_records(
    model: BltDiffusionForCausalLM, train_words: list[str], heldout_words: list[str]
) -> list[tuple[bool, int, int]]:
    """For each held-out word, BLT-D-8 (confidence 0.7) continues `...key=WORD;` by the 16 determined bytes.

    Returns:
        One `(exact, decoder_calls, global_calls)` per held-out word.
    """
    results = []
    for index, word in enumerate(heldout_words):
        prompt = torch.tensor([byte_ids(records(random.Random(100 + index), train_words, 3) + f"key={word};")])
        expected = [byte + 4 for byte in f"val={word};end\nkey=".encode()]
        output = model.generate(
            prompt,
            decoding="diffusion",
            block_size=8,
            unmasking="confidence",
            confidence_threshold=0.7,
            max_new_tokens=len(expected),
            min_new_tokens=len(expected),
            return_dict_in_generate=True,
        )
        exact = output.sequences[0, prompt.shape[1] :].tolist() == expected
        results.append((exact, int(output.decoder_nfe[0]), int(output.global_nfe[0])))
    return results


def test_tiny_blt_d_learns_a_deterministic_language_and_decodes_several_bytes_per_call(trained):
    model, train_words, heldout_words = trained
    results = decode_heldout_records(model, train_words, heldout_words)
    exact = sum(exact for exact, _, _ in results)
    bytes_per_decoder_call = 16 * len(results) / sum(decoder_calls for _, decoder_calls, _ in results)
    assert all(global_calls == 2 for _, _, global_calls in results)
    assert exact == len(heldout_words), f"{exact}/{len(heldout_words)} exact continuations"
    assert bytes_per_decoder_call > 2, bytes_per_decoder_call


ALL_PROMPTS = tuple(range(32))
# Every fourth prompt, decoded alone.
ALONE_PROMPTS = ALL_PROMPTS[::4]


@pytest.fixture(scope="module")
def lossless_references(trained):
    """32 prompts and the 256 bytes greedy autoregressive decoding appends to each, from left-padded batches of 4
    (batches equal single rows: `test_generation.py`)."""
    model, train_words, _ = trained
    rows = [
        torch.tensor([byte_ids(records(random.Random(500 + index), train_words, 1 + index % 3))])
        for index in range(len(ALL_PROMPTS))
    ]
    references = [generate_new_bytes(model, rows[start : start + 4])[1] for start in range(0, len(rows), 4)]
    return rows, torch.cat(references)


@pytest.mark.parametrize(
    "decoding, knobs, prompts, batch_size",
    [
        ("self_speculative", {"draft_length": 8}, ALL_PROMPTS, 4),
        ("self_speculative", {"draft_length": 8}, ALONE_PROMPTS, 1),
        ("diffusion_verified", {}, ALL_PROMPTS, 4),
        ("diffusion_verified", {}, ALONE_PROMPTS, 1),
        ("diffusion_verified", {"unmasking": "confidence", "block_size": 4}, ALL_PROMPTS[:8], 4),
    ],
    ids=[
        "self_speculative-32_prompts-batch_4",
        "self_speculative-8_prompts-alone",
        "diffusion_verified-32_prompts-batch_4",
        "diffusion_verified-8_prompts-alone",
        "diffusion_verified_confidence-8_prompts-batch_4",
    ],
)
def test_lossless_strategies_equal_autoregressive_decoding_on_trained_weights(
    trained, lossless_references, decoding, knobs, prompts, batch_size
):
    """On trained weights drafts are mostly right, so rounds accept many bytes (unlike random weights). Batches of
    4 cover every prompt; alone, the 8 of `ALONE_PROMPTS` (batches equal rows alone: `test_generation.py`)."""
    model = trained[0]
    rows, references = lossless_references
    rows, references = [rows[index] for index in prompts], references[list(prompts)]
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        output, actual = generate_new_bytes(model, batch_rows, decoding=decoding, **knobs)
        assert_same_greedy_bytes(model, batch_rows, references[start : start + batch_size], actual)
        assert float(output.acceptance_rate.mean()) > 0.5
