"""Training pipeline for BLT and BLT-D models: offline byte data, patcher training and threshold calibration, and
`transformers.Trainer`-based training of the main model. Needs the `train` extra (`datasets`), except `recipe`.

Names are imported from their submodules on first use, so that `blt_diffusion.training.recipe`, which the command line
reads to describe `train`, loads without the training extra.
"""

import importlib

_SUBMODULES = {
    "data": [
        "compressed_bits_per_byte",
        "heldout_bits_per_byte",
        "pack_byte_sequences",
        "split_text_files",
        "stdlib_source_files",
        "text_files",
    ],
    "patcher": ["PatcherLanguageModel", "calibrate_patching_threshold", "train_patcher"],
    "pipeline": ["build_model", "initial_model", "run_training", "training_files"],
    "recipe": [
        "DEFAULT_MODEL_SIZE",
        "FINE_TUNING_SCHEDULE",
        "MODEL_PRESETS",
        "ModelPreset",
        "TrainingRecipe",
        "TrainingSchedule",
        "training_argument_defaults",
        "training_arguments",
    ],
    "trainer": [
        "BltTrainer",
        "DivergenceCallback",
        "TimeLimitCallback",
        "TrainingDivergedError",
        "check_process_group",
        "train_model",
    ],
}
_SUBMODULE_OF = {name: submodule for submodule, names in _SUBMODULES.items() for name in names}

__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name: str):
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)
    # Later lookups find the name directly, without this function.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
