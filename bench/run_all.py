"""Every peer benchmark in one command: setup, each model, then BENCHMARKS.md and the plot.

Not a test: run by hand from the repository root after ``pip install ".[bench]"``. Each step is
its own process with ``PYTHONPATH`` set to this checkout (so it measures this rnnshrink) and
one BLAS / OpenMP thread; the models' tables are printed as they finish and the wall time of
each step is printed at the end.

    python bench/run_all.py [--models fixture pydoc lstm1024] [--repeats 10]
"""

import argparse
import os
import subprocess
import sys
import time

from _common import ROOT
from tasks import TASKS


def step(arguments):
    """Run ``python bench/ARGUMENTS`` in this checkout; its wall seconds (exit on failure)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    print(f"$ python bench/{' '.join(arguments)}", flush=True)
    if subprocess.run([sys.executable, str(ROOT / "bench" / arguments[0]), *arguments[1:]],
                      cwd=ROOT, env=env).returncode:
        sys.exit(f"bench/{arguments[0]} failed")
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per method")
    args = parser.parse_args()
    seconds = {"setup_models.py": step(["setup_models.py"])}
    for model in args.models:
        seconds[model] = step(["bench_peers.py", "--model", model, "--repeats", str(args.repeats)])
    total = sum(seconds.values())
    seconds["write_benchmarks.py"] = step(["write_benchmarks.py", "--run-seconds", f"{total:.0f}"])
    for name, value in seconds.items():
        print(f"{name}: {value:.0f} s")
    print(f"total: {sum(seconds.values()) / 60:.1f} min")


if __name__ == "__main__":
    main()
