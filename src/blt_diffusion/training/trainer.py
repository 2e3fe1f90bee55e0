"""Training BLT and BLT-D models with `transformers.Trainer`: a wall-clock limit, logs of each loss component, and a
stop at the first non-finite loss, gradient or weight.

Everything here also runs in several processes started by `torchrun` or `accelerate launch` (data parallel): the
Trainer gives each process its own batches and averages the gradients, and only the main process writes files.
"""

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

import datasets
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from transformers import (
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from ..modeling_blt_diffusion import BltDiffusionForCausalLM
from ..tokenization_blt_diffusion import BltDiffusionTokenizer

# Parts of the loss that BLT-D models report next to `loss`: the next-byte (autoregressive) loss and the block
# diffusion loss. Plain BLT models report none of them, or None.
LOSS_COMPONENTS = ("clean_loss", "diffusion_loss")


def is_main_process() -> bool:
    """Whether this process is the main one (rank 0) of a distributed launch, or runs alone.

    Read from `RANK`, which `torchrun` and `accelerate launch` set, so that it also holds before a `Trainer` has set up
    the process group (e.g. for the first progress messages).
    """
    return int(os.environ.get("RANK", "0")) == 0


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s whole weights in every process, also when a Trainer has sharded them over the processes (FSDP).

    Gathering is collective: in a distributed run every process must call this.
    """
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def own_class(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` as an instance of its own class inside the block, also when FSDP2 has sharded it.

    `fully_shard` turns the model's class into a subclass defined in torch (`FSDPBltDiffusionForCausalLM`), which
    `save_pretrained` takes for the model's code: it would copy torch's FSDP modules into the directory as the
    `trust_remote_code` modeling code, and point the config's `auto_map` at them.
    """
    sharded_class = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(base for base in sharded_class.__bases__ if not issubclass(base, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight, most often because the learning rate is too high.

    Raised before the optimizer step that non-finite gradients would spoil, and before any checkpoint or model is
    saved from non-finite weights.
    """


class TimeLimitCallback(TrainerCallback):
    """Stop training once `max_minutes` have passed since training began (checked after every optimizer step).

    The learning-rate schedule does not know about the limit: it is defined over `max_steps`, so choose `max_steps`
    to roughly fill the time, and the limit only ends the run early if steps turn out slower than expected. In a
    distributed run every process stops at the step where the first one runs out of time. A run that saves
    checkpoints also saves one at that step, for a later run to resume from; a resumed run counts its time anew.
    """

    def __init__(self, max_minutes: float):
        self.max_seconds = max_minutes * 60
        self.start_time = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.start_time = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        out_of_time = time.monotonic() - self.start_time >= self.max_seconds
        if args.world_size > 1:
            # Clocks differ between processes; one that stopped alone would leave the others waiting forever for its
            # gradients.
            flag = torch.tensor(float(out_of_time), device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag)
        if out_of_time:
            control.should_training_stop = True
            if args.save_strategy != "no":
                control.should_save = True


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite, with a single synchronisation with the device."""
    return bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all())


def divergence_message(step: int, finding: str, args: TrainingArguments) -> str:
    """The message of `TrainingDivergedError`: the step, what went non-finite, and the usual remedy."""
    return (
        f"training diverged at step {step}: {finding}; try a lower learning rate than {args.learning_rate:g}, "
        "the peak of this run"
    )


class DivergenceCallback(TrainerCallback):
    """Raise `TrainingDivergedError` when the gradients, or the weights after an optimizer step, are not finite.

    Non-finite gradients are caught before the optimizer step that they would spread to every weight. The weights are
    checked after each step, before the Trainer saves anything, for an update that overflows from finite gradients.
    In a distributed run the gradients, and so the weights, are the same in every process, which all raise together.
    """

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        gradients = [parameter.grad for parameter in kwargs["model"].parameters() if parameter.grad is not None]
        if not all_finite(gradients):
            step = state.global_step + 1
            raise TrainingDivergedError(divergence_message(step, "the gradients are not finite", args))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not all_finite(kwargs["model"].parameters()):
            raise TrainingDivergedError(
                divergence_message(state.global_step, "its optimizer step left non-finite weights", args)
            )


class BltTrainer(Trainer):
    """A `Trainer` that also logs the loss components of BLT-D models (`clean_loss`, `diffusion_loss`), and stops
    with `TrainingDivergedError` at the first non-finite training loss, gradient or weight (`DivergenceCallback`).

    Each component is averaged over the micro-batches since the last log, separately for training (logged with
    `loss`) and evaluation (logged with `eval_loss` as `eval_clean_loss`, `eval_diffusion_loss`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(DivergenceCallback)
        # Components are per-micro-batch means only if the model does not normalise by the token count of the whole
        # accumulated batch, so the Trainer scales the loss for gradient accumulation itself. With packed rows and no
        # ignored labels every micro-batch has as many targets, so this changes no gradient.
        self.model_accepts_loss_kwargs = False
        self._component_sums = defaultdict(float)
        self._component_counts = defaultdict(int)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        prefix = "" if model.training else "eval_"
        for name in LOSS_COMPONENTS:
            value = outputs.get(name) if isinstance(outputs, dict) else None
            if value is not None:
                # Kept as a tensor: converting to a Python number would synchronise with the device at every step.
                self._component_sums[prefix + name] += value.detach().float()
                self._component_counts[prefix + name] += 1
        return (loss, outputs) if return_outputs else loss

    def train(self, *args, **kwargs):
        """`Trainer.train`, which also closes the progress bar when training diverges: left open, it would be drawn
        once more when the trainer is freed, after the error has been reported."""
        try:
            return super().train(*args, **kwargs)
        except TrainingDivergedError:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, ProgressCallback):
                    callback.on_train_end(self.args, self.state, self.control)
            raise

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`Trainer.training_step`, stopped by a non-finite loss, which the Trainer would log as the mean of the
        previous losses and train on.

        Raises:
            `TrainingDivergedError`: the loss of this micro-batch is not finite.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Checked after the backward pass, as the Trainer checks it for its logs: no extra wait for the device. In a
        # distributed run the other processes stop at the gradients that this loss spoils, or are stopped by the
        # launcher when this one exits.
        if not torch.isfinite(loss):
            step = self.state.global_step + 1
            raise TrainingDivergedError(divergence_message(step, f"the loss is {float(loss)}", self.args))
        return loss

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`Trainer._save` (of the model and checkpoints), with the model's own code for `trust_remote_code` when
        FSDP2 has sharded it (`own_class`)."""
        with own_class(self.model):
            super()._save(output_dir, state_dict)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for prefix, loss_key in (("", "loss"), ("eval_", "eval_loss")):
            if loss_key not in logs:
                continue
            for name in LOSS_COMPONENTS:
                key = prefix + name
                if self._component_counts[key]:
                    logs[key] = round(float(self._component_sums.pop(key)) / self._component_counts.pop(key), 4)
        super().log(logs, start_time)


def check_process_group(args: TrainingArguments) -> None:
    """Refuse to train in processes that a launcher started but that do not form one process group.

    Without GPUs, and unless `ACCELERATE_USE_CPU=1`, `torchrun` and `accelerate launch --multi_gpu` start processes
    that each see a world of one, so that each would train alone and overwrite the others' output.

    Raises:
        `ValueError`: the launcher's `WORLD_SIZE` differs from `args.world_size`.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched but they do not form one process group: each needs a GPU of its "
            "own, or set ACCELERATE_USE_CPU=1 to train on the CPU."
        )


def train_model(
    model: BltDiffusionForCausalLM,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    args: TrainingArguments,
    max_minutes: float | None = None,
    resume_from_checkpoint: str | None = None,
) -> BltDiffusionForCausalLM:
    """Train `model` in place with `BltTrainer`, then save it and the byte tokenizer to `args.output_dir`.

    The patcher stays frozen (see `train_patcher` to train it first). `args.output_dir` also receives
    `trainer_state.json`, whose `log_history` holds every logged loss, component and evaluation, the Trainer's
    `training_args.bin`, and, as `args.save_strategy` says, checkpoints `checkpoint-STEP` to resume from. In a
    distributed run every process trains and only the main one writes.

    Args:
        model (`BltDiffusionForCausalLM`): the model to train.
        train_dataset (`datasets.Dataset`): rows with `input_ids` and `labels`, e.g. from `pack_byte_sequences`.
        eval_dataset (`datasets.Dataset`, *optional*): evaluated as `args.eval_strategy` says if given, and at the
            end.
        args (`TrainingArguments`): e.g. from `training_arguments`. `per_device_train_batch_size` rows per process
            and micro-batch: a distributed run takes that many times `gradient_accumulation_steps` times the number
            of processes per optimizer step.
        max_minutes (`float`, *optional*): stop early once this much time has passed. The learning-rate schedule is
            still defined over `args.max_steps` (or the epochs), so give `max_steps` too for the cosine decay to
            finish.
        resume_from_checkpoint (`str`, *optional*): a checkpoint of an interrupted run with the same arguments and
            data, e.g. `args.output_dir/checkpoint-STEP`, to continue from its step with its optimizer, learning-rate
            schedule, data order and random state: the result is that of the uninterrupted run. `model` should be
            loaded from it (its weights are loaded again, but not its config).

    Returns:
        The trained model (the same object).

    Raises:
        `ValueError`: the processes of a distributed launch cannot train together (`check_process_group`).
        `TrainingDivergedError`: a loss, gradient or weight is not finite; the model is not saved.
    """
    check_process_group(args)
    callbacks = [TimeLimitCallback(max_minutes)] if max_minutes is not None else []
    trainer = BltTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks
    )
    # The Trainer seeds every process alike, so the processes would draw the same diffusion masks for their different
    # rows; the main process keeps `seed`, and a single process trains exactly as before.
    set_seed(args.seed + args.process_index)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    evaluated_last_step = any(
        "eval_loss" in entry and entry["step"] == trainer.state.global_step for entry in trainer.state.log_history
    )
    if eval_dataset is not None and not evaluated_last_step:
        trainer.evaluate()
    # Unlike `model.save_pretrained`, writes from the main process only (and gathers the weights of a sharded model).
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(f"{args.output_dir}/trainer_state.json")
        BltDiffusionTokenizer().save_pretrained(args.output_dir)
    return model
