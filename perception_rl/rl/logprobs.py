"""Token log-probs through the LM head without materialising [B, T, vocab] logits.

A Qwen2-VL vocabulary has 151,936 entries, so full float32 logits for 8 completions of 2,048
tokens take 10 GB, and the backward pass of a naive log-softmax keeps them alive. Here the
sequence is cut into chunks that are scanned over; each chunk's logits live only inside a
rematerialised scan step, so forward and backward both hold one [B, chunk, vocab] block at a
time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunked(x: jax.Array, num_chunks: int) -> jax.Array:
    """[B, n * C, ...] -> [n, B, C, ...]; the batch axis (and its sharding) stays intact."""
    batch, length = x.shape[:2]
    return x.reshape(batch, num_chunks, length // num_chunks, *x.shape[2:]).swapaxes(0, 1)


def _unchunked(x: jax.Array, length: int) -> jax.Array:
    """[n, B, C] -> [B, length], dropping the padding."""
    return x.swapaxes(0, 1).reshape(x.shape[1], -1)[:, :length]


def token_logprobs(
    hidden: jax.Array,
    targets: jax.Array,
    *,
    head_weight: jax.Array,
    tied: bool,
    chunk_size: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(target) under softmax(head(hidden) / temperature), in float32, chunk by chunk.

    `hidden[:, t]` must be the final (normed) hidden state that predicts `targets[:, t]`. For a
    prompt of length P and completion of length C pass `hidden[:, P - 1:P + C - 1]` and the
    completion tokens, so no logits are spent on prompt (or image) positions.

    The head matmul accumulates in float32 and the log-softmax runs in float32 whatever the
    parameter dtype. Temperature divides the logits first, matching what the sampler drew from.

    Args:
      hidden: [B, T, H] hidden states, any float dtype.
      targets: [B, T] token ids. Ids outside [0, V) (e.g. padding -1) are clipped, so masked
        positions get finite, meaningless values.
      head_weight: the LM head: an untied kernel [H, V], or the tied embedding table [V, H].
      tied: whether `head_weight` is the [V, H] embedding table.
      chunk_size: sequence positions per chunk; memory is O(B * chunk_size * V).
      temperature: logits are divided by it before the log-softmax.
      return_entropy: also return the per-position entropy of the tempered distribution.

    Returns:
      [B, T] float32 log-probs, and [B, T] float32 entropies when `return_entropy`.
    """
    length = hidden.shape[1]
    vocab = head_weight.shape[0] if tied else head_weight.shape[1]
    chunk_size = min(chunk_size, length)
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(jnp.clip(targets, 0, vocab - 1), ((0, 0), (0, pad)))
    equation = "bch,vh->bcv" if tied else "bch,hv->bcv"

    # Rematerialised: the backward pass recomputes this chunk's logits instead of storing them.
    @jax.checkpoint
    def chunk_logprobs(h, t):
        logits = jnp.einsum(equation, h, head_weight, preferred_element_type=jnp.float32)
        logp = jax.nn.log_softmax(logits / temperature, axis=-1)
        # A masked sum rather than a gather: with the vocabulary sharded it is a local reduction
        # plus an all-reduce of [B, chunk] values, and it also traces under Explicit mesh axes,
        # where a gather along a sharded axis is rejected.
        is_target = jnp.arange(vocab) == t[..., None]
        token_logp = jnp.sum(jnp.where(is_target, logp, 0.0), axis=-1)
        if not return_entropy:
            return token_logp, None
        return token_logp, -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def step(carry, chunk):
        return carry, chunk_logprobs(*chunk)

    _, (logps, entropy) = jax.lax.scan(
        step, None, (_chunked(hidden, num_chunks), _chunked(targets, num_chunks))
    )
    logps = _unchunked(logps, length)
    if not return_entropy:
        return logps
    return logps, _unchunked(entropy, length)
