"""BLT-D decoding (`decoding="diffusion"`): train/inference consistency, caching, unmasking rules, costs, plumbing."""

import math

import pytest
import torch
from conftest import PAD, PARITY_CONFIGS, build_pair, diffusion_model_from, left_pad, source_text, text_ids
from transformers import TextIteratorStreamer, pipeline

from blt_diffusion import BltDiffusionTokenizer
from blt_diffusion.block_diffusion_blt_diffusion import DiffusionBlocks
from blt_diffusion.generation_blt_diffusion import ParameterCounts
from blt_diffusion.strategies_blt_diffusion import (
    UNMASKING_RULES,
    ConfidenceUnmasking,
    EntropyBoundUnmasking,
    OneStepUnmasking,
)

MASK = 260


@pytest.fixture(
    scope="module",
    params=[(name, cells) for name in sorted(PARITY_CONFIGS) for cells in ("table", "encoder")],
    ids=lambda param: "-".join(param),
)
def blt_d_model(request):
    """A BLT-D model for each parity configuration and each way cells reach the decoder
    (`diffusion_cell_embedding`: their own table, or through the local encoder)."""
    config_name, cell_embedding = request.param
    stock, _ = build_pair(**PARITY_CONFIGS[config_name])
    return diffusion_model_from(stock, block_size=8, diffusion_cell_embedding=cell_embedding)


def block_logits(model, cache, cells):
    with torch.no_grad():
        return model.block_logits(cache, cells)


def diffusion(model, input_ids, max_new_tokens=24, **kwargs):
    kwargs.setdefault("min_new_tokens", max_new_tokens)
    return model.generate(
        input_ids, decoding="diffusion", max_new_tokens=max_new_tokens, return_dict_in_generate=True, **kwargs
    )


# --- Inference reads blocks exactly as training does -----------------------------------------------------------------


def assert_blocks_decode_as_in_training(model, input_ids, anchors, patch_starts):
    """Each block at `anchors` (its patch starting at `patch_starts`), half masked at random, gets from decoding
    (an incremental cache, `block_logits`) the cell logits that the training pass gives it."""
    generator = torch.Generator().manual_seed(0)
    for anchor, patch_start in zip(anchors, patch_starts, strict=True):
        masked = torch.rand(1, 1, 8, generator=generator) < 0.6
        cells = input_ids[:, anchor : anchor + 8][:, None].masked_fill(masked, MASK)
        blocks = DiffusionBlocks(
            starts=torch.tensor([[anchor]]),
            input_ids=cells,
            masked=masked,
            targets=input_ids[:, anchor : anchor + 8][:, None],
            valid=torch.ones_like(masked),
            mask_ratio=torch.ones(1),
            open_patch_starts=torch.tensor([[patch_start]]),
        )
        with torch.no_grad():
            training = model(input_ids, diffusion_blocks=blocks).diffusion_logits[0, 0]
        cache = model.new_cache(1, 16)
        with torch.no_grad():
            model.open_block(cache, input_ids[:, :anchor])
        torch.testing.assert_close(block_logits(model, cache, cells[:, 0])[0], training, atol=1e-4, rtol=0)


def test_a_block_at_a_patch_start_decodes_as_in_training(blt_d_model):
    input_ids = text_ids(source_text(220, 300))
    ends_patch = blt_d_model.model.encode(input_ids).segmentation.ends_patch[0]
    anchors = (torch.nonzero(ends_patch[:-9])[:, 0] + 1)[5::7][:4].tolist()
    assert_blocks_decode_as_in_training(blt_d_model, input_ids, anchors, patch_starts=anchors)


def test_a_block_inside_a_patch_decodes_as_in_training(blt_d_model):
    """Training blocks anchored inside a patch read the open patch's provisional latent exactly as decoding does,
    and cells reach the decoder the same way in both (through the local encoder too)."""
    input_ids = text_ids(source_text(220, 300))
    ends_patch = blt_d_model.model.encode(input_ids).segmentation.ends_patch[0]
    anchors = [slot for slot in range(20, input_ids.shape[1] - 9) if not bool(ends_patch[slot - 1])][::9][:4]
    patch_starts = [int(torch.nonzero(ends_patch[:anchor])[-1]) + 1 for anchor in anchors]
    assert all(start < anchor for start, anchor in zip(patch_starts, anchors, strict=True))
    assert_blocks_decode_as_in_training(blt_d_model, input_ids, anchors, patch_starts)


