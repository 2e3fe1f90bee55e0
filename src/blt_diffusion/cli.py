"""The `blt-diffusion` command line.

```
blt-diffusion generate "def fib(n):" --model path/to/checkpoint --max-new-tokens 64 --stats
blt-diffusion generate "def fib(n):" --model runs/blt-d --decoding diffusion --block-size 8 --stats
blt-diffusion train --config small --data my_corpus/ --minutes 20 --output-dir runs/blt-d
blt-diffusion convert path/to/stock_blt path/to/ours --block-size 8
blt-diffusion push path/to/ours your-name/blt-model
```
"""

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from huggingface_hub.errors import HfHubHTTPError, StrictDataclassError
from safetensors import SafetensorError
from transformers import BltConfig, CompileConfig, PreTrainedConfig, TextStreamer, TrainingArguments, set_seed
from transformers.utils import CONFIG_NAME
from transformers.utils import logging as hf_logging

from . import __version__
from .configuration_blt_diffusion import BltDiffusionConfig
from .default_model import DEFAULT_MODEL_DIR, load_default_model
from .generation_blt_diffusion import DEFAULT_MAX_NEW_TOKENS, BltDiffusionGenerateOutput
from .hub import NotLoggedInError, push_directory
from .modelcard_blt_diffusion import Provenance, write_model_card
from .modeling_blt_diffusion import BltDiffusionForCausalLM
from .strategies_blt_diffusion import (
    DECODING_STRATEGIES,
    STRATEGY_OPTIONS,
    UNMASKING_RULES,
    AssistedDecoding,
    PromptLookupDecoding,
    StrategyOption,
)
from .tokenization_blt_diffusion import BltDiffusionTokenizer
from .training.recipe import FINE_TUNING_SCHEDULE, TRAINING_DEFAULTS, TrainingRecipe, lower_bounds, training_arguments

PROG = "blt-diffusion"
USAGE_ERROR = 2
# `train`: the exit status of a run stopped by a non-finite loss, gradient or weight.
TRAINING_DIVERGED = 1
# As a shell reports a command stopped by a signal: 128 + SIGINT (Ctrl-C), 128 + SIGPIPE (the reader of stdout left).
INTERRUPTED = 130
OUTPUT_CLOSED = 141
# `train`: the `TrainingRecipe` fields of which at most one may be given, a new model or a checkpoint.
EXCLUSIVE_RECIPE_FIELDS = ("model_size", "init_from")

GENERATE_DESCRIPTION = """\
Generate bytes after PROMPT (or the contents of --prompt-file) and write the prompt followed by the generated text to
stdout, then a newline. Special tokens such as end-of-sequence are not written, and bytes that do not form valid
UTF-8 are written as U+FFFD. Notices, --stats and errors go to stderr; errors exit with status 2. When the reader
of stdout leaves early (`| head -c 10`), the command stops quietly with status 141."""

TRAIN_DESCRIPTION = """\
Train a new BLT-D model (--config), or fine-tune a checkpoint (--init-from), on text files, then measure its bits per
byte on held-out files. A new model goes through three stages: the entropy patcher is trained, the patching
threshold is set so that patches average --bytes-per-patch bytes (at most --max-patch-length), and the main model is
trained with the patcher frozen. Fine-tuning keeps the checkpoint's patcher and threshold unless --train-patcher is
given. The model, its tokenizer, trainer_state.json and eval_results.json are saved to --output-dir. Progress goes
to stderr, the final held-out bits per byte to stdout. Several processes started by accelerate launch or torchrun
train together (data parallel), each on --batch-size rows per step; only the main process writes. Needs the training
extra: pip install "blt-diffusion[train]".

The main model's training saves a checkpoint every --save-steps steps to --output-dir/checkpoint-STEP (the last two
are kept), and at the step where --minutes runs out: --resume continues the run from the last one exactly as if it
had not stopped (give the same options; --minutes counts anew). A directory that holds a model or checkpoints is
only trained into with --overwrite (start over: its checkpoints are removed when the main model's training starts,
its model replaced once the new one is trained) or --resume.

Exit status: 0 when the model is trained and saved; 1 when training diverges (a non-finite loss, gradient or weight:
nothing is saved from it, and --output-dir keeps what it held); 2 for invalid options, data, checkpoints or output
directories, reported before training starts."""

