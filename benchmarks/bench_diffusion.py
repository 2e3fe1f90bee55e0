"""BLT-D, BLT-S and BLT-DV decoding against autoregressive decoding of the same trained model, side by side.

For held-out prompts (standard-library modules that training never saw), every decoding setting generates the same
number of bytes greedily, settings interleaved prompt by prompt so that machine noise hits all of them alike. The
report gives, per setting: decoder and encoder+global calls per byte, the paper's estimated memory traffic (Eq. 8)
relative to autoregressive decoding, bytes per second relative to autoregressive decoding, and how far the greedy
BLT-D continuation agrees with the greedy autoregressive one (exact-match rate over whole continuations and chrF;
BLT-S and BLT-DV must match exactly), and the speculative strategies' acceptance rate.
It also gives held-out bits per byte of the BLT-D model's autoregressive (clean) loss and, with `--baseline`, of a
plain BLT trained the same way, which shows what the extra diffusion objective costs next-byte prediction.

    python examples/train.py --config small --block-size 16 ... --output-dir runs/bench-blt-d16
    python examples/train.py --config small --block-size 0 ... --output-dir runs/bench-blt-plain
    python benchmarks/bench_diffusion.py --model runs/bench-blt-d16 --baseline runs/bench-blt-plain

`--compile` adds every setting again with its single-byte steps compiled (`compile_config=CompileConfig()`), warmed up
first, its first call reported; `--device` and `--dtype` choose where and in what precision the model runs.

`--json runs/bench-blt-d16/decoding_benchmark.json` also stores the figures where the model card reads them (the
card is written again by `save_pretrained` into a directory without one, or by
`blt_diffusion.modelcard_blt_diffusion.write_model_card(directory, model, overwrite=True)`).
"""

import argparse
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import CompileConfig

from blt_diffusion import BltDiffusionForCausalLM
from blt_diffusion.modelcard_blt_diffusion import PYTHON_STDLIB, DecodingBenchmark, DecodingResult
from blt_diffusion.training import heldout_bits_per_byte, pack_byte_sequences, stdlib_source_files
from blt_diffusion.training.data import evenly_spaced_rows

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Setting:
    """One decoding configuration and what it cost over all prompts."""

    label: str
    generate_kwargs: dict
    compile_config: CompileConfig | None = None
    warm_up_seconds: float | None = None
    seconds: float = 0.0
    new_bytes: int = 0
    decoder_calls: int = 0
    global_calls: int = 0
    bandwidth_gb: float = 0.0
    accepted_share: list[float] = field(default_factory=list)
    continuations: list[list[int]] = field(default_factory=list)


def speculative_settings(draft_lengths: list[int], block_sizes: list[int]) -> list[Setting]:
    """BLT-S with each draft length and BLT-DV (one-step drafts) with each block size."""
    settings = [
        Setting(f"BLT-S k={length}", {"decoding": "self_speculative", "draft_length": length})
        for length in draft_lengths
    ]
    settings += [
        # The unmasking rule is explicit: a checkpoint's saved generation config may name another.
        Setting(
            f"BLT-DV-{block_size} one step",
            {"decoding": "diffusion_verified", "block_size": block_size, "unmasking": "one_step"},
        )
        for block_size in block_sizes
    ]
    return settings


def decoding_settings(block_sizes: list[int], thresholds: list[float], bounds: list[float]) -> list[Setting]:
    settings = [Setting("AR", {"decoding": "autoregressive"})]
    for block_size in block_sizes:
        for threshold in thresholds:
            settings.append(
                Setting(
                    f"BLT-D-{block_size} confidence {threshold}",
                    dict(
                        decoding="diffusion",
                        block_size=block_size,
                        unmasking="confidence",
                        confidence_threshold=threshold,
                    ),
                )
            )
        for bound in bounds:
            settings.append(
                Setting(
                    f"BLT-D-{block_size} entropy bound {bound}",
                    dict(decoding="diffusion", block_size=block_size, unmasking="entropy_bound", entropy_bound=bound),
                )
            )
    return settings


def character_ngrams(text: str, order: int) -> Counter:
    text = "".join(text.split())
    return Counter(text[index : index + order] for index in range(len(text) - order + 1))


