"""Property-based `generate()`: any valid arguments and prompts keep the output's invariants with every strategy, and
any invalid argument is a TypeError or ValueError naming it (issue 13). Bounded: a few dozen short generations on the
tiny BLT-D model, the same on every run (the hypothesis profiles in `conftest.py`)."""

import math

import pytest
import torch
from conftest import left_pad, strategy_arguments
from hypothesis import given
from hypothesis import strategies as st

from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES, UNMASKING_RULES

# The tiny BLT-D model (`diffusion_model`): its vocabulary and trained block size.
VOCAB_SIZE = 260
BLOCK_SIZE = 8
MAX_NEW_TOKENS = 10
DIFFUSION_STRATEGIES = ("diffusion", "diffusion_verified")
# The lossless strategies besides the autoregressive reference.
SPECULATIVE = tuple(name for name, strategy in DECODING_STRATEGIES.items() if strategy.lossless)[1:]
# What asks for a drafting strategy, which the autoregressive reference must leave out.
DRAFTING_ARGUMENTS = ("assistant_model", "prompt_lookup_num_tokens")

# Wrong values, (argument, value); `input_ids` stands for the prompt passed as a Python list.
INVALID_ARGUMENTS = [
    ("max_new_tokens", 2.5),
    ("max_new_tokens", 0),
    ("max_new_tokens", True),
    ("max_length", 7.0),
    ("min_new_tokens", 1.5),
    ("block_size", 2.5),
    ("block_size", 0),
    ("draft_length", 0),
    ("draft_length", None),
    ("prompt_lookup_num_tokens", 0),
    ("max_matching_ngram_size", 1.5),
    ("num_assistant_tokens", 0),
    ("assistant_confidence_threshold", math.nan),
    ("confidence_threshold", math.nan),
    ("confidence_threshold", 1.5),
    ("entropy_bound", math.nan),
    ("entropy_bound", -1.0),
    ("unmasking", "greedy"),
    ("decoding", "fastest"),
    ("pad_token_id", None),
    ("pad_token_id", -1),
    ("pad_token_id", VOCAB_SIZE),
    ("eos_token_id", -1),
    ("eos_token_id", VOCAB_SIZE),
    ("bos_token_id", 1.0),
    ("forced_eos_token_id", VOCAB_SIZE),
    ("repetition_penalty", math.nan),
    ("repetition_penalty", 0.0),
    ("no_repeat_ngram_size", -1),
    ("num_return_sequences", 1.5),
    ("stop_strings", [""]),
    ("temperature", math.nan),
    ("top_p", 0.0),
    ("top_p", math.nan),
    ("top_k", -1),
    ("typical_p", math.nan),
    ("input_ids", "list"),
]
# Knobs read only when sampling, so wrong only then.
SAMPLING_ARGUMENTS = {"temperature", "top_p", "top_k", "typical_p"}

prompts = st.lists(st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=10), min_size=1, max_size=3)
penalties = st.floats(0.5, 2.0)


