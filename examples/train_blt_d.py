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
import logging

import torch
from transformers import set_seed

from blt_diffusion.training import MODEL_CONFIGS, build_model, run_training, stdlib_source_files
from blt_diffusion.training.pipeline import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, DEFAULT_PATCHER_MAX_STEPS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(MODEL_CONFIGS), default="benchmark", help="model size")
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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    set_seed(args.seed)
    results = run_training(
        build_model(args.config, args.block_size),
        args.output_dir,
        stdlib_source_files("train"),
        stdlib_source_files("heldout"),
        max_steps=args.max_steps or DEFAULT_MAX_STEPS[args.config],
        learning_rate=args.learning_rate or DEFAULT_LEARNING_RATE[args.config],
        max_minutes=args.minutes,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        max_bytes=args.max_bytes,
        patcher_max_steps=args.patcher_max_steps or DEFAULT_PATCHER_MAX_STEPS[args.config],
        patcher_max_minutes=args.patcher_minutes,
        patcher_learning_rate=args.patcher_learning_rate,
        bytes_per_patch=args.bytes_per_patch,
        max_patch_length=args.max_patch_length,
        calibration_rows=args.calibration_rows,
        eval_rows=args.eval_rows,
        eval_steps=args.eval_steps,
        logging_steps=args.logging_steps,
        seed=args.seed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    print(f"held-out bits per byte: {results['heldout_bits_per_byte']:.4f}")


if __name__ == "__main__":
    main()
