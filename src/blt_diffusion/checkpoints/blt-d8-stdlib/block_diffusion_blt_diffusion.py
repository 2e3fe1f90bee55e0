"""The block-diffusion training objective of BLT-D: corrupted blocks, who attends whom, and the two loss terms.

A training pass decodes [clean bytes ; block cells] in one local-decoder call (`BltDiffusionModel.decode_with_blocks`):
clean bytes learn next-byte prediction as in BLT, and each block of `diffusion_block_size` cells, anchored at a patch
start and partly masked, learns to fill its masked cells from the clean bytes before it and its own revealed cells.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .cache_blt_diffusion import build_attention_context

if TYPE_CHECKING:
    from .configuration_blt_diffusion import BltDiffusionConfig
    from .modeling_blt_diffusion import EncodedBytes


@dataclass
class DiffusionBlocks:
    """Corrupted blocks of the block-diffusion objective (BLT-D): B cells each, anchored at patch starts or inside
    patches, as blocks fall at inference.

    A block anchored at slot s covers the bytes at slots s .. s + B - 1, keeps their positions for RoPE and sees only
    clean bytes before s. Its cells read the latent that inference gives a block there: at a patch start, the latent
    of the patch that ends at s - 1; inside a patch, the provisional latent of that patch's bytes before s, pooled and
    globally encoded as if the patch closed at s - 1.

    `starts` (batch, blocks): the anchor slot, -1 where a row has fewer blocks. `input_ids` (batch, blocks, B): each
    cell's input, its byte or the mask id. `masked` (batch, blocks, B): cells replaced by the mask. `targets` (batch,
    blocks, B): the byte at each cell's own position, -100 past the end of the row or where the label is ignored.
    `valid` (batch, blocks, B): cells inside their row (cells past the end are padding that no cell attends).
    `mask_ratio` (batch,): the example's masking probability t; masked cells are weighted 1 / t in the loss.
    `open_patch_starts` (batch, blocks), *optional*: the first slot of the patch the anchor lies in (the anchor
    itself at a patch start); None when every block is anchored at a patch start.
    """

    starts: torch.Tensor
    input_ids: torch.Tensor
    masked: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor
    mask_ratio: torch.Tensor
    open_patch_starts: torch.Tensor | None = None

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[-1]

    @property
    def mid_patch(self) -> torch.Tensor:
        """Blocks anchored inside a patch, (batch, blocks) boolean."""
        if self.open_patch_starts is None:
            return torch.zeros_like(self.starts, dtype=torch.bool)
        return (self.starts >= 0) & (self.open_patch_starts < self.starts)

    def cell_slots(self) -> torch.Tensor:
        """Slot of every cell, (batch, blocks * B); cells of absent blocks get slot -1."""
        offsets = torch.arange(self.block_size, device=self.starts.device)
        slots = (self.starts[..., None] + offsets).masked_fill(self.starts[..., None] < 0, -1)
        return slots.flatten(1)


def true_positions(mask: torch.Tensor, fill: int) -> torch.Tensor:
    """Positions of each row's True entries in order, (batch, length) -> (batch, most_true), padded with `fill`."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    # Sorting puts the True positions first, in order; the others are pushed past the end, then filled.
    ordered = torch.where(mask, positions, positions + length).sort(dim=1).values
    ordered = ordered[:, : max(int(mask.sum(dim=1).max()), 1)]
    return ordered.masked_fill(ordered >= length, fill)


