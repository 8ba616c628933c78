"""The one prompt layout: a processor batch split per prompt and padded equals the training
records padded; buckets; re-padding; and the prefill it feeds equals the model's own forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from perception_rl.models.qwen_vl import QwenVL, prompts, tiny
from perception_rl.processing import TINY_TOKEN_IDS
from perception_rl.rl import batch as batch_lib
from perception_rl.tasks import get_task
from perception_rl.testing import hf_models

CONFIG = tiny("qwen2_5_vl", **TINY_TOKEN_IDS)


def test_processor_batch_and_training_records_give_the_same_prompts(processor, examples):
    task = get_task("counting")
    formatter = batch_lib.PromptFormatter(task, processor, "qwen2_5_vl", CONFIG.vision)
    records = [formatter(e)["prompt"] for e in examples]
    assert len({len(r["pixel_values"]) for r in records}) > 1  # ragged patches
    direct = processor(
        [task.conversation(e, "qwen2_5_vl") for e in examples],
        [[Image.fromarray(e["image"])] for e in examples],
    )
    ours = prompts.prompt_batch(direct, CONFIG, pad_id=processor.pad_token_id)
    theirs = prompts.pad_prompts(records, pad_id=processor.pad_token_id)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    length = direct["input_ids"].shape[1]
    assert ours["input_ids"].shape[1] == prompts.bucket(length, 16)
    assert (ours["attention_mask"][:, :-length] == 0).all()  # extra padding is masked


def test_split_gives_each_row_its_own_images():
    batch = hf_models.multimodal_batch(seed=3)  # rows with 0, 1 and 2 images
    split = prompts.split_processor_batch(
        batch,
        CONFIG.vision,
        hf_models.IMAGE,
        position_ids=np.zeros((3,) + batch["input_ids"].shape),
    )
    assert [len(p["image_grid_thw"]) for p in split] == [0, 1, 2]
    np.testing.assert_array_equal(
        np.concatenate([p["pixel_values"] for p in split]), batch["pixel_values"]
    )
    for row, p in enumerate(split):
        np.testing.assert_array_equal(
            p["input_ids"], batch["input_ids"][row][batch["attention_mask"][row] > 0]
        )
        assert len(p["patch_rows"]) == len(p["pixel_values"]) == p["image_grid_thw"].prod(1).sum()


def test_split_names_a_row_whose_image_tokens_do_not_match_the_grids():
    batch = hf_models.multimodal_batch(seed=3)
    batch["image_grid_thw"] = batch["image_grid_thw"][:2]
    with pytest.raises(ValueError, match="prompt row 2"):
        prompts.split_processor_batch(
            batch, CONFIG.vision, hf_models.IMAGE, np.zeros((3,) + batch["input_ids"].shape)
        )


def test_buckets_are_two_per_octave():
    sizes = [prompts.bucket(n, 16) for n in range(1, 5000)]
    octave = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072]
    assert sorted(set(sizes)) == [*octave, 4096, 6144]
    assert all(n <= size < 1.5 * n or size == 16 for n, size in zip(range(1, 5000), sizes))


def test_repad_equals_padding_to_the_larger_sizes_at_once(processor, examples):
    formatter = batch_lib.PromptFormatter(
        get_task("counting"), processor, "qwen2_5_vl", CONFIG.vision
    )
    records = [formatter(e)["prompt"] for e in examples]
    small = prompts.pad_prompts(records, pad_id=0)
    sizes = prompts.padded_sizes(small) * np.asarray([2, 2, 2])
    once = prompts.pad_prompts(records, pad_id=0, sizes=sizes)
    twice = prompts.repad_prompts(small, sizes, pad_id=0)
    assert once.keys() == twice.keys()
    for key in once:
        np.testing.assert_array_equal(once[key], twice[key], err_msg=key)


def test_prefill_equals_the_full_forward_of_the_processor_batch():
    """`prompt_states` (per-prompt vision tower, padded further to a bucket and a larger cache)
    predicts the next token as the HF-style forward over the concatenated processor batch."""
    config = tiny("qwen2_vl", vocab_size=1000, image_token_id=hf_models.IMAGE)
    model = QwenVL(config, rngs=nnx.Rngs(0))
    batch = hf_models.multimodal_batch(seed=5)
    batch["image_grid_thw"] = batch["image_grid_thw"]
    expected = model(**batch)[:, -1]
    layout = prompts.prompt_batch(batch, config, pad_id=0)
    states = prompts.prompt_states(model, jax.tree.map(jnp.asarray, layout), cache_size=64)
    np.testing.assert_allclose(model.logits(states["last_hidden"]), expected, atol=2e-5)
    assert states["kv"][0]["k"].shape[3] == states["kv"][0]["v"].shape[2] == 64
