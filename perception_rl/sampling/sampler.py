"""Jitted KV-cache sampler for multimodal prompts: the GRPO rollout engine.

`generate` reads the batch-major prompts the train step reads (`models.qwen_vl.prompts`),
padded to the same buckets, runs them through the same prefill (`prompts.prompt_states`: the
vision tower per prompt, then the decoder once), then decodes `num_samples` rows per prompt
in `lax.while_loop`s (one per cache segment) that stop when every row has emitted EOS. The KV
cache keeps each prompt's keys/values once, shared by its rows (`text.LayerCache`'s prefix),
beside a completion cache per row that grows by doubling.
Decode positions continue each row's M-RoPE positions (last prompt position + 1 + k).
An optional repetition penalty (HF / vLLM semantics) keeps a [rows, vocab] mask of the token ids
seen in each row's prompt (padding excluded) and completion.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perception_rl.models.qwen_vl import QwenVL, prompts
from perception_rl.models.qwen_vl.text import CACHE_SLOT_AXES, pad_cache_slots
from perception_rl.sampling import filters


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """Completions, samples of one prompt consecutive.

    Attributes:
      tokens: int32 [B·n, max_new_tokens]; after a row's first EOS every slot holds `pad_id`.
      lengths: int32 [B·n], generated tokens up to and including the first EOS.
      logprobs: float32 [B·n, max_new_tokens], log p(token) under softmax(logits / temperature)
        of the unfiltered policy (temperature 1 for greedy); 0 after the end.
      prompt_index: int32 [B·n], the prompt row each completion belongs to.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    prompt_index: np.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size", "num_samples"))
def _prefill(graphdef, state, prompt, *, cache_size: int, num_samples: int):
    """Runs vision + prompt once; returns its keys/values, last logits, next positions, mask.

    The cache is the prompt's keys/values, once per prompt: `_decode` shares them among the
    prompt's `num_samples` rows (the prefix of `text.LayerCache`) beside each row's completion
    slots, and `kv_mask` has `cache_size` = P + new-token columns.
    """
    model: QwenVL = nnx.merge(graphdef, state)
    states = prompts.prompt_states(model, prompt)
    logits = model.logits(states["last_hidden"]).astype(jnp.float32)
    mask = prompt["attention_mask"]
    next_position = prompts.next_positions(mask, prompt["position_ids"])
    kv_mask = jnp.pad(mask, ((0, 0), (0, cache_size - mask.shape[1])))
    rep = lambda x: jnp.repeat(x, num_samples, axis=0)
    return (states["kv"], *jax.tree.map(rep, (logits, next_position, kv_mask)))


@functools.partial(jax.jit, static_argnames=("vocab_size", "num_samples"))
def _seen_tokens(ids, mask, *, vocab_size: int, num_samples: int):
    """[B·n, V] bool: the ids of each prompt row that are not padding, repeated n times."""
    rows = jnp.arange(ids.shape[0])[:, None]
    # Padding is scattered to the out-of-range id V, which `mode="drop"` discards.
    ids = jnp.where(mask > 0, ids, vocab_size)
    seen = jnp.zeros((ids.shape[0], vocab_size), bool).at[rows, ids].set(True, mode="drop")
    return jnp.repeat(seen, num_samples, axis=0)


@functools.partial(
    jax.jit,
    donate_argnums=(2,),
    static_argnames=(
        "graphdef",
        "prompt_length",
        "max_new_tokens",
        "temperature",
        "top_k",
        "eos_ids",
        "pad_id",
        "repetition_penalty",
    ),
)
def _decode(
    graphdef,
    state,
    prefix,
    logits,
    next_position,
    kv_mask,
    key,
    top_p,
    seen,
    *,
    prompt_length,
    max_new_tokens,
    temperature,
    top_k,
    eos_ids,
    pad_id,
    repetition_penalty,
):
    model: QwenVL = nnx.merge(graphdef, state)
    rows = logits.shape[0]
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
    # Each row's completion slots beside its prompt's shared keys/values (`text.LayerCache`).
    ends = _segment_ends(max_new_tokens)
    completion = model.init_cache(rows, ends[0])
    cache = [dict(own, prefix=kv) for own, kv in zip(completion, prefix)]

    def cond(carry, end):
        step, done = carry[0], carry[6]
        return (step < end) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, kv_mask, tokens, logprobs, done, lengths, seen = carry
        chosen_from = logits
        if repetition_penalty != 1.0:
            chosen_from = filters.penalize_repetitions(logits, seen, repetition_penalty)
        token = filters.sample_token(
            jax.random.fold_in(key, step),
            chosen_from,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        # The policy's own log-prob (no penalty): what GRPO's ratio and KL are taken against.
        logprob = filters.token_logprob(logits, token, temperature)
        token = jnp.where(done, pad_id, token)
        if repetition_penalty != 1.0:
            seen = seen.at[jnp.arange(rows), token].set(True)
        tokens = tokens.at[:, step].set(token)
        logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, logprob))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, eos)
        kv_mask = kv_mask.at[:, prompt_length + step].set(1)
        positions = jnp.broadcast_to((next_position + step)[None, :, None], (3, rows, 1))
        embeds = model.model.embed_tokens(token[:, None])
        # The token's keys/values go to its row's own slot `step`, after the shared prompt's.
        visible = kv_mask[:, None, : prompt_length + cache[0]["v"].shape[CACHE_SLOT_AXES["v"]]]
        hidden, cache = model.model(embeds, positions, visible > 0, cache, step)
        logits = model.logits(hidden[:, 0]).astype(jnp.float32)
        return step + 1, cache, logits, kv_mask, tokens, logprobs, done, lengths, seen

    carry = (
        jnp.int32(0),
        cache,
        logits,
        kv_mask,
        jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((rows, max_new_tokens), jnp.float32),
        jnp.zeros((rows,), bool),
        jnp.zeros((rows,), jnp.int32),
        seen,
    )
    for start, end in zip([ends[0], *ends], ends):
        if end > start:  # the completion cache grows to `end` slots (one copy per segment)
            grown = [{**layer, **pad_cache_slots(layer, end - start)} for layer in carry[1]]
            carry = (carry[0], grown, *carry[2:])
        carry = jax.lax.while_loop(functools.partial(cond, end=end), body, carry)
    _, cache, _, _, tokens, logprobs, _, lengths, _ = carry
    # Returning the prompt's keys/values lets XLA reuse their donated buffers in the loops.
    return tokens, lengths, logprobs, [layer["prefix"] for layer in cache]