def patch_start_slots(ends_patch: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Slots where a patch other than the first starts, (batch, seq) -> (batch, most_starts), -1 padded.

    A slot starts a patch when the byte before it ends one. The first patch (BOS) anchors no block, as in the paper.
    """
    starts_patch = torch.zeros_like(ends_patch)
    starts_patch[:, 1:] = ends_patch[:, :-1] & real[:, 1:]
    return true_positions(starts_patch, fill=-1)


@dataclass
class BlockDiffusionLayout:
    """Who may attend whom in a training pass over [clean bytes ; block cells], kept in parts so that attention
    never scores the pairs that are always excluded (clean bytes reading cells, cells reading other blocks).

    Clean bytes attend clean bytes causally (`clean_mask`). A cell attends the clean bytes strictly before its
    block's anchor (`cells_to_clean`), never its own clean twin or anything after it, and the cells of its own
    block bidirectionally (`cells_to_block`). With a window W, no query reads a clean key W or more positions behind.

    `clean_mask` (batch, 1, clean, clean) or None when all may attend; `cells_to_clean` (batch, 1, cells, clean);
    `cells_to_block` (batch, 1, blocks, B, B); padding cells are no key but themselves.
    """

    num_clean: int
    block_size: int
    clean_mask: torch.Tensor | None
    cells_to_clean: torch.Tensor
    cells_to_block: torch.Tensor

    @classmethod
    def build(
        cls, starts: torch.Tensor, num_clean: int, blocks: DiffusionBlocks, window: int | None
    ) -> "BlockDiffusionLayout":
        """Layout for `blocks` over `num_clean` clean slots whose rows start at `starts` (batch,)."""
        device = starts.device
        clean_context = build_attention_context(starts, torch.zeros_like(starts), num_clean, window, None)
        clean_slots = torch.arange(num_clean, device=device)
        cell_slots = blocks.cell_slots()
        anchors = blocks.starts.repeat_interleave(blocks.block_size, dim=1)
        cells_to_clean = (clean_slots < anchors[..., None]) & (clean_slots >= starts[:, None, None])
        if window is not None:
            cells_to_clean &= clean_slots > cell_slots[..., None] - window
        own = torch.eye(blocks.block_size, dtype=torch.bool, device=device)
        cells_to_block = blocks.valid[:, :, None, :] | own
        return cls(
            num_clean=num_clean,
            block_size=blocks.block_size,
            clean_mask=clean_context.mask,
            cells_to_clean=cells_to_clean[:, None],
            cells_to_block=cells_to_block[:, None],
        )


def block_diffusion_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: BlockDiffusionLayout, dropout: float
) -> torch.Tensor:
    """Attention over [clean bytes ; block cells] in parts: (batch, heads, clean + cells, head_dim) queries, keys and
    values with as many heads -> (batch, heads, clean + cells, head_dim).

    Cells score only the clean keys and their own block's keys, (cells x clean) + (cells x B) instead of the dense
    (clean + cells)^2, which is what makes training with large blocks affordable.
    """
    num_clean, block_size = layout.num_clean, layout.block_size
    clean_keys, clean_values = key[:, :, :num_clean], value[:, :, :num_clean]
    clean_output = F.scaled_dot_product_attention(
        query[:, :, :num_clean], clean_keys, clean_values, attn_mask=layout.clean_mask, dropout_p=dropout
    )
    scale = query.shape[-1] ** -0.5
    cell_queries = query[:, :, num_clean:].unflatten(2, (-1, block_size))
    block_keys = key[:, :, num_clean:].unflatten(2, (-1, block_size))
    block_values = value[:, :, num_clean:].unflatten(2, (-1, block_size))
    scores_clean = (cell_queries.flatten(2, 3) @ clean_keys.transpose(-1, -2)) * scale
    scores_clean = scores_clean.masked_fill(~layout.cells_to_clean, float("-inf"))
    scores_block = (cell_queries @ block_keys.transpose(-1, -2)) * scale
    scores_block = scores_block.masked_fill(~layout.cells_to_block, float("-inf")).flatten(2, 3)
    weights = torch.cat([scores_clean, scores_block], dim=-1).softmax(dim=-1, dtype=torch.float32)
    weights = F.dropout(weights.to(query.dtype), p=dropout)
    cell_output = weights[..., :num_clean] @ clean_values
    cell_output = cell_output + (weights[..., num_clean:].unflatten(2, (-1, block_size)) @ block_values).flatten(2, 3)
    return torch.cat([clean_output, cell_output], dim=2)


def sample_diffusion_blocks(
    config: "BltDiffusionConfig",
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    encoded: "EncodedBytes",
    generator: torch.Generator | None = None,
) -> DiffusionBlocks:
    """Corrupt one block of `diffusion_block_size` bytes at every patch start after the first.

    Each example draws one masking probability t = eps + (1 - eps) * u, u ~ U(0, 1), with eps =
    `config.diffusion_min_mask_ratio`: t stays uniform but never reaches 0, where the 1 / t weight would explode
    (the same clipping as LLaDA). Every cell inside the row is then masked independently with probability t.
    Cells past the end of a row are padding: never masked, never supervised, invisible to other cells.

    Args:
        input_ids (`torch.Tensor` of shape `(batch, seq)`): the clean bytes.
        labels (`torch.Tensor` of shape `(batch, seq)`, *optional*): unshifted labels (-100 to ignore); cells
            predict `labels` at their own position. Without labels, cells predict `input_ids`.
        attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*): 0 for padding (either side).
        encoded (`EncodedBytes`): the output of `model.encode` for these bytes, which gives the patch starts.
        generator (`torch.Generator`, *optional*): randomness for t and the masks.
    """
    block_size = config.diffusion_block_size
    batch_size, seq_length = input_ids.shape
    device = input_ids.device
    in_row = encoded.real if attention_mask is None else encoded.real & attention_mask.bool()
    row_ends = encoded.starts + in_row.sum(dim=1)
    patch_starts = patch_start_slots(encoded.segmentation.ends_patch, in_row)
    anchors = patch_starts
    if config.diffusion_mid_patch_share > 0:
        anchors = move_anchors_into_patches(patch_starts, encoded, in_row, config.diffusion_mid_patch_share, generator)
    slots = anchors[..., None] + torch.arange(block_size, device=device)
    valid = (anchors[..., None] >= 0) & (slots < row_ends[:, None, None])
    gather_slots = slots.clamp(0, seq_length - 1).flatten(1)
    cell_bytes = input_ids.gather(1, gather_slots).view_as(slots)
    targets = (labels if labels is not None else input_ids).gather(1, gather_slots).view_as(slots)
    targets = targets.masked_fill(~valid, -100)

    eps = config.diffusion_min_mask_ratio
    mask_ratio = eps + (1 - eps) * torch.rand(batch_size, device=device, generator=generator)
    draws = torch.rand(slots.shape, device=device, generator=generator)
    masked = valid & (draws < mask_ratio[:, None, None])
    cell_inputs = torch.where(valid, cell_bytes, config.pad_token_id)
    return DiffusionBlocks(
        starts=anchors,
        input_ids=cell_inputs.masked_fill(masked, config.diffusion_mask_id),
        masked=masked,
        targets=targets,
        valid=valid,
        mask_ratio=mask_ratio,
        open_patch_starts=patch_starts if config.diffusion_mid_patch_share > 0 else None,
    )


def move_anchors_into_patches(
    patch_starts: torch.Tensor,
    encoded: "EncodedBytes",
    in_row: torch.Tensor,
    share: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Move a random `share` of the block anchors from their patch's start to a uniformly drawn slot inside it.

    At inference a block starts wherever the previous one ended, mostly inside a patch. A patch of n bytes starting
    at slot s can anchor a block at s + 1 .. s + n - 1 (its bytes before the anchor form the open patch, which needs
    at least one byte), so patches of one byte keep their anchor at s. Patches never share bytes, so neither do the
    open patches of the moved blocks.

    Args:
        patch_starts (`torch.Tensor` of shape `(batch, blocks)`): anchors at patch starts, -1 padded.
        encoded (`EncodedBytes`): gives the patch of every byte.
        in_row (`torch.Tensor` of shape `(batch, seq)`): bytes inside their row.

    Returns:
        `torch.Tensor` of shape `(batch, blocks)`: the anchors, -1 padded as `patch_starts`.
    """
    segmentation = encoded.segmentation
    patch_index = segmentation.patch_index.masked_fill(~in_row, 0)
    patch_lengths = torch.zeros_like(segmentation.patch_index).scatter_add_(1, patch_index, in_row.long())
    lengths = patch_lengths.gather(1, patch_index.gather(1, patch_starts.clamp(min=0)))
    draws = torch.rand(patch_starts.shape, device=patch_starts.device, generator=generator)
    offsets = torch.rand(patch_starts.shape, device=patch_starts.device, generator=generator)
    moves = (patch_starts >= 0) & (lengths > 1) & (draws < share)
    inside = 1 + (offsets * (lengths - 1)).long().clamp(max=lengths - 2)
    return torch.where(moves, patch_starts + inside, patch_starts)


