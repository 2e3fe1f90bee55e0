"""Training BLT and BLT-D models with `transformers.Trainer`: a wall-clock limit and logs of each loss component.

Everything here also runs in several processes started by `torchrun` or `accelerate launch` (data parallel): the
Trainer gives each process its own batches and averages the gradients, and only the main process writes files.
"""

import os
import time
from collections import defaultdict

import datasets
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments, set_seed

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


class TimeLimitCallback(TrainerCallback):
    """Stop training once `max_minutes` have passed since training began (checked after every optimizer step).

    The learning-rate schedule does not know about the limit: it is defined over `max_steps`, so choose `max_steps`
    to roughly fill the time, and the limit only ends the run early if steps turn out slower than expected. In a
    distributed run every process stops at the step where the first one runs out of time.
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


class BltTrainer(Trainer):
    """A `Trainer` that also logs the loss components of BLT-D models (`clean_loss`, `diffusion_loss`).

    Each component is averaged over the micro-batches since the last log, separately for training (logged with
    `loss`) and evaluation (logged with `eval_loss` as `eval_clean_loss`, `eval_diffusion_loss`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for prefix, loss_key in (("", "loss"), ("eval_", "eval_loss")):
            if loss_key not in logs:
                continue
            for name in LOSS_COMPONENTS:
                key = prefix + name
                if self._component_counts[key]:
                    logs[key] = round(float(self._component_sums.pop(key)) / self._component_counts.pop(key), 4)
        super().log(logs, start_time)


def training_arguments(
    output_dir: str,
    max_steps: int = -1,
    num_train_epochs: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.1,
    adam_beta2: float = 0.95,
    max_grad_norm: float = 1.0,
    lr_scheduler_type: str = "cosine",
    logging_steps: int = 10,
    eval_steps: int | None = None,
    gradient_checkpointing: bool = False,
    seed: int = 0,
) -> TrainingArguments:
    """`TrainingArguments` for byte-LM training: AdamW with β2 0.95 and weight decay, warmup then cosine decay, no
    checkpoints during training, no reporting integrations, bf16 autocast only on a GPU that supports it.

    `max_steps` > 0 overrides `num_train_epochs`; the schedule spans whichever defines the run. `warmup_ratio` is a
    fraction of it. With `eval_steps`, an evaluation dataset is evaluated every `eval_steps` steps. `batch_size` is
    per process: a distributed run takes `batch_size * gradient_accumulation_steps * processes` rows per step.

    Raises:
        `ValueError`: a launcher started several processes that do not form one process group (without GPUs, unless
            `ACCELERATE_USE_CPU=1`), so that each would train alone and overwrite the others' output.
    """
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        num_train_epochs=num_train_epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # A float below 1 is a fraction of the training steps.
        warmup_steps=warmup_ratio,
        weight_decay=weight_decay,
        adam_beta2=adam_beta2,
        max_grad_norm=max_grad_norm,
        lr_scheduler_type=lr_scheduler_type,
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        # Only the loss is needed from evaluation; gathering (batch, seq, vocab) logits would waste memory.
        prediction_loss_only=True,
        save_strategy="no",
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        report_to=[],
        dataloader_num_workers=0,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched but they do not form one process group: each needs a GPU of its "
            "own, or set ACCELERATE_USE_CPU=1 to train on the CPU."
        )
    return args


def train_model(
    model: BltDiffusionForCausalLM,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    output_dir: str,
    max_minutes: float | None = None,
    max_steps: int = -1,
    learning_rate: float = 4e-4,
    batch_size: int = 8,
    **training_kwargs,
) -> BltDiffusionForCausalLM:
    """Train `model` in place with `BltTrainer`, then save it and the byte tokenizer to `output_dir`.

    The patcher stays frozen (see `train_patcher` to train it first). `output_dir` also receives
    `trainer_state.json`, whose `log_history` holds every logged loss, component and evaluation, and the Trainer's
    `training_args.bin`. In a distributed run every process trains and only the main one writes.

    Args:
        model (`BltDiffusionForCausalLM`): the model to train.
        train_dataset (`datasets.Dataset`): rows with `input_ids` and `labels`, e.g. from `pack_byte_sequences`.
        eval_dataset (`datasets.Dataset`, *optional*): evaluated every `eval_steps` steps if given, and at the end.
        output_dir (`str`): where the model, tokenizer and trainer state are saved.
        max_minutes (`float`, *optional*): stop early once this much time has passed. The learning-rate schedule is
            still defined over `max_steps` (or the epochs), so give `max_steps` too for the cosine decay to finish.
        max_steps (`int`): optimizer steps; -1 trains `num_train_epochs` (default 1) epochs.
        learning_rate (`float`): peak learning rate.
        batch_size (`int`): rows per device and micro-batch.
        training_kwargs: other arguments of `training_arguments`: `gradient_accumulation_steps`, `warmup_ratio`,
            `weight_decay`, `adam_beta2`, `max_grad_norm`, `lr_scheduler_type`, `logging_steps`, `eval_steps`,
            `gradient_checkpointing`, `num_train_epochs`, `seed`.

    Returns:
        The trained model (the same object).
    """
    args = training_arguments(
        output_dir, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, **training_kwargs
    )
    callbacks = [TimeLimitCallback(max_minutes)] if max_minutes is not None else []
    trainer = BltTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks
    )
    # The Trainer seeds every process alike, so the processes would draw the same diffusion masks for their different
    # rows; the main process keeps `seed`, and a single process trains exactly as before.
    set_seed(args.seed + args.process_index)
    trainer.train()
    evaluated_last_step = any(
        "eval_loss" in entry and entry["step"] == trainer.state.global_step for entry in trainer.state.log_history
    )
    if eval_dataset is not None and not evaluated_last_step:
        trainer.evaluate()
    # Unlike `model.save_pretrained`, writes from the main process only (and gathers the weights of a sharded model).
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(f"{output_dir}/trainer_state.json")
        BltDiffusionTokenizer().save_pretrained(output_dir)
    return model