def chrf(hypothesis: str, reference: str, max_order: int = 6, beta: float = 2.0) -> float:
    """Sentence-level chrF (Popovic 2015) in [0, 100]: character n-gram F-beta averaged over orders 1..6,
    whitespace ignored, as sacrebleu computes it by default."""
    precisions, recalls = [], []
    for order in range(1, max_order + 1):
        hypothesis_ngrams, reference_ngrams = character_ngrams(hypothesis, order), character_ngrams(reference, order)
        if not hypothesis_ngrams or not reference_ngrams:
            continue
        matches = sum((hypothesis_ngrams & reference_ngrams).values())
        precisions.append(matches / sum(hypothesis_ngrams.values()))
        recalls.append(matches / sum(reference_ngrams.values()))
    if not precisions:
        return 100.0 if hypothesis == reference else 0.0
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    return 100 * (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def compiled_settings(settings: list[Setting]) -> list[Setting]:
    """Each setting again with its single-byte steps compiled (`compile_config=CompileConfig()`)."""
    return [
        Setting(f"{setting.label} compiled", setting.generate_kwargs, compile_config=CompileConfig())
        for setting in settings
    ]


def generate_kwargs(setting: Setting) -> dict:
    """The `generate` arguments of `setting`."""
    if setting.compile_config is None:
        return setting.generate_kwargs
    return {**setting.generate_kwargs, "compile_config": setting.compile_config}


def reported_options(setting: Setting) -> dict:
    """`setting`'s `generate` arguments as JSON can hold them."""
    if setting.compile_config is None:
        return setting.generate_kwargs
    return {**setting.generate_kwargs, "compile_config": setting.compile_config.to_dict()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times the work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up_compiled(model, prompts: torch.Tensor, settings: list[Setting], new_bytes: int) -> None:
    """Generate once with every compiled setting, so that the timed runs find their steps compiled for this batch
    size and cache capacity; a setting's first such call (compiling, then generating) is recorded."""
    for setting in settings:
        if setting.compile_config is not None:
            start = time.perf_counter()
            warm_up = Setting(setting.label, setting.generate_kwargs, setting.compile_config)
            run_setting(model, prompts, warm_up, new_bytes)
            if setting.warm_up_seconds is None:
                setting.warm_up_seconds = time.perf_counter() - start


def decode_bytes(ids: list[int]) -> str:
    return bytes(token - 4 for token in ids if token >= 4).decode("utf-8", errors="replace")


def run_setting(model, prompts: torch.Tensor, setting: Setting, new_bytes: int) -> None:
    """Generate `new_bytes` bytes greedily after each row of `prompts` (batch, prompt bytes) in one `generate` call,
    adding the time and every row's costs and continuation to `setting`'s."""
    start = time.perf_counter()
    output = model.generate(
        prompts,
        max_new_tokens=new_bytes,
        min_new_tokens=new_bytes,
        do_sample=False,
        return_dict_in_generate=True,
        **generate_kwargs(setting),
    )
    synchronize(prompts.device)
    setting.seconds += time.perf_counter() - start
    for continuation in output.sequences[:, prompts.shape[1] :].tolist():
        setting.continuations.append(continuation)
        setting.new_bytes += len(continuation)
    setting.decoder_calls += int(output.decoder_nfe.sum())
    setting.global_calls += int(output.global_nfe.sum())
    setting.bandwidth_gb += float(output.memory_bandwidth_gb.sum())
    if output.acceptance_rate is not None:
        setting.accepted_share.extend(output.acceptance_rate.tolist())


def run_settings(model, prompts: torch.Tensor, settings: list[Setting], new_bytes: int) -> None:
    """Generate from every prompt with every setting, interleaved, accumulating each setting's costs."""
    for prompt_index, prompt in enumerate(prompts):
        for setting in settings:
            run_setting(model, prompt[None], setting, new_bytes)
        print(f"prompt {prompt_index + 1}/{len(prompts)} done", file=sys.stderr, flush=True)


def figures(setting: Setting, reference: Setting) -> DecodingResult:
    """What `setting` cost and how far it agrees with `reference` (autoregressive decoding), over all prompts."""
    pairs = list(zip(setting.continuations, reference.continuations, strict=True))
    speed = setting.new_bytes / setting.seconds
    return DecodingResult(
        label=setting.label,
        options=reported_options(setting),
        decoder_calls_per_byte=setting.decoder_calls / setting.new_bytes,
        global_calls_per_byte=setting.global_calls / setting.new_bytes,
        bandwidth_vs_autoregressive=setting.bandwidth_gb / reference.bandwidth_gb,
        bytes_per_second=speed,
        speed_vs_autoregressive=speed / (reference.new_bytes / reference.seconds),
        exact_match=sum(ours == theirs for ours, theirs in pairs) / len(pairs),
        chrf=sum(chrf(decode_bytes(ours), decode_bytes(theirs)) for ours, theirs in pairs) / len(pairs),
        acceptance_rate=sum(setting.accepted_share) / len(setting.accepted_share) if setting.accepted_share else None,
    )


def warm_up_report(settings: list[Setting]) -> list[str]:
    """The first call of every compiled setting, which compiles its steps, as lines of markdown."""
    compiled = [setting for setting in settings if setting.warm_up_seconds is not None]
    if not compiled:
        return []
    lines = ["First call of each compiled setting (compiling its steps, then generating):", ""]
    lines += [f"- {setting.label}: {setting.warm_up_seconds:.1f} s" for setting in compiled]
    return lines + [""]


def report(results: list[DecodingResult]) -> str:
    lines = [
        "| decoding | decoder calls / byte | enc+global calls / byte | est. bandwidth vs AR | bytes/s | speed vs AR "
        "| exact match with AR | chrF vs AR | acceptance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        acceptance = f"{result.acceptance_rate:.1%}" if result.acceptance_rate is not None else "-"
        lines.append(
            f"| {result.label} | {result.decoder_calls_per_byte:.3f} | {result.global_calls_per_byte:.3f} | "
            f"{result.bandwidth_vs_autoregressive:.1%} | {result.bytes_per_second:.0f} | "
            f"{result.speed_vs_autoregressive:.2f}x | {result.exact_match:.0%} | {result.chrf:.1f} | {acceptance} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/bench-blt-d16", help="a trained BLT-D checkpoint directory")
    parser.add_argument("--baseline", help="a plain BLT trained the same way, for held-out bits per byte")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--prompt-bytes", type=int, default=128)
    parser.add_argument("--new-bytes", type=int, default=128)
    parser.add_argument(
        "--block-sizes", type=int, nargs="*", default=[4, 8, 16], help="BLT-D block sizes (none: skip)"
    )
    parser.add_argument("--confidence-thresholds", type=float, nargs="*", default=[0.5, 0.7])
    parser.add_argument("--entropy-bounds", type=float, nargs="*", default=[0.8, 1.0])
    parser.add_argument(
        "--draft-lengths", type=int, nargs="*", default=[4, 8, 16], help="BLT-S draft lengths (none: skip BLT-S)"
    )
    parser.add_argument(
        "--verified-block-sizes", type=int, nargs="*", default=[4, 8, 16], help="BLT-DV block sizes (none: skip)"
    )
    parser.add_argument("--eval-rows", type=int, default=64, help="held-out rows (256 bytes) for bits per byte")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile", action="store_true", help="also run every setting with its single-byte steps compiled"
    )
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, ...)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's weights and states")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the figures to FILE; as decoding_benchmark.json in a checkpoint directory, the model card "
        "lists them",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    model = BltDiffusionForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(device).eval()
    heldout_files = stdlib_source_files("heldout")
    prompt_rows = pack_byte_sequences(heldout_files, args.prompt_bytes).with_format("torch")
    prompts = prompt_rows.select(evenly_spaced_rows(len(prompt_rows), args.prompts))[:]["input_ids"].to(device)
    eval_rows = pack_byte_sequences(heldout_files, 256)
    settings = decoding_settings(args.block_sizes, args.confidence_thresholds, args.entropy_bounds)
    settings += speculative_settings(args.draft_lengths, args.verified_block_sizes)
    if args.compile:
        settings += compiled_settings(settings)
    bits = {"BLT-D (this model)": heldout_bits_per_byte(model, eval_rows, max_rows=args.eval_rows)}
    if args.baseline:
        baseline = BltDiffusionForCausalLM.from_pretrained(args.baseline).eval()
        bits["plain BLT (baseline)"] = heldout_bits_per_byte(baseline, eval_rows, max_rows=args.eval_rows)

    with torch.no_grad():
        warm_up_compiled(model, prompts[:1], settings, args.new_bytes)
        run_settings(model, prompts, settings, args.new_bytes)

    config = model.config
    print(
        f"Model: {args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, trained block "
        f"size {config.diffusion_block_size}, patching threshold {config.patching_threshold:.3f}, max patch length "
        f"{config.max_patch_length}"
    )
    print(
        f"Machine: {platform.machine()}, {args.device} in {args.dtype}, torch {torch.__version__} with "
        f"{args.threads} thread(s), transformers {transformers.__version__}, Python {platform.python_version()}"
    )
    print()
    print(f"Held-out bits per byte ({args.eval_rows} rows of 256 bytes, autoregressive loss):")
    print()
    print("| model | bits per byte |")
    print("|---|---:|")
    for name, value in bits.items():
        print(f"| {name} | {value:.3f} |")
    print()
    print(
        f"Greedy generation of {args.new_bytes} bytes after {len(prompts)} held-out prompts of {args.prompt_bytes} "
        "bytes, batch 1:"
    )
    print()
    results = [figures(setting, settings[0]) for setting in settings]
    print(report(results))
    print()
    print("\n".join(warm_up_report(settings)))
    print(f"Total generation time: {sum(setting.seconds for setting in settings):.0f} s")
    if args.json is not None:
        benchmark = DecodingBenchmark(
            setup=f"Greedy generation of {args.new_bytes} bytes after each of {len(prompts)} held-out "
            f"{args.prompt_bytes}-byte prompts, batch 1, {args.device} in {args.dtype} with {args.threads} CPU "
            f"thread(s), every setting side by side in one process ({platform.machine()}, torch {torch.__version__}).",
            command="python benchmarks/bench_diffusion.py " + shlex.join(sys.argv[1:]),
            data="the held-out modules of the Python standard library",
            dataset_type=PYTHON_STDLIB,
            results=results,
        )
        benchmark.save(args.json)


if __name__ == "__main__":
    main()
