"""Compiled single-byte decoding steps: `generate(..., compile_config=CompileConfig())`.

A single-byte step runs four small transformer stacks (patcher, local encoder, local decoder and, when the byte
closes a patch, the global transformer) on one position each. On a CPU most of such a step is per-operator overhead,
not arithmetic: a 128-wide layer spends more time in Python and dispatch than in its matrix products. Compiling each
stack's step into one graph removes that overhead, and on a GPU it is what CUDA graphs capture.

A compiled graph needs shapes that do not change from step to step, so a compiled step attends a fixed number of
its key/value buffer's first slots under a mask (`build_attention_context(..., fixed_keys=...)`) instead of the
slice that holds keys, and writes its keys through tensors of slots. That number is the slots in use rounded up to a
power of two (`attended_slots`): a step's shape changes only when the text crosses one, and a long generation does
not pay, at every byte, for the whole capacity it will reach. The encoder's step also runs the patcher and embeds
the new byte (its byte and hash n-gram tables: `encode_new_bytes`), and the decoder's picks each query's patch
latents (`decode_bytes`). The rest (patch boundaries, pooling, the cache's bookkeeping, logits processors, stopping)
stays eager: it depends on data, and on a GPU it costs two synchronisations per step (whether the global transformer
runs, whether generation is done).

Compilation happens at the first step of a new shape (batch size, attended slots), once per stack; the compiled
stacks are kept with the model for later calls. Where compiling is not possible (no C++ compiler, an unsupported
backend), generation warns once and goes on uncompiled, with the same bytes.
"""

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn
from transformers import CompileConfig
from transformers.utils import logging

if TYPE_CHECKING:
    from .cache_blt_diffusion import BltDiffusionCache
    from .generation_blt_diffusion import BltDiffusionGenerationConfig

logger = logging.get_logger(__name__)

# What a compiled step returns: a stack's states, or what the model function that runs it gives back.
StepOutput = TypeVar("StepOutput")

# Errors that mean "this stack cannot be compiled here", raised by the first call of a compiled stack.
# (`torch._inductor.exc.InductorError`, a compiler that fails, is one of them.)
COMPILE_ERRORS = torch._dynamo.exc.TorchDynamoException


def compiles_steps(generation_config) -> bool:
    """Whether `generation_config` asks for compiled decoding steps: a `compile_config`, and compilation not
    disabled."""
    return generation_config.compile_config is not None and not generation_config.disable_compile


def check_compile_config(compile_config: CompileConfig) -> None:
    """Refuse a backend that torch does not know, before anything is generated rather than at the first step."""
    backend = compile_config.backend
    if isinstance(backend, str) and backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(
            f"compile_config.backend={backend!r} is not a torch.compile backend; "
            f"known: {', '.join(torch._dynamo.list_backends(exclude_tags=()))}."
        )


def capacity_for_compiled_steps(capacity: int) -> int:
    """Round a cache capacity up to a power of two (at least 256), so that generations of similar lengths share
    compiled graphs: each capacity is a shape of its own."""
    return max(256, 1 << (max(capacity, 1) - 1).bit_length())


def attended_slots(needed: int, capacity: int) -> int:
    """How many of a buffer's first slots a compiled step reads when its queries and keys lie before slot `needed`:
    `needed` rounded up as cache capacities are (`capacity_for_compiled_steps`), at most the buffer's `capacity`."""
    return min(capacity, capacity_for_compiled_steps(needed))


def torch_compile_arguments(compile_config: CompileConfig, device: torch.device) -> dict:
    """The `torch.compile` keyword arguments that `compile_config` means for steps on `device`."""
    arguments = compile_config.to_dict()
    if arguments["dynamic"] is None:
        # None lets torch make a dimension symbolic once it changes; the steps' shapes change only with batch size and
        # attended slots, and a symbolic size comes back from the graph as a host read.
        arguments["dynamic"] = False
    inductor = arguments["backend"] == "inductor"
    if inductor and device.type == "cpu" and arguments["options"] is None:
        # The CPU has no CUDA graphs for the default mode, "reduce-overhead", to use.
        arguments["options"] = {"cpp_wrapper": True}
    if arguments["options"] is None:
        del arguments["options"]
    if not inductor or "options" in arguments:
        # Modes are inductor's, and torch.compile takes a mode or options, not both; `CompileConfig` always names a
        # mode.
        del arguments["mode"]
    return arguments


