"""BLT-S and BLT-DV: greedy output identical to autoregressive decoding, in batches, with the paper's accounting."""

import pytest
import torch
from conftest import (
    PARITY_CONFIGS,
    SWEEP_CONFIG,
    build_pair,
    diffusion_model_from,
    generate_new_bytes,
    source_text,
    spread_prompts,
    text_ids,
)


@pytest.fixture(scope="module", params=sorted(set(PARITY_CONFIGS) - {SWEEP_CONFIG}))
def blt_d_model(request):
    """A random BLT-D model per parity configuration (with and without `max_patch_length`), but the one that
    `test_lossless_sweep.py` checks on 64 prompts."""
    stock, _ = build_pair(**PARITY_CONFIGS[request.param])
    return diffusion_model_from(stock, block_size=8)


@pytest.fixture(scope="module")
def batched_references(blt_d_model):
    """8 prompts and the 256 bytes greedy autoregressive decoding appends to each, in left-padded batches of 4:
    computed once per model for every strategy compared with it."""
    rows = spread_prompts(8)
    return rows, [generate_new_bytes(blt_d_model, rows[start : start + 4])[1] for start in range(0, len(rows), 4)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "decoding, knobs",
    [
        ("self_speculative", {"draft_length": 4}),
        ("self_speculative", {"draft_length": 8}),
        ("diffusion_verified", {}),
    ],
)
def test_greedy_speculative_output_equals_autoregressive_in_left_padded_batches(
    blt_d_model, batched_references, decoding, knobs
):
    rows, references = batched_references
    for start, expected in zip(range(0, len(rows), 4), references, strict=True):
        output, actual = generate_new_bytes(blt_d_model, rows[start : start + 4], decoding=decoding, **knobs)
        assert torch.equal(actual, expected)
        assert bool((output.acceptance_rate > 0).all()) and bool((output.acceptance_rate <= 1).all())


@pytest.mark.slow
def test_batch_of_one_equals_autoregressive_and_the_batched_run(blt_d_model):
    rows = spread_prompts(2)
    batched = generate_new_bytes(blt_d_model, rows, decoding="self_speculative")[1]
    for index, row in enumerate(rows):
        expected = generate_new_bytes(blt_d_model, [row])[1]
        assert torch.equal(generate_new_bytes(blt_d_model, [row], decoding="self_speculative")[1], expected)
        confidence_drafts = dict(decoding="diffusion_verified", unmasking="confidence", block_size=4)
        assert torch.equal(generate_new_bytes(blt_d_model, [row], **confidence_drafts)[1], expected)
        assert torch.equal(batched[index], expected[0])


def test_self_speculative_costs_follow_the_paper(tiny_model, monkeypatch):
    """Per round one encoder+global call (the paper's two, less the correction's own forward, which the next
    verification absorbs) and k + 1 decoder calls (fewer drafted bytes near the budget's end); the cost fields equal
    the calls really made."""
    calls = {"decoder": 0, "encode": 0}
    model = tiny_model.model
    for name, module, method in (("decoder", model.local_decoder, "forward"), ("encode", model, "encode")):
        original = getattr(module, method)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, method, counted)
    draft_length = 6
    output = tiny_model.generate(
        text_ids(source_text(30, 300)),
        decoding="self_speculative",
        draft_length=draft_length,
        max_new_tokens=120,
        min_new_tokens=120,
        return_dict_in_generate=True,
    )
    # The prompt's forward, then per round one verification of the previous correction and the new draft.
    rounds = int(output.global_nfe[0]) - 1
    assert int(output.global_nfe[0]) == calls["encode"]
    assert int(output.patcher_nfe[0]) == calls["encode"]
    assert int(output.decoder_nfe[0]) == calls["decoder"]
    assert rounds * (draft_length + 1) - 2 * draft_length <= calls["decoder"] <= rounds * (draft_length + 1)
    # Each round commits its accepted drafted bytes plus one.
    assert 120 / rounds - 1 <= float(output.acceptance_rate[0]) * draft_length + 1e-9


