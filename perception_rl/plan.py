"""Will it fit? Memory and time of a run on a TPU slice (or GPUs), planned on a CPU machine.

    python -m perception_rl.plan --config=configs/X.py --topology=v5e:2x4 [--mesh=1,8,1] \\
        [--mode=train|sft] [--config.key=value ...]

Every program a run executes is compiled ahead of time for the topology's chips, with abstract
inputs (no weights are created, no TPU is touched): the sampler's prefill and decode loop, the
reference (and, for μ > 1, old-policy) log-probs and the GRPO update, or the SFT update. The
programs are the trainer's own: `rl.loop.make_train_step` builds the `TrainStep` whose
jitted `update` / `logprobs` are lowered here, and the sampler's jitted `_prefill` / `_decode`
are lowered with the argument shapes and shardings `sampling.generate` gives them
(tests/test_plan.py compares the HLO of both sides).

For each program and for the run it prints per chip: argument, output, temporary and peak
bytes against the chip's HBM, FLOPs, bytes accessed and a roofline time; the run's peak adds
what stays resident while a program runs (the optimiser state during sampling, the frozen
reference during the update). It exits with status 1 and one line naming the program, the
bytes needed and the bytes available when something does not fit. `--topology=gpu:8` (or
h100:8, a100:8) plans on 8 virtual CPU devices: XLA's CPU memory analysis, an estimate.

`--extrapolate_depth`: a 2-7B update takes the TPU compiler over an hour on a 2-core machine,
roughly in proportion to the layers, so each program is compiled at three reduced depths
(`fit_depths`: 2/2, 4/2, 2/4 decoder layers / vision blocks, or `--fit_depth=1`: 1/1, 2/1, 1/2;
`--depths` to choose) and every figure is extrapolated linearly in the layer counts to the
model's depth (`extrapolate_programs`); the resident state is the full model's, exactly. The
report says so. `--cache=DIR` keeps each compiled program's figures by the hash of its HLO.

Longer than ~400 lines on purpose: topology table, abstract inputs, lowering of each program
and the report are one pipeline used only by this command.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from typing import Any

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: HBM usable by a program, dense bf16 peak and memory bandwidth."""

    name: str
    hbm: float  # bytes
    flops: float  # bf16 FLOP/s
    bandwidth: float  # HBM bytes/s
    tpu: bool = True


# Public per-chip figures (Cloud TPU and NVIDIA datasheets). HBM is what a program may use:
# v5e's 16 GiB leaves 15.75 GiB to XLA (the figure libtpu reports), the others likewise lose
# a few hundred MiB to the runtime.
CHIPS = {
    "v4": Chip("TPU v4", 31.75 * GiB, 275e12, 1.2e12),
    "v5e": Chip("TPU v5e", 15.75 * GiB, 197e12, 0.82e12),
    "v5p": Chip("TPU v5p", 95.0 * GiB, 459e12, 2.76e12),
    "v6e": Chip("TPU v6e", 31.25 * GiB, 918e12, 1.64e12),
    "h100": Chip("H100 80GB (estimate)", 79.0 * GiB, 989e12, 3.35e12, tpu=False),
    "a100": Chip("A100 80GB (estimate)", 79.0 * GiB, 312e12, 2.0e12, tpu=False),
    "gpu": Chip("GPU 80GB (estimate)", 79.0 * GiB, 989e12, 3.35e12, tpu=False),
}


class PlanError(ValueError):
    """A topology or config the plan cannot compile for."""


# ------------------------------------------------------------------------------ topology
def chip_and_devices(topology: str):
    """(Chip, devices) of "v5e:2x4"-style TPU topologies or "gpu:8" virtual CPU devices."""
    kind, _, shape = topology.partition(":")
    kind = kind.lower()
    if kind not in CHIPS or not shape:
        raise PlanError(f"topology={topology!r}; expected e.g. v5e:2x4, v4:2x2x1, gpu:8.")
    chip = CHIPS[kind]
    if chip.tpu:
        # Several planning processes may load libtpu at once; its lock file would refuse them.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        from jax.experimental import topologies

        try:
            devices = topologies.get_topology_desc(topology, platform="tpu").devices
        except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown shape
            raise PlanError(f"topology {topology!r}: {e} (pip install '.[tpu]')") from None
        cores = 1 + max(getattr(d, "core_on_chip", 0) for d in devices)
        if cores > 1:  # one device per TensorCore (v4 without megacore): a share of the chip
            chip = dataclasses.replace(
                chip,
                name=f"{chip.name} core",
                hbm=chip.hbm / cores,
                flops=chip.flops / cores,
                bandwidth=chip.bandwidth / cores,
            )
        return chip, list(devices)
    import jax

    count = int(shape)
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise PlanError(
            f"topology {topology!r} needs {count} CPU devices, found {len(devices)}; "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={count}."
        )
    return chip, devices[:count]