class CompiledDecodingSteps:
    """The transformer stacks of one model, each compiled on first use as `compile_config` says.

    Call `run(stack, *inputs)` in place of `stack(*inputs)` for a single-position step whose attention context comes
    from `build_attention_context(..., fixed_keys=...)`. On a CPU, where CUDA graphs do not exist, inductor's C++
    wrapper (no Python between kernels) is used unless the config gives inductor options of its own.
    """

    def __init__(self, compile_config: CompileConfig):
        self.compile_config = compile_config
        self._compiled: dict[Callable, Callable] = {}
        self.unavailable: str | None = None

    @property
    def step_names(self) -> tuple[str, ...]:
        """The names of the steps compiled so far: a stack's class, or the model function that runs one."""
        return tuple(getattr(step, "__name__", type(step).__name__) for step in self._compiled)

    def run(self, stack: Callable[..., StepOutput], *inputs) -> StepOutput:
        """`stack(*inputs)`, compiled; uncompiled once compiling has failed. `stack` is a transformer stack or a
        function of the model that runs one, given the model as its first input: never a bound method, which would
        keep the model alive through the compiled steps kept for it."""
        if self.unavailable is not None:
            return stack(*inputs)
        compiled = self._compiled.get(stack)
        if compiled is None:
            device = next(value for value in inputs if isinstance(value, torch.Tensor)).device
            compiled = self._compiled[stack] = torch.compile(
                stack, **torch_compile_arguments(self.compile_config, device)
            )
        try:
            return compiled(*inputs)
        except COMPILE_ERRORS as error:
            self.unavailable = describe_compile_error(error)
            logger.warning(
                "compile_config: the decoding steps could not be compiled (%s); generating without compilation.",
                self.unavailable,
            )
            return stack(*inputs)


def describe_compile_error(error: Exception) -> str:
    """One line on why compiling failed: the backend's own error, which dynamo wraps, when there is one."""
    cause = getattr(error, "inner_exception", None) or error.__cause__ or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else 'no message'}"


# Compiled steps of each live model, by compile config; kept outside the model so that copying, pickling or saving it
# never meets a compiled module.
_COMPILED_STEPS: "weakref.WeakKeyDictionary[nn.Module, dict[str, CompiledDecodingSteps]]" = weakref.WeakKeyDictionary()


def compiled_steps_for(model: nn.Module, compile_config: CompileConfig) -> CompiledDecodingSteps:
    """The compiled steps of `model` under `compile_config`, made on first request and reused after."""
    by_config = _COMPILED_STEPS.setdefault(model, {})
    key = repr(sorted(compile_config.to_dict().items()))
    if key not in by_config:
        by_config[key] = CompiledDecodingSteps(compile_config)
    return by_config[key]


# Graphs dynamo may keep per compiled function (a stack, or the model function that runs one) while compiled steps
# decode: one per batch size, cache capacity, attended slots (a power of two: a long generation crosses several) and
# number of queries (the decoder's one or two). Dynamo's default, 8, is about one long generation's worth, past which
# it would run new shapes uncompiled.
STEP_GRAPHS_PER_FUNCTION = 64


@contextmanager
def compiled_decoding_steps(
    model: nn.Module, cache: "BltDiffusionCache", generation_config: "BltDiffusionGenerationConfig"
) -> Iterator[None]:
    """Decode with `model`'s compiled steps on `cache` inside this block, when `generation_config` asks for them: the
    cache carries them (its single-position calls run them) and dynamo may keep `STEP_GRAPHS_PER_FUNCTION` graphs per
    compiled function. Dynamo's limit is process-wide: code compiled inside the block (a user's logits processor)
    gets the raised limit too, and the user's own limit is back after it."""
    if not compiles_steps(generation_config):
        yield
        return
    cache.compiled_steps = compiled_steps_for(model, generation_config.compile_config)
    # `cache_size_limit`: the name every supported torch knows (torch 2.7 renamed it `recompile_limit`, keeping it).
    limit = max(torch._dynamo.config.cache_size_limit, STEP_GRAPHS_PER_FUNCTION)
    try:
        with torch._dynamo.config.patch(cache_size_limit=limit):
            yield
    finally:
        cache.compiled_steps = None


__all__ = [
    "CompiledDecodingSteps",
    "StepOutput",
    "attended_slots",
    "capacity_for_compiled_steps",
    "check_compile_config",
    "compiled_decoding_steps",
    "compiled_steps_for",
    "compiles_steps",
    "torch_compile_arguments",
]
