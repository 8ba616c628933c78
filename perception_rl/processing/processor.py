"""`Processor`: chat conversations + PIL images -> the numpy batch a Qwen-VL model consumes.

Equivalent to HF's `Qwen2VLProcessor` (with the PIL image processor) followed by the model's
`get_rope_index`: the same input_ids, attention_mask, pixel_values and image_grid_thw, plus the
M-RoPE `position_ids` and `rope_deltas` computed on the host so that nothing shape-dependent is
left for jit.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from perception_rl.processing import chat
from perception_rl.processing.image import PREPROCESSOR_CONFIG, ImageProcessor
from perception_rl.processing.positions import MODEL_TYPES, get_rope_index

MODEL_CONFIG = "config.json"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
PADDING_SIDES = ("left", "right")


class Processor:
    """Tokenizer, chat template and image processor of one Qwen2-VL / Qwen2.5-VL checkpoint.

    Attributes:
        tokenizer: The HF tokenizer (tokenizers backend).
        image_processor: Resize / normalise / patchify settings.
        chat_template: Jinja chat template.
        image_token_id: Id of `<|image_pad|>`.
        video_token_id: Id of `<|video_pad|>`.
        model_type: "qwen2_vl" or "qwen2_5_vl" (only video positions differ).
        tokens_per_second: Qwen2.5-VL video time scale.
    """

    def __init__(
        self,
        tokenizer,
        image_processor: ImageProcessor,
        chat_template: str,
        *,
        image_token_id: int,
        video_token_id: int,
        model_type: str = "qwen2_vl",
        tokens_per_second: float = 2,
    ):
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.model_type = model_type
        self.tokens_per_second = tokens_per_second

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **image_overrides) -> Processor:
        """Loads everything from an HF checkpoint directory, offline.

        Reads the tokenizer and chat template, `preprocessor_config.json` (HF defaults if absent)
        and, from `config.json`, the model type, vision token ids and merge size. Without a
        `config.json` (e.g. a bare tokenizer directory) the ids come from the tokenizer and the
        model type is "qwen2_vl".

        Args:
            path: Checkpoint directory.
            **image_overrides: `ImageProcessor` fields to override, e.g. `max_pixels=401408`.

        Raises:
            ValueError: If config.json, preprocessor_config.json and the tokenizer disagree.
        """
        path = pathlib.Path(path)
        tokenizer = chat.load_tokenizer(path)
        image_processor = ImageProcessor.from_pretrained(path, **image_overrides)
        token_ids = {
            "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "video_token_id": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        }
        for token, token_id in zip((IMAGE_TOKEN, VIDEO_TOKEN), token_ids.values()):
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(
                    f"{path}: the tokenizer has no {token} token (not a Qwen-VL tokenizer?)"
                )
        model_type, tokens_per_second = "qwen2_vl", 2
        config_file = path / MODEL_CONFIG
        if config_file.exists():
            config = json.loads(config_file.read_text())
            model_type = config.get("model_type")
            if model_type not in MODEL_TYPES:
                raise ValueError(
                    f"{config_file}: model_type {model_type!r} is not one of {MODEL_TYPES}"
                )
            _check_token_ids(config, token_ids, config_file)
            _check_vision_sizes(config.get("vision_config", {}), image_processor, config_file)
            tokens_per_second = config.get("vision_config", {}).get("tokens_per_second", 2)
        return cls(
            tokenizer,
            image_processor,
            chat.load_chat_template(path, tokenizer),
            model_type=model_type,
            tokens_per_second=tokens_per_second,
            **token_ids,
        )

    def with_family(self, model_type: str, tokens_per_second: float) -> Processor:
        """This processor for a model of `model_type` (a bare tokenizer directory, with no
        config.json, loads as "qwen2_vl"); itself when it already matches."""
        if model_type == self.model_type and tokens_per_second == self.tokens_per_second:
            return self
        return Processor(
            self.tokenizer,
            self.image_processor,
            self.chat_template,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            model_type=model_type,
            tokens_per_second=tokens_per_second,
        )

    def apply_chat_template(
        self, conversation: chat.Conversation, add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of one conversation (a single `<|image_pad|>` per image)."""
        return chat.render_chat(
            self.tokenizer, self.chat_template, conversation, add_generation_prompt
        )

    def __call__(
        self,
        conversations: Sequence[chat.Conversation],
        images: Sequence[Sequence[Image.Image] | None] | None = None,
        *,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
    ) -> dict[str, np.ndarray]:
        """Builds a padded model batch.

        Args:
            conversations: One HF-style message list per sample; content is a str or a list of
                `{"type": "image"}` / `{"type": "text", "text": ...}` parts.
            images: One list of PIL images per conversation, in the order of its image parts
                (None or an empty list for a text-only sample; None for a text-only batch).
            add_generation_prompt: Append `<|im_start|>assistant\\n`.
            padding_side: "left" (for generation) or "right".

        Returns:
            `input_ids` int32 [B, L], `attention_mask` int32 [B, L], `position_ids` int32
            [3, B, L], `rope_deltas` int32 [B] and, when the batch has images, `pixel_values`
            float32 [sum(t*h*w), 3*Tp*P*P] (images concatenated in row-major order) and
            `image_grid_thw` int32 [n_images, 3].

        Raises:
            ValueError: On malformed conversations, image counts that do not match the image
                parts, video parts, or an unknown padding side.
        """
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if isinstance(conversations, (str, dict)) or not conversations:
            raise ValueError(
                "conversations must be a non-empty list of conversations (message lists)"
            )
        for index, conversation in enumerate(conversations):
            chat.validate_conversation(conversation, index)
        images = _per_conversation_images(images, len(conversations))

        texts = [self.apply_chat_template(c, add_generation_prompt) for c in conversations]
        rows = [
            np.asarray(r, np.int64)
            for r in self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]
        self._check_vision_parts(rows, images)
        pixel_values, image_grid_thw = self.image_processor(
            [img for imgs in images for img in imgs]
        )
        tokens_per_image = image_grid_thw.prod(axis=-1) // self.image_processor.merge_size**2
        per_row = np.split(tokens_per_image, np.cumsum([len(imgs) for imgs in images])[:-1])
        rows = [chat.expand_image_tokens(r, self.image_token_id, n) for r, n in zip(rows, per_row)]
        input_ids, attention_mask = pad_rows(rows, self.pad_token_id, padding_side)

        position_ids, rope_deltas = get_rope_index(
            input_ids,
            attention_mask,
            image_grid_thw,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            spatial_merge_size=self.image_processor.merge_size,
            tokens_per_second=self.tokens_per_second,
            model_type=self.model_type,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "rope_deltas": rope_deltas,
        }
        if len(image_grid_thw):
            batch["pixel_values"] = pixel_values
            batch["image_grid_thw"] = image_grid_thw
        return batch

    @property
    def pad_token_id(self) -> int:
        """Id written into padded slots (the tokenizer's pad, else its eos; they are masked)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def _check_vision_parts(self, rows: list[np.ndarray], images: list[list[Image.Image]]) -> None:
        for index, (row, row_images) in enumerate(zip(rows, images)):
            if (row == self.video_token_id).any():
                raise ValueError(f"conversation {index} has a video part; videos are not supported")
            n_parts = int((row == self.image_token_id).sum())
            if n_parts != len(row_images):
                raise ValueError(
                    f"conversation {index} has {n_parts} image parts but {len(row_images)} images were given"
                )


def pad_rows(
    rows: Sequence[np.ndarray], pad_id: int, padding_side: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks 1-D id rows into `(ids int32 [B, L], mask int32 [B, L])`, padding on one side."""
    lengths = np.array([len(r) for r in rows])
    column = np.arange(lengths.max(initial=0))
    if padding_side == "left":
        mask = column >= len(column) - lengths[:, None]
    else:
        mask = column < lengths[:, None]
    ids = np.full(mask.shape, pad_id, np.int32)
    ids[mask] = np.concatenate(rows)  # row-major fill of each row's valid slots
    return ids, mask.astype(np.int32)


