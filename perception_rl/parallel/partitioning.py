"""Parameter placement by regex rules on parameter paths (big_vision / MaxText style).

A rule is `(regex, PartitionSpec)`; the first rule whose regex `re.search`es the '/'-joined
parameter path wins. A mesh axis that does not divide the dimension it would shard is dropped
for that dimension, so tiny test models and odd vocabularies still place cleanly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, P]]

# FSDP over ('fsdp') on the model dimension, tensor parallelism over ('tensor') on heads / MLP
# width / vocabulary. Kernels are [in, out].
DEFAULT_RULES: Rules = (
    (r"embed_tokens/embedding$", P("tensor", "fsdp")),
    (r"lm_head/kernel$", P("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|qkv|fc1)/kernel$", P("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|qkv|fc1)/bias$", P("tensor")),
    (r"(o_proj|down_proj|proj|fc2)/kernel$", P("tensor", "fsdp")),
    (r"patch_embed/kernel$", P(None, "fsdp")),
    (r".*", P()),
)


def path_str(path: Sequence) -> str:
    return "/".join(str(p) for p in path)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> P:
    """PartitionSpec of one parameter, with non-dividing mesh axes dropped."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            break
    else:
        return P()
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axes in zip(shape, spec[: len(shape)]):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = 1
        for name in names:
            size *= mesh.shape[name]
        fitted.append(axes if names and dim % size == 0 else None)
    return P(*fitted)


def sharding_for(path: str, shape, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, spec_for(path, shape, mesh, rules))


def state_shardings(state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """A pytree of NamedShardings matching an NNX state (or any pytree of arrays)."""

    def one(path, leaf):
        keys = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
        keys = [k for k in keys if k != "value"]
        return sharding_for(path_str(keys), leaf.shape, mesh, rules)

    return jax.tree_util.tree_map_with_path(one, state)
