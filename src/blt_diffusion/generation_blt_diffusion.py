"""Generation for BLT models: one `generate()` entry point, decoding strategies plugged in behind it.

The mixin owns everything strategies share: argument resolution and validation, the generation config, logits
processors and stopping criteria, streaming, batching with left padding, per-row finishing and cost accounting.
The strategies themselves (`DecodingStrategy`, registered in `DECODING_STRATEGIES`) live in
`strategies_blt_diffusion.py`.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, GenerationMixin, SynthIDTextWatermarkingConfig
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList
from transformers.utils import ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg

from .cache_blt_diffusion import BltDiffusionCache, RightToLeftPadding
from .compiled_steps_blt_diffusion import check_compile_config, compiled_decoding_steps, compiles_steps
from .strategies_blt_diffusion import (
    BLOCK_SIZE,
    CONFIDENCE_THRESHOLD,
    DECODING_STRATEGIES,
    DRAFT_LENGTH,
    ENTROPY_BOUND,
    STRATEGY_OPTIONS,
    UNMASKING,
    UNMASKING_RULES,
    AssistedDecoding,
    AutoregressiveDecoding,
    GenerationState,
    PromptLookupDecoding,
    RowwiseLogitsProcessors,
    check_integer,
    check_real,
)

# The byte budget of the generation config a model gets from its model config.
DEFAULT_MAX_NEW_TOKENS = 256

logger = logging.get_logger(__name__)

# Transformers' decoding algorithms other than greedy search and sampling, and the fields that ask for them: BLT
# models decode with their own strategies (`decoding`) instead.
UNSUPPORTED_GENERATION_MODES = {
    GenerationMode.BEAM_SEARCH: "num_beams",
    GenerationMode.BEAM_SAMPLE: "num_beams",
    GenerationMode.GROUP_BEAM_SEARCH: "num_beam_groups",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constraints`, `force_words_ids",
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha",
    GenerationMode.ASSISTED_GENERATION: "assistant_early_exit`, `use_mtp",
    GenerationMode.DOLA_GENERATION: "dola_layers",
}

# Counts that must be integers when set, and their least value.
INTEGER_FIELDS = {
    "max_new_tokens": 1,
    "max_length": 1,
    "min_new_tokens": 0,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
}
# Sampling knobs, when set and sampling, and the interval each must lie in: (low, high, open_low, open_high). Outside
# it, transformers would skip the warper (top_p = 1.5, NaN) or quietly sample greedily (top_p = 0).
SAMPLING_FIELDS = {
    "temperature": (0.0, math.inf, True, True),
    "top_p": (0.0, 1.0, True, False),
    "typical_p": (0.0, 1.0, True, False),
    "min_p": (0.0, 1.0, False, False),
    "top_h": (0.0, 1.0, True, False),
    "epsilon_cutoff": (0.0, 1.0, False, True),
    "eta_cutoff": (0.0, 1.0, False, True),
}
# Ids that must name a token of the vocabulary when set; `eos_token_id` may be a list of them.
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id")


class BltDiffusionGenerationConfig(GenerationConfig):
    r"""
    Generation configuration of BLT models: every field of transformers' `GenerationConfig` plus the decoding
    strategy and its options (`StrategyOption`, which hold the defaults).

    decoding (`str`, *optional*, defaults to `"autoregressive"`):
        Which strategy produces bytes. See `DECODING_STRATEGIES` for what this version provides.
    block_size (`int`, *optional*):
        Bytes per diffusion block; defaults to the model's `diffusion_block_size`.
    unmasking (`str`, *optional*):
        Diffusion unmasking rule (`UNMASKING_RULES`): `"confidence"` (the default for `"diffusion"`),
        `"entropy_bound"` or `"one_step"` (the default for `"diffusion_verified"`).
    confidence_threshold (`float`, *optional*, defaults to 0.7):
        Confidence above which the `"confidence"` rule commits a masked byte.
    entropy_bound (`float`, *optional*, defaults to 1.0):
        Entropy budget of the `"entropy_bound"` rule.
    draft_length (`int`, *optional*, defaults to 8):
        Bytes drafted per round by self-speculative decoding.

    Transformers' own fields choose and tune the other drafting strategies: `prompt_lookup_num_tokens` (prompt
    lookup, with `max_matching_ngram_size`) and `num_assistant_tokens` / `assistant_confidence_threshold` (assisted
    decoding, chosen by `generate`'s `assistant_model`).
    """

    def __init__(
        self,
        decoding: str = "autoregressive",
        block_size: int | None = BLOCK_SIZE.default,
        unmasking: str | None = UNMASKING.default,
        confidence_threshold: float = CONFIDENCE_THRESHOLD.default,
        entropy_bound: float = ENTROPY_BOUND.default,
        draft_length: int = DRAFT_LENGTH.default,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.decoding = decoding
        self.block_size = block_size
        self.unmasking = unmasking
        self.confidence_threshold = confidence_threshold
        self.entropy_bound = entropy_bound
        self.draft_length = draft_length

    def validate(self, strict: bool = False, **kwargs) -> None:
        """Transformers' checks, then those of BLT decoding: every request must be one that generation honours, so
        wrong types, NaN and impossible values raise a TypeError or ValueError naming the field."""
        super().validate(strict=strict, **kwargs)
        # The base __init__ validates before this class has set its own fields.
        decoding = getattr(self, "decoding", AutoregressiveDecoding.name)
        if decoding not in DECODING_STRATEGIES:
            raise ValueError(
                f"Unknown decoding strategy {decoding!r}; this version provides {sorted(DECODING_STRATEGIES)}."
            )
        for option in STRATEGY_OPTIONS:
            option.check(getattr(self, option.name, option.default))
        unmasking = getattr(self, "unmasking", UNMASKING.default)
        if unmasking is not None and unmasking not in UNMASKING_RULES:
            raise ValueError(f"Unknown unmasking rule {unmasking!r}; choose one of {sorted(UNMASKING_RULES)}.")
        self._validate_numbers()
        self._validate_tokens()
        self._refuse_what_blt_decoding_cannot_honour(decoding)

    def _validate_numbers(self) -> None:
        """Counts are integers, penalties positive floats, sampling knobs (when sampling) within their intervals."""
        for name, minimum in INTEGER_FIELDS.items():
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name), minimum)
        check_integer("num_return_sequences", self.num_return_sequences or 1, minimum=1)
        for name in ("repetition_penalty", "encoder_repetition_penalty"):
            penalty = getattr(self, name)
            if penalty is None:
                continue
            if not isinstance(penalty, float):
                # Transformers' penalty processors take floats only.
                raise TypeError(f"`{name}` must be a float, got {penalty!r} ({type(penalty).__name__}).")
            check_real(name, penalty, 0.0, math.inf, open_low=True, open_high=True)
        if not self.do_sample:
            return
        if self.top_k is not None:
            check_integer("top_k", self.top_k, minimum=0)
        for name, interval in SAMPLING_FIELDS.items():
            if getattr(self, name) is not None:
                check_real(name, getattr(self, name), *interval)

    def special_token_ids(self) -> Iterator[tuple[str, object]]:
        """Each set id of the special and forced id fields (`TOKEN_ID_FIELDS`), with its field's name, as given."""
        for name in TOKEN_ID_FIELDS:
            ids = getattr(self, name)
            for token_id in ids if isinstance(ids, list) else [ids]:
                if token_id is not None:
                    yield name, token_id

    def _validate_tokens(self) -> None:
        """Special and forced ids are non-negative integers (the model checks them against its vocabulary), stop
        strings non-empty strings."""
        for name, token_id in self.special_token_ids():
            check_integer(name, token_id, minimum=0)
        stop_strings = [self.stop_strings] if isinstance(self.stop_strings, str) else self.stop_strings or []
        if any(not isinstance(stop, str) or not stop for stop in stop_strings):
            raise ValueError(f"`stop_strings` must be non-empty strings, got {self.stop_strings!r}.")

    def _refuse_what_blt_decoding_cannot_honour(self, decoding: str) -> None:
        """Fields that ask for something no BLT strategy (or not `decoding`) does, which would otherwise be dropped."""
        mode = self.get_generation_mode()
        drafts_by_lookup = mode == GenerationMode.ASSISTED_GENERATION and not (
            self.assistant_early_exit or self.use_mtp
        )
        if mode in UNSUPPORTED_GENERATION_MODES and not drafts_by_lookup:
            raise ValueError(
                f"{mode.value} (`{UNSUPPORTED_GENERATION_MODES[mode]}`) is not supported by BLT decoding "
                f"strategies; choose one with `decoding` ({sorted(DECODING_STRATEGIES)}), greedy or sampling."
            )
        if self.guidance_scale is not None and self.guidance_scale != 1:
            # Its processor runs the model a second time on transformers' cache interface, which BLT models lack.
            raise ValueError(f"`guidance_scale` (classifier-free guidance) is not supported: {self.guidance_scale}.")
        if self.token_healing:
            raise ValueError("`token_healing` is not supported: a byte-level model has no token boundaries to heal.")
        synth_id = isinstance(self.watermarking_config, SynthIDTextWatermarkingConfig)
        if synth_id and decoding != AutoregressiveDecoding.name:
            # Its processor keeps state that assumes one call per generated token, in order; other strategies also
            # score drafted bytes and blocks.
            raise ValueError(
                f"SynthID `watermarking_config` needs decoding={AutoregressiveDecoding.name!r}, got {decoding!r}."
            )

    @classmethod
    def from_model_config(cls, model_config) -> "BltDiffusionGenerationConfig":
        """Generation defaults for a model: its special tokens and a byte budget suited to byte-level text."""
        return cls(
            bos_token_id=model_config.bos_token_id,
            eos_token_id=model_config.eos_token_id,
            pad_token_id=model_config.pad_token_id,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
            do_sample=False,
        )


@dataclass
class BltDiffusionGenerateOutput(ModelOutput):
    """
    Output of [`BltDiffusionGenerationMixin.generate`] with `return_dict_in_generate=True`.

    Every cost field is a per-row tensor of shape `(batch,)`, so `pipeline("text-generation")` copies it into each
    result. Costs count only the work done while a row was unfinished.

    sequences (`torch.LongTensor` of shape `(batch, prompt + new)`): prompts followed by generated bytes; rows that
        stopped early are padded with `pad_token_id`.
    decoder_nfe (`torch.LongTensor`): local decoder calls.
    global_nfe (`torch.LongTensor`): encoder+global calls, counted as the paper counts them: one per call that
        closes at least one patch (AR) or encodes a block (diffusion).
    patcher_nfe (`torch.LongTensor`): entropy-model calls.
    cell_encoder_nfe (`torch.LongTensor`): local-encoder passes over diffusion cells, one per denoising step of a
        model whose cells go through the encoder (`diffusion_cell_embedding="encoder"`), else 0.
    memory_bandwidth_gb (`torch.FloatTensor`): the paper's estimated parameter traffic (Eq. 8) in GB, plus the
        encoder passes over cells, which the paper's BLT-D does not make:
        `2 * (decoder_nfe * P_dec + global_nfe * (P_enc + P_glob) + cell_encoder_nfe * P_enc) / 1e9`.
    acceptance_rate (`torch.FloatTensor`, *optional*): speculative strategies only, the share of drafted bytes that
        verification kept.
    scores (`tuple[torch.FloatTensor]`, *optional*): with `output_scores=True`, as in transformers: one (batch,
        vocab) tensor per generated byte, the processed scores (logits processors applied) that byte was chosen from.
        Lossless strategies give the verifying pass's scores, those autoregressive decoding would have given;
        diffusion gives, per byte, those of the denoising step that committed it. Positions after a row stopped hold
        zeros.
    logits (`tuple[torch.FloatTensor]`, *optional*): with `output_logits=True`, the raw logits of the same positions,
        shaped as `scores`.
    cache (`BltDiffusionCache`, *optional*): the cache at the end of generation, holding each row's committed bytes
        (all but the last few): pass it to `generate(history + new_bytes, cache=output.cache)` to continue.
    """

    sequences: torch.LongTensor | None = None
    decoder_nfe: torch.LongTensor | None = None
    global_nfe: torch.LongTensor | None = None
    patcher_nfe: torch.LongTensor | None = None
    cell_encoder_nfe: torch.LongTensor | None = None
    memory_bandwidth_gb: torch.FloatTensor | None = None
    acceptance_rate: torch.FloatTensor | None = None
    scores: tuple[torch.FloatTensor, ...] | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    cache: object | None = None


@dataclass
class ParameterCounts:
    """Parameters loaded per call of each component, as the paper's Eq. 8 counts them.

    `decoder` covers the local decoder and the LM head; `encoder` the local encoder without the hash n-gram tables
    (those are lookups, not weight loads); `global_transformer` the global transformer. The patcher is not counted,
    as in the paper.
    """

    decoder: int
    encoder: int
    global_transformer: int

    @classmethod
    def of(cls, model) -> "ParameterCounts":
        def count(module):
            return sum(parameter.numel() for parameter in module.parameters())

        return cls(
            decoder=count(model.model.local_decoder) + count(model.lm_head),
            encoder=count(model.model.local_encoder),
            global_transformer=count(model.model.global_transformer),
        )

    def bandwidth_gb(
        self, decoder_nfe: torch.Tensor, global_nfe: torch.Tensor, cell_encoder_nfe: torch.Tensor | int = 0
    ) -> torch.Tensor:
        bytes_per_parameter = 2
        loads = decoder_nfe * self.decoder + global_nfe * (self.encoder + self.global_transformer)
        loads = loads + cell_encoder_nfe * self.encoder
        return bytes_per_parameter * loads.double() / 1e9


# Keyword arguments `generate` accepts besides generation-config fields; anything else is a typo worth reporting.
# `logits_to_keep` changes nothing: strategies compute only the logits they read.
_ACCEPTED_MODEL_KWARGS = {"attention_mask", "use_cache", "output_attentions", "output_hidden_states", "logits_to_keep"}


class BltDiffusionGenerationMixin(GenerationMixin):
    """`generate()` for BLT models: every decoding strategy behind transformers' usual generation interface."""

    def adjust_generation_fn(self, *args, **kwargs):
        """Keep `self.generation_config` a `BltDiffusionGenerationConfig` after `from_pretrained`.

        The stock version reloads `generation_config.json` as the base class. A file that a stock BLT derived from its
        model config carries no generation choices, so it is replaced by this model's own defaults; in any file,
        special ids left unset come from the model config.
        """
        super().adjust_generation_fn(*args, **kwargs)
        loaded = self.generation_config
        if loaded is None or isinstance(loaded, BltDiffusionGenerationConfig):
            return
        if loaded._from_model_config:
            self.generation_config = BltDiffusionGenerationConfig.from_model_config(self.config)
        else:
            self.generation_config = BltDiffusionGenerationConfig.from_dict(loaded.to_dict())
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self.generation_config, name) is None:
                setattr(self.generation_config, name, getattr(self.config, name))

    @torch.no_grad()
    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer=None,
        input_ids: torch.Tensor | None = None,
        tokenizer=None,
        assistant_model=None,
        cache: BltDiffusionCache | None = None,
        **kwargs,
    ) -> BltDiffusionGenerateOutput | torch.LongTensor:
        r"""
        Generate bytes after `input_ids` with the strategy named by `decoding`.

        Args:
            inputs / input_ids (`torch.LongTensor` of shape `(batch, prompt)`, *optional*): prompts, padded in a
                batch (left padding is the layout strategies read; right-padded prompts are moved into it, and the
                output gives them back as they came, each row's new bytes after them). Missing or empty: generation
                starts from BOS.
            generation_config (`GenerationConfig`, *optional*): defaults to `model.generation_config`.
            logits_processor (`LogitsProcessorList`, *optional*): added to those the config implies. Like those,
                called with the batch's histories, or with one row's when rows hold different numbers of bytes, and
                once per position of a drafted or diffused block.
            stopping_criteria (`StoppingCriteriaList`, *optional*): added to max length, EOS and stop strings.
            streamer (`BaseStreamer`, *optional*): receives the prompt, then committed bytes, then `end()`.
            tokenizer (*optional*): needed for `stop_strings`.
            assistant_model (`PreTrainedModel`, *optional*): a smaller causal LM over the same byte ids that drafts
                bytes for this model to verify, as in transformers' assisted generation (`decoding="assisted"`, chosen
                by passing it), here lossless in batches too.
            cache (`BltDiffusionCache`, *optional*): `output.cache` of an earlier generation (with
                `return_dict_in_generate=True`) by this model, to continue it: pass the whole history as the prompt,
                as in transformers (`past_key_values` is the older name); only the bytes the cache does not hold are
                read, and the cache is updated in place. Any strategy continues from any strategy's cache.
            kwargs: generation-config fields (`max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`,
                `repetition_penalty`, `decoding`, `prompt_lookup_num_tokens`, which chooses
                `decoding="prompt_lookup"`, ...) and `attention_mask`.

        Returns:
            `torch.LongTensor` of shape `(batch, prompt + new)`, or a [`BltDiffusionGenerateOutput`] with
            `return_dict_in_generate=True`.
        """
        if inputs is not None and input_ids is not None:
            raise ValueError("Pass the prompt as `inputs` or as `input_ids`, not both.")
        input_ids = inputs if inputs is not None else input_ids
        user_set_max_length = "max_length" in kwargs and "max_new_tokens" not in kwargs
        decoding_named = "decoding" in kwargs or getattr(generation_config, "decoding", None) not in (
            None,
            AutoregressiveDecoding.name,
        )
        generation_config, model_kwargs = self._resolve_generation_config(generation_config, kwargs)
        self._select_drafting_strategy(generation_config, decoding_named, assistant_model)
        unexpected = set(model_kwargs) - _ACCEPTED_MODEL_KWARGS
        if unexpected:
            raise ValueError(f"`generate` got unexpected keyword arguments {sorted(unexpected)}.")
        generation_config.validate()
        if compiles_steps(generation_config):
            check_compile_config(generation_config.compile_config)
        self._check_token_ids(generation_config)
        attention_mask = model_kwargs.get("attention_mask")
        input_ids, attention_mask = self._prepare_prompt(input_ids, attention_mask, generation_config)
        input_ids, attention_mask = self._expand_for_return_sequences(input_ids, attention_mask, generation_config)
        prompts = input_ids
        right_padding = RightToLeftPadding.of(attention_mask)
        if right_padding is not None:
            input_ids, attention_mask = right_padding.apply(input_ids), right_padding.apply(attention_mask)
        self._check_cache(cache, input_ids.shape[0])
        max_new_tokens = self._resolve_max_new_tokens(generation_config, input_ids.shape[1], user_set_max_length)
        self._warn_past_position_limit(input_ids.shape[1], max_new_tokens)

        generation_config.max_length = input_ids.shape[1] + max_new_tokens
        generation_config.max_new_tokens = max_new_tokens
        self._prepare_special_tokens(generation_config, True, device=input_ids.device)
        processors = self._rowwise_logits_processors(generation_config, input_ids, attention_mask, logits_processor)
        criteria = self._per_row_stopping_criteria(generation_config, stopping_criteria, tokenizer)
        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError(f"Streaming supports one prompt at a time, got a batch of {input_ids.shape[0]}.")

        state = GenerationState(input_ids, max_new_tokens, generation_config, criteria, streamer, attention_mask)
        strategy = DECODING_STRATEGIES[generation_config.decoding](
            self, generation_config, processors, assistant_model
        )
        if not state.done:
            # The strategy checks that it can run on this model before the streamer sees anything.
            strategy.check_model()
            strategy.start(state, input_ids, attention_mask, cache)
        if streamer is not None:
            streamer.put(prompts.cpu())
        if not state.done:
            # The prompt was read uncompiled: its length is a shape of its own, read once.
            with compiled_decoding_steps(self, strategy.cache, generation_config):
                while True:
                    proposed = strategy.next_tokens(state)
                    taken = state.commit(proposed.tokens, proposed.counts, proposed.scores, proposed.logits)
                    if state.done:
                        break
                    strategy.feed(state, proposed.tokens, taken)
            strategy.finish(state)
        if streamer is not None:
            streamer.end()

        sequences = state.output_sequences()
        # The prompts as they came, right padding included.
        sequences[:, : prompts.shape[1]] = prompts
        if not generation_config.return_dict_in_generate:
            return sequences
        counts = ParameterCounts.of(self)
        num_generated = sequences.shape[1] - input_ids.shape[1]
        return BltDiffusionGenerateOutput(
            sequences=sequences,
            decoder_nfe=state.decoder_nfe,
            global_nfe=state.global_nfe,
            patcher_nfe=state.patcher_nfe,
            cell_encoder_nfe=state.cell_encoder_nfe,
            memory_bandwidth_gb=counts.bandwidth_gb(state.decoder_nfe, state.global_nfe, state.cell_encoder_nfe),
            acceptance_rate=strategy.acceptance_rate(),
            scores=state.scores.steps(num_generated) if state.scores is not None else None,
            logits=state.raw_logits.steps(num_generated) if state.raw_logits is not None else None,
            cache=strategy.cache,
        )

    @staticmethod
    def _select_drafting_strategy(
        generation_config: BltDiffusionGenerationConfig, decoding_named: bool, assistant_model
    ) -> None:
        """Draft as transformers users ask: with `assistant_model` (assisted decoding) or by prompt lookup
        (`prompt_lookup_num_tokens`). A `decoding` that this call names (`decoding_named`) must then be that one."""
        requests = {
            AssistedDecoding.name: ("assistant_model", assistant_model is not None),
            PromptLookupDecoding.name: (
                "prompt_lookup_num_tokens",
                generation_config.prompt_lookup_num_tokens is not None,
            ),
        }
        requested = [(decoding, argument) for decoding, (argument, given) in requests.items() if given]
        if len(requested) > 1:
            raise ValueError(
                "`assistant_model` and `prompt_lookup_num_tokens` ask for two ways of drafting; pass one."
            )
        if not requested:
            return
        decoding, argument = requested[0]
        if decoding_named and generation_config.decoding != decoding:
            raise ValueError(
                f"`{argument}` drafts for decoding={decoding!r}, but decoding={generation_config.decoding!r}; pass "
                "one of them."
            )
        generation_config.decoding = decoding

    def _rowwise_logits_processors(
        self,
        generation_config: BltDiffusionGenerationConfig,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_processor: LogitsProcessorList | None,
    ) -> RowwiseLogitsProcessors:
        """Transformers' processors for the prompts (batch, prompt) and their left padding, the caller's added, built
        for the whole batch and for any row alone: each row alone gets its own prompt and padding as the state of
        processors that keep some (the repetition penalties, the encoder n-gram ban)."""
        caller_processors = logits_processor if logits_processor is not None else LogitsProcessorList()

        def build(rows: slice) -> LogitsProcessorList:
            return self._get_logits_processor(
                generation_config=generation_config,
                input_ids_seq_length=input_ids.shape[1],
                encoder_input_ids=input_ids[rows],
                logits_processor=caller_processors,
                device=input_ids.device,
                model_kwargs={"attention_mask": attention_mask[rows]},
            )

        return RowwiseLogitsProcessors(build(slice(None)), lambda row: build(slice(row, row + 1)))

    def _per_row_stopping_criteria(
        self,
        generation_config: BltDiffusionGenerationConfig,
        stopping_criteria: StoppingCriteriaList | None,
        tokenizer,
    ) -> StoppingCriteriaList:
        """Transformers' criteria (EOS, stop strings, max time, the caller's) without the batch-wide length check:
        `GenerationState` enforces `max_new_tokens` per row, and rows may grow at different speeds."""
        criteria = self._get_stopping_criteria(
            generation_config=generation_config,
            stopping_criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
            tokenizer=tokenizer,
        )
        return StoppingCriteriaList(
            criterion for criterion in criteria if not isinstance(criterion, MaxLengthCriteria)
        )

    def _resolve_generation_config(
        self, generation_config: GenerationConfig | None, kwargs: dict
    ) -> tuple[BltDiffusionGenerationConfig, dict]:
        """Priority: `kwargs` > `generation_config` > `self.generation_config` > model config > global defaults.

        Returns the merged config and the keyword arguments that are not generation-config fields.
        """
        base = generation_config if generation_config is not None else self.generation_config
        merged = BltDiffusionGenerationConfig.from_dict(base.to_dict())
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(merged, name) is None:
                setattr(merged, name, getattr(self.config, name))
        merged.update(**merged._get_default_generation_params(), defaults_only=True)
        model_kwargs = merged.update(**kwargs)
        return merged, model_kwargs

    def _prepare_prompt(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        generation_config: BltDiffusionGenerationConfig,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the prompt; an absent or empty prompt becomes a lone BOS."""
        device = self.device
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"`{name}` must be a torch.Tensor of shape (batch, prompt_length), got {type(value).__name__}; "
                    "a tokenizer gives one with `return_tensors='pt'`, or use torch.tensor(...)."
                )
        if input_ids is None or input_ids.numel() == 0:
            if generation_config.bos_token_id is None:
                raise ValueError("An empty prompt starts from BOS, but `bos_token_id` is not set.")
            batch_size = 1 if input_ids is None or input_ids.dim() < 2 else max(input_ids.shape[0], 1)
            input_ids = torch.full((batch_size, 1), generation_config.bos_token_id, dtype=torch.long, device=device)
            return input_ids, torch.ones_like(input_ids)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("`input_ids` must be a 2-D tensor of byte ids, shape (batch, prompt_length).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.validate_inputs(input_ids, attention_mask)
        # Any integer dtype of ids is accepted; the caches hold int64.
        return input_ids.to(device=device, dtype=torch.long), attention_mask.to(device)

    @staticmethod
    def _expand_for_return_sequences(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: BltDiffusionGenerationConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat each prompt row `num_return_sequences` times in place, as transformers' `generate` does: the
        output's rows are then prompt 0's sequences, then prompt 1's, each row with its own cost fields."""
        copies = generation_config.num_return_sequences or 1
        if copies == 1:
            return input_ids, attention_mask
        return input_ids.repeat_interleave(copies, dim=0), attention_mask.repeat_interleave(copies, dim=0)

    def _check_cache(self, cache: BltDiffusionCache | None, batch_size: int) -> None:
        """A cache to continue from must be one this model's generation returned, with a row per prompt."""
        if cache is None:
            return
        if not isinstance(cache, BltDiffusionCache):
            raise TypeError(
                f"`cache` must be the `BltDiffusionCache` of an earlier generation (`output.cache` with "
                f"`return_dict_in_generate=True`), got {type(cache).__name__}."
            )
        if cache.layout() != self.new_cache(1, 1).layout():
            raise ValueError("`cache` was made by a model of another configuration or dtype than this one.")
        if cache.lengths().shape[0] != batch_size:
            raise ValueError(
                f"`cache` holds {cache.lengths().shape[0]} rows, but there are {batch_size} prompts (after "
                "`num_return_sequences`); continue each generated row with its own history."
            )

    def _check_token_ids(self, generation_config: BltDiffusionGenerationConfig) -> None:
        """Special and forced ids must name tokens of the vocabulary, and rows that stop early need a pad id."""
        if generation_config.pad_token_id is None:
            raise ValueError(
                "`pad_token_id` is not set (in the arguments, the generation config or the model config); generation "
                "pads rows that stop early with it."
            )
        vocab_size = self.config.vocab_size
        for name, token_id in generation_config.special_token_ids():
            if token_id >= vocab_size:
                raise ValueError(f"`{name}` ({token_id}) is outside the model's vocabulary [0, {vocab_size}).")
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            for token_id in getattr(generation_config, name) or []:
                check_integer(name, token_id, minimum=0)
                if token_id >= vocab_size:
                    raise ValueError(f"`{name}` holds {token_id}, outside the model's vocabulary [0, {vocab_size}).")

    def _resolve_max_new_tokens(
        self, generation_config: GenerationConfig, prompt_length: int, user_set_max_length: bool
    ) -> int:
        if generation_config.max_new_tokens is None and generation_config.max_length is None:
            raise ValueError("Set `max_new_tokens` (or `max_length`): generation needs a byte budget.")
        if user_set_max_length or generation_config.max_new_tokens is None:
            max_new_tokens = generation_config.max_length - prompt_length
        else:
            max_new_tokens = generation_config.max_new_tokens
        if max_new_tokens < 0:
            raise ValueError(
                f"The prompt ({prompt_length} bytes) is longer than `max_length` ({generation_config.max_length})."
            )
        return max_new_tokens

    def _warn_past_position_limit(self, prompt_length: int, max_new_tokens: int) -> None:
        """Generation may run past `config.max_position_embeddings`, as transformers' does, with its warning."""
        limit = self.config.max_position_embeddings
        if prompt_length + max_new_tokens > limit:
            logger.warning_once(
                f"The prompt ({prompt_length} bytes) plus `max_new_tokens` ({max_new_tokens}) may exceed the model's "
                f"predefined maximum length (`config.max_position_embeddings` = {limit}). Depending on the model, you "
                "may observe exceptions, performance degradation, or nothing at all."
            )
