import ast
import json
import os
import sys
from pathlib import Path

# Set before `transformers` reads it at import time: these tests must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, TextIteratorStreamer, dynamic_module_utils  # noqa: E402

from blt_diffusion import tokenization_blt_diffusion  # noqa: E402
from blt_diffusion.tokenization_blt_diffusion import (  # noqa: E402
    BOE_ID,
    BOS_ID,
    BYTE_OFFSET,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    VOCAB_SIZE,
    BltDiffusionTokenizer,
)

REPLACEMENT_CHAR = "\ufffd"
STREAMED_TEXTS = [
    "héllo wörld, ça va? ☃",
    "日本語のテキスト and 中文",
    "emoji 😀👍🏽 and a flag 🇫🇷!",
    "Ωμέγα\nновая строка\n😀\n",
    "e\u0301 combining, then € and 𝔘",
]


@pytest.fixture(scope="module")
def tok() -> BltDiffusionTokenizer:
    return BltDiffusionTokenizer()


def byte_ids(text: str) -> list[int]:
    return [byte + BYTE_OFFSET for byte in text.encode("utf-8")]


def stream(tokenizer, prompt_ids: list[int], generated_ids: list[int], chunk_size: int, **decode_kwargs) -> list[str]:
    """Feeds ids to a `TextIteratorStreamer` the way `generate` does and returns the text chunks it yields."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, **decode_kwargs)
    streamer.put(torch.tensor([prompt_ids]))
    for start in range(0, len(generated_ids), chunk_size):
        streamer.put(torch.tensor(generated_ids[start : start + chunk_size]))
    streamer.end()
    return list(streamer)


def test_id_layout(tok):
    assert (BOE_ID, BOS_ID, EOS_ID, PAD_ID, BYTE_OFFSET, MASK_ID, VOCAB_SIZE) == (0, 1, 2, 3, 4, 260, 261)
    assert len(tok) == 261
    assert tok.vocab_size == 261
    assert (tok.boe_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        260,
    )
    assert (tok.boe_token, tok.bos_token, tok.eos_token, tok.pad_token, tok.mask_token) == (
        "<boe>",
        "<s>",
        "</s>",
        "<pad>",
        "<mask>",
    )
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3, 260]
    vocab = tok.get_vocab()
    assert len(vocab) == 261
    assert sorted(vocab.values()) == list(range(261))
    assert vocab["<mask>"] == 260
    assert tok.convert_ids_to_tokens([4, 259]) == ["\x00", "\xff"]


def test_encode_prepends_bos(tok):
    assert tok("Hello")["input_ids"] == [1, 76, 105, 112, 112, 115]
    assert tok("Hello")["attention_mask"] == [1] * 6
    assert tok(" ", add_special_tokens=False)["input_ids"] == [36]
    assert tok("")["input_ids"] == [BOS_ID]


@pytest.mark.parametrize("text", ["héllo ☃", "emoji 😀👍🏽", "日本語", "\x00\n\t", ""])
def test_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert ids == [BOS_ID] + byte_ids(text)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<s>" + text


def test_add_bos_and_eos_are_configurable():
    both = BltDiffusionTokenizer(add_eos_token=True)
    assert both("ab")["input_ids"] == [BOS_ID, 101, 102, EOS_ID]
    assert both("ab", return_special_tokens_mask=True)["special_tokens_mask"] == [1, 0, 0, 1]
    assert both("a", "b")["input_ids"] == [BOS_ID, 101, EOS_ID, BOS_ID, 102, EOS_ID]

    neither = BltDiffusionTokenizer(add_bos_token=False)
    assert neither("ab")["input_ids"] == [101, 102]
    assert neither("ab", return_special_tokens_mask=True)["special_tokens_mask"] == [0, 0]


def test_special_tokens_in_text_are_encoded_as_bytes(tok):
    text = "<s>hi</s><pad><mask><boe>"
    ids = tok(text)["input_ids"]
    assert ids == [BOS_ID] + byte_ids(text)
    assert tok.tokenize("<s>") == ["<", "s", ">"]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_in_text_can_be_parsed_on_request(tok):
    assert tok("<s>hi</s>", split_special_tokens=False)["input_ids"] == [BOS_ID, BOS_ID, 108, 109, EOS_ID]


def test_decode_special_tokens(tok):
    ids = [BOE_ID, BOS_ID, EOS_ID, PAD_ID, MASK_ID, *byte_ids("Hi")]
    assert tok.decode(ids) == "<boe><s></s><pad><mask>Hi"
    assert tok.decode(ids, skip_special_tokens=True) == "Hi"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff", REPLACEMENT_CHAR),
        (b"\xc3", REPLACEMENT_CHAR),
        (b"\xc3A", REPLACEMENT_CHAR + "A"),
        (b"a\xf0\x9f\x98", "a" + REPLACEMENT_CHAR),
        (b"\xa9", REPLACEMENT_CHAR),
    ],
)
def test_decode_invalid_utf8_is_replaced(tok, raw, expected):
    ids = [byte + BYTE_OFFSET for byte in raw]
    assert tok.decode(ids) == expected
    assert tok.decode(ids, skip_special_tokens=True) == expected


def test_decode_accepts_every_vocabulary_id(tok):
    ids = list(range(VOCAB_SIZE))
    for sequence in (ids, ids[::-1], ids * 2):
        for skip in (False, True):
            assert isinstance(tok.decode(sequence, skip_special_tokens=skip), str)
    assert tok.decode(ids, skip_special_tokens=True) == bytes(range(256)).decode("utf-8", errors="replace")


@pytest.mark.parametrize("bad_id", [-1, VOCAB_SIZE, 10**6])
@pytest.mark.parametrize("skip", [False, True])
def test_decode_out_of_vocabulary_raises(tok, bad_id, skip):
    with pytest.raises(ValueError, match=rf"{bad_id}\b.*0 to 260"):
        tok.decode([BOS_ID, 76, bad_id], skip_special_tokens=skip)


def test_decode_tensors_and_batches(tok):
    assert tok.decode(torch.tensor([BOS_ID, 76, 105])) == "<s>He"
    assert tok.decode(torch.tensor(76)) == "H"
    assert tok.decode(76) == "H"
    batch = torch.tensor([[PAD_ID, BOS_ID, 76], [BOS_ID, 76, 105]])
    assert tok.decode(batch, skip_special_tokens=True) == ["H", "He"]
    assert tok.batch_decode(batch) == ["<pad><s>H", "<s>He"]
    assert tok.batch_decode([[76], [105, 112]]) == ["H", "el"]


def test_batch_is_left_padded(tok):
    batch = tok(["Hi", "Hello"], padding=True, return_tensors="pt")
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[3, 3, 3, 1, 76, 109], [1, 76, 105, 112, 112, 115]]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["Hi", "Hello"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"add_bos_token": False, "add_eos_token": True, "padding_side": "right"}],
    ids=["defaults", "custom"],
)
def test_save_and_from_pretrained_round_trip(tmp_path, kwargs):
    original = BltDiffusionTokenizer(**kwargs)
    assert original.save_vocabulary(str(tmp_path)) == ()
    original.save_pretrained(tmp_path)
    # Once registered for `AutoTokenizer` (as the package does), the module itself is copied along as remote code.
    assert {path.name for path in tmp_path.iterdir()} - {"tokenization_blt_diffusion.py"} == {"tokenizer_config.json"}

    loaded = BltDiffusionTokenizer.from_pretrained(tmp_path)
    for attribute in ("add_bos_token", "add_eos_token", "padding_side", "split_special_tokens"):
        assert getattr(loaded, attribute) == getattr(original, attribute), attribute
    assert len(loaded) == VOCAB_SIZE
    assert loaded.all_special_ids == original.all_special_ids
    assert loaded.boe_token_id == BOE_ID
    text = ["<s>ok", "héllo ☃"]
    assert loaded(text, padding=True)["input_ids"] == original(text, padding=True)["input_ids"]


def test_attribute_changes_after_init_are_saved(tmp_path):
    original = BltDiffusionTokenizer()
    original.add_eos_token = True
    original.padding_side = "right"
    original.save_pretrained(tmp_path)
    loaded = BltDiffusionTokenizer.from_pretrained(tmp_path)
    assert loaded.add_eos_token is True
    assert loaded.padding_side == "right"


@pytest.mark.parametrize("chunk_size", [1, 3, 5])
@pytest.mark.parametrize("text", STREAMED_TEXTS)
def test_streaming_never_splits_characters(tok, text, chunk_size):
    generated = tok(text, add_special_tokens=False)["input_ids"]
    chunks = stream(tok, tok("prompt ü")["input_ids"], generated, chunk_size)
    assert "".join(chunks) == tok.decode(generated, skip_special_tokens=True) == text
    assert not any(REPLACEMENT_CHAR in chunk for chunk in chunks)
    # Text must arrive while generating, not only when the streamer is flushed at the end.
    assert sum(bool(chunk) for chunk in chunks[:-1]) > 1


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_streaming_skips_special_tokens(tok, chunk_size):
    generated = [*byte_ids("fin 😀"), EOS_ID]
    chunks = stream(tok, [BOS_ID, 80], generated, chunk_size, skip_special_tokens=True)
    assert "".join(chunks) == tok.decode(generated, skip_special_tokens=True) == "fin 😀"


def test_module_is_self_contained():
    # The file is shipped as remote code next to the weights, where `blt_diffusion` is not installed.
    tree = ast.parse(Path(tokenization_blt_diffusion.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports break remote code"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) <= {"torch", "transformers"}


def test_auto_tokenizer_resolves_to_package_class(tmp_path):
    # Importing `blt_diffusion` registers the class, so no remote code is needed while the package is installed.
    BltDiffusionTokenizer(add_eos_token=True).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is BltDiffusionTokenizer
    assert loaded("a")["input_ids"] == [BOS_ID, 101, EOS_ID]


def test_loads_as_remote_code(tmp_path, monkeypatch):
    # Isolate what dynamic module loading writes: the module cache folder and its entry in `sys.path`.
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(BltDiffusionTokenizer, "_auto_class", None)
    BltDiffusionTokenizer.register_for_auto_class("AutoTokenizer")

    model_dir = tmp_path / "model"
    BltDiffusionTokenizer(add_eos_token=True).save_pretrained(model_dir)
    assert (model_dir / "tokenization_blt_diffusion.py").is_file()
    auto_map = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["auto_map"]
    assert auto_map == {"AutoTokenizer": ["tokenization_blt_diffusion.BltDiffusionTokenizer", None]}

    # `AutoTokenizer` prefers the class registered by the package over remote code, so the class is loaded the way
    # `AutoTokenizer` does in a process without the package.
    remote_class = dynamic_module_utils.get_class_from_dynamic_module(auto_map["AutoTokenizer"][0], model_dir)
    assert remote_class.__name__ == "BltDiffusionTokenizer"
    assert remote_class is not BltDiffusionTokenizer
    assert remote_class.__module__.startswith("transformers_modules.")
    loaded = remote_class.from_pretrained(model_dir)
    assert loaded("hé")["input_ids"] == [BOS_ID, 108, 199, 173, EOS_ID]
    assert loaded.decode([MASK_ID, 0xFF + BYTE_OFFSET]) == "<mask>" + REPLACEMENT_CHAR


def test_chat_template_keeps_template_special_tokens_only():
    # The recipe given in the class docstring.
    tokenizer = BltDiffusionTokenizer(split_special_tokens=False)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    messages = [{"role": "user", "content": "hi </s>"}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, sanitize_control_tokens=True)["input_ids"]
    assert ids == [BOS_ID, *byte_ids("hi </s>"), EOS_ID]
