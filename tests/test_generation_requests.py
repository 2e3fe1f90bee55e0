"""`generate()` honours every request or refuses it by name (issue 13): transformers' logits processors on ragged
batches with every strategy, lossless strategies equal to autoregressive decoding under them, and a TypeError or
ValueError naming the argument for any value of the wrong type or out of range."""

import math

import pytest
import torch
from conftest import BOS, EOS, PAD, left_pad, spread_prompts, strategy_arguments, text_ids
from transformers import LogitsProcessor, SynthIDTextWatermarkingConfig, WatermarkingConfig

from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES

# The lossless strategies besides the autoregressive reference.
SPECULATIVE = ("self_speculative", "diffusion_verified")


@pytest.fixture(scope="module")
def ragged_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 7, 14 and 21 bytes, left-padded, and their attention mask."""
    return left_pad(spread_prompts(3))


def byte_id(character: str) -> int:
    return int(text_ids(character, bos=False)[0, 0])


# Every processor transformers builds from the generation config of a causal LM, but the sampling warpers (below) and
# forced BOS (which needs a one-byte prompt: `test_diffusion_processes_each_cell_as_the_byte_at_its_position`), in
# groups that share a run.
GREEDY_PROCESSOR_GROUPS = {
    # Processors that keep state per row of the batch they were built for: its left padding, its prompt.
    "prompt_state": dict(repetition_penalty=1.5, encoder_repetition_penalty=1.3, encoder_no_repeat_ngram_size=2),
    # Processors that read the bytes before the one they score.
    "history": dict(
        no_repeat_ngram_size=2,
        bad_words_ids=[[byte_id("e")], [byte_id(" "), byte_id("t")]],
        sequence_bias={(byte_id("a"),): 4.0, (byte_id("s"), byte_id("e")): -4.0},
        watermarking_config=WatermarkingConfig(bias=4.0),
    ),
    # Processors that read how many bytes come before.
    "length": dict(
        min_new_tokens=6,
        min_length=20,
        forced_eos_token_id=EOS,
        exponential_decay_length_penalty=(8, 1.5),
        suppress_tokens=[byte_id(" ")],
        begin_suppress_tokens=[byte_id("e"), byte_id("a")],
        remove_invalid_values=True,
        renormalize_logits=True,
    ),
}


class PinPrompt(LogitsProcessor):
    """Forces `byte` after `prompt` (1, prompt) in whichever row holds it: speculative decoding then keeps every byte
    drafted for that row and few of the others', so rows soon hold different numbers of bytes."""

    def __init__(self, prompt: torch.Tensor, byte: int):
        self.prompt = prompt
        self.byte = byte

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pinned = (input_ids[:, : self.prompt.shape[1]] == self.prompt).all(dim=1, keepdim=True)
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.byte] = 0.0
        return torch.where(pinned, forced, scores)


def generate(model, batch: tuple[torch.Tensor, torch.Tensor], **kwargs):
    input_ids, attention_mask = batch
    return model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=24, return_dict_in_generate=True, **kwargs
    )


@pytest.mark.parametrize("group", sorted(GREEDY_PROCESSOR_GROUPS))
def test_processors_work_on_ragged_batches_and_keep_speculative_decoding_lossless(
    diffusion_model, ragged_batch, group
):
    processors = GREEDY_PROCESSOR_GROUPS[group] | {"logits_processor": [PinPrompt(ragged_batch[0][:1], byte_id("x"))]}
    expected = generate(diffusion_model, ragged_batch, **processors).sequences
    assert not torch.equal(expected, generate(diffusion_model, ragged_batch).sequences)
    for decoding in SPECULATIVE:
        output = generate(diffusion_model, ragged_batch, decoding=decoding, **processors)
        assert torch.equal(output.sequences, expected), decoding
        # Rows accepted different numbers of drafted bytes, so they were processed apart, each with its own state.
        assert len(set(output.acceptance_rate.tolist())) > 1, decoding
    diffused = generate(diffusion_model, ragged_batch, decoding="diffusion", **processors).sequences
    prompt_width = ragged_batch[0].shape[1]
    assert torch.equal(diffused[:, :prompt_width], ragged_batch[0])
    # Row 0's processors, built for it, reach every cell of its blocks.
    assert bool((diffused[0, prompt_width:] == byte_id("x")).all())


@pytest.mark.parametrize("decoding", DECODING_STRATEGIES)
def test_sampling_warpers_and_repeated_prompts_work_on_ragged_batches(diffusion_model, ragged_batch, decoding):
    torch.manual_seed(0)
    output = generate(
        diffusion_model,
        ragged_batch,
        **strategy_arguments(decoding, diffusion_model),
        do_sample=True,
        num_return_sequences=2,
        temperature=0.9,
        top_k=40,
        top_p=0.95,
        min_p=0.01,
        typical_p=0.95,
        epsilon_cutoff=1e-4,
        eta_cutoff=1e-3,
        repetition_penalty=1.2,
    )
    prompts = ragged_batch[0].repeat_interleave(2, dim=0)
    assert output.sequences.shape == (6, prompts.shape[1] + 24)
    assert torch.equal(output.sequences[:, : prompts.shape[1]], prompts)