# ------------------------------------------------------------------------------ policy
def abstract_policy(config, mesh, depth: Depth | None = None):
    """(graphdef, abstract params, model config) exactly as `policy.load_policy` builds them;
    with `depth`, the same architecture with fewer layers (`with_depth`)."""
    import jax.numpy as jnp

    from perception_rl import policy as policy_lib
    from perception_rl.models.qwen_vl import QwenVLConfig, preset
    from perception_rl.processing import tiny_tokenizer_path

    name = str(config.model)
    if os.path.isfile(os.path.join(name, "config.json")):
        model_config = QwenVLConfig.from_pretrained(name)
    else:
        default = str(tiny_tokenizer_path()) if "tiny" in name else None
        tokenizer_dir = config.get("tokenizer") or default
        if tokenizer_dir and os.path.isdir(tokenizer_dir):
            model_config = policy_lib.preset_architecture(name, tokenizer_dir)
        else:  # no tokenizer at hand: the preset's own Qwen ids (shapes are the same)
            model_config = preset(name)
    if depth is not None:
        model_config = with_depth(model_config, depth)
    graphdef, params, _ = policy_lib.abstract_policy(
        model_config, jnp.dtype(config.dtype), config.seed, mesh, policy_lib.partition_rules(config)
    )
    return graphdef, params, model_config


# ------------------------------------------------------------------------------- depth
@dataclasses.dataclass(frozen=True)
class Depth:
    """Layer counts of a model: decoder layers, windowed and full-attention vision blocks."""

    text: int
    vision_windowed: int
    vision_full: int

    @property
    def vision(self) -> int:
        return self.vision_windowed + self.vision_full

    @classmethod
    def parse(cls, text: str) -> Depth:
        """ "T/V" (Qwen2-VL) or "T/W+F" (windowed + full-attention vision blocks)."""
        try:
            t, _, v = text.partition("/")
            w, plus, f = v.partition("+")
            return cls(int(t), int(w), int(f)) if plus else cls(int(t), 0, int(v))
        except ValueError:
            raise PlanError(f"depth {text!r}; expected T/V or T/W+F, e.g. 2/2 or 2/2+1.") from None

    def __str__(self) -> str:
        if not self.vision_windowed:
            return f"{self.text}/{self.vision_full}"
        return f"{self.text}/{self.vision_windowed}+{self.vision_full}"


def model_depth(model_config) -> Depth:
    windowed = sum(model_config.vision.windowed_blocks)
    return Depth(model_config.text.num_layers, windowed, model_config.vision.depth - windowed)


def with_depth(model_config, depth: Depth):
    """`model_config` with `depth`'s layers; full-attention blocks spread evenly and last in
    their group, as Qwen2.5-VL places them (7, 15, 23, 31 of 32)."""
    v = model_config.vision
    if v.window_tokens:
        blocks = depth.vision
        full = tuple(
            round((k + 1) * blocks / depth.vision_full) - 1 for k in range(depth.vision_full)
        )
    else:  # Qwen2-VL: every block attends to the whole image
        full, blocks = v.fullatt_block_indexes, depth.vision_full
    vision = dataclasses.replace(v, depth=blocks, fullatt_block_indexes=full)
    text = dataclasses.replace(model_config.text, num_layers=depth.text)
    return model_config.replace(vision=vision, text=text)


def fit_depths(full: Depth, low: int = 2) -> list[Depth]:
    """The fewest reduced depths that fit a + b·L_t + c·L_v: a base of `low` decoder layers and
    `low` vision blocks, then `low` more of each. Qwen2.5-VL's have `low` (then 2·`low`)
    windowed blocks and one full-attention block (its largest working set; jit drops an input
    no block reads, so both kinds must be there); `extrapolate_programs` counts the model's
    other full-attention blocks as windowed ones (the same parameters, saved activations and,
    a window being a mask here, the same FLOPs)."""
    if full.vision_windowed:
        return [Depth(low, low, 1), Depth(2 * low, low, 1), Depth(low, 2 * low, 1)]
    return [Depth(low, 0, low), Depth(2 * low, 0, low), Depth(low, 0, 2 * low)]


# ------------------------------------------------------------------------------- shapes
@dataclasses.dataclass(frozen=True)
class Shapes:
    """Padded batch sizes of one step, as the trainer's host code pads them.

    Attributes:
        prompts: B, prompts per step (SFT: examples).
        group: G, completions per prompt (SFT: 1).
        completion: T, completion tokens (max new tokens; SFT: the answer bucket).
        prompt_length: P, bucketed prompt tokens (`prompts.bucket`).
        patches: real patches of one image; padded_patches: their bucket per prompt.
        sampler_chunk: prompts per sampler call (`rl.sampler_chunk`; B when unset).
    """

    prompts: int
    group: int
    completion: int
    prompt_length: int
    patches: int
    padded_patches: int
    sampler_chunk: int


