"""Model cards of BLT checkpoints: the `README.md` that makes a saved directory a self-describing Hub repo.

A card holds YAML metadata (library, pipeline tag, license, tags, base model, datasets, and a `model-index` with the
measured results), what the model is, how to decode with every strategy it supports (with transformers and
`trust_remote_code`, or with the `blt-diffusion` package), how it was trained, and its evaluation: held-out bits
per byte (`eval_results.json`, written by training) and decoding speed and agreement (`decoding_benchmark.json`,
written by `benchmarks/bench_diffusion.py --json`).

`BltDiffusionForCausalLM.save_pretrained` writes a card where the directory has none, so this module ships as remote
code with the modeling file.
"""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .strategies_blt_diffusion import BLOCK_SIZE, DECODING_STRATEGIES, UNMASKING, UNMASKING_RULES

MODEL_CARD_NAME = "README.md"
EVAL_RESULTS_NAME = "eval_results.json"
DECODING_BENCHMARK_NAME = "decoding_benchmark.json"
TRAINER_STATE_NAME = "trainer_state.json"
PACKAGE_NAME = "blt-diffusion"
# The package's license, which weights it trains from scratch take by default.
PACKAGE_LICENSE = "apache-2.0"
TAGS = ["blt-diffusion", "byte-latent-transformer", "byte-level"]
BLOCK_DIFFUSION_TAG = "block-diffusion"
# Usage snippets load the model from here; `blt-diffusion push` and `push_to_hub` replace it with the repo id.
REPO_ID_PLACEHOLDER = "path/to/this/repo"
PAPER = "Fast Byte Latent Transformer (Kallini et al., 2026)"
# The sentence of the placeholder card that transformers' `push_to_hub` writes to a repo without a card.
TRANSFORMERS_PLACEHOLDER_SENTENCE = "This model card has been automatically generated."
# A Hub repo id (`owner/name`), and the folder of a Hub download in the Hugging Face cache.
HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[\w.-]+?)--(?P<name>[\w.-]+)/snapshots/[0-9a-f]+/?$")
PYTHON_STDLIB = "python-stdlib"


@dataclass
class HeldOutEvaluation:
    """Bits per byte of next-byte prediction on held-out text, as training writes them to `eval_results.json`.

    `compressors` gives the bits per byte of general-purpose compressors (e.g. `{"gzip -9": 2.776}`) on the same
    bytes, for scale.
    """

    bits_per_byte: float
    rows: int | None = None
    sequence_length: int | None = None
    data: str = "held-out text"
    dataset_type: str = "text"
    compressors: dict[str, float] = field(default_factory=dict)
    command: str | None = None

    @classmethod
    def from_results(cls, results: dict) -> "HeldOutEvaluation":
        """From the contents of `eval_results.json`."""
        return cls(
            bits_per_byte=results["heldout_bits_per_byte"],
            rows=results.get("heldout_rows"),
            sequence_length=results.get("sequence_length"),
            data=results.get("heldout_data", cls.data),
            dataset_type=results.get("heldout_dataset_type", cls.dataset_type),
            compressors=results.get("compressors_bits_per_byte", {}),
            command=results.get("heldout_command"),
        )

    def describe_rows(self) -> str:
        if self.rows is None:
            return self.data
        row_length = f" of {self.sequence_length} bytes" if self.sequence_length else ""
        return f"{self.rows} rows{row_length} of {self.data}"


@dataclass
class DecodingResult:
    """One decoding setting of a benchmark, measured against autoregressive decoding of the same model.

    `options` are the `generate` arguments of the setting (`decoding` and its options); ratios are to autoregressive
    decoding; `exact_match` is the share of continuations identical to autoregressive decoding's and `chrf` their
    chrF (0-100); `acceptance_rate` the share of drafted bytes kept, for strategies that draft.
    """

    label: str
    options: dict
    decoder_calls_per_byte: float
    global_calls_per_byte: float
    bandwidth_vs_autoregressive: float
    bytes_per_second: float
    speed_vs_autoregressive: float
    exact_match: float
    chrf: float
    acceptance_rate: float | None = None


