"""The multi-level cache of incremental BLT decoding, the attention contexts that read and write it, and the
left-padded layout of the rows it holds (`RightToLeftPadding` moves right-padded rows into it).

`BltDiffusionCache` keeps, for every level of the model, what appending more bytes needs: key/value buffers of the
patcher, local encoder, global transformer and local decoder, and the byte-level bookkeeping of the open patch. It
alone mutates its state: the model reads its fields and hands new results to its methods (`start_rows`,
`append_bytes`, `append_draft_byte`, `append_patches`, `mark_decoded`, `crop`), and attention layers write keys and
values through `KeyValueBuffer.update`.
"""

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .compiled_steps_blt_diffusion import attended_slots

if TYPE_CHECKING:
    from .block_diffusion_blt_diffusion import BlockDiffusionLayout
    from .compiled_steps_blt_diffusion import CompiledDecodingSteps
    from .configuration_blt_diffusion import BltDiffusionConfig


class KeyValueBuffer:
    """Keys and values of one transformer stack, stored by slot, with a valid range per row.

    Row `r` holds tokens in slots `starts[r] <= slot < ends[r]`; slots before `starts[r]` are left padding. Rows may
    have different `ends` (speculative decoding accepts different numbers of bytes per row, and rows close patches
    at different times), so new tokens are written at each row's own end. Buffers grow by doubling.

    Tensors: `keys[layer]`, `values[layer]` of shape (batch, kv_heads, capacity, head_dim).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, num_kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.starts = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.ends = torch.zeros(batch_size, dtype=torch.long, device=device)

    @classmethod
    def for_stack(
        cls, config, batch_size: int, capacity: int, dtype: torch.dtype, device: torch.device | str
    ) -> "KeyValueBuffer":
        """An empty buffer for the transformer stack that `config` (a BLT sub-config) describes."""
        return cls(
            config.num_hidden_layers,
            batch_size,
            config.num_key_value_heads,
            config.hidden_size // config.num_attention_heads,
            capacity,
            dtype,
            torch.device(device),
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reserve(self, needed: int) -> None:
        """Make room for slots up to `needed` (exclusive), doubling the capacity as often as necessary."""
        if needed <= self.capacity or not self.keys:
            return
        new_capacity = self.capacity
        while new_capacity < needed:
            new_capacity *= 2
        for buffers in (self.keys, self.values):
            for layer_idx, old in enumerate(buffers):
                grown = old.new_zeros(old.shape[:2] + (new_capacity,) + old.shape[3:])
                grown[:, :, : old.shape[2]] = old
                buffers[layer_idx] = grown

    def extended(self, capacity: int) -> "KeyValueBuffer":
        """A copy with room for `capacity` slots, whose writes leave this buffer's tensors as they are: in training,
        autograd still needs the keys that earlier attention read from them."""
        extended = copy.copy(self)
        extended.keys = [self._padded(tensor, capacity) for tensor in self.keys]
        extended.values = [self._padded(tensor, capacity) for tensor in self.values]
        return extended

    @staticmethod
    def _padded(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
        extra = max(capacity - tensor.shape[2], 0)
        return torch.cat([tensor, tensor.new_zeros(tensor.shape[:2] + (extra,) + tensor.shape[3:])], dim=2)

    def start_rows(self, starts: torch.Tensor) -> None:
        """Empty every row, its first real slot at `starts` (batch,): the slots before are left padding."""
        self.starts = starts.clone()
        self.ends = torch.zeros_like(starts)

    def advance(self, ends: torch.Tensor) -> None:
        """Row r now holds slots up to `ends[r]` (batch,), exclusive: keys written there by `update` are kept."""
        self.ends = ends

    def crop(self, new_ends: torch.Tensor) -> None:
        """Forget every slot at or after `new_ends` (batch,), e.g. a rejected draft."""
        self.ends = torch.minimum(self.ends, new_ends.to(self.ends))

    def update(
        self,
        layer_idx: int,
        keys: torch.Tensor,
        values: torch.Tensor,
        write_slots: torch.Tensor | None,
        shared_write_start: int | None,
        key_range: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new keys and values (batch, kv_heads, new, head_dim) and return the slots to attend.

        Row r's i-th new key goes to slot `write_slots[r, i]`, or to `shared_write_start + i` in every row when
        given (one slice write instead of a scatter). Writing does not extend the rows (see `advance`): keys past a
        row's end are scratch that the next write may replace.

        Returns:
            keys and values of slots `[key_range[0], key_range[1])`, (batch, kv_heads, slots, head_dim).
        """
        key_buffer, value_buffer = self.keys[layer_idx], self.values[layer_idx]
        if shared_write_start is not None:
            write = slice(shared_write_start, shared_write_start + keys.shape[2])
            key_buffer[:, :, write] = keys
            value_buffer[:, :, write] = values
        else:
            rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
            key_buffer[rows, :, write_slots] = keys.transpose(1, 2).to(key_buffer.dtype)
            value_buffer[rows, :, write_slots] = values.transpose(1, 2).to(value_buffer.dtype)
        key_start, key_end = key_range
        return key_buffer[:, :, key_start:key_end], value_buffer[:, :, key_start:key_end]