def test_incremental_block_decoding_equals_encoding_the_prefix_at_once(blt_d_model):
    """Blocks appended in chunks (patches closing across chunks, provisional latents replaced) read the same
    states as a fresh cache that encodes the whole prefix in one call."""
    model = blt_d_model
    input_ids = text_ids(source_text(130, 2000))
    cells = torch.full((1, 8), MASK)
    cells[0, 2] = 70
    incremental = model.new_cache(1, 8)
    with torch.no_grad():
        model.open_block(incremental, input_ids[:, :20])
        for end in range(28, input_ids.shape[1], 8):
            for _ in range(2):  # several denoising steps per block, as generation does
                block_logits(model, incremental, cells)
            model.open_block(incremental, input_ids[:, end - 8 : end])
            fresh = model.new_cache(1, 8)
            model.open_block(fresh, input_ids[:, :end])
            torch.testing.assert_close(
                block_logits(model, incremental, cells), block_logits(model, fresh, cells), atol=1e-4, rtol=0
            )


def test_autoregressive_decoding_of_a_blt_d_model_is_unchanged(diffusion_model, tiny_model):
    prompt = text_ids(source_text(40))
    expected = tiny_model.generate(prompt, max_new_tokens=40, min_new_tokens=40)
    assert torch.equal(diffusion_model.generate(prompt, max_new_tokens=40, min_new_tokens=40), expected)


# --- Unmasking rules -------------------------------------------------------------------------------------------------


def test_confidence_rule_takes_every_cell_above_the_threshold_else_the_best_one():
    masked = torch.tensor([[True, True, False, True], [True, True, True, False]])
    confidence = torch.tensor([[0.9, 0.5, 0.99, 0.8], [0.2, 0.6, 0.3, 0.95]])
    selected = ConfidenceUnmasking(0.7).select(masked, confidence)
    assert selected.tolist() == [[True, False, False, True], [False, True, False, False]]


def test_entropy_bound_rule_takes_lowest_entropies_within_the_budget_and_at_least_one():
    masked = torch.tensor([[True, True, True, False], [True, True, False, False]])
    entropy = torch.tensor([[0.5, 0.1, 0.3, 0.0], [1.5, 2.0, 0.0, 0.0]])
    selected = EntropyBoundUnmasking(0.95).select(masked, entropy)
    # Row 0: 0.1 + 0.3 + 0.5 = 0.9 fits; the unmasked cell is never picked. Row 1: nothing fits, the lowest.
    assert selected.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert EntropyBoundUnmasking(0.35).select(masked, entropy).tolist() == [
        [False, True, False, False],
        [True, False, False, False],
    ]


def test_one_step_rule_takes_every_masked_cell():
    masked = torch.tensor([[True, False, True]])
    assert torch.equal(OneStepUnmasking().select(masked, torch.rand(1, 3)), masked)


def test_rules_rank_cells_by_confidence_or_entropy_and_read_their_knob_from_the_config(diffusion_model):
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    probabilities = logits.softmax(dim=-1)
    confidence = probabilities.max(dim=-1).values
    entropy = -(probabilities * probabilities.log()).sum(dim=-1)
    torch.testing.assert_close(ConfidenceUnmasking(0.7).rank(logits), confidence)
    torch.testing.assert_close(OneStepUnmasking().rank(logits), confidence)
    torch.testing.assert_close(EntropyBoundUnmasking(1.0).rank(logits), entropy)

    config = diffusion_model.generation_config
    config = type(config).from_dict(config.to_dict() | {"confidence_threshold": 0.25, "entropy_bound": 3.0})
    assert ConfidenceUnmasking.from_config(config).threshold == 0.25
    assert EntropyBoundUnmasking.from_config(config).bound == 3.0
    assert set(UNMASKING_RULES) == {"confidence", "entropy_bound", "one_step"}


