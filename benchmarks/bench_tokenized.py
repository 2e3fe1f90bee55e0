"""Our byte-level decoding against the alternative a user would pick: a token-level Llama of the same size.

Side by side in one process, on the same held-out prompts (standard-library modules that training never saw):

- a `transformers.LlamaForCausalLM` with its static cache (`cache_implementation="static"`) and transformers' own
  `generate`, over a byte-level BPE tokenizer (`tokenizers`) trained on the training split of the same corpus, with
  as many parameters as the BLT model it is compared with (random weights: speed does not depend on them once the
  number of new tokens is forced with `min_new_tokens`);
- our BLT-D model decoding with AR, BLT-S, BLT-D and BLT-DV.

Two sizes: the shipped model (`load_default_model()`, 12.1M parameters, trained) and the 40M benchmark size
(`benchmark_blt_config()` with diffusion block size 8, random weights calibrated to patch like a trained model with
`calibrate_random_model`; BLT-D's unmasking and BLT-S's and BLT-DV's acceptance then follow random heads, not trained
ones). Every contender writes `--new-bytes` bytes after each prompt: ours exactly (`min_new_tokens` equals
`max_new_tokens`), the Llama `round(new_bytes / bytes_per_token)` tokens, where bytes per token is measured by the
tokenizer on the whole held-out split. The Llama's bytes/s is its tokens/s times that measured bytes per token.

At batch 1 the contenders run interleaved prompt by prompt; at batch 8, batch by batch; every contender is warmed up
once per batch size first. Besides bytes/s the report gives the paper's cost fields (decoder and encoder+global calls
per byte, Eq. 8's estimated parameter traffic per byte) and, for the Llama, one forward pass of the whole model per
token, each loading its parameters except the input embedding (a lookup, as Eq. 8 leaves out BLT's hash tables).

With `--compile`, every contender also runs compiled, side by side with its uncompiled twin: ours with compiled
single-byte steps (`compile_config=CompileConfig()`), the Llama with transformers' own compiled forward. Compiled
contenders are warmed up on every batch first (each new shape compiles), their first call timed and reported.
`--device` and `--dtype` move both models (`benchmarks/gpu.sh` runs this on a GPU in bfloat16).

    python benchmarks/bench_tokenized.py --threads 1 --json benchmarks/results/tokenized.json

The tokenizer trains in under a minute on the whole training split and is cached under `runs/tokenized-baseline/`.
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from bench_diffusion import (
    DTYPES,
    Setting,
    compiled_settings,
    decode_bytes,
    figures,
    run_setting,
    synchronize,
    warm_up_compiled,
)
from bench_generation import CALIBRATION_SLICE, SEED, source_ids
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM, BltDiffusionTokenizer, load_default_model
from blt_diffusion.random_init import benchmark_blt_config, calibrate_random_model
from blt_diffusion.training import pack_byte_sequences, stdlib_source_files
from blt_diffusion.training.data import evenly_spaced_rows

END_OF_TEXT = "<|endoftext|>"
# Under the repository's ignored `runs/`, wherever the script is run from.
TOKENIZER_CACHE = Path(__file__).resolve().parent.parent / "runs" / "tokenized-baseline"
WARM_UP_BYTES = 8
SIZES = ("shipped", "40M")
BLOCK_SIZE = 8  # the shipped model's; the 40M model is built with it too
LLAMA_LABEL = "Llama + BPE (static cache)"
COMPILED_LLAMA_LABEL = "Llama + BPE (static cache, compiled)"


@dataclass(frozen=True)
class LlamaShape:
    """Width, depth and heads of a Llama; its MLP width is solved to match a parameter count."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int


# Widths near the BLT global transformers' (384 and 512), so that the Llama is a plausible model of its size.
LLAMA_SHAPES = {"shipped": LlamaShape(256, 10, 4), "40M": LlamaShape(512, 10, 8)}


@dataclass
class LlamaContender:
    """The token-level model and what it cost over all prompts."""

    label: str
    model: LlamaForCausalLM
    new_tokens: int
    compile_config: CompileConfig | None = None
    warm_up_seconds: float | None = None
    seconds: float = 0.0
    generated_tokens: int = 0


def compiled_llama_config() -> CompileConfig:
    """transformers' default compile config, made to compile on a CPU too: transformers compiles `generate`'s
    forward passes with a static cache only on accelerators unless the config says so (a private flag, as of 5.x)."""
    config = CompileConfig()
    config._compile_all_devices = True
    return config


