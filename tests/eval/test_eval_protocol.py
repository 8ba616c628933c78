"""`perception_rl.eval.protocol`: a paper config's splits evaluated in one run, one table."""

import importlib.util
import json
import pathlib
import types

import pytest

from perception_rl.data import synthetic
from perception_rl.errors import ConfigError
from perception_rl.eval import protocol, runner
from perception_rl.models.qwen_vl import tiny
from perception_rl.policy import make_processor
from perception_rl.processing import TINY_TOKEN_IDS, tiny_tokenizer_path
from perception_rl.tasks import get_task

ROOT = pathlib.Path(__file__).resolve().parents[2]


def grounding_config():
    path = ROOT / "configs" / "pr1" / "grounding.py"
    spec = importlib.util.spec_from_file_location("pr1_grounding_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    # Fixture data: the synthetic source stands in for the built RefCOCO splits.
    config.data.source = "synthetic"
    config.eval.num_examples = 4
    config.eval.batch_size = 2
    config.protocol.splits = (
        ("RefCOCO val", "refcoco/refcoco_unc", "val"),
        ("RefCOCO testA", "refcoco/refcoco_unc", "testA"),
    )
    config.protocol.columns = (
        ("RefCOCO val", "acc@0.5", "val @0.5"),
        ("RefCOCO testA", "acc@0.5", "testA @0.5"),
        ("RefCOCO val", "acc@0.95", "val @0.95"),
    )
    config.protocol.paper = (("Perception-R1 (paper)", (89.1, 91.4, 35.0)),)
    return config


def test_every_split_in_one_table_with_the_papers_rows(tmp_path, monkeypatch):
    from test_eval_runner import OracleGenerate

    config = grounding_config()
    task = get_task("grounding")
    family = "qwen2_vl"
    processor = make_processor(config, tiny_tokenizer_path(), tiny(family))
    examples = [
        synthetic.generate_example("grounding", i, split=split)
        for split in ("val", "testA")
        for i in range(4)
    ]
    oracle = OracleGenerate(task, family, processor, examples)
    monkeypatch.setattr("perception_rl.sampling.generate", oracle)
    model = types.SimpleNamespace(config=tiny(family, **TINY_TOKEN_IDS))
    result = protocol.run(config, tmp_path, load_policy=lambda _: (model, processor))
    assert oracle.options == {"repetition_penalty": 1.05}  # PR1's grounding decoding
    # The oracle answers every expression exactly: Acc@0.5 is 100 on both splits.
    assert [m["acc@0.5"] for m in result.metrics.values()] == [1.0, 1.0]
    lines = result.table.splitlines()
    assert lines[0] == "| model | val @0.5 | testA @0.5 | val @0.95 |"
    measured = lines[2].split(" | ")
    assert measured[1:3] == ["100.0", "100.0"]
    assert lines[3] == "| Perception-R1 (paper) | 89.1 | 91.4 | 35.0 |"
    for slug in ("refcoco_val", "refcoco_testa"):
        assert (
            len((tmp_path / "protocol" / slug / "predictions.jsonl").read_text().splitlines()) == 4
        )
    saved = json.loads((tmp_path / "protocol" / "metrics.json").read_text())
    assert set(saved["metrics"]) == {"RefCOCO val", "RefCOCO testA"}


def test_lower_is_better_columns_are_marked_and_missing_values_dashed():
    section = types.SimpleNamespace(
        columns=(("Fox en", "edit_distance", "en ED"), ("Fox en", "f1", "en F1")),
        paper=(("PR1", (2.8, None)),),
        lower_is_better=("edit_distance",),
    )
    table = protocol.paper_table(section, "ckpt", {"Fox en": {"edit_distance": 0.0312}})
    assert table.splitlines() == [
        "| model | en ED↓ | en F1 |",
        "|---|---|---|",
        "| ckpt (measured) | 3.1 | – |",
        "| PR1 | 2.8 | – |",
    ]


def test_every_paper_split_gets_its_own_directory():
    labels = [label for label, _, _ in load_config("grounding").protocol.splits]
    slugs = [protocol._slug(label) for label in labels]
    assert len(set(slugs)) == len(slugs) == 8
    assert protocol._slug("RefCOCO+ val") == "refcocoplus_val"


def load_config(name):
    path = ROOT / "configs" / "pr1" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pr1_{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_needs_a_paper_config(tmp_path):
    with pytest.raises(ConfigError, match="protocol.splits"):
        protocol.run(runner_config(), tmp_path)


def runner_config():
    import sys

    sys.path.insert(0, str(ROOT))
    from configs import common

    return common.get_config()


@pytest.mark.slow
def test_command_line_on_a_saved_checkpoint(tmp_path):
    """`python -m perception_rl.eval.protocol` with a paper config and an HF checkpoint."""
    import os
    import subprocess
    import sys

    from test_eval_runner import checkpoint as checkpoint_fixture

    _, path = checkpoint_fixture.__wrapped__(_Factory(tmp_path))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    args = [
        "--config=configs/dip_r1/crowdhuman.py",
        f"--checkpoint={path}",
        f"--workdir={tmp_path / 'run'}",
        "--config.data.source=synthetic",
        "--config.eval.num_examples=2",
        "--config.eval.batch_size=2",
        "--config.eval.max_new_tokens=8",
        "--config.dtype=float32",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "perception_rl.eval.protocol", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "run" / "protocol" / "table.md").read_text()
    assert "| DIP-R1 (paper: unknown) | – | – | – | – |" in table
    assert "CrowdHuman val MR⁻²↓" in table.splitlines()[0]


class _Factory:
    """Stands in for pytest's tmp_path_factory when calling a fixture function directly."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_runner_decodes_with_the_configs_repetition_penalty(tmp_path, monkeypatch):
    from test_eval_runner import OracleGenerate, make_config

    task = get_task("counting")
    config = make_config(**{"eval.num_examples": 2, "eval.batch_size": 2})
    config.eval.repetition_penalty = 1.05
    processor = make_processor(config, tiny_tokenizer_path(), tiny("qwen2_5_vl"))
    examples = [synthetic.generate_example("counting", i, split="val") for i in range(2)]
    oracle = OracleGenerate(task, "qwen2_5_vl", processor, examples)
    monkeypatch.setattr("perception_rl.sampling.generate", oracle)
    model = types.SimpleNamespace(config=tiny("qwen2_5_vl", **TINY_TOKEN_IDS))
    result = runner.evaluate(config, tmp_path, load_policy=lambda _: (model, processor))
    assert oracle.options == {"repetition_penalty": 1.05}
    assert result.metrics["accuracy"] == 1.0
