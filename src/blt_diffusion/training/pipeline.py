"""The whole training recipe in one call, shared by `examples/train.py` and `blt-diffusion train`.

Three stages, as in the BLT recipe:

1. train the entropy patcher, a small causal byte LM;
2. set the patching threshold so that patches have a chosen mean length on training text;
3. train the main model with the patcher frozen, then measure bits per byte on held-out files.

Fine-tuning a checkpoint skips the first two stages and keeps the checkpoint's patcher and threshold. The main
model's training saves checkpoints, and a run that stopped during it resumes from the last one
(`TrainingRecipe.resume`), whose model holds the trained patcher and the threshold. A run never replaces a previous
run's model or checkpoints unless told to (`TrainingRecipe.overwrite`).

Launched in several processes (`torchrun`, `accelerate launch`), every process runs every stage on the same data: the
Trainers give each process its own rows of every step and average the gradients, so that the processes keep identical
weights, and only the main process writes.
"""

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from ..configuration_blt_diffusion import BltDiffusionConfig
from ..modelcard_blt_diffusion import EVAL_RESULTS_NAME, PYTHON_STDLIB, write_model_card
from ..modeling_blt_diffusion import BltDiffusionForCausalLM
from .data import (
    evenly_spaced_rows,
    heldout_bits_per_byte,
    pack_byte_sequences,
    skipped_files_note,
    split_text_files,
    stdlib_source_files,
    text_files,
)
from .patcher import calibrate_patching_threshold, train_patcher
from .recipe import MODEL_PRESETS, TrainingRecipe
from .trainer import is_main_process, train_model

logger = logging.getLogger(__name__)

RESULTS_FILE = EVAL_RESULTS_NAME


def build_model(model_size: str, **config_overrides) -> BltDiffusionForCausalLM:
    """A randomly initialised model of a size in `MODEL_PRESETS` with `config_overrides` (e.g.
    `diffusion_block_size`; 0, the default, makes a plain BLT)."""
    blt_config = MODEL_PRESETS[model_size].blt_config()
    config = BltDiffusionConfig.from_blt_config(blt_config, **config_overrides)
    return BltDiffusionForCausalLM(config)


def initial_model(recipe: TrainingRecipe) -> BltDiffusionForCausalLM:
    """The model that `recipe` starts from: a new one of `recipe.new_model_size`, or the checkpoint `recipe.init_from`,
    both with the recipe's config fields (`TrainingRecipe.model_config_overrides`). Seed first (`set_seed`) for
    reproducible new weights."""
    overrides = recipe.model_config_overrides()
    if recipe.init_from is None:
        return build_model(recipe.new_model_size, **overrides)
    return BltDiffusionForCausalLM.from_pretrained(recipe.init_from, **overrides)


def training_files(recipe: TrainingRecipe) -> tuple[list[Path], list[Path]]:
    """The training and held-out files of `recipe`: `data`, split by file unless `heldout_data` is given, and
    `heldout_data`, each defaulting to its split of the standard library.

    Raises:
        `ValueError`: a path does not exist, or a side has no text file (`data` alone: fewer than two, so none can be
            held out).
    """
    suffixes = " ".join(recipe.suffixes)
    for path in (recipe.data or []) + (recipe.heldout_data or []):
        if not Path(path).exists():
            raise ValueError(f"training data not found: {path}")
    if recipe.data is not None and recipe.heldout_data is None:
        try:
            splits = split_text_files(recipe.data, recipe.suffixes)
        except ValueError:
            skipped = skipped_files_note(recipe.data, recipe.suffixes)
            raise ValueError(
                f"--data holds fewer than two text files ({suffixes}){skipped}, so none can be held out: give more, "
                "or --heldout-data"
            ) from None
        return splits["train"], splits["heldout"]
    data, heldout_data = recipe.data, recipe.heldout_data
    train = stdlib_source_files("train") if data is None else text_files(data, recipe.suffixes)
    heldout = stdlib_source_files("heldout") if heldout_data is None else text_files(heldout_data, recipe.suffixes)
    for option, files in (("--data", train), ("--heldout-data", heldout)):
        if not files:
            raise ValueError(f"{option} holds no UTF-8 text files ({suffixes})")
    return train, heldout


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory `checkpoint-STEP`, or None for another name."""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def saved_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint directories `checkpoint-STEP` in `output_dir`, complete or not, by step."""
    found = [path for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if checkpoint_step(path) is not None]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(output_dir: Path) -> Path | None:
    """The completely saved checkpoint of the latest step in `output_dir`, or None."""
    # The Trainer writes its state last: a checkpoint without it was interrupted while being saved.
    complete = [path for path in saved_checkpoints(output_dir) if (path / TRAINER_STATE_NAME).is_file()]
    return complete[-1] if complete else None