@dataclass
class ThroughputRow:
    """One contender at one batch size. Calls per byte and traffic per byte are per sequence, as the paper counts
    them (at batch 8 one weight load serves every row of a call)."""

    label: str
    bytes_per_second: float
    speed_vs_llama: float
    speed_vs_autoregressive: float
    traffic_mb_per_byte: float
    decoder_calls_per_byte: float | None = None
    global_calls_per_byte: float | None = None
    forward_passes_per_byte: float | None = None
    exact_match_with_autoregressive: float | None = None
    acceptance_rate: float | None = None


@dataclass
class SizeResult:
    """Both models of one size and their rows per batch size."""

    name: str
    blt: str
    blt_parameters: int
    blt_lookup_parameters: int
    llama: dict
    llama_parameters: int
    llama_lookup_parameters: int
    rows_by_batch_size: dict[int, list[ThroughputRow]] = field(default_factory=dict)
    # Per batch size, the first call of each compiled contender: compiling, then generating.
    warm_up_seconds: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class TokenizedBenchmark:
    """Everything the run measured, as `--json` writes it."""

    command: str
    machine: str
    threads: int
    load_average: tuple[float, float]
    vocab_size: int
    tokenizer_train_bytes: int
    heldout_bytes_per_token: float
    prompts: int
    prompt_bytes: int
    new_bytes: int
    sizes: list[SizeResult]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_bpe(vocab_size: int, cache_dir: Path) -> Tokenizer:
    """A byte-level BPE tokenizer trained on the training split, loaded from `cache_dir` when trained before."""
    path = cache_dir / f"bpe-{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        # Every byte gets a token, so any text encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator((path.read_text("utf-8") for path in stdlib_source_files("train")), trainer)
    log(f"BPE with {vocab_size} entries trained in {time.perf_counter() - start:.0f} s")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


def bytes_per_token(tokenizer: Tokenizer, files: list[Path]) -> float:
    """UTF-8 bytes per token of `files`, each encoded whole."""
    texts = [path.read_text("utf-8") for path in files]
    tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
    return sum(len(text.encode("utf-8")) for text in texts) / tokens


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def lookup_parameter_count(model: nn.Module) -> int:
    """Parameters of embedding tables: read one row per token, not loaded whole per call."""
    return sum(parameter_count(module) for module in model.modules() if isinstance(module, nn.Embedding))


def matched_llama_config(shape: LlamaShape, target_parameters: int, vocab_size: int, pad_id: int) -> LlamaConfig:
    """A Llama of `shape` whose MLP width makes its parameter count the nearest to `target_parameters`."""
    hidden, layers = shape.hidden_size, shape.num_hidden_layers
    embeddings = 2 * vocab_size * hidden  # input table and untied LM head
    per_layer_fixed = 4 * hidden * hidden + 2 * hidden  # attention projections and two norms
    mlp_budget = target_parameters - embeddings - hidden - layers * per_layer_fixed
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=round(mlp_budget / (3 * hidden * layers)),
        num_hidden_layers=layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=2048,
        bos_token_id=pad_id,
        eos_token_id=pad_id,
        pad_token_id=pad_id,
    )


def random_40m_blt() -> BltDiffusionForCausalLM:
    """`benchmark_blt_config()` with BLT-D's block size and cell table (as the shipped model), random weights
    calibrated on `textwrap.py` as `bench_generation.py` does."""
    torch.manual_seed(SEED)
    config = BltDiffusionConfig.from_blt_config(
        benchmark_blt_config(), diffusion_block_size=BLOCK_SIZE, diffusion_cell_embedding="table"
    )
    model = BltDiffusionForCausalLM(config).eval()
    calibrate_random_model(model, source_ids(BltDiffusionTokenizer(), CALIBRATION_SLICE), bytes_per_patch=3.5)
    return model


def blt_settings(draft_lengths: list[int], thresholds: list[float], verified: bool) -> list[Setting]:
    """AR first (the reference of `figures`), then BLT-S, BLT-D and BLT-DV at the shipped block size."""
    settings = [Setting("AR", {"decoding": "autoregressive"})]
    settings += [
        Setting(f"BLT-S k={length}", {"decoding": "self_speculative", "draft_length": length})
        for length in draft_lengths
    ]
    settings += [
        Setting(
            f"BLT-D-{BLOCK_SIZE} confidence {threshold}",
            {
                "decoding": "diffusion",
                "block_size": BLOCK_SIZE,
                "unmasking": "confidence",
                "confidence_threshold": threshold,
            },
        )
        for threshold in thresholds
    ]
    if verified:
        settings.append(
            Setting(
                f"BLT-DV-{BLOCK_SIZE} one step",
                {"decoding": "diffusion_verified", "block_size": BLOCK_SIZE, "unmasking": "one_step"},
            )
        )
    return settings


