"""Training the entropy patcher and calibrating the patching threshold.

BLT's patcher is a small causal byte LM whose next-byte entropies decide where patches end. Inside
`BltDiffusionForCausalLM` it is frozen and returns entropies only; here it is wrapped as a language model with logits
and a loss so that `transformers.Trainer` can train it, before the main model is trained on the patches it defines.
"""

import copy

import datasets
import torch
from torch import nn
from transformers import TrainingArguments
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutput

from ..cache_blt_diffusion import build_attention_context
from ..modeling_blt_diffusion import BltDiffusionForCausalLM, BltDiffusionPatcher
from .trainer import BltTrainer, TimeLimitCallback, check_process_group, gathered_state_dict


class PatcherLanguageModel(nn.Module):
    """A `BltDiffusionPatcher` seen as a causal byte LM: next-byte logits and a shifted cross-entropy loss.

    The wrapped patcher's parameters are shared, not copied, so training this module trains the patcher in place.
    The hidden states are those of `BltDiffusionPatcher.forward`, so the entropy of `softmax(logits)` is exactly what
    the model's patcher computes.

    Args:
        patcher (`BltDiffusionPatcher`): e.g. `model.model.patcher`.
    """

    def __init__(self, patcher: BltDiffusionPatcher):
        super().__init__()
        self.patcher = patcher

    def forward(
        self,
        input_ids: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): byte ids.
            labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): targets, shifted inside; -100 to ignore.
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*): 0 for padding, on the left (positions
                start at each row's first token) or on the right (give those labels -100).

        Returns:
            `CausalLMOutput` with `logits` of shape `(batch, seq, vocab)` (the prediction for the byte after each
            position) and `loss`, the mean next-byte cross-entropy in nats, when `labels` are given.
        """
        batch_size, seq_length = input_ids.shape
        if attention_mask is None:
            starts = torch.zeros(batch_size, dtype=torch.long, device=input_ids.device)
        else:
            # Left padding: the number of leading zeros of each row.
            starts = (attention_mask.cumsum(dim=1) == 0).sum(dim=1)
        no_cache_yet = torch.zeros_like(starts)
        context = build_attention_context(
            starts, no_cache_yet, seq_length, self.patcher.config.sliding_window, buffer=None
        )
        logits = self.patcher.next_byte_logits(input_ids, context).float()
        loss = None if labels is None else ForCausalLMLoss(logits, labels, self.patcher.config.vocab_size)
        return CausalLMOutput(loss=loss, logits=logits)


def train_patcher(
    model: BltDiffusionForCausalLM,
    train_dataset: datasets.Dataset,
    args: TrainingArguments,
    max_minutes: float | None = None,
) -> PatcherLanguageModel:
    """Train `model.model.patcher` as a next-byte LM with `transformers.Trainer`; it stays frozen in `model`.

    Args:
        model (`BltDiffusionForCausalLM`): a model with an entropy patcher (`patch_in_forward=True`).
        train_dataset: rows with `input_ids` and `labels`, e.g. from `pack_byte_sequences`.
        args (`TrainingArguments`): e.g. from `training_arguments`, or `TrainingRecipe.stage_arguments`; the Trainer
            runs in `args.output_dir` but saves nothing there (the patcher is saved with the model). `max_steps` -1
            trains `num_train_epochs` epochs.
        max_minutes (`float`, *optional*): stop earlier when this much time has passed.

    Returns:
        A `PatcherLanguageModel` of the trained patcher (sharing its parameters), e.g. to evaluate its loss.

    Raises:
        `ValueError`: the model has no patcher, or the processes of a distributed launch cannot train together
            (`check_process_group`).
    """
    if model.model.patcher is None:
        raise ValueError("This model has no entropy patcher (`patch_in_forward=False`).")
    check_process_group(args)
    # A Trainer that shards its model (FSDP) leaves the parameters split over the processes and usable only through
    # its wrapper, while the threshold calibration and the main model's training need the whole patcher: a copy is
    # trained, and its gathered weights are loaded back.
    trainee = PatcherLanguageModel(copy.deepcopy(model.model.patcher)).requires_grad_(True)
    callbacks = [TimeLimitCallback(max_minutes)] if max_minutes is not None else []
    trainer = BltTrainer(model=trainee, args=args, train_dataset=train_dataset, callbacks=callbacks)
    trainer.train()
    patcher_model = PatcherLanguageModel(model.model.patcher)
    patcher_model.load_state_dict(gathered_state_dict(trainer.model))
    return patcher_model.eval()


def mean_patch_length(model: BltDiffusionForCausalLM, entropies: torch.Tensor) -> float:
    """Mean length of the patches that the model's own segmentation makes from `entropies` (batch, seq) of whole
    sequences, with the threshold and `max_patch_length` currently in `model.config`. A row's trailing unfinished
    patch counts as a patch."""
    batch_size, seq_length = entropies.shape
    positions = torch.arange(seq_length, device=entropies.device).expand(batch_size, -1)
    nothing_before = torch.zeros(batch_size, dtype=torch.long, device=entropies.device)
    segmentation = model.model.segment(
        entropies,
        positions,
        real=torch.ones_like(positions, dtype=torch.bool),
        open_patch_length=nothing_before,
        num_patches=nothing_before,
        frontier=False,
    )
    num_patches = segmentation.new_patches + (~segmentation.ends_patch[:, -1]).long()
    return batch_size * seq_length / int(num_patches.sum())


@torch.no_grad()
def calibrate_patching_threshold(
    model: BltDiffusionForCausalLM,
    sample_ids: torch.Tensor,
    target_bytes_per_patch: float = 4.0,
    max_patch_length: int | None = 8,
) -> float:
    """Set `model.config.patching_threshold` so that patches on `sample_ids` have the target mean length.

    Also sets `model.config.max_patch_length`. The mean patch length only changes when the threshold crosses one of
    the sample's entropies and grows with it, so a bisection over the sorted entropies finds the threshold whose mean
    is closest to the target.

    Args:
        model (`BltDiffusionForCausalLM`): a model with an entropy patcher; modified in place.
        sample_ids (`torch.Tensor` of shape `(batch, seq)`): representative bytes, without padding.
        target_bytes_per_patch (`float`): mean patch length to aim for.
        max_patch_length (`int`, *optional*): longest patch; None for no limit.

    Returns:
        The threshold now set on `model.config`.
    """
    if max_patch_length is not None and target_bytes_per_patch > max_patch_length:
        raise ValueError(
            f"`target_bytes_per_patch` ({target_bytes_per_patch}) cannot exceed `max_patch_length` "
            f"({max_patch_length})."
        )
    model.config.max_patch_length = max_patch_length
    was_training = model.training
    model.eval()
    entropies = model.model.patcher_entropies(sample_ids.to(model.device))
    model.train(was_training)
    # Position 0 always ends its patch, so its entropy plays no part. Below the lowest candidate every byte is a patch.
    candidates = torch.unique(entropies[:, 1:].flatten()).tolist()
    candidates.insert(0, min(candidates) - 1.0)

    def length_at(index: int) -> float:
        model.config.patching_threshold = candidates[index]
        return mean_patch_length(model, entropies)

    # The smallest index whose mean length reaches the target (or the last index when none does).
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high) // 2
        if length_at(middle) >= target_bytes_per_patch:
            high = middle
        else:
            low = middle + 1
    if low > 0 and abs(length_at(low - 1) - target_bytes_per_patch) < abs(length_at(low) - target_bytes_per_patch):
        low -= 1
    model.config.patching_threshold = candidates[low]
    return candidates[low]
