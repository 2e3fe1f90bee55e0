"""Train a BLT-D (block-diffusion Byte Latent Transformer) model from scratch, or fine-tune a checkpoint, offline.

The recipe of `blt-diffusion train`: train the entropy patcher, set the patching threshold so that patches average 4
bytes (at most 8), train the main model with the patcher frozen, then report held-out bits per byte. By default the
text is the Python standard library, split by module so that the held-out modules are never trained on; `--data`
trains on your files instead, `--init-from` fine-tunes a checkpoint (ours or stock BLT) and keeps its patcher.

The options are those of `blt_diffusion.training.TrainingRecipe` and every field of `transformers.TrainingArguments`
(`--help` lists them), parsed with `HfArgumentParser`, with dashes or underscores alike (`--output-dir`,
`--output_dir`). `TrainingArguments` take the recipe's defaults (AdamW with β2 0.95, warmup then cosine decay, logs
every 10 steps, a checkpoint every tenth of the steps, seed 0); `--max_steps` and `--learning_rate` default to the
model preset's, whose step counts are sized for the time limits on 2 CPU cores; the learning-rate schedules are
defined over the steps, and the time limits only stop a run early. On faster hardware raise `--max-steps`.
`--eval_strategy steps --eval_steps N` also measures the held-out loss every N steps. `--resume` continues an
interrupted run from its last checkpoint, `--overwrite` replaces the model in `--output-dir`; the exit status is 1
when training diverges, 2 for invalid input.

    python examples/train.py --config tiny --minutes 2 --patcher-minutes 0.5 --output-dir runs/tiny
    python examples/train.py --config benchmark --block-size 8 --output-dir runs/blt-d-40m
    python examples/train.py --init-from path/to/stock_blt --block-size 8 --data my_texts/ --output-dir runs/mine

The same script runs data parallel in several processes, each on `--per_device_train_batch_size` rows per step;
only the main process writes. Two processes on the CPU (`accelerate launch --cpu` starts several processes only
through MPI, while `--multi_gpu` starts them with torchrun and ACCELERATE_USE_CPU=1 puts them on the CPU), and one per
GPU:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py --threads 1 ...
    accelerate launch --multi_gpu --num_processes 8 examples/train.py --config benchmark --output-dir runs/blt-d
"""

import sys

from transformers import HfArgumentParser, TrainingArguments

from blt_diffusion import cli
from blt_diffusion.training.recipe import TrainingRecipe, training_argument_defaults


def build_parser() -> HfArgumentParser:
    """The parser of `TrainingRecipe` and `TrainingArguments`, the latter with the recipe's defaults."""
    parser = HfArgumentParser((TrainingRecipe, TrainingArguments), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**training_argument_defaults())
    return parser


def main() -> int:
    parser = build_parser()
    recipe, training_args = parser.parse_args_into_dataclasses()
    try:
        return cli.train(recipe, training_args)
    except cli.CliError as error:
        parser.exit(cli.USAGE_ERROR, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