def heldout_prompts(count: int, prompt_bytes: int) -> torch.Tensor:
    """`count` evenly spaced held-out rows of `prompt_bytes` byte ids (as `bench_diffusion.py` takes them)."""
    rows = pack_byte_sequences(stdlib_source_files("heldout"), prompt_bytes).with_format("torch")
    return rows.select(evenly_spaced_rows(len(rows), count))[:]["input_ids"]


def llama_inputs(tokenizer: Tokenizer, byte_prompts: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """The same prompts as BPE tokens, left-padded to one length, with their attention mask."""
    encoded = [tokenizer.encode(decode_bytes(row.tolist())).ids for row in byte_prompts]
    length = max(len(ids) for ids in encoded)
    device = byte_prompts.device
    input_ids = torch.tensor([[pad_id] * (length - len(ids)) + ids for ids in encoded], device=device)
    attention_mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def run_llama(llama: LlamaContender, inputs: dict[str, torch.Tensor], new_tokens: int) -> float:
    """Greedy generation of exactly `new_tokens` tokens per row with the static cache; returns the seconds."""
    start = time.perf_counter()
    output = llama.model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
        compile_config=llama.compile_config,
    )
    synchronize(output.device)
    elapsed = time.perf_counter() - start
    assert output.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return elapsed


def warm_up(
    blt: BltDiffusionForCausalLM,
    settings: list[Setting],
    llamas: list[LlamaContender],
    batches: list[torch.Tensor],
    batch_inputs: list[dict],
    new_bytes: int,
) -> None:
    """Generate with every contender before timing, so that no timed run pays first-call costs (allocations, the
    static cache's creation, compiling). Uncompiled contenders write a few bytes after the first batch; compiled ones
    write in full after every batch, since each new shape compiles again (our cache capacity is rounded up, so our
    graphs serve every batch of a size; the Llama's static cache is as long as each prompt needs). The first call of
    each compiled contender is timed."""
    for setting in settings:
        if setting.compile_config is None:
            run_setting(blt, batches[0], Setting(setting.label, setting.generate_kwargs), WARM_UP_BYTES)
    for prompts in batches:
        warm_up_compiled(blt, prompts, settings, new_bytes)
    for llama in llamas:
        if llama.compile_config is None:
            run_llama(llama, batch_inputs[0], new_tokens=2)
            continue
        seconds = [run_llama(llama, inputs, llama.new_tokens) for inputs in batch_inputs]
        llama.warm_up_seconds = seconds[0]


def run_batches(
    blt: BltDiffusionForCausalLM,
    settings: list[Setting],
    llamas: list[LlamaContender],
    batches: list[torch.Tensor],
    tokenizer: Tokenizer,
    new_bytes: int,
) -> None:
    """Every contender on every batch of prompts, interleaved batch by batch, accumulating their costs."""
    pad_id = llamas[0].model.config.pad_token_id
    batch_inputs = [llama_inputs(tokenizer, prompts, pad_id) for prompts in batches]
    warm_up(blt, settings, llamas, batches, batch_inputs, new_bytes)
    for index, (prompts, inputs) in enumerate(zip(batches, batch_inputs, strict=True)):
        for setting in settings:
            run_setting(blt, prompts, setting, new_bytes)
        for llama in llamas:
            llama.seconds += run_llama(llama, inputs, llama.new_tokens)
            llama.generated_tokens += llama.new_tokens * len(prompts)
        log(f"  batch {index + 1}/{len(batches)} of {len(prompts)} done")


