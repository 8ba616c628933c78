"""Tokenizer, chat template and image-pad expansion for Qwen-VL prompts (port notes §3.3).

The tokenizer and template come from the checkpoint directory, loaded offline through
transformers' tokenizers backend (no torch, no remote code). The template is rendered with a
single `<|image_pad|>` per image part; `expand_image_tokens` then repeats each one as many times
as that image has LLM tokens. Doing this on ids instead of on the text, as HF does, gives the
same ids (special tokens are matched before BPE) without tokenizing thousands of pad strings.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"

Message = Mapping[str, object]
Conversation = Sequence[Message]


def load_tokenizer(path: str | os.PathLike):
    """Loads the checkpoint's tokenizer with `AutoTokenizer`, offline and without remote code."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def load_chat_template(path: str | os.PathLike, tokenizer) -> str:
    """The chat template of a checkpoint directory.

    Looks, in HF's order, at `chat_template.jinja`, `chat_template.json` (the processor's), then
    the tokenizer's own template (`tokenizer_config.json`).

    Raises:
        FileNotFoundError: When none of them has a template.
    """
    path = pathlib.Path(path)
    if (path / CHAT_TEMPLATE_JINJA).exists():
        return (path / CHAT_TEMPLATE_JINJA).read_text()
    if (path / CHAT_TEMPLATE_JSON).exists():
        return json.loads((path / CHAT_TEMPLATE_JSON).read_text())["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: HF uses "default"
        template = template.get("default")
    if not template:
        raise FileNotFoundError(
            f"{path}: no chat template ({CHAT_TEMPLATE_JINJA}, {CHAT_TEMPLATE_JSON} or "
            "'chat_template' in tokenizer_config.json)"
        )
    return template


def validate_conversation(conversation: Conversation, index: int) -> None:
    """Checks the HF chat format: messages with a role and str or list-of-parts content.

    Raises:
        ValueError: Naming the conversation, message and what is wrong.
    """
    if isinstance(conversation, (str, Mapping)) or not isinstance(conversation, Sequence):
        raise ValueError(
            f"conversation {index} must be a list of messages, got {type(conversation).__name__} "
            "(pass a list of conversations, each a list of {'role', 'content'} dicts)"
        )
    if not conversation:
        raise ValueError(f"conversation {index} has no messages")
    for m, message in enumerate(conversation):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"conversation {index}, message {m}: need a dict with 'role' and 'content'"
            )
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, Sequence) or not all(
            isinstance(part, Mapping) and "type" in part for part in content
        ):
            raise ValueError(
                f"conversation {index}, message {m}: content must be a str or a list of parts "
                "like {'type': 'image'} / {'type': 'text', 'text': ...}"
            )


def render_chat(
    tokenizer, template: str, conversation: Conversation, add_generation_prompt: bool
) -> str:
    """Renders one conversation with the chat template (one `<|image_pad|>` per image part)."""
    return tokenizer.apply_chat_template(
        list(conversation),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def expand_image_tokens(
    ids: np.ndarray, image_token_id: int, tokens_per_image: Sequence[int]
) -> np.ndarray:
    """Repeats the n-th image token `tokens_per_image[n]` times.

    Args:
        ids: 1-D token ids holding one image token per image.
        image_token_id: Id of `<|image_pad|>`.
        tokens_per_image: LLM tokens of each image, in order (t*h*w / merge_size**2).

    Raises:
        ValueError: When the number of image tokens and images differ.
    """
    is_image = ids == image_token_id
    if is_image.sum() != len(tokens_per_image):
        raise ValueError(
            f"{is_image.sum()} image tokens in the text but {len(tokens_per_image)} images"
        )
    repeats = np.ones(len(ids), np.int64)
    repeats[is_image] = tokens_per_image
    return np.repeat(ids, repeats)