def image_patches(config, model_config) -> int:
    """Patches of the largest image a step sees: `plan.image_pixels` (default: the synthetic
    images' size, else data.max_pixels), smart-resized to a multiple of the merge factor."""
    vision = model_config.vision
    factor = vision.patch_size * vision.spatial_merge_size
    pixels = config.plan.get("image_pixels")
    synthetic = dict(config.data.get("synthetic") or {})
    if pixels is None and config.data.source == "synthetic" and synthetic.get("max_size"):
        pixels = int(synthetic["max_size"]) ** 2
    pixels = min(int(pixels or config.data.max_pixels), int(config.data.max_pixels))
    side = max(factor, int(math.sqrt(pixels)) // factor * factor)
    return (side // vision.patch_size) ** 2


def step_shapes(config, model_config, mode: str) -> Shapes:
    from perception_rl.models.qwen_vl import prompts as prompts_lib
    from perception_rl.rl import batch as batch_lib

    patches = image_patches(config, model_config)
    merged = patches // model_config.vision.spatial_merge_size**2
    length = prompts_lib.bucket(merged + config.plan.text_tokens, prompts_lib.MIN_PROMPT_LENGTH)
    padded = prompts_lib.bucket(patches, prompts_lib.MIN_PATCHES)
    if mode == "sft":
        answer = prompts_lib.bucket(config.plan.answer_tokens, batch_lib.MIN_ANSWER_LENGTH)
        return Shapes(config.sft.batch_size, 1, answer, length, patches, padded, 0)
    rl = config.rl
    chunk = rl.get("sampler_chunk") or rl.prompts_per_step
    return Shapes(
        rl.prompts_per_step, rl.num_generations, rl.max_new_tokens, length, patches, padded, chunk
    )


def _sds(shape, dtype, sharding):
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_batch(shapes: Shapes, model_config, sharding, *, grpo: bool) -> dict:
    """The batch `prompts.pad_prompts` + the rollout collector produce, as abstract arrays."""
    import jax.numpy as jnp

    b, p, n = shapes.prompts, shapes.prompt_length, shapes.padded_patches
    rows, t = b * shapes.group, shapes.completion
    i32 = lambda *shape: _sds(shape, jnp.int32, sharding)
    prompts = {
        "input_ids": i32(b, p),
        "attention_mask": i32(b, p),
        "position_ids": i32(b, 3, p),
        "pixel_values": _sds((b, n, model_config.vision.patch_dim), jnp.float32, sharding),
        "image_grid_thw": i32(b, 1, 3),
        "frame_segments": i32(b, n),
        "window_segments": i32(b, n),
        "patch_rows": i32(b, n),
        "patch_cols": i32(b, n),
    }
    completions = {"tokens": i32(rows, t), "mask": _sds((rows, t), jnp.float32, sharding)}
    if grpo:
        completions["advantages"] = _sds((rows,), jnp.float32, sharding)
    return {"prompts": prompts, "completions": completions}


# ------------------------------------------------------------------------------ programs
@dataclasses.dataclass
class Program:
    """One compiled program's per-chip figures.

    `resident` is what stays in HBM beside the program's own buffers while it runs (state the
    program does not take as an argument); `peak` = arguments + outputs - aliased + temporaries.
    """

    name: str
    arguments: float
    outputs: float
    aliased: float
    temporaries: float
    code: float
    flops: float
    bytes_accessed: float
    cost_seconds: float
    repeats: int = 1  # the decode loop's body runs once per new token
    resident: float = 0.0
    refused: bool = False  # the compiler refused it for lack of HBM (temporaries as it said)
    # Extrapolated programs: temporaries' fit a + b·L_t + c·L_v in bytes, (a, b, c).
    temporaries_per_layer: tuple[float, ...] = ()

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @property
    def run_peak(self) -> float:
        return self.peak + self.resident

    def seconds(self, chip: Chip) -> float:
        """Roofline time (the slower of compute and memory), times the loop's repeats."""
        roofline = max(self.flops / chip.flops, self.bytes_accessed / chip.bandwidth)
        return self.repeats * roofline


_SIZE = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024 * GiB}


def _overflow(name: str, error: Exception, *, repeats: int, resident: float) -> Program:
    """A program the TPU compiler refused for lack of HBM: its reported temporaries."""
    match = _SIZE.search(str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not match:
        raise error
    temporaries = float(match.group(1)) * _UNITS[match.group(2)]
    return Program(name, 0, 0, 0, temporaries, 0, 0, 0, 0, repeats, resident, refused=True)


def compile_once(lowered):
    """`lowered.compile()`, kept on the object: the decode plan reads the prefill's outputs."""
    if getattr(lowered, "_plan_compiled", None) is None:
        lowered._plan_compiled = lowered.compile()
    return lowered._plan_compiled


def measure(name: str, lowered, *, repeats: int = 1, resident: float = 0.0) -> Program:
    """Compiles `lowered` and reads XLA's memory and cost analyses (per device)."""
    import jax

    try:
        compiled = compile_once(lowered)
    except jax.errors.JaxRuntimeError as e:  # libtpu refuses programs that overflow HBM
        return _overflow(name, e, repeats=repeats, resident=resident)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older jax returned one dict per computation
        cost = cost[0] if cost else {}
    return Program(
        name,
        arguments=memory.argument_size_in_bytes,
        outputs=memory.output_size_in_bytes,
        aliased=memory.alias_size_in_bytes,
        temporaries=memory.temp_size_in_bytes,
        code=memory.generated_code_size_in_bytes,
        flops=max(float(cost.get("flops", 0.0)), 0.0),
        bytes_accessed=max(float(cost.get("bytes accessed", 0.0)), 0.0),
        cost_seconds=max(float(cost.get("optimal_seconds", 0.0)), 0.0),
        repeats=repeats,
        resident=resident,
    )


def per_chip_bytes(tree: Any) -> float:
    """Bytes one device holds of a pytree of sharded abstract arrays (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return float(total)


def sampler_lowerings(graphdef, params, shapes: Shapes, model_config, mesh, rollout) -> list:
    """(name, lowered, repeats) of the sampler's prefill and decode loop for one chunk of
    prompts, with the shapes and shardings `sampling.generate` gives them (host-side numpy
    inputs are replicated over the mesh)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from perception_rl.sampling import sampler

    host = None  # numpy inputs: jit places them (replicated over the parameters' mesh)
    length = shapes.prompt_length
    chunk = dataclasses.replace(shapes, prompts=shapes.sampler_chunk)
    prompt = abstract_batch(chunk, model_config, host, grpo=True)["prompts"]
    cache_size = length + shapes.completion
    prefill = sampler._prefill.lower(
        graphdef, params, prompt, cache_size=cache_size, num_samples=shapes.group
    )
    try:
        shardings = compile_once(prefill).output_shardings
    except jax.errors.JaxRuntimeError:  # refused for lack of HBM: assume replicated outputs
        shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), prefill.out_info)
    outputs = jax.tree.map(
        lambda info, sharding: _sds(info.shape, info.dtype, sharding), prefill.out_info, shardings
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    decode = sampler._decode.lower(
        graphdef,
        params,
        *outputs,
        _sds(key.shape, key.dtype, host),
        _sds((), jnp.float32, host),
        None,  # tokens seen: training samples without a repetition penalty
        prompt_length=length,
        max_new_tokens=shapes.completion,
        temperature=float(rollout.temperature),
        top_k=int(rollout.top_k),
        eos_ids=tuple(int(e) for e in rollout.eos_ids),
        pad_id=int(rollout.pad_id),
        repetition_penalty=1.0,  # what training's `generate` call passes
    )
    return [("sampler prefill", prefill, 1), ("sampler decode", decode, shapes.completion)]


@dataclasses.dataclass
class Plan:
    """The compiled programs of one step and the chip they were compiled for."""

    chip: Chip
    chips: int
    mesh_shape: dict
    shapes: Shapes
    programs: list[Program]
    sampler_calls: int = 1  # chunks of prompts per step
    estimate: Estimate | None = None
    depth: Depth | None = None  # the model's layers
    fitted_from: tuple[Depth, ...] = ()  # reduced depths the figures were extrapolated from

    @property
    def peak(self) -> Program:
        return max(self.programs, key=lambda p: p.run_peak)

    @property
    def fits(self) -> bool:
        return self.peak.run_peak <= self.chip.hbm

    def step_seconds(self) -> float:
        return sum(self.estimate.phases.values()) if self.estimate else 0.0

    def utilisation(self) -> float:
        """Model FLOPs utilisation of the estimated step (`Estimate`)."""
        seconds = self.step_seconds()
        if not seconds:
            return 0.0
        return self.estimate.model_flops / (seconds * self.chips * self.chip.flops)


# ------------------------------------------------------------------------------ estimate
@dataclasses.dataclass
class Estimate:
    """Step time by phase from a roofline of model FLOPs and bytes (XLA's cost analysis counts a
    loop body once, so it cannot time the decode loop, the micro-batch scan or the chunked
    head). Compute phases run at the chips' peak; each decode step reads the weights and the
    chunk's KV cache. The sampler's inputs are replicated, so every chip runs every rollout.

    Attributes:
        phases: seconds of sampler prefill / decode, log-probs and update.
        model_flops: useful FLOPs of the step (6·N·tokens for the update, 2·N·tokens otherwise),
            counting the sampler's once.
    """

    phases: dict
    model_flops: float


def param_counts(params) -> tuple[float, float, float]:
    """(vision, decoder layers, embedding/head) parameter counts of the abstract params."""
    import jax

    counts = {"visual": 0.0, "layers": 0.0, "other": 0.0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = "/".join(str(getattr(k, "key", k)) for k in path)
        group = "visual" if "visual" in keys else "layers" if "layers" in keys else "other"
        counts[group] += float(math.prod(leaf.shape))
    return counts["visual"], counts["layers"], counts["other"]


def estimate(config, model_config, params, shapes: Shapes, chip: Chip, chips: int) -> Estimate:
    import jax.numpy as jnp

    text, vision = model_config.text, model_config.vision
    n_vis, n_layers, _ = param_counts(params)
    attention = 4 * text.num_layers * text.num_heads * text.head_dim  # per token per key
    head = 2 * text.hidden_size * text.vocab_size
    token = lambda context: 2 * n_layers + head + attention * context
    patch = 2 * n_vis + 4 * vision.depth * vision.width * shapes.patches
    b, g, p, t = shapes.prompts, shapes.group, shapes.prompt_length, shapes.completion
    prompt = p * token(p / 2) + shapes.patches * patch
    completions = b * g * t * token(p + t / 2)
    forward = b * prompt + completions
    remat = {"none": 0.0, "per_layer": 1.0, "save_dots": 0.5}[
        _remat_name(config.train.get("remat_policy") or config.train.remat)
    ]
    compute = lambda flops: flops / (chips * chip.flops)
    phases, model_flops = {}, 0.0
    if shapes.sampler_chunk:  # GRPO
        calls = shapes.prompts // shapes.sampler_chunk
        rows = shapes.sampler_chunk * g
        width = jnp.dtype(config.dtype).itemsize
        weights = width * (n_layers + text.hidden_size * text.vocab_size)
        kv = 2 * text.num_layers * text.num_kv_heads * text.head_dim * width  # k and v
        step_bytes = weights + rows * (p + t / 2) * kv
        step_flops = rows * token(p + t / 2)
        phases["sampler prefill"] = b * prompt / chip.flops  # replicated: one chip does all
        phases["sampler decode"] = (
            calls * t * max(step_flops / chip.flops, step_bytes / chip.bandwidth)
        )
        model_flops += b * prompt + completions
        logprob_passes = (1 if config.rl.beta else 0) + (1 if config.rl.num_iterations > 1 else 0)
        phases["log-probs"] = logprob_passes * compute(forward)
        model_flops += logprob_passes * forward
        updates = config.rl.num_iterations
    else:
        updates = 1
    phases["update"] = updates * compute((3 + remat) * forward)
    model_flops += updates * 3 * forward
    return Estimate(phases, model_flops)


def _remat_name(remat) -> str:
    from perception_rl.models.qwen_vl.layers import remat_policy

    return remat_policy(remat)


def rollout_settings(config, model_config):
    """Sampling settings as the trainer's `rollout_config` derives them (no reward needed)."""
    eos = model_config.eos_token_id if model_config.eos_token_id is not None else 0
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else 0
    # `policy.stop_token_ids`: eos (<|im_end|>), then <|endoftext|>, Qwen's pad token.
    stops = tuple(dict.fromkeys(i for i in (eos, model_config.pad_token_id) if i is not None))
    return dataclasses.make_dataclass("Rollout", ["temperature", "top_k", "eos_ids", "pad_id"])(
        config.rl.temperature, config.rl.top_k, stops, pad
    )


@dataclasses.dataclass
class Setup:
    """What the trainer builds before its first step, abstract: mesh, policy and `TrainStep`."""

    chip: Chip
    devices: list
    mesh: Any
    graphdef: Any
    params: Any
    model_config: Any
    step_fn: Any
    mode: str
    topology: str = ""

    @property
    def grpo(self) -> bool:
        return self.mode == "train"


def setup(
    config, topology: str, mesh_shape=None, mode: str = "train", depth: Depth | None = None
) -> Setup:
    """The trainer's mesh, policy graph and `TrainStep`, built by the trainer's own functions;
    with `depth`, for the same architecture with fewer layers."""
    from perception_rl.parallel import make_mesh
    from perception_rl.policy import Policy
    from perception_rl.rl import loop, runtime, sft, trainer

    chip, devices = chip_and_devices(topology)
    try:
        mesh = make_mesh(tuple(mesh_shape or config.mesh_shape), devices)
    except ValueError as e:
        raise PlanError(f"mesh: {e}") from None
    graphdef, params, model_config = abstract_policy(config, mesh, depth)
    if mode == "train":
        runtime.check_rl(config.rl)
        settings, optim, updates = trainer.step_config(config), config.optim, config.train.num_steps
    else:
        settings, optim, updates = sft.step_config(config), config.sft.optim, config.sft.num_steps
    policy = Policy(graphdef, params, model_config, None, "")
    step_fn = loop.make_train_step(config, policy, mesh, settings, optim, updates)
    return Setup(chip, devices, mesh, graphdef, params, model_config, step_fn, mode, topology)


def resident_bytes(config, s: Setup) -> dict[str, float]:
    """Per-chip bytes of the buffers that live across the step: weights, optimiser, reference."""
    state = s.step_fn.abstract_state(s.params)
    weights = per_chip_bytes(s.params)
    reference = weights if s.grpo and config.rl.beta else 0.0
    return {
        "weights": weights,
        "optimizer": per_chip_bytes(state.opt_state),
        "reference": reference,
    }


def resident_of(name: str, held: dict[str, float]) -> float:
    """What stays in HBM beside program `name`'s own buffers (`resident_bytes`' parts): the
    optimiser and the reference while sampling, the policy's whole state while the reference
    scores, the reference during the update."""
    if name == "reference log-probs":
        return held["weights"] + held["optimizer"]
    if name.startswith("sampler") or name == "old-policy log-probs":
        return held["optimizer"] + held["reference"]
    if name == "grpo update":
        return held["reference"]
    return 0.0


def lowerings(
    config, s: Setup, shapes: Shapes, only: str | None = None
) -> list[tuple[str, Any, int, float]]:
    """(name, lowered program, repeats, resident bytes) of every program of one step, in the
    order the trainer runs them (`rl.trainer.grpo_step`, or the SFT step); with `only`, just
    the programs whose name contains it."""
    wanted = lambda name: not only or only in name
    import jax
    import jax.numpy as jnp

    from perception_rl.rl import runtime

    micro = config.train.num_micro_batches if s.grpo else config.sft.num_micro_batches
    runtime.check_batch("batch", shapes.prompts, shapes.group, micro, s.mesh)
    step_fn = s.step_fn
    state = step_fn.abstract_state(s.params)
    batch = abstract_batch(shapes, s.model_config, step_fn.batch_sharding, grpo=s.grpo)
    held = resident_bytes(config, s)
    if not s.grpo:
        return [("sft update", step_fn.update.lower(state, batch), 1, resident_of("sft", held))]
    if shapes.prompts % shapes.sampler_chunk:
        raise PlanError(
            f"rl.sampler_chunk={shapes.sampler_chunk} does not divide {shapes.prompts} prompts."
        )
    rollout = rollout_settings(config, s.model_config)
    out = []
    if wanted("sampler prefill") or wanted("sampler decode"):
        out = [
            (name, lowered, repeats, resident_of(name, held))
            for name, lowered, repeats in sampler_lowerings(
                s.graphdef, state.params, shapes, s.model_config, s.mesh, rollout
            )
        ]
    completions = dict(batch["completions"])
    logps = jax.ShapeDtypeStruct(
        completions["mask"].shape, jnp.float32, sharding=step_fn.batch_sharding
    )
    if held["reference"] and wanted("reference log-probs"):
        lowered = step_fn.logprobs.lower(s.params, batch)
        out.append(("reference log-probs", lowered, 1, resident_of("reference log-probs", held)))
    if held["reference"]:
        completions["ref_logps"] = logps
    if config.rl.num_iterations > 1 and wanted("old-policy log-probs"):
        lowered = step_fn.logprobs.lower(state.params, dict(batch, completions=dict(completions)))
        name = "old-policy log-probs"
        out.append((name, lowered, 1, resident_of(name, held)))
    if config.rl.num_iterations > 1:
        completions["old_logps"] = logps
    batch = dict(batch, completions=completions)
    if wanted("grpo update"):
        lowered = step_fn.update.lower(state, batch)
        out.append(("grpo update", lowered, 1, resident_of("grpo update", held)))
    return [entry for entry in out if wanted(entry[0])]


def make_plan(
    config,
    topology: str,
    mesh_shape=None,
    mode: str = "train",
    only: str | None = None,
    state_only: bool = False,
    extrapolate: bool | int | list = False,
    log=None,
    cache: str | None = None,
) -> Plan:
    """Compiles every program of one step of `config` for `topology`; see the module doc.

    `state_only`: no compile, only the buffers that live across the step (weights, optimiser
    state, reference): a lower bound, seconds instead of minutes.

    `extrapolate`: compile each program at the reduced depths of `fit_depths` (an int: their
    smallest layer count, default 2; a list: those depths, `Depth.parse`) and extrapolate every
    figure linearly in the layer counts to the model's depth (`extrapolate_programs`); what
    stays resident is the full model's.
    `log(text)` is told each compile's time; `cache`: see `compile_programs`."""
    s = setup(config, topology, mesh_shape, mode)
    shapes = step_shapes(config, s.model_config, mode)
    calls = shapes.prompts // shapes.sampler_chunk if s.grpo else 1
    held = resident_bytes(config, s)
    timing = estimate(config, s.model_config, s.params, shapes, s.chip, len(s.devices))
    state_bytes = sum(held.values())
    full = model_depth(s.model_config)
    result = lambda programs, fitted=(): Plan(
        s.chip, len(s.devices), dict(s.mesh.shape), shapes, programs, calls, timing, full, fitted
    )
    if state_only or state_bytes > s.chip.hbm:  # no compile needed to know this one
        return result([Program("train state", state_bytes, 0, 0, 0, 0, 0, 0, 0)])
    if not extrapolate:
        return result(compile_programs(config, s, shapes, only, log, cache=cache))
    if isinstance(extrapolate, (list, tuple)):  # explicit reduced depths
        depths = [d if isinstance(d, Depth) else Depth.parse(d) for d in extrapolate]
    else:
        depths = fit_depths(full, 2 if extrapolate is True else int(extrapolate))
    runs = []
    for depth in depths:
        reduced = setup(config, topology, mesh_shape, mode, depth)
        runs.append((depth, compile_programs(config, reduced, shapes, only, log, depth, cache)))
    programs = extrapolate_programs(runs, full)
    for program in programs:  # the full model's resident state, exactly
        program.resident = resident_of(program.name, held)
    return result(programs, tuple(depths))


def compile_programs(
    config, s: Setup, shapes: Shapes, only=None, log=None, depth=None, cache: str | None = None
):
    """`measure` of each of `lowerings`, timing each compile for `log`. With `cache` (a
    directory), a program's figures are kept in a JSON file named by the hash of its HLO text
    and the topology, and read from there instead of compiling the same program again."""
    import hashlib
    import json
    import time

    programs = []
    at = f" at depth {depth}" if depth else ""
    for name, lowered, repeats, resident in lowerings(config, s, shapes, only):
        path = None
        if cache:
            text = f"{s.topology}\n{s.chip.name}\n{lowered.as_text()}"
            digest = hashlib.sha256(text.encode()).hexdigest()[:24]
            path = os.path.join(cache, f"{name.replace(' ', '_')}-{digest}.json")
            if os.path.exists(path):
                with open(path) as f:
                    figures = json.load(f)
                programs.append(Program(**dict(figures, repeats=repeats, resident=resident)))
                if log:
                    log(f"{name}{at}: figures from {path}")
                continue
        start = time.perf_counter()
        program = measure(name, lowered, repeats=repeats, resident=resident)
        programs.append(program)
        if log:
            log(f"compiled {name}{at} in {time.perf_counter() - start:.0f} s")
        if path:
            os.makedirs(cache, exist_ok=True)
            figures = dataclasses.asdict(program)
            with open(path + ".tmp", "w") as f:
                json.dump({k: v for k, v in figures.items() if k not in ("repeats", "resident")}, f)
            os.replace(path + ".tmp", path)
    return programs


_FIGURES = (
    "arguments",
    "outputs",
    "aliased",
    "temporaries",
    "code",
    "flops",
    "bytes_accessed",
    "cost_seconds",
)


def _linear_fit(x, y):
    """Least squares of y on x's columns (an intercept, then layer counts), with no layer
    coefficient below 0: a figure that shrank as layers were added (XLA fused or scheduled
    the smaller program differently) is held at the largest compile's value instead of being
    extrapolated downwards over tens of layers, which errs on the side of "does not fit"."""
    import numpy as np

    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    if (coef[1:] >= 0).all():
        return coef
    coef[1:] = np.maximum(coef[1:], 0.0)
    coef[0] = float(np.max(y - x[:, 1:] @ coef[1:]))  # the intercept covers every compile
    return coef


def extrapolate_programs(runs: list[tuple[Depth, list[Program]]], full: Depth) -> list[Program]:
    """Each figure of each program fitted as a + b·L_t + c·L_v through the reduced depths'
    compiles (`fit_depths`), evaluated at `full`.

    Arguments, outputs and aliased bytes are sums over parameters, so exactly linear; FLOPs and
    bytes accessed are sums over layers; temporaries are linear where every layer keeps the
    same saved activations and one layer's working set is live at a time (rematerialisation),
    which `tests/test_plan.py` checks against a real compile; a negative layer term is held at
    0 (`_linear_fit`). A program refused for lack of HBM at any reduced depth has only its
    temporaries fitted."""
    import numpy as np

    rows = [(1, d.text, d.vision) for d, _ in runs]
    windowed = any(d.vision_windowed for d, _ in runs)
    if windowed and len({d.vision_full for d, _ in runs}) != 1:
        raise PlanError(f"depths {[str(d) for d, _ in runs]}: mixed kinds of vision block.")
    x = np.array(rows, dtype=np.float64)
    target = np.array((1, full.text, full.vision), dtype=np.float64)
    out = []
    for index, program in enumerate(runs[0][1]):
        column = [programs[index] for _, programs in runs]
        refused = any(p.refused for p in column)
        values, per_layer = {}, ()
        for field in _FIGURES:
            if refused and field != "temporaries":
                values[field] = 0.0
                continue
            y = np.array([getattr(p, field) for p in column], dtype=np.float64)
            coef = _linear_fit(x, y)
            values[field] = max(float(target @ coef), 0.0)
            if field == "temporaries":
                per_layer = tuple(float(c) for c in coef)
        out.append(
            dataclasses.replace(program, **values, refused=refused, temporaries_per_layer=per_layer)
        )
    return out


# ------------------------------------------------------------------------------- report
def _gib(x: float) -> str:
    return f"{x / GiB:6.2f}"


def report(plan: Plan) -> str:
    chip = plan.chip
    s = plan.shapes
    lines = [
        f"{chip.name} x {plan.chips}, mesh {plan.mesh_shape}, HBM {chip.hbm / GiB:.2f} GiB/chip"
        + ("" if chip.tpu else " (CPU memory analysis: an estimate)"),
        (
            f"step: {s.prompts} prompts x G={s.group}, prompt {s.prompt_length} tokens "
            f"({s.patches} patches), {s.completion} new tokens; sampler: {plan.sampler_calls} "
            f"call(s) of {s.sampler_chunk or s.prompts} prompts"
        ),
        "per chip, GiB        args   outs  temps   peak +resident   run   TFLOP  GB acc.   xla s",
    ]
    for p in plan.programs:
        lines.append(
            f"{p.name + ('*' if p.refused else ''):<20}{_gib(p.arguments)} {_gib(p.outputs)} {_gib(p.temporaries)} "
            f"{_gib(p.peak)} {_gib(p.resident)}  {_gib(p.run_peak)}"
            f"  {p.repeats * p.flops / 1e12:6.2f}  {p.repeats * p.bytes_accessed / 1e9:7.1f}"
            f"  {p.seconds(chip):6.2f}"
        )
    if plan.fitted_from:
        depths = ", ".join(str(d) for d in plan.fitted_from)
        lines.append(
            f"extrapolated to depth {plan.depth} (decoder layers / vision blocks) from compiles "
            f"at depths {depths}: each figure linear in the layer counts; resident state exact"
        )
        for p in plan.programs:
            if p.temporaries_per_layer:
                terms = ", ".join(f"{c / GiB:+.3f}" for c in p.temporaries_per_layer)
                lines.append(
                    f"  {p.name}: temporaries GiB = a + b·L_t + c·L_v, (a, b, c) = ({terms})"
                )
    if any(p.refused for p in plan.programs):
        lines.append(
            "* refused by the compiler for lack of HBM: temporaries as it reported them; "
            "arguments and costs unknown"
        )
    peak = plan.peak
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    if plan.estimate:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in plan.estimate.phases.items())
        lines.append(f"estimated step (roofline of model FLOPs and bytes): {phases}")
    lines.append(
        f"run: peak {peak.run_peak / GiB:.2f} GiB/chip in {peak.name} of {chip.hbm / GiB:.2f}: "
        f"{verdict}; estimated step {plan.step_seconds():.1f} s, "
        f"MFU {100 * plan.utilisation():.0f}%"
    )
    return "\n".join(lines)


def shortfall(plan: Plan) -> str:
    """The one line printed when a run does not fit."""
    peak = plan.peak
    return (
        f"perception_rl.plan: does not fit: {peak.name} needs {peak.run_peak / GiB:.2f} GiB "
        f"per chip, {plan.chip.name} has {plan.chip.hbm / GiB:.2f} GiB "
        f"(short by {(peak.run_peak - plan.chip.hbm) / GiB:.2f} GiB)"
    )


# --------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    if "plan_topology" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
        flags.DEFINE_string("topology", "v5e:2x4", "v5e:2x4, v4:2x2x1, v5p:2x2x1, gpu:8, ...")
        flags.DEFINE_string("mesh", None, "data,fsdp,tensor (default: config.mesh_shape)")
        flags.DEFINE_enum("mode", "train", ("train", "sft"), "GRPO or SFT programs")
        flags.DEFINE_string("only", None, "compile only programs whose name contains this")
        flags.DEFINE_bool("state_only", False, "no compile: weights + optimiser + reference")
        flags.DEFINE_bool(
            "extrapolate_depth",
            False,
            "compile at a few reduced depths and extrapolate linearly to the model's layers",
        )
        flags.DEFINE_integer("fit_depth", 2, "smallest layer count of the reduced depths")
        flags.DEFINE_list("depths", None, "reduced depths to fit, e.g. 2/2,4/2,2/4 (any order)")
        flags.DEFINE_string("cache", None, "directory keeping each compiled program's figures")
        flags.DEFINE_bool("plan_topology", True, "internal: flags defined")
    argv = flags.FLAGS(sys.argv if argv is None else argv)
    config = flags.FLAGS.config
    with_plan_defaults(config)
    mesh = tuple(int(x) for x in flags.FLAGS.mesh.split(",")) if flags.FLAGS.mesh else None
    try:
        plan = make_plan(
            config,
            flags.FLAGS.topology,
            mesh,
            flags.FLAGS.mode,
            flags.FLAGS.only,
            flags.FLAGS.state_only,
            (flags.FLAGS.depths or flags.FLAGS.fit_depth)
            if flags.FLAGS.extrapolate_depth
            else False,
            log=lambda text: print(f"perception_rl.plan: {text}", file=sys.stderr, flush=True),
            cache=flags.FLAGS.cache,
        )
    except (PlanError, ValueError) as e:
        print(f"perception_rl.plan: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(report(plan))
    if not plan.fits:
        print(shortfall(plan), file=sys.stderr)
        return 1
    return 0


def with_plan_defaults(config):
    """Adds the `plan` section (shape assumptions) to configs that lack it."""
    import ml_collections

    with config.unlocked():
        if "plan" not in config:
            config.plan = ml_collections.ConfigDict()
        plan = config.plan
        for key, value in (("image_pixels", None), ("text_tokens", 64), ("answer_tokens", 128)):
            if key not in plan:
                plan[key] = value
        if "sampler_chunk" not in config.rl:
            config.rl.sampler_chunk = None
    return config


if __name__ == "__main__":
    sys.exit(main())
