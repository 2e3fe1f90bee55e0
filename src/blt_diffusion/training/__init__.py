"""Training pipeline for BLT and BLT-D models: offline byte data, patcher training and threshold calibration, and
`transformers.Trainer`-based training of the main model. Needs the `train` extra (`datasets`)."""

from .data import (
    compressed_bits_per_byte,
    heldout_bits_per_byte,
    pack_byte_sequences,
    split_text_files,
    stdlib_source_files,
    text_files,
)
from .patcher import PatcherLanguageModel, calibrate_patching_threshold, train_patcher
from .pipeline import MODEL_CONFIGS, build_model, run_training
from .trainer import BltTrainer, TimeLimitCallback, train_model, training_arguments

__all__ = [
    "MODEL_CONFIGS",
    "BltTrainer",
    "PatcherLanguageModel",
    "TimeLimitCallback",
    "build_model",
    "calibrate_patching_threshold",
    "compressed_bits_per_byte",
    "heldout_bits_per_byte",
    "pack_byte_sequences",
    "run_training",
    "split_text_files",
    "stdlib_source_files",
    "text_files",
    "train_model",
    "train_patcher",
    "training_arguments",
]
