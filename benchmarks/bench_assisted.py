"""Prompt lookup and assisted decoding against autoregressive decoding of the same model, side by side.

Three tasks on held-out standard-library modules (training never saw them), greedy, at batch 1 and batch 8:

- copy: each prompt holds a top-level function of a module, two blank lines, and the function's first line again
  with the function renamed (`name` -> `name_v2`), so that a model that copies re-emits the function with a small
  edit, as when editing code. Prompt lookup drafts from the first copy.
- echo: the text to write is in the prompt. Each prompt is a held-out prompt P, the model's own greedy continuation
  C of it, and P again; the model then mostly writes C again (the report says how much). This stands for the copying
  a stronger model does when editing or quoting, which the small shipped model does not do (see the copy task).
- fresh: held-out code to continue, which repeats little.

Every setting generates exactly `--new-bytes` bytes per prompt (EOS suppressed), settings interleaved batch by
batch so that machine noise hits all of them alike. The report gives, per setting: bytes per second and its ratio to
autoregressive decoding, the share of drafted bytes that verification kept, decoder calls per byte, and whether the
output equals autoregressive decoding's (it must: every setting is lossless). For the copy and echo tasks it also
gives how much of the text to copy autoregressive decoding writes before it first departs from it.

    python benchmarks/bench_assisted.py --model src/blt_diffusion/checkpoints/blt-d8-stdlib
"""

import argparse
import ast
import platform
import sys
import time
from dataclasses import dataclass

import torch
import transformers
from bench_diffusion import Setting

from blt_diffusion import BltDiffusionForCausalLM, BltDiffusionTokenizer
from blt_diffusion.training import pack_byte_sequences, stdlib_source_files
from blt_diffusion.training.data import evenly_spaced_rows


@dataclass
class Task:
    """Prompts (1-D byte-id tensors, BOS first) and, for copying tasks, the bytes a faithful copy would write."""

    description: str
    rows: list[torch.Tensor]
    to_copy: list[list[int]] | None = None


def top_level_functions(min_bytes: int, max_bytes: int) -> list[str]:
    """The source of every top-level function of the held-out modules between `min_bytes` and `max_bytes` long."""
    functions = []
    for path in stdlib_source_files("heldout"):
        source = path.read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                segment = ast.get_source_segment(source, node)
                if segment is not None and min_bytes <= len(segment.encode("utf-8")) <= max_bytes:
                    functions.append(segment)
    return functions


def copy_task(count: int, min_bytes: int, max_bytes: int, tokenizer) -> Task:
    """`count` functions, evenly spaced over the held-out ones, each followed by its renamed first line."""
    functions = top_level_functions(min_bytes, max_bytes)
    rows, to_copy = [], []
    for function in (functions[index] for index in evenly_spaced_rows(len(functions), count)):
        first_line, rest = function.split("\n", 1)
        name = function.removeprefix("def ").split("(", 1)[0]
        edited_line = first_line.replace(f"def {name}(", f"def {name}_v2(", 1)
        rows.append(tokenizer(f"{function}\n\n\n{edited_line}\n", return_tensors="pt").input_ids[0])
        to_copy.append(tokenizer(rest, add_special_tokens=False).input_ids)
    description = f"copy: {count} held-out functions of {min_bytes}-{max_bytes} bytes, then the renamed first line"
    return Task(description, rows, to_copy)


def fresh_prompts(count: int, prompt_bytes: int) -> list[torch.Tensor]:
    """`count` held-out rows of `prompt_bytes` bytes (BOS first), evenly spaced."""
    rows = pack_byte_sequences(stdlib_source_files("heldout"), prompt_bytes).with_format("torch")
    return list(rows.select(evenly_spaced_rows(len(rows), count))[:]["input_ids"])


def fresh_task(count: int, prompt_bytes: int) -> Task:
    return Task(f"fresh: {count} held-out prompts of {prompt_bytes} bytes", fresh_prompts(count, prompt_bytes))


def echo_task(model, count: int, prompt_bytes: int, new_bytes: int) -> Task:
    """Held-out prompts P followed by the model's greedy continuation C and P again (without its BOS)."""
    rows, to_copy = [], []
    for prompt in fresh_prompts(count, prompt_bytes):
        output = model.generate(prompt[None], max_new_tokens=new_bytes, min_new_tokens=new_bytes, do_sample=False)
        continuation = output[0, len(prompt) :]
        rows.append(torch.cat([prompt, continuation, prompt[1:]]))
        to_copy.append(continuation.tolist())
    description = f"echo: {count} held-out prompts P of {prompt_bytes} bytes, each as P, its continuation C, P"
    return Task(description, rows, to_copy)


def settings_for(lookup_lengths: list[int], ngram_sizes: list[int], assistant, assistant_tokens: int) -> list[Setting]:
    settings = [Setting("AR", {"decoding": "autoregressive"})]
    for length in lookup_lengths:
        for size in ngram_sizes:
            label = f"prompt lookup k={length} n<={size}"
            settings.append(Setting(label, {"prompt_lookup_num_tokens": length, "max_matching_ngram_size": size}))
    settings.append(Setting("BLT-S k=16", {"decoding": "self_speculative", "draft_length": 16}))
    if assistant is not None:
        settings.append(
            Setting(
                f"assisted k={assistant_tokens}",
                {"assistant_model": assistant, "num_assistant_tokens": assistant_tokens},
            )
        )
    return settings


