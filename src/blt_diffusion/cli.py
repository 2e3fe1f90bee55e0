"""The `blt-diffusion` command line.

```
blt-diffusion generate "def fib(n):" --model path/to/checkpoint --max-new-tokens 64 --stats
blt-diffusion generate "def fib(n):" --model runs/blt-d --decoding diffusion --block-size 8 --stats
blt-diffusion train --config small --data my_corpus/ --minutes 20 --output-dir runs/blt-d
blt-diffusion convert path/to/stock_blt path/to/ours --block-size 8
```
"""

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BltConfig, PreTrainedConfig, TextStreamer, set_seed
from transformers.utils import CONFIG_NAME
from transformers.utils import logging as hf_logging

from . import __version__
from .configuration_blt_diffusion import BltDiffusionConfig
from .default_model import DEFAULT_MODEL_DIR, load_default_model
from .generation_blt_diffusion import (
    DECODING_STRATEGIES,
    STRATEGY_OPTIONS,
    UNMASKING_RULES,
    BltDiffusionGenerateOutput,
    StrategyOption,
)
from .modeling_blt_diffusion import BltDiffusionForCausalLM
from .tokenization_blt_diffusion import BltDiffusionTokenizer

PROG = "blt-diffusion"
USAGE_ERROR = 2
# `generate`'s byte budget, shorter than a generation config's (`GENERATION_CONFIG_MAX_NEW_TOKENS`): a quick look.
COMMAND_LINE_MAX_NEW_TOKENS = 128
# Weights that a checkpoint may lack: BLT-D's masked-byte embedding, new when a BLT becomes a BLT-D model.
NEW_PARAMETER_PREFIX = "model.diffusion_embed_tokens."

# `train`: the model sizes of `blt_diffusion.training.MODEL_CONFIGS`, named here so that building the parser does
# not import the training extra (`datasets`); a test keeps the two in step.
MODEL_SIZES = ("tiny", "small", "benchmark")
DEFAULT_MODEL_SIZE = "small"
DEFAULT_SUFFIXES = (".py", ".txt", ".md")
DEFAULT_MINUTES = 20.0
DEFAULT_PATCHER_MINUTES = 3.0
# Fine-tuning a checkpoint of any size: fewer steps at a lower peak rate than training a new model.
FINE_TUNE_MAX_STEPS = 200
FINE_TUNE_LEARNING_RATE = 3e-4
FINE_TUNE_PATCHER_MAX_STEPS = 400

GENERATE_DESCRIPTION = """\
Generate bytes after PROMPT (or the contents of --prompt-file) and write the prompt followed by the generated text to
stdout, then a newline. Special tokens such as end-of-sequence are not written, and bytes that do not form valid
UTF-8 are written as U+FFFD. Notices, --stats and errors go to stderr; errors exit with status 2."""

TRAIN_DESCRIPTION = """\
Train a new BLT-D model (--config), or fine-tune a checkpoint (--init-from), on text files, then measure its bits per
byte on held-out files. A new model goes through three stages: the entropy patcher is trained, the patching
threshold is set so that patches average 4 bytes (at most 8), and the main model is trained with the patcher frozen.
Fine-tuning keeps the checkpoint's patcher and threshold unless --train-patcher is given. The model, its tokenizer,
trainer_state.json and eval_results.json are saved to --output-dir. Progress goes to stderr, the final held-out bits
per byte to stdout. Several processes started by accelerate launch or torchrun train together (data parallel), each
on --batch-size rows per step; only the main process writes. Needs the training extra: pip install
"blt-diffusion[train]"."""

CONVERT_DESCRIPTION = """\
Convert a checkpoint saved by transformers' BltForCausalLM into this package's format: every weight is kept, the
config becomes model type "blt_diffusion", and the tokenizer and modeling code are saved with it, so that the folder
also loads with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) where this package is not
installed."""


