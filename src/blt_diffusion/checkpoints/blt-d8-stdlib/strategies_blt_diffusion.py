"""Decoding strategies for BLT models: how each produces bytes, and what it needs and reads.

A strategy (`DecodingStrategy`) only decides which bytes come next; `BltDiffusionGenerationMixin.generate` owns
everything strategies share. Each strategy describes itself: the checkpoint it needs and the generation-config
options it reads (`StrategyOption`, which hold their defaults), so that the command line, the examples and the
README's strategy table derive from `DECODING_STRATEGIES`. Unmasking rules of block diffusion are small classes
with one interface (`UnmaskingRule`). Strategies talk to the model only through its decoding interface
(`append_bytes`, `draft_logits`, `open_block`, `block_logits`).
"""

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessorList,
    MinPLogitsWarper,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .cache_blt_diffusion import common_prefix_lengths, left_padding
from .compiled_steps_blt_diffusion import capacity_for_compiled_steps, compiles_steps

if TYPE_CHECKING:
    from .cache_blt_diffusion import BltDiffusionCache
    from .generation_blt_diffusion import BltDiffusionGenerationConfig


def check_integer(name: str, value, minimum: int) -> None:
    """Raise a TypeError naming `name` unless `value` is an integer (not a bool, a float or None), and a ValueError
    unless it is at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")


def check_real(name: str, value, low: float, high: float, open_low: bool = False, open_high: bool = False) -> None:
    """Raise a TypeError naming `name` unless `value` is a real number, and a ValueError unless it lies between `low`
    and `high` (each end excluded when `open_low` / `open_high`); NaN lies nowhere."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    above_low = value > low if open_low else value >= low
    below_high = value < high if open_high else value <= high
    if not (above_low and below_high):
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value}.")


@dataclass(frozen=True)
class StrategyOption:
    """A field of `BltDiffusionGenerationConfig` that decoding strategies read, described once for every place that
    offers it: the config's default, and the command line's flag (`--` + the name with dashes), metavar and help.

    `type` is `int` for counts of bytes (at least 1), `float` (within `bounds`) or `str`. `default_help` says what a
    default of None stands for; options with another default cannot be None.
    """

    name: str
    type: type
    default: int | float | str | None
    metavar: str
    help: str
    default_help: str | None = None
    bounds: tuple[float, float] = (-math.inf, math.inf)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def described_default(self) -> str:
        return self.default_help if self.default is None else str(self.default)

    def check(self, value) -> None:
        """Raise a TypeError or ValueError naming this option unless `value` is one it accepts."""
        if value is None and self.default is None:
            return
        if self.type is int:
            check_integer(self.name, value, minimum=1)
        elif self.type is float:
            check_real(self.name, value, *self.bounds)
        elif not isinstance(value, str):
            raise TypeError(f"`{self.name}` must be a string, got {value!r} ({type(value).__name__}).")


BLOCK_SIZE = StrategyOption(
    "block_size",
    int,
    None,
    "B",
    "bytes per block, at most the trained block size",
    default_help="the trained block size",
)
CONFIDENCE_THRESHOLD = StrategyOption(
    "confidence_threshold",
    float,
    0.7,
    "P",
    "confidence rule: commit every byte more likely than P, at least one",
    bounds=(0.0, 1.0),
)
ENTROPY_BOUND = StrategyOption(
    "entropy_bound",
    float,
    1.0,
    "NATS",
    "entropy_bound rule: commit the surest bytes while their summed entropy stays within NATS, at least one",
    bounds=(0.0, math.inf),
)
DRAFT_LENGTH = StrategyOption("draft_length", int, 8, "K", "bytes drafted per round")
# Transformers' assisted-generation fields: None stands for transformers' defaults, which `generate` fills in.
NUM_ASSISTANT_TOKENS = StrategyOption(
    "num_assistant_tokens",
    int,
    None,
    "K",
    "the most bytes the assistant model drafts per round",
    default_help="20, as in transformers",
)
ASSISTANT_CONFIDENCE_THRESHOLD = StrategyOption(
    "assistant_confidence_threshold",
    float,
    None,
    "P",
    "a row's draft ends after a byte the assistant model gives a probability below P (0: never)",
    default_help="0.4, as in transformers",
    bounds=(0.0, 1.0),
)
# Transformers' prompt-lookup fields: None leaves prompt lookup off unless `decoding="prompt_lookup"` asks for it.
PROMPT_LOOKUP_NUM_TOKENS = StrategyOption(
    "prompt_lookup_num_tokens",
    int,
    None,
    "K",
    "bytes copied per round from after an earlier occurrence of the text's last bytes",
    default_help="16",
)
MAX_MATCHING_NGRAM_SIZE = StrategyOption(
    "max_matching_ngram_size",
    int,
    None,
    "N",
    "the longest run of the text's last bytes looked up in the prompt and output",
    default_help="32",
)


