"""The `custom_generate/` repo on a stock `transformers.BltForCausalLM`, against the stock model's own `generate`.

A stock BLT decodes by `model.generate(..., use_cache=False)` (its cache path crashes or changes the output), or, with
this project's custom_generate repo, by `model.generate(..., custom_generate=REPO, trust_remote_code=True,
decoding=...)`, which runs the package's cached decoding on the stock weights. This script times, on one randomly
initialised ~40M-parameter BLT calibrated to patch like a trained one (`benchmark_blt_config()`), greedy generation
of `--new-bytes` bytes after a 64-byte prompt from `textwrap.py`:

- stock `generate(use_cache=False)`;
- `custom_generate`, `decoding="autoregressive"` (cached);
- `custom_generate`, `decoding="self_speculative"` (BLT-S, `--draft-length` bytes per round).

Each `custom_generate` call includes what transformers and the repo do per call: find and import
`custom_generate/generate.py`, and view the stock weights as the package's model. The runs are interleaved
`--repeats` times after a warm-up; the report gives the median bytes/s of each, its ratio to stock, whether the bytes
are identical to stock's, and the time of a 1-byte call (the per-call overhead). The repo is built into a temporary
directory from the package's current modules (`scripts/build_custom_generate.py`).

    python benchmarks/bench_custom_generate.py [--new-bytes 256] [--repeats 3] [--threads 2] [--quick]
"""

import argparse
import importlib.util
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import transformers
from transformers import BltConfig, BltForCausalLM

from blt_diffusion import BltDiffusionTokenizer
from blt_diffusion.random_init import benchmark_blt_config, calibrate_random_model, tiny_blt_config

SOURCE_FILE = Path(textwrap.__file__)
CALIBRATION_SLICE = slice(0, 4096)
PROMPT_SLICE = slice(8192, 8192 + 64)
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_custom_generate.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def source_ids(byte_range: slice) -> torch.Tensor:
    text = SOURCE_FILE.read_bytes()[byte_range].decode("utf-8")
    return BltDiffusionTokenizer()(text, return_tensors="pt").input_ids


def build_repo(output_dir: Path) -> Path:
    """The custom_generate repo, built from the package's current modules."""
    spec = importlib.util.spec_from_file_location("build_custom_generate", BUILD_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.build(output_dir)


def stock_model(config: BltConfig) -> BltForCausalLM:
    torch.manual_seed(0)
    model = BltForCausalLM(config).eval()
    calibrate_random_model(model, source_ids(CALIBRATION_SLICE), bytes_per_patch=3.5)
    return model


def timed(model: BltForCausalLM, prompt: torch.Tensor, new_bytes: int, kwargs: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    sequences = model.generate(
        input_ids=prompt, max_new_tokens=new_bytes, min_new_tokens=new_bytes, do_sample=False, **kwargs
    )
    return time.perf_counter() - start, sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-bytes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-length", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the tiny test model, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    config = tiny_blt_config() if args.quick else benchmark_blt_config()
    model = stock_model(config)
    prompt = source_ids(PROMPT_SLICE)
    with tempfile.TemporaryDirectory() as temporary:
        repo = str(build_repo(Path(temporary) / "custom_generate"))
        custom = {"custom_generate": repo, "trust_remote_code": True}
        contenders = {
            "stock `generate(use_cache=False)`": {"use_cache": False},
            'custom_generate, `decoding="autoregressive"`': custom | {"decoding": "autoregressive"},
            f'custom_generate, `decoding="self_speculative"`, k={args.draft_length}': custom
            | {"decoding": "self_speculative", "draft_length": args.draft_length},
        }
        overhead = {}
        for name, kwargs in contenders.items():
            overhead[name] = min(timed(model, prompt, 1, kwargs)[0] for _ in range(3))
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        sequences = {}
        for repeat in range(args.repeats):
            for name, kwargs in contenders.items():
                elapsed, sequences[name] = timed(model, prompt, args.new_bytes, kwargs)
                seconds[name].append(elapsed)
                log(f"run {repeat + 1}/{args.repeats} {name}: {elapsed:.2f} s")

    stock_name = next(iter(contenders))
    stock_speed = args.new_bytes / statistics.median(seconds[stock_name])
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"Model: {'tiny' if args.quick else 'benchmark'}_blt_config(), {parameters / 1e6:.1f}M parameters, random, "
        f"calibrated to about 3.5 bytes per patch. Machine: {platform.machine()}, torch {torch.__version__} with "
        f"{args.threads} threads, transformers {transformers.__version__}."
    )
    print()
    print(
        f"Greedy generation of {args.new_bytes} bytes after a {prompt.shape[1] - 1}-byte prompt, median of "
        f"{args.repeats} interleaved runs:"
    )
    print()
    print("| decoding | bytes/s | speed vs stock | bytes identical to stock | 1-byte call (s) |")
    print("|---|---:|---:|---|---:|")
    for name in contenders:
        speed = args.new_bytes / statistics.median(seconds[name])
        identical = "yes" if torch.equal(sequences[name], sequences[stock_name]) else "**no**"
        print(f"| {name} | {speed:.1f} | {speed / stock_speed:.2f}x | {identical} | {overhead[name]:.3f} |")


if __name__ == "__main__":
    main()