def throughput_rows(
    settings: list[Setting], llamas: list[LlamaContender], heldout_bytes_per_token: float
) -> list[ThroughputRow]:
    """Our settings' figures, then the Llamas', each with its speed relative to the first (uncompiled) Llama and to
    our AR."""
    llama_speeds = [llama.generated_tokens * heldout_bytes_per_token / llama.seconds for llama in llamas]
    llama_speed = llama_speeds[0]
    results = [figures(setting, settings[0]) for setting in settings]
    autoregressive_speed = results[0].bytes_per_second
    rows = [
        ThroughputRow(
            label=result.label,
            bytes_per_second=result.bytes_per_second,
            speed_vs_llama=result.bytes_per_second / llama_speed,
            speed_vs_autoregressive=result.speed_vs_autoregressive,
            traffic_mb_per_byte=1e3 * setting.bandwidth_gb / setting.new_bytes,
            decoder_calls_per_byte=result.decoder_calls_per_byte,
            global_calls_per_byte=result.global_calls_per_byte,
            exact_match_with_autoregressive=result.exact_match,
            acceptance_rate=result.acceptance_rate,
        )
        for setting, result in zip(settings, results, strict=True)
    ]
    for llama, speed in zip(llamas, llama_speeds, strict=True):
        loaded = parameter_count(llama.model) - lookup_parameter_count(llama.model)
        rows.append(
            ThroughputRow(
                label=llama.label,
                bytes_per_second=speed,
                speed_vs_llama=speed / llama_speed,
                speed_vs_autoregressive=speed / autoregressive_speed,
                # Eq. 8's 2 bytes per parameter, every loaded parameter once per token.
                traffic_mb_per_byte=2 * loaded / 1e6 / heldout_bytes_per_token,
                forward_passes_per_byte=1 / heldout_bytes_per_token,
            )
        )
    return rows


