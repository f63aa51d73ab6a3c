"""Every peer benchmark in one command: setup, each model, then BENCHMARKS.md and the plot.

Not a test: run by hand from the repository root after ``pip install ".[bench]"``. Each step is
its own process with ``PYTHONPATH`` set to this checkout (so it measures this rnnshrink) and
one BLAS / OpenMP thread; the models' tables are printed as they finish, and the wall and CPU
(user + system) seconds of each step at the end — CPU seconds are what an unloaded machine
would take, wall seconds what this run took on a shared one.

    python bench/run_all.py [--models fixture pydoc lstm1024] [--repeats N]
"""

import argparse
import os
import resource
import subprocess
import sys
import time

from _common import ROOT
from tasks import TASKS


def step(arguments):
    """Run ``python bench/ARGUMENTS`` in this checkout; its (wall, CPU) seconds (exit on failure)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started, before = time.perf_counter(), _children_cpu()
    print(f"$ python bench/{' '.join(arguments)}", flush=True)
    if subprocess.run([sys.executable, str(ROOT / "bench" / arguments[0]), *arguments[1:]],
                      cwd=ROOT, env=env).returncode:
        sys.exit(f"bench/{arguments[0]} failed")
    return time.perf_counter() - started, _children_cpu() - before


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--repeats", type=int, help="timed runs per method (default: the model's)")
    args = parser.parse_args()
    repeats = ["--repeats", str(args.repeats)] if args.repeats else []
    seconds = {"setup_models.py": step(["setup_models.py"])}
    for model in args.models:
        seconds[f"bench_peers.py --model {model}"] = step(
            ["bench_peers.py", "--model", model, *repeats])
    wall = sum(value[0] for value in seconds.values())
    seconds["write_benchmarks.py"] = step(["write_benchmarks.py", "--run-seconds", f"{wall:.0f}"])
    for name, (wall, cpu) in seconds.items():
        print(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU")
    print(f"total: {sum(value[0] for value in seconds.values()) / 60:.1f} min wall, "
          f"{sum(value[1] for value in seconds.values()) / 60:.1f} min CPU")


if __name__ == "__main__":
    main()
