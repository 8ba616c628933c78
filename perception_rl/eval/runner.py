"""Eval runner: greedy predictions of a checkpoint on a split, the papers' metrics and table.

    python -m perception_rl.main --mode=eval --config=configs/synthetic.py \\
        --config.checkpoint=/path/to/checkpoint --workdir=/tmp/run

calls `evaluate(config, workdir)`, which decodes the split greedily in batches (tqdm progress
bar), maps every prediction back to original image pixels (`Task.predict`), scores it with the
task's metrics and writes, under `<workdir>/eval/<config.eval.name or split>/`:

  predictions.jsonl  one record per example: image_id, completion, prediction and ground truth
                     (original pixels), reward and reward components (training's reward);
  metrics.json       task, split, checkpoint, family, example count, metrics (NaN as null);
  table.md           the printed table, in the papers' layout (values ×100);
  gallery.png        the worst and best examples by reward: ground truth green, predictions
                     red (DIP look boxes orange dashed), OCR text under each image.

Config fields read (`ml_collections.ConfigDict` or anything with attributes; defaults in []):
  task                  registered task name (`perception_rl.data.tasks.TASKS`).
  model                 architecture: an HF directory, or a preset name (`models.preset`).
  checkpoint            what to evaluate: an HF directory (config.json + safetensors), or an
                        orbax directory of our trainer holding `<step>/params` (the NNX
                        `nnx.Param` state as `nnx.to_pure_dict` or `nnx.State`, saved by an
                        orbax `StandardSave`, as `perception_rl.rl.checkpoint` does: pass
                        `<workdir>/checkpoints`; the latest step unless `eval.step`), or that
                        `<step>` directory itself.
                        [None: evaluate `model`, which must then be an HF directory.]
  tokenizer             tokenizer directory when neither `checkpoint` nor `model` holds one
                        [the packaged tiny tokenizer for "*tiny*" presets].
  dtype                 parameter dtype ["float32"].
  eval.split            split name ["validation"]; eval.num_examples: first N [all; 64 for the
                        generated source]; eval.batch_size [8]; eval.max_new_tokens [256];
                        eval.name: output sub-directory [split]; eval.step: orbax step [latest];
                        eval.gallery_size: worst and best examples drawn [4];
                        eval.predictions_file: re-score this predictions.jsonl instead of
                        decoding (no model is loaded) [None].
  data.source           "synthetic" (generated in-process), "tfds" (a built
                        `synthetic_perception/<data.tfds_config or task>` in data.data_dir) or
                        "jsonl" (`<data.source_dir>/<split>.jsonl` annotations with image paths
                        relative to it, the TFDS builder's raw-source layout) ["synthetic"].
  data.seed [0], data.synthetic (dict of `SyntheticConfig` fields) [{}]: generated source.
  data.min_pixels, data.max_pixels: image-processor overrides [the checkpoint's].

A caller with its own checkpoint layout passes `load_policy(config) -> (model, processor)`.
Decoding is greedy (temperature 0, DESIGN §3); eval.repetition_penalty [1.0] is HF's (PR1's
grounding eval uses 1.05).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.data import synthetic
from perception_rl.data.tasks import ImageGeometry, Task, get_task
from perception_rl.eval.metrics.records import RecordError

Example = dict[str, Any]
Record = dict[str, Any]
ANNOTATION_KEYS = ("boxes", "labels", "points", "text", "ignore_boxes")
DEFAULT_SYNTHETIC_EXAMPLES = 64


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What `evaluate` wrote and computed."""

    metrics: dict[str, float]
    table: str
    output_dir: pathlib.Path
    predictions_path: pathlib.Path
    metrics_path: pathlib.Path
    gallery_path: pathlib.Path | None


