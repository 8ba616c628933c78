"""The shipped tiny tokenizer: loads with transformers offline, Qwen special ids and template."""

import json

import pytest

from perception_rl.processing.tiny_tokenizer import (
    SPECIAL_TOKEN_IDS,
    TINY_TOKEN_IDS,
    VOCAB_SIZE,
    build_tiny_tokenizer,
    tiny_tokenizer_path,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_path(), local_files_only=True)


def test_committed_files_are_small_and_complete():
    files = {f.name: f.stat().st_size for f in tiny_tokenizer_path().iterdir()}
    assert set(files) == {"tokenizer.json", "tokenizer_config.json"}
    assert sum(files.values()) < 200_000


def test_special_tokens_sit_at_fixed_ids(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token) == (1, 0, None)
    assert TINY_TOKEN_IDS["image_token_id"] == 10 and TINY_TOKEN_IDS["vision_end_token_id"] == 13


@pytest.mark.parametrize(
    "text",
    [
        '```json\n[{"bbox_2d": [12, 34, 56, 78], "label": "red circle"}]\n```',
        "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(123,456),(789,10)<|box_end|>",
        "<think>Three stars.</think> <answer>3</answer>",
        "Unseen wörds: 日本語 ✓ café",
    ],
)
def test_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert max(ids) < VOCAB_SIZE
    assert tokenizer.decode(ids) == text


def test_splits_digits_like_qwen2(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer.encode("[1024, 77]", add_special_tokens=False)
    )
    assert tokens[:5] == ["[", "1", "0", "2", "4"]


def test_skip_special_tokens_drops_every_qwen_special(tokenizer):
    ids = tokenizer.encode(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"
    )
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template_is_qwen2_vl(tokenizer):
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "2"},
    ]
    assert tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    ) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_builder_reproduces_the_committed_files(tmp_path):
    build_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        built = json.loads((tmp_path / name).read_text())
        committed = json.loads((tiny_tokenizer_path() / name).read_text())
        assert built == committed, (
            f"{name} is stale: run python -m perception_rl.processing.tiny_tokenizer"
        )