CONVERT_DESCRIPTION = """\
Convert a checkpoint saved by transformers' BltForCausalLM into this package's format: every weight is kept, the
config becomes model type "blt_diffusion", and the tokenizer, modeling code and a model card are saved with it, so
that the folder is a complete Hub repo (blt-diffusion push) and also loads with
AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) where this package is not installed. OUTPUT_DIR
must be new or an empty directory; it appears only once complete, so a failed conversion (a full disk, Ctrl-C)
leaves no part of it."""


EXIT_STATUS_HELP = f"""\
Exit status: 0 on success; {TRAINING_DIVERGED} when training diverges (`train`); {USAGE_ERROR} on an error (a bad
option, a model that does not load, a full disk), with a one-line message on stderr; {INTERRUPTED} when interrupted
(Ctrl-C); {OUTPUT_CLOSED} when the reader of stdout leaves early (`| head`), which stops the command quietly."""


class CliError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the `blt-diffusion` command line on `argv` (default: `sys.argv[1:]`) and return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        # Here rather than at exit, where a reader that left would make the interpreter print a traceback.
        sys.stdout.flush()
        return status
    except CliError as error:
        return report(f"error: {error}", USAGE_ERROR)
    except BrokenPipeError:
        # The reader of stdout left (`| head`): stop quietly, as `cat` does.
        discard_stdout()
        return OUTPUT_CLOSED
    except KeyboardInterrupt:
        return report("interrupted", INTERRUPTED)
    except OSError as error:
        # The system refused (a full disk, a permission): not a bug of ours, so no traceback. Stdout may be what
        # failed (`> /dev/full`), and must not fail again at exit.
        discard_stdout()
        return report(f"error: {one_line(error)}", USAGE_ERROR)


