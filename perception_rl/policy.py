"""Config → policy: the one place that turns `config.model` / `config.checkpoint` into weights, an
architecture and a processor, for training, SFT, evaluation and the recipe alike.

    policy = load_policy(config, mesh)                        # train / sft: config.model
    policy = load_policy(config, checkpoint=config.checkpoint)  # eval: what to evaluate

`config.model` is an HF checkpoint directory (weights, architecture, tokenizer) or a preset name
(random init from `config.seed`; special-token ids from its tokenizer). A `checkpoint` is an HF
directory, or an orbax directory of our trainer (`<workdir>/checkpoints`, the latest step unless
`config.eval.step`; or one `<step>` directory) whose architecture `config.model` supplies. The
tokenizer is `config.tokenizer` when set, else the first of the checkpoint / model directories
that holds one, else the tokenizer shipped for "*tiny*" presets. `export_policy` writes an HF
directory that `load_policy` (and transformers) read back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from perception_rl.errors import CheckpointError, ConfigError, config_value
from perception_rl.models import from_pretrained, save_pretrained
from perception_rl.models.qwen_vl import PRESETS, QwenVL, QwenVLConfig, preset
from perception_rl.parallel import DEFAULT_RULES, partitioning
from perception_rl.processing import Processor, tiny_tokenizer_path

# Special tokens whose ids a randomly initialised policy takes from its tokenizer.
_TOKEN_NAMES = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# Qwen's chat turns end with <|im_end|>; base checkpoints may emit <|endoftext|>.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Tokenizer files copied next to an exported policy so it loads as one HF directory.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


@dataclasses.dataclass
class Policy:
    """The policy as a graph definition plus a parameter dict, and its processor.

    Attributes:
        graphdef: `nnx.split` graph of the `QwenVL` module.
        params: nested dict of (sharded) parameter arrays.
        model_config: the architecture and token ids.
        processor: tokenizer, chat template and image processor.
        tokenizer_dir: where the tokenizer files live (copied next to exports).
    """

    graphdef: Any
    params: Any
    model_config: QwenVLConfig
    processor: Processor
    tokenizer_dir: str

    def model(self, params: Any = None) -> QwenVL:
        """The NNX module over `params` (default: the loaded ones); no copy."""
        return nnx.merge(self.graphdef, self.params if params is None else params)

    @property
    def pad_id(self) -> int:
        cfg = self.model_config
        return cfg.pad_token_id if cfg.pad_token_id is not None else self.processor.pad_token_id

    @property
    def eos_id(self) -> int:
        cfg = self.model_config
        eos = cfg.eos_token_id
        return eos if eos is not None else self.processor.tokenizer.eos_token_id

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end a completion (`stop_token_ids`)."""
        return stop_token_ids(self.processor.tokenizer, self.eos_id)


