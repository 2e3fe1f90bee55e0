"""Train a BLT-D (block-diffusion Byte Latent Transformer) model from scratch, or fine-tune a checkpoint, offline.

The recipe of `blt-diffusion train`, whose options this script takes (`--help` lists them): train the entropy patcher,
set the patching threshold so that patches average 4 bytes (at most 8), train the main model with the patcher frozen,
then report held-out bits per byte. By default the text is the Python standard library, split by module so that the
held-out modules are never trained on; `--data` trains on your files instead, `--init-from` fine-tunes a checkpoint
(ours or stock BLT) and keeps its patcher.

The default step counts are sized for the time limits on 2 CPU cores; the learning-rate schedules are defined over
the steps, and the time limits only stop a run early. On faster hardware raise `--max-steps`.

    python examples/train.py --config tiny --minutes 2 --patcher-minutes 0.5 --output-dir runs/tiny
    python examples/train.py --config benchmark --block-size 8 --output-dir runs/blt-d-40m
    python examples/train.py --init-from path/to/stock_blt --block-size 8 --data my_texts/ --output-dir runs/mine

The same script runs data parallel in several processes, each on `--batch-size` rows per step; only the main process
writes. Two processes on the CPU (`accelerate launch --cpu` starts several processes only through MPI, while
`--multi_gpu` starts them with torchrun and ACCELERATE_USE_CPU=1 puts them on the CPU), and one per GPU:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py --threads 1 ...
    accelerate launch --multi_gpu --num_processes 8 examples/train.py --config benchmark --output-dir runs/blt-d
"""

import sys

from blt_diffusion import cli

if __name__ == "__main__":
    sys.exit(cli.main(["train", *sys.argv[1:]]))