@dataclass
class AttentionContext:
    """What every layer of one stack needs to attend for one call: positions, mask and where its keys live.

    `position_ids` (batch, new), `mask` (batch, 1, new, keys) boolean, True where a query may attend, or None when
    every query may attend every key. When `buffer` is set, new keys are written at `write_slots` (batch, new), or
    at `[shared_write_start, shared_write_start + new)` when all rows write there, and attention reads slots
    `[key_start, key_end)`; otherwise the new keys are all there is (full-sequence forward without a cache).
    `block_layout` replaces `mask` in block-diffusion training (see `BlockDiffusionLayout`).
    """

    position_ids: torch.Tensor
    mask: torch.Tensor | None
    buffer: KeyValueBuffer | None = None
    write_slots: torch.Tensor | None = None
    shared_write_start: int | None = None
    key_start: int = 0
    key_end: int = 0
    block_layout: "BlockDiffusionLayout | None" = None

    def keys_values(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (batch, kv_heads, new, head_dim) and return those to attend."""
        if self.buffer is None:
            return keys, values
        return self.buffer.update(
            layer_idx, keys, values, self.write_slots, self.shared_write_start, (self.key_start, self.key_end)
        )


def visible_keys(
    key_slots: torch.Tensor,
    starts: torch.Tensor,
    query_slots: torch.Tensor,
    visible_until: torch.Tensor,
    sliding_window: int | None,
    own_slots: torch.Tensor,
) -> torch.Tensor:
    """The visibility rule of every attention context: query i of row r, at slot `query_slots[r, i]`, may attend
    slot s of `key_slots` (keys,) when `starts[r] <= s < visible_until[r, i]` and, with a window W,
    `s > query_slots[r, i] - W`, and always its own key at `own_slots[r, i]`; (batch, queries, keys) boolean."""
    allowed = (key_slots >= starts[:, None, None]) & (key_slots < visible_until[..., None])
    if sliding_window is not None:
        allowed &= key_slots > query_slots[..., None] - sliding_window
    return allowed | (key_slots == own_slots[..., None])


def build_attention_context(
    starts: torch.Tensor,
    ends: torch.Tensor,
    num_new: int,
    sliding_window: int | None,
    buffer: KeyValueBuffer | None,
    fixed_keys: int | None = None,
) -> AttentionContext:
    """Positions and causal (optionally sliding-window) mask for `num_new` tokens appended after `ends` (batch,).

    A query in slot q of row r may attend slot s when `starts[r] <= s <= q` and, with a window W, `s > q - W`.
    Left-padding queries (q < starts[r]) attend only themselves, which keeps them finite and harmless.

    With `fixed_keys` (and a buffer), the queries read the buffer's first `fixed_keys` slots under a mask instead of
    the slots that hold keys: shapes then change only with `fixed_keys` and nothing reads a tensor's value on the
    host, as a compiled step needs (see `compiled_steps_blt_diffusion.py`). It must exceed every query's slot.
    """
    device = ends.device
    new_offsets = torch.arange(num_new, device=device)
    query_slots = ends[:, None] + new_offsets
    shared_write_start = None
    if buffer is None:
        key_start, key_end = 0, num_new
    elif fixed_keys is not None:
        key_start, key_end = 0, fixed_keys
    else:
        earliest, latest = int(ends.min()), int(ends.max())
        key_end = latest + num_new
        key_start = 0 if sliding_window is None else max(0, earliest - sliding_window + 1)
        shared_write_start = earliest if earliest == latest else None
    key_slots = torch.arange(key_start, key_end, device=device)
    allowed = visible_keys(key_slots, starts, query_slots, query_slots + 1, sliding_window, query_slots)
    return AttentionContext(
        position_ids=(query_slots - starts[:, None]).clamp(min=0),
        # SDPA's unmasked path is faster, and one query reading its whole window (a decoding step) needs no mask.
        mask=allowed[:, None] if fixed_keys is not None or not bool(allowed.all()) else None,
        buffer=buffer,
        write_slots=query_slots if buffer is not None else None,
        shared_write_start=shared_write_start,
        key_start=key_start,
        key_end=key_end,
    )


def build_query_attention_context(
    starts: torch.Tensor,
    query_slots: torch.Tensor,
    visible_until: torch.Tensor,
    sliding_window: int | None,
    buffer: KeyValueBuffer,
    write_slots: torch.Tensor | None = None,
    shared_write_start: int | None = None,
) -> AttentionContext:
    """Context for queries that do not simply extend the cache causally (diffusion blocks, verification twins).

    Query i of row r stands at slot `query_slots[r, i]` (its position), writes its keys at `write_slots[r, i]`
    (default: its own slot) and reads the real slots before `visible_until[r, i]` plus its own key; with a window W,
    nothing W or more slots behind it. Pass `shared_write_start` when every row writes at that slot onwards.

    Args:
        starts (`torch.Tensor` of shape `(batch,)`): first real slot of each row.
        query_slots, visible_until (`torch.Tensor` of shape `(batch, queries)`).
        write_slots (`torch.Tensor` of shape `(batch, queries)`, *optional*).
    """
    write_slots = query_slots if write_slots is None else write_slots
    key_start = 0 if sliding_window is None else max(0, int(query_slots.min()) - sliding_window + 1)
    key_end = int(write_slots.max()) + 1
    key_slots = torch.arange(key_start, key_end, device=starts.device)
    allowed = visible_keys(key_slots, starts, query_slots, visible_until, sliding_window, write_slots)
    return AttentionContext(
        position_ids=(query_slots - starts[:, None]).clamp(min=0),
        mask=allowed[:, None],
        buffer=buffer,
        write_slots=write_slots,
        shared_write_start=shared_write_start,
        key_start=key_start,
        key_end=key_end,
    )


def left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row of a left-padded `attention_mask` (batch, seq), how many padding columns come first (batch,)."""
    return (attention_mask.cumsum(dim=1) == 0).sum(dim=1)


def common_prefix_lengths(cached: torch.Tensor, given: torch.Tensor, comparable: torch.Tensor) -> torch.Tensor:
    """Per row, how many first ids of `cached` and `given` (batch, n) agree, counting at most `comparable` (batch,)."""
    offsets = torch.arange(cached.shape[1], device=cached.device)
    same = (cached == given) & (offsets < comparable[:, None])
    return same.long().cumprod(dim=1).sum(dim=1)


@dataclass
class RightToLeftPadding:
    """Rows that end in padding, each rolled right past its trailing padding so that all its padding comes first
    (left padding, the layout the model and its cache read), and the means to roll outputs back.

    `shifts` (batch,): the columns each row moves right, its count of trailing padding.
    """

    shifts: torch.Tensor

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None) -> "RightToLeftPadding | None":
        """The shift that left-aligns `attention_mask` (batch, seq), or None when no row ends in padding."""
        if attention_mask is None or bool(attention_mask[:, -1].bool().all()):
            return None
        trailing_padding = (attention_mask.bool().flip(1).long().cumsum(dim=1) == 0).sum(dim=1)
        return cls(shifts=trailing_padding)

    def apply(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Roll each row of `tensor` (batch first) right by its shift along `dim`, which spans the sequence."""
        return self._roll(tensor, dim, self.shifts)

    def undo(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Roll each row of `tensor` back left along `dim`: the inverse of `apply`."""
        return self._roll(tensor, dim, -self.shifts)

    @staticmethod
    def _roll(tensor: torch.Tensor, dim: int, shifts: torch.Tensor) -> torch.Tensor:
        length = tensor.shape[dim]
        # Column c of a row takes the row's column c - shift.
        sources = (torch.arange(length, device=tensor.device) - shifts[:, None]) % length
        shape = [tensor.shape[0]] + [1] * (tensor.dim() - 1)
        shape[dim] = length
        return tensor.gather(dim, sources.view(shape).expand_as(tensor))


def num_cross_attention_layers(config) -> int:
    """One cross-attention before every layer with `cross_attn_all_layers`, else one before the first."""
    return config.num_hidden_layers if config.cross_attn_all_layers else 1


class BltDiffusionCache:
    """Everything incremental BLT decoding keeps between calls, for every level of the model.

    Byte level (slots shared by all byte buffers, left padding before `starts`): patcher, encoder and decoder
    key/value buffers, the byte ids (for hash n-grams), the encoder outputs (for pooling the open patch) and which
    bytes end a patch. Patch level: global key/value buffer and, per decoder cross-attention layer, the projected
    keys/values of every closed patch. The open patch is the run of bytes after the last patch end.

    The decoder may lag the other byte buffers by one slot, when the newest byte was decoded against a latent that
    is not its final one (see `mark_decoded`); the next call decodes it again.
    """

    def __init__(
        self,
        config: "BltDiffusionConfig",
        batch_size: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        device = torch.device(device)
        capacity = max(int(capacity), 1)
        # With `max_patch_length`, stock BLT decodes a newest byte that closes its patch against the latent before.
        self.newest_byte_is_provisional = config.max_patch_length is not None and config.patch_in_forward
        self.patches_closed_last_call = torch.zeros(batch_size, dtype=torch.long, device=device)

        def stack_buffer(sub_config):
            return KeyValueBuffer.for_stack(sub_config, batch_size, capacity, dtype, device)

        self.patcher = stack_buffer(config.patcher_config) if config.patch_in_forward else None
        self.encoder = stack_buffer(config.encoder_config)
        self.decoder = stack_buffer(config.decoder_config)
        self.global_transformer = stack_buffer(config.global_config)
        decoder_config = config.decoder_config
        latent_shape = (
            batch_size,
            capacity,
            config.cross_attn_k,
            decoder_config.num_key_value_heads,
            decoder_config.hidden_size // decoder_config.num_attention_heads,
        )
        self.latent_keys_values = [
            (
                torch.zeros(latent_shape, dtype=dtype, device=device),
                torch.zeros(latent_shape, dtype=dtype, device=device),
            )
            for _ in range(num_cross_attention_layers(decoder_config))
        ]
        self.token_ids = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)
        self.encoder_states = torch.zeros(
            batch_size, capacity, config.encoder_config.hidden_size, dtype=dtype, device=device
        )
        self.ends_patch = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        # Set by `generate` for its single-byte steps when asked to compile them (`compile_config`).
        self.compiled_steps: CompiledDecodingSteps | None = None
        # Host-side facts that spare decoding steps reads of device values (synchronisations on a GPU): an upper bound
        # on every row's end, and whether the cache may hold no byte (only a new or cropped one may).
        self.end_bound = 0
        self.may_be_empty = True
        # The same bound for the patch buffer: raised by every patch slot written, kept by crops.
        self.patch_end_bound = 0
        # Whether the decoder may hold fewer bytes than the other buffers (see `mark_decoded`).
        self.decoder_may_lag = False

    @property
    def starts(self) -> torch.Tensor:
        """First real slot of each row (batch,): the number of left-padding slots."""
        return self.encoder.starts

    @property
    def byte_ends(self) -> torch.Tensor:
        """One past the last byte of each row (batch,)."""
        return self.encoder.ends

    @property
    def num_patches(self) -> torch.Tensor:
        """Closed patches of each row (batch,)."""
        return self.global_transformer.ends

    def decoder_lag_rows(self, byte_ends: torch.Tensor) -> torch.Tensor:
        """Rows (batch,) whose decoder holds fewer bytes than `byte_ends` (batch,): the newest byte before them waits
        for its final decoding (see `newest_decoding_is_provisional`)."""
        return self.decoder.ends < byte_ends

    def is_empty(self) -> bool:
        if not self.may_be_empty:
            return False
        self.may_be_empty = int(self.byte_ends.max()) == 0
        return self.may_be_empty

    @property
    def capacity(self) -> int:
        """Slots every byte-level buffer and the patch buffer have room for."""
        buffers = self._byte_level_buffers() + [self.global_transformer]
        return min(self.token_ids.shape[1], *(buffer.capacity for buffer in buffers))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Longest row, in slots (left padding included), as transformers' caches report it."""
        return int(self.byte_ends.max())

    def lengths(self) -> torch.Tensor:
        """Bytes held by each row, padding excluded (batch,)."""
        return self.byte_ends - self.starts

    def fixed_byte_keys(self, num_new: int) -> int:
        """Slots of the byte-level buffers that a compiled step reads when `num_new` bytes follow the rows' ends
        (`attended_slots` of the host-side bound on them)."""
        return attended_slots(self.end_bound + num_new, self.capacity)

    def fixed_patch_keys(self, num_new: int) -> int:
        """Slots of the patch buffer that a compiled step reads when `num_new` patches follow the rows' patches."""
        return attended_slots(self.patch_end_bound + num_new, self.global_transformer.capacity)

    def open_patch_starts(self) -> torch.Tensor:
        """First slot of each row's open patch (batch,): one past the last byte that ended a patch."""
        slots = torch.arange(self.ends_patch.shape[1], device=self.starts.device)
        held = (slots >= self.starts[:, None]) & (slots < self.byte_ends[:, None])
        last_end = torch.where(self.ends_patch & held, slots, -1).max(dim=1).values
        return torch.where(last_end >= 0, last_end + 1, self.starts)

    def _byte_level_buffers(self) -> list[KeyValueBuffer]:
        return [buffer for buffer in (self.patcher, self.encoder, self.decoder) if buffer is not None]

    def reserve_after_ends(self, extra: int) -> None:
        """Make room for `extra` slots after every row's end, reading the ends from the device only when the
        host-side bound says that room may be short."""
        if self.end_bound + extra > self.capacity:
            self.end_bound = int(self.byte_ends.max())
            self.reserve(self.end_bound + extra)

    def reserve(self, needed: int) -> None:
        """Make room for `needed` byte slots (and as many patches) per row."""
        for buffer in self._byte_level_buffers() + [self.global_transformer]:
            buffer.reserve(needed)
        capacity = self.token_ids.shape[1]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)

        def grow(tensor: torch.Tensor) -> torch.Tensor:
            grown = tensor.new_zeros((tensor.shape[0], new_capacity) + tensor.shape[2:])
            grown[:, :capacity] = tensor
            return grown

        self.token_ids = grow(self.token_ids)
        self.encoder_states = grow(self.encoder_states)
        self.ends_patch = grow(self.ends_patch)
        self.latent_keys_values = [(grow(keys), grow(values)) for keys, values in self.latent_keys_values]

    def start_rows(self, starts: torch.Tensor) -> None:
        """Empty every row, its bytes to start at slot `starts[r]` (batch,) after left padding."""
        for buffer in self._byte_level_buffers():
            buffer.start_rows(starts)
        # No byte, hence no patch.
        self.end_bound = self.patch_end_bound = 0
        self.may_be_empty = True
        self.decoder_may_lag = False

    def append_bytes(
        self, slots: torch.Tensor, token_ids: torch.Tensor, encoder_states: torch.Tensor, ends_patch: torch.Tensor
    ) -> None:
        """Record bytes that the patcher and encoder have just read at `slots` (batch, new), the row's next slots:
        their ids, encoder outputs (batch, new, encoder_hidden) and which of them close a patch (batch, new)."""
        rows = torch.arange(slots.shape[0], device=slots.device)[:, None]
        self.token_ids[rows, slots] = token_ids
        self.encoder_states[rows, slots] = encoder_states.to(self.encoder_states.dtype)
        self.ends_patch[rows, slots] = ends_patch
        self.patches_closed_last_call = ends_patch.sum(dim=1)
        for buffer in (self.patcher, self.encoder):
            if buffer is not None:
                buffer.advance(slots[:, -1] + 1)
        self.end_bound += slots.shape[1]
        # Until the decoder reads them.
        self.decoder_may_lag = True

    def append_draft_byte(self, slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Record a drafted byte (batch, 1) that only the encoder has read, at `slots` (batch, 1).

        Only its id is kept (the next drafted byte's hash n-grams read it): a draft is cropped away before it is
        verified, and the verifying call records the byte in full.
        """
        rows = torch.arange(slots.shape[0], device=slots.device)[:, None]
        self.token_ids[rows, slots] = token_ids
        self.encoder.advance(slots[:, -1] + 1)
        self.end_bound += 1
        self.decoder_may_lag = True

    def append_patches(
        self, latent_keys_values: list[tuple[torch.Tensor, torch.Tensor]], num_closed: torch.Tensor
    ) -> None:
        """Record the decoder's keys/values of patches that the global transformer has just read, after each row's
        closed patches: per cross-attention layer, (batch, new_patches, k, kv_heads, head_dim).

        Row r's first `num_closed[r]` (batch,) new patches are closed; a further one is the open patch's provisional
        latent, stored one slot past the closed patches and not counted among them.
        """
        num_patches = self.num_patches
        num_new = latent_keys_values[0][0].shape[1]
        rows = torch.arange(num_patches.shape[0], device=num_patches.device)[:, None]
        patch_slots = num_patches[:, None] + torch.arange(num_new, device=num_patches.device)
        for (key_buffer, value_buffer), (keys, values) in zip(
            self.latent_keys_values, latent_keys_values, strict=True
        ):
            key_buffer[rows, patch_slots] = keys.to(key_buffer.dtype)
            value_buffer[rows, patch_slots] = values.to(value_buffer.dtype)
        self.global_transformer.advance(num_patches + num_closed)
        self.patch_end_bound += num_new

    def mark_decoded(
        self,
        ends: torch.Tensor,
        newest_closes_patch: torch.Tensor,
        caught_up: bool = False,
        newest_may_close_patch: bool = True,
    ) -> None:
        """The decoder has read each row's bytes up to `ends` (batch,), exclusive, the newest one possibly not for
        good (see `newest_decoding_is_provisional`).

        Args:
            ends (`torch.Tensor` of shape `(batch,)`): one past the last byte decoded.
            newest_closes_patch (`torch.Tensor` of shape `(batch,)`): whether the byte before `ends` closes a patch.
            caught_up (`bool`): the caller knows `ends` are the other byte buffers' ends.
            newest_may_close_patch (`bool`): False when the caller knows that no row's newest byte closes a patch.
                With `caught_up`, the host then knows that the decoder does not lag (`decoder_may_lag`), which spares
                the next call a device read.
        """
        self.decoder.advance(ends - self.newest_decoding_is_provisional(newest_closes_patch).long())
        self.decoder_may_lag = not caught_up or (self.newest_byte_is_provisional and newest_may_close_patch)

    def newest_decoding_is_provisional(self, newest_closes_patch: torch.Tensor) -> torch.Tensor:
        """Per row (batch,), whether the newest byte's decoding may have read a latent that is not its final one, so
        that the next call must decode it again: the one rule behind the decoder's lag.

        With `max_patch_length`, stock BLT decodes a newest byte that closes its patch against the latent before its
        patch (`newest_byte_is_provisional`); once another byte follows, the byte reads its own patch.
        """
        if self.newest_byte_is_provisional:
            return newest_closes_patch
        return torch.zeros_like(newest_closes_patch)

    def crop(self, lengths: torch.Tensor | int, end_bound: int | None = None) -> None:
        """Roll every level back so that row r keeps its first `lengths[r]` bytes (padding excluded).

        Patches that ended in the removed bytes are forgotten; a patch cut in two becomes the open patch again.
        `end_bound`, when the caller knows one (the bound before appending bytes that it now crops away), replaces
        the host-side bound on the rows' ends, which a crop otherwise keeps as it was.
        """
        if isinstance(lengths, int):
            lengths = torch.full_like(self.starts, lengths)
        new_ends = torch.minimum(self.starts + lengths.to(self.starts), self.byte_ends)
        for buffer in self._byte_level_buffers():
            buffer.crop(new_ends)
        self.may_be_empty = True
        self.decoder_may_lag = True
        slots = torch.arange(self.ends_patch.shape[1], device=new_ends.device)
        kept = (slots >= self.starts[:, None]) & (slots < new_ends[:, None])
        self.global_transformer.crop((self.ends_patch & kept).sum(dim=1))
        newest_closes_patch = self.ends_patch.gather(1, (new_ends - 1).clamp(min=0)[:, None])[:, 0]
        pending = self.newest_decoding_is_provisional(newest_closes_patch)
        self.decoder.crop(new_ends - pending.long())
        if end_bound is not None:
            self.end_bound = min(self.end_bound, end_bound)

    def held_prefix_lengths(self, token_ids: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Per row, how many first bytes of `token_ids[r, starts[r]:ends[r]]` this cache holds: the length of the
        longest common prefix of those bytes and the row's cached ones (batch,).

        Args:
            token_ids (`torch.Tensor` of shape `(batch, n)`): byte ids, each row's bytes between its start and end.
            starts, ends (`torch.Tensor` of shape `(batch,)`).
        """
        comparable = torch.minimum(self.lengths(), ends - starts)
        offsets = torch.arange(max(int(comparable.max()), 0), device=token_ids.device)
        cached = self.token_ids.gather(1, (self.starts[:, None] + offsets).clamp(max=self.token_ids.shape[1] - 1))
        given = token_ids.gather(1, (starts[:, None] + offsets).clamp(max=token_ids.shape[1] - 1))
        return common_prefix_lengths(cached, given, comparable)

    def layout(self) -> tuple:
        """What a cache's model decides, batch and capacity aside: layers, heads and widths of every buffer. Two
        caches with different layouts belong to different models."""
        stacks = [self.patcher, self.encoder, self.decoder, self.global_transformer]
        stack_layouts = tuple(
            None if stack is None else (len(stack.keys), *stack.keys[0].shape[1::2]) for stack in stacks
        )
        latent_layout = tuple(keys.shape[2:] for keys, _ in self.latent_keys_values)
        return stack_layouts, latent_layout, self.encoder_states.shape[2], self.encoder_states.dtype


__all__ = ["BltDiffusionCache", "RightToLeftPadding", "common_prefix_lengths", "left_padding"]