class UnmaskingRule:
    """Which masked cells of a diffusion block one denoising step commits.

    A rule ranks every cell by the model's distribution over its byte (`rank`), then picks cells to unmask from the
    ranking (`select`). `knob` is the generation-config option the rule reads, passed to its constructor by
    `from_config`; None when it reads none.
    """

    name: ClassVar[str]
    knob: ClassVar[StrategyOption | None] = None

    @classmethod
    def from_config(cls, generation_config: "BltDiffusionGenerationConfig") -> "UnmaskingRule":
        return cls() if cls.knob is None else cls(getattr(generation_config, cls.knob.name))

    def rank(self, logits: torch.Tensor) -> torch.Tensor:
        """Confidence of every cell, its largest probability: logits (batch, block, vocab) -> (batch, block)."""
        return logits.softmax(dim=-1).max(dim=-1).values

    def select(self, masked: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        """Cells to unmask (batch, block) boolean, among the `masked` ones (batch, block), given `rank`'s output."""
        raise NotImplementedError


class ConfidenceUnmasking(UnmaskingRule):
    """Mask-Predict / Fast-dLLM style: every masked cell whose confidence exceeds the threshold, or the single most
    confident masked cell of a row where none does."""

    name = "confidence"
    knob = CONFIDENCE_THRESHOLD

    def __init__(self, threshold: float):
        self.threshold = threshold

    def select(self, masked: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        confidence = ranking.masked_fill(~masked, -1.0)
        selected = masked & (confidence > self.threshold)
        best = torch.zeros_like(masked).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
        return torch.where(selected.any(dim=1, keepdim=True), selected, best & masked)


class EntropyBoundUnmasking(UnmaskingRule):
    """The lowest-entropy masked cells while their cumulative entropy stays within the bound (nats), and at least the
    lowest one. This is the paper's wording (plain cumulative sum); the EB-sampler paper subtracts the largest
    entropy, which admits one more cell."""

    name = "entropy_bound"
    knob = ENTROPY_BOUND

    def __init__(self, bound: float):
        self.bound = bound

    def rank(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy (nats) of every cell's distribution: logits (batch, block, vocab) -> (batch, block)."""
        return -(logits.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum(dim=-1)

    def select(self, masked: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        entropy = ranking.masked_fill(~masked, float("inf"))
        order = entropy.argsort(dim=1)
        sorted_entropy = entropy.gather(1, order)
        within = sorted_entropy.cumsum(dim=1) <= self.bound
        within[:, 0] = True
        selected_sorted = within & sorted_entropy.isfinite()
        return torch.zeros_like(masked).scatter(1, order, selected_sorted) & masked


class OneStepUnmasking(UnmaskingRule):
    """Every masked cell at once: one decoder call per block."""

    name = "one_step"

    def select(self, masked: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        return masked


UNMASKING_RULES: dict[str, type[UnmaskingRule]] = {
    rule.name: rule for rule in (ConfidenceUnmasking, EntropyBoundUnmasking, OneStepUnmasking)
}

UNMASKING = StrategyOption(
    "unmasking",
    str,
    None,
    "RULE",
    f"which bytes of a block each decoder call commits: {', '.join(sorted(UNMASKING_RULES))}",
    default_help="the model's generation config",
)
# What block-diffusion strategies read: the block, the unmasking rule and every rule's knob.
BLOCK_DIFFUSION_OPTIONS = (BLOCK_SIZE, UNMASKING, *(rule.knob for rule in UNMASKING_RULES.values() if rule.knob))


def apply_processors(
    logits_processor: LogitsProcessorList, input_ids: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """`logits_processor(input_ids, scores)` without `LogitsProcessorList.__call__`'s per-call signature inspection,
    a measurable cost when it runs for every byte: no extra keyword arguments are ever passed here."""
    for processor in logits_processor:
        scores = processor(input_ids, scores)
    return scores


# Transformers' processors that read only the scores, never the ids before them: one call covers bytes that follow
# different histories (every cell of a block, rows of different lengths).
HISTORY_FREE_PROCESSORS = (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    TopHLogitsWarper,
    InfNanRemoveLogitsProcessor,
    SuppressTokensLogitsProcessor,
    LogitNormalization,
)


class RowwiseLogitsProcessors:
    """The logits processors of a generation, built for the whole batch and, on demand, for each row alone.

    Transformers builds processors for a batch that grows in lockstep, and some keep state per row of that batch: the
    repetition penalty skips each row's left padding (`prompt_ignore_length`), the encoder repetition penalty and the
    encoder n-gram ban read each row's prompt. When rows hold different numbers of bytes (speculative decoding accepts
    different numbers per row), each row is processed alone, with the processors `build_for_row` builds for it, whose
    state is that row's.
    """

    def __init__(self, batch: LogitsProcessorList, build_for_row: Callable[[int], LogitsProcessorList]):
        self.batch = batch
        self.build_for_row = build_for_row
        self.reads_history = not all(isinstance(processor, HISTORY_FREE_PROCESSORS) for processor in batch)
        self.rows: dict[int, LogitsProcessorList] = {}

    def __bool__(self) -> bool:
        return bool(self.batch)

    def for_row(self, row: int) -> LogitsProcessorList:
        if row not in self.rows:
            self.rows[row] = self.build_for_row(row)
        return self.rows[row]


def reuse_cache(cache: "BltDiffusionCache", input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int | None:
    """Crop `cache` so that every row appends the same number of its prompt's last bytes, as few as the bytes it
    shares with the prompts allow, and return that number; None, leaving the cache as it is, when some prompt is
    shorter than that (reading the prompts afresh is then the only way).

    Args:
        input_ids (`torch.Tensor` of shape `(batch, prompt)`): prompts, left-padded under `attention_mask`.
    """
    padding = left_padding(attention_mask)
    lengths = input_ids.shape[1] - padding
    held = cache.held_prefix_lengths(input_ids, padding, torch.full_like(padding, input_ids.shape[1]))
    # The last byte is always appended: its logits start decoding.
    held = torch.minimum(held, lengths - 1)
    width = int((lengths - held).max())
    if bool((lengths < width).any()):
        return None
    cache.crop(lengths - width)
    return width


def open_cache(
    model, cache: "BltDiffusionCache | None", input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int
) -> tuple["BltDiffusionCache", torch.Tensor, torch.Tensor | None]:
    """A cache for `model` to decode after the prompts `input_ids` (batch, prompt), left-padded under
    `attention_mask`, and the prompt bytes it does not hold yet (batch, new) with their attention mask: `cache` kept
    for the bytes it shares with the prompts (`reuse_cache`) where it can be, else a new one with room for `capacity`
    bytes per row."""
    if cache is not None:
        width = reuse_cache(cache, input_ids, attention_mask)
        if width is not None:
            return cache, input_ids[:, -width:], None
    return model.new_cache(input_ids.shape[0], capacity, device=input_ids.device), input_ids, attention_mask


class RunningLength(Enum):
    """What `GenerationState` knows of its running rows' common length when it is not a number on the host."""

    UNREAD = "to be read from the device"
    NOT_SHARED = "the running rows hold different numbers of bytes"


class CommittedByteRecord:
    """A (vocab,) vector per committed byte of every row (processed scores or raw logits), kept as transformers'
    `generate` returns them: one (batch, vocab) tensor per generated position, whatever number of bytes each row
    committed per call. Positions a row never reached (it stopped earlier) hold zeros.

    `values` (batch, max_new_tokens, vocab) is allocated by the first write, which gives the vocabulary.
    """

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens
        self.values: torch.Tensor | None = None

    def write(self, positions: torch.Tensor, vectors: torch.Tensor, rows_that_take: torch.Tensor) -> None:
        """Store `vectors` (batch, vocab) at generated position `positions` (batch,) of the rows that take a byte
        (batch,) boolean."""
        if self.values is None:
            self.values = vectors.new_zeros(vectors.shape[0], self.max_new_tokens, vectors.shape[1])
        rows = torch.arange(vectors.shape[0], device=vectors.device)
        self.values[rows, positions] = torch.where(rows_that_take[:, None], vectors, self.values[rows, positions])

    def steps(self, num_generated: int) -> tuple[torch.Tensor, ...]:
        """One (batch, vocab) tensor per generated position, `num_generated` of them."""
        if self.values is None:
            return ()
        return tuple(self.values[:, position] for position in range(num_generated))


class GenerationState:
    """Sequences being generated, which rows are still running, and what each row has cost so far.

    `sequences` (batch, prompt + max_new) is preallocated with padding; `num_generated` (batch,) counts committed
    bytes per row. Strategies commit bytes through `commit`, which applies EOS, the exact `max_new_tokens` budget,
    stopping criteria and streaming in one place, and keeps the processed scores and raw logits of committed bytes
    when the generation config asks for them (`output_scores`, `output_logits`).

    Each read of a device value is a synchronisation on a GPU, so the host keeps what it can work out without one:
    whether some row runs (from the last `done`), the running rows' common length and the longest row's, which stay
    known while every running row takes each offered byte (autoregressive decoding) and are read again only after a
    commit of different numbers of bytes per row.
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        generation_config: "BltDiffusionGenerationConfig",
        stopping_criteria: StoppingCriteriaList,
        streamer,
        attention_mask: torch.Tensor | None = None,
    ):
        batch_size, prompt_length = input_ids.shape
        device = input_ids.device
        self.prompt_length = prompt_length
        # Left padding of each prompt (batch,).
        self.prompt_padding = (
            torch.zeros(batch_size, dtype=torch.long, device=device)
            if attention_mask is None
            else left_padding(attention_mask)
        )
        self.max_new_tokens = max_new_tokens
        self.pad_token_id = generation_config.pad_token_id
        self.stopping_criteria = stopping_criteria
        self.streamer = streamer
        self.sequences = torch.full(
            (batch_size, prompt_length + max_new_tokens), self.pad_token_id, dtype=torch.long, device=device
        )
        self.sequences[:, :prompt_length] = input_ids
        self.num_generated = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.unfinished = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.decoder_nfe = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.global_nfe = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.patcher_nfe = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cell_encoder_nfe = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.last_scores: torch.Tensor | None = None
        self.scores = CommittedByteRecord(max_new_tokens) if generation_config.output_scores else None
        self.raw_logits = CommittedByteRecord(max_new_tokens) if generation_config.output_logits else None
        if max_new_tokens == 0:
            self.unfinished[:] = False
        # Host-side knowledge, None (or UNREAD) when it must be read: the last `done` answer, the running rows' common
        # length and the longest row's length.
        self._done: bool | None = None
        self._running_length: int | RunningLength = prompt_length
        self._longest: int | None = prompt_length

    @property
    def done(self) -> bool:
        if self._done is None:
            self._done = not bool(self.unfinished.any())
        return self._done

    @property
    def shared_length(self) -> int | None:
        """The committed length (prompt included) of every running row, the longest row's when none runs, or None
        when running rows differ (speculative decoding accepts different numbers of bytes per row)."""
        if self.done:
            return self.longest()
        if self._running_length is RunningLength.UNREAD:
            lengths = (self.prompt_length + self.num_generated)[self.unfinished]
            shared = bool((lengths == lengths[0]).all())
            self._running_length = int(lengths[0]) if shared else RunningLength.NOT_SHARED
        return None if self._running_length is RunningLength.NOT_SHARED else self._running_length

    def longest(self) -> int:
        """The longest row's committed length, prompt included."""
        if self._longest is None:
            self._longest = self.prompt_length + int(self.num_generated.max())
        return self._longest

    def count_calls(
        self,
        decoder: torch.Tensor | int = 0,
        global_: torch.Tensor | int = 0,
        patcher: torch.Tensor | int = 0,
        cell_encoder: torch.Tensor | int = 0,
    ):
        """Add calls to the cost of the rows that are still running (each argument scalar or (batch,))."""
        running = self.unfinished.long()
        self.decoder_nfe += running * decoder
        self.global_nfe += running * global_
        self.patcher_nfe += running * patcher
        self.cell_encoder_nfe += running * cell_encoder

    def commit(
        self,
        tokens: torch.Tensor,
        counts: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append up to `counts[r]` bytes of `tokens[r]` (batch, n) to each running row, in order.

        A row takes bytes until its count, its `max_new_tokens` budget, EOS or a stopping criterion says stop (the
        byte that triggers EOS or a criterion is kept); the streamer then receives the committed bytes as one block.
        `scores` and `logits` (batch, n, vocab), the processed scores and raw logits each offered byte was chosen
        from, are kept for the bytes taken when the generation config asks for them.

        Returns:
            `torch.Tensor` of shape `(batch,)`: how many bytes each row took.
        """
        batch_size, num_offered = tokens.shape
        # With one count for all, every running row takes each offered byte until it stops, and rows that run do not
        # exceed their budget: the host then knows that the running rows keep one length, and that some row takes
        # the first byte when `done` last said that some row runs.
        uniform_length = self.shared_length if counts is None and self._done is False else None
        self._done = None
        offered = torch.full_like(self.num_generated, num_offered) if counts is None else counts.clone()
        offered = torch.minimum(offered, self.max_new_tokens - self.num_generated)
        offered = torch.where(self.unfinished, offered, 0)
        rows = torch.arange(batch_size, device=tokens.device)
        taken = torch.zeros_like(offered)
        bytes_taken_per_running_row = 0
        for index in range(num_offered):
            takes = self.unfinished & (index < offered)
            if (uniform_length is None or index > 0) and not bool(takes.any()):
                break
            # Rows that take nothing may already be full; they rewrite their last byte unchanged.
            slots = (self.prompt_length + self.num_generated).clamp(max=self.sequences.shape[1] - 1)
            self.sequences[rows, slots] = torch.where(takes, tokens[:, index], self.sequences[rows, slots])
            positions = slots - self.prompt_length
            for record, offered_vectors in ((self.scores, scores), (self.raw_logits, logits)):
                if record is not None and offered_vectors is not None:
                    record.write(positions, offered_vectors[:, index], takes)
            self.num_generated += takes.long()
            taken += takes.long()
            bytes_taken_per_running_row += 1
            self._longest = None if uniform_length is None else max(self.longest(), uniform_length + index + 1)
            stopped = self.stopping_criteria(self.right_aligned(), self.last_scores)
            self.unfinished &= ~(takes & stopped)
        self.unfinished &= self.num_generated < self.max_new_tokens
        if uniform_length is None:
            self._running_length = RunningLength.UNREAD
        else:
            self._running_length = uniform_length + bytes_taken_per_running_row
        if self.streamer is not None and int(taken[0]) > 0:
            end = self.prompt_length + int(self.num_generated[0])
            self.streamer.put(self.sequences[0, end - int(taken[0]) : end].cpu())
        return taken

    def right_aligned(self) -> torch.Tensor:
        """Sequences (batch, longest) with each row's last byte in the last column, as stopping criteria expect."""
        lengths = self.prompt_length + self.num_generated
        width = self.longest()
        columns = lengths[:, None] - width + torch.arange(width, device=lengths.device)
        aligned = self.sequences.gather(1, columns.clamp(min=0))
        return aligned.masked_fill(columns < 0, self.pad_token_id)

    def right_aligned_history(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`right_aligned()` and, (batch, longest) boolean, which of its slots hold a byte of the row's prompt or
        output rather than padding."""
        aligned = self.right_aligned()
        real_lengths = self.prompt_length - self.prompt_padding + self.num_generated
        columns = torch.arange(aligned.shape[1], device=aligned.device)
        return aligned, columns >= aligned.shape[1] - real_lengths[:, None]

    def committed_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every row's committed bytes, prompt included: `sequences` (batch, width) and, per row (batch,), the slot
        of its first byte (after the prompt's left padding) and one past its last."""
        return self.sequences, self.prompt_padding, self.prompt_length + self.num_generated

    def output_sequences(self) -> torch.Tensor:
        return self.sequences[:, : self.longest()]

    def process(
        self, processors: RowwiseLogitsProcessors, logits: torch.Tensor, appended: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the logits processors to raw logits (batch, vocab) of the byte that would follow each row's committed
        bytes and then `appended` (batch, n), as autoregressive decoding would show them.

        Every row's processors see that row's own history, so length-dependent processors (`min_new_tokens`) count
        its own bytes; when rows hold different numbers of bytes (speculative decoding), each row is processed alone
        with the processors built for it (`RowwiseLogitsProcessors`).
        """
        if not processors:
            return logits
        if not processors.reads_history:
            return apply_processors(processors.batch, self.no_history(logits.shape[0]), logits)
        if appended is None:
            appended = self.sequences.new_zeros(logits.shape[0], 0)
        if self.shared_length is not None:
            history = torch.cat([self.sequences[:, : self.shared_length], appended], dim=1)
            return apply_processors(processors.batch, history, logits)
        rows = []
        for row, length in enumerate((self.prompt_length + self.num_generated).tolist()):
            history = torch.cat([self.sequences[row, :length], appended[row]])[None]
            rows.append(apply_processors(processors.for_row(row), history, logits[row : row + 1]))
        return torch.cat(rows)

    def no_history(self, num_rows: int) -> torch.Tensor:
        """Ids (num_rows, 0) for processors that read only the scores (`RowwiseLogitsProcessors.reads_history` is
        False): no history to copy for every step."""
        return self.sequences.new_zeros(num_rows, 0)

    def process_positions(
        self, processors: RowwiseLogitsProcessors, logits: torch.Tensor, appended: torch.Tensor
    ) -> torch.Tensor:
        """`process` for the logits (batch, n, vocab) after each prefix of `appended` (batch, >= n - 1): position i
        follows the committed bytes and `appended[:, :i]`, as when verifying a draft or filling a block."""
        if not processors:
            return logits
        if not processors.reads_history:
            # One call covers every position, so a block of cells costs one call per denoising step, as a byte does.
            history = self.no_history(logits.shape[0] * logits.shape[1])
            return apply_processors(processors.batch, history, logits.flatten(0, 1)).view_as(logits)
        positions = range(logits.shape[1])
        return torch.stack([self.process(processors, logits[:, i], appended[:, :i]) for i in positions], dim=1)


def drawing_distribution(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The distribution a byte is drawn from, given processed scores (..., vocab): their softmax when sampling,
    one-hot on the argmax when greedy."""
    if do_sample:
        return scores.softmax(dim=-1)
    return F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(scores.dtype)


def draw(distributions: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """One byte per row of `distributions` (rows, vocab)."""
    if do_sample:
        return torch.multinomial(distributions, num_samples=1)[:, 0]
    return distributions.argmax(dim=-1)


def speculative_acceptance(
    targets: torch.Tensor, drafted: torch.Tensor, draft_distributions: torch.Tensor, do_sample: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative acceptance rule (Leviathan et al., 2023): which drafted bytes stand, and the byte after them.

    Byte i stands with probability min(1, p_i(d_i) / q_i(d_i)) while every earlier one stands; the first that falls
    is replaced by a draw from the normalised max(0, p_i - q_i), and when all stand a free byte is drawn from the
    distribution after the last. Output bytes are then distributed exactly as drawing from the p_i one after the
    other; greedy, where every distribution is one-hot, this keeps drafted bytes up to the first one p would not
    have chosen and then appends p's own. A position without a draft (q = 0) never stands, and its byte is drawn
    from p itself.

    Args:
        targets (`torch.Tensor` of shape `(batch, n + 1, vocab)`): p_i, the distribution after the committed bytes
            and the first i drafted ones.
        drafted (`torch.Tensor` of shape `(batch, n)`): the drafted bytes d_i.
        draft_distributions (`torch.Tensor` of shape `(batch, n, vocab)`): q_i, what each was drawn from.

    Returns:
        how many drafted bytes stand (batch,) and the byte that follows them (batch,).
    """
    target_of_draft = targets[:, :-1].gather(-1, drafted[..., None])[..., 0]
    draft_of_draft = draft_distributions.gather(-1, drafted[..., None])[..., 0]
    ratio = target_of_draft / draft_of_draft.clamp(min=torch.finfo(draft_of_draft.dtype).tiny)
    acceptance = torch.where(draft_of_draft > 0, ratio.clamp(max=1), 0)
    stands = torch.rand_like(acceptance) < acceptance
    accepted = stands.long().cumprod(dim=1).sum(dim=1)

    rows = torch.arange(drafted.shape[0], device=drafted.device)
    target = targets[rows, accepted]
    no_draft = draft_distributions.new_zeros(drafted.shape[0], 1, draft_distributions.shape[-1])
    residual = (target - torch.cat([draft_distributions, no_draft], dim=1)[rows, accepted]).clamp(min=0)
    # p == q leaves nothing (a byte drawn from p itself cannot fall): keep p.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, target)
    return accepted, draw(residual / residual.sum(dim=-1, keepdim=True), do_sample)


def last_taken(tokens: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """The last byte each row took (batch,) of the offered `tokens` (batch, n); `taken` (batch,)."""
    return tokens.gather(1, (taken - 1).clamp(min=0)[:, None])[:, 0]


@dataclass
class ProposedBytes:
    """What a strategy offers every row in one step: bytes `tokens` (batch, n), how many of them count per row
    `counts` (batch,) (None: all), and the processed `scores` and raw `logits` (batch, n, vocab) each byte was chosen
    from, which `output_scores` / `output_logits` return for the bytes committed."""

    tokens: torch.Tensor
    counts: torch.Tensor | None
    scores: torch.Tensor | None
    logits: torch.Tensor | None


class DecodingStrategy:
    """How bytes are produced. Subclasses implement `start` (read the prompt) and `next_tokens` / `feed`, and describe
    themselves in class attributes, which the command line, the examples and the README's table read:

    - `name`: the value of `decoding`; `paper_name`: what the paper calls it ("-" if it has no such strategy);
      `summary`: one line on how it works.
    - `needs_diffusion_checkpoint`: whether it needs a model trained with the block-diffusion objective (BLT-D) or
      runs on any BLT; `needs_assistant_model`: whether it drafts with `generate`'s `assistant_model`.
    - `lossless`: whether its output is distributed exactly as autoregressive decoding's (byte for byte greedy).
    - `options`: the generation-config options it reads, with their defaults.

    The mixin calls `check_model` and `start` once, then alternates `next_tokens` (choose bytes for every row),
    `GenerationState.commit` and `feed` (tell the model about the committed bytes) until every row has finished.
    Strategies reach the model only through its decoding interface (`new_cache`, `append_bytes`, `open_block`,
    `block_logits`, `draft_logits`).
    """

    name: ClassVar[str]
    paper_name: ClassVar[str]
    summary: ClassVar[str]
    needs_diffusion_checkpoint: ClassVar[bool] = False
    needs_assistant_model: ClassVar[bool] = False
    lossless: ClassVar[bool] = False
    options: ClassVar[tuple[StrategyOption, ...]] = ()
    # The rule of strategies that read `unmasking`, when the generation config names none.
    default_unmasking: ClassVar[str | None] = None

    def __init__(
        self,
        model,
        generation_config: "BltDiffusionGenerationConfig",
        logits_processor: RowwiseLogitsProcessors,
        assistant_model=None,
    ):
        self.model = model
        self.generation_config = generation_config
        self.logits_processor = logits_processor
        # `generate`'s `assistant_model`, which only assisted decoding reads.
        self.assistant_model = assistant_model
        self.cache = None

    @classmethod
    def runs_on(cls, model_config) -> bool:
        """Whether a model of `model_config` can decode with this strategy."""
        return not cls.needs_diffusion_checkpoint or model_config.diffusion_block_size > 0

    @classmethod
    def option_defaults(cls) -> dict[str, int | float | str]:
        """The options this strategy reads, at the values it uses while the generation config keeps its defaults;
        those that depend on the model (the trained block size) are left out."""
        defaults = {option.name: option.default for option in cls.options}
        if UNMASKING.name in defaults:
            defaults[UNMASKING.name] = cls.default_unmasking
        return {name: value for name, value in defaults.items() if value is not None}

    def check_model(self) -> None:
        """Refuse a model this strategy cannot run on."""
        if not self.runs_on(self.model.config):
            raise ValueError(
                f"decoding={self.name!r} needs a model trained with the block-diffusion objective "
                "(`config.diffusion_block_size` > 0); this one is a plain BLT. Use decoding='autoregressive'."
            )

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        """Read the prompts (batch, prompt), left-padded under `attention_mask`, into `self.cache`: a new cache, or
        `cache`, a `BltDiffusionCache` from an earlier generation, for the bytes it shares with them (`open_cache`)."""
        raise NotImplementedError

    def open_cache(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: "BltDiffusionCache | None", capacity: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Set `self.cache` to decode after the prompts `input_ids` (batch, prompt), left-padded under
        `attention_mask`, and return the prompt bytes it does not hold yet (batch, new) and their attention mask.

        An earlier generation's `cache` is kept for the bytes it shares with the prompts (`reuse_cache`), so that a
        conversation continues without reading its history again; otherwise the cache is new, with room for
        `capacity` bytes per row.
        """
        if compiles_steps(self.generation_config):
            capacity = capacity_for_compiled_steps(capacity)
        self.cache, new_ids, new_mask = open_cache(self.model, cache, input_ids, attention_mask, capacity)
        return new_ids, new_mask

    def finish(self, state: GenerationState) -> None:
        """Crop `self.cache` to the committed bytes it holds, so that a later `generate(..., cache=output.cache)`
        continues from them: drafts past a rejection and bytes decoded after a row stopped are dropped."""
        if self.cache is not None:
            self.cache.crop(self.cache.held_prefix_lengths(*state.committed_rows()))

    def next_tokens(self, state: GenerationState) -> ProposedBytes:
        """Bytes offered to each row, how many of them count, and what they were chosen from."""
        raise NotImplementedError

    def feed(self, state: GenerationState, tokens: torch.Tensor, taken: torch.Tensor) -> None:
        """The rows took `taken` (batch,) of the offered `tokens` (batch, n); bring the model up to date."""
        raise NotImplementedError

    def acceptance_rate(self) -> torch.Tensor | None:
        """Per row, the share of drafted bytes that verification kept; None for strategies that do not draft."""
        return None

    def choose(
        self, state: GenerationState, logits: torch.Tensor, block: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the next byte of every row from raw logits (batch, vocab), or of every cell of a `block` (batch,
        block) from its logits (batch, block, vocab): processors, then greedy or sampling. Cell i is processed as the
        byte after the committed bytes and the block's first i cells. Returns the bytes (batch,) or (batch, block)
        and the processed scores."""
        if block is None:
            scores = state.process(self.logits_processor, logits)
        else:
            scores = state.process_positions(self.logits_processor, logits, block[:, :-1])
        if self.generation_config.do_sample:
            tokens = draw(scores.flatten(0, -2).softmax(dim=-1), do_sample=True).view(scores.shape[:-1])
        else:
            tokens = scores.argmax(dim=-1)
        return tokens, scores


class AutoregressiveDecoding(DecodingStrategy):
    """Plain BLT decoding, one byte per decoder call, on the incremental cache: the patcher, encoder and decoder
    process only the new byte, and the global transformer runs only when that byte closes a patch."""

    name = "autoregressive"
    paper_name = "BLT"
    summary = "one byte per decoder call; the global transformer runs only when a byte closes a patch"
    # The reference that lossless strategies reproduce.
    lossless = True

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        capacity = input_ids.shape[1] + state.max_new_tokens
        new_ids, new_mask = self.open_cache(input_ids, attention_mask, cache, capacity)
        self.next_logits = self.model.append_bytes(self.cache, new_ids, new_mask, last_only=True)
        state.count_calls(decoder=1, global_=1, patcher=1)

    def next_tokens(self, state: GenerationState) -> ProposedBytes:
        tokens, state.last_scores = self.choose(state, self.next_logits)
        return ProposedBytes(tokens[:, None], None, state.last_scores[:, None], self.next_logits[:, None])

    def feed(self, state: GenerationState, tokens: torch.Tensor, taken: torch.Tensor) -> None:
        # Finished rows keep decoding in lockstep with the others; their results are never read.
        self.next_logits = self.model.append_bytes(self.cache, tokens, last_only=True)
        state.count_calls(decoder=1, global_=(self.cache.patches_closed_last_call > 0).long(), patcher=1)


class BlockDenoiser:
    """Fills a block of masked cells after the cache's bytes by iterative unmasking (Algorithm 1's inner loop).

    Every decoder call predicts all cells at once (bidirectional attention within the block, every cell reading the
    newest latent); the unmasking rule fixes some of them, and the block is done when none is masked. Which cells to
    unmask is decided on the model's own distribution (`UnmaskingRule.rank`); the byte written into a cell is the
    argmax, or a sample with `do_sample`, of the distribution after the logits processors (temperature, top-k, top-p,
    repetition penalty).
    """

    def __init__(self, strategy: DecodingStrategy):
        self.strategy = strategy
        self.model = strategy.model
        self.generation_config = strategy.generation_config
        trained_block_size = self.model.config.diffusion_block_size
        self.block_size = self.generation_config.block_size or trained_block_size
        if not 1 <= self.block_size <= trained_block_size:
            raise ValueError(
                f"`block_size` must be between 1 and the trained block size {trained_block_size}, got "
                f"{self.block_size}."
            )
        unmasking = self.generation_config.unmasking or strategy.default_unmasking
        self.rule = UNMASKING_RULES[unmasking].from_config(self.generation_config)
        self.mask_id = self.model.config.diffusion_mask_id
        # Each denoising step then also runs the local encoder over the block, a cost of its own.
        self.cells_through_encoder = int(self.model.config.diffusion_cell_embedding == "encoder")

    def denoise(
        self, state: GenerationState, cache, block_size: int, keep_scores: bool, keep_logits: bool
    ) -> "DenoisedBlock":
        """Fill a block for every running row, counting one decoder call per step per running row. Finished rows ride
        along in lockstep without steering the loop; their cells come back as padding. Each cell's processed scores
        and raw logits are kept only when asked for (`keep_scores`, `keep_logits`)."""
        batch_size = state.sequences.shape[0]
        cells = torch.full((batch_size, block_size), self.mask_id, dtype=torch.long, device=state.sequences.device)
        masked = state.unfinished[:, None].expand_as(cells).clone()
        committing_scores = committing_logits = None
        while bool(masked.any()):
            logits = self.model.block_logits(cache, cells)
            steps = masked.any(dim=1).long()
            state.count_calls(decoder=steps, cell_encoder=steps * self.cells_through_encoder)
            # Processors see the cells before each one; cells still masked stand as padding, never a byte.
            known = cells.masked_fill(cells == self.mask_id, self.generation_config.pad_token_id)
            tokens, scores = self.strategy.choose(state, logits, known)
            unmask = self.rule.select(masked, self.rule.rank(logits))
            cells = torch.where(unmask, tokens, cells)
            if keep_scores:
                committing_scores = unmasked_now(unmask, scores, committing_scores)
            if keep_logits:
                committing_logits = unmasked_now(unmask, logits, committing_logits)
            masked &= ~unmask
            if state.streamer is not None and hasattr(state.streamer, "put_draft"):
                state.streamer.put_draft(cells[0].cpu())
        cells = cells.masked_fill(cells == self.mask_id, self.generation_config.pad_token_id)
        return DenoisedBlock(cells, committing_scores, committing_logits)


def unmasked_now(unmask: torch.Tensor, new: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Per cell (batch, block, vocab), `new` where `unmask` (batch, block) is True, else `kept` (all `new` at the
    block's first step, when nothing is kept yet)."""
    return new if kept is None else torch.where(unmask[..., None], new, kept)


@dataclass
class DenoisedBlock:
    """A filled diffusion block: its bytes `cells` (batch, block), and per cell, when kept, the processed scores and
    raw logits (batch, block, vocab) of the denoising step that committed it, the distribution its byte was drawn
    from."""

    cells: torch.Tensor
    scores: torch.Tensor | None
    logits: torch.Tensor | None

    def drawing_distributions(self, do_sample: bool) -> torch.Tensor:
        """The distribution each cell's byte was drawn from (batch, block, vocab): the processed one when sampling,
        one-hot on the byte when greedy."""
        return drawing_distribution(self.scores, do_sample)


class DiffusionDecoding(DecodingStrategy):
    """BLT-D block diffusion (the paper's Algorithm 1): per block, one encoder+global call and a few decoder calls.

    Each block starts as `block_size` masked cells after the committed bytes and is filled by `BlockDenoiser`
    (`unmasking="confidence"` by default). Committed blocks are then appended to the cache: the patcher and encoder
    read them, patches they close are encoded globally once, and the open patch gets a provisional latent for the
    next block, all in one encoder+global call.
    """

    name = "diffusion"
    paper_name = "BLT-D"
    summary = "block diffusion: several bytes per decoder call, one encoder+global call per block"
    needs_diffusion_checkpoint = True
    options = BLOCK_DIFFUSION_OPTIONS
    default_unmasking = ConfidenceUnmasking.name

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        self.denoiser = BlockDenoiser(self)
        capacity = input_ids.shape[1] + state.max_new_tokens + self.denoiser.block_size
        new_ids, new_mask = self.open_cache(input_ids, attention_mask, cache, capacity)
        self.model.open_block(self.cache, new_ids, new_mask)
        state.count_calls(global_=1, patcher=1)

    def next_tokens(self, state: GenerationState) -> ProposedBytes:
        remaining = state.max_new_tokens - state.num_generated
        block_size = min(self.denoiser.block_size, int(remaining[state.unfinished].max()))
        keep_scores, keep_logits = state.scores is not None, state.raw_logits is not None
        block = self.denoiser.denoise(state, self.cache, block_size, keep_scores, keep_logits)
        return ProposedBytes(block.cells, None, block.scores, block.logits)

    def feed(self, state: GenerationState, tokens: torch.Tensor, taken: torch.Tensor) -> None:
        self.model.open_block(self.cache, tokens)
        state.count_calls(global_=1, patcher=1)


class SpeculativeDecoding(DecodingStrategy):
    """Lossless speculative decoding: a draft step proposes bytes, one causal pass of the whole model verifies them,
    drafted bytes stand up to the first rejection, and a correction drawn from the model follows.

    A round: `draft` proposes up to `max_draft_length()` bytes per row and leaves the caches as found; `verify`
    appends them with one full forward (patcher, encoder, global transformer on the patches they close, decoder),
    which gives the model's own distribution after each, and applies the speculative acceptance rule; `feed` crops
    the caches to the kept bytes and hands the correction to `take_correction`, which by default holds it back for
    the next verification to append. Greedy output is identical to autoregressive decoding, and sampled output is
    distributed as autoregressive sampling. Subclasses implement `draft` and `max_draft_length`.
    """

    lossless = True

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        batch_size = input_ids.shape[0]
        capacity = input_ids.shape[1] + state.max_new_tokens + 2 * self.max_draft_length() + 2
        self.next_logits = self.append(*self.open_cache(input_ids, attention_mask, cache, capacity))
        state.count_calls(decoder=1, global_=1, patcher=1)
        # The committed byte the caches do not hold yet (batch,), or None when `next_logits` follow the last one.
        self.correction: torch.Tensor | None = None
        self.drafted = torch.zeros(batch_size, dtype=torch.long, device=input_ids.device)
        self.accepted = torch.zeros_like(self.drafted)

    def max_draft_length(self) -> int:
        """The most bytes a round drafts."""
        raise NotImplementedError

    def draft(self, state: GenerationState, draft_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft up to `draft_length` bytes per row after the committed ones (the held-back `correction` included),
        and the distributions they were drawn from; the caches are left as found.

        Returns:
            drafted bytes (batch, n) and their distributions (batch, n, vocab), n <= draft_length. A row that drafts
            fewer than n bytes gives the positions after its draft an all-zero distribution: they are no draft, and
            verification never keeps them.
        """
        raise NotImplementedError

    def take_correction(self, state: GenerationState, correction: torch.Tensor) -> None:
        """Bring the model up to date with the round's last committed byte (batch,): by default, hold it back in
        `self.correction` for the next verification to append together with the next draft."""
        self.correction = correction

    def append(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append committed bytes to the cache; the next-byte logits after the last one, (batch, vocab)."""
        return self.model.append_bytes(self.cache, input_ids, attention_mask, last_only=True)

    def next_tokens(self, state: GenerationState) -> ProposedBytes:
        remaining = state.max_new_tokens - state.num_generated
        draft_length = max(1, min(self.max_draft_length(), int(remaining[state.unfinished].max())))
        return self.verify(state, *self.draft(state, draft_length))

    def verification_logits(self, state: GenerationState, drafted: torch.Tensor) -> torch.Tensor:
        """The model's logits (batch, n + 1, vocab) after the committed bytes and after each drafted byte (batch,
        n), from one forward that appends the held-back correction and the drafts; none when nothing is to append."""
        if self.correction is None:
            if drafted.shape[1] == 0:
                return self.next_logits[:, None]
            logits = self.model.append_bytes(self.cache, drafted, stepwise=True)
            logits = torch.cat([self.next_logits[:, None], logits], dim=1)
        else:
            logits = self.model.append_bytes(
                self.cache, torch.cat([self.correction[:, None], drafted], dim=1), stepwise=True
            )
        state.count_calls(decoder=1, global_=1, patcher=1)
        return logits

    def verify(
        self, state: GenerationState, drafted: torch.Tensor, draft_distributions: torch.Tensor
    ) -> ProposedBytes:
        """Verify drafted bytes (batch, n) drawn from `draft_distributions` (batch, n, vocab) with one forward, which
        gives the distribution autoregressive decoding would draw each byte from (`speculative_acceptance`). Greedy
        output is then identical to autoregressive decoding, and sampled output distributed as autoregressive sampling.

        Returns the bytes offered per row (batch, n + 1), how many count (batch,), and the verifying scores and
        logits of each (batch, n + 1, vocab): what autoregressive decoding would have chosen every committed byte from.
        """
        lengths = self.cache.lengths() + int(self.correction is not None)
        logits = self.verification_logits(state, drafted)
        scores = state.process_positions(self.logits_processor, logits, drafted)
        targets = drawing_distribution(scores, self.generation_config.do_sample)
        accepted, correction = speculative_acceptance(
            targets, drafted, draft_distributions, self.generation_config.do_sample
        )
        rows = torch.arange(drafted.shape[0], device=drafted.device)
        tokens = torch.cat([drafted, correction[:, None]], dim=1)
        tokens[rows, accepted] = correction
        running = state.unfinished.long()
        self.drafted += running * (draft_distributions.sum(dim=-1) > 0).sum(dim=1)
        self.accepted += running * accepted
        self.kept_lengths = lengths + accepted
        return ProposedBytes(tokens, accepted + 1, scores, logits)

    def feed(self, state: GenerationState, tokens: torch.Tensor, taken: torch.Tensor) -> None:
        """Keep the accepted drafts in the caches, then take in the correction."""
        self.cache.crop(self.kept_lengths)
        self.take_correction(state, last_taken(tokens, taken))

    def acceptance_rate(self) -> torch.Tensor:
        """Per row, the share of drafted bytes that verification kept, (batch,)."""
        return self.accepted.double() / self.drafted.clamp(min=1)


class SelfSpeculativeDecoding(SpeculativeDecoding):
    """BLT-S (the paper's Algorithm 2): the local decoder drafts `draft_length` bytes past patch boundaries on the
    last closed latent, and one causal pass of the whole model verifies them.

    A round: (1) the encoder and decoder alone draft `draft_length` bytes after the byte committed last (the
    previous round's correction, not yet in the caches), every one reading the last closed latent, as bytes of an
    open patch do; (2) the drafts are rolled back, and the correction and the drafts are appended with one full
    forward (patcher, encoder, global transformer on the patches they close, decoder), which gives the model's own
    choice after each; (3) drafted bytes are kept up to the first disagreement, then the model's own byte is the
    next correction (a free byte when all agree), and the caches are cropped to the kept bytes. The first round
    drafts from the prompt's exact next-byte prediction instead. Greedy output is identical to autoregressive
    decoding.

    Cost fields count real calls. The paper's accounting is two encoder+global calls and `draft_length + 1` decoder
    calls per round: it appends the correction with a forward of its own, and verifies after. Verifying the
    correction together with the next draft gives the same outputs with one encoder+global call per round, and
    still `draft_length + 1` decoder calls. The global transformer really runs only on patches that close.
    """

    name = "self_speculative"
    paper_name = "BLT-S"
    summary = "the local encoder and decoder draft bytes past patch boundaries; the whole model verifies them at once"
    options = (DRAFT_LENGTH,)

    def max_draft_length(self) -> int:
        return self.generation_config.draft_length

    def draft(self, state: GenerationState, draft_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft with the encoder and decoder alone, each byte after the previous one."""
        do_sample = self.generation_config.do_sample
        lengths = self.cache.lengths()
        end_bound = self.cache.end_bound
        drafted = torch.empty(len(lengths), 0, dtype=torch.long, device=lengths.device)
        distributions = []
        last = None if self.correction is None else self.correction[:, None]
        for _ in range(draft_length):
            if last is None:
                logits = self.next_logits
            else:
                logits = self.model.draft_logits(self.cache, last)
            scores = state.process(self.logits_processor, logits, drafted)
            if do_sample:
                distributions.append(scores.softmax(dim=-1))
                token = draw(distributions[-1], do_sample=True)
            else:
                token = scores.argmax(dim=-1)
            drafted = torch.cat([drafted, token[:, None]], dim=1)
            last = drafted[:, -1:]
        # Back to the bytes before drafting, and to the host's bound on their ends: compiled steps read as many slots.
        self.cache.crop(lengths, end_bound)
        state.count_calls(decoder=draft_length - int(self.correction is None))
        if do_sample:
            return drafted, torch.stack(distributions, dim=1)
        # Greedy drafts are one-hot on the byte drawn; building them once is cheaper than once per step.
        return drafted, F.one_hot(drafted, logits.shape[-1]).to(logits.dtype)


class PromptLookupDecoding(SpeculativeDecoding):
    """Prompt lookup decoding (transformers' `prompt_lookup_num_tokens`), lossless and batched: each row drafts the
    bytes that followed the latest earlier occurrence of its text's last bytes, in the prompt or in its output, and
    one causal pass of the whole model verifies them as in BLT-S.

    Drafting costs no model call: where the text copies earlier text (editing code, summarising or answering over a
    document, repeated structure) whole runs of bytes are accepted per round; where it does not, a round without a
    match is an autoregressive step. The match is the longest run, up to `max_matching_ngram_size` bytes, of the
    text's last bytes found earlier (transformers tries the same sizes, longest first), its latest occurrence when
    several are as long: recent text is the likelier one to be copied. Unlike transformers' token-level lookup, a row
    drafts at most as many bytes as its match is long (benchmarks/README.md: a byte-long match drafting
    `prompt_lookup_num_tokens` bytes made decoding slower than autoregressive decoding). Drafts are deterministic,
    so with `do_sample` the acceptance rule keeps a drafted byte with the model's probability of it, and sampling
    stays exact.
    """

    name = "prompt_lookup"
    paper_name = "-"
    summary = "transformers' prompt lookup, batched: drafts copied from after an earlier occurrence of the last bytes"
    options = (PROMPT_LOOKUP_NUM_TOKENS, MAX_MATCHING_NGRAM_SIZE)
    default_draft_length = 16
    default_max_matching_ngram_size = 32

    def max_draft_length(self) -> int:
        return self.generation_config.prompt_lookup_num_tokens or self.default_draft_length

    def max_matching_ngram_size(self) -> int:
        return self.generation_config.max_matching_ngram_size or self.default_max_matching_ngram_size

    def draft(self, state: GenerationState, draft_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy up to `draft_length` bytes per row from after its best match; rows without one draft nothing."""
        history, real = state.right_aligned_history()
        match_ends, match_lengths = longest_latest_suffix_match(history, real, self.max_matching_ngram_size())
        # A row drafts no more bytes than its match is long: a short match is weak evidence that the text copies,
        # and a wrong draft widens the verifying forward for nothing.
        available = torch.minimum(history.shape[1] - 1 - match_ends, match_lengths)
        lengths = torch.where(state.unfinished, available.clamp(max=draft_length), 0)
        offsets = torch.arange(int(lengths.max()), device=history.device)
        drafted = history.gather(1, (match_ends[:, None] + 1 + offsets).clamp(max=history.shape[1] - 1))
        is_draft = offsets < lengths[:, None]
        distributions = F.one_hot(drafted, self.model.config.vocab_size).float() * is_draft[..., None]
        return drafted, distributions


def longest_latest_suffix_match(
    history: torch.Tensor, real: torch.Tensor, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the earlier position where the longest run (up to `max_length`) of the row's last bytes ends, the
    latest one among equally long runs.

    Args:
        history (`torch.Tensor` of shape `(batch, width)`): byte ids, each row's last byte in the last column.
        real (`torch.Tensor` of shape `(batch, width)`): which slots hold bytes of the row (the rest is padding).

    Returns:
        the column where the match ends (batch,), before the last one, and its length (batch,), 0 when the row's
        last byte occurs nowhere earlier.
    """
    batch_size, width = history.shape
    # Candidates: earlier slots holding the row's last byte. Their runs are measured backwards from there.
    candidates = (history[:, :-1] == history[:, -1:]) & real[:, :-1]
    rows, ends = candidates.nonzero(as_tuple=True)
    back = torch.arange(max_length, device=history.device)
    slots = ends[:, None] - back
    suffix = history[rows[:, None], (width - 1 - back).clamp(min=0)]
    inside = slots >= 0
    same = (history[rows[:, None], slots.clamp(min=0)] == suffix) & real[rows[:, None], slots.clamp(min=0)] & inside
    lengths = same.long().cumprod(dim=1).sum(dim=1)
    # The longest run wins, then the latest end: one key orders both.
    best = torch.full((batch_size,), -1, dtype=torch.long, device=history.device)
    best = best.scatter_reduce(0, rows, lengths * width + ends, reduce="amax")
    return best.clamp(min=0) % width, torch.where(best >= 0, best // width, 0)


class AssistedDecoding(SpeculativeDecoding):
    """Assisted generation (transformers' `assistant_model`), lossless and batched: a smaller model with the same byte
    ids drafts up to `num_assistant_tokens` bytes per row, each after the one before (its own processed
    distribution, greedy or sampled, so that sampling stays exact), and one causal pass of the whole model verifies
    them as in BLT-S. A row's draft ends early after a byte the assistant gives a probability below
    `assistant_confidence_threshold`, as transformers' assistant stops drafting.

    The assistant keeps its own cache of the committed text (`AssistantDrafter`), brought up to date at the start of
    every round. The cost fields count the main model's calls only.
    """

    name = "assisted"
    paper_name = "-"
    summary = "transformers' assisted generation, batched: a smaller model drafts bytes; the whole model verifies them"
    needs_assistant_model = True
    options = (NUM_ASSISTANT_TOKENS, ASSISTANT_CONFIDENCE_THRESHOLD)

    def check_model(self) -> None:
        """Refuse to run without an assistant, or with one whose vocabulary or schedule cannot be honoured."""
        super().check_model()
        if self.assistant_model is None:
            raise ValueError(
                f"decoding={self.name!r} drafts with `assistant_model`: pass a smaller causal LM with the same byte "
                "ids (a BltDiffusionForCausalLM, or any transformers causal LM over these byte ids)."
            )
        vocab_size = self.assistant_model.config.get_text_config().vocab_size
        if vocab_size != self.model.config.vocab_size:
            raise ValueError(
                f"`assistant_model` has a vocabulary of {vocab_size} ids, this model {self.model.config.vocab_size}: "
                "its drafts would not be this model's bytes."
            )
        schedule = self.generation_config.num_assistant_tokens_schedule
        if schedule != "constant":
            # Transformers' heuristic schedules change the assistant's own generation config from call to call.
            raise ValueError(f"`num_assistant_tokens_schedule` must be 'constant' here, got {schedule!r}.")

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        super().start(state, input_ids, attention_mask, cache)
        self.drafter = AssistantDrafter.for_model(self.assistant_model)

    def max_draft_length(self) -> int:
        return self.generation_config.num_assistant_tokens

    def draft(self, state: GenerationState, draft_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft byte after byte with the assistant; a row stops after a byte below the confidence threshold."""
        do_sample = self.generation_config.do_sample
        threshold = self.generation_config.assistant_confidence_threshold or 0.0
        logits = self.drafter.catch_up(*state.right_aligned_history())
        drafted = torch.empty(logits.shape[0], 0, dtype=torch.long, device=logits.device)
        drafting = state.unfinished.clone()
        distributions = []
        for step in range(draft_length):
            probabilities = state.process(self.logits_processor, logits, drafted).softmax(dim=-1)
            token = draw(probabilities, do_sample)
            drawn_from = probabilities if do_sample else F.one_hot(token, probabilities.shape[-1]).to(logits.dtype)
            distributions.append(drawn_from * drafting[:, None])
            drafted = torch.cat([drafted, token[:, None]], dim=1)
            drafting &= probabilities.gather(1, token[:, None])[:, 0] >= threshold
            if step == draft_length - 1 or not bool(drafting.any()):
                break
            logits = self.drafter.append(token[:, None])
        return drafted, torch.stack(distributions, dim=1)


class AssistantDrafter:
    """An assistant model's view of the committed text, kept in its own cache from round to round.

    `catch_up` reads what was committed since the last round and gives the assistant's next-byte logits; `append`
    reads one drafted byte per row and gives the logits after it. Drafts that verification rejects are dropped at the
    next `catch_up`, which keeps what the cache shares with the committed text (`reuse_cache`). This one drives a
    `BltDiffusionForCausalLM` through its decoding interface.
    """

    def __init__(self, model):
        self.model = model
        self.cache = None

    @classmethod
    def for_model(cls, model) -> "AssistantDrafter":
        """The drafter for `model`: BLT models through their decoding interface, any other causal LM through its
        forward and transformers' cache."""
        return cls(model) if hasattr(model, "append_bytes") else CausalLMDrafter(model)

    def catch_up(self, history: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Bring the assistant up to date with the committed text and return its next-byte logits (batch, vocab).

        Args:
            history (`torch.Tensor` of shape `(batch, width)`): committed bytes, each row's last in the last column.
            real (`torch.Tensor` of shape `(batch, width)`): which slots hold bytes rather than padding.
        """
        device = history.device
        history, attention_mask = history.to(self.model.device), real.long().to(self.model.device)
        self.cache, new_ids, new_mask = open_cache(self.model, self.cache, history, attention_mask, history.shape[1])
        return self.model.append_bytes(self.cache, new_ids, new_mask, last_only=True).to(device)

    def append(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Read drafted bytes (batch, 1); the assistant's logits after them (batch, vocab)."""
        return self.model.append_bytes(self.cache, input_ids.to(self.model.device), last_only=True).to(
            input_ids.device
        )


class CausalLMDrafter(AssistantDrafter):
    """The drafter of any transformers causal LM over the same byte ids, through its forward and a `DynamicCache`.

    Rows keep different numbers of drafted bytes, and a transformers cache crops every row alike, so the slots of
    rejected drafts stay in the cache as holes that the attention mask hides (positions count the bytes before
    only). When holes outnumber bytes, the committed text is read afresh. `slot_ids` and `slot_mask` (batch, slots)
    say which byte each slot of the cache holds, and whether it still counts.
    """

    def __init__(self, model):
        super().__init__(model)
        self.slot_ids: torch.Tensor | None = None
        self.slot_mask: torch.Tensor | None = None

    def catch_up(self, history: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        device = history.device
        history, real = history.to(self.model.device), real.to(self.model.device)
        if self.cache is None or int((~self.slot_mask).sum()) > int(self.slot_mask.sum()):
            self.cache, self.slot_ids, self.slot_mask = DynamicCache(), history[:, :0], real[:, :0]
            return self.read(history, real).to(device)
        lengths = real.sum(dim=1)
        held = torch.minimum(self.held_prefix_lengths(history, lengths), lengths - 1)
        # Slots past a row's held bytes become holes; the row's bytes after them are read now.
        self.slot_mask &= self.slot_mask.cumsum(dim=1) <= held[:, None]
        missing = lengths - held
        width = int(missing.max())
        new_bytes = torch.arange(width, device=history.device) >= width - missing[:, None]
        return self.read(history[:, -width:], new_bytes).to(device)

    def append(self, input_ids: torch.Tensor) -> torch.Tensor:
        device = input_ids.device
        input_ids = input_ids.to(self.model.device)
        return self.read(input_ids, torch.ones_like(input_ids, dtype=torch.bool)).to(device)

    def held_prefix_lengths(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per row, how many first bytes of its committed text (`history`, right-aligned, `lengths` bytes) the
        cache's counted slots hold, in order (batch,)."""
        held_lengths = self.slot_mask.sum(dim=1)
        comparable = torch.minimum(held_lengths, lengths)
        offsets = torch.arange(int(comparable.max()), device=history.device)
        # The counted slots of every row, in order, moved to its front.
        order = torch.sort((~self.slot_mask).long(), dim=1, stable=True).indices[:, : len(offsets)]
        cached = self.slot_ids.gather(1, order)
        given = history.gather(1, (history.shape[1] - lengths[:, None] + offsets).clamp(max=history.shape[1] - 1))
        return common_prefix_lengths(cached, given, comparable)

    def read(self, input_ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """Run the assistant on new slots `input_ids` (batch, new), of which `counted` (batch, new) hold bytes (the
        rest are holes); its logits after the last slot (batch, vocab)."""
        self.slot_ids = torch.cat([self.slot_ids, input_ids], dim=1)
        self.slot_mask = torch.cat([self.slot_mask, counted], dim=1)
        positions = (self.slot_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.slot_mask.long(),
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1].float()


class DiffusionVerifiedDecoding(SpeculativeDecoding):
    """BLT-DV: a BLT-D block drafted by diffusion (`unmasking="one_step"` by default), verified as in BLT-S. Greedy
    output is identical to autoregressive decoding of the same model.

    A round costs two encoder+global calls and s + 2 decoder calls, s the denoising steps: one more than the
    paper's s + 1, the exact next-byte prediction after the previous round's correction, which the paper's uncached
    verification gets from recomputing the whole sequence.
    """

    name = "diffusion_verified"
    paper_name = "BLT-DV"
    summary = "BLT-D drafts a block, verified as in BLT-S; samples only with one-step drafts"
    needs_diffusion_checkpoint = True
    options = BLOCK_DIFFUSION_OPTIONS
    default_unmasking = OneStepUnmasking.name

    def start(
        self,
        state: GenerationState,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: "BltDiffusionCache | None" = None,
    ) -> None:
        self.denoiser = BlockDenoiser(self)
        unmasking = self.denoiser.rule.name
        if self.generation_config.do_sample and unmasking != OneStepUnmasking.name:
            # Speculative sampling needs each drafted byte's distribution given the bytes before it; a block
            # unmasked over several steps conditions bytes on later ones, so only one-step drafts qualify.
            raise ValueError(
                f"Sampling with decoding={self.name!r} needs unmasking={OneStepUnmasking.name!r}, got {unmasking!r}."
            )
        super().start(state, input_ids, attention_mask, cache)

    def max_draft_length(self) -> int:
        return self.denoiser.block_size

    def append(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As for BLT-S, and give the open patch the provisional latent that the next diffusion block reads."""
        return self.model.append_bytes(self.cache, input_ids, attention_mask, open_block=True, last_only=True)

    def draft(self, state: GenerationState, draft_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft a block by diffusion after the committed bytes (denoising keeps nothing of the block's cells)."""
        block = self.denoiser.denoise(state, self.cache, draft_length, keep_scores=True, keep_logits=False)
        return block.cells, block.drawing_distributions(self.generation_config.do_sample)

    def take_correction(self, state: GenerationState, correction: torch.Tensor) -> None:
        """Append the correction now: the next block is denoised after it."""
        self.next_logits = self.append(correction[:, None])
        state.count_calls(decoder=1, global_=1, patcher=1)


# Autoregressive first, then by what each builds on: the order of the command line's option groups and the examples.
DECODING_STRATEGIES: dict[str, type[DecodingStrategy]] = {
    strategy.name: strategy
    for strategy in (
        AutoregressiveDecoding,
        SelfSpeculativeDecoding,
        DiffusionDecoding,
        DiffusionVerifiedDecoding,
        PromptLookupDecoding,
        AssistedDecoding,
    )
}
# Every option some strategy reads, once each, in registry order.
STRATEGY_OPTIONS: tuple[StrategyOption, ...] = tuple(
    dict.fromkeys(option for strategy in DECODING_STRATEGIES.values() for option in strategy.options)
)