def evaluate(
    config,
    workdir: str | os.PathLike,
    *,
    load_policy: Callable[[Any], tuple[Any, Any]] | None = None,
) -> EvalResult:
    """Evaluates `config.checkpoint` on `config.eval.split` (see the module docstring).

    Raises:
      RecordError: a malformed ground-truth record or a prediction for an unknown image id,
        naming the record.
      ValueError / FileNotFoundError: an unusable config or checkpoint.
    """
    task = get_task(option(config, "task"))
    split = option(config, "eval.split", "validation")
    source = make_source(config, task, split)
    _check_task(source, task)
    out = pathlib.Path(workdir) / "eval" / str(option(config, "eval.name") or split)
    out.mkdir(parents=True, exist_ok=True)
    records, examples, family = _predictions(config, task, source, load_policy)
    write_jsonl(out / "predictions.jsonl", records)  # First: decoding is the costly part.
    metrics = score_predictions(task, records, examples)
    label = str(option(config, "eval.name") or checkpoint_name(config))
    table = format_table(task, [(label, split, metrics)])
    summary = {
        "task": task.name,
        "split": split,
        "checkpoint": option(config, "checkpoint"),
        "family": family,
        "num_examples": len(records),
        "metrics": metrics,
        "mean_reward": _mean_reward(records),
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    (out / "table.md").write_text(table + "\n")
    positions = {e["image_id"]: i for i, e in enumerate(examples)}
    gallery_size = option(config, "eval.gallery_size", 4)
    gallery = draw_gallery(out / "gallery.png", records, source, positions, gallery_size)
    print(table, flush=True)
    return EvalResult(metrics, table, out, out / "predictions.jsonl", out / "metrics.json", gallery)


def _predictions(config, task: Task, source, load_policy) -> tuple[list, list, str | None]:
    """(records, annotations, family): decoded, or read from `eval.predictions_file`."""
    predictions_file = option(config, "eval.predictions_file")
    if predictions_file:
        examples = [annotation(source[i]) for i in range(len(source))]
        return read_predictions(predictions_file), examples, None
    model, processor = (load_policy or load_checkpoint)(config)
    family = model.config.family
    records, examples = predict(
        task,
        model,
        processor,
        source,
        family,
        batch_size=option(config, "eval.batch_size", 8),
        max_new_tokens=option(config, "eval.max_new_tokens", 256),
        repetition_penalty=option(config, "eval.repetition_penalty", 1.0),
    )
    return records, examples, family


def option(config, dotted: str, default: Any = None) -> Any:
    """`config.a.b` for `dotted="a.b"`, or `default` where a level is missing or None."""
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
        if value is None:
            return default
    return value


# ------------------------------------------------------------------------------------- data
def make_source(config, task: Task, split: str):
    """Random-access examples of the configured source (see module docstring), first N kept."""
    kind = option(config, "data.source", "synthetic")
    limit = option(config, "eval.num_examples")
    if kind == "synthetic":
        fields = dict(option(config, "data.synthetic", {}))
        return synthetic.SyntheticSource(
            task.name,
            split,
            limit or DEFAULT_SYNTHETIC_EXAMPLES,
            seed=option(config, "data.seed", 0),
            config=synthetic.SyntheticConfig(**fields),
        )
    if kind == "tfds":
        from perception_rl.data import pipeline

        source = pipeline.tfds_source(
            option(config, "data.tfds_config", task.name),
            split,
            os.path.expanduser(option(config, "data.data_dir")),
        )
    elif kind == "jsonl":
        directory = pathlib.Path(option(config, "data.source_dir"))
        source = JsonlSource(directory / f"{split}.jsonl", task)
    else:
        raise ValueError(f"Unknown data.source {kind!r}; expected synthetic, tfds or jsonl.")
    return _First(source, limit) if limit else source


def _check_task(source, task: Task) -> None:
    """Fails early when the split holds another task's examples (e.g. a wrong tfds_config)."""
    found = source[0].get("task") if len(source) else None
    if found not in (None, "", task.name):
        raise ValueError(f"The split holds {found!r} examples but config.task is {task.name!r}.")


class _First:
    """The first `n` examples of a random-access source (PR1 evaluates the first N too)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.source[index]


class JsonlSource:
    """Ground truth from a JSONL file: one example per line, images read on access.

    Each line: `{"image_id": int, "image": path relative to the file's directory, "query": str,
    "boxes": [[x1, y1, x2, y2], ...], "labels": [int or label name, ...], "points": [[x, y]],
    "text": str, "ignore_boxes": [[...]]}`; all but image_id and image are optional. Every line
    is checked when the source is opened (image headers included), so a malformed file fails
    at once with the file, line and record in the message.
    """

    def __init__(self, path: str | os.PathLike, task: Task):
        self.path = pathlib.Path(path)
        names = {n: i for i, n in enumerate(getattr(task, "label_names", ()))}
        try:
            lines = self.path.read_text().splitlines()
        except OSError as e:
            raise RecordError(f"{self.path}: cannot read the ground-truth file ({e}).") from e
        self.examples = [
            self._checked(n, line, names) for n, line in enumerate(lines, 1) if line.strip()
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        example = dict(self.examples[index])
        with Image.open(example.pop("image_path")) as image:
            example["image"] = np.asarray(image.convert("RGB"))
        return example

    def _checked(self, line_number: int, line: str, names: Mapping[str, int]) -> Example:
        where = f"{self.path} line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not JSON ({e}).") from e
        text = repr(record)[:200]
        try:
            return _parse_example(record, self.path.parent, names)
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise RecordError(f"{where} {text}: {e}") from e


def _parse_example(record: Mapping, root: pathlib.Path, names: Mapping[str, int]) -> Example:
    """One JSONL ground-truth record as an example (without pixels); raises on bad fields."""
    if not isinstance(record, Mapping):
        raise TypeError("a record must be a JSON object")
    image_id = record["image_id"]
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise TypeError(f"image_id {image_id!r} is not an integer")
    image_path = root / str(record["image"])
    with Image.open(image_path) as image:  # Reads the header only.
        width, height = image.size
    labels = [_label_index(v, names) for v in record.get("labels", ())]
    example = {
        "image_path": image_path,
        "image_id": image_id,
        "query": str(record.get("query", "")),
        "text": str(record.get("text", "")),
        "labels": np.asarray(labels, np.int64).reshape(-1),
    }
    limits = np.array([width, height, width, height], np.float64)
    for key in ("boxes", "ignore_boxes"):
        boxes = np.asarray(record.get(key, ()), np.float64).reshape(-1, 4)
        bad = ~(
            np.isfinite(boxes).all(1)
            & (boxes >= 0).all(1)
            & (boxes <= limits).all(1)
            & (boxes[:, 0] < boxes[:, 2])
            & (boxes[:, 1] < boxes[:, 3])
        )
        if bad.any():
            raise ValueError(
                f"{key} {boxes[bad][0].tolist()} is empty or outside the {width}x{height} image"
            )
        example[key] = boxes.astype(np.float32)
    points = record.get("points")
    boxes = example["boxes"]
    example["points"] = (
        np.asarray(points, np.float32).reshape(-1, 2)
        if points is not None
        else (boxes[:, :2] + boxes[:, 2:]) / 2
    )
    if len(labels) not in (0, len(boxes)):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    return example


def _label_index(value, names: Mapping[str, int]) -> int:
    """A label given as an index, or as a name of the task's `label_names`."""
    if not isinstance(value, str):
        return int(value)
    if value not in names:
        raise ValueError(f"label {value!r} is not one of the task's {len(names)} label names")
    return names[value]


def annotation(example: Example) -> Example:
    """The example without its pixels (what metrics and the JSONL need), image size kept."""
    out = {k: v for k, v in example.items() if k != "image"}
    out["image_hw"] = tuple(int(s) for s in np.shape(example["image"])[:2])
    return out


# ---------------------------------------------------------------------------------- policy
def load_checkpoint(config) -> tuple[Any, Any]:
    """(QwenVL, Processor) for `config.checkpoint` / `config.model` (see module docstring)."""
    import jax.numpy as jnp

    from perception_rl.models import from_pretrained

    checkpoint, model_spec = option(config, "checkpoint"), option(config, "model")
    dtype = jnp.dtype(option(config, "dtype", "float32"))
    if checkpoint is None or _is_hf_dir(checkpoint):
        hf_dir = checkpoint or model_spec
        if hf_dir is None or not _is_hf_dir(hf_dir):
            raise ValueError(
                f"Nothing to evaluate: checkpoint={checkpoint!r} and model="
                f"{model_spec!r} are not HF directories (config.json + weights)."
            )
        model = from_pretrained(str(hf_dir), dtype)
        return model, make_processor(config, model.config, (hf_dir, model_spec))
    params_dir = orbax_params_dir(checkpoint, option(config, "eval.step"))
    model_config, processor = _architecture(config, model_spec)
    return restore_params(params_dir, model_config, dtype), processor


def _is_hf_dir(path) -> bool:
    path = pathlib.Path(str(path))
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def orbax_params_dir(checkpoint: str | os.PathLike, step: int | None = None) -> pathlib.Path:
    """`<checkpoint>/<step>/params` (the latest step unless `step`), or `<checkpoint>/params`."""
    root = pathlib.Path(checkpoint)
    if (root / "params").is_dir():
        return root / "params"
    steps = sorted(int(p.name) for p in root.glob("*") if p.name.isdigit() and p.is_dir())
    if not steps:
        raise FileNotFoundError(
            f"{root}: neither an HF directory (config.json + *.safetensors) "
            "nor an orbax checkpoint (<step>/params)."
        )
    chosen = steps[-1] if step is None else int(step)
    if not (root / str(chosen) / "params").is_dir():
        raise FileNotFoundError(f"{root}: no params for step {chosen}; steps: {steps}.")
    return root / str(chosen) / "params"


def _architecture(config, model_spec) -> tuple[Any, Any]:
    """Model config and processor for restoring orbax params into `model_spec`."""
    from perception_rl.models import QwenVLConfig, preset

    if model_spec is None:
        raise ValueError(
            "config.model (HF directory or preset name) is needed to restore an orbax checkpoint."
        )
    if (pathlib.Path(str(model_spec)) / "config.json").is_file():
        model_config = QwenVLConfig.from_pretrained(str(model_spec))
        return model_config, make_processor(config, model_config, (model_spec,))
    processor = make_processor(config, preset(model_spec), ())
    ids = {
        name: processor.tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
            ("bos_token_id", "<|endoftext|>"),
            ("eos_token_id", "<|im_end|>"),
            ("pad_token_id", "<|endoftext|>"),
        )
    }
    # A preset carries the real Qwen ids; the model must use its tokenizer's.
    return preset(model_spec).replace(**ids), processor