# --- Cost accounting -------------------------------------------------------------------------------------------------


class CountDecoderCalls:
    def __init__(self, model):
        self.model = model.model
        self.original = self.model.decode_block
        self.calls = 0

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.model.decode_block = counted
        return self

    def __exit__(self, *exc):
        del self.model.decode_block


@pytest.mark.parametrize(
    "unmasking, knobs",
    [("confidence", {"confidence_threshold": 0.7}), ("entropy_bound", {"entropy_bound": 1.0}), ("one_step", {})],
)
@pytest.mark.parametrize("block_size", [3, 8])
def test_one_global_call_per_block_and_one_decoder_call_per_denoising_step(
    diffusion_model, unmasking, knobs, block_size
):
    prompt = text_ids(source_text(30, 100))
    with CountDecoderCalls(diffusion_model) as counter:
        output = diffusion(diffusion_model, prompt, 29, block_size=block_size, unmasking=unmasking, **knobs)
    assert output.sequences.shape == (1, prompt.shape[1] + 29)
    blocks = math.ceil(29 / block_size)
    assert output.global_nfe.tolist() == [blocks]
    assert output.patcher_nfe.tolist() == [blocks]
    assert output.decoder_nfe.tolist() == [counter.calls]
    assert blocks <= counter.calls <= 29
    if unmasking == "one_step":
        assert counter.calls == blocks
    counts = ParameterCounts.of(diffusion_model)
    expected_gb = 2 * (counter.calls * counts.decoder + blocks * (counts.encoder + counts.global_transformer)) / 1e9
    assert float(output.memory_bandwidth_gb[0]) == pytest.approx(expected_gb)


# --- Plumbing: stopping, budget, batching, sampling, streaming, pipeline ---------------------------------------------


def test_max_new_tokens_is_exact_with_a_short_last_block(diffusion_model):
    prompt = text_ids("def f(x):")
    output = diffusion(diffusion_model, prompt, 13)
    assert output.sequences.shape == (1, prompt.shape[1] + 13)
    assert output.global_nfe.tolist() == [2]


def test_eos_inside_a_block_ends_the_row_and_drops_the_bytes_after_it(diffusion_model):
    prompt = text_ids(source_text(25, 400))
    free = diffusion(diffusion_model, prompt, 24).sequences[0, prompt.shape[1] :]
    stop_byte = int(free[11])  # inside the second block of 8
    first = int((free == stop_byte).nonzero()[0, 0])
    stopped = diffusion_model.generate(
        prompt, decoding="diffusion", max_new_tokens=24, eos_token_id=stop_byte, pad_token_id=PAD
    )
    assert stopped[0, prompt.shape[1] :].tolist() == free[: first + 1].tolist()


def test_left_padded_batch_equals_each_row_alone_and_rows_finish_independently(diffusion_model):
    rows = [text_ids(source_text(length, offset)) for length, offset in ((30, 0), (9, 700), (1, 0), (21, 1400))]
    alone = [diffusion(diffusion_model, row, 20) for row in rows]
    batch, mask = left_pad(rows)
    together = diffusion(diffusion_model, batch, 20, attention_mask=mask)
    for index, (row, single) in enumerate(zip(rows, alone, strict=True)):
        assert together.sequences[index, batch.shape[1] :].tolist() == single.sequences[0, row.shape[1] :].tolist()
        for field in ("decoder_nfe", "global_nfe", "patcher_nfe"):
            assert getattr(together, field)[index] == getattr(single, field)[0], field

    # With a byte of row 0's output as EOS, every row stops right after its own first occurrence of it (if any).
    generated = together.sequences[:, batch.shape[1] :]
    stop_byte = int(generated[0, 3])
    stopped = diffusion_model.generate(
        batch, attention_mask=mask, decoding="diffusion", max_new_tokens=20, eos_token_id=stop_byte
    )[:, batch.shape[1] :]
    stop_lengths = []
    for index in range(len(rows)):
        hits = (generated[index] == stop_byte).nonzero()
        length = int(hits[0, 0]) + 1 if len(hits) else 20
        stop_lengths.append(length)
        assert stopped[index, :length].tolist() == generated[index, :length].tolist()
        assert bool((stopped[index, length:] == PAD).all())
    assert len(set(stop_lengths)) > 1, stop_lengths