def _segment_ends(max_new_tokens: int, first: int = 32, most: int = 4) -> list[int]:
    """Decode steps at which the completion cache doubles, ending at `max_new_tokens`: at most
    `most` segments, the first of at least `first` slots (128 → 32, 64, 128; 2048 → 256, 512,
    1024, 2048).

    Each segment's attention reads only the slots it can have filled, so a step reads about
    2/3 of the `max_new_tokens`-slot cache on average, not all of it (more segments would save
    little: the last ones hold most steps), and each segment compiles its own loop.
    """
    end = max(first, -(-max_new_tokens // 2 ** (most - 1)))
    ends = []
    while end < max_new_tokens:
        ends.append(end)
        end *= 2
    return [*ends, max_new_tokens]


def generate(
    model: QwenVL,
    prompt_batch: dict,
    *,
    max_new_tokens: int,
    key,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids=None,
    pad_id: int | None = None,
    repetition_penalty: float = 1.0,
) -> SampleResult:
    """Samples `num_samples` completions per prompt.

    Args:
      model: the policy (possibly sharded; jit follows its parameter shardings).
      prompt_batch: batch-major padded prompts, the train step's layout
        (`models.qwen_vl.prompts`: `pad_prompts` of prompt records, or `prompt_batch` of a
        processor batch). Shapes are padded further to the buckets if they are not on one.
      max_new_tokens: completion budget (static).
      key: PRNG key; the same key gives the same completions.
      num_samples: completions per prompt (G in GRPO).
      temperature: softmax temperature; 0 means greedy decoding.
      top_k: keep the k most likely tokens (0: off). top_p: nucleus mass (1.0: off).
      eos_ids: token ids that end a completion (default: the config's eos_token_id).
      pad_id: filler after EOS (default: the config's pad_token_id, else 0).
      repetition_penalty: HF's `repetition_penalty` (1.0: off; PR1 evaluates grounding with
        1.05): logits of ids already in the prompt or completion are divided by it if positive,
        multiplied if negative, before temperature / top-k / top-p or argmax. `logprobs` stay
        the unpenalised policy's.
    """
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}.")
    config = model.config
    if eos_ids is None:
        eos_ids = () if config.eos_token_id is None else (config.eos_token_id,)
    pad_id = pad_id if pad_id is not None else (config.pad_token_id or 0)
    prompts.check_layout(prompt_batch)
    sizes = prompts.padded_sizes(prompt_batch)
    bucketed = prompts.bucketed_sizes(sizes)
    prompt = prompt_batch  # training's batches are already on a bucket: no host copy
    if (bucketed != sizes).any():
        prompt = prompts.repad_prompts(prompt_batch, bucketed, pad_id=pad_id)
    prompt_length = prompt["input_ids"].shape[1]
    graphdef, state = nnx.split(model)
    prefix, logits, next_position, kv_mask = _prefill(
        graphdef, state, prompt, cache_size=prompt_length + max_new_tokens, num_samples=num_samples
    )
    seen = None
    if repetition_penalty != 1.0:
        seen = _seen_tokens(
            prompt["input_ids"],
            prompt["attention_mask"],
            vocab_size=int(logits.shape[-1]),
            num_samples=num_samples,
        )
    tokens, lengths, logprobs, _ = _decode(
        graphdef,
        state,
        prefix,
        logits,
        next_position,
        kv_mask,
        key,
        jnp.float32(top_p),
        seen,
        prompt_length=prompt_length,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        eos_ids=tuple(int(e) for e in eos_ids),
        pad_id=int(pad_id),
        repetition_penalty=float(repetition_penalty),
    )
    rows = np.repeat(np.arange(len(prompt["input_ids"]), dtype=np.int32), num_samples)
    return SampleResult(np.asarray(tokens), np.asarray(lengths), np.asarray(logprobs), rows)
