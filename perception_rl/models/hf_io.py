"""Hugging Face safetensors checkpoints ⇄ NNX `QwenVL`, without torch.

Loading memory-maps each safetensors file and hands every device only its own slice
(`jax.make_array_from_callback`), so a sharded load never holds a full host copy per device.
Both key layouts are accepted (`visual.*`/`model.*`, and `model.visual.*`/
`model.language_model.*`); saving writes the hub layout that `transformers` loads.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from perception_rl.models.qwen_vl import QwenVL, QwenVLConfig
from perception_rl.parallel import partitioning

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}

# HF module names that differ from ours (after prefix normalisation).
_RENAMES = (
    (r"^model\.visual\.", "visual."),
    (r"^model\.language_model\.", "model."),
    (r"^visual\.patch_embed\.proj\.", "visual.patch_embed."),
    (r"^visual\.merger\.mlp\.0\.", "visual.merger.fc1."),
    (r"^visual\.merger\.mlp\.2\.", "visual.merger.fc2."),
)
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class CheckpointError(ValueError):
    """A checkpoint directory that does not match the model it should load into."""


# --------------------------------------------------------------------------- safetensors
def read_header(file: str) -> tuple[dict, int]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def open_tensor(file: str, key: str, info: dict, data_start: int) -> np.ndarray:
    """A read-only memory map of one tensor (no bytes are read until sliced)."""
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
        raise CheckpointError(f"{file}: tensor {key!r} has unsupported dtype {info['dtype']}.")
    begin, end = info["data_offsets"]
    if end == begin:
        return np.zeros(info["shape"], dtype)
    raw = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
    return raw.view(dtype).reshape(info["shape"])


def checkpoint_tensors(path: str) -> dict[str, tuple[str, np.ndarray]]:
    """{hf key: (file, lazy array)} for a single-file or index-sharded checkpoint."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(
            f"{path}: neither model.safetensors nor model.safetensors.index.json found."
        )
    tensors = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(
                f"{file}: shard listed in model.safetensors.index.json is missing."
            )
        header, start = read_header(file)
        for key, info in header.items():
            tensors[key] = (file, open_tensor(file, key, info, start))
    return tensors


def write_safetensors(file: str, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        header[key] = {
            "dtype": _DTYPE_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        blobs.append(arr)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data start to 8 bytes
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for arr in blobs:
            f.write(arr.tobytes())


# ------------------------------------------------------------------------------ key maps
def canonical_key(path: tuple) -> str:
    """Our parameter path with HF's leaf name: ('visual', 'merger', 'fc1', 'kernel') →
    'visual.merger.fc1.weight'. `normalize_hf_key` maps checkpoint keys onto these."""
    return ".".join(str(p) for p in path[:-1]) + "." + _LEAF[path[-1]]


def nnx_path_to_hf(path: tuple) -> str:
    """The hub key of a parameter, e.g. 'visual.merger.mlp.0.weight'."""
    name = canonical_key(path)
    name = name.replace("visual.patch_embed.", "visual.patch_embed.proj.")
    name = name.replace("visual.merger.fc1.", "visual.merger.mlp.0.")
    return name.replace("visual.merger.fc2.", "visual.merger.mlp.2.")


def normalize_hf_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def to_nnx_layout(leaf: str, weight: np.ndarray) -> np.ndarray:
    """HF tensor → our layout, lazily: torch Linear (out, in[, …]) becomes kernel (in, out)."""
    if leaf == "kernel":
        return weight.reshape(weight.shape[0], -1).T
    return weight


def to_hf_layout(path: tuple, value: np.ndarray, config: QwenVLConfig) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    weight = value.T
    if path[:2] == ("visual", "patch_embed"):
        v = config.vision
        weight = weight.reshape(
            v.width, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
        )
    return weight


# ------------------------------------------------------------------------------ loading
def abstract_model(config: QwenVLConfig, dtype) -> QwenVL:
    return nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, rngs=nnx.Rngs(0)))


def _place(view: np.ndarray, dtype, sharding) -> jax.Array:
    if sharding is None:
        return jnp.asarray(np.asarray(view, dtype=dtype))
    return jax.make_array_from_callback(
        view.shape, sharding, lambda idx: np.ascontiguousarray(view[idx], dtype=dtype)
    )


def load_state(path: str, model: QwenVL, *, mesh=None, rules=partitioning.DEFAULT_RULES):
    """Reads the checkpoint at `path` into the (abstract) model's state, shape-checked."""
    tensors = {normalize_hf_key(k): v for k, v in checkpoint_tensors(path).items()}
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    tied = model.config.tie_word_embeddings
    expected = {canonical_key(p): p for p in flat}
    unexpected = set(tensors) - set(expected) - ({"lm_head.weight"} if tied else set())
    if unexpected:
        key = sorted(unexpected)[0]
        raise CheckpointError(
            f"{tensors[key][0]}: unexpected tensor {key!r} "
            f"({len(unexpected)} unexpected in all) for a {model.config.family} "
            "model with this config."
        )
    loaded = {}
    for hf_key, nnx_path in expected.items():
        if hf_key not in tensors:
            raise CheckpointError(
                f"{path}: tensor {nnx_path_to_hf(nnx_path)!r} is missing from the checkpoint."
            )
        file, weight = tensors[hf_key]
        var = flat[nnx_path]
        view = to_nnx_layout(nnx_path[-1], weight)
        want = tuple(var.shape)
        if view.shape != want:
            raise CheckpointError(
                f"{file}: tensor {nnx_path_to_hf(nnx_path)!r} has shape {tuple(weight.shape)}; the config "
                f"({path}/config.json) expects {to_hf_shape(nnx_path, want, model.config)}."
            )
        sharding = (
            None
            if mesh is None
            else partitioning.sharding_for(partitioning.path_str(nnx_path), want, mesh, rules)
        )
        loaded[nnx_path] = var.replace(_place(view, var.dtype, sharding))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def to_hf_shape(nnx_path, shape, config):
    return tuple(to_hf_layout(nnx_path, np.empty(shape, np.int8), config).shape)


def from_pretrained(
    path: str, dtype=jnp.float32, mesh=None, rules=partitioning.DEFAULT_RULES
) -> QwenVL:
    """Loads an HF Qwen2-VL / Qwen2.5-VL directory into a `QwenVL` (params in `dtype`).

    With `mesh`, every parameter is created directly as a sharded array placed by `rules`.
    """
    config = QwenVLConfig.from_pretrained(path)
    return load_state(path, abstract_model(config, dtype), mesh=mesh, rules=rules)


# ------------------------------------------------------------------------------- saving
def hf_tensors(model: QwenVL) -> Iterator[tuple[str, np.ndarray]]:
    """(hub key, numpy array in HF layout) for every parameter, gathered to the host."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(jax.device_get(var[...]))
        yield nnx_path_to_hf(path), to_hf_layout(path, value, model.config)


def save_pretrained(model: QwenVL, path: str, *, max_shard_bytes: int = 4 << 30) -> None:
    """Writes config.json and (index-sharded when large) safetensors that `transformers` loads."""
    os.makedirs(path, exist_ok=True)
    shards, current, size = [], {}, 0
    for key, value in hf_tensors(model):
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += value.nbytes
    shards.append(current)
    if len(shards) == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(path, name), shard)
            weight_map.update(dict.fromkeys(shard, name))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    config = model.config.to_hf_dict()
    config["dtype"] = {np.dtype(jnp.bfloat16): "bfloat16", np.dtype(np.float16): "float16"}.get(
        np.dtype(model.dtype), "float32"
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