def make_processor(config, model_config, candidates: Sequence) -> Any:
    """Processor from the first candidate directory with a tokenizer, for this model family."""
    from perception_rl.processing import Processor, tiny_tokenizer_path

    directories = [c for c in (*candidates, option(config, "tokenizer")) if c is not None]
    if "tiny" in str(option(config, "model", "")):
        directories.append(tiny_tokenizer_path())
    found = next(
        (
            pathlib.Path(str(d))
            for d in directories
            if (pathlib.Path(str(d)) / "tokenizer.json").is_file()
            or (pathlib.Path(str(d)) / "tokenizer_config.json").is_file()
        ),
        None,
    )
    if found is None:
        raise FileNotFoundError(f"No tokenizer in {directories}; set config.tokenizer.")
    overrides = {
        k: int(v)
        for k in ("min_pixels", "max_pixels")
        if (v := option(config, f"data.{k}")) is not None
    }
    processor = Processor.from_pretrained(found, **overrides)
    return processor.with_family(model_config.family, model_config.vision.tokens_per_second)


def restore_params(params_dir: pathlib.Path, model_config, dtype) -> Any:
    """A QwenVL whose `nnx.Param` state is restored from an orbax StandardCheckpointer dir."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from perception_rl.models import QwenVL

    model = nnx.eval_shape(lambda: QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(0)))
    target = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as checkpointer:
        try:  # The trainer's layout (perception_rl.rl.checkpoint): `nnx.to_pure_dict`.
            pure = checkpointer.restore(params_dir.absolute(), nnx.to_pure_dict(target))
            nnx.replace_by_pure_dict(target, pure)
        except ValueError:  # orbax's structure mismatch: an `nnx.State` was saved instead.
            target = checkpointer.restore(params_dir.absolute(), target)
    nnx.update(model, target)
    return model


def checkpoint_name(config) -> str:
    """A short row label: the checkpoint directory's name (with its step), else the model's."""
    path = option(config, "checkpoint") or option(config, "model") or "model"
    parts = pathlib.Path(str(path)).parts
    return "/".join(parts[-2:]) if parts and parts[-1].isdigit() else (parts[-1] if parts else "")


# --------------------------------------------------------------------------------- decoding
def predict(
    task: Task,
    model,
    processor,
    source,
    family: str,
    *,
    batch_size: int,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> tuple[list[Record], list[Example]]:
    """Greedy completions of every example, parsed to original pixels and scored by the reward.

    `repetition_penalty` is HF's (PR1 decodes grounding with 1.05; 1.0 is off).

    Returns:
      (one record per example, in source order; the examples' annotations without pixels).
    """
    import jax
    from tqdm import tqdm

    from perception_rl import rewards
    from perception_rl.sampling import generate

    tokenizer = processor.tokenizer
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    records, annotations = [], []
    with tqdm(total=len(source), desc=f"eval {task.name}", unit="example") as bar:
        for start in range(0, len(source), batch_size):
            indices = list(range(start, min(start + batch_size, len(source))))
            examples = [source[i] for i in indices]
            annotations += [annotation(e) for e in examples]
            # A short last batch is padded with copies: one compiled shape for every batch.
            padded = examples + examples[-1:] * (batch_size - len(examples))
            batch = processor(
                [task.conversation(e, family) for e in padded],
                [[Image.fromarray(e["image"])] for e in padded],
            )
            result = generate(
                model,
                batch,
                max_new_tokens=max_new_tokens,
                key=jax.random.key(0),
                temperature=0.0,
                eos_ids=eos,
                pad_id=processor.pad_token_id,
                repetition_penalty=repetition_penalty,
            )
            texts = [
                tokenizer.decode(
                    result.tokens[row, : result.lengths[row]].tolist(),
                    skip_special_tokens=task.skip_special_tokens,
                )
                for row in range(len(examples))
            ]
            geometries = [
                ImageGeometry.for_image(*e["image"].shape[:2], processor.image_processor)
                for e in examples
            ]
            targets = [task.target(e, g, family) for e, g in zip(examples, geometries)]
            parts = rewards.score_components(
                task.reward, texts, targets, group_size=1, **task.reward_options(family)
            )
            for row, (index, example, text, geometry) in enumerate(
                zip(indices, examples, texts, geometries)
            ):
                record = _record(
                    task,
                    index,
                    example,
                    text,
                    geometry,
                    family,
                    {k: float(v[row]) for k, v in parts.items()},
                )
                if getattr(task, "score_detections", "constant") == "likelihood":
                    record["prediction"]["scores"] = _box_scores(task, tokenizer, result, row, text)
                records.append(record)
            bar.update(len(examples))
    return records, annotations


def _box_scores(task: Task, tokenizer, result, row: int, text: str) -> list[float]:
    """Each kept box's sequence likelihood (`eval.box_scores`), in prediction order."""
    from perception_rl.eval import box_scores

    tokens = result.tokens[row, : result.lengths[row]].tolist()
    pieces = [tokenizer.decode([t], skip_special_tokens=task.skip_special_tokens) for t in tokens]
    vocabulary = {name: i for i, name in enumerate(task.label_names)}
    return box_scores.detection_scores(text, pieces, result.logprobs[row], vocabulary)


def _record(
    task: Task,
    index: int,
    example: Example,
    text: str,
    geometry: ImageGeometry,
    family: str,
    reward: dict[str, float],
) -> Record:
    truth = {
        k: _json_safe(np.asarray(example[k]).tolist() if k != "text" else example[k])
        for k in ANNOTATION_KEYS
        if k in example
    }
    return {
        "index": index,
        "image_id": int(example["image_id"]),
        "query": example.get("query"),
        "image_hw": list(geometry.original_hw),
        "resized_hw": list(geometry.resized_hw),
        "completion": text,
        "prediction": task.predict(text, geometry, family),
        "ground_truth": truth,
        "reward": reward.pop("total"),
        "reward_components": reward,
    }


# ---------------------------------------------------------------------------------- scoring
def read_predictions(path: str | os.PathLike) -> list[Record]:
    """Records of a predictions.jsonl; a line that is not a record fails naming it."""
    records = []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path} line {number}: not JSON ({e}).") from e
        if not isinstance(record, dict) or not isinstance(record.get("prediction"), dict):
            raise RecordError(
                f"{path} line {number} {line[:200]}: needs an 'image_id' and a 'prediction' object."
            )
        records.append({**record, "line": number})
    return records


