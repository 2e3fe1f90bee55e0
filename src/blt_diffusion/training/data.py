"""Byte-level training data: source files, a held-out split by module, packing into fixed-length rows, bits per byte
(of a model, and of gzip and xz on the same bytes as a baseline).

Everything here is offline and deterministic. The default corpus is the running interpreter's own standard library
(about 12 MB of Python without its tests), split into "train" and "heldout" by top-level module so that no module
has files on both sides.
"""

import functools
import gzip
import hashlib
import lzma
import math
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

# Same byte convention as `BltDiffusionTokenizer`: byte b is id b + 4.
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 4

SPLITS = ("train", "heldout")
# One top-level module in HELDOUT_MODULUS goes to the held-out split.
HELDOUT_MODULUS = 20
# Directory names that hold tests (`test`, `tests`, `idlelib/idle_test`, `lib2to3/tests`, ...), third-party
# packages or bytecode, anywhere below the standard library's root.
EXCLUDED_DIRECTORIES = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# Generated codec tables (about 1.3 MB of near-identical files): held out, they would dominate held-out bits per byte
# with text unlike any other Python, so they are always training data.
TRAIN_ONLY_MODULES = frozenset({"encodings"})
# The baselines of `compressed_bits_per_byte`, each at its strongest setting.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": functools.partial(gzip.compress, compresslevel=9),
    "xz": functools.partial(lzma.compress, preset=9 | lzma.PRESET_EXTREME),
}


def is_utf8(path: Path) -> bool:
    """Whether the file's bytes decode as UTF-8."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def module_split(module_name: str) -> str:
    """The split ("train" or "heldout") of a top-level module or package name.

    A stable hash keeps the split identical across runs and machines.
    """
    if module_name in TRAIN_ONLY_MODULES:
        return "train"
    return "heldout" if stable_hash(module_name) % HELDOUT_MODULUS == 0 else "train"


def stable_hash(name: str) -> int:
    """A 64-bit hash of `name` that is identical across runs and machines (SHA-256, not Python's per-process salted
    `hash`)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def stdlib_source_files(split: str) -> list[Path]:
    """The standard library's `.py` files of one split, sorted.

    Test directories, `site-packages`, files that are not valid UTF-8 and files outside importable top-level names
    (such as `config-3.11-x86_64-linux-gnu/python-config.py`) are left out.

    Args:
        split (`str`): "train" or "heldout". Files are assigned by top-level module (`email/parser.py` belongs to
            `email`), so a package never straddles the two splits.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        module_name = relative.parts[0].removesuffix(".py")
        if EXCLUDED_DIRECTORIES.intersection(relative.parts[:-1]) or not module_name.isidentifier():
            continue
        if module_split(module_name) == split and is_utf8(path):
            files.append(path)
    return sorted(files)


def text_files(paths: Iterable[str | Path], suffixes: Sequence[str] | None = None) -> list[Path]:
    """Expand user-given files and directories into a sorted list of files, without duplicates.

    Args:
        paths: files, kept as given, and directories, searched recursively for UTF-8 text files (hidden entries and
            files that are not valid UTF-8 are skipped).
        suffixes (`Sequence[str]`, *optional*): keep only directory entries with one of these suffixes, e.g.
            `(".py", ".md")`. None keeps every file.
    """
    files = set()
    for path in map(Path, paths):
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(candidate for candidate in directory_entries(path, suffixes) if is_utf8(candidate))
        else:
            raise FileNotFoundError(f"No such file or directory: {path}")
    return sorted(files)


def directory_entries(directory: Path, suffixes: Sequence[str] | None = None) -> Iterator[Path]:
    """The files under `directory` that `text_files` considers, UTF-8 or not: not hidden, with one of `suffixes`."""
    for candidate in directory.rglob("*"):
        hidden = any(part.startswith(".") for part in candidate.relative_to(directory).parts)
        if not hidden and candidate.is_file() and (suffixes is None or candidate.suffix in suffixes):
            yield candidate


def skipped_files_note(paths: Iterable[str | Path], suffixes: Sequence[str] | None = None) -> str:
    """ " (N more were skipped as not valid UTF-8 text)": the files `text_files` skips under the directories among
    `paths`, for an error about too few files; empty when it skips none."""
    directories = [path for path in map(Path, paths) if path.is_dir()]
    skipped = sum(not is_utf8(entry) for directory in directories for entry in directory_entries(directory, suffixes))
    return f" ({skipped} more were skipped as not valid UTF-8 text)" if skipped else ""


def split_text_files(paths: Iterable[str | Path], suffixes: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Expand files and directories as `text_files` does and split the files into "train" and "heldout".

    A file is held out when the stable hash of its name relative to the argument it was found under (its bare name
    for a file given directly) is 0 modulo `HELDOUT_MODULUS`, about one file in 20, so a file keeps its split
    wherever the corpus lies and whatever other files it holds. Only when that leaves a side empty are files moved,
    in order of that hash modulo `HELDOUT_MODULUS`, so that each side has at least one.

    Args:
        paths: files and directories, as for `text_files`.
        suffixes (`Sequence[str]`, *optional*): as for `text_files`.

    Returns:
        `{"train": [...], "heldout": [...]}`, each sorted.

    Raises:
        `ValueError`: fewer than two files, so that none can be held out.
    """
    paths = list(paths)
    names = {}
    for root in map(Path, paths):
        for path in text_files([root], suffixes):
            names.setdefault(path, (path.relative_to(root) if root.is_dir() else Path(path.name)).as_posix())
    if len(names) < 2:
        raise ValueError(
            f"Holding out files needs at least two files, found {len(names)}{skipped_files_note(paths, suffixes)}."
        )
    ranked = sorted(names, key=lambda path: (stable_hash(names[path]) % HELDOUT_MODULUS, names[path], path))
    num_heldout = sum(stable_hash(name) % HELDOUT_MODULUS == 0 for name in names.values())
    num_heldout = min(max(num_heldout, 1), len(ranked) - 1)
    return {"train": sorted(ranked[num_heldout:]), "heldout": sorted(ranked[:num_heldout])}


