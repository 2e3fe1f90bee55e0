"""Peak memory and time of one BLT-D training step (forward + backward) on one 1024-byte sequence.

Each block size runs in a fresh process, so the peak resident set size of that process, minus what it held before the
step, is the step's own memory. Block size 0 is the plain BLT objective, for reference. The decoder reads the clean
sequence plus one block of B cells per patch, about N * (1 + B / bytes-per-patch) positions.

    python benchmarks/bench_training_memory.py                       # benchmark config, B in 0 4 8 16
    python benchmarks/bench_training_memory.py --config small --sequence-length 2048
"""

import argparse
import json
import resource
import subprocess
import sys
import textwrap
import time

import torch

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
from blt_diffusion.random_init import benchmark_blt_config, calibrate_random_model, small_blt_config

CONFIGS = {"benchmark": benchmark_blt_config, "small": small_blt_config}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def source_ids(length: int) -> torch.Tensor:
    """BOS plus `length - 1` bytes of the standard library's own source, (1, length)."""
    text = open(textwrap.__file__, "rb").read()
    return torch.tensor([[1] + [byte + 4 for byte in text[: length - 1]]])


def measure(config_name: str, block_size: int, sequence_length: int, threads: int) -> dict:
    """One training step in this process; returns its memory and time figures."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = BltDiffusionConfig.from_blt_config(CONFIGS[config_name](), diffusion_block_size=block_size)
    model = BltDiffusionForCausalLM(config).train()
    input_ids = source_ids(sequence_length)
    calibrate_random_model(model, input_ids, bytes_per_patch=4.0, head_gain=1.0)
    with torch.no_grad():
        num_patches = int(model.model.encode(input_ids).segmentation.ends_patch.sum())
    before = peak_rss_mb()
    start = time.perf_counter()
    model(input_ids, labels=input_ids).loss.backward()
    seconds = time.perf_counter() - start
    return {
        "block_size": block_size,
        "patches": num_patches,
        "decoder_positions": sequence_length + max(num_patches - 1, 0) * block_size,
        "step_peak_mb": peak_rss_mb() - before,
        "process_peak_mb": peak_rss_mb(),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="benchmark")
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.config, args.child, args.sequence_length, args.threads)))
        return

    print(
        f"Training step on one {args.sequence_length}-byte sequence, `{args.config}` config, {args.threads} thread(s)"
    )
    print()
    print("| B | patches | decoder positions | step peak memory (MB) | process peak (MB) | step time (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for block_size in args.block_sizes:
        command = [sys.executable, __file__, "--config", args.config, "--sequence-length", str(args.sequence_length)]
        command += ["--threads", str(args.threads), "--child", str(block_size)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(
            f"| {block_size} | {result['patches']} | {result['decoder_positions']} | {result['step_peak_mb']:.0f} | "
            f"{result['process_peak_mb']:.0f} | {result['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