def test_diffusion_processes_each_cell_as_the_byte_at_its_position(diffusion_model):
    """Cell i of a block is processed after the committed bytes and the block's first i cells: forced BOS lands on the
    first new byte only, forced EOS on the last byte of the budget although no block starts there."""
    forced = byte_id("A")
    output = diffusion_model.generate(
        text_ids(""),
        decoding="diffusion",
        max_new_tokens=5,
        forced_bos_token_id=forced,
        forced_eos_token_id=EOS,
    )
    new = output[0, 1:].tolist()
    assert new[0] == forced and new[-1] == EOS and new[1:-1] != [forced] * 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(guidance_scale=1.5), "guidance_scale"),
        (dict(token_healing=True), "token_healing"),
        (dict(num_beams=2), "num_beams"),
        (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
        (dict(dola_layers="low"), "dola_layers"),
        (dict(assistant_early_exit=2), "assistant_early_exit"),
        (dict(decoding="self_speculative", prompt_lookup_num_tokens=3), "prompt_lookup_num_tokens"),
        (
            dict(
                decoding="self_speculative",
                do_sample=True,
                watermarking_config=SynthIDTextWatermarkingConfig(keys=[1, 2], ngram_len=2),
            ),
            "watermarking_config",
        ),
    ],
)
def test_requests_no_strategy_honours_are_refused_by_name(diffusion_model, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        diffusion_model.generate(text_ids("Hi"), max_new_tokens=4, **kwargs)


NAN = math.nan


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(max_new_tokens=5.5), TypeError, "max_new_tokens"),
        (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
        (dict(max_new_tokens=None, max_length=None), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=None, max_length=9.5), TypeError, "max_length"),
        (dict(decoding="diffusion", block_size=2.5), TypeError, "block_size"),
        (dict(decoding="self_speculative", draft_length=None), TypeError, "draft_length"),
        (dict(decoding="diffusion", confidence_threshold=None), TypeError, "confidence_threshold"),
        (dict(decoding="diffusion", unmasking="entropy_bound", entropy_bound=NAN), ValueError, "entropy_bound"),
        (dict(pad_token_id=None), ValueError, "pad_token_id"),
        (dict(pad_token_id=2.0), TypeError, "pad_token_id"),
        (dict(pad_token_id=260), ValueError, "pad_token_id"),
        (dict(eos_token_id=-1), ValueError, "eos_token_id"),
        (dict(eos_token_id=[EOS, 260]), ValueError, "eos_token_id"),
        (dict(bos_token_id=-1), ValueError, "bos_token_id"),
        (dict(forced_eos_token_id=260), ValueError, "forced_eos_token_id"),
        (dict(suppress_tokens=[1000]), ValueError, "suppress_tokens"),
        (dict(num_return_sequences=2.0, do_sample=True), TypeError, "num_return_sequences"),
        (dict(repetition_penalty=2), TypeError, "repetition_penalty"),
        (dict(encoder_repetition_penalty=NAN), ValueError, "encoder_repetition_penalty"),
        (dict(do_sample=True, temperature=NAN), ValueError, "temperature"),
        (dict(do_sample=True, top_p=0.0), ValueError, "top_p"),
        (dict(do_sample=True, top_p=NAN), ValueError, "top_p"),
        (dict(do_sample=True, top_p=1.5), ValueError, "top_p"),
        (dict(do_sample=True, typical_p=NAN), ValueError, "typical_p"),
        (dict(do_sample=True, epsilon_cutoff=1.5), ValueError, "epsilon_cutoff"),
        (dict(stop_strings=[""]), ValueError, "stop_strings"),
    ],
)
def test_arguments_of_the_wrong_type_or_value_are_refused_by_name(diffusion_model, kwargs, error, name):
    kwargs.setdefault("max_new_tokens", 4)
    with pytest.raises(error, match=f"`{name}`"):
        diffusion_model.generate(text_ids("Hi"), **kwargs)


@pytest.mark.parametrize("prompt", [[[BOS, 10, 11]], [BOS, 10, 11]])
def test_a_prompt_that_is_not_a_tensor_is_refused_by_name(diffusion_model, prompt):
    with pytest.raises(TypeError, match="`input_ids`.*torch.Tensor"):
        diffusion_model.generate(prompt, max_new_tokens=4)


def test_an_empty_prompt_without_a_bos_id_is_refused_by_name(diffusion_model):
    with pytest.raises(ValueError, match="`bos_token_id`"):
        diffusion_model.generate(torch.empty(1, 0, dtype=torch.long), max_new_tokens=4, bos_token_id=None)


def test_padding_stands_for_cells_still_masked(diffusion_model):
    """What the processors of a block see: committed bytes, then the block's cells, masked ones as padding."""
    seen = []

    def record(input_ids, scores):
        seen.append(input_ids[0, -8:].tolist())
        return scores

    diffusion_model.generate(
        text_ids("Hello"), decoding="diffusion", max_new_tokens=8, logits_processor=[record], unmasking="one_step"
    )
    assert seen[-1][-7:] == [PAD] * 7
