"""Publishing to the Hugging Face Hub: check that a directory is a complete repo, then upload it in one commit.

`blt-diffusion push DIR REPO_ID` runs `push_directory`. A model repo is what `save_pretrained`, `blt-diffusion
convert`, `blt-diffusion train` and the shipped model write: weights, config and tokenizer config with `auto_map`, the
remote-code modules they name, a generation config and a model card. A repo of custom generation code (the
`custom_generate/` directory of this project) has a card and `custom_generate/generate.py` with the modules it
imports, and no model.
"""

import json
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from transformers.dynamic_module_utils import get_relative_imports
from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE
from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .modelcard_blt_diffusion import MODEL_CARD_NAME, REPO_ID_PLACEHOLDER

CUSTOM_GENERATE_FILE = "custom_generate/generate.py"
# The Auto classes a model repo maps to its own code, and the file that holds each mapping.
AUTO_MAPS = (
    (CONFIG_NAME, "AutoConfig"),
    (CONFIG_NAME, "AutoModelForCausalLM"),
    (TOKENIZER_CONFIG_FILE, "AutoTokenizer"),
)
# Not part of a repo: caches and version control (hidden names), compiled modules, the Trainer's checkpoints.
IGNORED_DIRECTORIES = ("__pycache__",)
IGNORED_PREFIXES = (".", "checkpoint-")
IGNORED_SUFFIXES = (".pyc",)
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN"
UNAUTHORIZED = 401


class NotLoggedInError(Exception):
    """No Hugging Face token is available, or the Hub refused the one given."""


def is_custom_generate_repo(directory: Path) -> bool:
    """Whether `directory` holds custom generation code without a model."""
    return (directory / CUSTOM_GENERATE_FILE).is_file() and not (directory / CONFIG_NAME).is_file()


def missing_files(directory: str | Path) -> list[str]:
    """What a Hub repo made of `directory` would lack to load (see the module's docstring), as paths in the repo."""
    directory = Path(directory)
    missing = [] if (directory / MODEL_CARD_NAME).is_file() else [MODEL_CARD_NAME]
    if (directory / CUSTOM_GENERATE_FILE).is_file():
        missing += missing_modules(directory, CUSTOM_GENERATE_FILE)
    if not is_custom_generate_repo(directory):
        missing += missing_model_files(directory)
    return list(dict.fromkeys(missing))


def missing_model_files(directory: Path) -> list[str]:
    missing = [name for name in (CONFIG_NAME, GENERATION_CONFIG_NAME) if not (directory / name).is_file()]
    missing += missing_weights(directory)
    for config_name, auto_class in AUTO_MAPS:
        config_path = directory / config_name
        if not config_path.is_file():
            missing.append(config_name)
            continue
        reference = json.loads(config_path.read_text()).get("auto_map", {}).get(auto_class)
        if reference is None:
            missing.append(f"{auto_class} in the auto_map of {config_name}")
            continue
        # A tokenizer maps to (slow, fast) classes; "owner/repo--module.Class" names code in another repo.
        class_path = reference[0] if isinstance(reference, list) else reference
        if "--" not in class_path:
            missing += missing_modules(directory, class_path.rsplit(".", 1)[0] + ".py")
    return missing


def missing_weights(directory: Path) -> list[str]:
    """The safetensors weights: one file, or an index and every shard it names."""
    index_path = directory / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        return [shard for shard in shards if not (directory / shard).is_file()]
    return [] if (directory / SAFE_WEIGHTS_NAME).is_file() else [SAFE_WEIGHTS_NAME]


def missing_modules(directory: Path, module: str) -> list[str]:
    """`module` (a path in the repo) and the modules it imports relatively, recursively, that `directory` lacks."""
    missing, seen, pending = [], set(), [module]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = directory / module
        if not path.is_file():
            missing.append(module)
            continue
        folder = Path(module).parent
        pending += [(folder / f"{name.replace('.', '/')}.py").as_posix() for name in get_relative_imports(path)]
    return sorted(missing)


def repo_files(directory: str | Path) -> list[Path]:
    """The files of `directory` that make up its repo, as paths relative to it."""
    directory = Path(directory)
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        skipped = any(
            part in IGNORED_DIRECTORIES or part.startswith(IGNORED_PREFIXES) or part.endswith(IGNORED_SUFFIXES)
            for part in relative.parts
        )
        if path.is_file() and not skipped:
            files.append(relative)
    return files


def commit_operations(directory: str | Path, repo_id: str) -> list[CommitOperationAdd]:
    """One upload per file of the repo; the model card's usage snippets name `repo_id` instead of the placeholder."""
    directory = Path(directory)
    operations = []
    for relative in repo_files(directory):
        content: str | bytes = str(directory / relative)
        if relative.as_posix() == MODEL_CARD_NAME:
            content = (directory / relative).read_text(encoding="utf-8").replace(REPO_ID_PLACEHOLDER, repo_id).encode()
        operations.append(CommitOperationAdd(path_in_repo=relative.as_posix(), path_or_fileobj=content))
    return operations


def push_directory(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload every file of `directory` to the Hub model repo `repo_id` in one commit, creating the repo (and the
    branch `revision`) where needed; `private` applies to a new repo only (None: the account's default).

    Raises:
        `ValueError`: `directory` is not a directory, or lacks files of a complete repo (`missing_files`).
        `NotLoggedInError`: no Hugging Face token is available, or the Hub refused it.
        `huggingface_hub.errors.HfHubHTTPError`: the Hub refused a request.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"directory not found: {directory}")
    missing = missing_files(directory)
    if missing:
        raise ValueError(f"{directory} is not a complete Hub repo: it lacks {', '.join(missing)}")
    if get_token() is None:
        raise NotLoggedInError(f"not logged in to the Hugging Face Hub: {LOGIN_HINT}")
    api = HfApi()
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == UNAUTHORIZED:
            raise NotLoggedInError(f"the Hugging Face Hub refused the token: {LOGIN_HINT}") from error
        raise
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.create_commit(
        repo_id,
        commit_operations(directory, repo_id),
        commit_message=commit_message or f"Upload {directory.resolve().name} with blt-diffusion push",
        revision=revision,
    )