def run_settings(model, batches: list[tuple[torch.Tensor, torch.Tensor]], settings: list[Setting], new_bytes: int):
    """Generate from every batch with every setting, interleaved, accumulating each setting's costs."""
    for batch_index, (input_ids, attention_mask) in enumerate(batches):
        for setting in settings:
            start = time.perf_counter()
            output = model.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=new_bytes,
                # Every row writes `new_bytes`: EOS is banned. `min_new_tokens` would ban it too, but its processor
                # reads each row's length, which makes rows that accepted different numbers of bytes be processed
                # one at a time, a cost of that processor and not of drafting.
                suppress_tokens=[model.generation_config.eos_token_id],
                do_sample=False,
                return_dict_in_generate=True,
                **setting.generate_kwargs,
            )
            setting.seconds += time.perf_counter() - start
            continuations = output.sequences[:, input_ids.shape[1] :]
            setting.continuations += continuations.tolist()
            setting.new_bytes += continuations.numel()
            setting.decoder_calls += int(output.decoder_nfe.sum())
            if output.acceptance_rate is not None:
                setting.accepted_share += output.acceptance_rate.tolist()
        print(f"batch {batch_index + 1}/{len(batches)} done", file=sys.stderr, flush=True)


def report(settings: list[Setting]) -> str:
    reference = settings[0]
    reference_speed = reference.new_bytes / reference.seconds
    lines = [
        "| decoding | bytes/s | speed vs AR | acceptance | decoder calls / byte | output equals AR |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setting in settings:
        pairs = list(zip(setting.continuations, reference.continuations, strict=True))
        exact = sum(ours == theirs for ours, theirs in pairs) / len(pairs)
        speed = setting.new_bytes / setting.seconds
        acceptance = (
            f"{sum(setting.accepted_share) / len(setting.accepted_share):.1%}" if setting.accepted_share else "-"
        )
        lines.append(
            f"| {setting.label} | {speed:.0f} | {speed / reference_speed:.2f}x | {acceptance} | "
            f"{setting.decoder_calls / setting.new_bytes:.3f} | {exact:.0%} |"
        )
    return "\n".join(lines)


def copied_share(continuations: list[list[int]], to_copy: list[list[int]]) -> float:
    """The mean share of each text to copy that the continuation writes before departing from it."""
    shares = []
    for continuation, expected in zip(continuations, to_copy, strict=True):
        length = min(len(continuation), len(expected))
        common = next((i for i in range(length) if continuation[i] != expected[i]), length)
        shares.append(common / length)
    return sum(shares) / len(shares)


def batched(rows: list[torch.Tensor], batch_size: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Left-padded batches of `batch_size` rows (1-D id tensors) and their attention masks."""
    batches = []
    for start in range(0, len(rows), batch_size):
        group = rows[start : start + batch_size]
        width = max(len(row) for row in group)
        input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for index, row in enumerate(group):
            input_ids[index, width - len(row) :] = row
            attention_mask[index, width - len(row) :] = 1
        batches.append((input_ids, attention_mask))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="src/blt_diffusion/checkpoints/blt-d8-stdlib")
    parser.add_argument("--assistant-model", help="a checkpoint that drafts for assisted decoding (default: none)")
    parser.add_argument("--assistant-tokens", type=int, default=8, help="num_assistant_tokens")
    parser.add_argument("--tasks", nargs="+", default=["copy", "echo", "fresh"], choices=["copy", "echo", "fresh"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per task (a multiple of every batch size)")
    parser.add_argument("--function-bytes", type=int, nargs=2, default=[300, 700], metavar=("MIN", "MAX"))
    parser.add_argument("--prompt-bytes", type=int, default=192, help="echo and fresh tasks: bytes per prompt")
    parser.add_argument("--new-bytes", type=int, default=192)
    parser.add_argument("--lookup-lengths", type=int, nargs="+", default=[8, 16, 32], help="prompt_lookup_num_tokens")
    parser.add_argument("--ngram-sizes", type=int, nargs="+", default=[32], help="max_matching_ngram_size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = BltDiffusionForCausalLM.from_pretrained(args.model).eval()
    assistant = None
    if args.assistant_model is not None:
        assistant = BltDiffusionForCausalLM.from_pretrained(args.assistant_model).eval()
    tokenizer = BltDiffusionTokenizer()
    pad_id = model.generation_config.pad_token_id
    print(
        f"Model: {args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
        + (f"; assistant: {args.assistant_model}" if assistant is not None else "")
    )
    print(
        f"Machine: {platform.machine()}, torch {torch.__version__} with {args.threads} thread(s), transformers "
        f"{transformers.__version__}, Python {platform.python_version()}"
    )
    for name in args.tasks:
        with torch.no_grad():
            if name == "copy":
                task = copy_task(args.prompts, *args.function_bytes, tokenizer)
            elif name == "echo":
                task = echo_task(model, args.prompts, args.prompt_bytes, args.new_bytes)
            else:
                task = fresh_task(args.prompts, args.prompt_bytes)
        for batch_size in args.batch_sizes:
            settings = settings_for(args.lookup_lengths, args.ngram_sizes, assistant, args.assistant_tokens)
            with torch.no_grad():
                run_settings(model, batched(task.rows, batch_size, pad_id), settings, args.new_bytes)
            print()
            print(f"Task {task.description}; greedy, {args.new_bytes} new bytes each, batch {batch_size}:")
            print()
            print(report(settings))
            print()
            if task.to_copy is not None:
                share = copied_share(settings[0].continuations, task.to_copy)
                print(f"Autoregressive decoding writes {share:.0%} of the text to copy before departing from it.")
            print(f"Total generation time: {sum(setting.seconds for setting in settings):.0f} s")


if __name__ == "__main__":
    main()
