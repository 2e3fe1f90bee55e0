"""How fast autoregressive decoding could be on this machine: a decoding step against its matrix products alone.

On the 40M benchmark model (`benchmark_blt_config()`, calibrated as `bench_generation.py` builds it), side by side in
one process:

- greedy autoregressive generation, uncompiled and with compiled steps (`compile_config=CompileConfig()`);
- the same compiled generation on a copy of the model whose weights are stored column-major (transposed in memory),
  which selects another matrix-vector kernel;
- the compiled graphs alone: the time spent inside the compiled stacks' code during one compiled generation
  (profiler events of the compiled graphs), i.e. what the compiled steps would cost if nothing ran around them:
  no guard checks, no Python, no hashing, patching, pooling or stopping;
- the floor: replaying only the matrix products that generation ran (every `nn.Linear` call with one row per
  sequence, recorded by forward hooks), on the same weights in the same order, with nothing around them; once with
  the weights as stored (row-major) and once column-major.

A step cannot take less time than its matrix products, so `bytes/s at the floor` bounds what removing every other
cost (Python, dispatch, attention, bookkeeping) could give; the products' bytes of weights per second is the memory
bandwidth they reach.

    python benchmarks/bench_step_floor.py --threads 2
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
import transformers
from bench_generation import CALIBRATION_SLICE, PROMPT_OFFSET, build_models, source_ids
from torch import nn
from torch.profiler import profile
from transformers import CompileConfig

from blt_diffusion import BltDiffusionTokenizer
from blt_diffusion.random_init import benchmark_blt_config


def record_products(model: nn.Module, generate) -> list[tuple[torch.Tensor, int]]:
    """The weight and input width of every single-row linear call made while `generate()` runs."""
    calls = []

    def hook(module: nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if inputs[0].shape[:-1].numel() == 1:
            calls.append((module.weight, module.in_features))

    handles = [module.register_forward_hook(hook) for module in model.modules() if isinstance(module, nn.Linear)]
    try:
        generate()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def replay_seconds(calls: list[tuple[torch.Tensor, int]], column_major: bool) -> float:
    """Seconds to run the recorded products alone, best of three."""
    weights = {id(weight): weight.t().contiguous().t() if column_major else weight for weight, _ in calls}
    inputs = {width: torch.randn(1, 1, width) for _, width in calls}
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for weight, width in calls:
            F.linear(inputs[width], weights[id(weight)])
        best = min(best, time.perf_counter() - start)
    return best


def store_column_major(model: nn.Module) -> nn.Module:
    """A copy of `model` whose linear weights are transposed in memory (same values, other strides)."""
    transposed = copy.deepcopy(model)
    for module in transposed.modules():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.detach().t().contiguous().t(), requires_grad=False)
    return transposed


def compiled_graph_seconds(generate) -> float:
    """Seconds spent inside compiled graphs while `generate()` runs (the profiler's events of compiled graphs)."""
    with profile() as profiler:
        generate()
    return (
        sum(
            event.cpu_time_total
            for event in profiler.key_averages()
            if event.key.startswith("## Call CompiledFxGraph")
        )
        / 1e6
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-bytes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    tokenizer = BltDiffusionTokenizer()
    _, model = build_models(benchmark_blt_config(), source_ids(tokenizer, CALIBRATION_SLICE))
    prompt = source_ids(tokenizer, slice(PROMPT_OFFSET, PROMPT_OFFSET + 64))
    compiled = CompileConfig()

    column_major = store_column_major(model)

    def generate(compile_config: CompileConfig | None = None, generating_model: nn.Module = model) -> float:
        start = time.perf_counter()
        generating_model.generate(
            prompt,
            max_new_tokens=args.new_bytes,
            min_new_tokens=args.new_bytes,
            do_sample=False,
            compile_config=compile_config,
        )
        return time.perf_counter() - start

    with torch.inference_mode():
        warm_up = generate(compiled)
        generate(compiled, column_major)
        generate()
        seconds = {"uncompiled": [], "compiled": [], "compiled, weights column-major": []}
        for _ in range(args.repeats):
            seconds["uncompiled"].append(generate())
            seconds["compiled"].append(generate(compiled))
            seconds["compiled, weights column-major"].append(generate(compiled, column_major))
        graphs = min(compiled_graph_seconds(lambda: generate(compiled)) for _ in range(args.repeats))
        calls = record_products(model, generate)
        floors = {layout: replay_seconds(calls, layout == "column-major") for layout in ("row-major", "column-major")}

    weight_bytes = sum(weight.numel() * weight.element_size() for weight, _ in calls)
    base = args.new_bytes / min(seconds["uncompiled"])
    print(
        f"40M model, {args.new_bytes} bytes after a 64-byte prompt, {args.threads} thread(s), torch", torch.__version__
    )
    print(f"(first compiled call, compiling: {warm_up:.1f} s; {len(calls) / args.new_bytes:.0f} products per byte)\n")
    print("| | bytes/s | ms per byte | vs uncompiled | weights read (GB/s) |")
    print("|---|---:|---:|---:|---:|")

    def row(label: str, total_seconds: float, bandwidth: str = "") -> None:
        speed = args.new_bytes / total_seconds
        print(f"| {label} | {speed:.0f} | {1e3 / speed:.2f} | {speed / base:.2f}x | {bandwidth} |")

    for label, values in seconds.items():
        row(f"generation, {label}", min(values))
    row("compiled graphs alone (nothing around them)", graphs)
    for layout, floor in floors.items():
        row(f"floor: products alone, {layout}", floor, f"{weight_bytes / floor / 1e9:.1f}")


if __name__ == "__main__":
    main()
