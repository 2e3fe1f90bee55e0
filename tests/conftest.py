"""Shared builders: random BLT models that patch like trained ones, in stock and in our implementation."""

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import textwrap  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import HfApi, ModelCard  # noqa: E402
from huggingface_hub.errors import EntryNotFoundError  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from transformers import BltForCausalLM  # noqa: E402

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM  # noqa: E402
from blt_diffusion.random_init import calibrate_random_model, tiny_blt_config  # noqa: E402
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES  # noqa: E402

# Tiny models gain nothing from threads, and oversubscribed threads are very slow on a busy 2-core machine.
torch.set_num_threads(1)

BOS, EOS, PAD = 1, 2, 3
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# Property-based tests draw the same few examples per test case on every run: a fixed CPU cost and no flaky suite.
# `HYPOTHESIS_PROFILE=explore` draws twenty times as many new ones, to look for failures.
settings.register_profile("explore", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fixed", settings.get_profile("explore"), max_examples=5, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))


def text_ids(text: str, bos: bool = True) -> torch.Tensor:
    """Byte ids (1, len) of `text`, BOS first by default."""
    ids = [byte + 4 for byte in text.encode("utf-8")]
    return torch.tensor([[BOS] + ids if bos else ids])


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (1, len) id rows into a left-padded batch and its attention mask."""
    width = max(row.shape[1] for row in rows)
    batch = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(batch)
    for index, row in enumerate(rows):
        batch[index, width - row.shape[1] :] = row[0]
        mask[index, width - row.shape[1] :] = 1
    return batch, mask


def source_text(length: int, offset: int = 0) -> str:
    """Real text: a slice of the standard library's own source."""
    with open(textwrap.__file__, encoding="utf-8") as handle:
        return handle.read()[offset : offset + length]


def spread_prompts(count: int) -> list[torch.Tensor]:
    """`count` prompts (1, len) of 7 to 46 bytes of real text, from places spread over a source file."""
    return [text_ids(source_text(6 + (index * 7) % 40, index * 97)) for index in range(count)]


def strategy_arguments(decoding: str, model) -> dict:
    """`generate` arguments that decode with `decoding` on `model`: assisted decoding drafts with the model itself."""
    strategy = DECODING_STRATEGIES.get(decoding)
    assistant = {"assistant_model": model} if strategy is not None and strategy.needs_assistant_model else {}
    return {"decoding": decoding} | assistant


def generate_new_bytes(model, rows: list[torch.Tensor], new_bytes: int = 256, **kwargs):
    """Greedy (by default) generation of exactly `new_bytes` after each prompt row, as one left-padded batch; the
    output with `return_dict_in_generate=True` and the new bytes alone (batch, new_bytes)."""
    batch, mask = left_pad(rows)
    output = model.generate(
        batch,
        attention_mask=mask,
        max_new_tokens=new_bytes,
        min_new_tokens=new_bytes,
        return_dict_in_generate=True,
        **kwargs,
    )
    return output, output.sequences[:, batch.shape[1] :]


def build_pair(seed: int = 0, bytes_per_patch: float = 3.5, **config_overrides):
    """A random stock `BltForCausalLM` calibrated to patch like a trained model, and ours with the same weights."""
    torch.manual_seed(seed)
    stock = BltForCausalLM(tiny_blt_config(**config_overrides)).eval()
    calibrate_random_model(stock, text_ids(source_text(1500)), bytes_per_patch=bytes_per_patch)
    ours = BltDiffusionForCausalLM(BltDiffusionConfig.from_blt_config(stock.config)).eval()
    missing, unexpected = ours.load_state_dict(stock.state_dict(), strict=True)
    assert not missing and not unexpected
    return stock, ours


def diffusion_model_from(stock: BltForCausalLM, block_size: int, **overrides) -> BltDiffusionForCausalLM:
    """A BLT-D model holding `stock`'s weights plus freshly initialised diffusion parameters (seeded)."""
    torch.manual_seed(123)
    config = BltDiffusionConfig.from_blt_config(stock.config, diffusion_block_size=block_size, **overrides)
    model = BltDiffusionForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
    new_parameter = {"table": "diffusion_embed_tokens", "encoder": "diffusion_mask_embedding"}[
        config.diffusion_cell_embedding
    ]
    assert missing == [f"model.{new_parameter}.weight"] and not unexpected
    return model


def edited_checkpoint(
    source: Path,
    directory: Path,
    config: Callable[[dict], None] | None = None,
    weights: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Path:
    """A copy at `directory` of checkpoint directory `source`, its `config.json` dict edited in place by `config` and
    its weights (a dict of tensors by name) replaced by what `weights` returns."""
    shutil.copytree(source, directory)
    if config is not None:
        config_dict = json.loads((directory / "config.json").read_text())
        config(config_dict)
        (directory / "config.json").write_text(json.dumps(config_dict))
    if weights is not None:
        weights_path = directory / "model.safetensors"
        edited = weights(safetensors.torch.load_file(weights_path))
        safetensors.torch.save_file(edited, weights_path, metadata={"format": "pt"})
    return directory


PARITY_CONFIGS = {
    "default": dict(seed=0),
    "max_patch_4_gqa_all_cross": dict(
        seed=1,
        max_patch_length=4,
        encoder_hash_byte_group_nb_functions=2,
        encoder_config=dict(cross_attn_all_layers=True, num_hidden_layers=2),
        decoder_config=dict(num_key_value_heads=2),
        global_config=dict(num_key_value_heads=2),
    ),
    "max_patch_6_projection_small_windows": dict(
        seed=2,
        max_patch_length=6,
        local_attention_window_len=16,
        patcher_config=dict(sliding_window=12),
        encoder_config=dict(hidden_size=48, num_attention_heads=4, intermediate_size=96),
        decoder_config=dict(hidden_size=48, intermediate_size=96, cross_attn_all_layers=False, num_hidden_layers=3),
    ),
}


# The full lossless check on random weights (`test_lossless_sweep.py`): 64 prompts x 256 bytes on a configuration with
# `max_patch_length` (so verification needs frontier twins) and windows shorter than the generation.
SWEEP_CONFIG = "max_patch_6_projection_small_windows"
SWEEP_PROMPTS = 64
# Lossless sweeps run every prompt in left-padded batches of 4, and these 8 alone: a batch of one is the same code
# with no padding, and batches equal rows alone (`test_generation.py`, `test_speculative.py`), so a subset suffices.
# Every seventh prompt puts two in each position of a batch of 4 (from no padding to the most), gives
# `spread_prompts` lengths from 6 to 42 bytes from all over the source, and `test_diffusion_learning.py`'s prompts
# each record count from 1 to 3.
BATCH_OF_ONE_PROMPTS = tuple(range(0, 56, 7))


@pytest.fixture(scope="session", params=sorted(PARITY_CONFIGS))
def model_pair(request):
    return build_pair(**PARITY_CONFIGS[request.param])


@pytest.fixture(scope="session")
def tiny_model():
    """Our model alone, default tiny config, calibrated."""
    return build_pair(seed=0)[1]


@pytest.fixture(scope="session")
def max_patch_model():
    """Our model with `max_patch_length`, where the newest byte's latent is provisional."""
    return build_pair(**PARITY_CONFIGS["max_patch_6_projection_small_windows"])[1]


@pytest.fixture(scope="session")
def diffusion_model():
    """A random BLT-D model (block size 8) on the default tiny config's calibrated weights."""
    stock, _ = build_pair(seed=0)
    return diffusion_model_from(stock, block_size=8)


def lossless_sweep() -> tuple[BltDiffusionForCausalLM, list[torch.Tensor], torch.Tensor]:
    """A random BLT-D model on `SWEEP_CONFIG`, `SWEEP_PROMPTS` prompts, and the 256 bytes greedy autoregressive
    decoding appends to each (batch, 256), from left-padded batches of 4 (batches equal single rows:
    `test_generation.py`)."""
    stock, _ = build_pair(**PARITY_CONFIGS[SWEEP_CONFIG])
    model = diffusion_model_from(stock, block_size=8)
    rows = spread_prompts(SWEEP_PROMPTS)
    references = torch.cat([generate_new_bytes(model, rows[start : start + 4])[1] for start in range(0, len(rows), 4)])
    return model, rows, references


def check_lossless_sweep(sweep, batch_size: int, decoding: str, prompts: Sequence[int] | None = None, **knobs) -> None:
    """Greedy `decoding` appends exactly the autoregressive bytes to every prompt of `lossless_sweep()`'s (or to
    those at the indices `prompts`), in left-padded batches of `batch_size`."""
    model, rows, references = sweep
    if prompts is not None:
        rows, references = [rows[index] for index in prompts], references[list(prompts)]
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        output, actual = generate_new_bytes(model, batch_rows, decoding=decoding, **knobs)
        assert_same_greedy_bytes(model, batch_rows, references[start : start + batch_size], actual)
        assert bool((output.acceptance_rate >= 0).all()) and bool((output.acceptance_rate <= 1).all())


# Logit gaps below this are float noise: the same prediction computed in a batch of several bytes (a verification
# pass) or one byte at a time sums in another order and may rank two such bytes either way.
FLOAT_TIE = 1e-4


def assert_same_greedy_bytes(
    model, prompts: list[torch.Tensor], expected: torch.Tensor, actual: torch.Tensor, max_ties: int = 1
) -> None:
    """`actual` new bytes (batch, n) equal `expected` (batch, n), greedy continuations of `prompts` (rows (1,
    len)), except that a row may part ways where the model's two best bytes are a float tie (`FLOAT_TIE`) and the
    other one of them was taken; at most `max_ties` rows may."""
    ties = 0
    for prompt, expected_row, actual_row in zip(prompts, expected, actual, strict=True):
        differing = (expected_row != actual_row).nonzero()
        if len(differing) == 0:
            continue
        position = int(differing[0])
        with torch.no_grad():
            logits = model(torch.cat([prompt, expected_row[None, :position]], dim=1)).logits[0, -1]
        best = logits.topk(2)
        gap = float(best.values[0] - best.values[1])
        assert gap < FLOAT_TIE and int(actual_row[position]) in best.indices.tolist(), (
            f"new byte {position} differs ({int(actual_row[position])} for {int(expected_row[position])}) where the "
            f"model's best two bytes are {best.indices.tolist()}, {gap:.2e} apart: not a float tie"
        )
        ties += 1
    assert ties <= max_ties, f"{ties} rows part ways at float ties"


class FakeHub:
    """Stands in for the Hugging Face Hub, offline: records the repos, branches and commits that `HfApi` would create,
    each commit's files read at once (`push_to_hub` deletes them right after), and answers `ModelCard.load(repo_id)`
    for a created repo with `card` (None: the repo has no card)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, card: str | None = None):
        self.card = card
        self.repos: list[dict] = []
        self.branches: list[dict] = []
        self.commits: list[dict] = []
        self.load_file_card = ModelCard.load
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: self.create_repo(repo_id, **kwargs))
        monkeypatch.setattr(HfApi, "create_branch", lambda api, repo_id, **kwargs: self.branches.append(kwargs))
        monkeypatch.setattr(
            HfApi,
            "create_commit",
            lambda api, repo_id, operations, **kwargs: self.commit(repo_id, operations, **kwargs),
        )
        monkeypatch.setattr(ModelCard, "load", classmethod(lambda cls, name, *args, **kwargs: self.load_card(name)))
        monkeypatch.setattr("blt_diffusion.hub.get_token", lambda: "hf_test_token")

    @property
    def repo_ids(self) -> set[str]:
        return {repo["repo_id"] for repo in self.repos}

    def create_repo(self, repo_id: str, **kwargs) -> SimpleNamespace:
        self.repos.append({"repo_id": repo_id, **kwargs})
        return SimpleNamespace(repo_id=repo_id)

    def commit(self, repo_id: str, operations, **kwargs) -> SimpleNamespace:
        files = {}
        for operation in operations:
            with operation.as_file() as file:
                files[operation.path_in_repo] = file.read()
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    def load_card(self, name: str | Path) -> ModelCard:
        """The card of a created repo, or of a local file."""
        if str(name) not in self.repo_ids:
            return self.load_file_card(name, ignore_metadata_errors=True)
        if self.card is None:
            raise EntryNotFoundError(f"{name} has no README.md")
        return ModelCard(self.card)


def materialise(files: dict[str, bytes], directory: Path) -> Path:
    """Write a commit's files (`FakeHub.commits[i]["files"]`) to `directory` as a clone of the repo holds them."""
    for path_in_repo, content in files.items():
        (directory / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
        (directory / path_in_repo).write_bytes(content)
    return directory


def build_custom_generate(output_dir: Path) -> Path:
    """The custom_generate repo, built by `scripts/build_custom_generate.py` from the package's current modules."""
    spec = importlib.util.spec_from_file_location("build_custom_generate", SCRIPTS / "build_custom_generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.build(output_dir)


# With `pytest -n auto --dist loadfile` each file runs on one worker, and the workers take files in this order
# (`--no-loadscope-reorder` in pyproject.toml keeps xdist from handing out the files with the most tests first):
# files with a `slow` test start first, so that the workers finish together instead of one running a long file alone
# at the end.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
