"""Processor parity with HF's Qwen2VLProcessor (PIL image processor) + the model's get_rope_index."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from perception_rl.processing import TINY_TOKEN_IDS, Processor, tiny_tokenizer_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE_SETTINGS = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 48)
TEXT = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
)  # fmt: skip
VISION = {
    "qwen2_vl": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=4),
    "qwen2_5_vl": dict(depth=1, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=4,
                       window_size=56, fullatt_block_indexes=[0], tokens_per_second=2),
}  # fmt: skip
TOKEN_IDS = {
    k: v
    for k, v in TINY_TOKEN_IDS.items()
    if k not in ("bos_token_id", "eos_token_id", "pad_token_id")
}


class HFProcessor(transformers.Qwen2VLProcessor):
    """HF's processor without a video processor (that one needs torchvision, not installed)."""

    def check_argument_for_proper_class(self, name, argument):
        return None if argument is None else super().check_argument_for_proper_class(name, argument)


def hf_config(model_type):
    return transformers.AutoConfig.for_model(
        model_type, text_config=TEXT, vision_config=VISION[model_type], **TOKEN_IDS
    )


@pytest.fixture(scope="module", params=tuple(VISION))
def checkpoint(request, tmp_path_factory):
    """A checkpoint directory as HF writes it: config, preprocessor config, tokenizer files."""
    path = tmp_path_factory.mktemp(request.param)
    shutil.copytree(tiny_tokenizer_path(), path, dirs_exist_ok=True)
    hf_config(request.param).save_pretrained(path)
    Qwen2VLImageProcessorPil(**IMAGE_SETTINGS).save_pretrained(path)
    return request.param, path


def image(seed, height, width):
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    )


CONVERSATIONS = [
    [{"role": "user", "content": "How many dogs are there?"}],
    [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Find the red circle."}],
        }
    ],
    [
        {"role": "system", "content": "Answer in JSON."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "image"},
            ],
        },  # fmt: skip
    ],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Output the box."}]}],
]
IMAGES = [[], [image(0, 28, 28)], [image(1, 13, 200), image(2, 700, 400)], [image(3, 56, 84)]]


def hf_reference(model_type, path, conversations, images, padding_side):
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = HFProcessor(
        image_processor=Qwen2VLImageProcessorPil(**IMAGE_SETTINGS), tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )  # fmt: skip
    texts = [
        hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    flat_images = [img for row in images for img in row] or None
    out = hf(
        text=texts, images=flat_images, padding=True, padding_side=padding_side, return_tensors="pt"
    )
    model = transformers.AutoModel.from_config(hf_config(model_type)).eval()
    positions, deltas = model.get_rope_index(
        out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
        image_grid_thw=out.get("image_grid_thw"), attention_mask=out["attention_mask"],
    )  # fmt: skip
    reference = {k: v.numpy() for k, v in out.items() if k != "mm_token_type_ids"}
    return reference | {
        "position_ids": positions.numpy(),
        "rope_deltas": deltas.numpy().reshape(-1),
    }


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_matches_hf(checkpoint, padding_side):
    model_type, path = checkpoint
    processor = Processor.from_pretrained(path)
    assert processor.model_type == model_type
    batch = processor(CONVERSATIONS, IMAGES, padding_side=padding_side)
    reference = hf_reference(model_type, path, CONVERSATIONS, IMAGES, padding_side)
    assert sorted(batch) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(batch[key], value, err_msg=key)
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes.pop("pixel_values") == np.float32 and set(dtypes.values()) == {np.dtype(np.int32)}
    # Guards the reference against HF's silent 1-D fallback: image positions are truly 3-D.
    assert (batch["position_ids"][0] != batch["position_ids"][1]).any()


def test_text_only_batch_has_no_vision_arrays(checkpoint):
    model_type, path = checkpoint
    conversations = [CONVERSATIONS[0], [{"role": "user", "content": "Hi"}]]
    batch = Processor.from_pretrained(path)(conversations, [[], None])
    assert "pixel_values" not in batch and "image_grid_thw" not in batch
    mask = batch["attention_mask"]
    expected = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)
    np.testing.assert_array_equal(
        batch["position_ids"], np.broadcast_to(expected, (3, *mask.shape))
    )
    reference = hf_reference(model_type, path, conversations, [], "left")
    np.testing.assert_array_equal(batch["input_ids"], reference["input_ids"])
    np.testing.assert_array_equal(batch["position_ids"], reference["position_ids"])


