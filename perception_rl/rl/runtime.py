"""What every training run is built from: config checks, the mesh, the policy, the prompt stream
and the stop signal. Shared by the GRPO trainer (`rl.trainer`) and SFT (`rl.sft`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from perception_rl.data import pipeline
from perception_rl.models import from_pretrained, save_pretrained
from perception_rl.models.qwen_vl import QwenVL, QwenVLConfig, preset
from perception_rl.parallel import DEFAULT_RULES, make_mesh, partitioning
from perception_rl.processing import Processor, tiny_tokenizer_path
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import grpo
from perception_rl.rl.train_step import BATCH_AXES

# Special tokens whose ids a randomly initialised policy takes from its tokenizer.
_TOKEN_NAMES = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# Tokenizer files copied next to an exported policy so it loads as one HF directory.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


class ConfigError(ValueError):
    """A config that cannot run; `perception_rl.main` prints it as one line."""


# ---------------------------------------------------------------------------------- checks
def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; expected one of {', '.join(map(str, choices))}.")


def batch_shards(mesh: Mesh) -> int:
    """Devices the batch axis is split over (data × fsdp)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch(name: str, prompts: int, group_size: int, micro_batches: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the batch shards and the micro-batches."""
    shards = batch_shards(mesh)
    if prompts % shards:
        raise ConfigError(
            f"{name}={prompts} prompts do not split over the {shards} batch "
            f"shards (data x fsdp) of mesh {dict(mesh.shape)}."
        )
    rows = prompts * group_size
    if rows % (micro_batches * shards):
        raise ConfigError(
            f"{rows} rows ({name} x {group_size}) do not split into "
            f"{micro_batches} micro-batches over {shards} batch shards."
        )


def check_rl(rl) -> None:
    """Choices and ranges of the GRPO section."""
    _choice("rl.kl_estimator", rl.kl_estimator, grpo.KL_ESTIMATORS)
    _choice("rl.loss_agg", rl.loss_agg, grpo.LOSS_AGGS)
    _choice("rl.advantage_estimator", rl.advantage_estimator, grpo.ADVANTAGE_ESTIMATORS)
    if rl.num_generations < 2 and rl.advantage_estimator == "grpo":
        raise ConfigError("rl.num_generations must be >= 2 for grpo advantages.")
    if rl.num_iterations < 1:
        raise ConfigError(f"rl.num_iterations={rl.num_iterations} must be >= 1.")


def build_mesh(config) -> Mesh:
    """The config's ('data', 'fsdp', 'tensor') mesh over all devices of all hosts."""
    shape = tuple(config.mesh_shape)
    if len(shape) != 3 or not all(isinstance(s, int) for s in shape):
        raise ConfigError(
            f"mesh_shape={shape!r}; expected three ints (data, fsdp, tensor), "
            "one of them may be -1."
        )
    try:
        return make_mesh(shape)
    except ValueError as e:
        raise ConfigError(f"mesh_shape: {e}") from None


def partition_rules(config) -> partitioning.Rules:
    """Regex → PartitionSpec rules: `config.param_rules` ((regex, axes), ...) or the defaults."""
    rules = config.get("param_rules") or ()
    if not rules:
        return DEFAULT_RULES
    return tuple((regex, jax.sharding.PartitionSpec(*axes)) for regex, axes in rules)


# ---------------------------------------------------------------------------------- policy
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


def abstract_policy(model_config: QwenVLConfig, dtype, seed: int, mesh: Mesh, rules):
    """(graphdef, abstract params with their shardings, init) of a freshly initialised policy.

    `_random_policy` materialises `init` with these shardings; `perception_rl.plan` compiles
    the run's programs for the abstract parameters without creating any.
    """

    def init():
        model = QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])

    # One abstract trace gives both the graph and the shapes (tracing a large init is slow).
    graphdef, shapes = nnx.split(
        nnx.eval_shape(lambda: QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(seed))), nnx.Param
    )
    shapes = nnx.to_pure_dict(shapes)
    shardings = partitioning.state_shardings(shapes, mesh, rules)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return graphdef, abstract, init


def _random_policy(model_config: QwenVLConfig, dtype, seed: int, mesh: Mesh, rules):
    """A freshly initialised policy, each parameter created directly with its sharding."""
    graphdef, abstract, init = abstract_policy(model_config, dtype, seed, mesh, rules)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    return graphdef, jax.jit(init, out_shardings=shardings)()


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def make_processor(config, tokenizer_dir: str, model_config: QwenVLConfig) -> Processor:
    """The processor of `tokenizer_dir` for this model family, with `data.min/max_pixels`."""
    overrides = {
        key: int(config.data[key])
        for key in ("min_pixels", "max_pixels")
        if config.data.get(key) is not None
    }
    processor = Processor.from_pretrained(tokenizer_dir, **overrides)
    return processor.with_family(model_config.family, model_config.vision.tokens_per_second)