def report(message: str, status: int) -> int:
    """Write `message` to stderr as the command's one line, and return `status`."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def discard_stdout() -> None:
    """Send what is left of stdout to /dev/null: the interpreter flushes stdout at exit, and writing to a pipe whose
    reader left would print a traceback."""
    try:
        stdout_fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        # Not a file (stdout replaced, as in tests): nothing is flushed to a pipe at exit.
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout_fd)
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Byte Latent Transformer (BLT, BLT-D, BLT-S) tools.", epilog=EXIT_STATUS_HELP
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_generate_command(commands)
    add_train_command(commands)
    add_convert_command(commands)
    add_push_command(commands)
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
        metavar="N",
        help=f"generate at most N bytes (default: the model's generation config, {DEFAULT_MAX_NEW_TOKENS} for a "
        "model of this package or a stock BLT)",
    )
    add_strategy_options(generate)
    generate.add_argument(
        "--assistant-model",
        metavar="PATH",
        help="a smaller checkpoint that drafts bytes for the model to verify: --decoding assisted, which it implies",
    )
    sampling = generate.add_mutually_exclusive_group()
    sampling.add_argument(
        "--do-sample",
        action="store_true",
        default=None,
        help="sample instead of choosing the most likely byte (default: the model's generation config; the shipped "
        "model samples)",
    )
    sampling.add_argument(
        "--greedy",
        dest="do_sample",
        action="store_false",
        help="choose the most likely byte at every step: exact greedy decoding",
    )
    generate.add_argument("--temperature", type=float, help="sampling temperature (with --do-sample)")
    generate.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely bytes")
    generate.add_argument("--top-p", type=float, metavar="P", help="sample within probability mass P (nucleus)")
    generate.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    generate.add_argument("--stream", action="store_true", help="write the text as it is generated")
    generate.add_argument(
        "--compile",
        action="store_true",
        help="compile the single-byte decoding steps (torch.compile): the first call compiles for tens of seconds, "
        "later steps run faster; worth it for long generations",
    )
    generate.add_argument(
        "--stats",
        action="store_true",
        help="write to stderr the decoder, encoder/global and patcher calls, the estimated memory bandwidth, the "
        "speed in bytes per second and the bytes per decoder call",
    )


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The `train` command: the options of `TrainingRecipe` and a few of `TrainingArguments`, and `run_train` as what
    it runs."""
    parser = commands.add_parser(
        "train", help="train a BLT-D model or fine-tune a checkpoint", description=TRAIN_DESCRIPTION
    )
    parser.set_defaults(run=run_train)
    add_recipe_options(parser)
    # Read by `train_options`.
    trainer = parser.add_argument_group(
        "training arguments", "fields of transformers' TrainingArguments; the others keep the recipe's defaults"
    )
    trainer.add_argument("--output-dir", required=True, metavar="DIR", help="where the trained model is saved")
    trainer.add_argument(
        "--batch-size",
        type=positive_int,
        default=TRAINING_DEFAULTS["per_device_train_batch_size"],
        metavar="N",
        help="rows per process and step (default: %(default)s)",
    )
    trainer.add_argument(
        "--gradient-accumulation-steps",
        type=positive_int,
        default=TRAINING_DEFAULTS["gradient_accumulation_steps"],
        metavar="N",
        help="accumulate the gradients of N batches per optimizer step (default: %(default)s)",
    )
    trainer.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass, to save memory",
    )
    trainer.add_argument(
        "--max-steps",
        type=positive_int,
        metavar="N",
        help="optimizer steps; the learning-rate schedule spans them (default: per --config, "
        f"{FINE_TUNING_SCHEDULE.max_steps} with --init-from)",
    )
    trainer.add_argument(
        "--learning-rate",
        type=float,
        metavar="LR",
        help=f"peak learning rate (default: per --config, {FINE_TUNING_SCHEDULE.learning_rate:g} with --init-from)",
    )
    trainer.add_argument(
        "--eval-steps", type=positive_int, metavar="N", help="also measure the held-out loss every N steps"
    )
    trainer.add_argument(
        "--save-steps",
        type=non_negative_int,
        metavar="N",
        help="save a checkpoint of the main model every N steps, to --resume from; 0 saves none (default: every "
        "tenth of --max-steps)",
    )
    trainer.add_argument(
        "--logging-steps",
        type=positive_int,
        default=TRAINING_DEFAULTS["logging_steps"],
        metavar="N",
        help="log the losses every N steps (default: %(default)s)",
    )
    trainer.add_argument(
        "--seed",
        type=int,
        default=TRAINING_DEFAULTS["seed"],
        metavar="N",
        help="random seed of initialisation, data order and masking (default: %(default)s)",
    )


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per `TrainingRecipe` field, as its metadata describes it: named after the field with dashes (or
    its `aliases`), with its default, help, metavar, choices and lower bound (`AtLeast`)."""
    hints = get_type_hints(TrainingRecipe)
    bounds = lower_bounds()
    recipe = parser.add_argument_group("recipe", "fields of blt_diffusion.training.TrainingRecipe")
    new_or_checkpoint = recipe.add_mutually_exclusive_group()
    for field in fields(TrainingRecipe):
        options = dict(field.metadata)
        flags = options.pop("aliases", None) or [f"--{field.name.replace('_', '-')}"]
        group = new_or_checkpoint if field.name in EXCLUSIVE_RECIPE_FIELDS else recipe
        value_type = hints[field.name]
        if type(None) in get_args(value_type):
            # An optional field: None is its default, not a value to type.
            (value_type,) = (arg for arg in get_args(value_type) if arg is not type(None))
        if value_type is bool:
            group.add_argument(*flags, dest=field.name, action="store_true", **options)
            continue
        if get_origin(value_type) is list:
            options["nargs"] = "+"
            (value_type,) = get_args(value_type)
        if field.name in bounds:
            value_type = {0: non_negative_int, 1: positive_int}[bounds[field.name]]
        default = field.default if field.default_factory is MISSING else field.default_factory()
        if default is not None:
            options["help"] += f" (default: {describe_default(default)})"
        group.add_argument(*flags, dest=field.name, type=value_type, default=default, **options)


def describe_default(value: object) -> str:
    """A default as a user would type it: lists space-separated, floats without trailing zeros."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


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
    convert.add_argument(
        "--base-model",
        metavar="REPO_ID",
        help="the Hub repo STOCK_DIR was downloaded from, named as base_model in the model card (found on its own "
        "for a download in the Hugging Face cache)",
    )


PUSH_DESCRIPTION = """\
Upload DIR to the Hugging Face Hub model repo REPO_ID (created if needed) in one commit: every file, the model card's
usage snippets naming REPO_ID. DIR must be a complete repo: a model directory written by save_pretrained, convert or
train (weights, config and tokenizer config with auto_map, the remote-code modules, generation config, model card), or
this project's custom_generate directory. Needs a Hugging Face token: hf auth login, or HF_TOKEN."""


def add_push_command(commands: argparse._SubParsersAction) -> None:
    """The `push` command: its arguments, and `run_push` as what it runs."""
    push = commands.add_parser(
        "push", help="upload a checkpoint directory to the Hugging Face Hub", description=PUSH_DESCRIPTION
    )
    push.set_defaults(run=run_push)
    push.add_argument("directory", metavar="DIR", help="the directory to upload")
    push.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo, e.g. your-name/blt-model")
    push.add_argument("--private", action="store_true", default=None, help="make a new repo private")
    push.add_argument("--revision", metavar="BRANCH", help="commit to this branch (created if needed) instead of main")
    push.add_argument("--commit-message", metavar="TEXT", help="the commit's message")