def document_ids(path: Path) -> np.ndarray:
    """A file as one document: BOS, its bytes as ids (b + 4), EOS. Returns an int64 array of shape (bytes + 2,)."""
    content = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    return np.concatenate([[BOS_ID], content, [EOS_ID]])


def pack_byte_sequences(
    paths: Iterable[str | Path], sequence_length: int, max_bytes: int | None = None
) -> datasets.Dataset:
    """Pack files into fixed-length rows for next-byte training.

    Each file is one document, BOS + bytes + EOS. The documents are concatenated in sorted path order and the stream
    is cut into rows of `sequence_length` ids; the incomplete last row is dropped. Rows cross document boundaries,
    as in the usual packed language-model training.

    Args:
        paths: the files, e.g. from `stdlib_source_files` or `text_files`.
        sequence_length (`int`): ids per row.
        max_bytes (`int`, *optional*): stop after this many ids of stream (BOS and EOS included), for quick runs.

    Returns:
        `datasets.Dataset` with columns `input_ids` and `labels`, each a list of `sequence_length` int64 ids;
        `labels` equals `input_ids` (the model shifts them itself).
    """
    if sequence_length < 2:
        raise ValueError(f"`sequence_length` must be at least 2 (one input and one target), got {sequence_length}.")
    documents = []
    stream_length = 0
    for path in sorted(map(Path, paths)):
        if max_bytes is not None and stream_length >= max_bytes:
            break
        documents.append(document_ids(path))
        stream_length += len(documents[-1])
    stream = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    if max_bytes is not None:
        stream = stream[:max_bytes]
    num_rows = len(stream) // sequence_length
    # An Arrow array built from the NumPy buffer without copying it into Python lists (seconds instead of minutes for
    # the standard library); both columns share it.
    rows = pa.FixedSizeListArray.from_arrays(pa.array(stream[: num_rows * sequence_length]), sequence_length)
    row_feature = datasets.List(datasets.Value("int64"), length=sequence_length)
    features = datasets.Features({"input_ids": row_feature, "labels": row_feature})
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows}, features=features)