@dataclass
class DecodingBenchmark:
    """Decoding settings of one model measured side by side (`decoding_benchmark.json`)."""

    setup: str
    command: str
    data: str
    results: list[DecodingResult]
    dataset_type: str = "text"

    @classmethod
    def from_json(cls, path: str | Path) -> "DecodingBenchmark":
        fields = json.loads(Path(path).read_text())
        fields["results"] = [DecodingResult(**result) for result in fields["results"]]
        return cls(**fields)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class Provenance:
    """Where a model's weights come from: what its card's metadata says about their origin and license.

    `license` None means unknown: weights derived from a checkpoint whose license is not known here keep that
    checkpoint's license, which the card then asks the reader to check.
    """

    base_model: str | None = None
    license: str | None = PACKAGE_LICENSE
    datasets: list[str] = field(default_factory=list)
    # The weights were read from a stock transformers `BltForCausalLM` checkpoint.
    converted_from_stock: bool = False

    @classmethod
    def of(cls, name_or_path: str | Path) -> "Provenance":
        """What `from_pretrained(name_or_path)` tells about a model: nothing for a new model (the package's
        license); the metadata of a local checkpoint's card; a Hub id (or a Hub download in the cache) as the base
        model, of unknown license."""
        name_or_path = str(name_or_path)
        if not name_or_path:
            return cls()
        hub_id = hub_repo_id(name_or_path)
        path = Path(name_or_path)
        if not path.is_dir():
            return cls(base_model=hub_id, license=None)
        provenance = cls(license=None, converted_from_stock=saved_model_type(path) == "blt")
        card_path = path / MODEL_CARD_NAME
        if card_path.is_file():
            metadata = ModelCard.load(card_path, ignore_metadata_errors=True).data
            provenance.base_model = metadata.base_model
            provenance.license = metadata.license
            provenance.datasets = list(metadata.datasets or [])
        if hub_id is not None:
            provenance.base_model = hub_id
        return provenance


def hub_repo_id(name_or_path: str) -> str | None:
    """The Hub repo id that `name_or_path` names: itself when it is no local path, or the repo of a download in the
    Hugging Face cache; None for other local paths."""
    snapshot = HUB_CACHE_SNAPSHOT.search(name_or_path)
    if snapshot:
        return f"{snapshot['owner']}/{snapshot['name']}"
    if HUB_REPO_ID.fullmatch(name_or_path) and not Path(name_or_path).exists():
        return name_or_path
    return None


def saved_model_type(directory: Path) -> str | None:
    config_path = directory / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("model_type")


def is_transformers_placeholder(card_path: str | Path) -> bool:
    """Whether the card at `card_path` is the placeholder that transformers' `push_to_hub` writes to a repo that has
    no card."""
    path = Path(card_path)
    return path.is_file() and TRANSFORMERS_PLACEHOLDER_SENTENCE in path.read_text(encoding="utf-8")


def write_model_card(
    directory: str | Path,
    model,
    *,
    overwrite: bool = False,
    name: str | None = None,
    model_id: str = REPO_ID_PLACEHOLDER,
    provenance: Provenance | None = None,
    summary: str | None = None,
    facts: dict[str, str] | None = None,
    training: str | None = None,
    notes: str | None = None,
    extra_tags: list[str] | None = None,
) -> bool:
    """Write `model`'s card to `directory/README.md`, with the figures the directory holds (`eval_results.json`,
    `decoding_benchmark.json`, `trainer_state.json`). An existing card is kept unless `overwrite`.

    Args:
        directory: the saved checkpoint.
        model (`BltDiffusionForCausalLM`): the model saved there.
        name: the card's title (default: the directory's name).
        model_id: the name the usage snippets load the model by.
        provenance: where the weights come from (default: `Provenance.of(model.name_or_path)`).
        summary, training, notes: Markdown that replaces the card's default description, the account of training
            that the directory's files give, and the closing notes (none by default).
        facts: rows added to the card's table of facts about the model (parameters, block size, patching, bytes).
        extra_tags: tags added to the card's own.

    Returns:
        Whether the card was written.
    """
    card_path = Path(directory) / MODEL_CARD_NAME
    if card_path.exists() and not overwrite:
        return False
    card = build_model_card(
        model,
        name=name if name is not None else Path(directory).resolve().name,
        model_id=model_id,
        provenance=provenance,
        heldout=heldout_evaluation(directory),
        benchmark=decoding_benchmark(directory),
        summary=summary,
        facts=facts,
        training=training if training is not None else training_record(directory),
        notes=notes,
        extra_tags=extra_tags,
    )
    card.save(card_path)
    return True