def run_push(args: argparse.Namespace) -> int:
    """The `push` command."""
    try:
        commit = push_directory(
            args.directory,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except (ValueError, NotLoggedInError, HfHubHTTPError) as error:
        raise CliError(one_line(error)) from error
    print(f"pushed {args.directory} to {commit.commit_url}")
    return 0


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
    assistant = None if args.assistant_model is None else load_checkpoint(args.assistant_model).model
    decoding = args.decoding or implied_decoding(args) or model.generation_config.decoding
    check_decoding(args, decoding, model)
    tokenizer = BltDiffusionTokenizer()
    if args.seed is not None:
        set_seed(args.seed)
    inputs = tokenizer(prompt, return_tensors="pt")
    # The streamer writes the prompt too, once `generate` has accepted the arguments.
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
    start = time.perf_counter()
    try:
        output = model.generate(
            **inputs,
            **generation_kwargs(args),
            assistant_model=assistant,
            streamer=streamer,
            return_dict_in_generate=True,
        )
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


def implied_decoding(args: argparse.Namespace) -> str | None:
    """The strategy that drafting options ask for without --decoding, as `generate`'s arguments do."""
    if args.assistant_model is not None:
        return AssistedDecoding.name
    if args.prompt_lookup_num_tokens is not None:
        return PromptLookupDecoding.name
    return None


def check_decoding(args: argparse.Namespace, decoding: str, model: BltDiffusionForCausalLM) -> None:
    """Reject options of another decoding strategy, which `generate` would silently ignore, and a strategy that the
    model cannot run, with one line naming the option."""
    for readers, options in options_by_readers().items():
        given = [option.flag for option in options if getattr(args, option.name) is not None]
        if given and decoding not in readers:
            raise CliError(
                f"only --decoding {' or '.join(readers)} uses {', '.join(given)} (decoding here: {decoding})"
            )
    needs_assistant = DECODING_STRATEGIES[decoding].needs_assistant_model
    if needs_assistant != (args.assistant_model is not None):
        raise CliError(
            f"--decoding {decoding} needs --assistant-model PATH"
            if needs_assistant
            else f"only --decoding {AssistedDecoding.name} uses --assistant-model (decoding here: {decoding})"
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
    # Weights the directory lacked, freshly initialised: only BLT-D's masked-byte embedding may be missing.
    new_parameters: list[str]


def load_checkpoint(path: str, **config_overrides) -> Checkpoint:
    """The BLT or BLT-D model in directory `path`, with `config_overrides` (e.g. `diffusion_block_size`) applied.

    A directory that does not hold a valid config and its weights (`BltDiffusionForCausalLM.from_pretrained` refuses
    missing, unexpected and mismatched weights) is a `CliError` of one line.
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
        # The error says what does not match; transformers' table of weights would only add lines to it.
        with transformers_errors_only():
            model, loading_info = BltDiffusionForCausalLM.from_pretrained(
                path, output_loading_info=True, **config_overrides
            )
    except SafetensorError as error:
        raise CliError(f"cannot load a model from {path}: its weights file is damaged ({one_line(error)})") from error
    # `StrictDataclassError`: a config field of the wrong type.
    except (OSError, ValueError, StrictDataclassError) as error:
        raise CliError(f"cannot load a model from {path}: {one_line(error)}") from error
    return Checkpoint(model.eval(), saved_model_type, sorted(loading_info["missing_keys"]))


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Silence transformers' warnings inside the block."""
    previous_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous_verbosity)


def generation_kwargs(args: argparse.Namespace) -> dict:
    """`generate()` arguments from the command line; options left out keep the model's generation config."""
    options = {option.name: getattr(args, option.name) for option in STRATEGY_OPTIONS} | {
        "max_new_tokens": args.max_new_tokens,
        "decoding": args.decoding,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
    }
    if args.compile:
        options["compile_config"] = CompileConfig()
    return {name: value for name, value in options.items() if value is not None}


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
    return train(*train_options(args))


def train_options(args: argparse.Namespace) -> tuple[TrainingRecipe, TrainingArguments]:
    """The recipe and the `TrainingArguments` that the `train` command's options give; the other `TrainingArguments`
    keep the recipe's defaults."""
    try:
        recipe = TrainingRecipe(**{field.name: getattr(args, field.name) for field in fields(TrainingRecipe)})
        training_args = training_arguments(
            args.output_dir,
            per_device_train_batch_size=args.batch_size,
            # The held-out rows are measured in batches of the same size.
            per_device_eval_batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            activation_checkpointing=args.gradient_checkpointing,
            # None: the model preset's.
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            eval_strategy="steps" if args.eval_steps else "no",
            eval_steps=args.eval_steps,
            logging_steps=args.logging_steps,
            seed=args.seed,
            **checkpoint_arguments(args.save_steps),
        )
    except ValueError as error:
        raise CliError(one_line(error)) from error
    return recipe, training_args


def checkpoint_arguments(save_steps: int | None) -> dict:
    """The `TrainingArguments` of `--save-steps`: none to keep the recipe's, or a checkpoint every `save_steps` steps
    (none for 0)."""
    if save_steps is None:
        return {}
    return {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}


def train(recipe: TrainingRecipe, training_args: TrainingArguments) -> int:
    """Run the training recipe as the `train` command does: progress on stderr, the held-out bits per byte on stdout.

    `examples/train.py` runs it with the options of its own parser. Every process of a distributed run trains, and
    the main one speaks for them all.

    Returns:
        The exit status: 0, or `TRAINING_DIVERGED` after reporting in one line on stderr where training diverged.
    """
    require_training_extra()
    from .training import run_training
    from .training.trainer import TrainingDivergedError, is_main_process

    model = None
    # A resumed run's model is its checkpoint's.
    if recipe.init_from is not None and not recipe.resume:
        # Loaded here rather than by `run_training`, to refuse in one line a checkpoint that lacks weights. Seeded
        # first: a stock BLT checkpoint lacks the masked-byte embedding, which starts at random.
        set_seed(training_args.seed)
        model = load_checkpoint(recipe.init_from, **recipe.model_config_overrides()).model
    # Stdout is for the result: the Trainer's own summaries join the progress messages on stderr.
    main_process = is_main_process()
    with progress_messages() if main_process else contextlib.nullcontext(), contextlib.redirect_stdout(sys.stderr):
        try:
            results = run_training(recipe, training_args, model)
        except ValueError as error:
            raise CliError(one_line(error)) from error
        except TrainingDivergedError as error:
            return report(f"error: {one_line(error)}", TRAINING_DIVERGED) if main_process else TRAINING_DIVERGED
    if main_process:
        print(f"held-out bits per byte: {results['heldout_bits_per_byte']:.4f}")
    return 0


def require_training_extra() -> None:
    """Fail with an install hint when `datasets`, which only the training extra installs, is missing."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise CliError('`train` needs the training extra: pip install "blt-diffusion[train]"') from None


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
    # Stderr carries only errors, not transformers' loading and saving bars.
    hf_logging.disable_progress_bar()
    output_dir = Path(args.output)
    # Checked before the model loads, and again when the output is moved into place.
    if output_dir.exists() and not is_empty_dir(output_dir):
        raise CliError(f"{output_dir} already exists and is not an empty directory: choose another OUTPUT_DIR")
    checkpoint = load_checkpoint(args.source, diffusion_block_size=args.block_size)
    try:
        with staged_directory(output_dir) as staging_dir:
            checkpoint.model.save_pretrained(staging_dir)
            BltDiffusionTokenizer().save_pretrained(staging_dir)
            if args.base_model is not None:
                provenance = Provenance.of(args.source)
                provenance.base_model = args.base_model
                write_model_card(staging_dir, checkpoint.model, overwrite=True, provenance=provenance)
    except OSError as error:
        raise CliError(f"cannot write {output_dir}: {error.strerror or one_line(error)}") from error
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


def is_empty_dir(path: Path) -> bool:
    """Whether `path` is a directory without entries."""
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """A new directory named as `path`, inside a hidden one beside it, to write into (what reads the directory's name,
    as a model card's title does, sees the final one), moved to `path` (which must not exist, or be an empty
    directory) when the block completes, and removed if it fails: `path` never holds a partial output that looks
    complete."""
    # Resolved, so that `.` or `out/..` have a name and a parent.
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging_parent = path.parent / f".{path.name}.partial-{os.getpid()}"
    staging_dir = staging_parent / path.name
    staging_dir.mkdir(parents=True)
    try:
        yield staging_dir
        # Atomic; an empty directory at `path` is replaced, a non-empty one is an error.
        staging_dir.replace(path)
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)


def one_line(error: Exception) -> str:
    """An exception's message with its line breaks folded, so that every error is one line."""
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