def _per_conversation_images(images, n_conversations: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(n_conversations)]
    if len(images) != n_conversations:
        raise ValueError(
            f"{n_conversations} conversations but {len(images)} image lists (need one per conversation)"
        )
    out = []
    for index, row in enumerate(images):
        row = [] if row is None else row
        if isinstance(row, Image.Image):
            raise ValueError(f"images[{index}] must be a list of PIL images, got a single image")
        out.append(list(row))
    return out


def _check_token_ids(config: dict, token_ids: dict[str, int], source: pathlib.Path) -> None:
    """The tokenizer's `<|image_pad|>` / `<|video_pad|>` ids must be the model's."""
    for name, tokenizer_id in token_ids.items():
        if name in config and config[name] != tokenizer_id:
            raise ValueError(
                f"{source}: {name}={config[name]} but the tokenizer gives id {tokenizer_id}"
            )


def _check_vision_sizes(
    vision: dict, image_processor: ImageProcessor, source: pathlib.Path
) -> None:
    """Patch and merge sizes in config.json must match preprocessor_config.json."""
    pairs = {
        "spatial_merge_size": image_processor.merge_size,
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
    }
    for name, processor_value in pairs.items():
        if name in vision and vision[name] != processor_value:
            raise ValueError(
                f"{source}: vision_config.{name}={vision[name]} but the image processor "
                f"({PREPROCESSOR_CONFIG} or overrides) uses {processor_value}"
            )
