"""Train a small BLT-D (block-diffusion Byte Latent Transformer) from scratch on the Python standard library, offline.

Three stages, as in the BLT recipe:

1. train the entropy patcher, a small causal byte LM;
2. set the patching threshold so that patches average 4 bytes (at most 8) on training text;
3. train the main model with the patcher frozen, then report held-out bits per byte on standard-library modules that
   training never saw.

The default step counts are sized for the time limits on 2 CPU cores; the learning-rate schedules are defined over
the steps, and the time limits only stop a run early. On faster hardware raise `--max-steps`.

    python examples/train_blt_d.py --config tiny --minutes 2 --patcher-minutes 0.5 --output-dir runs/tiny
    python examples/train_blt_d.py --config benchmark --block-size 8 --output-dir runs/blt-d-40m
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from transformers import set_seed

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
from blt_diffusion.random_init import benchmark_blt_config, small_blt_config, tiny_blt_config
from blt_diffusion.training import (
    calibrate_patching_threshold,
    heldout_bits_per_byte,
    pack_byte_sequences,
    stdlib_source_files,
    train_model,
    train_patcher,
)
from blt_diffusion.training.data import evenly_spaced_rows

CONFIGS = {"tiny": tiny_blt_config, "small": small_blt_config, "benchmark": benchmark_blt_config}
# Per configuration, steps that roughly fill the default time limits on 2 CPU cores with 8 x 512-byte batches
# (measured with block size 8: about 1.6 s per step for the tiny model, 9-14 s for the 40M one; its patcher about
# 0.5-0.8 s), and peak learning rates: short runs of small models take high rates.
DEFAULT_MAX_STEPS = {"tiny": 600, "small": 300, "benchmark": 120}
DEFAULT_PATCHER_MAX_STEPS = {"tiny": 1000, "small": 400, "benchmark": 300}
DEFAULT_LEARNING_RATE = {"tiny": 3e-3, "small": 2e-3, "benchmark": 1e-3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="benchmark", help="model size")
    parser.add_argument("--block-size", type=int, default=8, help="diffusion block size B; 0 trains a plain BLT")
    parser.add_argument("--output-dir", default="runs/blt-d", help="where the model and tokenizer are saved")
    parser.add_argument("--minutes", type=float, default=20.0, help="time limit of main-model training")
    parser.add_argument("--max-steps", type=int, help="main-model optimizer steps (default per --config)")
    parser.add_argument("--learning-rate", type=float, help="main-model peak learning rate (default per --config)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    parser.add_argument("--sequence-length", type=int, default=512, help="bytes per training row")
    parser.add_argument("--max-bytes", type=int, help="use only this many bytes of training text (quick runs)")
    parser.add_argument("--patcher-minutes", type=float, default=3.0, help="time limit of patcher training")
    parser.add_argument("--patcher-max-steps", type=int, help="patcher optimizer steps (default per --config)")
    parser.add_argument("--patcher-learning-rate", type=float, default=3e-3)
    parser.add_argument("--bytes-per-patch", type=float, default=4.0, help="mean patch length to calibrate to")
    parser.add_argument("--max-patch-length", type=int, default=8, help="longest patch, in bytes")
    parser.add_argument("--calibration-rows", type=int, default=64, help="training rows to calibrate the threshold on")
    parser.add_argument("--eval-rows", type=int, default=64, help="held-out rows to measure bits per byte on")
    parser.add_argument("--eval-steps", type=int, help="also evaluate the held-out rows every this many steps")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_model(config_name: str, block_size: int) -> BltDiffusionForCausalLM:
    """A randomly initialised model of the named size with diffusion block size `block_size`."""
    config = BltDiffusionConfig.from_blt_config(CONFIGS[config_name](), diffusion_block_size=block_size)
    return BltDiffusionForCausalLM(config)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    logger = logging.getLogger("train_blt_d")
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    model = build_model(args.config, args.block_size)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info("%s model, block size %d, %.1fM parameters", args.config, args.block_size, num_parameters / 1e6)

    train_rows = pack_byte_sequences(stdlib_source_files("train"), args.sequence_length, max_bytes=args.max_bytes)
    heldout_rows = pack_byte_sequences(stdlib_source_files("heldout"), args.sequence_length)
    eval_rows = heldout_rows.select(evenly_spaced_rows(len(heldout_rows), args.eval_rows))
    logger.info(
        "%d training rows, %d held-out rows of %d bytes", len(train_rows), len(eval_rows), args.sequence_length
    )

    logger.info("Stage 1: training the entropy patcher")
    train_patcher(
        model,
        train_rows,
        str(output_dir / "patcher_trainer"),
        max_steps=args.patcher_max_steps or DEFAULT_PATCHER_MAX_STEPS[args.config],
        max_minutes=args.patcher_minutes,
        learning_rate=args.patcher_learning_rate,
        batch_size=args.batch_size,
        logging_steps=args.logging_steps,
        seed=args.seed,
    )

    calibration_ids = train_rows.select(evenly_spaced_rows(len(train_rows), args.calibration_rows))
    threshold = calibrate_patching_threshold(
        model,
        calibration_ids.with_format("torch")[:]["input_ids"],
        target_bytes_per_patch=args.bytes_per_patch,
        max_patch_length=args.max_patch_length,
    )
    logger.info("Stage 2: patching threshold %.4f nats (%.1f bytes per patch)", threshold, args.bytes_per_patch)

    logger.info("Stage 3: training the main model")
    train_model(
        model,
        train_rows,
        eval_rows if args.eval_steps else None,
        str(output_dir),
        max_minutes=args.minutes,
        max_steps=args.max_steps or DEFAULT_MAX_STEPS[args.config],
        learning_rate=args.learning_rate or DEFAULT_LEARNING_RATE[args.config],
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        eval_steps=args.eval_steps,
        seed=args.seed,
    )

    bits_per_byte = heldout_bits_per_byte(model, eval_rows, batch_size=args.batch_size)
    print(f"held-out bits per byte: {bits_per_byte:.4f}")
    results = {"heldout_bits_per_byte": bits_per_byte, "heldout_rows": len(eval_rows), "patching_threshold": threshold}
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
