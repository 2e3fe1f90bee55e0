"""How well the BLT-D diffusion head uses what it is given, against autoregressive prediction of the same bytes.

For held-out rows (standard-library modules that training never saw), a diffusion block is opened after every
`--stride`-th prefix exactly as `generate(..., decoding="diffusion")` opens one (incremental cache, the open patch's
provisional latent), and each cell is scored with the information autoregressive decoding has for the same byte:
cells before it revealed with their true bytes, it and the cells after it masked (a left-to-right reveal). The
report gives, per block offset, the diffusion head's cross-entropy (bits) on the true byte, the autoregressive
head's cross-entropy on the same byte after the same prefix, their gap, and how often the two heads' argmaxes agree.
Blocks are split by anchor kind:

- "patch start": the byte before the block ends an entropy patch, so the cells read a closed patch's latent, as in
  training;
- "mid-patch": the block starts inside an entropy patch, so the cells read the open patch's provisional latent.

    python benchmarks/probe_diffusion_head.py --model src/blt_diffusion/checkpoints/blt-d8-stdlib --rows 32
"""

import argparse
import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from blt_diffusion import BltDiffusionForCausalLM
from blt_diffusion.training import pack_byte_sequences, stdlib_source_files
from blt_diffusion.training.data import evenly_spaced_rows

ANCHOR_KINDS = ("patch start", "mid-patch")


@dataclass
class OffsetTally:
    """Sums over every scored cell at one block offset of one anchor kind."""

    cells: int = 0
    diffusion_nats: float = 0.0
    autoregressive_nats: float = 0.0
    agreements: int = 0

    def add(self, diffusion_nats: float, autoregressive_nats: float, agrees: bool) -> None:
        self.cells += 1
        self.diffusion_nats += diffusion_nats
        self.autoregressive_nats += autoregressive_nats
        self.agreements += int(agrees)

    def bits(self) -> tuple[float, float]:
        """Mean cross-entropy in bits per byte: (diffusion head, autoregressive head)."""
        return self.diffusion_nats / self.cells / math.log(2), self.autoregressive_nats / self.cells / math.log(2)


@dataclass
class ProbeResult:
    """Per anchor kind, one tally per block offset."""

    block_size: int
    tallies: dict[str, list[OffsetTally]] = field(default_factory=dict)

    def mean_gap(self, kind: str) -> float:
        """The diffusion head's excess cross-entropy over the autoregressive head, in bits, averaged over offsets."""
        gaps = [diffusion - autoregressive for diffusion, autoregressive in self.offset_bits(kind)]
        return sum(gaps) / len(gaps)

    def offset_bits(self, kind: str) -> list[tuple[float, float]]:
        return [tally.bits() for tally in self.tallies[kind] if tally.cells]

    def as_dict(self) -> dict:
        return {
            kind: [
                {
                    "offset": offset,
                    "cells": tally.cells,
                    "diffusion_bits": tally.bits()[0],
                    "autoregressive_bits": tally.bits()[1],
                    "argmax_agreement": tally.agreements / tally.cells,
                }
                for offset, tally in enumerate(tallies)
                if tally.cells
            ]
            for kind, tallies in self.tallies.items()
        }


def left_to_right_reveals(targets: torch.Tensor, mask_id: int) -> torch.Tensor:
    """`targets` (block,) -> cells (block, block): row j reveals the true bytes before offset j and masks the rest."""
    block_size = targets.shape[0]
    offsets = torch.arange(block_size, device=targets.device)
    revealed = offsets[None, :] < offsets[:, None]
    return torch.where(revealed, targets[None, :], mask_id)


