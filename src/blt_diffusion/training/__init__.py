"""Training pipeline for BLT and BLT-D models: offline byte data, patcher training and threshold calibration, and
`transformers.Trainer`-based training of the main model. Needs the `train` extra (`datasets`)."""

from .data import (
    heldout_bits_per_byte,
    pack_byte_sequences,
    stdlib_source_files,
    text_files,
)
from .patcher import PatcherLanguageModel, calibrate_patching_threshold, train_patcher
from .trainer import BltTrainer, TimeLimitCallback, train_model, training_arguments

__all__ = [
    "BltTrainer",
    "PatcherLanguageModel",
    "TimeLimitCallback",
    "calibrate_patching_threshold",
    "heldout_bits_per_byte",
    "pack_byte_sequences",
    "stdlib_source_files",
    "text_files",
    "train_model",
    "train_patcher",
    "training_arguments",
]