def score_predictions(
    task: Task, records: Sequence[Record], examples: Sequence[Example]
) -> dict[str, float]:
    """The task's metrics over `examples`, each predicted exactly once by `records`.

    Raises:
      RecordError: naming a record whose image_id is not in the split or repeats one, a split
        image without a prediction, or examples with repeated image ids.
    """
    by_id = {}
    for i, example in enumerate(examples):
        image_id = example["image_id"]
        if image_id in by_id:
            raise RecordError(f"Example {i} of the split repeats image_id {image_id}.")
        by_id[image_id] = example
    predictions = {}
    for i, record in enumerate(records):
        where = f"Prediction record {record.get('line', i)}"
        image_id = record.get("image_id")
        if image_id not in by_id:
            raise RecordError(
                f"{where} {repr(record)[:200]}: image_id {image_id!r} is not in "
                f"the split ({len(by_id)} images)."
            )
        if image_id in predictions:
            raise RecordError(f"{where}: a second prediction for image_id {image_id}.")
        predictions[image_id] = record["prediction"]
    if missing := [i for i in by_id if i not in predictions]:
        raise RecordError(f"No prediction for image_id {missing[0]} ({len(missing)} missing).")
    ids = list(by_id)
    return task.metrics([predictions[i] for i in ids], [by_id[i] for i in ids])


