"""Child processes: run one measurement in a fresh process, watch its process tree (wall time,
peak RSS, CPU used by others), and wait for a quiet machine before it.

A measurement child is ``bench/child.py SPEC``: it prints one ``RESULT_MARKER`` line with its
result as JSON. ``run_child`` can point the child at another source tree (``tree``, a baseline
checkout): the child then imports the product (``model``, ``transforms``, ``pipeline``) from that
tree and reports where from, and the parent refuses a result imported from anywhere else.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bench.machine import BENCH_DIR, REPO_ROOT

RESULT_MARKER = "@@BENCH_RESULT@@ "
#: Foreign CPU load (cores busy with other processes, on average) above which a run is flagged.
NOISY_CORES = 0.25


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)



def exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the running child is killed, temporary files removed


def _busy(times: Any) -> float:
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    proc.kill()
    proc.wait()


def _watch(proc: subprocess.Popen, started: float, poll_s: float, timeout_s: Optional[float], label: str,
           err_path: Path) -> tuple[int, int, list]:
    """Poll the RSS of ``proc``'s process tree until it exits: (peak bytes, samples, timeline)."""
    import psutil

    root = psutil.Process(proc.pid)
    peak, samples, timeline, next_timeline = 0, 0, [], 0.0
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        peak, samples = max(peak, total), samples + 1
        now = time.perf_counter() - started
        if now >= next_timeline:
            timeline.append((round(now, 2), round(total / 2**20, 1)))
            next_timeline = now + max(1.0, now / 200)  # at most a few hundred points
        if timeout_s and now > timeout_s:
            raise RuntimeError(f"{label}: timed out after {timeout_s:.0f}s (logs: {err_path})")
        time.sleep(poll_s)
    return peak, samples, timeline


def run_measured(cmd: list[str], label: str, workdir: Path, poll_s: float = 0.5,
                 timeout_s: Optional[float] = None, env: Optional[dict] = None,
                 cwd: Optional[Path] = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time, the peak RSS of its process tree, CPU used by it and by others."""
    import psutil

    out_path, err_path = workdir / f"{label}.stdout", workdir / f"{label}.stderr"
    me = psutil.Process()
    cpu0, self0 = psutil.cpu_times(), me.cpu_times()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd or REPO_ROOT, env=env)
        try:
            peak, samples, timeline = _watch(proc, started, poll_s, timeout_s, label, err_path)
        except BaseException:  # interrupted or timed out: take the child (and what it started) down too
            kill_tree(proc)
            raise
    wall = time.perf_counter() - started
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, self1 = psutil.cpu_times(), me.cpu_times()
    child_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    own_cpu = (self1.user + self1.system) - (self0.user + self0.system)
    foreign = max(0.0, _busy(cpu1) - _busy(cpu0) - child_cpu - own_cpu)
    stdout = out_path.read_text()
    if proc.returncode != 0:
        tail = "".join(err_path.read_text().splitlines(True)[-30:])
        raise RuntimeError(f"{label} failed with exit status {proc.returncode}:\n{tail}")
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    return {
        "label": label,
        "wall_s": wall,
        "peak_tree_rss_mb": peak / 2**20,
        "rss_samples": samples,
        "rss_timeline_mb": timeline,
        "child_cpu_s": child_cpu,
        "foreign_cpu_s": foreign,
        "foreign_cores": foreign / wall if wall > 0 else 0.0,
        "loadavg_before": load0[0],
        "loadavg_after": os.getloadavg()[0],
        "result": result,
        "stdout": stdout,
    }


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by every process on the machine, averaged over ``seconds``."""
    import psutil

    before = psutil.cpu_times()
    time.sleep(seconds)
    return (_busy(psutil.cpu_times()) - _busy(before)) / seconds


def wait_for_quiet(limit_s: float, threshold: float = NOISY_CORES) -> dict[str, float]:
    """Wait (at most ``limit_s``) until other processes leave the CPU alone; says how long and how busy."""
    started = time.perf_counter()
    busy = busy_cores()
    announced = False
    while busy > threshold and time.perf_counter() - started < limit_s:
        if not announced:
            log(f"  machine busy ({busy:.2f} cores used by other processes): waiting up to {limit_s:.0f}s")
            announced = True
        time.sleep(4.0)
        busy = busy_cores()
    return {"waited_s": round(time.perf_counter() - started, 1), "busy_cores_before": round(busy, 2)}



def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a child that must import the product from ``tree`` (same interpreter and
    packages, ``PYTHONPATH`` led by that tree, so the processes a child starts import it too)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def check_imported_from(result: dict[str, Any], tree: Path, label: str) -> None:
    """Raise unless every product package the child reports was imported from ``tree``."""
    imported = result.get("imported_from") or {}
    if not imported:
        raise RuntimeError(f"{label}: the child did not say where it imported the product from")
    root = Path(tree).resolve()
    wrong = {name: path for name, path in imported.items() if root not in Path(path).resolve().parents}
    if wrong:
        raise RuntimeError(f"{label}: meant to run {root}, but imported {wrong}")


def run_child(kind: str, spec: dict, label: str, workdir: Path, timeout_s: Optional[float] = None,
              quiet_wait_s: float = 0.0, tree: Optional[Path] = None) -> dict[str, Any]:
    """One measurement (``kind``, see ``bench.measure.CHILDREN``) in a fresh process, the product
    imported from ``tree`` (default: this checkout); its result and what the parent saw."""
    tree = Path(tree or REPO_ROOT).resolve()
    quiet = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else {}
    spec = {"kind": kind, "tree": str(tree), **spec}
    spec_path = workdir / f"{label}.json"
    spec_path.write_text(json.dumps(spec))
    measured = run_measured([sys.executable, str(BENCH_DIR / "child.py"), str(spec_path)], label, workdir,
                            timeout_s=timeout_s, env=tree_env(tree), cwd=tree)
    if measured["result"] is None:
        raise RuntimeError(f"{label}: no result line in its output")
    check_imported_from(measured["result"], tree, label)
    measured.pop("stdout")
    measured.pop("rss_timeline_mb")
    measured.update(quiet)
    # the child's own high-water mark is exact; the tree poll (twice a second, cheap enough not to
    # disturb the measurement) can miss a short peak, but sees the children a child may start
    measured["peak_rss_mb"] = max(measured["peak_tree_rss_mb"], measured["result"].get("ru_maxrss_mb", 0.0))
    flag = " (NOISY: other processes used %.2f cores)" % measured["foreign_cores"] if measured["foreign_cores"] > NOISY_CORES else ""
    log(f"  {label}: {measured['wall_s']:.1f}s, peak RSS {measured['peak_rss_mb']:.0f} MB{flag}")
    return measured

