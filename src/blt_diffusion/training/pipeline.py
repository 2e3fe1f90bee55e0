"""The whole training recipe in one call, shared by `examples/train.py` and `blt-diffusion train`.

Three stages, as in the BLT recipe:

1. train the entropy patcher, a small causal byte LM;
2. set the patching threshold so that patches have a chosen mean length on training text;
3. train the main model with the patcher frozen, then measure bits per byte on held-out files.

Fine-tuning a checkpoint skips the first two stages and keeps the checkpoint's patcher and threshold.

Launched in several processes (`torchrun`, `accelerate launch`), every process runs every stage on the same data: the
Trainers give each process its own rows of every step and average the gradients, so that the processes keep identical
weights, and only the main process writes.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..configuration_blt_diffusion import BltDiffusionConfig
from ..modeling_blt_diffusion import BltDiffusionForCausalLM
from ..random_init import benchmark_blt_config, small_blt_config, tiny_blt_config
from .data import evenly_spaced_rows, heldout_bits_per_byte, pack_byte_sequences
from .patcher import calibrate_patching_threshold, train_patcher
from .trainer import is_main_process, train_model

logger = logging.getLogger(__name__)

MODEL_CONFIGS = {"tiny": tiny_blt_config, "small": small_blt_config, "benchmark": benchmark_blt_config}
# Per configuration, steps that roughly fill 20 minutes (main model) and 3 minutes (patcher) on 2 CPU cores with
# 8 x 512-byte batches (measured with block size 8: about 1.6 s per step for the tiny model, 9-14 s for the 40M one;
# its patcher about 0.5-0.8 s), and peak learning rates: short runs of small models take high rates.
DEFAULT_MAX_STEPS = {"tiny": 600, "small": 300, "benchmark": 120}
DEFAULT_PATCHER_MAX_STEPS = {"tiny": 1000, "small": 400, "benchmark": 300}
DEFAULT_LEARNING_RATE = {"tiny": 3e-3, "small": 2e-3, "benchmark": 1e-3}
RESULTS_FILE = "eval_results.json"


def build_model(config_name: str, block_size: int) -> BltDiffusionForCausalLM:
    """A randomly initialised model of a size in `MODEL_CONFIGS` with diffusion block size `block_size` (0: BLT)."""
    config = BltDiffusionConfig.from_blt_config(MODEL_CONFIGS[config_name](), diffusion_block_size=block_size)
    return BltDiffusionForCausalLM(config)


def run_training(
    model: BltDiffusionForCausalLM,
    output_dir: str | Path,
    train_files: Sequence[str | Path],
    heldout_files: Sequence[str | Path],
    max_steps: int,
    learning_rate: float,
    max_minutes: float | None = None,
    batch_size: int = 8,
    sequence_length: int = 512,
    max_bytes: int | None = None,
    train_new_patcher: bool = True,
    patcher_max_steps: int = -1,
    patcher_max_minutes: float | None = None,
    patcher_learning_rate: float = 3e-3,
    bytes_per_patch: float = 4.0,
    max_patch_length: int | None = 8,
    calibration_rows: int = 64,
    eval_rows: int = 64,
    eval_steps: int | None = None,
    logging_steps: int = 10,
    seed: int = 0,
    **training_kwargs,
) -> dict[str, float]:
    """Train `model` in place on `train_files` and save it, the tokenizer and its held-out results to `output_dir`.

    Progress goes to this module's logger (`logging.getLogger("blt_diffusion.training.pipeline")`) at INFO level, in
    every process of a distributed run.

    Args:
        model (`BltDiffusionForCausalLM`): a new model (`build_model`) or a checkpoint to fine-tune.
        output_dir (`str` or `Path`): receives the model, tokenizer, `trainer_state.json` and `RESULTS_FILE`.
        train_files, heldout_files: text files, each one document (see `pack_byte_sequences`).
        max_steps (`int`): main-model optimizer steps; the learning-rate schedule spans them.
        learning_rate (`float`): main-model peak learning rate.
        max_minutes (`float`, *optional*): stop main-model training early once this much time has passed.
        batch_size (`int`): rows per process and micro-batch, for both trainings and the evaluation.
        sequence_length (`int`): bytes per row.
        max_bytes (`int`, *optional*): use only this many bytes of training text (quick runs).
        train_new_patcher (`bool`): train the patcher and calibrate the threshold first (stages 1 and 2); False
            keeps the model's own, as fine-tuning should.
        patcher_max_steps (`int`): patcher optimizer steps; -1 trains one epoch.
        patcher_max_minutes (`float`, *optional*): time limit of patcher training.
        patcher_learning_rate (`float`): patcher peak learning rate.
        bytes_per_patch (`float`): mean patch length to calibrate the threshold to.
        max_patch_length (`int`, *optional*): longest patch set by the calibration; None for no limit.
        calibration_rows (`int`): training rows, evenly spaced, to calibrate the threshold on.
        eval_rows (`int`): held-out rows, evenly spaced, to measure bits per byte on.
        eval_steps (`int`, *optional*): also evaluate the held-out rows every this many steps.
        logging_steps (`int`): log the training losses every this many steps.
        seed (`int`): seed of both trainings (data order, masking).
        training_kwargs: other arguments of `training_arguments` for the main model, e.g.
            `gradient_accumulation_steps`, `gradient_checkpointing`.

    Returns:
        `{"heldout_bits_per_byte": ..., "heldout_rows": ..., "patching_threshold": ...}`, also written to
        `output_dir / RESULTS_FILE` (by the main process).

    Raises:
        `ValueError`: the training or held-out files hold less than one row of `sequence_length` bytes.
    """
    output_dir = Path(output_dir)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "Model: %.2fM parameters, diffusion block size %d", num_parameters / 1e6, model.config.diffusion_block_size
    )
    train_rows = pack_byte_sequences(train_files, sequence_length, max_bytes=max_bytes)
    heldout_rows = pack_byte_sequences(heldout_files, sequence_length)
    for name, rows in (("training", train_rows), ("held-out", heldout_rows)):
        if len(rows) == 0:
            raise ValueError(f"The {name} files hold less than one row of {sequence_length} bytes.")
    heldout_rows = heldout_rows.select(evenly_spaced_rows(len(heldout_rows), eval_rows))
    logger.info(
        "Data: %d training and %d held-out files; %d training and %d held-out rows of %d bytes",
        len(train_files),
        len(heldout_files),
        len(train_rows),
        len(heldout_rows),
        sequence_length,
    )

    if train_new_patcher:
        logger.info("Stage 1: training the entropy patcher")
        train_patcher(
            model,
            train_rows,
            str(output_dir / "patcher_trainer"),
            max_steps=patcher_max_steps,
            max_minutes=patcher_max_minutes,
            learning_rate=patcher_learning_rate,
            batch_size=batch_size,
            logging_steps=logging_steps,
            seed=seed,
        )
        calibration_ids = train_rows.select(evenly_spaced_rows(len(train_rows), calibration_rows))
        calibrate_patching_threshold(
            model,
            calibration_ids.with_format("torch")[:]["input_ids"],
            target_bytes_per_patch=bytes_per_patch,
            max_patch_length=max_patch_length,
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
            bytes_per_patch,
        )
    else:
        logger.info("Keeping the model's patcher and threshold (%.4f nats)", model.config.patching_threshold)

    logger.info("Stage 3: training the main model")
    train_model(
        model,
        train_rows,
        heldout_rows if eval_steps else None,
        str(output_dir),
        max_minutes=max_minutes,
        max_steps=max_steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        logging_steps=logging_steps,
        eval_steps=eval_steps,
        seed=seed,
        **training_kwargs,
    )

    results = {
        "heldout_bits_per_byte": heldout_bits_per_byte(model, heldout_rows, batch_size=batch_size),
        "heldout_rows": len(heldout_rows),
        "patching_threshold": model.config.patching_threshold,
    }
    if is_main_process():
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    logger.info("Saved the model, tokenizer and %s to %s", RESULTS_FILE, output_dir)
    return results
