"""Benchmark harness: both sides in their own processes, alternately, with the same threads,
and a check that nothing else ran on the machine meanwhile.

A benchmark script has two modes. Its driver (the default) calls `compare` with one `Side`
per contender; each side is the same script re-run as a worker (`--worker NAME ...`) that sets
up, warms up, times `--repeats` runs and prints one `BENCH_RESULT {json}` line (`emit`). The
driver runs the sides alternately (A B, then B A, ...) for several rounds, so drift in the
machine's state hits both alike, and each worker process starts cold, so neither side inherits
the other's allocator, caches or threads.

Threads: every worker is pinned (`sched_setaffinity`) to the same `threads` CPUs. XLA's CPU
client sizes its thread pool from the affinity mask (a 1-CPU mask gives one busy core), and the
worker calls `torch.set_num_threads(threads)` (`set_torch_threads`); both counts are reported
back and checked.

Contention: torch's CPU threads collapse when another process holds a core and XLA's degrade far
less, so a ratio taken beside other work measures the contention, in either direction. Before
the rounds, the driver samples /proc/stat for a few seconds while idle; during each worker run
it takes the machine's busy CPU time (/proc/stat) minus the CPU time of itself and its reaped
children (os.times). Either above `max_other_cores` (default 0.10 cores) flags the report as
CONTENDED: it is printed for A/B work, marked as not a measurement, and `strict` turns it into
exit status 3. The processes that used the CPU are named (from /proc/<pid>/stat).

Every report starts with the exact command, the commit and the thread settings that produced
it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

RESULT_TAG = "BENCH_RESULT "
THREADS_ENV = "BENCH_THREADS"
DEFAULT_MAX_OTHER_CORES = 0.10
EXIT_CONTENDED = 3


# --------------------------------------------------------------------------------- statistics
@dataclasses.dataclass(frozen=True)
class Stats:
    """min / median / max of a side's timed runs, as rates (work per second)."""

    values: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the runs of one side are."""
        return (self.max - self.min) / self.median if self.median else float("inf")


def rates(work: float, seconds: Sequence[float]) -> Stats:
    return Stats(tuple(work / s for s in seconds))


def ratio_of_medians(ours: Stats, peer: Stats) -> float:
    return ours.median / peer.median


def against_side(report: Report, name: str, rate: float) -> str:
    """`" = R x NAME's median"` for a rate (a ceiling) when `name` ran in `report`, else ""."""
    side = next((side for side in report.sides if side.name == name), None)
    return "" if side is None else f" = {rate / side.stats.median:.2f}x {name}'s median"


# --------------------------------------------------------------------------------- CPU load
def _busy_jiffies(stat_text: str) -> tuple[int, int]:
    """(busy, total) jiffies of the aggregate `cpu` line of /proc/stat. Busy excludes idle and
    iowait; guest time is already inside user/nice."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            fields = [int(v) for v in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq = fields[:7]
            steal = fields[7] if len(fields) > 7 else 0
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError("no aggregate cpu line in /proc/stat")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _process_cpu() -> dict[int, tuple[str, int, float]]:
    """{pid: (command name, parent pid, CPU seconds)} of every process readable now."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = _read(f"/proc/{name}/stat")
        except OSError:
            continue
        # comm is in parentheses and may hold spaces; the fields after it are space separated.
        comm = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        out[int(name)] = (comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    return out


def _command(pid: int, fallback: str, width: int = 60) -> str:
    """The start of a process's command line (its name if that cannot be read)."""
    try:
        argv = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    except OSError:
        argv = ""
    return (argv or fallback)[:width]


def _descendants(root: int, table: dict[int, tuple[str, int, float]]) -> set[int]:
    mine, grew = {root}, True
    while grew:
        new = {pid for pid, (_, ppid, _) in table.items() if ppid in mine} - mine
        mine |= new
        grew = bool(new)
    return mine


