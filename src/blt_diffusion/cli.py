"""The `blt-diffusion` command line.

```
blt-diffusion generate "def fib(n):" --model path/to/checkpoint --max-new-tokens 64 --stats
```
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import TextStreamer, set_seed

from . import __version__
from .configuration_blt_diffusion import BltDiffusionConfig
from .generation_blt_diffusion import DECODING_STRATEGIES, BltDiffusionGenerateOutput
from .modeling_blt_diffusion import BltDiffusionForCausalLM
from .random_init import calibrate_random_model, tiny_blt_config
from .tokenization_blt_diffusion import BltDiffusionTokenizer

PROG = "blt-diffusion"
USAGE_ERROR = 2
DEFAULT_MAX_NEW_TOKENS = 128
RANDOM_MODEL_SEED = 0
RANDOM_MODEL_NOTICE = (
    f"{PROG}: notice: no --model given, so this output comes from a small untrained model with random weights "
    "(there is no trained default model yet): expect noise, not text."
)
# Text on which the random model's patcher entropies are measured to set its patching threshold.
CALIBRATION_TEXT = """\
The Byte Latent Transformer reads raw bytes. A small byte-level language model, the patcher, predicts each next
byte; where it is unsure, a new patch begins. A local encoder pools the bytes of every patch into one latent, a
large global transformer runs once per patch, and a local decoder turns each latent back into bytes.

def mean(values):
    total = sum(values)
    return total / len(values) if values else 0.0

Predictable runs such as "the", "    return" or a repeated name cost the global transformer almost nothing.
"""

GENERATE_DESCRIPTION = """\
Generate bytes after PROMPT (or the contents of --prompt-file) and write the prompt followed by the generated text to
stdout, then a newline. Special tokens such as end-of-sequence are not written, and bytes that do not form valid
UTF-8 are written as U+FFFD. Notices, --stats and errors go to stderr; errors exit with status 2."""


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
        help="checkpoint directory, saved by this package or by transformers' BltForCausalLM (default: a small "
        "untrained random model, for trying the command out)",
    )
    generate.add_argument(
        "--decoding",
        metavar="NAME",
        help=f"decoding strategy: {', '.join(sorted(DECODING_STRATEGIES))} (default: the model's generation config)",
    )
    generate.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"generate at most N bytes (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
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
        help="write to stderr the decoder, encoder/global and patcher calls, the estimated memory bandwidth and the "
        "speed in bytes per second",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_generate(args: argparse.Namespace) -> int:
    """The `generate` command."""
    check_decoding(args.decoding)
    prompt = read_prompt(args.prompt, args.prompt_file)
    model = load_model(args.model)
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


def check_decoding(name: str | None) -> None:
    """Reject a decoding strategy this version does not provide, listing those it does."""
    if name is not None and name not in DECODING_STRATEGIES:
        raise CliError(f"unknown decoding strategy {name!r}; valid: {', '.join(sorted(DECODING_STRATEGIES))}")


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


def load_model(path: str | None) -> BltDiffusionForCausalLM:
    """The checkpoint in directory `path`, or the random model (with a notice on stderr) when there is none."""
    if path is None:
        print(RANDOM_MODEL_NOTICE, file=sys.stderr)
        return random_model()
    if not Path(path).is_dir():
        raise CliError(f"model directory not found: {path}")
    try:
        return BltDiffusionForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load a model from {path}: {one_line(error)}") from error


def random_model() -> BltDiffusionForCausalLM:
    """A tiny untrained model, always the same, calibrated so that it patches like a trained one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_MODEL_SEED)
        model = BltDiffusionForCausalLM(BltDiffusionConfig.from_blt_config(tiny_blt_config()))
    sample_ids = BltDiffusionTokenizer()(CALIBRATION_TEXT, return_tensors="pt").input_ids
    calibrate_random_model(model, sample_ids)
    return model.eval()


def generation_kwargs(args: argparse.Namespace) -> dict:
    """`generate()` arguments from the command line; options left out keep the model's generation config."""
    options = {
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
    lines = [
        f"generated bytes: {num_new_bytes}",
        f"decoder calls: {int(output.decoder_nfe[0])}",
        f"encoder/global calls: {int(output.global_nfe[0])}",
        f"patcher calls: {int(output.patcher_nfe[0])}",
        f"estimated memory bandwidth: {float(output.memory_bandwidth_gb[0]):.4g} GB",
        f"speed: {num_new_bytes / seconds:.1f} bytes/s ({seconds:.2f} s)",
    ]
    print("\n".join(lines), file=sys.stderr)


def one_line(error: Exception) -> str:
    """An exception's message with its line breaks folded, so that every error is one line."""
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