def preset_model_config(config, name: str, tokenizer_dir: str):
    """(model config, processor) of preset `name` at random init, with its tokenizer's ids."""
    try:
        model_config = preset(name)
    except ValueError:
        raise ConfigError(
            f"model={name!r} is neither an HF directory (config.json) nor a preset name."
        ) from None
    tokenizer = Processor.from_pretrained(tokenizer_dir).tokenizer
    ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in _TOKEN_NAMES.items()}
    # A preset carries the real Qwen ids; a randomly initialised model uses its tokenizer's.
    model_config = model_config.replace(**ids)
    processor = make_processor(config, tokenizer_dir, model_config)
    model_config = model_config.replace(
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=processor.pad_token_id,
        pad_token_id=processor.pad_token_id,
    )
    return model_config, processor


def load_policy(config, mesh: Mesh) -> Policy:
    """The policy of `config.model`: an HF checkpoint directory, or a preset name at random init.

    An HF directory gives weights, architecture and (unless `config.tokenizer` says otherwise)
    the tokenizer. A preset (e.g. "qwen2p5_vl_tiny") is initialised from `config.seed` and takes
    its special-token ids from `config.tokenizer` (default for "*tiny*" presets: the tiny
    tokenizer shipped with the package). Parameters are created directly with their shardings.
    """
    dtype = jnp.dtype(config.dtype)
    rules = partition_rules(config)
    name = str(config.model)
    default_tokenizer = str(tiny_tokenizer_path()) if "tiny" in name else None
    tokenizer_dir = config.get("tokenizer") or (name if _is_hf_dir(name) else default_tokenizer)
    if tokenizer_dir is None or not os.path.isdir(tokenizer_dir):
        raise ConfigError(f"tokenizer {tokenizer_dir!r} is not a directory; set config.tokenizer.")
    if _is_hf_dir(name):
        model = from_pretrained(name, dtype, mesh=mesh, rules=rules)
        graphdef, params = nnx.split(model, nnx.Param)
        processor = make_processor(config, tokenizer_dir, model.config)
        return Policy(graphdef, nnx.to_pure_dict(params), model.config, processor, tokenizer_dir)
    model_config, processor = preset_model_config(config, name, tokenizer_dir)
    graphdef, params = _random_policy(model_config, dtype, config.seed, mesh, rules)
    return Policy(graphdef, params, model_config, processor, tokenizer_dir)


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


# ------------------------------------------------------------------------------------ data
def example_source(config) -> Any:
    """Random-access training examples of `config.data` (the eval runner's schema).

    `data.source`: "synthetic" (`data.num_examples` examples of `data.split` generated from
    `data.seed` with `SyntheticConfig(**data.synthetic)`) or "tfds" (the built
    `synthetic_perception/<data.tfds_config or task>` in `data.data_dir`).
    """
    data = config.data
    if data.source == "synthetic":
        from perception_rl.data import synthetic

        return synthetic.SyntheticSource(
            config.task,
            data.split,
            data.num_examples,
            seed=data.seed,
            config=synthetic.SyntheticConfig(**dict(data.get("synthetic") or {})),
        )
    if data.source == "tfds":
        return pipeline.tfds_source(
            data.get("tfds_config") or config.task, data.split, os.path.expanduser(data.data_dir)
        )
    raise ConfigError(f"data.source={data.source!r}; expected 'synthetic' or 'tfds'.")


def get_task(config):
    """The task `config.task` of the perception_rl.data.tasks registry, with
    `config.task_options` overriding its fields."""
    from perception_rl.data import tasks

    try:
        return tasks.get_task(config.task, **dict(config.get("task_options") or {}))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"task: {e}") from None


def prompt_batches(
    config, formatter: batch_lib.PromptFormatter, batch_size: int, *, source: Any = None
):
    """This host's iterator of prompt-record batches (checkpointable grain iterator).

    Args:
        config: the run config (`data` section: seed, buckets).
        formatter: example → prompt record (runs in grain's read threads).
        batch_size: records per batch on this host.
        source: random-access examples; default `example_source(config)`.
    """
    source = example_source(config) if source is None else source
    dataset = pipeline.make_dataset(source, seed=config.data.seed, transform=formatter)
    buckets = tuple(config.data.buckets) or None
    batches = pipeline.BucketBatchDataset(
        dataset,
        batch_size,
        buckets=buckets,
        length_fn=batch_lib.prompt_record_length,
        batch_fn=batch_lib.collate_records,
    )
    return iter(batches)


def per_host(global_size: int, name: str) -> int:
    """This host's share of a global batch size."""
    hosts = jax.process_count()
    if global_size % hosts:
        raise ConfigError(f"{name}={global_size} does not split over {hosts} hosts.")
    return global_size // hosts


# ------------------------------------------------------------------------------- stopping
class StopSignal:
    """SIGTERM (a preemption notice) asks the loop to checkpoint and exit after this step.

    Every host must stop at the same step, so `requested()` takes the maximum over hosts.
    """

    def __init__(self):
        self._received = False
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signal handling to the caller
            pass

    def _handle(self, signum, frame):
        del signum, frame
        self._received = True

    def requested(self) -> bool:
        return bool(batch_lib.host_max(np.asarray([int(self._received)]))[0])

    def restore(self) -> None:
        """Puts back the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