def autoregressive_targets(logits: torch.Tensor, blocks: DiffusionBlocks) -> torch.Tensor:
    """The model's own next-byte distribution for the byte at every cell's position, from the clean bytes before it
    (teacher forcing, the prefix the cells' revealed neighbours come from), detached so that it only teaches.

    `logits` (batch, seq, vocab): clean next-byte logits -> (batch, blocks, B, vocab) probabilities.
    """
    # Cells past a row's end are never supervised; any slot will do for them.
    previous_slots = (blocks.cell_slots() - 1).clamp(0, logits.shape[1] - 1)
    gathered = logits.gather(1, previous_slots[..., None].expand(-1, -1, logits.shape[-1]))
    return gathered.detach().softmax(dim=-1).view(*blocks.targets.shape, -1)


def diffusion_losses(
    config: "BltDiffusionConfig",
    clean_loss_function: Callable[..., torch.Tensor],
    logits: torch.Tensor,
    diffusion_logits: torch.Tensor,
    labels: torch.Tensor,
    blocks: DiffusionBlocks,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the BLT-D objective (Eq. 5-7): next-byte loss on clean bytes, and the 1/t-weighted loss
    of masked cells predicting the byte at their own position.

    `config.diffusion_loss_reduction` chooses how each term is normalised:

    - `"mean"` (default): the clean term is the mean over supervised bytes, exactly a plain BLT's loss (so it
      reads as bits per byte and a BLT-D model's clean loss compares with a BLT's); the diffusion term is the
      weighted sum over masked cells divided by the number of supervised cells, an unbiased estimate of the mean
      per-cell loss since each cell is masked with probability t. Both are per byte, weighted 1:1. The paper's
      plain sums would weight the diffusion term about B / (bytes per patch) times more than next-byte
      prediction, which verification (BLT-S, BLT-DV) relies on.
    - `"sum"`: the paper's sums as written, both divided by the same count (supervised clean bytes) so that the
      learning rate does not depend on batch size; relative weights are exactly the paper's.

    With `config.diffusion_distillation_weight` = w > 0, each masked cell also learns the model's own
    autoregressive prediction of its byte (`autoregressive_targets`): its loss becomes the cross-entropy with the
    data byte plus w times the cross-entropy with that distribution, so that parallel decoding learns to agree with
    autoregressive decoding, which verification (BLT-DV) and exact-match rates reward.

    Returns:
        `clean_loss`, `diffusion_loss`, scalars.
    """
    reduction = config.diffusion_loss_reduction
    vocab_size = config.vocab_size
    cell_losses = F.cross_entropy(
        diffusion_logits.flatten(0, -2), blocks.targets.flatten(), ignore_index=-100, reduction="none"
    ).view_as(blocks.targets)
    if config.diffusion_distillation_weight > 0:
        teacher = autoregressive_targets(logits, blocks)
        distillation = -(teacher * diffusion_logits.log_softmax(dim=-1)).sum(dim=-1)
        supervised = blocks.targets != -100
        cell_losses = cell_losses + config.diffusion_distillation_weight * distillation.masked_fill(~supervised, 0)
    weights = blocks.masked.to(cell_losses.dtype) / blocks.mask_ratio[:, None, None]
    weighted_sum = (cell_losses * weights).sum()
    if reduction == "mean":
        clean_loss = clean_loss_function(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch)
        supervised_cells = (blocks.targets != -100).sum().clamp(min=1)
        return clean_loss, weighted_sum / supervised_cells
    shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
    clean_sum = F.cross_entropy(
        logits.flatten(0, -2), shift_labels.flatten().to(logits.device), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (shift_labels != -100).sum().clamp(min=1)
    return clean_sum / count, weighted_sum / count
