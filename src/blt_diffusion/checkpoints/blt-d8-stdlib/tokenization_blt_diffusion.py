# Copyright 2025 The BLT-Diffusion Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Byte-level tokenizer for BLT-Diffusion models.

This module is shipped as Hugging Face remote code: it is copied next to the model weights and loaded with
`trust_remote_code=True` in processes where the `blt_diffusion` package is not installed, so it must only depend on
the standard library and `transformers`.
"""

import json
import os

from transformers import AddedToken, PreTrainedTokenizer
from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE

# Id layout shared with the BLT models in `transformers`: four special ids, then the 256 byte values.
BOE_ID = 0
BOS_ID = 1
EOS_ID = 2
PAD_ID = 3
BYTE_OFFSET = 4
NUM_BYTES = 256
# Diffusion models corrupt their input by replacing bytes with this id; it sits right after the byte range so that
# checkpoints of plain autoregressive BLT models (vocabulary of 260) keep their ids.
MASK_ID = BYTE_OFFSET + NUM_BYTES
VOCAB_SIZE = MASK_ID + 1

BOE_TOKEN = "<boe>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"


def _as_special_token(token: str | AddedToken) -> AddedToken:
    if isinstance(token, AddedToken):
        return token
    # No stripping or normalization: a byte tokenizer must reproduce the text around special tokens byte for byte.
    return AddedToken(token, lstrip=False, rstrip=False, normalized=False, special=True)


class BltDiffusionTokenizer(PreTrainedTokenizer):
    """
    Construct a BLT-Diffusion tokenizer. Text is encoded as its raw UTF-8 bytes, so the tokenizer needs no vocabulary
    file.

    The ids follow the BLT convention of `transformers`: `0` is `<boe>` (begin of entropy patch), `1` is `<s>`, `2` is
    `</s>`, `3` is `<pad>`, the byte `b` is `b + 4` and `260` is `<mask>`, the token that diffusion models predict.

    Special tokens typed in the text (for instance a literal `"<s>"`) are encoded as their bytes, so user text cannot
    inject control tokens. Pass `split_special_tokens=False` to the call (or to `__init__`) to parse them instead. This
    also applies to the special tokens a chat template writes: to keep them while still encoding those of the messages
    as text, create the tokenizer with `split_special_tokens=False` and call
    `apply_chat_template(..., sanitize_control_tokens=True)`.

    Decoding never fails on ids of the vocabulary: bytes that do not form valid UTF-8 (such as a character cut in the
    middle) are rendered as U+FFFD.

    This tokenizer inherits from [`PreTrainedTokenizer`] which contains most of the main methods. Users should refer to
    this superclass for more information regarding those methods.

    Args:
        bos_token (`str`, *optional*, defaults to `"<s>"`):
            The beginning of sequence token, id `1`.
        eos_token (`str`, *optional*, defaults to `"</s>"`):
            The end of sequence token, id `2`.
        pad_token (`str`, *optional*, defaults to `"<pad>"`):
            The token used for padding, id `3`.
        mask_token (`str`, *optional*, defaults to `"<mask>"`):
            The token that marks the positions a diffusion model has to fill in, id `260`.
        boe_token (`str`, *optional*, defaults to `"<boe>"`):
            The begin of entropy patch token, id `0`.
        add_bos_token (`bool`, *optional*, defaults to `True`):
            Whether to prepend the beginning of sequence token to every encoded sequence.
        add_eos_token (`bool`, *optional*, defaults to `False`):
            Whether to append the end of sequence token to every encoded sequence.
        padding_side (`str`, *optional*, defaults to `"left"`):
            The side on which batches are padded. Left padding keeps the last prompt byte of every row aligned, which
            generation relies on.
        split_special_tokens (`bool`, *optional*, defaults to `True`):
            Whether special token strings found in the text are encoded as plain bytes (`True`) or as their special id
            (`False`).
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        bos_token: str | AddedToken = BOS_TOKEN,
        eos_token: str | AddedToken = EOS_TOKEN,
        pad_token: str | AddedToken = PAD_TOKEN,
        mask_token: str | AddedToken = MASK_TOKEN,
        boe_token: str | AddedToken = BOE_TOKEN,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        padding_side: str = "left",
        split_special_tokens: bool = True,
        **kwargs,
    ) -> None:
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        # The special ids are fixed by the model's embedding table, so they are registered before the base class
        # would append them at the end of the vocabulary.
        self._added_tokens_decoder = {
            BOE_ID: _as_special_token(boe_token),
            BOS_ID: _as_special_token(bos_token),
            EOS_ID: _as_special_token(eos_token),
            PAD_ID: _as_special_token(pad_token),
            MASK_ID: _as_special_token(mask_token),
        }
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            mask_token=mask_token,
            boe_token=boe_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            padding_side=padding_side,
            split_special_tokens=split_special_tokens,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        # A byte is represented by the character with the same code point, as in ByT5, so that tokens stay strings.
        return [chr(byte) for byte in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int | None:
        if len(token) == 1 and ord(token) < NUM_BYTES:
            return ord(token) + BYTE_OFFSET
        # There is no unknown token to fall back to.
        return None

    def _convert_id_to_token(self, index: int) -> str:
        if BYTE_OFFSET <= index < BYTE_OFFSET + NUM_BYTES:
            return chr(index - BYTE_OFFSET)
        raise ValueError(
            f"Token id {index} is outside the vocabulary of {self.__class__.__name__}: valid ids are 0 to "
            f"{len(self) - 1} (inclusive)."
        )

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """
        Converts a sequence of tokens into a string. Byte tokens are joined and decoded as UTF-8, with invalid
        sequences replaced by U+FFFD; other tokens (special or added) are inserted as their text.

        Args:
            tokens (`list[str]`):
                The tokens to join.

        Returns:
            `str`: The decoded text.
        """
        buffer = bytearray()
        for token in tokens:
            if len(token) == 1 and ord(token) < NUM_BYTES:
                buffer.append(ord(token))
            else:
                buffer.extend(token.encode("utf-8"))
        # "replace" rather than ByT5's "ignore": bytes that do not form a character (a generation stopped in the middle
        # of one, or invalid model output) stay visible instead of vanishing. `TextStreamer` holds back text that ends
        # in this symbol, so a character split across generation steps is still streamed whole.
        return buffer.decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """
        Build model inputs from a sequence or a pair of sequences by adding `<s>` and `</s>` according to
        `add_bos_token` and `add_eos_token`:

        - single sequence: `<s> X </s>`
        - pair of sequences: `<s> A </s> <s> B </s>`

        Args:
            token_ids_0 (`list[int]`):
                List of IDs to which the special tokens will be added.
            token_ids_1 (`list[int]`, *optional*):
                Optional second list of IDs for sequence pairs.

        Returns:
            `list[int]`: List of [input IDs](../glossary#input-ids) with the appropriate special tokens.
        """
        bos = [BOS_ID] if self.add_bos_token else []
        eos = [EOS_ID] if self.add_eos_token else []
        output = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            output += bos + token_ids_1 + eos
        return output

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """
        Retrieve a mask of the special tokens that [`~BltDiffusionTokenizer.build_inputs_with_special_tokens`] adds.

        Args:
            token_ids_0 (`list[int]`):
                List of IDs.
            token_ids_1 (`list[int]`, *optional*):
                Optional second list of IDs for sequence pairs.
            already_has_special_tokens (`bool`, *optional*, defaults to `False`):
                Whether or not the token list is already formatted with special tokens for the model.

        Returns:
            `list[int]`: A list of integers in the range [0, 1]: 1 for a special token, 0 for a sequence token.
        """
        if already_has_special_tokens:
            return super().get_special_tokens_mask(
                token_ids_0=token_ids_0, token_ids_1=token_ids_1, already_has_special_tokens=True
            )
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def _save_pretrained(
        self,
        save_directory: str | os.PathLike,
        file_names: tuple[str, ...],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
    ) -> tuple[str, ...]:
        # `save_pretrained` drops `add_bos_token`/`add_eos_token` from the config because tokenizers with a
        # `tokenizer.json` store them in its post-processor. This tokenizer has no such file, so they are written back
        # here (before a possible upload to the Hub, which happens after this hook).
        for file_name in file_names:
            if os.path.basename(file_name).endswith(TOKENIZER_CONFIG_FILE):
                with open(file_name, encoding="utf-8") as f:
                    tokenizer_config = json.load(f)
                tokenizer_config["add_bos_token"] = self.add_bos_token
                tokenizer_config["add_eos_token"] = self.add_eos_token
                with open(file_name, "w", encoding="utf-8") as f:
                    f.write(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return super()._save_pretrained(
            save_directory=save_directory,
            file_names=file_names,
            legacy_format=legacy_format,
            filename_prefix=filename_prefix,
        )

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        # The vocabulary is the fixed byte range, there is nothing to write.
        return ()


__all__ = [
    "BOE_ID",
    "BOE_TOKEN",
    "BOS_ID",
    "BOS_TOKEN",
    "BYTE_OFFSET",
    "EOS_ID",
    "EOS_TOKEN",
    "MASK_ID",
    "MASK_TOKEN",
    "NUM_BYTES",
    "PAD_ID",
    "PAD_TOKEN",
    "VOCAB_SIZE",
    "BltDiffusionTokenizer",
]
