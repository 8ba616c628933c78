"""Chunked token log-probs against a naive full log-softmax: values, gradients, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from perception_rl.rl.logprobs import token_logprobs

B, T, H, V = 2, 13, 8, 50


def naive(hidden, targets, weight, tied, temperature):
    """Full [B, T, V] float32 logits, log-softmax, gather; plus entropy."""
    w = weight.astype(jnp.float32)
    logits = hidden.astype(jnp.float32) @ (w.T if tied else w) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return token, -jnp.sum(jnp.exp(logp) * logp, -1)


def inputs(tied, dtype, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (B, T, H)).astype(dtype)
    weight = (jax.random.normal(k2, (V, H) if tied else (H, V)) * 0.5).astype(dtype)
    targets = jax.random.randint(k3, (B, T), 0, V)
    return hidden, weight, targets


def chunked(hidden, targets, weight, tied, chunk_size, temperature):
    return token_logprobs(
        hidden,
        targets,
        head_weight=weight,
        tied=tied,
        chunk_size=chunk_size,
        temperature=temperature,
        return_entropy=True,
    )


def scalarise(fn):
    """A loss touching both outputs with distinct weights, so every gradient path is checked."""

    def loss(hidden, weight, *args):
        logp, ent = fn(hidden, weight, *args)
        return jnp.sum(logp * jnp.arange(1.0, T + 1)) + 0.3 * jnp.sum(ent)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize(
    "tied,chunk_size,temperature",
    [
        (False, 4, 1.0),  # chunks do not divide T = 13: padded tail
        (True, 5, 0.7),
        (False, 13, 1.3),  # one chunk
        (True, 64, 1.0),  # chunk longer than the sequence
    ],
)
def test_matches_naive_float32(tied, chunk_size, temperature):
    hidden, weight, targets = inputs(tied, jnp.float32)
    ours = functools.partial(chunked, chunk_size=chunk_size, temperature=temperature)
    ours_fn = jax.jit(lambda h, w: ours(h, targets, w, tied))
    naive_fn = jax.jit(lambda h, w: naive(h, targets, w, tied, temperature))
    for got, want in zip(ours_fn(hidden, weight), naive_fn(hidden, weight)):
        assert got.dtype == jnp.float32 and got.shape == (B, T)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(scalarise(ours_fn)(hidden, weight), scalarise(naive_fn)(hidden, weight)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_bfloat16_inputs_computed_in_float32(tied):
    hidden, weight, targets = inputs(tied, jnp.bfloat16, seed=1)
    ours_fn = jax.jit(lambda h, w: chunked(h, targets, w, tied, 4, 1.0))
    naive_fn = jax.jit(lambda h, w: naive(h, targets, w, tied, 1.0))
    for got, want in zip(ours_fn(hidden, weight), naive_fn(hidden, weight)):
        assert got.dtype == jnp.float32
        # Products of bf16 values are exact in float32, so only the summation order differs.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grads = scalarise(ours_fn)(hidden, weight)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    for got, want in zip(grads, scalarise(naive_fn)(hidden, weight)):
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2
        )


def test_without_entropy_and_out_of_range_targets():
    hidden, weight, targets = inputs(False, jnp.float32, seed=2)
    targets = targets.at[:, -3:].set(-1)  # padding ids
    logp = token_logprobs(hidden, targets, head_weight=weight, tied=False, chunk_size=4)
    assert isinstance(logp, jax.Array) and bool(jnp.all(jnp.isfinite(logp)))
    want, _ = naive(hidden, targets, weight, False, 1.0)
    np.testing.assert_allclose(logp[:, :-3], want[:, :-3], rtol=1e-6, atol=1e-6)


def test_backward_memory_scales_with_chunk_not_sequence():
    """The compiled gradient's scratch memory must shrink with the chunk size."""
    b, t, h, v = 2, 256, 16, 32768
    hidden = jax.ShapeDtypeStruct((b, t, h), jnp.float32)
    weight = jax.ShapeDtypeStruct((h, v), jnp.float32)
    targets = jnp.zeros((b, t), jnp.int32)

    def temp_bytes(chunk_size):
        loss = lambda x, w: token_logprobs(
            x, targets, head_weight=w, tied=False, chunk_size=chunk_size
        ).sum()
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, weight).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    unchunked = temp_bytes(t)
    assert unchunked >= b * t * v * 4  # at least the full float32 logits
    assert temp_bytes(32) <= unchunked // 6  # 8x fewer positions per chunk, some slack


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_batch_and_vocabulary(axis_type):
    """Batch over 'data', vocabulary over 'tensor' (as the lm_head rule places it)."""
    mesh = Mesh(
        np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "tensor"), axis_types=(axis_type,) * 2
    )
    hidden, weight, targets = inputs(False, jnp.float32, seed=3)
    loss = lambda h, w, t: scalarise(lambda h, w: chunked(h, t, w, False, 4, 1.0))(h, w)
    want = loss(hidden, weight, targets)
    with jax.set_mesh(mesh):
        got = loss(
            jax.device_put(hidden, NamedSharding(mesh, P("data"))),
            jax.device_put(weight, NamedSharding(mesh, P(None, "tensor"))),
            jax.device_put(targets, NamedSharding(mesh, P("data"))),
        )
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
