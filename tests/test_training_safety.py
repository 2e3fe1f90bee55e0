"""`blt-diffusion train` never loses or poisons a model: divergence stops it, a finished model is replaced only when
asked, and a killed run resumes from its last checkpoint to the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import source_text

from blt_diffusion import cli

# Runs `blt-diffusion train` with the arguments it is given, each training step 0.25 s slower: time for the test to
# kill it between checkpoints, whatever the machine's load (sleeping changes no number).
SLOW_TRAINING = """
import sys, time
from blt_diffusion import cli
from blt_diffusion.training.trainer import BltTrainer

training_step = BltTrainer.training_step

def slow_training_step(self, *args, **kwargs):
    time.sleep(0.25)
    return training_step(self, *args, **kwargs)

BltTrainer.training_step = slow_training_step
sys.exit(cli.main(sys.argv[1:]))
"""


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


def saved_json(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text())


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

    argv = train_argv(finished_run, corpus, "--overwrite", "--learning-rate", learning_rate, "--save-steps", "1")
    status, out, err = run(capsys, *argv)

    assert status == 1 and out == ""
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("blt-diffusion: error: training diverged at step "), err
    assert finding in last_line and f"try a lower learning rate than {float(learning_rate):g}" in last_line
    assert files_of(finished_run) == before, "the finished model is kept as it was"
    checkpoints = sorted(finished_run.glob("checkpoint-*"))
    assert checkpoints, "the checkpoints of the steps before the divergence stay"
    for checkpoint in checkpoints:
        weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), checkpoint.name


def make_checkpoint(output_dir: Path, step: int, complete: bool = True) -> None:
    """A checkpoint directory; a complete one has the trainer state that the Trainer writes last."""
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    if complete:
        (checkpoint / "trainer_state.json").write_text("{}")


def leave_an_incomplete_checkpoint(output_dir: Path) -> None:
    """What a run killed while saving its first checkpoint leaves."""
    for path in output_dir.iterdir():
        path.unlink()
    make_checkpoint(output_dir, 2, complete=False)


@pytest.mark.parametrize(
    ("prepare", "options", "message"),
    [
        (
            lambda directory: None,
            [],
            "already holds a trained model: pass --overwrite to start over (the model is replaced once the new one "
            "is trained), or choose another --output-dir",
        ),
        (
            lambda directory: make_checkpoint(directory, 4),
            [],
            "already holds a trained model: pass --overwrite to start over (the model is replaced once the new one "
            "is trained) or --resume to continue from its checkpoint at step 4, or choose another --output-dir",
        ),
        (
            leave_an_incomplete_checkpoint,
            [],
            "already holds the checkpoints of an unfinished run: pass --overwrite to start over, or choose another "
            "--output-dir",
        ),
        (lambda directory: make_checkpoint(directory, 2, False), ["--resume"], "holds no complete checkpoint"),
        (lambda directory: None, ["--resume", "--overwrite"], "--overwrite and --resume exclude each other"),
    ],
    ids=["model", "model-and-checkpoint", "incomplete-checkpoint", "resume-without-checkpoint", "both-flags"],
)
def test_a_previous_run_is_kept_unless_overwritten_or_resumed(capsys, corpus, finished_run, prepare, options, message):
    prepare(finished_run)
    before = sorted(finished_run.rglob("*")), files_of(finished_run)

    status, out, err = run(capsys, *train_argv(finished_run, corpus, *options))

    assert status == 2 and out == ""
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("blt-diffusion: error: ") and message in last_line, err
    assert "Stage 1" not in err, "refused before training"
    assert (sorted(finished_run.rglob("*")), files_of(finished_run)) == before


def test_overwrite_replaces_the_model_and_the_previous_runs_checkpoints(capsys, corpus, finished_run, tiny_model):
    make_checkpoint(finished_run, 40)

    status, out, err = run(capsys, *train_argv(finished_run, corpus, "--overwrite", "--save-steps", "4"))

    assert status == 0, err
    assert (finished_run / "eval_results.json").is_file()
    assert sorted(path.name for path in finished_run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    weights = safetensors.torch.load_file(finished_run / "model.safetensors")
    assert not torch.equal(weights["lm_head.weight"], tiny_model.state_dict()["lm_head.weight"])


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(capsys, tmp_path, corpus):
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    # 12 steps over three epochs, a checkpoint every 3: the resumed run crosses epochs that the killed one did not.
    options = ["--max-steps", "12", "--save-steps", "3", "--logging-steps", "1"]
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAINING, *train_argv(killed, corpus, *options)],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint-3" / "trainer_state.json").is_file():
            assert child.poll() is None and time.monotonic() < deadline, "no checkpoint-3 from the training run"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL and not (killed / "model.safetensors").exists()

    status, _, err = run(capsys, *train_argv(killed, corpus, *options, "--resume"))
    assert status == 0, err
    assert "Stage 1" not in err and "Resuming from" in err
    status, _, err = run(capsys, *train_argv(uninterrupted, corpus, *options))
    assert status == 0, err

    resumed_weights = safetensors.torch.load_file(killed / "model.safetensors")
    expected_weights = safetensors.torch.load_file(uninterrupted / "model.safetensors")
    assert resumed_weights.keys() == expected_weights.keys()
    # The same operations on the same numbers, in one thread: equal to the last bit.
    for name, tensor in expected_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    assert saved_json(killed, "eval_results.json") == saved_json(uninterrupted, "eval_results.json")
    resumed_config, expected_config = saved_json(killed, "config.json"), saved_json(uninterrupted, "config.json")
    for name in ("patching_threshold", "max_patch_length", "diffusion_block_size"):
        assert resumed_config[name] == expected_config[name], name
