"""How diffusion cells should reach the decoder, compared on the learning test's record language.

Trains the tiny BLT-D model of `tests/test_diffusion_learning.py` from scratch once per variant, on the same data
and seed, for each number of steps (a run each: the learning rate is constant, the optimizer fresh), and reports:

- exact: held-out words whose 16 determined bytes BLT-D-8 (confidence 0.7) writes exactly (of 32);
- bytes per decoder call of those continuations;
- the probe's mean gap to autoregressive prediction and argmax agreement (`probe_diffusion_head.py`), at patch starts
  and inside patches, on 8 held-out rows of records.

Variants: `table` (cells looked up in `diffusion_embed_tokens`), `rescaled table` (the same table, initialised at
the RMS of the encoder outputs that clean bytes bring the decoder) and `encoder` (cells through the local encoder
with one mask embedding).

    python benchmarks/compare_cell_embeddings.py --steps 230 460
"""

import argparse
import random
import sys
from pathlib import Path

import torch
from probe_diffusion_head import ANCHOR_KINDS, probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_diffusion_learning import (  # noqa: E402
    byte_ids,
    decode_heldout_records,
    records,
    split_words,
    tiny_blt_d,
    train_on_records,
)

from blt_diffusion import BltDiffusionForCausalLM  # noqa: E402

VARIANTS = ("table", "rescaled table", "encoder")


def variant_model(variant: str, train_words: list[str]) -> BltDiffusionForCausalLM:
    if variant == "encoder":
        return tiny_blt_d(train_words, diffusion_cell_embedding="encoder")
    model = tiny_blt_d(train_words, diffusion_cell_embedding="table")
    if variant == "rescaled table":
        sample = torch.tensor([byte_ids(records(random.Random(1), train_words, 8))])
        with torch.no_grad():
            clean_rms = model.model.encode(sample).byte_states.pow(2).mean().sqrt()
            table = model.model.diffusion_embed_tokens.weight
            table.mul_(clean_rms / table.pow(2).mean().sqrt())
    return model


def heldout_rows(heldout_words: list[str], num_rows: int = 8, row_bytes: int = 160) -> torch.Tensor:
    rows = [byte_ids(records(random.Random(900 + index), heldout_words, 10))[:row_bytes] for index in range(num_rows)]
    return torch.tensor(rows)


def measure(model: BltDiffusionForCausalLM, train_words: list[str], heldout_words: list[str]) -> dict[str, float]:
    results = decode_heldout_records(model, train_words, heldout_words)
    probed = probe(model, heldout_rows(heldout_words), stride=3)
    figures = {
        "exact": sum(exact for exact, _, _ in results),
        "bytes per decoder call": 16 * len(results) / sum(calls for _, calls, _ in results),
    }
    for kind in ANCHOR_KINDS:
        tallies = [tally for tally in probed.tallies[kind] if tally.cells]
        figures[f"gap, {kind}"] = probed.mean_gap(kind)
        figures[f"agreement, {kind}"] = sum(t.agreements for t in tallies) / sum(t.cells for t in tallies)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[230, 460], help="train this many steps")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_words, heldout_words = split_words()
    print(
        "| variant | steps | exact (of 32) | bytes per decoder call | gap, patch start (bits) "
        "| agreement, patch start | gap, inside a patch (bits) | agreement, inside a patch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants:
        for steps in args.steps:
            model = train_on_records(variant_model(variant, train_words), train_words, steps)
            figures = measure(model, train_words, heldout_words)
            print(
                f"| {variant} | {steps} | {figures['exact']} | {figures['bytes per decoder call']:.2f} "
                f"| {figures['gap, patch start']:+.3f} | {figures['agreement, patch start']:.1%} "
                f"| {figures['gap, mid-patch']:+.3f} | {figures['agreement, mid-patch']:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