class CliError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the `blt-diffusion` command line on `argv` (default: `sys.argv[1:]`) and return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(prog=PROG, description="Byte Latent Transformer (BLT, BLT-D, BLT-S) tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_generate_command(commands)
    add_train_command(commands)
    add_convert_command(commands)
    return parser


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    """The `generate` command: its arguments, and `run_generate` as what it runs."""
    generate = commands.add_parser("generate", help="generate text after a prompt", description=GENERATE_DESCRIPTION)
    generate.set_defaults(run=run_generate)
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("prompt", nargs="?", metavar="PROMPT", help='the prompt text (may be empty: "")')
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (UTF-8, used verbatim)")
    generate.add_argument(
        "--model",
        metavar="PATH",
        help="checkpoint directory, saved by this package or by transformers' BltForCausalLM (default: the small "
        f"BLT-D model shipped with the package, {DEFAULT_MODEL_DIR.name}, trained on the Python standard library)",
    )
    needing_blt_d = [name for name, strategy in DECODING_STRATEGIES.items() if strategy.needs_diffusion_checkpoint]
    generate.add_argument(
        "--decoding",
        metavar="NAME",
        help=f"decoding strategy: {', '.join(sorted(DECODING_STRATEGIES))} (default: the model's generation config; "
        f"{' and '.join(needing_blt_d)} need a BLT-D model)",
    )
    generate.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=COMMAND_LINE_MAX_NEW_TOKENS,
        metavar="N",
        help=f"generate at most N bytes (default: {COMMAND_LINE_MAX_NEW_TOKENS})",
    )
    add_strategy_options(generate)
    generate.add_argument(
        "--do-sample",
        action="store_true",
        default=None,
        help="sample instead of choosing the most likely byte (default: the model's generation config)",
    )
    generate.add_argument("--temperature", type=float, help="sampling temperature (with --do-sample)")
    generate.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely bytes")
    generate.add_argument("--top-p", type=float, metavar="P", help="sample within probability mass P (nucleus)")
    generate.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    generate.add_argument("--stream", action="store_true", help="write the text as it is generated")
    generate.add_argument(
        "--stats",
        action="store_true",
        help="write to stderr the decoder, encoder/global and patcher calls, the estimated memory bandwidth, the "
        "speed in bytes per second and the bytes per decoder call",
    )


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The `train` command: its arguments, and `run_train` as what it runs."""
    train = commands.add_parser(
        "train", help="train a BLT-D model or fine-tune a checkpoint", description=TRAIN_DESCRIPTION
    )
    train.set_defaults(run=run_train)
    train.add_argument("--output-dir", required=True, metavar="DIR", help="where the trained model is saved")
    model = train.add_mutually_exclusive_group()
    model.add_argument(
        "--config",
        choices=MODEL_SIZES,
        help=f"size of a new model: about 0.2M, 10M or 40M parameters (default: {DEFAULT_MODEL_SIZE})",
    )
    model.add_argument(
        "--init-from",
        metavar="DIR",
        help="fine-tune this checkpoint instead, saved by this package or by transformers' BltForCausalLM",
    )
    train.add_argument(
        "--block-size",
        type=non_negative_int,
        default=8,
        metavar="B",
        help="diffusion block size; 0 trains a plain BLT (default: 8)",
    )
    train.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="text files and directories to train on; about one file in 20, chosen by a hash of its path, is held "
        "out (default: the Python standard library, held out by module)",
    )
    train.add_argument(
        "--heldout-data",
        nargs="+",
        metavar="PATH",
        help="held-out files and directories; all of --data is then trained on",
    )
    train.add_argument(
        "--suffix",
        nargs="+",
        dest="suffixes",
        default=DEFAULT_SUFFIXES,
        metavar="SUFFIX",
        help=f"read only files with these suffixes in directories (default: {' '.join(DEFAULT_SUFFIXES)})",
    )
    train.add_argument(
        "--sequence-length", type=positive_int, default=512, metavar="N", help="bytes per training row (default: 512)"
    )
    train.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="rows per process and step (default: 8)"
    )
    train.add_argument(
        "--gradient-accumulation-steps",
        type=positive_int,
        default=1,
        metavar="N",
        help="accumulate the gradients of N batches per optimizer step (default: 1)",
    )
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass, to save memory",
    )
    train.add_argument(
        "--max-steps",
        type=positive_int,
        metavar="N",
        help="optimizer steps; the learning-rate schedule spans them (default: per --config, "
        f"{FINE_TUNE_MAX_STEPS} with --init-from)",
    )
    train.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        metavar="M",
        help=f"stop training after M minutes even if steps remain (default: {DEFAULT_MINUTES:g})",
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        metavar="LR",
        help=f"peak learning rate (default: per --config, {FINE_TUNE_LEARNING_RATE:g} with --init-from)",
    )
    train.add_argument(
        "--train-patcher",
        action="store_true",
        help="with --init-from: also train the checkpoint's patcher and recalibrate its threshold",
    )
    train.add_argument(
        "--patcher-steps",
        type=positive_int,
        metavar="N",
        help=f"patcher optimizer steps (default: per --config, {FINE_TUNE_PATCHER_MAX_STEPS} with --init-from)",
    )
    train.add_argument(
        "--patcher-minutes",
        type=float,
        metavar="M",
        help=f"stop patcher training after M minutes even if steps remain (default: {DEFAULT_PATCHER_MINUTES:g})",
    )
    train.add_argument(
        "--max-bytes", type=positive_int, metavar="N", help="train on only the first N bytes of text (quick runs)"
    )
    train.add_argument(
        "--eval-steps", type=positive_int, metavar="N", help="also measure the held-out loss every N steps"
    )
    train.add_argument(
        "--logging-steps",
        type=positive_int,
        default=10,
        metavar="N",
        help="log the losses every N steps (default: 10)",
    )
    train.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads per process for PyTorch (default: PyTorch's, which follows OMP_NUM_THREADS)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="random seed of initialisation, data order and masking (default: 0)",
    )


def add_convert_command(commands: argparse._SubParsersAction) -> None:
    """The `convert` command: its arguments, and `run_convert` as what it runs."""
    convert = commands.add_parser(
        "convert", help="convert a stock BLT checkpoint to this package's format", description=CONVERT_DESCRIPTION
    )
    convert.set_defaults(run=run_convert)
    convert.add_argument("source", metavar="STOCK_DIR", help="directory saved by transformers' BltForCausalLM")
    convert.add_argument("output", metavar="OUTPUT_DIR", help="where the converted checkpoint is saved")
    convert.add_argument(
        "--block-size",
        type=non_negative_int,
        default=0,
        metavar="B",
        help="make it a BLT-D model of block size B, with a freshly initialised masked-byte embedding to fine-tune "
        "(default: 0, a plain BLT that decodes exactly as the stock one)",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def run_generate(args: argparse.Namespace) -> int:
    """The `generate` command."""
    check_choice(args.decoding, DECODING_STRATEGIES, "decoding strategy")
    check_choice(args.unmasking, UNMASKING_RULES, "unmasking rule")
    prompt = read_prompt(args.prompt, args.prompt_file)
    # Stderr carries only what was asked for (`--stats`, errors), not transformers' weight-loading bar.
    hf_logging.disable_progress_bar()
    model = load_default_model() if args.model is None else load_checkpoint(args.model).model
    decoding = args.decoding or model.generation_config.decoding
    check_decoding(args, decoding, model)
    tokenizer = BltDiffusionTokenizer()
    if args.seed is not None:
        set_seed(args.seed)
    inputs = tokenizer(prompt, return_tensors="pt")
    # The streamer writes the prompt too, once `generate` has accepted the arguments.
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
    start = time.perf_counter()
    try:
        output = model.generate(**inputs, **generation_kwargs(args), streamer=streamer, return_dict_in_generate=True)
    except ValueError as error:
        raise CliError(one_line(error)) from error
    seconds = time.perf_counter() - start
    new_ids = output.sequences[0, inputs.input_ids.shape[1] :]
    if streamer is None:
        print(prompt + tokenizer.decode(new_ids, skip_special_tokens=True))
    if args.stats:
        print_stats(output, len(new_ids), seconds)
    return 0


def check_choice(name: str | None, valid: dict, what: str) -> None:
    """Reject a name this version does not provide, listing those it does (one line, before any model is built)."""
    if name is not None and name not in valid:
        raise CliError(f"unknown {what} {name!r}; valid: {', '.join(sorted(valid))}")


def options_by_readers() -> dict[tuple[str, ...], list[StrategyOption]]:
    """The decoding strategies' options, grouped by the strategies that read them, in registry order."""
    groups: dict[tuple[str, ...], list[StrategyOption]] = {}
    for option in STRATEGY_OPTIONS:
        readers = tuple(name for name, strategy in DECODING_STRATEGIES.items() if option in strategy.options)
        groups.setdefault(readers, []).append(option)
    return groups