@dataclasses.dataclass(frozen=True)
class Load:
    """CPU use by processes other than the harness over a window.

    Attributes:
      wall: seconds of the window.
      other_cores: mean cores busy with other work (machine busy time minus ours, / wall).
      loadavg: the 1-minute load average at the end of the window (includes our own work).
      top: the other processes that used the most CPU, as (name, pid, cores); processes
        that started and ended inside the window are missed here (not in `other_cores`).
    """

    wall: float
    other_cores: float
    loadavg: float
    top: tuple[tuple[str, int, float], ...] = ()


class LoadWindow:
    """Measures other processes' CPU use between `__enter__` and `__exit__`.

    Own time is this process and its reaped children (os.times), so exit the window only after
    waiting for the worker.
    """

    def __enter__(self):
        self._tick = os.sysconf("SC_CLK_TCK")
        self._busy0 = _busy_jiffies(_read("/proc/stat"))[0]
        self._own0 = _own_cpu_seconds()
        self._procs0 = _process_cpu()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall0
        busy = (_busy_jiffies(_read("/proc/stat"))[0] - self._busy0) / self._tick
        own = _own_cpu_seconds() - self._own0
        procs = _process_cpu()
        mine = _descendants(os.getpid(), {**self._procs0, **procs})
        used = [
            (comm, pid, (cpu - self._procs0.get(pid, (None, None, 0.0))[2]) / wall)
            for pid, (comm, _, cpu) in procs.items()
            if pid not in mine
        ]
        top = tuple(
            (_command(pid, comm), pid, cores)
            for comm, pid, cores in sorted((u for u in used if u[2] >= 0.01), key=lambda u: -u[2])[
                :3
            ]
        )
        self.load = Load(wall, max(0.0, busy - own) / wall, os.getloadavg()[0], top)
        return False


def idle_load(seconds: float = 3.0) -> Load:
    """Other processes' CPU use while the harness sleeps."""
    with LoadWindow() as window:
        time.sleep(seconds)
    return window.load


def contended(loads: Sequence[Load], max_other_cores: float) -> list[str]:
    """Reasons the figure is not a measurement: windows where other work used more than
    `max_other_cores` cores on average."""
    reasons = []
    for i, load in enumerate(loads):
        if load.other_cores > max_other_cores:
            who = ", ".join(f"{c} (pid {p}) {u:.2f}" for c, p, u in load.top) or "unnamed"
            reasons.append(
                f"window {i}: other processes used {load.other_cores:.2f} cores "
                f"(limit {max_other_cores:.2f}) over {load.wall:.1f} s; top: {who}"
            )
    return reasons


# ------------------------------------------------------------------------------- worker side
def set_torch_threads() -> int | None:
    """In a worker: torch's intra-op threads = the harness's thread count (None: no torch)."""
    n = os.environ.get(THREADS_ENV)
    try:
        import torch
    except ImportError:
        return None
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def emit(seconds: Sequence[float], work: float, unit: str, **extra) -> None:
    """Prints a worker's result line: seconds of each timed run and the work done in each."""
    threads = {"xla": len(os.sched_getaffinity(0))}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    source = getattr(sys.modules.get("perception_rl"), "__file__", None)
    line = dict(
        seconds=list(map(float, seconds)),
        work=work,
        unit=unit,
        threads=threads,
        source=source and os.path.dirname(os.path.dirname(source)),
        **extra,
    )
    print(RESULT_TAG + json.dumps(line), flush=True)


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    if len(lines) != 1:
        raise ValueError(f"expected one {RESULT_TAG.strip()} line, found {len(lines)}")
    return json.loads(lines[0][len(RESULT_TAG) :])


