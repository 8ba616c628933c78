"""The rollout engine against HF `generate` and against the sampling distribution itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perception_rl.models import from_pretrained
from perception_rl.models.qwen_vl import prompts
from perception_rl.models.qwen_vl.model import default_position_ids
from perception_rl.parallel import make_mesh
from perception_rl.sampling import generate, sampler
from perception_rl.sampling.filters import nucleus_mask
from perception_rl.testing import hf_models

EOS = 1


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):
    hf = hf_models.build_hf_model(request.param, seed=1)
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    return hf, path


def prompt_batch(model):
    batch = hf_models.multimodal_batch(seed=3)
    batch["position_ids"] = np.asarray(
        default_position_ids(
            model.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"]
        )
    )
    return batch


def layout(model, batch):
    """The batch-major prompts `generate` reads (the train step's layout)."""
    return prompts.prompt_batch(batch, model.config, pad_id=2)


def hf_greedy(hf, batch, n):
    import torch

    t = {k: torch.as_tensor(v) for k, v in batch.items() if k != "position_ids"}
    mm = (t["input_ids"] == hf_models.IMAGE).long()
    with torch.no_grad():
        out = hf.generate(
            **t,
            mm_token_type_ids=mm,
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=EOS,
            pad_token_id=2,
        )
    return out[:, t["input_ids"].shape[1] :].numpy()


def test_greedy_matches_hf_generate(checkpoint):
    hf, path = checkpoint
    model = from_pretrained(path)
    batch = prompt_batch(model)
    ours = generate(
        model,
        layout(model, batch),
        max_new_tokens=80,
        key=jax.random.key(0),
        temperature=0,
        eos_ids=(EOS,),
        pad_id=2,
    )
    theirs = hf_greedy(hf, batch, 80)
    for row in range(len(batch["input_ids"])):
        n = ours.lengths[row]
        np.testing.assert_array_equal(ours.tokens[row, :n], theirs[row, :n])
    assert ours.tokens.shape == (3, 80)
    # Decoding ran through all three segments of the growing completion cache (32, 64, 80).
    assert ours.lengths.max() > 64, ours.lengths


def test_logprobs_equal_a_fresh_forward(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    batch = prompt_batch(model)
    temperature, n = 0.7, 40  # past the first decode segment (32 slots)
    out = generate(
        model,
        layout(model, batch),
        max_new_tokens=n,
        key=jax.random.key(1),
        num_samples=2,
        temperature=temperature,
        top_k=20,
        top_p=0.9,
        eos_ids=(EOS,),
        pad_id=2,
    )
    np.testing.assert_array_equal(out.prompt_index, [0, 0, 1, 1, 2, 2])
    rows = out.prompt_index
    ids = np.concatenate([batch["input_ids"][rows], out.tokens], axis=1)
    gen_mask = (np.arange(n)[None] < out.lengths[:, None]).astype(np.int64)
    assert out.lengths.max() > 32, out.lengths  # the cache grew at least once
    mask = np.concatenate([batch["attention_mask"][rows], gen_mask], axis=1)
    grids = batch["image_grid_thw"]
    pixels = batch["pixel_values"]
    # Re-batch the repeated rows' images in row order for the fresh forward.
    per_row = np.cumsum([0, 0, 1, 2])  # images of rows 0, 1, 2 in multimodal_batch
    img_rows = [i for r in rows for i in range(per_row[r], per_row[r + 1])]
    sizes = np.prod(grids, axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    pix = np.concatenate([pixels[offsets[i] : offsets[i + 1]] for i in img_rows])
    # Positions continue the prompt's; only prompt slots hold images (a sampled image token in a
    # completion is an ordinary token).
    prompt_len = batch["input_ids"].shape[1]
    prompt_pos = batch["position_ids"][:, rows]
    start = np.max(np.where(batch["attention_mask"][rows] > 0, prompt_pos, -1), axis=(0, 2)) + 1
    gen_pos = np.broadcast_to(start[:, None] + np.arange(n), (3, len(rows), n))
    slots = np.zeros(ids.shape, bool)
    slots[:, :prompt_len] = batch["input_ids"][rows] == hf_models.IMAGE
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pix,
        image_grid_thw=grids[img_rows],
        image_slots=slots,
        position_ids=np.concatenate([prompt_pos, gen_pos], axis=2),
    )
    logp = jax.nn.log_softmax(np.asarray(logits, np.float32) / temperature, axis=-1)
    fresh = np.take_along_axis(np.asarray(logp[:, prompt_len - 1 : -1]), out.tokens[..., None], -1)[
        ..., 0
    ]
    np.testing.assert_allclose(out.logprobs * gen_mask, fresh * gen_mask, atol=1e-4)


def test_same_key_same_tokens_and_eos_padding(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    batch = prompt_batch(model)
    kw = dict(
        max_new_tokens=16,
        num_samples=3,
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        eos_ids=(EOS, 5, 6, 7),
        pad_id=2,
    )
    a = generate(model, layout(model, batch), key=jax.random.key(7), **kw)
    b = generate(model, layout(model, batch), key=jax.random.key(7), **kw)
    c = generate(model, layout(model, batch), key=jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    for row, n in enumerate(a.lengths):
        assert (a.tokens[row, n:] == 2).all() and (a.logprobs[row, n:] == 0).all()
        if n < 16:
            assert a.tokens[row, n - 1] in kw["eos_ids"]


def test_sharded_greedy_equals_unsharded(checkpoint):
    _, path = checkpoint
    plain = from_pretrained(path)
    sharded = from_pretrained(path, mesh=make_mesh((2, 2, 2)))
    batch = prompt_batch(plain)
    kw = dict(max_new_tokens=16, key=jax.random.key(0), temperature=0, eos_ids=(EOS,), pad_id=2)
    np.testing.assert_array_equal(
        generate(sharded, layout(plain, batch), **kw).tokens,
        generate(plain, layout(plain, batch), **kw).tokens,
    )


def test_bf16_sampling_runs(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path, dtype=jnp.bfloat16)
    out = generate(
        model,
        layout(model, prompt_batch(model)),
        max_new_tokens=8,
        key=jax.random.key(0),
        num_samples=2,
        top_k=50,
        top_p=0.9,
    )
    assert out.tokens.shape == (6, 8) and np.isfinite(out.logprobs).all()


def test_token_frequencies_match_filtered_distribution():
    """Many draws from one fixed prompt: the first token's frequencies follow the
    temperature-scaled, top-k/top-p filtered distribution (chi-square, fixed seed)."""
    from flax import nnx
    from scipy import stats

    from perception_rl.models.qwen_vl import QwenVL, tiny

    model = QwenVL(tiny("qwen2_5_vl", vocab_size=64), rngs=nnx.Rngs(0))
    # Scale the head so the distribution is far from uniform.
    model.model.embed_tokens.embedding[...] *= 2
    ids = np.array([[5, 6, 7, 8]], np.int32)
    mask = np.ones_like(ids)
    batch = dict(
        input_ids=ids,
        attention_mask=mask,
        position_ids=np.broadcast_to(np.arange(4), (3, 1, 4)).astype(np.int32),
    )
    temperature, top_k, top_p, draws = 0.8, 10, 0.8, 4000
    out = generate(
        model,
        layout(model, batch),
        max_new_tokens=1,
        key=jax.random.key(0),
        num_samples=draws,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=(),
    )
    logits = np.asarray(model(**batch)[0, -1], np.float64) / temperature
    order = np.argsort(-logits)[:top_k]
    kept = order[np.asarray(nucleus_mask(jnp.asarray(logits[order]), top_p))]
    probs = np.exp(logits[kept] - logits[kept].max())
    probs /= probs.sum()
    assert 2 <= len(kept) < top_k
    counts = np.array([(out.tokens[:, 0] == t).sum() for t in kept])
    assert counts.sum() == draws  # nothing outside the filtered support
    _, p_value = stats.chisquare(counts, probs * draws)
    assert p_value > 1e-3


def _row_inputs(batch, row):
    """Row `row` of a multimodal_batch without its left padding, with its own images only."""
    keep = batch["attention_mask"][row] > 0
    images_before = [0, 0, 1, 3]  # multimodal_batch's images per row: 0, 1, 2
    grids = batch["image_grid_thw"][images_before[row] : images_before[row + 1]]
    offsets = np.concatenate([[0], np.cumsum(np.prod(batch["image_grid_thw"], axis=1))])
    pixels = batch["pixel_values"][offsets[images_before[row]] : offsets[images_before[row + 1]]]
    out = {
        "input_ids": batch["input_ids"][row : row + 1, keep],
        "attention_mask": batch["attention_mask"][row : row + 1, keep],
    }
    if len(grids):
        out.update(pixel_values=pixels, image_grid_thw=grids)
    return out


def hf_row_greedy(hf, inputs, n, repetition_penalty):
    """HF greedy decoding of one unpadded row: its repetition penalty then sees exactly the
    prompt and the completion (batched HF would also penalise the left-padding id)."""
    import torch

    t = {k: torch.as_tensor(v) for k, v in inputs.items()}
    mm = (t["input_ids"] == hf_models.IMAGE).long()
    with torch.no_grad():
        out = hf.generate(
            **t,
            mm_token_type_ids=mm,
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=EOS,
            pad_token_id=2,
            repetition_penalty=repetition_penalty,
        )
    return out[0, t["input_ids"].shape[1] :].numpy()


@pytest.mark.parametrize("penalty", [1.05, 1.5])
def test_greedy_with_repetition_penalty_matches_hf_generate(checkpoint, penalty):
    hf, path = checkpoint
    model = from_pretrained(path)
    batch = prompt_batch(model)
    kw = {"max_new_tokens": 24, "temperature": 0, "eos_ids": (EOS,), "pad_id": 2}
    kw["key"] = jax.random.key(0)
    ours = generate(model, layout(model, batch), repetition_penalty=penalty, **kw)
    plain = generate(model, layout(model, batch), **kw)
    for row in range(len(batch["input_ids"])):
        theirs = hf_row_greedy(hf, _row_inputs(batch, row), 24, penalty)
        n = ours.lengths[row]
        assert n == len(theirs)
        np.testing.assert_array_equal(ours.tokens[row, :n], theirs)
    if penalty == 1.5:  # The penalty must have changed something for the test to mean anything.
        assert not np.array_equal(ours.tokens, plain.tokens)


def test_top_k_top_p_support_equals_hf_warpers():
    """The distribution sampled from (support and probabilities) equals HF's Temperature →
    TopK → TopP warpers' on random logits, including top_p so small only the top token stays."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from perception_rl.sampling.filters import candidates

    rng = np.random.default_rng(0)
    for temperature, top_k, top_p in [
        (1.0, 0, 0.9),
        (0.7, 50, 0.9),
        (1.3, 10, 0.5),
        (1.0, 0, 1e-3),
    ]:
        logits = (rng.standard_normal((16, 300)) * 3).astype(np.float32)
        scores = torch.as_tensor(logits)
        scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        scores = TopPLogitsWarper(top_p)(None, scores)
        theirs = torch.softmax(scores, dim=-1).numpy()
        values, indices = candidates(
            jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=jnp.float32(top_p)
        )
        ours = np.zeros_like(theirs)
        np.put_along_axis(ours, np.asarray(indices), np.asarray(jax.nn.softmax(values, -1)), -1)
        np.testing.assert_array_equal(ours > 0, theirs > 0)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_processor_batch_is_refused_with_the_conversion_named(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    with pytest.raises(
        ValueError,
        match=r"batch-major prompts.*got pixel_values \(128, 1176\).*prompts.prompt_batch",
    ):
        generate(model, prompt_batch(model), max_new_tokens=4, key=jax.random.key(0))


@pytest.mark.parametrize("new_tokens", [1, 31, 32, 33, 80, 128, 768, 2048, 3000])
def test_completion_cache_segments_double_up_to_the_budget(new_tokens):
    ends = sampler._segment_ends(new_tokens)
    assert ends[-1] == new_tokens and len(ends) <= 4
    assert ends[0] >= min(32, new_tokens)
    assert all(b == 2 * a for a, b in zip(ends, ends[1:-1]))  # doubling, the last one capped
    assert all(a < b <= 2 * a for a, b in zip(ends, ends[1:]))