@torch.no_grad()
def probe_row(model: BltDiffusionForCausalLM, row: torch.Tensor, result: ProbeResult, stride: int, min_prefix: int):
    """Score every block anchored at `min_prefix`, `min_prefix + stride`, ... of one row (seq,) into `result`."""
    block_size = result.block_size
    autoregressive_logits = model(row[None]).logits[0]
    ends_patch = model.model.encode(row[None]).segmentation.ends_patch[0]
    # One cache row per offset: each holds the same prefix and decodes the block under its own reveal.
    cache = model.new_cache(block_size, row.shape[0] + block_size)
    encoded_until = 0
    for anchor in range(min_prefix, row.shape[0] - block_size + 1, stride):
        model.open_block(cache, row[encoded_until:anchor].expand(block_size, -1))
        encoded_until = anchor
        targets = row[anchor : anchor + block_size]
        cell_logits = model.block_logits(cache, left_to_right_reveals(targets, model.config.diffusion_mask_id))
        diffusion_logits = cell_logits.diagonal(dim1=0, dim2=1).T
        reference_logits = autoregressive_logits[anchor - 1 : anchor - 1 + block_size]
        diffusion_nats = F.cross_entropy(diffusion_logits, targets, reduction="none")
        autoregressive_nats = F.cross_entropy(reference_logits, targets, reduction="none")
        agrees = diffusion_logits.argmax(dim=-1) == reference_logits.argmax(dim=-1)
        kind = ANCHOR_KINDS[0] if bool(ends_patch[anchor - 1]) else ANCHOR_KINDS[1]
        for offset in range(block_size):
            result.tallies[kind][offset].add(
                float(diffusion_nats[offset]), float(autoregressive_nats[offset]), bool(agrees[offset])
            )


def probe(
    model: BltDiffusionForCausalLM,
    rows: torch.Tensor,
    block_size: int | None = None,
    stride: int = 1,
    min_prefix: int = 8,
) -> ProbeResult:
    """Probe the diffusion head on `rows` (rows, seq) of held-out bytes; `block_size` defaults to the trained one."""
    block_size = block_size or model.config.diffusion_block_size
    if block_size <= 0:
        raise ValueError("The probe needs a BLT-D model (`config.diffusion_block_size` > 0).")
    result = ProbeResult(block_size, {kind: [OffsetTally() for _ in range(block_size)] for kind in ANCHOR_KINDS})
    for row in rows:
        probe_row(model, row, result, stride, min_prefix)
    return result


def report(result: ProbeResult) -> str:
    lines = []
    for kind in ANCHOR_KINDS:
        tallies = result.tallies[kind]
        if not any(tally.cells for tally in tallies):
            continue
        lines += [
            f"Anchor: {kind} ({tallies[0].cells} blocks)",
            "",
            "| offset | diffusion head (bits) | autoregressive (bits) | gap (bits) | argmax agreement |",
            "|---:|---:|---:|---:|---:|",
        ]
        for offset, tally in enumerate(tallies):
            diffusion, autoregressive = tally.bits()
            lines.append(
                f"| {offset} | {diffusion:.3f} | {autoregressive:.3f} | {diffusion - autoregressive:+.3f} | "
                f"{tally.agreements / tally.cells:.1%} |"
            )
        lines += ["", f"Mean gap over offsets: {result.mean_gap(kind):+.3f} bits", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a BLT-D checkpoint directory")
    parser.add_argument("--rows", type=int, default=32, help="held-out rows to probe")
    parser.add_argument("--row-bytes", type=int, default=256)
    parser.add_argument("--stride", type=int, default=3, help="bytes between consecutive block anchors")
    parser.add_argument("--block-size", type=int, help="default: the trained block size")
    parser.add_argument("--json", help="also write the per-offset figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = BltDiffusionForCausalLM.from_pretrained(args.model).eval()
    dataset = pack_byte_sequences(stdlib_source_files("heldout"), args.row_bytes).with_format("torch")
    rows = dataset.select(evenly_spaced_rows(len(dataset), args.rows))[:]["input_ids"]
    result = probe(model, rows, args.block_size, args.stride)
    print(f"Model: {args.model}; {len(rows)} held-out rows of {args.row_bytes} bytes, a block every {args.stride}")
    print()
    print(report(result))
    if args.json:
        with open(args.json, "x", encoding="utf-8") as handle:
            json.dump({"model": args.model, "block_size": result.block_size, **result.as_dict()}, handle, indent=1)


if __name__ == "__main__":
    main()