def test_image_pads_are_expanded_per_image(checkpoint):
    processor = Processor.from_pretrained(checkpoint[1])
    batch = processor(CONVERSATIONS[2:3], IMAGES[2:3], add_generation_prompt=False)
    counts = [
        processor.image_processor.num_image_tokens(img.height, img.width) for img in IMAGES[2]
    ]
    assert (batch["input_ids"] == TINY_TOKEN_IDS["image_token_id"]).sum() == sum(counts)
    np.testing.assert_array_equal(batch["image_grid_thw"].prod(-1) // 4, counts)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.endswith("<|vision_end|><|im_end|>\n") and "<|im_start|>assistant" not in text


def test_image_settings_can_be_overridden(checkpoint):
    default = Processor.from_pretrained(checkpoint[1])(CONVERSATIONS[3:4], IMAGES[3:4])
    assert default["image_grid_thw"].tolist() == [[1, 4, 6]]  # 56x84 fits 28*28*48 pixels
    processor = Processor.from_pretrained(checkpoint[1], max_pixels=28 * 28 * 4)
    batch = processor(CONVERSATIONS[3:4], IMAGES[3:4])
    assert batch["image_grid_thw"].tolist() == [[1, 2, 4]]  # 4704 px > 3136: scaled to 28x56


def test_template_from_chat_template_json_wins(tmp_path):
    shutil.copytree(tiny_tokenizer_path(), tmp_path, dirs_exist_ok=True)
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    processor = Processor.from_pretrained(tmp_path)
    assert processor.apply_chat_template(CONVERSATIONS[0]) == "[user]How many dogs are there?"


def test_tokenizer_directory_without_model_config(tmp_path):
    processor = Processor.from_pretrained(tiny_tokenizer_path())
    assert (processor.image_token_id, processor.video_token_id) == (10, 11)
    assert processor.apply_chat_template(CONVERSATIONS[1]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find the red circle.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("conversations", "images", "message"),
    [
        (CONVERSATIONS[1:2], [[]], "conversation 0 has 1 image parts but 0 images were given"),
        (CONVERSATIONS[:2], [[]], "2 conversations but 1 image lists"),
        (CONVERSATIONS[1:2], [IMAGES[1][0]], r"images\[0\] must be a list of PIL images"),
        (CONVERSATIONS[1], None, "conversation 0 must be a list of messages, got dict"),
        (
            [[{"role": "user"}]],
            None,
            "conversation 0, message 0: need a dict with 'role' and 'content'",
        ),
        (
            [[{"role": "user", "content": [{"type": "video"}]}]],
            None,
            "conversation 0 has a video part",
        ),
        ([], None, "non-empty list of conversations"),
    ],
)
def test_bad_inputs_are_named(conversations, images, message):
    processor = Processor.from_pretrained(tiny_tokenizer_path())
    with pytest.raises(ValueError, match=message):
        processor(conversations, images)
    with pytest.raises(ValueError, match="padding_side"):
        processor(CONVERSATIONS[:1], padding_side="middle")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"model_type": "llava"}, "config.json: model_type 'llava' is not one of"),
        (
            {"image_token_id": 151655},
            "config.json: image_token_id=151655 but the tokenizer gives id 10",
        ),
        (
            {"vision_config": {"spatial_merge_size": 4}},
            "vision_config.spatial_merge_size=4 but the image processor",
        ),
    ],
)
def test_inconsistent_checkpoint_is_named(tmp_path, edit, message):
    shutil.copytree(tiny_tokenizer_path(), tmp_path, dirs_exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", **edit}))
    with pytest.raises(ValueError, match=message):
        Processor.from_pretrained(tmp_path)