def heldout_evaluation(directory: str | Path) -> HeldOutEvaluation | None:
    """The held-out evaluation in `directory/eval_results.json`, if there is one."""
    path = Path(directory) / EVAL_RESULTS_NAME
    return HeldOutEvaluation.from_results(json.loads(path.read_text())) if path.is_file() else None


def decoding_benchmark(directory: str | Path) -> DecodingBenchmark | None:
    """The decoding benchmark in `directory/decoding_benchmark.json`, if there is one."""
    path = Path(directory) / DECODING_BENCHMARK_NAME
    return DecodingBenchmark.from_json(path) if path.is_file() else None


def training_record(directory: str | Path) -> str | None:
    """How training made the checkpoint in `directory`, in Markdown, from the `training` entry that
    `blt-diffusion train` writes to `eval_results.json` and the steps in `trainer_state.json`; None without it."""
    results_path = Path(directory) / EVAL_RESULTS_NAME
    if not results_path.is_file():
        return None
    record = json.loads(results_path.read_text()).get("training")
    if record is None:
        return None
    state_path = Path(directory) / TRAINER_STATE_NAME
    steps = json.loads(state_path.read_text())["global_step"] if state_path.is_file() else record["max_steps"]
    return describe_training(record, steps)


def describe_training(record: dict, steps: int) -> str:
    """A paragraph on a `blt-diffusion train` run from its `training` record (see `training/pipeline.py`)."""
    if record["init_from"] is None:
        start = f"A new `{record['model_size']}` model, trained from scratch with `blt-diffusion train`"
    else:
        start = f"Fine-tuned from `{record['init_from']}` with `blt-diffusion train --init-from`"
    if record["trained_patcher"]:
        patching = (
            "its entropy patcher was trained first, the patching threshold set so that patches average "
            f"{record['bytes_per_patch']:g} bytes (at most {record['max_patch_length']}), then the main model trained "
            "with the patcher frozen"
        )
    else:
        patching = "keeping the checkpoint's patcher and patching threshold"
    rows = record["rows_per_step"]
    length = record["sequence_length"]
    seen = steps * rows * length
    seen_text = f"{seen / 1e6:.1f}M" if seen >= 1e6 else f"{seen:,}"
    return (
        f"{start}: {patching}. Data: {record['data']}. {steps:,} optimizer steps of {rows} x {length} bytes "
        f"({seen_text} bytes seen) at peak learning rate {record['learning_rate']:g}, diffusion block size "
        f"{record['block_size']}."
    )


def build_model_card(
    model,
    *,
    name: str,
    model_id: str = REPO_ID_PLACEHOLDER,
    provenance: Provenance | None = None,
    heldout: HeldOutEvaluation | None = None,
    benchmark: DecodingBenchmark | None = None,
    summary: str | None = None,
    facts: dict[str, str] | None = None,
    training: str | None = None,
    notes: str | None = None,
    extra_tags: list[str] | None = None,
) -> ModelCard:
    """The model card of `model` (a `BltDiffusionForCausalLM`), named `name`, with the given figures.

    Without `summary` the card describes the model from its config; without `training` it says where the weights come
    from as far as `provenance` tells.
    """
    provenance = provenance if provenance is not None else Provenance.of(model.name_or_path)
    config = model.config
    sections = [
        f"# {name}",
        summary if summary is not None else default_summary(config),
        facts_table(model, facts or {}),
        usage_section(config, model_id),
        "## Training\n\n" + (training if training is not None else default_training(provenance, config)),
    ]
    if heldout is not None or benchmark is not None:
        sections.append(evaluation_section(heldout, benchmark))
    if notes:
        sections.append(notes)
    sections.append(license_section(provenance))
    metadata = card_metadata(config, name, provenance, heldout, benchmark, extra_tags or [])
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def card_metadata(
    config,
    name: str,
    provenance: Provenance,
    heldout: HeldOutEvaluation | None,
    benchmark: DecodingBenchmark | None,
    extra_tags: list[str],
) -> ModelCardData:
    tags = TAGS + ([BLOCK_DIFFUSION_TAG] if config.diffusion_block_size > 0 else [])
    eval_results = model_index_results(heldout, benchmark)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=provenance.license,
        tags=tags + [tag for tag in extra_tags if tag not in tags],
        base_model=provenance.base_model,
        datasets=provenance.datasets or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )


