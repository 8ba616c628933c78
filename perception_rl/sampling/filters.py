"""Token selection: temperature, top-k and top-p (nucleus) sampling, and greedy decoding.

Order and tie rules follow HF's logits warpers (temperature → top-k → top-p). With top-k on,
nucleus filtering runs over the k survivors only, so a decode step never sorts the whole
vocabulary. Ties at the k-th logit keep exactly k tokens (HF keeps all ties; with continuous
logits the difference has probability zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def nucleus_mask(sorted_logits: jax.Array, top_p) -> jax.Array:
    """Keep mask over logits sorted descending: a token survives if the probability mass
    strictly before it is < top_p (the top token always survives)."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return mass_before < top_p


def penalize_repetitions(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF's `RepetitionPenaltyLogitsProcessor` (and vLLM's): every token id already in the
    prompt or the completion has its logit divided by `penalty` if positive, multiplied by it
    if negative, so a penalty > 1 makes repeating it less likely whatever its sign.

    Args:
      logits: [B, V] float32.
      seen: [B, V] bool, whether each id occurred in the row's prompt or completion so far.
      penalty: > 0; 1.0 is the identity.
    """
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def candidates(logits, *, temperature: float, top_k: int, top_p):
    """The filtered distribution HF's warpers (temperature → top-k → top-p) sample from.

    Returns:
      (values [B, K], indices [B, K]): temperature-scaled logits of the top-k tokens (all V
      tokens, sorted, when top_k is 0), -inf where top-p removes a token.
    """
    logits = logits / temperature
    if top_k:
        values, indices = jax.lax.top_k(logits, top_k)
    else:
        indices = jnp.argsort(-logits, axis=-1)
        values = jnp.take_along_axis(logits, indices, axis=-1)
    return jnp.where(nucleus_mask(values, top_p), values, NEG_INF), indices


def sample_token(key, logits, *, temperature: float, top_k: int, top_p):
    """Draws one token per row of `logits` [B, V] (float32). `temperature == 0` is greedy."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    values, indices = candidates(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    choice = jax.random.categorical(key, values, axis=-1)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def token_logprob(logits, tokens, temperature: float):
    """log p(token) under softmax(logits / T) (T = 1 when greedy), unfiltered, float32."""
    scaled = logits / (temperature if temperature > 0 else 1.0)
    logp = jax.nn.log_softmax(scaled.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