def format_table(task: Task, rows: Sequence[tuple[str, str, Mapping[str, float]]]) -> str:
    """A markdown table in the papers' layout: one row per (model, split, metrics), ×100."""
    headers = ["model", "split", *(header for _, header in task.table_columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for model, split, metrics in rows:
        cells = [_percent(metrics.get(key)) for key, _ in task.table_columns]
        lines.append("| " + " | ".join([model, split, *cells]) + " |")
    return "\n".join(lines)


def _percent(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _mean_reward(records: Sequence[Record]) -> float | None:
    values = [r["reward"] for r in records if isinstance(r.get("reward"), (int, float))]
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------- outputs
def write_jsonl(path: pathlib.Path, records: Sequence[Record]) -> None:
    with path.open("w") as out:
        for record in records:
            out.write(
                json.dumps(_json_safe({k: v for k, v in record.items() if k != "line"})) + "\n"
            )


def _json_safe(value):
    """NaN / inf become null (strict JSON); tuples lists; numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def draw_gallery(
    path: pathlib.Path, records: Sequence[Record], source, positions: Mapping[int, int], size: int
) -> pathlib.Path | None:
    """PNG of the `size` lowest- and highest-reward examples; None when nothing is ranked.

    Args:
      path: the PNG to write.
      records: prediction records with `image_id`, `prediction`, `ground_truth` and `reward`.
      source: the split's random-access examples (for the pixels).
      positions: image_id -> position in `source`.
      size: examples per row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = sorted(
        (r for r in records if isinstance(r.get("reward"), (int, float))), key=lambda r: r["reward"]
    )
    if not ranked or size < 1:
        return None
    size = min(size, len(ranked))
    rows = {"worst": ranked[:size], "best": ranked[::-1][:size]}
    figure = Figure(figsize=(3.2 * size, 7.0))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, size, squeeze=False)
    for row, (name, chosen) in enumerate(rows.items()):
        for column, record in enumerate(chosen):
            _draw(axes[row][column], source[positions[record["image_id"]]], record, name)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _draw(ax, example: Example, record: Record, rank: str) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(example["image"])
    truth, prediction = record.get("ground_truth", {}), record["prediction"]
    styles = [
        (truth.get("boxes", ()), "lime", "-"),
        (truth.get("ignore_boxes", ()), "lime", ":"),
        (prediction.get("boxes", ()), "red", "-"),
        (prediction.get("look", ()), "orange", "--"),
    ]
    for boxes, color, line in styles:
        for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
            ax.add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    edgecolor=color,
                    linestyle=line,
                    linewidth=1.5,
                )
            )
    query = _short(str(record.get("query") or ""), lines=1)
    ax.set_title(
        f"{rank}: id {record['image_id']}, reward {record['reward']:.2f}\n{query}", fontsize=8
    )
    if "text" in prediction:  # OCR: the texts are the prediction.
        ax.set_xlabel(
            _short(f"pred: {prediction['text']}\ngt: {truth.get('text', '')}"), fontsize=7
        )
    elif "boxes" in truth:
        ax.set_xlabel(
            f"gt {len(truth['boxes'])} boxes, pred {len(prediction.get('boxes', ()))}", fontsize=8
        )
    ax.set_xticks([])
    ax.set_yticks([])


def _short(text: str, width: int = 40, lines: int = 4) -> str:
    """At most `lines` lines of at most `width` characters (long OCR pages, label sets)."""
    return "\n".join(row[:width] for row in text.split("\n")[:lines])
