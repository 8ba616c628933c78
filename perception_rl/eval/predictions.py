"""Prediction records on disk: `predictions.jsonl`, checked line by line, and the partial file
that evaluation appends to as it decodes, so an interrupted evaluation continues where it
stopped.

A record is one JSON object per line: `{"image_id": int, "prediction": {...}, ...}`. What a
prediction may hold is fixed per key (below); the keys a task scores (`Task.prediction_keys`)
must be present. A wrong type fails naming the file, the line and the field, never counts as
something else (a string of three characters is not three boxes).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from perception_rl.metrics.records import RecordError

Record = dict[str, Any]
_MAX_SHOWN = 200  # characters of a bad line shown in an error


def _number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _rows(width: int):
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be a list of [{width} numbers], got {type(value).__name__}"
        for row in value:
            if not (isinstance(row, list) and len(row) == width and all(map(_number, row))):
                return f"must be a list of [{width} finite numbers]; bad element {row!r:.80}"
        return None

    return check


def _labels(value: Any) -> str | None:
    if not isinstance(value, list) or not all(
        isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value
    ):
        return "must be a list of label names or indices"
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else f"must be a non-negative integer, got {value!r:.40}"


FIELD_CHECKS = {
    "boxes": _rows(4),
    "look": _rows(4),
    "points": _rows(2),
    "labels": _labels,
    "text": _text,
    "count": _count,
}


def check_prediction(prediction: Any, required: Iterable[str]) -> str | None:
    """Why `prediction` cannot be scored, or None when it can."""
    if not isinstance(prediction, Mapping):
        return f"'prediction' must be an object, got {type(prediction).__name__}"
    if missing := [key for key in required if key not in prediction]:
        return f"'prediction' lacks {missing} (this task scores {list(required)})"
    for key, value in prediction.items():
        if key in FIELD_CHECKS and (problem := FIELD_CHECKS[key](value)):
            return f"prediction field {key!r} {problem}"
    if "labels" in prediction and len(prediction["labels"]) != len(prediction.get("boxes", ())):
        return "prediction 'labels' and 'boxes' differ in length"
    return None


def read_predictions(path: str | os.PathLike, required: Sequence[str] = ()) -> list[Record]:
    """Records of a predictions.jsonl, each checked (`check_prediction`).

    Raises:
      RecordError: naming the file and line of the first record that cannot be scored (not
        UTF-8, not JSON, no integer image_id, a prediction field of the wrong type).
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(f"{path}: cannot read the predictions file ({e.strerror}).") from e
    records = []
    for number, line in enumerate(raw.splitlines(), 1):
        where = f"{path} line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"{where}: not UTF-8 text (a binary file?).") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not JSON ({e}).") from None
        problem = _record_problem(record, required)
        if problem:
            raise RecordError(f"{where}: {problem}: {text[:_MAX_SHOWN]}")
        records.append({**record, "line": number})
    return records


def _record_problem(record: Any, required: Sequence[str]) -> str | None:
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    image_id = record.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return f"'image_id' must be an integer, got {image_id!r:.40}"
    return check_prediction(record.get("prediction"), required)


def write_jsonl(path: pathlib.Path, records: Sequence[Record]) -> None:
    """Writes `records` (without the reader's `line` numbers) as strict JSON lines."""
    with path.open("w") as out:
        for record in records:
            out.write(_line(record))


def _line(record: Record) -> str:
    return json.dumps(json_safe({k: v for k, v in record.items() if k != "line"})) + "\n"


def json_safe(value):
    """NaN / inf become null (strict JSON); tuples lists; numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class PartialPredictions:
    """Records appended (and flushed) as they are decoded, keyed by the evaluation's settings.

    A rerun with the same settings (`key`) starts from the records already written; other
    settings start over. `finish()` removes the partial files once predictions.jsonl exists.
    """

    def __init__(self, path: pathlib.Path, key: Mapping[str, Any]):
        self.path, self.key_path = path, path.with_name(path.name + ".key.json")
        key = json_safe(dict(key))
        self.done: dict[int, Record] = {}
        if self.path.exists() and self.key_path.exists() and self._read_key() == key:
            self.done = self._read_records()
        self.key_path.write_text(json.dumps(key, sort_keys=True))
        # Rewritten from the records kept: drops a line cut short by a kill mid-write.
        write_jsonl(self.path, list(self.done.values()))
        self._file = self.path.open("a")

    def _read_key(self) -> Any:
        try:
            return json.loads(self.key_path.read_text())
        except (OSError, ValueError):
            return None

    def _read_records(self) -> dict[int, Record]:
        done = {}
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                done[int(record["index"])] = record
            except (ValueError, KeyError, TypeError):
                break  # the tail of a killed write
        return done

    def add(self, records: Sequence[Record]) -> None:
        for record in records:
            self.done[int(record["index"])] = record
            self._file.write(_line(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def finish(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self.key_path.unlink(missing_ok=True)