@st.composite
def generate_arguments(draw, decoding: str, do_sample: bool) -> dict:
    """Valid `generate` keyword arguments for `decoding`, greedy or sampling, the prompt aside."""
    arguments = {"decoding": decoding, "max_new_tokens": draw(st.integers(1, MAX_NEW_TOKENS)), "do_sample": do_sample}
    if do_sample:
        arguments |= draw(
            st.fixed_dictionaries(
                {"num_return_sequences": st.integers(1, 2)},
                optional={
                    "temperature": st.floats(0.5, 2.0),
                    "top_k": st.integers(0, 20),
                    "top_p": st.floats(0.1, 1.0),
                },
            )
        )
    arguments |= draw(
        st.fixed_dictionaries(
            {},
            optional={
                "repetition_penalty": penalties,
                "encoder_repetition_penalty": penalties,
                "no_repeat_ngram_size": st.integers(0, 3),
                "min_new_tokens": st.integers(0, MAX_NEW_TOKENS),
                "eos_token_id": st.integers(0, VOCAB_SIZE - 1),
                "forced_eos_token_id": st.integers(0, VOCAB_SIZE - 1),
            },
        )
    )
    if decoding == "self_speculative":
        arguments["draft_length"] = draw(st.integers(1, BLOCK_SIZE))
    if decoding == "prompt_lookup":
        arguments |= draw(
            st.fixed_dictionaries(
                {},
                optional={"prompt_lookup_num_tokens": st.integers(1, 8), "max_matching_ngram_size": st.integers(1, 8)},
            )
        )
    if decoding == "assisted":
        arguments |= draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "num_assistant_tokens": st.integers(1, 8),
                    "assistant_confidence_threshold": st.floats(0, 1),
                },
            )
        )
    if decoding in DIFFUSION_STRATEGIES:
        # Speculative sampling needs one-step drafts (refused otherwise: `test_speculative.py`).
        one_step_only = decoding == "diffusion_verified" and do_sample
        rules = ["one_step"] if one_step_only else sorted(UNMASKING_RULES)
        arguments |= draw(
            st.fixed_dictionaries(
                {"block_size": st.none() | st.integers(1, BLOCK_SIZE), "unmasking": st.sampled_from(rules)},
                optional={"confidence_threshold": st.floats(0.0, 1.0), "entropy_bound": st.floats(0.0, 5.0)},
            )
        )
    return arguments


def generate(model, rows: list[list[int]], **arguments) -> torch.Tensor:
    """Generate after `rows`, left-padded; assisted decoding drafts with the model itself."""
    input_ids, attention_mask = left_pad([torch.tensor([row]) for row in rows])
    arguments = strategy_arguments(arguments["decoding"], model) | arguments
    return model.generate(input_ids, attention_mask=attention_mask, **arguments)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
@pytest.mark.parametrize("decoding", sorted(DECODING_STRATEGIES))
@given(rows=prompts, data=st.data())
def test_valid_arguments_keep_the_invariants(diffusion_model, decoding, do_sample, rows, data):
    arguments = data.draw(generate_arguments(decoding, do_sample))
    input_ids, _ = left_pad([torch.tensor([row]) for row in rows])
    sequences = generate(diffusion_model, rows, **arguments)
    copies = arguments.get("num_return_sequences", 1)
    prompt_length = input_ids.shape[1]
    assert sequences.shape[0] == len(rows) * copies
    assert torch.equal(sequences[:, :prompt_length], input_ids.repeat_interleave(copies, dim=0))
    assert sequences.shape[1] - prompt_length <= arguments["max_new_tokens"]
    assert int(sequences.min()) >= 0 and int(sequences.max()) < VOCAB_SIZE
    if decoding in SPECULATIVE and not do_sample:
        reference = {name: value for name, value in arguments.items() if name not in DRAFTING_ARGUMENTS}
        autoregressive = generate(diffusion_model, rows, **reference | {"decoding": "autoregressive"})
        assert torch.equal(sequences, autoregressive)


@pytest.mark.parametrize("name, value", INVALID_ARGUMENTS)
@given(rows=prompts, decoding=st.sampled_from(sorted(DECODING_STRATEGIES)), do_sample=st.booleans(), data=st.data())
def test_an_invalid_argument_is_refused_by_name(diffusion_model, name, value, rows, decoding, do_sample, data):
    arguments = data.draw(generate_arguments(decoding, do_sample or name in SAMPLING_ARGUMENTS))
    if name == "input_ids":
        with pytest.raises(TypeError, match="`input_ids`"):
            prompt = left_pad([torch.tensor([row]) for row in rows])[0].tolist()
            diffusion_model.generate(prompt, **strategy_arguments(decoding, diffusion_model) | arguments)
        return
    with pytest.raises((TypeError, ValueError)) as error:
        generate(diffusion_model, rows, **arguments | {name: value})
    assert name in str(error.value)
