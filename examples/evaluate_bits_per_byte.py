"""Held-out bits per byte of a checkpoint on the Python standard library, next to gzip and xz on the same bytes.

    pip install ".[eval]"
    python examples/evaluate_bits_per_byte.py --model runs/blt-d16
    python examples/evaluate_bits_per_byte.py --model runs/blt-d16 --max-rows 64 --sequence-length 256

The held-out split is the one training leaves out (whole top-level modules, `stdlib_source_files("heldout")`), packed
into rows as for training. The model is scored on its next-byte predictions within each row; the compressors
compress the same bytes as one stream, so they also use context across rows that the model does not see, and they
learn from the evaluated text itself: their bits per byte fall as more rows are evaluated.
"""

import argparse

from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM
from blt_diffusion.training import (
    compressed_bits_per_byte,
    heldout_bits_per_byte,
    pack_byte_sequences,
    stdlib_source_files,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory (default: the shipped model)"
    )
    parser.add_argument("--sequence-length", type=int, default=512, help="bytes per row, as in training")
    parser.add_argument("--max-rows", type=int, help="evaluate at most this many rows, evenly spaced (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = BltDiffusionForCausalLM.from_pretrained(args.model)
    rows = pack_byte_sequences(stdlib_source_files("heldout"), args.sequence_length)
    results = {"model": heldout_bits_per_byte(model, rows, batch_size=args.batch_size, max_rows=args.max_rows)}
    results |= compressed_bits_per_byte(rows, max_rows=args.max_rows)
    num_rows = len(rows) if args.max_rows is None else min(len(rows), args.max_rows)
    print(f"held-out bits per byte ({num_rows} rows of {args.sequence_length} bytes):")
    for name, bits_per_byte in results.items():
        print(f"{name}: {bits_per_byte:.4f}")


if __name__ == "__main__":
    main()
