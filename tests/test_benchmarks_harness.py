"""The benchmark harness's bookkeeping: statistics, alternation, contention flags, the worker
protocol. No timing assertions: the figures themselves are only meaningful on a quiet machine."""

import importlib.util
import os
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "harness.py"
_spec = importlib.util.spec_from_file_location("bench_harness", _PATH)
harness = importlib.util.module_from_spec(_spec)
sys.modules["bench_harness"] = harness  # dataclasses resolve their module by name
_spec.loader.exec_module(harness)


def test_stats_and_ratio_of_medians():
    ours = harness.rates(100.0, [1.0, 0.5, 2.0])  # 100, 200, 50 per second
    assert (ours.min, ours.median, ours.max) == (50.0, 100.0, 200.0)
    assert ours.spread == pytest.approx(1.5)
    peer = harness.rates(100.0, [4.0, 2.0])  # 25, 50 → median 37.5
    assert harness.ratio_of_medians(ours, peer) == pytest.approx(100.0 / 37.5)


def test_alternating_order_lets_each_side_go_first_in_turn():
    assert harness.alternating_order(["ours", "hf"], 3) == [
        "ours",
        "hf",
        "hf",
        "ours",
        "ours",
        "hf",
    ]


def test_busy_jiffies_excludes_idle_and_iowait():
    stat = "cpu  10 2 3 100 7 1 1 4 0 0\ncpu0 5 1 1 50 3 0 0 2 0 0\nintr 1\n"
    assert harness._busy_jiffies(stat) == (10 + 2 + 3 + 1 + 1 + 4, 21 + 100 + 7)
    with pytest.raises(ValueError):
        harness._busy_jiffies("intr 1\n")


def test_contended_flags_only_windows_over_the_limit():
    quiet = harness.Load(wall=10.0, other_cores=0.02, loadavg=0.1)
    busy = harness.Load(wall=20.0, other_cores=0.9, loadavg=2.0, top=(("pytest", 42, 0.85),))
    assert harness.contended([quiet, quiet], 0.1) == []
    reasons = harness.contended([quiet, busy], 0.1)
    assert len(reasons) == 1 and "window 1" in reasons[0] and "pytest (pid 42) 0.85" in reasons[0]


def _report(reasons, loads):
    side = lambda name, secs: harness.SideResult(
        name, [{"seconds": secs, "work": 10.0, "unit": "tok", "threads": {"xla": 2}}]
    )
    return harness.Report(
        "python bench.py", [side("ours", [1.0, 2.0]), side("hf", [4.0])], loads, 2, reasons, []
    )


def test_report_prints_ratio_and_marks_contended_figures():
    quiet = harness.Load(wall=1.0, other_cores=0.0, loadavg=0.0)
    text = harness.format_report(_report([], [quiet]), baseline="hf")
    assert "command: python bench.py" in text and "ratio of medians ours / hf: 3.00x" in text
    assert "CONTENDED" not in text and "quiet" in text
    text = harness.format_report(_report(["window 1: busy"], [quiet]), baseline="hf")
    assert "CONTENDED" in text and "window 1: busy" in text


def test_strict_refuses_a_contended_report(capsys):
    quiet = harness.Load(wall=1.0, other_cores=0.0, loadavg=0.0)
    with pytest.raises(SystemExit) as exit_info:
        harness.finish(_report(["window 0: busy"], [quiet]), baseline="hf", strict=True)
    assert exit_info.value.code == harness.EXIT_CONTENDED
    assert "ratio" not in capsys.readouterr().out


def test_parse_result_wants_exactly_one_line():
    line = harness.RESULT_TAG + '{"seconds": [1.0], "work": 3, "unit": "x", "threads": {}}'
    assert harness.parse_result(f"noise\n{line}\n")["work"] == 3
    with pytest.raises(ValueError):
        harness.parse_result("noise\n")


WORKER = """
import os, sys
sys.path.insert(0, {root!r})
import bench_harness_worker as h
h.emit([0.5, 0.25], work=1.0, unit="x", name=sys.argv[1], env=os.environ[h.THREADS_ENV])
"""


def test_compare_alternates_pinned_workers(tmp_path):
    (tmp_path / "bench_harness_worker.py").write_text(_PATH.read_text())
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(tmp_path)))
    sides = [harness.Side(n, (sys.executable, str(script), n)) for n in ("ours", "peer")]
    report = harness.compare(sides, rounds=2, threads=1, idle_seconds=0.1, log=lambda s: None)
    assert report.order == ["ours", "peer", "peer", "ours"]
    for side in report.sides:
        assert [r["name"] for r in side.runs] == [side.name] * 2
        assert all(r["threads"]["xla"] == 1 and r["env"] == "1" for r in side.runs)
        assert side.stats.median == 3.0  # rates 2 and 4 per second, twice
    assert len(report.loads) == 5  # the idle window, then one per worker run
    assert all(load.other_cores >= 0 for load in report.loads)


def test_own_cpu_time_includes_reaped_children(tmp_path):
    """What LoadWindow subtracts as ours covers a worker's CPU time once it is waited for."""
    script = tmp_path / "spin.py"
    script.write_text(
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    )
    before = harness._own_cpu_seconds()
    assert os.system(f"{sys.executable} {script}") == 0
    assert harness._own_cpu_seconds() - before >= 0.3  # CPU time, not wall time


def test_export_revision_gives_an_importable_tree(tmp_path):
    tree = harness.export_revision("HEAD", str(tmp_path))
    assert (pathlib.Path(tree) / "perception_rl" / "sampling" / "sampler.py").is_file()
    assert not (pathlib.Path(tree) / "tests").exists()  # only the package


def test_snapshot_tree_copies_the_working_package(tmp_path):
    tree = pathlib.Path(harness.snapshot_tree(str(tmp_path)))
    assert (tree / "perception_rl" / "sampling" / "sampler.py").is_file()
    assert not list(tree.rglob("__pycache__"))
