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

Config fields read (the defaults, shown in [], are configs/common.py's; the runner has none):
  task                  registered task name (`perception_rl.tasks.TASKS`).
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

from perception_rl.data import sources
from perception_rl.errors import CheckpointError, config_value, require_at_least
from perception_rl.eval.gallery import draw_gallery
from perception_rl.eval.predictions import (
    PartialPredictions,
    json_safe,
    read_predictions,
    write_jsonl,
)
from perception_rl.metrics.records import RecordError
from perception_rl.tasks import ImageGeometry, Task, reward_options

Example = dict[str, Any]
Record = dict[str, Any]
ANNOTATION_KEYS = ("boxes", "labels", "points", "text", "ignore_boxes")


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
      RecordError / DataError: a malformed ground-truth or prediction record, an unreadable
        image, a prediction for an unknown image id, data of another task; naming the record.
      ConfigError / CheckpointError: an unusable config or checkpoint.
    """
    require_at_least(config, 1, "eval.batch_size", "eval.max_new_tokens", "eval.num_examples")
    task = sources.task_from_config(config)
    split = config_value(config, "eval.split")
    source = make_source(config, task, split)
    sources.check_source(
        source, task, f"eval data ({config_value(config, 'data.source')}, {split})"
    )
    out = pathlib.Path(workdir) / "eval" / str(config_value(config, "eval.name") or split)
    out.mkdir(parents=True, exist_ok=True)
    records, examples, family = _predictions(config, task, source, load_policy, out)
    write_jsonl(out / "predictions.jsonl", records)  # First: decoding is the costly part.
    metrics = score_predictions(task, records, examples)
    label = str(config_value(config, "eval.name") or checkpoint_name(config))
    table = format_table(task, [(label, split, metrics)])
    summary = {
        "task": task.name,
        "split": split,
        "checkpoint": config_value(config, "checkpoint"),
        "family": family,
        "num_examples": len(records),
        "metrics": metrics,
        "mean_reward": _mean_reward(records),
    }
    (out / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    (out / "table.md").write_text(table + "\n")
    positions = {e["image_id"]: i for i, e in enumerate(examples)}
    gallery_size = config_value(config, "eval.gallery_size")
    gallery = draw_gallery(out / "gallery.png", records, source, positions, gallery_size)
    print(table, flush=True)
    return EvalResult(metrics, table, out, out / "predictions.jsonl", out / "metrics.json", gallery)


def _predictions(
    config, task: Task, source, load_policy, out: pathlib.Path
) -> tuple[list, list, str | None]:
    """(records, annotations, family): decoded, or read from `eval.predictions_file`."""
    predictions_file = config_value(config, "eval.predictions_file")
    if predictions_file:
        records = read_predictions(predictions_file, task.prediction_keys)
        return records, [annotation(source[i]) for i in range(len(source))], None
    model, processor = (load_policy or load_checkpoint)(config)
    family = model.config.family
    partial = PartialPredictions(out / "predictions.partial.jsonl", _settings(config, family))
    records, examples = predict(
        task,
        model,
        processor,
        source,
        family,
        batch_size=config_value(config, "eval.batch_size"),
        max_new_tokens=config_value(config, "eval.max_new_tokens"),
        reward_overrides=_mapping(config_value(config, "reward")),
        partial=partial,
        repetition_penalty=config_value(config, "eval.repetition_penalty"),
    )
    partial.finish()
    return records, examples, family


def _mapping(value) -> dict:
    if value is None:
        return {}
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _settings(config, family: str) -> dict:
    """What the decoded records depend on: a partial file written under other settings is not
    continued."""
    keys = ("task", "checkpoint", "model", "dtype", "eval.step", "eval.split", "eval.num_examples")
    keys += ("eval.batch_size", "eval.max_new_tokens", "eval.repetition_penalty", "data.source")
    keys += ("data.tfds_config",)
    keys += ("data.source_dir", "data.seed", "data.min_pixels", "data.max_pixels")
    settings = {key: config_value(config, key) for key in keys}
    for section in ("task_options", "reward", "data.synthetic"):
        settings[section] = _mapping(config_value(config, section))
    return {**settings, "family": family}


# ------------------------------------------------------------------------------------- data
def make_source(config, task: Task, split: str):
    """The examples `evaluate` reads: `data.sources.example_source` with `eval.num_examples`."""
    return sources.example_source(config, task, split, config_value(config, "eval.num_examples"))


def annotation(example: Example) -> Example:
    """The example without its pixels (what metrics and the JSONL need), image size kept."""
    out = {k: v for k, v in example.items() if k != "image"}
    out["image_hw"] = tuple(int(s) for s in np.shape(example["image"])[:2])
    return out


# ---------------------------------------------------------------------------------- policy
def load_checkpoint(config) -> tuple[Any, Any]:
    """(QwenVL, Processor) of `config.checkpoint`, else of an HF `config.model`, through the
    policy loader training uses (`perception_rl.policy.load_policy`)."""
    from perception_rl import policy as policy_lib

    checkpoint = config_value(config, "checkpoint")
    if checkpoint is None and not policy_lib.is_hf_dir(config_value(config, "model")):
        raise CheckpointError(
            f"nothing to evaluate: config.checkpoint is not set and model="
            f"{config_value(config, 'model')!r} is not an HF directory (config.json + weights)."
        )
    policy = policy_lib.load_policy(config, checkpoint=checkpoint)
    return policy.model(), policy.processor


def checkpoint_name(config) -> str:
    """A short row label: the checkpoint directory's name (with its step), else the model's."""
    path = config_value(config, "checkpoint") or config_value(config, "model") or "model"
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
    reward_overrides: Mapping[str, Any] | None = None,
    partial: PartialPredictions | None = None,
    repetition_penalty: float = 1.0,
) -> tuple[list[Record], list[Example]]:
    """Greedy completions of every example, parsed to original pixels and scored by the reward
    (the task's reward options, then `reward_overrides`, as training scores them).

    Batches whose records `partial` already holds are not decoded again; new records are
    appended to it as they come, so an error mid-way (an unreadable image) keeps them.

    `repetition_penalty` is HF's (PR1 decodes grounding with 1.05; 1.0 is off).

    Returns:
      (one record per example, in source order; the examples' annotations without pixels).
    """
    from tqdm import tqdm

    done = partial.done if partial is not None else {}
    options = reward_options(task, family, reward_overrides)
    records, annotations = [], []
    with tqdm(total=len(source), desc=f"eval {task.name}", unit="example") as bar:
        for start in range(0, len(source), batch_size):
            indices = list(range(start, min(start + batch_size, len(source))))
            examples = [source[i] for i in indices]
            annotations += [annotation(e) for e in examples]
            if all(i in done for i in indices):
                batch_records = [done[i] for i in indices]
            else:
                batch_records = _decode_batch(
                    task,
                    model,
                    processor,
                    indices,
                    examples,
                    family,
                    options,
                    batch_size,
                    max_new_tokens,
                    repetition_penalty,
                )
                if partial is not None:
                    partial.add(batch_records)
            records += batch_records
            bar.update(len(examples))
    return records, annotations


def _decode_batch(
    task: Task,
    model,
    processor,
    indices: list[int],
    examples: list[Example],
    family: str,
    options: Mapping[str, Any],
    batch_size: int,
    max_new_tokens: int,
    repetition_penalty: float,
) -> list[Record]:
    """Greedy completions of one batch as scored records."""
    import jax

    from perception_rl import rewards
    from perception_rl.models.qwen_vl.prompts import prompt_batch
    from perception_rl.policy import stop_token_ids
    from perception_rl.sampling import generate

    tokenizer = processor.tokenizer
    eos = list(stop_token_ids(tokenizer, getattr(model.config, "eos_token_id", None)))
    # A short last batch is padded with copies: one compiled shape for every batch.
    padded = examples + examples[-1:] * (batch_size - len(examples))
    batch = processor(
        [task.conversation(e, family) for e in padded],
        [[Image.fromarray(e["image"])] for e in padded],
    )
    result = generate(
        model,
        prompt_batch(batch, model.config, pad_id=processor.pad_token_id),
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
        ImageGeometry.for_image(*e["image"].shape[:2], processor.image_processor) for e in examples
    ]
    targets = [task.target(e, g, family) for e, g in zip(examples, geometries)]
    parts = rewards.score_components(task.reward, texts, targets, group_size=1, **options)
    records = []
    for row, (index, example, text, geometry) in enumerate(
        zip(indices, examples, texts, geometries)
    ):
        reward = {k: float(v[row]) for k, v in parts.items()}
        record = _record(task, index, example, text, geometry, family, reward)
        if getattr(task, "score_detections", "constant") == "likelihood":
            record["prediction"]["scores"] = _box_scores(task, tokenizer, result, row, text)
        records.append(record)
    return records


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
        k: json_safe(np.asarray(example[k]).tolist() if k != "text" else example[k])
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
