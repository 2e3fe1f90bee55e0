"""The training recipe's options: `TrainingRecipe`, the model size presets it names, and its `TrainingArguments`.

`examples/train.py` parses both with `transformers.HfArgumentParser((TrainingRecipe, TrainingArguments))`, and
`blt-diffusion train` builds its options from `TrainingRecipe`'s fields. This module needs neither `datasets` nor a
model, so that the command line can describe `train` without the training extra.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import torch
from transformers import BltConfig, TrainingArguments

from ..configuration_blt_diffusion import BltDiffusionConfig
from ..random_init import benchmark_blt_config, small_blt_config, tiny_blt_config


@dataclass(frozen=True)
class TrainingSchedule:
    """The default length and peak learning rates of a training run.

    Args:
        max_steps (`int`): main-model optimizer steps; the learning-rate schedule spans them.
        learning_rate (`float`): main-model peak learning rate.
        patcher_max_steps (`int`): patcher optimizer steps.
    """

    max_steps: int
    learning_rate: float
    patcher_max_steps: int


@dataclass(frozen=True)
class ModelPreset:
    """A model size that `TrainingRecipe.model_size` names: how to configure a new model, and how long to train it."""

    blt_config: Callable[[], BltConfig]
    schedule: TrainingSchedule


# Steps that roughly fill 20 minutes (main model) and 3 minutes (patcher) on 2 CPU cores with 8 x 512-byte batches
# (measured with block size 8: about 1.6 s per step for the tiny model, 9-14 s for the 40M one; its patcher about
# 0.5-0.8 s), and peak learning rates: short runs of small models take high rates.
MODEL_PRESETS = {
    "tiny": ModelPreset(tiny_blt_config, TrainingSchedule(max_steps=600, learning_rate=3e-3, patcher_max_steps=1000)),
    "small": ModelPreset(small_blt_config, TrainingSchedule(max_steps=300, learning_rate=2e-3, patcher_max_steps=400)),
    "benchmark": ModelPreset(
        benchmark_blt_config, TrainingSchedule(max_steps=120, learning_rate=1e-3, patcher_max_steps=300)
    ),
}
DEFAULT_MODEL_SIZE = "small"
# Fine-tuning a checkpoint of any size: fewer steps at a lower peak rate than training a new model.
FINE_TUNING_SCHEDULE = TrainingSchedule(max_steps=200, learning_rate=3e-4, patcher_max_steps=400)
DEFAULT_PATCHER_MINUTES = 3.0
# How a new BLT-D model trains, where it departs from the config's defaults (the paper's, which checkpoints saved
# without these fields keep). Measured by fine-tuning the shipped model 400 steps each way and probing its diffusion
# head (`benchmarks/probe_diffusion_head.py`, benchmarks/README.md): cells through the local encoder took the mean
# gap to autoregressive prediction from 0.53 to 0.13 bits inside patches and from 0.27 to 0.09 at patch starts;
# anchoring half the blocks inside patches took the first from 0.55 to 0.53.
# The recipe options that set a BLT-D model config field, and that field.
DIFFUSION_CONFIG_FIELDS = {
    "mid_patch_share": "diffusion_mid_patch_share",
    "distillation_weight": "diffusion_distillation_weight",
    "cell_embedding": "diffusion_cell_embedding",
    "encoder_gradient_scale": "diffusion_encoder_gradient_scale",
    "diffusion_weight": "diffusion_loss_weight",
}
NEW_MODEL_DIFFUSION = {"diffusion_cell_embedding": "encoder", "diffusion_mid_patch_share": 0.5}
# Below the main model's output directory: where the patcher's Trainer runs (it saves nothing there).
PATCHER_OUTPUT_DIR = "patcher_trainer"

# The `TrainingArguments` that the recipe sets: AdamW with β2 0.95 and weight decay, 5% warmup then cosine decay, logs
# every 10 steps, a checkpoint every tenth of the steps (the last two kept) to resume an interrupted run from, no
# reporting integrations, and only the loss from evaluation (gathering (batch, seq, vocab) logits would waste memory).
TRAINING_DEFAULTS = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1.0,
    # A float below 1 is a fraction of the training steps.
    "warmup_steps": 0.05,
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "lr_scheduler_type": "cosine",
    "logging_steps": 10,
    "save_strategy": "steps",
    # A float below 1 is a fraction of the training steps.
    "save_steps": 0.1,
    "save_total_limit": 2,
    "prediction_loss_only": True,
    "report_to": "none",
    "seed": 0,
}


@dataclass(frozen=True)
class AtLeast:
    """`Annotated` metadata of an integer field: its smallest valid value.

    `HfArgumentParser` reads the plain type; `TrainingRecipe` checks the bound, and `blt-diffusion train` rejects
    smaller values as it parses them.
    """

    minimum: int


def lower_bounds() -> dict[str, int]:
    """The smallest valid value of each `TrainingRecipe` field that has one (`AtLeast`), by field name."""
    hints = get_type_hints(TrainingRecipe, include_extras=True)
    return {
        name: bound.minimum
        for name, hint in hints.items()
        for bound in getattr(hint, "__metadata__", ())
        if isinstance(bound, AtLeast)
    }


@dataclass
class TrainingRecipe:
    """What to train, on which text and for how long, and whether to replace or continue a previous run in the output
    directory: the options of `run_training` that `TrainingArguments` lacks.

    A new model (`model_size`) or a checkpoint (`init_from`) goes through three stages: the entropy patcher is trained,
    the patching threshold is calibrated, and the main model is trained with the patcher frozen; a checkpoint skips
    the first two unless `train_patcher`. Options left None that depend on the model take its preset's value
    (`MODEL_PRESETS`), or `FINE_TUNING_SCHEDULE`'s for a checkpoint: see `stage_arguments`.

    Field metadata serves `HfArgumentParser` and `blt-diffusion train` alike: `help`, `metavar`, `choices`, and
    `aliases` (the command line's option names where they differ from the field's).
    """

    model_size: str | None = field(
        default=None,
        metadata={
            "aliases": ["--config"],
            "choices": tuple(MODEL_PRESETS),
            "help": f"size of a new model: about 0.2M, 10M or 40M parameters (default: {DEFAULT_MODEL_SIZE})",
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "metavar": "DIR",
            "help": "fine-tune this checkpoint instead, saved by this package or by transformers' BltForCausalLM",
        },
    )
    block_size: Annotated[int, AtLeast(0)] = field(
        default=8, metadata={"metavar": "B", "help": "diffusion block size; 0 trains a plain BLT"}
    )
    mid_patch_share: float | None = field(
        default=None,
        metadata={
            "metavar": "P",
            "help": "share of diffusion training blocks anchored inside a patch instead of at its start, as decoding "
            f"places most blocks (default: the checkpoint's, {NEW_MODEL_DIFFUSION['diffusion_mid_patch_share']} "
            "for a new model)",
        },
    )
    cell_embedding: str | None = field(
        default=None,
        metadata={
            "choices": ("table", "encoder"),
            "help": "how diffusion cells reach the decoder: their own embedding table, or through the local encoder "
            f"as clean bytes do (default: the checkpoint's, {NEW_MODEL_DIFFUSION['diffusion_cell_embedding']} for a "
            "new model)",
        },
    )
    distillation_weight: float | None = field(
        default=None,
        metadata={
            "metavar": "W",
            "help": "weight of self-distillation: masked diffusion cells also learn the model's own autoregressive "
            "prediction of their byte (default: the checkpoint's, 0 for a new model)",
        },
    )
    diffusion_weight: float | None = field(
        default=None,
        metadata={
            "metavar": "W",
            "help": "weight of the diffusion term in the loss (clean + W x diffusion); below 1 protects next-byte "
            "quality (default: the checkpoint's, 1 for a new model)",
        },
    )
    encoder_gradient_scale: float | None = field(
        default=None,
        metadata={
            "metavar": "S",
            "help": "with cells through the encoder, the factor on the diffusion loss's gradient into the local "
            "encoder; below 1 protects next-byte quality (default: the checkpoint's, 1 for a new model)",
        },
    )
    data: list[str] | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "text files and directories to train on; about one file in 20, chosen by a hash of its path, is "
            "held out (default: the Python standard library, held out by module)",
        },
    )
    heldout_data: list[str] | None = field(
        default=None,
        metadata={"metavar": "PATH", "help": "held-out files and directories; all of --data is then trained on"},
    )
    suffixes: list[str] = field(
        default_factory=lambda: [".py", ".txt", ".md"],
        metadata={
            "aliases": ["--suffix"],
            "metavar": "SUFFIX",
            "help": "read only files with these suffixes in directories",
        },
    )
    sequence_length: Annotated[int, AtLeast(1)] = field(
        default=512, metadata={"metavar": "N", "help": "bytes per training row"}
    )
    max_bytes: Annotated[int | None, AtLeast(1)] = field(
        default=None, metadata={"metavar": "N", "help": "train on only the first N bytes of text (quick runs)"}
    )
    minutes: float | None = field(
        default=20.0,
        metadata={"metavar": "M", "help": "stop training after M minutes even if steps remain"},
    )
    train_patcher: bool = field(
        default=False,
        metadata={"help": "with --init-from: also train the checkpoint's patcher and recalibrate its threshold"},
    )
    patcher_steps: Annotated[int | None, AtLeast(1)] = field(
        default=None,
        metadata={
            "metavar": "N",
            "help": "patcher optimizer steps (default: per --config, "
            f"{FINE_TUNING_SCHEDULE.patcher_max_steps} with --init-from)",
        },
    )
    patcher_minutes: float | None = field(
        default=None,
        metadata={
            "metavar": "M",
            "help": "stop patcher training after M minutes even if steps remain "
            f"(default: {DEFAULT_PATCHER_MINUTES:g})",
        },
    )
    patcher_learning_rate: float = field(
        default=3e-3, metadata={"metavar": "LR", "help": "patcher peak learning rate"}
    )
    bytes_per_patch: float = field(
        default=4.0, metadata={"metavar": "N", "help": "mean patch length that the patching threshold is set to"}
    )
    max_patch_length: Annotated[int | None, AtLeast(1)] = field(
        default=8, metadata={"metavar": "N", "help": "longest patch, set with the threshold"}
    )
    calibration_rows: Annotated[int, AtLeast(1)] = field(
        default=64, metadata={"metavar": "N", "help": "training rows, evenly spaced, to set the threshold on"}
    )
    eval_rows: Annotated[int, AtLeast(1)] = field(
        default=64, metadata={"metavar": "N", "help": "held-out rows, evenly spaced, to measure bits per byte on"}
    )
    threads: Annotated[int | None, AtLeast(1)] = field(
        default=None,
        metadata={
            "metavar": "N",
            "help": "CPU threads per process for PyTorch (default: PyTorch's, which follows OMP_NUM_THREADS)",
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "train even if the output directory holds a model or checkpoints: start over, replacing the "
            "checkpoints as the main model's training starts and the model once the new one is trained",
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue the interrupted run in the output directory from its last checkpoint, with the same "
            "options, as if it had not stopped",
        },
    )

    def __post_init__(self):
        for name, minimum in lower_bounds().items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other: start the run over, or continue it.")
        if self.init_from is not None:
            if self.model_size is not None:
                raise ValueError("--config and --init-from exclude each other: a new model, or a checkpoint.")
            if not self.train_patcher and (self.patcher_steps is not None or self.patcher_minutes is not None):
                raise ValueError(
                    "--patcher-steps and --patcher-minutes need --train-patcher when fine-tuning (--init-from)"
                )
        elif self.model_size is not None and self.model_size not in MODEL_PRESETS:
            raise ValueError(f"Unknown model size {self.model_size!r}; valid: {', '.join(MODEL_PRESETS)}.")
        if self.max_patch_length is not None and self.bytes_per_patch > self.max_patch_length:
            raise ValueError(
                f"`bytes_per_patch` ({self.bytes_per_patch}) cannot exceed `max_patch_length` "
                f"({self.max_patch_length})."
            )
        self.check_diffusion_options()
        # Suffixes may be given without their dot (`--suffix txt md`).
        self.suffixes = ["." + suffix.lstrip(".") for suffix in self.suffixes]

    def diffusion_options(self) -> dict[str, Any]:
        """The `DIFFUSION_CONFIG_FIELDS` options given, as model config fields."""
        given = {option: getattr(self, option) for option in DIFFUSION_CONFIG_FIELDS}
        return {DIFFUSION_CONFIG_FIELDS[option]: value for option, value in given.items() if value is not None}

    def check_diffusion_options(self) -> None:
        """Check the diffusion options before any training, by the model config's own rules, naming the option."""
        try:
            BltDiffusionConfig(**self.diffusion_options())
        except ValueError as error:
            message = str(error)
            for option, config_field in DIFFUSION_CONFIG_FIELDS.items():
                message = message.replace(f"`{config_field}`", f"`{option}`")
            raise ValueError(message) from None

    def model_config_overrides(self) -> dict[str, Any]:
        """The model config fields that the recipe sets: on a checkpoint those given, on a new model also
        `NEW_MODEL_DIFFUSION` for those not given."""
        overrides = {"diffusion_block_size": self.block_size}
        if self.init_from is None:
            overrides |= NEW_MODEL_DIFFUSION
        return overrides | self.diffusion_options()

    @property
    def new_model_size(self) -> str | None:
        """The size of the new model that the recipe trains (`model_size`, or `DEFAULT_MODEL_SIZE`); None when it
        fine-tunes a checkpoint."""
        return None if self.init_from is not None else self.model_size or DEFAULT_MODEL_SIZE

    @property
    def train_new_patcher(self) -> bool:
        """Whether the patcher is trained and the threshold calibrated (stages 1 and 2): always for a new model."""
        return self.init_from is None or self.train_patcher

    @property
    def patcher_max_minutes(self) -> float:
        """The time limit of patcher training: `patcher_minutes`, or `DEFAULT_PATCHER_MINUTES`."""
        return DEFAULT_PATCHER_MINUTES if self.patcher_minutes is None else self.patcher_minutes

    def stage_arguments(self, args: TrainingArguments) -> tuple[TrainingArguments, TrainingArguments]:
        """The `TrainingArguments` of patcher training (stage 1) and of main-model training (stage 3).

        Both start from `args`, and what it leaves to the recipe is filled in here: the main model's
        `max_steps` and `learning_rate` where None, and the patcher's steps unless `patcher_steps` is given, come from
        the model preset (`MODEL_PRESETS`), or from `FINE_TUNING_SCHEDULE` for a checkpoint. An unset `data_seed` is
        `seed`, so that every process of a distributed run shuffles the rows alike (the Trainer then deals each its
        share). The patcher trains at `patcher_learning_rate` in `output_dir/PATCHER_OUTPUT_DIR`, without gradient
        accumulation, activation checkpointing, evaluation or checkpoints (only main-model training resumes).
        """
        size = self.new_model_size
        schedule = FINE_TUNING_SCHEDULE if size is None else MODEL_PRESETS[size].schedule
        main = dataclasses.replace(
            args,
            max_steps=schedule.max_steps if args.max_steps is None else args.max_steps,
            learning_rate=schedule.learning_rate if args.learning_rate is None else args.learning_rate,
            data_seed=args.seed if args.data_seed is None else args.data_seed,
        )
        patcher = dataclasses.replace(
            main,
            output_dir=str(Path(main.output_dir) / PATCHER_OUTPUT_DIR),
            max_steps=schedule.patcher_max_steps if self.patcher_steps is None else self.patcher_steps,
            learning_rate=self.patcher_learning_rate,
            gradient_accumulation_steps=1,
            activation_checkpointing=False,
            eval_strategy="no",
            eval_steps=None,
            save_strategy="no",
        )
        return patcher, main


def training_argument_defaults() -> dict[str, Any]:
    """The recipe's `TrainingArguments` values: `TRAINING_DEFAULTS`, bf16 autocast and pinned memory where a GPU
    supports them, and `max_steps` and `learning_rate` left to the model preset (None, see
    `TrainingRecipe.stage_arguments`).

    Give them to `HfArgumentParser.set_defaults` to parse `TrainingArguments` with the recipe's defaults.
    """
    on_gpu = torch.cuda.is_available()
    return TRAINING_DEFAULTS | {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "dataloader_pin_memory": on_gpu,
        "max_steps": None,
        "learning_rate": None,
    }


def training_arguments(output_dir: str, **overrides) -> TrainingArguments:
    """`TrainingArguments` with the recipe's defaults (`training_argument_defaults`), then `overrides`.

    `max_steps` and `learning_rate` stay None unless given, for `run_training` to take them from the model preset:
    give both to train with `train_model` or `train_patcher` directly.
    """
    return TrainingArguments(output_dir=output_dir, **(training_argument_defaults() | overrides))
