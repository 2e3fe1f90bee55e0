"""`blt-diffusion train` never poisons a model: divergence stops it before a non-finite weight is saved."""

from pathlib import Path

import pytest
from conftest import source_text

from blt_diffusion import cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two training files and one held-out file (by the split's hash) of real text."""
    directory = tmp_path_factory.mktemp("corpus")
    for index, name in enumerate(["alpha.txt", "beta.py", "gamma.md"]):
        (directory / name).write_text(source_text(1200, offset=1200 * index), encoding="utf-8")
    return directory


def train_argv(output_dir: Path, corpus: Path, *options: str) -> list[str]:
    """A new tiny model: 2 patcher steps, then 6 main-model steps on 8 rows of 64 bytes, 4 steps an epoch."""
    return [
        "train",
        "--output-dir",
        str(output_dir),
        "--config",
        "tiny",
        "--block-size",
        "4",
        "--data",
        str(corpus),
        "--max-bytes",
        "512",
        "--sequence-length",
        "64",
        "--batch-size",
        "2",
        "--patcher-steps",
        "2",
        "--max-steps",
        "6",
        "--threads",
        "1",
        *options,
    ]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`main(argv)` in-process: exit status, stdout, stderr."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def files_of(directory: Path) -> dict[str, bytes]:
    """The contents of the files directly in `directory`, by name."""
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


@pytest.fixture
def finished_run(tmp_path, tiny_model) -> Path:
    """An output directory that holds a finished model."""
    directory = tmp_path / "run"
    tiny_model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("learning_rate", "finding"),
    [("1e6", "the gradients are not finite"), ("1e39", "its optimizer step left non-finite weights")],
    ids=["non-finite-gradients", "overflowing-update"],
)
def test_a_diverging_run_exits_1_and_writes_no_non_finite_weight(capsys, corpus, finished_run, learning_rate, finding):
    before = files_of(finished_run)

    status, out, err = run(capsys, *train_argv(finished_run, corpus, "--learning-rate", learning_rate))

    assert status == 1 and out == ""
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("blt-diffusion: error: training diverged at step "), err
    assert finding in last_line and f"try a lower learning rate than {float(learning_rate):g}" in last_line
    assert files_of(finished_run) == before, "the finished model is kept as it was"
