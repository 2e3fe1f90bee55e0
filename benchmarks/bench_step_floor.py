"""How fast autoregressive decoding could be on this machine: a decoding step against its matrix products alone.

On the 40M benchmark model (`benchmark_blt_config()`, calibrated as `bench_generation.py` builds it), side by side in
one process:

- greedy autoregressive generation, uncompiled and with compiled steps (`compile_config=CompileConfig()`);
- the floor: replaying only the matrix products that generation ran (every `nn.Linear` call with one row per
  sequence, recorded by forward hooks), on the same weights in the same order, with nothing around them; once with
  the weights as stored (row-major) and once transposed in memory (column-major), which selects another matrix-vector
  kernel.

A step cannot take less time than its matrix products, so `bytes/s at the floor` bounds what removing every other
cost (Python, dispatch, attention, bookkeeping) could give; the products' bytes of weights per second is the memory
bandwidth they reach.

    python benchmarks/bench_step_floor.py --threads 2
"""

import argparse
import time

import torch
import torch.nn.functional as F
import transformers
from bench_generation import CALIBRATION_SLICE, PROMPT_OFFSET, build_models, source_ids
from torch import nn
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

    def generate(compile_config: CompileConfig | None = None) -> float:
        start = time.perf_counter()
        model.generate(
            prompt,
            max_new_tokens=args.new_bytes,
            min_new_tokens=args.new_bytes,
            do_sample=False,
            compile_config=compile_config,
        )
        return time.perf_counter() - start

    with torch.inference_mode():
        warm_up = generate(compiled)
        generate()
        seconds = {"uncompiled": [], "compiled": []}
        for _ in range(args.repeats):
            seconds["uncompiled"].append(generate())
            seconds["compiled"].append(generate(compiled))
        calls = record_products(model, generate)
        floors = {layout: replay_seconds(calls, layout == "column-major") for layout in ("row-major", "column-major")}

    weight_bytes = sum(weight.numel() * weight.element_size() for weight, _ in calls)
    base = args.new_bytes / min(seconds["uncompiled"])
    print(
        f"40M model, {args.new_bytes} bytes after a 64-byte prompt, {args.threads} thread(s), torch", torch.__version__
    )
    print(f"(first compiled call, compiling: {warm_up:.1f} s; {len(calls) / args.new_bytes:.0f} products per byte)\n")
    print("| | bytes/s | vs uncompiled | weights read (GB/s) |")
    print("|---|---:|---:|---:|")
    for label, values in seconds.items():
        speed = args.new_bytes / min(values)
        print(f"| generation, {label} | {speed:.0f} | {speed / base:.2f}x | |")
    for layout, floor in floors.items():
        speed = args.new_bytes / floor
        bandwidth = weight_bytes / floor / 1e9
        print(f"| floor: products alone, {layout} | {speed:.0f} | {speed / base:.2f}x | {bandwidth:.1f} |")


if __name__ == "__main__":
    main()
