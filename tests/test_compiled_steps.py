"""Compiled single-byte decoding steps: `generate(..., compile_config=CompileConfig(...))`.

Most tests compile with dynamo's "eager" backend: it traces each stack's step into one graph (`fullgraph=True`)
through the same fixed-shape attention and real-arithmetic rotations that inductor compiles, and runs the graph
with PyTorch's kernels, at a small share of inductor's compile time. One test compiles with inductor, as users do.
"""

import logging
import os
import shutil

import pytest
import torch
from conftest import (
    PARITY_CONFIGS,
    assert_same_greedy_bytes,
    build_pair,
    generate_new_bytes,
    left_pad,
    source_text,
    spread_prompts,
    text_ids,
)
from torch.overrides import TorchFunctionMode
from transformers import CompileConfig

from blt_diffusion.compiled_steps_blt_diffusion import (
    attended_slots,
    capacity_for_compiled_steps,
    compiled_steps_for,
    torch_compile_arguments,
)

TRACED = CompileConfig(backend="eager", fullgraph=True, dynamic=False)


@pytest.fixture(scope="module", params=["default", "max_patch_6_projection_small_windows"])
def pair(request):
    """The default tiny config, and one with `max_patch_length` (a byte that closes its patch is decoded again by the
    next step: two queries) and sliding windows shorter than the generation."""
    return build_pair(**PARITY_CONFIGS.get(request.param, {"seed": 0}))


@pytest.fixture(scope="module")
def default_pair():
    return build_pair(seed=0)


@pytest.fixture(scope="module")
def rows():
    return spread_prompts(3)


def test_compiled_steps_give_stock_bytes(pair, rows):
    stock, ours = pair
    # The long prompt takes the batch's slots past 256 while generating: the compiled steps then read 512 slots
    # instead of 256 (`attended_slots`), a new shape mid-generation.
    rows = rows + [text_ids(source_text(235, 4000))]
    # Stock one row at a time: its batched output changes with padding.
    expected = torch.cat(
        [
            stock.generate(row, max_new_tokens=40, min_new_tokens=40, do_sample=False, use_cache=False)[:, -40:]
            for row in rows
        ]
    )
    _, actual = generate_new_bytes(ours, rows, new_bytes=40, compile_config=TRACED)
    assert_same_greedy_bytes(ours, rows, expected, actual, max_ties=0)
    steps = compiled_steps_for(ours, TRACED)
    assert steps.unavailable is None
    # The patcher runs in the encoder's step.
    assert set(steps.step_names) == {"encode_new_bytes", "BltDiffusionGlobalTransformer", "decode_bytes"}


def test_compiled_self_speculative_decoding_stays_lossless(pair, rows):
    _, ours = pair
    _, expected = generate_new_bytes(ours, rows, new_bytes=64)
    output, actual = generate_new_bytes(
        ours, rows, new_bytes=64, decoding="self_speculative", draft_length=8, compile_config=TRACED
    )
    assert_same_greedy_bytes(ours, rows, expected, actual)
    assert float(output.acceptance_rate.mean()) > 0


def test_compiled_verified_diffusion_stays_lossless(diffusion_model, rows):
    """BLT-DV's block steps run uncompiled, its corrections and verifications' single bytes compiled."""
    _, expected = generate_new_bytes(diffusion_model, rows, new_bytes=32)
    _, actual = generate_new_bytes(
        diffusion_model, rows, new_bytes=32, decoding="diffusion_verified", block_size=8, compile_config=TRACED
    )
    assert_same_greedy_bytes(diffusion_model, rows, expected, actual)
    assert compiled_steps_for(diffusion_model, TRACED).step_names


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values on the host (`bool(t)`, `int(t)`, `t.item()`, `t.tolist()`): on a GPU each one
    waits for the device to finish its queued work."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in {"__bool__", "__int__", "__float__", "__index__", "item", "tolist"}:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_compiled_autoregressive_steps_read_the_device_twice_per_byte(pair, rows):
    """One read per step says whether the global transformer runs, where pooling looks and whether the decoder lags;
    one says whether generation is done. Nothing else (processors' histories, stopping, the cache's bookkeeping)
    reads the device, on ragged batches too."""
    _, ours = pair

    def host_reads(new_bytes: int) -> int:
        generate_new_bytes(ours, rows, new_bytes=new_bytes, compile_config=TRACED)
        with HostReads() as reads:
            generate_new_bytes(ours, rows, new_bytes=new_bytes, compile_config=TRACED)
        return reads.count

    # The counting mode is part of what compiled graphs are guarded on: they compile again under it.
    with torch._dynamo.config.patch(cache_size_limit=64):
        # The difference leaves out what a call reads once (its prompt, its arguments).
        assert host_reads(40) - host_reads(8) <= 2 * 32