def model_index_results(heldout: HeldOutEvaluation | None, benchmark: DecodingBenchmark | None) -> list[EvalResult]:
    """The measured figures as `model-index` entries: held-out bits per byte, and per decoding setting its speed
    and decoder calls per byte against autoregressive decoding, and its agreement with it."""
    results = []
    if heldout is not None:
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="next-byte prediction",
                dataset_type=heldout.dataset_type,
                dataset_name=heldout.data,
                dataset_split="heldout",
                metric_type="bits_per_byte",
                metric_name="bits per byte",
                metric_value=round(heldout.bits_per_byte, 4),
            )
        )
    if benchmark is not None:
        for result in benchmark.results:
            setting = ", ".join(f"{name}={value}" for name, value in result.options.items())
            for metric_type, metric, value in (
                ("speed_vs_autoregressive", "bytes/s vs autoregressive", result.speed_vs_autoregressive),
                ("decoder_calls_per_byte", "decoder calls per byte", result.decoder_calls_per_byte),
                ("exact_match_with_autoregressive", "exact match with autoregressive", result.exact_match),
            ):
                results.append(
                    EvalResult(
                        task_type="text-generation",
                        task_name="decoding",
                        dataset_type=benchmark.dataset_type,
                        dataset_name=benchmark.data,
                        dataset_config="decoding-prompts",
                        dataset_split="heldout",
                        metric_type=metric_type,
                        metric_name=f"{result.label}: {metric}",
                        metric_config=setting,
                        metric_value=value,
                    )
                )
    return results


def default_summary(config) -> str:
    if config.diffusion_block_size > 0:
        kind = (
            "trained with the block-diffusion objective (BLT-D, block size "
            f"{config.diffusion_block_size}), so that it also writes several bytes per decoder call"
        )
    else:
        kind = "a plain BLT (diffusion block size 0): it decodes autoregressively and self-speculatively (BLT-S)"
    return (
        "A Byte Latent Transformer, a byte-level language model: no vocabulary, any text is its UTF-8 bytes, which an "
        f"entropy patcher groups into patches for the global transformer. This checkpoint is {kind}. It runs with "
        f"transformers (`trust_remote_code=True`) or with the `{PACKAGE_NAME}` package, which implements the decoding "
        f"strategies of the {PAPER} behind one `generate()`."
    )


def facts_table(model, extra_facts: dict[str, str]) -> str:
    """A two-column table: parameters, diffusion block size, patching and the byte ids, then `extra_facts`."""
    config = model.config

    def stack(sub_config) -> str:
        return f"{sub_config.hidden_size}x{sub_config.num_hidden_layers}"

    tables = len(config.encoder_hash_byte_group_size) * config.encoder_hash_byte_group_nb_functions
    block = config.diffusion_block_size
    rows = [
        (
            "parameters",
            f"{model.num_parameters() / 1e6:.2f}M (patcher {stack(config.patcher_config)}, local encoder "
            f"{stack(config.encoder_config)}, local decoder {stack(config.decoder_config)}, global transformer "
            f"{stack(config.global_config)}, hash n-gram tables {tables} x {config.encoder_hash_byte_group_vocab})",
        ),
        (
            "diffusion block size",
            f"{block} (trained); decoding may use any block size up to {block}" if block else "0",
        ),
        (
            "patching",
            f"{config.patching_mode} patcher, threshold {config.patching_threshold:.3f} nats"
            + (f", at most {config.max_patch_length} bytes per patch" if config.max_patch_length else ""),
        ),
        ("bytes", "byte b is token b + 4; 0 `<boe>`, 1 `<s>` (BOS), 2 `</s>` (EOS), 3 `<pad>`"),
        *extra_facts.items(),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def strategy_call(strategy, config) -> str:
    """The `generate` arguments that select `strategy`, with its options at their defaults."""
    options = {"decoding": strategy.name}
    if BLOCK_SIZE in strategy.options:
        options[BLOCK_SIZE.name] = config.diffusion_block_size
    options |= strategy.option_defaults()
    # Of the unmasking rules' knobs, only the default rule's.
    rule = UNMASKING_RULES.get(options.get(UNMASKING.name))
    for other in UNMASKING_RULES.values():
        if other.knob is not None and other is not rule:
            options.pop(other.knob.name, None)
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in options.items())