def stop_token_ids(tokenizer, eos_id: int | None = None) -> tuple[int, ...]:
    """The ids that end a completion in training rollouts and evaluation alike: the model's eos
    and Qwen's end-of-turn tokens (`STOP_TOKENS`) that the tokenizer knows."""
    ids = [eos_id] + [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    unknown = tokenizer.unk_token_id
    return tuple(dict.fromkeys(i for i in ids if i is not None and i != unknown))


def is_hf_dir(path: Any) -> bool:
    return path is not None and os.path.isfile(os.path.join(str(path), "config.json"))


def _has_tokenizer(path: Any) -> bool:
    return path is not None and any(
        os.path.isfile(os.path.join(str(path), name))
        for name in ("tokenizer.json", "tokenizer_config.json")
    )


def check_model(name: str) -> None:
    """`config.model` must be an HF checkpoint directory or a preset name."""
    if is_hf_dir(name) or name in PRESETS:
        return
    if os.path.isdir(name):
        where = f"{name} has no config.json"
    elif os.sep in name or name.startswith((".", "~")):
        where = f"no directory {name}"
    else:
        where = "not a directory"
    raise ConfigError(
        f"model={name!r} is neither an HF checkpoint directory ({where}) nor a preset name "
        f"({', '.join(sorted(PRESETS))})."
    )


def tokenizer_dir(config, *candidates: Any) -> str:
    """`config.tokenizer`, else the first candidate directory holding a tokenizer, else the
    packaged tiny tokenizer for "*tiny*" presets."""
    explicit = config_value(config, "tokenizer")
    if explicit is not None:
        if not _has_tokenizer(explicit):
            raise ConfigError(f"tokenizer={explicit!r} holds no tokenizer.json.")
        return str(explicit)
    for candidate in candidates:
        if _has_tokenizer(candidate):
            return str(candidate)
    if "tiny" in str(config_value(config, "model") or ""):
        return str(tiny_tokenizer_path())
    raise ConfigError(
        f"no tokenizer in {[str(c) for c in candidates if c is not None]}; set config.tokenizer."
    )


def make_processor(config, tokenizer: str | os.PathLike, model_config: QwenVLConfig) -> Processor:
    """The processor of `tokenizer` for this model family, with `data.min/max_pixels`."""
    overrides = {
        key: int(value)
        for key in ("min_pixels", "max_pixels")
        if (value := config_value(config, f"data.{key}")) is not None
    }
    processor = Processor.from_pretrained(tokenizer, **overrides)
    return processor.with_family(model_config.family, model_config.vision.tokens_per_second)


def preset_architecture(name: str, tokenizer: str) -> QwenVLConfig:
    """Preset `name` with the special-token ids of `tokenizer` (a preset carries the real Qwen
    ids; a randomly initialised model must use its tokenizer's)."""
    processor = Processor.from_pretrained(tokenizer)
    tokens = processor.tokenizer
    ids = {field: tokens.convert_tokens_to_ids(token) for field, token in _TOKEN_NAMES.items()}
    return preset(name).replace(
        **ids,
        eos_token_id=tokens.eos_token_id,
        bos_token_id=processor.pad_token_id,
        pad_token_id=processor.pad_token_id,
    )


def load_policy(config, mesh: Mesh | None = None, *, checkpoint: Any = None) -> Policy:
    """The policy of `checkpoint` if given, else of `config.model` (module docstring).

    With a `mesh`, parameters are created or read directly with their shardings
    (`config.param_rules`); without one they live on the default device.

    Raises:
        ConfigError: `config.model` is neither an HF directory nor a preset; no tokenizer.
        CheckpointError: `checkpoint` (or `config.eval.step`) does not exist.
    """
    dtype = jnp.dtype(config_value(config, "dtype") or "float32")
    rules = partition_rules(config)
    model_spec = str(config_value(config, "model"))
    if checkpoint is not None and is_hf_dir(checkpoint):
        return _from_hf_dir(config, str(checkpoint), dtype, mesh, rules, model_spec)
    check_model(model_spec)
    if checkpoint is not None:
        params_dir = orbax_params_dir(checkpoint, config_value(config, "eval.step"))
        tokenizer = tokenizer_dir(config, model_spec)
        if is_hf_dir(model_spec):
            model_config = QwenVLConfig.from_pretrained(model_spec)
        else:
            model_config = preset_architecture(model_spec, tokenizer)
        graphdef, abstract = _abstract_params(model_config, dtype)
        shardings = partitioning.state_shardings(abstract, mesh, rules) if mesh else None
        params = restore_params(params_dir, model_config, dtype, shardings)
        processor = make_processor(config, tokenizer, model_config)
        return Policy(graphdef, params, model_config, processor, tokenizer)
    if is_hf_dir(model_spec):
        return _from_hf_dir(config, model_spec, dtype, mesh, rules, model_spec)
    tokenizer = tokenizer_dir(config)
    model_config = preset_architecture(model_spec, tokenizer)
    seed = int(config_value(config, "seed") or 0)
    graphdef, params = _random_params(model_config, dtype, seed, mesh, rules)
    processor = make_processor(config, tokenizer, model_config)
    return Policy(graphdef, params, model_config, processor, tokenizer)


def partition_rules(config) -> partitioning.Rules:
    """Regex → PartitionSpec rules: `config.param_rules` ((regex, axes), ...) or the defaults."""
    rules = config_value(config, "param_rules") or ()
    if not rules:
        return DEFAULT_RULES
    return tuple((regex, jax.sharding.PartitionSpec(*axes)) for regex, axes in rules)


def _from_hf_dir(config, path: str, dtype, mesh, rules, model_spec: str) -> Policy:
    model = (
        from_pretrained(path, dtype, mesh=mesh, rules=rules)
        if mesh
        else from_pretrained(path, dtype)
    )
    graphdef, params = nnx.split(model, nnx.Param)
    tokenizer = tokenizer_dir(config, path, model_spec)
    processor = make_processor(config, tokenizer, model.config)
    return Policy(graphdef, nnx.to_pure_dict(params), model.config, processor, tokenizer)


def _abstract_params(model_config: QwenVLConfig, dtype) -> tuple[Any, Any]:
    """(graphdef, ShapeDtypeStruct pure dict) of the model, without allocating it."""
    abstract = nnx.eval_shape(lambda: QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def abstract_policy(model_config: QwenVLConfig, dtype, seed: int, mesh: Mesh | None, rules):
    """(graphdef, abstract params with their shardings, init) of a freshly initialised policy.

    `_random_params` materialises `init` with these shardings; `perception_rl.plan` compiles
    the run's programs for the abstract parameters without creating any.
    """

    def init():
        model = QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])

    graphdef, shapes = _abstract_params(model_config, dtype)
    if mesh is None:
        return graphdef, shapes, init
    shardings = partitioning.state_shardings(shapes, mesh, rules)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return graphdef, abstract, init