def add_strategy_options(generate: argparse.ArgumentParser) -> None:
    """The decoding strategies' option flags, one group per set of strategies that read them."""
    for readers, options in options_by_readers().items():
        group = generate.add_argument_group(f"--decoding {' or '.join(readers)}")
        for option in options:
            group.add_argument(
                option.flag,
                # Integer options count bytes.
                type=positive_int if option.type is int else option.type,
                metavar=option.metavar,
                help=f"{option.help} (default: {option.described_default})",
            )


def check_decoding(args: argparse.Namespace, decoding: str, model: BltDiffusionForCausalLM) -> None:
    """Reject options of another decoding strategy, which `generate` would silently ignore, and a strategy that the
    model cannot run, with one line naming the option."""
    for readers, options in options_by_readers().items():
        given = [option.flag for option in options if getattr(args, option.name) is not None]
        if given and decoding not in readers:
            raise CliError(
                f"only --decoding {' or '.join(readers)} uses {', '.join(given)} (decoding here: {decoding})"
            )
    if not DECODING_STRATEGIES[decoding].runs_on(model.config):
        raise CliError(
            f"this model was not trained for --decoding {decoding} (its diffusion_block_size is 0): use --decoding "
            f"autoregressive, or fine-tune it into a BLT-D model with `{PROG} train --init-from`"
        )
    trained_block_size = model.config.diffusion_block_size
    if args.block_size is not None and args.block_size > trained_block_size:
        raise CliError(f"--block-size {args.block_size} exceeds the model's trained block size {trained_block_size}")


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt given on the command line, or the UTF-8 text of `prompt_file`."""
    if prompt_file is None:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as error:
            raise CliError(f"PROMPT is not valid UTF-8 (at character {error.start})") from None
        return prompt
    path = Path(prompt_file)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CliError(f"prompt file not found: {path}") from None
    except OSError as error:
        raise CliError(f"cannot read prompt file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise CliError(f"prompt file {path} is not valid UTF-8 (byte offset {error.start})") from None


@dataclass
class Checkpoint:
    """A model loaded from a directory, with what the command line reports about it."""

    model: BltDiffusionForCausalLM
    # As saved: "blt" for a stock BLT checkpoint, converted on load.
    saved_model_type: str
    # Weights the directory lacked, freshly initialised.
    new_parameters: list[str]


def load_checkpoint(path: str, **config_overrides) -> Checkpoint:
    """The BLT or BLT-D model in directory `path`, with `config_overrides` (e.g. `diffusion_block_size`) applied.

    Only BLT-D's masked-byte embedding may be missing from the directory: `from_pretrained` would initialise any
    other missing weight at random with just a warning, and run a model that looks loaded but writes noise.
    """
    if not Path(path).is_dir():
        raise CliError(f"model directory not found: {path}")
    if not (Path(path) / CONFIG_NAME).is_file():
        raise CliError(f"cannot load a model from {path}: it has no {CONFIG_NAME}")
    try:
        saved_model_type = PreTrainedConfig.get_config_dict(path)[0].get("model_type")
        if saved_model_type not in (BltConfig.model_type, BltDiffusionConfig.model_type):
            raise CliError(
                f"cannot load a model from {path}: its model type is {saved_model_type!r}, not "
                f"{BltConfig.model_type!r} or {BltDiffusionConfig.model_type!r}"
            )
        model, loading_info = BltDiffusionForCausalLM.from_pretrained(
            path, output_loading_info=True, **config_overrides
        )
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load a model from {path}: {one_line(error)}") from error
    missing = sorted(loading_info["missing_keys"])
    lacking = [name for name in missing if not name.startswith(NEW_PARAMETER_PREFIX)]
    if lacking:
        others = f" and {len(lacking) - 1} other weights" if len(lacking) > 1 else ""
        raise CliError(f"cannot load a model from {path}: it lacks {lacking[0]}{others}")
    return Checkpoint(model.eval(), saved_model_type, missing)


def generation_kwargs(args: argparse.Namespace) -> dict:
    """`generate()` arguments from the command line; options left out keep the model's generation config."""
    options = {option.name: getattr(args, option.name) for option in STRATEGY_OPTIONS} | {
        "decoding": args.decoding,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
    }
    return {"max_new_tokens": args.max_new_tokens} | {
        name: value for name, value in options.items() if value is not None
    }