def measure_size(
    name: str, args: argparse.Namespace, tokenizer: Tokenizer, heldout_bytes_per_token: float, prompts: torch.Tensor
) -> SizeResult:
    """Both models of one size at every batch size."""
    blt, blt_description = (
        (load_default_model(), "the shipped BLT-D-8 (`load_default_model()`), trained")
        if name == "shipped"
        else (random_40m_blt(), "`benchmark_blt_config()` with block size 8, random weights, calibrated")
    )
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    blt = blt.to(device, dtype)
    blt_parameters = parameter_count(blt)
    pad_id = tokenizer.token_to_id(END_OF_TEXT)
    llama_config = matched_llama_config(LLAMA_SHAPES[name], blt_parameters, tokenizer.get_vocab_size(), pad_id)
    torch.manual_seed(SEED)
    llama_model = LlamaForCausalLM(llama_config).eval().to(device, dtype)
    result = SizeResult(
        name=name,
        blt=blt_description,
        blt_parameters=blt_parameters,
        blt_lookup_parameters=lookup_parameter_count(blt),
        llama={key: getattr(llama_config, key) for key in ("hidden_size", "intermediate_size", "num_hidden_layers")},
        llama_parameters=parameter_count(llama_model),
        llama_lookup_parameters=lookup_parameter_count(llama_model),
    )
    new_tokens = round(args.new_bytes / heldout_bytes_per_token)
    for batch_size in args.batch_sizes:
        log(f"{name}, batch {batch_size}:")
        settings = blt_settings(args.draft_lengths, args.confidence_thresholds, args.verified)
        llamas = [LlamaContender(LLAMA_LABEL, llama_model, new_tokens)]
        if args.compile:
            settings += compiled_settings(settings)
            llamas.append(LlamaContender(COMPILED_LLAMA_LABEL, llama_model, new_tokens, compiled_llama_config()))
        batches = list(torch.split(prompts[: len(prompts) // batch_size * batch_size].to(device), batch_size))
        with torch.no_grad():
            run_batches(blt, settings, llamas, batches, tokenizer, args.new_bytes)
        result.rows_by_batch_size[batch_size] = throughput_rows(settings, llamas, heldout_bytes_per_token)
        result.warm_up_seconds[batch_size] = {
            contender.label: contender.warm_up_seconds
            for contender in [*settings, *llamas]
            if contender.warm_up_seconds is not None
        }
    return result


def optional(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def size_table(result: SizeResult) -> list[str]:
    """One markdown table: bytes/s and speed against the Llama per batch size, then batch 1's cost fields."""
    batch_sizes = list(result.rows_by_batch_size)
    header = "| decoding | " + " | ".join(f"bytes/s, batch {size} | vs Llama, batch {size}" for size in batch_sizes)
    header += " | decoder calls / byte | enc+global calls / byte | est. traffic / byte (MB) | exact match with AR "
    header += "| acceptance |"
    lines = [header, "|---|" + "---:|---:|" * len(batch_sizes) + "---:|---:|---:|---:|---:|"]
    first_rows = result.rows_by_batch_size[batch_sizes[0]]
    for index, row in enumerate(first_rows):
        speeds = [result.rows_by_batch_size[size][index] for size in batch_sizes]
        cells = [f"{speed.bytes_per_second:.0f} | {speed.speed_vs_llama:.2f}x" for speed in speeds]
        global_calls = (
            f"{row.global_calls_per_byte:.3f}"
            if row.forward_passes_per_byte is None
            else f"{row.forward_passes_per_byte:.3f} (whole model)"
        )
        cells += [
            optional(row.decoder_calls_per_byte, ".3f"),
            global_calls,
            f"{row.traffic_mb_per_byte:.1f}",
            optional(row.exact_match_with_autoregressive, ".0%"),
            optional(row.acceptance_rate, ".1%"),
        ]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def report(benchmark: TokenizedBenchmark) -> str:
    lines = [
        f"Machine: {benchmark.machine}; 1-minute load average {benchmark.load_average[0]:.1f} at start, "
        f"{benchmark.load_average[1]:.1f} at end",
        f"Tokenizer: byte-level BPE, {benchmark.vocab_size} entries, trained on the training split "
        f"({benchmark.tokenizer_train_bytes / 1e6:.1f} MB); {benchmark.heldout_bytes_per_token:.2f} bytes per token "
        "on the held-out split",
        f"Greedy generation of {benchmark.new_bytes} bytes after each of {benchmark.prompts} held-out "
        f"{benchmark.prompt_bytes}-byte prompts; calls and traffic per byte from batch 1",
    ]
    for size in benchmark.sizes:
        llama = size.llama
        lines += [
            "",
            f"### {size.name}: {size.blt}, {size.blt_parameters / 1e6:.2f}M parameters "
            f"({size.blt_lookup_parameters / 1e6:.2f}M in lookup tables); Llama {llama['num_hidden_layers']} x "
            f"{llama['hidden_size']} (MLP {llama['intermediate_size']}), {size.llama_parameters / 1e6:.2f}M "
            f"parameters ({size.llama_lookup_parameters / 1e6:.2f}M in its input embedding)",
            "",
            *size_table(size),
        ]
        for batch_size, seconds in size.warm_up_seconds.items():
            if seconds:
                first_calls = ", ".join(f"{label} {value:.1f} s" for label, value in seconds.items())
                lines += ["", f"First call of the compiled contenders at batch {batch_size}: {first_calls}"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts, cut into batches of each size")
    parser.add_argument("--prompt-bytes", type=int, default=128)
    parser.add_argument("--new-bytes", type=int, default=128)
    parser.add_argument("--draft-lengths", type=int, nargs="*", default=[16], help="BLT-S draft lengths")
    parser.add_argument("--confidence-thresholds", type=float, nargs="*", default=[0.5, 0.9], help="BLT-D")
    parser.add_argument("--no-verified", dest="verified", action="store_false", help="skip BLT-DV")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--cache-dir", type=Path, default=TOKENIZER_CACHE, help="tokenizer cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile", action="store_true", help="also run every contender compiled (ours: its single-byte steps)"
    )
    parser.add_argument("--device", default="cpu", help="where the models run (cpu, cuda, ...)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="the models' weights and states")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()[0]
    tokenizer = train_bpe(args.vocab_size, args.cache_dir)
    heldout_bytes_per_token = bytes_per_token(tokenizer, stdlib_source_files("heldout"))
    prompts = heldout_prompts(args.prompts, args.prompt_bytes)
    sizes = [measure_size(name, args, tokenizer, heldout_bytes_per_token, prompts) for name in args.sizes]
    benchmark = TokenizedBenchmark(
        command="python benchmarks/bench_tokenized.py " + shlex.join(sys.argv[1:]),
        machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.device} in {args.dtype}, torch "
        f"{torch.__version__} with {args.threads} thread(s), transformers {transformers.__version__}, Python "
        f"{platform.python_version()}",
        threads=args.threads,
        load_average=(load_before, os.getloadavg()[0]),
        vocab_size=tokenizer.get_vocab_size(),
        tokenizer_train_bytes=sum(path.stat().st_size for path in stdlib_source_files("train")),
        heldout_bytes_per_token=heldout_bytes_per_token,
        prompts=len(prompts),
        prompt_bytes=args.prompt_bytes,
        new_bytes=args.new_bytes,
        sizes=sizes,
    )
    print(report(benchmark))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(benchmark), indent=2) + "\n")


if __name__ == "__main__":
    main()