def _random_params(model_config: QwenVLConfig, dtype, seed: int, mesh, rules):
    """A freshly initialised policy, each parameter created directly with its sharding."""
    graphdef, abstract, init = abstract_policy(model_config, dtype, seed, mesh, rules)
    shardings = jax.tree.map(lambda a: a.sharding, abstract) if mesh else None
    return graphdef, jax.jit(init, out_shardings=shardings)()


# ------------------------------------------------------------------------- orbax checkpoints
def orbax_params_dir(checkpoint: str | os.PathLike, step: int | None = None) -> pathlib.Path:
    """`<checkpoint>/<step>/params` (the latest step unless `step`), or `<checkpoint>/params`."""
    root = pathlib.Path(checkpoint)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint={str(checkpoint)!r}: no such directory.")
    if (root / "params").is_dir():
        return root / "params"
    steps = sorted(int(p.name) for p in root.glob("*") if p.name.isdigit() and p.is_dir())
    if not steps:
        raise CheckpointError(
            f"{root}: neither an HF directory (config.json + *.safetensors) "
            "nor an orbax checkpoint (<step>/params)."
        )
    chosen = steps[-1] if step is None else int(step)
    if not (root / str(chosen) / "params").is_dir():
        raise CheckpointError(f"eval.step={chosen}: {root} has no step {chosen}; steps: {steps}.")
    return root / str(chosen) / "params"


def restore_params(
    params_dir: pathlib.Path, model_config: QwenVLConfig, dtype, shardings: Any = None
) -> Any:
    """The pure-dict parameters saved in `params_dir` by an orbax StandardSave: the trainer's
    layout (`nnx.to_pure_dict`, `perception_rl.rl.checkpoint`) or an `nnx.State`; read straight
    into `shardings` when given."""
    import orbax.checkpoint as ocp

    model = nnx.eval_shape(lambda: QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    target = nnx.to_pure_dict(state)
    if shardings is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings
        )
    path = pathlib.Path(params_dir).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(path, target)
        except ValueError:  # orbax's structure mismatch: an `nnx.State` was saved instead
            return nnx.to_pure_dict(checkpointer.restore(path, state))


# ---------------------------------------------------------------------------------- export
def export_policy(policy: Policy, params: Any, path: str) -> None:
    """Writes `params` as a self-contained HF directory: weights, config, tokenizer files and
    the image-processor settings training used (`preprocessor_config.json`).

    Every host takes part in gathering the parameters; only process 0 writes.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    save_pretrained(policy.model(jax.tree.map(np.asarray, params)), path)
    for name in _TOKENIZER_FILES:
        source = os.path.join(policy.tokenizer_dir, name)
        if os.path.exists(source) and not os.path.exists(os.path.join(path, name)):
            shutil.copy(source, path)
    image = dataclasses.asdict(policy.processor.image_processor)
    image["image_processor_type"] = "Qwen2VLImageProcessor"
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(image, f, indent=2)