def usage_section(config, model_id: str) -> str:
    strategies = [strategy for strategy in DECODING_STRATEGIES.values() if strategy.runs_on(config)]
    calls = "\n".join(
        f"output = model.generate(**inputs, max_new_tokens=128, {strategy_call(strategy, config)})"
        for strategy in strategies
    )
    table = "\n".join(
        f"| `{strategy.name}` | {strategy.paper_name} | {strategy.summary} | {'yes' if strategy.lossless else 'no'} |"
        for strategy in strategies
    )
    unavailable = [strategy.name for strategy in DECODING_STRATEGIES.values() if not strategy.runs_on(config)]
    note = (
        f"\n\n{' and '.join(f'`{name}`' for name in unavailable)} need a BLT-D checkpoint: fine-tune this one with "
        f"`{PACKAGE_NAME} train --init-from DIR --block-size 8`."
        if unavailable
        else ""
    )
    return f"""## Use

With transformers alone: the modeling code ships in this repo.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{model_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{model_id}", trust_remote_code=True)
inputs = tokenizer("def fibonacci(n):", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=128, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```

With the `{PACKAGE_NAME}` package installed, `import blt_diffusion` registers the classes with the Auto classes (no
`trust_remote_code` needed), and `BltDiffusionForCausalLM.from_pretrained("{model_id}")` loads the model too.

Every decoding strategy this checkpoint supports runs through the same `generate()`, with the options shown at their
defaults; `return_dict_in_generate=True` adds per-row costs (`decoder_nfe`, `global_nfe`, `memory_bandwidth_gb`,
`acceptance_rate`):

| `decoding=` | paper | how | lossless |
|---|---|---|---|
{table}

```python
{calls}
```{note}"""


def default_training(provenance: Provenance, config) -> str:
    if provenance.converted_from_stock:
        text = (
            f"Converted by `{PACKAGE_NAME}` from a stock transformers `BltForCausalLM` checkpoint: every weight is "
            "kept, so that autoregressive decoding gives the stock model's bytes."
        )
        if config.diffusion_block_size > 0:
            text += (
                " The masked-byte embedding of block diffusion is new: fine-tune (`blt-diffusion train --init-from`) "
                'before decoding with `decoding="diffusion"`.'
            )
        return text
    if provenance.base_model is not None:
        return f"Derived from [`{provenance.base_model}`](https://huggingface.co/{provenance.base_model})."
    return "How these weights were trained is not recorded here."


def evaluation_section(heldout: HeldOutEvaluation | None, benchmark: DecodingBenchmark | None) -> str:
    parts = ["## Evaluation"]
    if heldout is not None:
        rows = [("this model (next-byte loss within each row)", heldout.bits_per_byte)]
        rows += [(f"{name} on the same bytes, as one stream", value) for name, value in heldout.compressors.items()]
        command = f"\n\n```bash\n{heldout.command}\n```" if heldout.command else ""
        table = "| | bits per byte |\n|---|---:|\n" + "\n".join(f"| {label} | {value:.3f} |" for label, value in rows)
        parts.append(f"### Held-out bits per byte\n\nOn {heldout.describe_rows()}:{command}\n\n{table}")
    if benchmark is not None:
        header = (
            "| decoding | decoder calls / byte | enc+global calls / byte | est. bandwidth vs AR | bytes/s "
            "| speed vs AR | exact match with AR | chrF vs AR | acceptance |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        lines = [
            f"| {result.label} | {result.decoder_calls_per_byte:.3f} | {result.global_calls_per_byte:.3f} | "
            f"{result.bandwidth_vs_autoregressive:.1%} | {result.bytes_per_second:.0f} | "
            f"{result.speed_vs_autoregressive:.2f}x | {result.exact_match:.0%} | {result.chrf:.1f} | "
            + (f"{result.acceptance_rate:.1%}" if result.acceptance_rate is not None else "-")
            + " |"
            for result in benchmark.results
        ]
        parts.append(
            f"### Decoding speed and agreement\n\n{benchmark.setup}\n\n```bash\n{benchmark.command}\n```\n\n"
            + header
            + "\n"
            + "\n".join(lines)
        )
    return "\n\n".join(parts)


def license_section(provenance: Provenance) -> str:
    if provenance.license is not None:
        return f"## License\n\n`{provenance.license}`."
    return (
        "## License\n\nNot recorded: these weights derive from a checkpoint whose license applies; check it and set "
        "`license` in this card's metadata."
    )
