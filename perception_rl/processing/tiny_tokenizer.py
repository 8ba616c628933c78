"""A tiny Qwen2-style byte-level BPE tokenizer that ships with the package.

Tests and smoke configs need a real HF tokenizer directory (tokenizer.json, tokenizer_config.json
with the Qwen2-VL chat template) without network access. `build_tiny_tokenizer` trains one
deterministically on a built-in corpus of English, digits, punctuation and the box syntax of both
policy families; the result is committed under `perception_rl/assets/tiny_tokenizer/` and
`tiny_tokenizer_path()` points there.

The pipeline is Qwen2's (NFC, the Qwen2 split regex that isolates single digits, byte-level BPE),
so the tokenizer splits numbers and JSON like the real one, only with a 1000-entry vocabulary
that fits the tiny test models. The 14 Qwen special tokens sit at fixed low ids
(`SPECIAL_TOKEN_IDS`), ordered so the §6.1 tiny model configs of the port notes
(image 10, video 11, vision start 12, vision end 13, bos 0, eos 1) match it directly.

Rebuild the committed files with `python -m perception_rl.processing.tiny_tokenizer`.
"""

from __future__ import annotations

import json
import os
import pathlib
import random

VOCAB_SIZE = 1000

# Fixed ids of the Qwen special tokens (the real Qwen2 tokenizer has them at 151643..151656).
SPECIAL_TOKEN_IDS: dict[str, int] = {
    "<|endoftext|>": 0,
    "<|im_end|>": 1,
    "<|im_start|>": 2,
    "<|object_ref_start|>": 3,
    "<|object_ref_end|>": 4,
    "<|box_start|>": 5,
    "<|box_end|>": 6,
    "<|quad_start|>": 7,
    "<|quad_end|>": 8,
    "<|vision_pad|>": 9,
    "<|image_pad|>": 10,
    "<|video_pad|>": 11,
    "<|vision_start|>": 12,
    "<|vision_end|>": 13,
}

# The ids a model config built for this tokenizer uses (names as in HF Qwen2-VL configs).
TINY_TOKEN_IDS: dict[str, int] = {
    "image_token_id": SPECIAL_TOKEN_IDS["<|image_pad|>"],
    "video_token_id": SPECIAL_TOKEN_IDS["<|video_pad|>"],
    "vision_start_token_id": SPECIAL_TOKEN_IDS["<|vision_start|>"],
    "vision_end_token_id": SPECIAL_TOKEN_IDS["<|vision_end|>"],
    "bos_token_id": SPECIAL_TOKEN_IDS["<|endoftext|>"],
    "eos_token_id": SPECIAL_TOKEN_IDS["<|im_end|>"],
    "pad_token_id": SPECIAL_TOKEN_IDS["<|endoftext|>"],
}

# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, spaces.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The chat template of the Qwen2-VL(-Instruct) checkpoints, verbatim.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = """
a an the of in on at to from with by for and or but not no yes is are was were be been this that
these those it its there here what which who how many much where when why all any each every some
one two three four five six seven eight nine ten first second third last left right top bottom
middle center above below near far next behind front inside outside between
you your we our they their he she his her i me my us them
image picture photo region object objects thing things item items person people man woman child
box boxes bounding coordinate coordinates point points position location area size width height
count counting number total find detect detection locate grounding output answer question think
look read text word words letter letters line lines write please describe show give return format
json list label labels class category score value pixel pixels absolute relative
red green blue yellow orange purple pink brown black white gray grey dark light bright small large
big little tiny huge long short tall round square circle circles triangle triangles rectangle
rectangles star stars shape shapes dot dots
airplane apple backpack banana baseball bat bear bed bench bicycle bird boat book bottle bowl
broccoli bus cake car carrot cat cell phone chair clock couch cow cup dining table dog donut
elephant fire hydrant fork frisbee giraffe glove hair drier handbag horse hot keyboard kite knife
laptop microwave motorcycle mouse oven parking meter pizza potted plant refrigerator remote
sandwich scissors sheep sink skateboard skis snowboard spoon sports ball stop sign suitcase
surfboard teddy tennis racket tie toaster toilet toothbrush traffic train truck tv umbrella vase
wine glass zebra
helpful assistant system user model
""".split()

_PUNCTUATION = list(".,:;!?'\"()[]{}<>-_/\\+=*&%$#@|~`^")


def _corpus(seed: int = 0) -> list[str]:
    """Deterministic training text: sentences, numbers and the box formats of both families."""
    rng = random.Random(seed)
    lines = list(_WORDS)
    lines += [w.capitalize() for w in _WORDS]
    for _ in range(1500):
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","]))
    for _ in range(400):
        coords = [rng.randint(0, 1000) for _ in range(4)]
        label = " ".join(rng.choices(_WORDS, k=rng.randint(1, 2)))
        lines.append(json.dumps({"bbox_2d": coords, "label": label}))
        lines.append("({},{}),({},{})".format(*coords))
        lines.append(f"[{', '.join(map(str, coords))}]")
        lines.append(f"There are {coords[0]} {label}s.")
    for _ in range(200):
        a, b = rng.choices(_WORDS, k=2)
        coords = ", ".join(str(rng.randint(0, 2000)) for _ in range(4))
        lines.append(f"<think>{a} {b}</think> <answer>{rng.randint(0, 99)}</answer>")
        lines.append(f'```json\n[\n\t{{"bbox_2d": [{coords}], "label": "{b}"}}\n]\n```')
    lines += ["".join(rng.choices(_PUNCTUATION, k=rng.randint(1, 4))) for _ in range(300)]
    lines += [" ".join(str(rng.randint(0, 10**6)) for _ in range(8)) for _ in range(100)]
    return lines


def build_tiny_tokenizer(out_dir: str | os.PathLike) -> pathlib.Path:
    """Trains the tiny tokenizer and writes an HF tokenizer directory.

    Args:
        out_dir: Directory to write `tokenizer.json` and `tokenizer_config.json` into (created).

    Returns:
        The output directory.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = sorted(SPECIAL_TOKEN_IDS, key=SPECIAL_TOKEN_IDS.get)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,  # the trainer gives them ids 0..13 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(
                f"special token {token} got id {tokenizer.token_to_id(token)}, want {token_id}"
            )

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
    return out


def _tokenizer_config() -> dict:
    """tokenizer_config.json in the shape of the Qwen2-VL checkpoints'."""
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in SPECIAL_TOKEN_IDS.items()
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        # As in the checkpoints: every Qwen special but <|endoftext|> (already pad), so that
        # decode(skip_special_tokens=True) drops them all.
        "additional_special_tokens": [t for t in SPECIAL_TOKEN_IDS if t != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def tiny_tokenizer_path() -> pathlib.Path:
    """The committed tiny tokenizer directory (loadable with `AutoTokenizer.from_pretrained`)."""
    return pathlib.Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"


if __name__ == "__main__":
    print(build_tiny_tokenizer(tiny_tokenizer_path()))