def test_inductor_compiles_the_steps(default_pair, rows):
    """Users' default: inductor, which needs a C++ compiler on a CPU; without one, generation falls back."""
    _, ours = default_pair
    config = CompileConfig()
    _, expected = generate_new_bytes(ours, rows[:1], new_bytes=16)
    _, actual = generate_new_bytes(ours, rows[:1], new_bytes=16, compile_config=config)
    assert_same_greedy_bytes(ours, rows[:1], expected, actual, max_ties=0)
    has_compiler = any(shutil.which(compiler) for compiler in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    steps = compiled_steps_for(ours, config)
    assert (steps.unavailable is None) == has_compiler
    assert steps.step_names, "the steps went through the compiled stacks"


def refusing_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler here")


def test_generation_falls_back_when_compiling_fails(default_pair, rows, caplog):
    _, ours = default_pair
    config = CompileConfig(backend=refusing_backend)
    _, expected = generate_new_bytes(ours, rows, new_bytes=24)
    with caplog.at_level(logging.WARNING):
        _, actual = generate_new_bytes(ours, rows, new_bytes=24, compile_config=config)
        _, again = generate_new_bytes(ours, rows, new_bytes=24, compile_config=config)
    assert torch.equal(actual, expected) and torch.equal(again, expected)
    warnings = [record for record in caplog.records if "could not be compiled" in record.getMessage()]
    assert len(warnings) == 1 and "no compiler here" in warnings[0].getMessage()


def test_disable_compile_wins_over_a_compile_config(default_pair, rows, caplog):
    _, ours = default_pair
    config = CompileConfig(backend=refusing_backend, fullgraph=True)
    with caplog.at_level(logging.WARNING):
        generate_new_bytes(ours, rows[:1], new_bytes=8, compile_config=config, disable_compile=True)
    assert not [record for record in caplog.records if "could not be compiled" in record.getMessage()]


def test_an_unknown_backend_is_refused_before_generating(default_pair):
    _, ours = default_pair
    batch, _ = left_pad(spread_prompts(1))
    with pytest.raises(ValueError, match="compile_config.backend='no-such-backend'"):
        ours.generate(batch, max_new_tokens=4, compile_config=CompileConfig(backend="no-such-backend"))


def test_compiled_steps_read_the_slots_in_use_not_the_whole_capacity(default_pair):
    """A long generation's early steps read as many slots as its text holds, rounded up to a power of two, and never
    more than its buffers have."""
    _, ours = default_pair
    cache = ours.new_cache(batch_size=2, capacity=4096)
    assert (cache.fixed_byte_keys(1), cache.fixed_patch_keys(1)) == (256, 256)
    cache.end_bound, cache.patch_end_bound = 300, 80
    assert (cache.fixed_byte_keys(1), cache.fixed_patch_keys(1)) == (512, 256)
    cache.end_bound = 4000
    assert cache.fixed_byte_keys(1) == 4096
    assert attended_slots(9000, capacity=4096) == 4096


@pytest.mark.parametrize("capacity, rounded", [(1, 256), (256, 256), (257, 512), (1000, 1024)])
def test_compiled_caches_round_capacity_to_share_graphs(capacity, rounded):
    assert capacity_for_compiled_steps(capacity) == rounded


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "config, device, expected",
    [
        (
            CompileConfig(),
            CPU,
            {"fullgraph": False, "dynamic": False, "backend": "inductor", "options": {"cpp_wrapper": True}},
        ),
        (
            CompileConfig(),
            CUDA,
            {"fullgraph": False, "dynamic": False, "backend": "inductor", "mode": "reduce-overhead"},
        ),
        (
            CompileConfig(dynamic=True, options={"freezing": True}),
            CUDA,
            {"fullgraph": False, "dynamic": True, "backend": "inductor", "options": {"freezing": True}},
        ),
        (
            CompileConfig(backend="eager", fullgraph=True),
            CPU,
            {"fullgraph": True, "dynamic": False, "backend": "eager"},
        ),
    ],
    ids=["cpu-default", "cuda-default", "given-options", "other-backend"],
)
def test_compile_config_becomes_torch_compile_arguments(config, device, expected):
    assert torch_compile_arguments(config, device) == expected