# ------------------------------------------------------------------------------- driver side
@dataclasses.dataclass(frozen=True)
class Side:
    """One contender: a name and the worker command that times it."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables of its workers


@dataclasses.dataclass
class SideResult:
    name: str
    runs: list[dict] = dataclasses.field(default_factory=list)  # one result per round

    @property
    def stats(self) -> Stats:
        return Stats(tuple(r["work"] / s for r in self.runs for s in r["seconds"]))

    @property
    def unit(self) -> str:
        return self.runs[0]["unit"]


@dataclasses.dataclass
class Report:
    command: str
    sides: list[SideResult]
    loads: list[Load]
    threads: int
    reasons: list[str]
    order: list[str]

    @property
    def contended(self) -> bool:
        return bool(self.reasons)


def alternating_order(names: Sequence[str], rounds: int) -> list[str]:
    """A B, B A, A B, ...: each side goes first in every other round."""
    order = []
    for r in range(rounds):
        order.extend(names if r % 2 == 0 else list(reversed(names)))
    return order


def worker_env(threads: int, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    env = {**os.environ, **dict(extra)}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(
        {
            THREADS_ENV: str(threads),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
    )
    return env


def run_worker(
    argv: Sequence[str], threads: int, cpus: Sequence[int], env: Sequence[tuple[str, str]] = ()
) -> tuple[dict, Load]:
    """Runs one worker pinned to `cpus`; returns its result and the window's load."""
    with LoadWindow() as window:
        proc = subprocess.run(
            list(argv),
            env=worker_env(threads, env),
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    if proc.returncode:
        raise RuntimeError(
            f"worker failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr[-4000:]}"
        )
    return parse_result(proc.stdout), window.load


def export_revision(rev: str, into: str) -> str:
    """`perception_rl/` at git revision `rev`, exported under `into`: a tree to put first on a
    worker's PYTHONPATH for an A/B of two versions of our code. Returns the tree's root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = os.path.join(into, "against")
    os.makedirs(tree)
    archive = subprocess.run(
        ["git", "-C", root, "archive", rev, "perception_rl"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def snapshot_tree(into: str) -> str:
    """A copy of this working tree's `perception_rl/` under `into`, so an A/B's "ours" side
    measures the code as it was when the benchmark started, whatever is edited meanwhile."""
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = os.path.join(into, "ours")
    shutil.copytree(
        os.path.join(root, "perception_rl"),
        os.path.join(tree, "perception_rl"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tree


def command_line() -> str:
    """The command that produced the figure, with the commit it ran at."""
    cmd = shlex.join(["python", *sys.argv])
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        commit = head + ("+dirty" if dirty else "")
    except OSError:
        commit = "unknown"
    return f"{cmd}   (commit {commit})"


def compare(
    sides: Sequence[Side],
    *,
    rounds: int = 3,
    threads: int | None = None,
    max_other_cores: float = DEFAULT_MAX_OTHER_CORES,
    idle_seconds: float = 3.0,
    log=print,
) -> Report:
    """Runs the sides' workers alternately for `rounds` rounds under a load check."""
    available = sorted(os.sched_getaffinity(0))
    threads = threads or len(available)
    if threads > len(available):
        raise ValueError(f"threads={threads} but only {len(available)} CPUs are available.")
    cpus = available[:threads]
    results = {s.name: SideResult(s.name) for s in sides}
    by_name = {s.name: s for s in sides}
    loads = [idle_load(idle_seconds)]
    log(
        f"idle check: other processes use {loads[0].other_cores:.2f} cores "
        f"(1-min load average {loads[0].loadavg:.2f})"
    )
    order = alternating_order([s.name for s in sides], rounds)
    for i, name in enumerate(order):
        result, load = run_worker(by_name[name].argv, threads, cpus, by_name[name].env)
        results[name].runs.append(result)
        loads.append(load)
        rate = result["work"] / statistics.median(result["seconds"])
        log(
            f"  [{i + 1}/{len(order)}] {name}: median {rate:.1f} {result['unit']}/s; "
            f"other work {load.other_cores:.2f} cores over {load.wall:.0f} s "
            f"(1-min load average {load.loadavg:.2f}, ours included)"
        )
    reasons = contended(loads, max_other_cores)
    for side in results.values():
        for run in side.runs:
            for kind, n in run["threads"].items():
                if n != threads:
                    reasons.append(f"{side.name}: {kind} ran {n} threads, not {threads}")
    return Report(command_line(), list(results.values()), loads, threads, reasons, order)


def format_report(report: Report, *, baseline: str | None = None) -> str:
    """The figure: min / median / max per side, ratio of medians, and the contention verdict."""
    lines = [
        f"command: {report.command}",
        (
            f"threads: {report.threads} (XLA: CPU affinity; torch: set_num_threads); "
            f"{len(report.order)} worker runs, order {' '.join(report.order)}"
        ),
    ]
    width = max(len(s.name) for s in report.sides)
    for side in report.sides:
        st = side.stats
        lines.append(
            f"  {side.name:<{width}}  median {st.median:10.2f} {side.unit}/s   "
            f"min {st.min:10.2f}   max {st.max:10.2f}   ({len(st.values)} timed runs)"
        )
    if baseline is not None:
        peer = next(s for s in report.sides if s.name == baseline)
        for side in report.sides:
            if side is not peer:
                lines.append(
                    f"  ratio of medians {side.name} / {peer.name}: "
                    f"{ratio_of_medians(side.stats, peer.stats):.2f}x"
                )
    if report.contended:
        lines.append("CONTENDED: other work shared the CPUs; these figures are NOT a measurement")
        lines.extend(f"  - {r}" for r in report.reasons)
    else:
        worst = max(load.other_cores for load in report.loads)
        lines.append(f"quiet: other processes used at most {worst:.2f} cores in any window")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """The harness's command-line options (driver and worker)."""
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPUs per side (default: all available)"
    )
    parser.add_argument(
        "--max-other-cores",
        type=float,
        default=DEFAULT_MAX_OTHER_CORES,
        help="other work (cores) above which a figure is flagged CONTENDED",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 instead of reporting a contended figure"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def finish(report: Report, *, baseline: str | None, strict: bool, extra: Sequence[str] = ()):
    """Prints the report (and extra lines such as the roofline); exit 3 if strict and contended."""
    if strict and report.contended:
        print("REFUSED: " + "; ".join(report.reasons), file=sys.stderr)
        sys.exit(EXIT_CONTENDED)
    print(format_report(report, baseline=baseline))
    for line in extra:
        print(line)


# ------------------------------------------------------------------------------- roofline
def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s of the default JAX device (best of `repeats`)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    dot(a).block_until_ready()
    return 2 * n**3 / best_seconds(lambda: dot(a).block_until_ready(), repeats)


def memory_bandwidth(megabytes: int = 256, repeats: int = 10) -> float:
    """Measured bytes/s of a jitted in-place pass (read + write, input donated so no fresh
    pages are touched) over `megabytes` of float32: the DRAM bandwidth XLA's loops reach."""
    import jax
    import jax.numpy as jnp

    step = jax.jit(lambda v: v * 1.0001 + 1.0, donate_argnums=0)
    x = [step(jnp.ones((megabytes * 2**20 // 4,), jnp.float32)).block_until_ready()]

    def run():
        x[0] = step(x[0]).block_until_ready()

    return 2 * x[0].nbytes / best_seconds(run, repeats)


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cost(compiled) -> dict[str, float]:
    """FLOPs and bytes accessed of a compiled XLA program (XLA's cost analysis)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "bytes": float(analysis.get("bytes accessed", 0.0)),
    }


def roofline_line(
    name: str, flops: float, nbytes: float, seconds: float, peak: float, bandwidth: float
) -> str:
    """`name: X GFLOP/s = p% of the matmul peak; Y GB/s = q% of the measured bandwidth`."""
    f, b = flops / seconds, nbytes / seconds
    return (
        f"  {name}: {flops / 1e9:.3f} GFLOP, {nbytes / 1e6:.1f} MB in {seconds * 1e3:.2f} ms = "
        f"{f / 1e9:.1f} GFLOP/s ({f / peak:.0%} of matmul peak {peak / 1e9:.0f}), "
        f"{b / 1e9:.1f} GB/s ({b / bandwidth:.0%} of copy bandwidth {bandwidth / 1e9:.1f})"
    )