def test_stepwise_append_gives_the_logits_of_appending_one_byte_at_a_time(max_patch_model):
    input_ids = text_ids(source_text(90, 1300))
    caches = [max_patch_model.new_cache(1, 8) for _ in range(3)]
    with torch.no_grad():
        for cache in caches:
            max_patch_model.model.append_bytes(input_ids[:, :10], cache)
        expected = torch.cat(
            [max_patch_model.model.append_bytes(input_ids[:, i : i + 1], caches[0]) for i in range(10, 90)], 1
        )
        chunks = range(10, 90, 16)
        stepwise = torch.cat(
            [max_patch_model.model.append_bytes(input_ids[:, i : i + 16], caches[1], stepwise=True) for i in chunks], 1
        )
        plain = torch.cat([max_patch_model.model.append_bytes(input_ids[:, i : i + 16], caches[2]) for i in chunks], 1)
    torch.testing.assert_close(stepwise, expected, atol=1e-4, rtol=0)
    # Without it, bytes that close a patch inside a chunk read their own patch, as a full forward does.
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_diffusion_verified_needs_a_blt_d_model(tiny_model):
    with pytest.raises(ValueError, match="diffusion_block_size"):
        tiny_model.generate(text_ids("x"), decoding="diffusion_verified", max_new_tokens=4)


# --- Sampling: the speculative acceptance rule keeps autoregressive sampling's distribution -------------------------

SAMPLES = 4000
SAMPLED_BYTES = 3


def joint_counts(sequences: torch.Tensor) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for row in sequences.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


def homogeneity_p_value(first: dict, second: dict) -> float:
    """Chi-square test that two samples come from one distribution (cells with fewer than 5 expected pooled)."""
    total_first, total_second = sum(first.values()), sum(second.values())
    cells = sorted(set(first) | set(second))
    observed = torch.tensor([[first.get(cell, 0), second.get(cell, 0)] for cell in cells], dtype=torch.float64)
    expected_rare = observed.sum(dim=1) * min(total_first, total_second) / (total_first + total_second) < 5
    if bool(expected_rare.any()):
        observed = torch.cat([observed[~expected_rare], observed[expected_rare].sum(dim=0, keepdim=True)])
    column_share = torch.tensor([total_first, total_second], dtype=torch.float64) / (total_first + total_second)
    expected = observed.sum(dim=1, keepdim=True) * column_share
    statistic = ((observed - expected) ** 2 / expected).sum()
    degrees = observed.shape[0] - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2.0, dtype=torch.float64), statistic / 2))


def sample_continuations(model, seed: int, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)
    prompt = text_ids(source_text(12, 40)).repeat(SAMPLES, 1)
    output = model.generate(
        prompt,
        do_sample=True,
        temperature=6.0,
        top_k=4,
        max_new_tokens=SAMPLED_BYTES,
        min_new_tokens=SAMPLED_BYTES,
        **kwargs,
    )
    return output[:, prompt.shape[1] :]


@pytest.mark.parametrize(
    "model_name, decoding, knobs",
    [
        ("tiny_model", "self_speculative", {"draft_length": 3}),
        ("diffusion_model", "diffusion_verified", {"block_size": 3}),
    ],
)
def test_speculative_sampling_matches_autoregressive_sampling(request, model_name, decoding, knobs):
    model = request.getfixturevalue(model_name)
    autoregressive = joint_counts(sample_continuations(model, seed=0))
    speculative_samples = sample_continuations(model, seed=1, decoding=decoding, **knobs)
    speculative = joint_counts(speculative_samples)
    # The joint distribution is spread over many outcomes, so the test has something to compare.
    assert max(autoregressive.values()) < 0.5 * SAMPLES and len(autoregressive) > 10
    assert homogeneity_p_value(autoregressive, speculative) > 1e-3

    # Power: 5% of the samples replaced by a different, equally plausible continuation is detected.
    shifted = speculative_samples.clone()
    shifted[: SAMPLES // 20] = speculative_samples[SAMPLES // 2 : SAMPLES // 2 + 1]
    shifted[: SAMPLES // 20, -1] = (shifted[: SAMPLES // 20, -1] + 1) % 260
    assert homogeneity_p_value(autoregressive, joint_counts(shifted)) < 1e-3


def test_sampling_with_multi_step_diffusion_drafts_is_refused(diffusion_model):
    with pytest.raises(ValueError, match="unmasking='one_step'"):
        diffusion_model.generate(
            text_ids("x"), decoding="diffusion_verified", unmasking="confidence", do_sample=True, max_new_tokens=4
        )