def evenly_spaced_rows(num_rows: int, max_rows: int | None) -> list[int]:
    """Indices of at most `max_rows` rows spread evenly over `num_rows`, so that a bounded evaluation still sees
    every part of a corpus sorted by file."""
    if max_rows is None or max_rows >= num_rows:
        return list(range(num_rows))
    return [index * num_rows // max_rows for index in range(max_rows)]


def select_rows(rows: datasets.Dataset | torch.Tensor | Sequence[Sequence[int]], max_rows: int | None) -> torch.Tensor:
    """At most `max_rows` of `rows`, evenly spaced (all of them for None), as an int64 tensor of shape `(rows, seq)`.

    Args:
        rows: a `datasets.Dataset` with an `input_ids` column, a tensor of shape `(rows, seq)` or a list of equally
            long id lists.
        max_rows (`int`, *optional*): keep at most this many rows.
    """
    if len(rows) == 0:
        raise ValueError("No rows to evaluate.")
    indices = evenly_spaced_rows(len(rows), max_rows)
    if isinstance(rows, datasets.Dataset):
        return rows.select(indices).with_format("torch")[:]["input_ids"].long()
    return torch.as_tensor(rows)[indices].long()


@torch.no_grad()
def heldout_bits_per_byte(
    model: torch.nn.Module,
    rows: datasets.Dataset | torch.Tensor | Sequence[Sequence[int]],
    batch_size: int = 8,
    max_rows: int | None = None,
) -> float:
    """Mean next-byte cross-entropy of `model` on held-out rows, in bits per byte.

    Every id after the first of a row is a target; BOS and EOS count as bytes (one pair per file, a negligible share).
    The loss is computed from the next-byte logits, so a BLT-D model is scored on exactly its autoregressive (clean)
    loss without paying for a diffusion pass. The model is left in eval mode.

    Args:
        model: a `BltDiffusionForCausalLM` (or any causal LM whose output has `.loss`, and `.clean_loss` if any).
        rows: a `datasets.Dataset` with an `input_ids` column, a tensor of shape `(rows, seq)` or a list of equally
            long id lists.
        batch_size (`int`): rows per forward pass.
        max_rows (`int`, *optional*): evaluate at most this many rows, evenly spaced over `rows`.
    """
    model.eval()
    device = next(model.parameters()).device
    total_nats = 0.0
    total_targets = 0
    for input_ids in select_rows(rows, max_rows).split(batch_size):
        input_ids = input_ids.to(device)
        logits = model(input_ids=input_ids).logits[:, :-1]
        targets = input_ids[:, 1:]
        total_nats += float(
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        )
        total_targets += targets.numel()
    return total_nats / total_targets / math.log(2)


def compressed_bits_per_byte(
    rows: datasets.Dataset | torch.Tensor | Sequence[Sequence[int]], max_rows: int | None = None
) -> dict[str, float]:
    """Bits per byte of general-purpose compressors (`COMPRESSORS`: gzip and xz) on the bytes that
    `heldout_bits_per_byte(model, rows, max_rows=max_rows)` scores, a baseline for a model's figure.

    The targets of the selected rows (every id after the first of a row) are compressed as one stream, in order,
    without BOS and EOS, which are document markers rather than bytes. Across rows the compressors keep their
    context, which the model, reading each row on its own, does not: the baseline errs in the compressors' favour.

    Args:
        rows, max_rows: as for `heldout_bits_per_byte`.

    Returns:
        `{"gzip": ..., "xz": ...}`, compressed bits per byte of text.
    """
    targets = select_rows(rows, max_rows)[:, 1:].flatten()
    data = bytes((targets[targets >= BYTE_OFFSET] - BYTE_OFFSET).tolist())
    if not data:
        raise ValueError("The rows hold no bytes to compress.")
    return {name: 8 * len(compress(data)) / len(data) for name, compress in COMPRESSORS.items()}