def print_stats(output: BltDiffusionGenerateOutput, num_new_bytes: int, seconds: float) -> None:
    """Write the cost of the generation to stderr, one `name: value` per line."""
    decoder_calls = int(output.decoder_nfe[0])
    lines = [
        f"generated bytes: {num_new_bytes}",
        f"decoder calls: {decoder_calls}",
        f"encoder/global calls: {int(output.global_nfe[0])}",
        f"patcher calls: {int(output.patcher_nfe[0])}",
        f"estimated memory bandwidth: {float(output.memory_bandwidth_gb[0]):.4g} GB",
        f"speed: {num_new_bytes / seconds:.1f} bytes/s ({seconds:.2f} s)",
        f"bytes per decoder call: {num_new_bytes / decoder_calls:.2f}",
    ]
    print("\n".join(lines), file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    """The `train` command."""
    require_training_extra()
    from .training import build_model, run_training
    from .training.trainer import is_main_process

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train_new_patcher = args.train_patcher or args.init_from is None
    if not train_new_patcher and (args.patcher_steps is not None or args.patcher_minutes is not None):
        raise CliError("--patcher-steps and --patcher-minutes need --train-patcher when fine-tuning (--init-from)")
    train_files, heldout_files = training_files(args.data, args.heldout_data, args.suffixes)
    set_seed(args.seed)
    if args.init_from is not None:
        size = None
        model = load_checkpoint(args.init_from, diffusion_block_size=args.block_size).model
    else:
        size = args.config or DEFAULT_MODEL_SIZE
        model = build_model(size, args.block_size)
    given = {
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "patcher_max_steps": args.patcher_steps,
        "patcher_max_minutes": args.patcher_minutes,
    }
    schedule = default_schedule(size) | {name: value for name, value in given.items() if value is not None}
    # Stdout is for the result: the Trainer's own summaries join the progress messages on stderr. Every process of a
    # distributed run trains, and the main one speaks for them all.
    main_process = is_main_process()
    with progress_messages() if main_process else contextlib.nullcontext(), contextlib.redirect_stdout(sys.stderr):
        try:
            results = run_training(
                model,
                args.output_dir,
                train_files,
                heldout_files,
                max_minutes=args.minutes,
                batch_size=args.batch_size,
                sequence_length=args.sequence_length,
                max_bytes=args.max_bytes,
                train_new_patcher=train_new_patcher,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                gradient_checkpointing=args.gradient_checkpointing,
                eval_steps=args.eval_steps,
                logging_steps=args.logging_steps,
                seed=args.seed,
                **schedule,
            )
        except ValueError as error:
            raise CliError(one_line(error)) from error
    if main_process:
        print(f"held-out bits per byte: {results['heldout_bits_per_byte']:.4f}")
    return 0


def default_schedule(size: str | None) -> dict[str, float]:
    """Default steps, peak learning rates and patcher time limit for a new model of `size`, or fine-tuning (None)."""
    from .training.pipeline import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, DEFAULT_PATCHER_MAX_STEPS

    if size is None:
        steps = {"max_steps": FINE_TUNE_MAX_STEPS, "learning_rate": FINE_TUNE_LEARNING_RATE}
        patcher_max_steps = FINE_TUNE_PATCHER_MAX_STEPS
    else:
        steps = {"max_steps": DEFAULT_MAX_STEPS[size], "learning_rate": DEFAULT_LEARNING_RATE[size]}
        patcher_max_steps = DEFAULT_PATCHER_MAX_STEPS[size]
    return steps | {"patcher_max_steps": patcher_max_steps, "patcher_max_minutes": DEFAULT_PATCHER_MINUTES}


def require_training_extra() -> None:
    """Fail with an install hint when `datasets`, which only the training extra installs, is missing."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise CliError('`train` needs the training extra: pip install "blt-diffusion[train]"') from None


def training_files(
    data: list[str] | None, heldout_data: list[str] | None, suffixes: list[str]
) -> tuple[list[Path], list[Path]]:
    """Training and held-out files: `data` (split by file unless `heldout_data` is given) and `heldout_data`, each
    defaulting to its split of the standard library."""
    from .training import split_text_files, stdlib_source_files, text_files

    suffixes = ["." + suffix.lstrip(".") for suffix in suffixes]
    for path in (data or []) + (heldout_data or []):
        if not Path(path).exists():
            raise CliError(f"training data not found: {path}")
    if data is not None and heldout_data is None:
        try:
            splits = split_text_files(data, suffixes)
        except ValueError:
            raise CliError(
                f"--data holds fewer than two text files ({' '.join(suffixes)}), so none can be held out: give more, "
                "or --heldout-data"
            ) from None
        return splits["train"], splits["heldout"]
    train = stdlib_source_files("train") if data is None else text_files(data, suffixes)
    heldout = stdlib_source_files("heldout") if heldout_data is None else text_files(heldout_data, suffixes)
    for option, files in (("--data", train), ("--heldout-data", heldout)):
        if not files:
            raise CliError(f"{option} holds no UTF-8 text files ({' '.join(suffixes)})")
    return train, heldout


@contextlib.contextmanager
def progress_messages() -> Iterator[None]:
    """Write this package's INFO log messages (the training stages) to stderr inside the block."""
    logger = logging.getLogger(__package__)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def run_convert(args: argparse.Namespace) -> int:
    """The `convert` command."""
    checkpoint = load_checkpoint(args.source, diffusion_block_size=args.block_size)
    checkpoint.model.save_pretrained(args.output)
    BltDiffusionTokenizer().save_pretrained(args.output)
    print(f"read {args.source}: a {checkpoint.saved_model_type!r} checkpoint")
    print(
        f"wrote {args.output}: a {BltDiffusionConfig.model_type!r} checkpoint with its tokenizer and modeling code "
        "(loads with trust_remote_code=True)"
    )
    if args.block_size == 0:
        print("diffusion block size 0: a plain BLT")
    elif checkpoint.new_parameters:
        print(
            f"diffusion block size {args.block_size}: {', '.join(checkpoint.new_parameters)} (the masked-byte "
            "embedding) is freshly initialised; fine-tune before --decoding diffusion, e.g. "
            f"{PROG} train --init-from {args.output} --block-size {args.block_size} --data ..."
        )
    else:
        print(f"diffusion block size {args.block_size}: the masked-byte embedding is kept from {args.source}")
    return 0


def one_line(error: Exception) -> str:
    """An exception's message with its line breaks folded, so that every error is one line."""
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