def check_output_dir(recipe: TrainingRecipe, output_dir: Path) -> Path | None:
    """Check what a previous run left in `output_dir` against `recipe.overwrite` and `recipe.resume`, and return the
    checkpoint to resume from (None to start afresh).

    Raises:
        `ValueError`: `output_dir` holds a model or checkpoints and neither `overwrite` nor `resume` is set, or
            `resume` is set and it holds no complete checkpoint.
    """
    resumable = last_checkpoint(output_dir)
    if recipe.resume:
        if resumable is None:
            raise ValueError(
                f"--resume: {output_dir} holds no complete checkpoint to continue from (they are saved while the "
                "main model trains): train without --resume"
            )
        return resumable
    holds_model = (output_dir / CONFIG_NAME).is_file() or (output_dir / SAFE_WEIGHTS_NAME).is_file()
    if recipe.overwrite or not (holds_model or saved_checkpoints(output_dir)):
        return None
    found = "a trained model" if holds_model else "the checkpoints of an unfinished run"
    remedies = "--overwrite to start over"
    if holds_model:
        remedies += " (the model is replaced once the new one is trained)"
    if resumable is not None:
        remedies += f" or --resume to continue from its checkpoint at step {checkpoint_step(resumable)}"
    raise ValueError(f"{output_dir} already holds {found}: pass {remedies}, or choose another --output-dir")


def describe_data(recipe: TrainingRecipe, train_files: list[Path], heldout_files: list[Path]) -> dict[str, str]:
    """What the model card says about the data: the training text, the held-out text and its dataset type."""
    if recipe.data is None:
        training = "the Python standard library's source, without tests and without the held-out modules"
    else:
        training = f"{len(train_files)} text files"
    if recipe.heldout_data is None and recipe.data is None:
        return {
            "training_data": training,
            "heldout_data": "the held-out modules of the Python standard library",
            "heldout_dataset_type": PYTHON_STDLIB,
        }
    held_out = "given apart" if recipe.heldout_data is not None else "held out of the data by a hash of their path"
    return {
        "training_data": training,
        "heldout_data": f"{len(heldout_files)} text files {held_out}",
        "heldout_dataset_type": "text",
    }


def training_record(recipe: TrainingRecipe, args: TrainingArguments, training_data: str) -> dict:
    """How the main model was trained, as the model card tells it (`modelcard_blt_diffusion.describe_training`)."""
    return {
        "model_size": recipe.new_model_size,
        "init_from": recipe.init_from,
        "trained_patcher": recipe.train_new_patcher,
        "bytes_per_patch": recipe.bytes_per_patch,
        "max_patch_length": recipe.max_patch_length,
        "block_size": recipe.block_size,
        "data": training_data,
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "rows_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "sequence_length": recipe.sequence_length,
    }