def test_sampling_is_reproducible_and_top_k_one_is_greedy(diffusion_model):
    prompt = text_ids(source_text(20, 50))
    greedy = diffusion(diffusion_model, prompt, 16).sequences
    torch.manual_seed(5)
    first = diffusion(diffusion_model, prompt, 16, do_sample=True, temperature=30.0).sequences
    torch.manual_seed(5)
    again = diffusion(diffusion_model, prompt, 16, do_sample=True, temperature=30.0).sequences
    assert torch.equal(first, again)
    assert not torch.equal(first, greedy)
    assert torch.equal(diffusion(diffusion_model, prompt, 16, do_sample=True, top_k=1).sequences, greedy)


def test_streamer_receives_committed_blocks_and_drafts(diffusion_model):
    tokenizer = BltDiffusionTokenizer()

    class DraftStreamer(TextIteratorStreamer):
        drafts = []

        def put_draft(self, cells):
            self.drafts.append(cells.tolist())

    streamer = DraftStreamer(tokenizer, skip_prompt=True)
    prompt = text_ids(source_text(20))
    output = diffusion(diffusion_model, prompt, 24, streamer=streamer)
    streamed = "".join(streamer)
    assert streamed == tokenizer.decode(output.sequences[0, prompt.shape[1] :])
    assert len(streamer.drafts) == int(output.decoder_nfe[0])
    assert all(len(draft) == 8 for draft in streamer.drafts)
    assert MASK in streamer.drafts[0] or len(streamer.drafts) == 3  # one-step blocks would have no masks left


def test_pipeline_runs_diffusion_and_reports_costs(diffusion_model):
    generator = pipeline("text-generation", model=diffusion_model, tokenizer=BltDiffusionTokenizer())
    prompts = ["Hi", "Hello there, world"]
    results = generator(
        prompts,
        batch_size=2,
        max_new_tokens=16,
        do_sample=False,
        return_full_text=False,
        return_dict_in_generate=True,
        decoding="diffusion",
        min_new_tokens=16,
    )
    for result in results:
        record = result[0]
        assert record["global_nfe"] == 2
        assert 2 <= record["decoder_nfe"] <= 16
        assert record["memory_bandwidth_gb"] > 0


def test_diffusion_errors_name_the_problem(diffusion_model, tiny_model):
    prompt = text_ids("x")
    with pytest.raises(ValueError, match="diffusion_block_size"):
        tiny_model.generate(prompt, decoding="diffusion", max_new_tokens=4)
    with pytest.raises(ValueError, match="trained block size 8"):
        diffusion_model.generate(prompt, decoding="diffusion", block_size=9, max_new_tokens=4)
    with pytest.raises(ValueError, match="Unknown unmasking rule 'greedy'"):
        diffusion_model.generate(prompt, decoding="diffusion", unmasking="greedy", max_new_tokens=4)
    with pytest.raises(ValueError, match="confidence_threshold"):
        diffusion_model.generate(prompt, decoding="diffusion", confidence_threshold=1.5, max_new_tokens=4)


def test_cells_through_the_encoder_charge_an_encoder_pass_per_denoising_step(blt_d_model):
    prompt = text_ids(source_text(30, 100))
    with CountDecoderCalls(blt_d_model) as counter:
        output = diffusion(blt_d_model, prompt, 20, unmasking="confidence", confidence_threshold=0.9)
    through_encoder = blt_d_model.config.diffusion_cell_embedding == "encoder"
    assert output.cell_encoder_nfe.tolist() == [counter.calls if through_encoder else 0]
    counts = ParameterCounts.of(blt_d_model)
    blocks = math.ceil(20 / 8)
    expected_loads = counter.calls * counts.decoder + blocks * (counts.encoder + counts.global_transformer)
    expected_loads += int(output.cell_encoder_nfe[0]) * counts.encoder
    assert float(output.memory_bandwidth_gb[0]) == pytest.approx(2 * expected_loads / 1e9)