def run_training(
    recipe: TrainingRecipe, training_args: TrainingArguments, model: BltDiffusionForCausalLM | None = None
) -> dict:
    """Train a model as `recipe` says, then save it, the tokenizer, its held-out results and its model card to the
    output directory.

    Progress goes to this module's logger (`logging.getLogger("blt_diffusion.training.pipeline")`) at INFO level, in
    every process of a distributed run.

    Args:
        recipe (`TrainingRecipe`): the model, data, patcher stages and time limits.
        training_args (`TrainingArguments`): the main model's training, e.g. from `training_arguments` or
            `HfArgumentParser`; `max_steps` and `learning_rate` left None take the model preset's (see
            `TrainingRecipe.stage_arguments`, which also derives the patcher's). Evaluation on the held-out rows
            follows its `eval_strategy`; its `seed` also seeds a new model's weights.
        model (`BltDiffusionForCausalLM`, *optional*): the model to train in place, instead of `initial_model(recipe)`;
            it should be the one that `recipe` names. Unused when resuming: the checkpoint holds the model.

    Returns:
        `{"heldout_bits_per_byte": ..., "heldout_rows": ..., "patching_threshold": ..., ...}` (also what the held-out
        rows are and how the model was trained, for its card), written to `output_dir / RESULTS_FILE` by the main
        process, which then writes the model card (`README.md`) with them.

    Raises:
        `ValueError`: the output directory holds a previous run that `recipe` neither overwrites nor resumes
            (`check_output_dir`), the data is missing (`training_files`), or it holds less than one row of
            `sequence_length` bytes.
        `TrainingDivergedError`: a loss, gradient or weight became non-finite; the output directory keeps what it
            held, and the checkpoints of earlier steps.
    """
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    patcher_args, training_args = recipe.stage_arguments(training_args)
    output_dir = Path(training_args.output_dir)
    resume_from = check_output_dir(recipe, output_dir)
    train_files, heldout_files = training_files(recipe)
    if resume_from is not None:
        # The checkpoint's config holds the threshold that stage 2 calibrated.
        model = BltDiffusionForCausalLM.from_pretrained(resume_from)
    elif model is None:
        set_seed(training_args.seed)
        model = initial_model(recipe)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "Model: %.2fM parameters, diffusion block size %d", num_parameters / 1e6, model.config.diffusion_block_size
    )
    train_rows = pack_byte_sequences(train_files, recipe.sequence_length, max_bytes=recipe.max_bytes)
    heldout_rows = pack_byte_sequences(heldout_files, recipe.sequence_length)
    for name, rows in (("training", train_rows), ("held-out", heldout_rows)):
        if len(rows) == 0:
            raise ValueError(f"The {name} files hold less than one row of {recipe.sequence_length} bytes.")
    heldout_rows = heldout_rows.select(evenly_spaced_rows(len(heldout_rows), recipe.eval_rows))
    logger.info(
        "Data: %d training and %d held-out files; %d training and %d held-out rows of %d bytes",
        len(train_files),
        len(heldout_files),
        len(train_rows),
        len(heldout_rows),
        recipe.sequence_length,
    )

    if resume_from is not None:
        logger.info(
            "Resuming from %s with its patcher and threshold (%.4f nats)", resume_from, model.config.patching_threshold
        )
    elif recipe.train_new_patcher:
        logger.info("Stage 1: training the entropy patcher")
        train_patcher(model, train_rows, patcher_args, max_minutes=recipe.patcher_max_minutes)
        calibration_ids = train_rows.select(evenly_spaced_rows(len(train_rows), recipe.calibration_rows))
        calibrate_patching_threshold(
            model,
            calibration_ids.with_format("torch")[:]["input_ids"],
            target_bytes_per_patch=recipe.bytes_per_patch,
            max_patch_length=recipe.max_patch_length,
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # The processes calibrate identical patchers on the same rows, but different devices may round the
            # entropies differently, and every process must cut the same patches.
            threshold = [model.config.patching_threshold]
            torch.distributed.broadcast_object_list(threshold, src=0)
            model.config.patching_threshold = threshold[0]
        logger.info(
            "Stage 2: patching threshold %.4f nats (%.1f bytes per patch)",
            model.config.patching_threshold,
            recipe.bytes_per_patch,
        )
    else:
        logger.info("Keeping the model's patcher and threshold (%.4f nats)", model.config.patching_threshold)

    if recipe.overwrite and is_main_process():
        # The previous run's checkpoints would mix with this run's, in the Trainer's rotation and in a later resume.
        for checkpoint in saved_checkpoints(output_dir):
            shutil.rmtree(checkpoint)
    logger.info("Stage 3: training the main model")
    evaluates = training_args.eval_strategy != "no"
    train_model(
        model,
        train_rows,
        heldout_rows if evaluates else None,
        training_args,
        max_minutes=recipe.minutes,
        resume_from_checkpoint=None if resume_from is None else str(resume_from),
    )

    data = describe_data(recipe, train_files, heldout_files)
    results = {
        "heldout_bits_per_byte": heldout_bits_per_byte(
            model, heldout_rows, batch_size=training_args.per_device_eval_batch_size
        ),
        "heldout_rows": len(heldout_rows),
        "sequence_length": recipe.sequence_length,
        "heldout_data": data["heldout_data"],
        "heldout_dataset_type": data["heldout_dataset_type"],
        "patching_threshold": model.config.patching_threshold,
        "training": training_record(recipe, training_args, data["training_data"]),
    }
    if is_main_process():
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        # The card `save_pretrained` wrote knew neither the results nor the recipe.
        write_model_card(output_dir, model, overwrite=True)
    logger.info("Saved the model, tokenizer, %s and its model card to %s", RESULTS_FILE, output_dir)
    return results
