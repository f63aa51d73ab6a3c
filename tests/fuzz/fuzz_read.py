"""Fuzz one reader by hand: ``python tests/fuzz/fuzz_read.py FORMAT [options]``.

FORMAT is one of ``_fuzzing.READERS`` (torch-zip, torch-legacy, safetensors, onnx, keras-h5,
keras-zip, rnnshrink). Each case damages a small valid file of that format (``_fuzzing``:
byte edits and structure-aware edits) and reads it; a Model or an InputError is a pass,
anything else a finding.

* ``--runs N`` (no atheris needed): N random cases; every distinct finding (exception type
  and the line that raised it) is printed once and its file saved under ``--out``; the exit
  status is the number of distinct findings (0: none). ``OUT/FORMAT.current`` names the case
  being read, so a hang (a read that never returns) can be reproduced by its number.
* ``--atheris [libFuzzer flags]``: coverage-guided with atheris (``pip install atheris``),
  libFuzzer mutating the seeds and, half the time, the structure-aware mutators as its custom
  mutator; e.g. ``--atheris -atheris_runs=10000``.

Run with ``OPENBLAS_NUM_THREADS=1`` from the repository root.
"""

import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from _fuzz_seeds import seeds  # noqa: E402
from _fuzzing import READERS, case, check_read, mutate  # noqa: E402


def _case_path(folder, name):
    return Path(folder) / f"case{Path(name).suffix}"


def run_random(fmt, runs, out, seed):
    """``runs`` random cases; returns the distinct findings ``{signature: file}``."""
    rng = random.Random(seed)
    folder = tempfile.mkdtemp(prefix=f"fuzz-{fmt}-")
    progress = open(Path(out) / f"{fmt}.current", "w")
    found = seeds(fmt, folder)
    findings, start = {}, time.time()
    for count in range(1, runs + 1):
        case_seed = rng.getrandbits(64)
        name, data = case(fmt, found, case_seed)
        path = _case_path(folder, name)
        path.write_bytes(data)
        print(f"case {case_seed}", file=progress, flush=True)  # the last line names a hang
        try:
            check_read(path)
        except Exception as error:  # noqa: BLE001 - a finding is any exception but InputError
            frame = traceback.extract_tb(error.__traceback__)[-1]
            signature = f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if signature not in findings:
                saved = Path(out) / f"{fmt}-{len(findings)}{path.suffix}"
                saved.write_bytes(data)
                findings[signature] = saved
                print(f"[{count}] case {case_seed}: {signature}: {str(error)[:200]} -> {saved}",
                      flush=True)
        if count % 1000 == 0:
            print(f"{fmt}: {count} cases, {len(findings)} findings, {time.time() - start:.0f} s",
                  flush=True)
    return findings


def run_atheris(fmt, argv):
    """Coverage-guided fuzzing with atheris; libFuzzer flags come from ``argv``."""
    import atheris

    folder = tempfile.mkdtemp(prefix=f"atheris-{fmt}-")
    found = seeds(fmt, folder)
    corpus = Path(folder) / "corpus"
    corpus.mkdir()
    for name, data in found.items():
        (corpus / name).write_bytes(data)
    suffix = Path(sorted(found)[0]).suffix

    def test_one_input(data):
        path = _case_path(folder, "x" + suffix)
        path.write_bytes(data)
        check_read(path)

    def custom_mutator(data, max_size, seed):
        if seed % 2:
            return atheris.Mutate(data, max_size)
        return mutate(fmt, data, random.Random(seed))[:max_size]

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *argv, str(corpus)], test_one_input,
                  custom_mutator=custom_mutator)
    atheris.Fuzz()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=READERS)
    parser.add_argument("--runs", type=int, default=10_000, help="random cases (no atheris)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the cases")
    parser.add_argument("--out", default=".", help="folder for the files of findings")
    parser.add_argument("--atheris", action="store_true", help="fuzz with atheris instead")
    args, rest = parser.parse_known_args()
    if args.atheris:
        run_atheris(args.format, rest)
        return 0
    findings = run_random(args.format, args.runs, args.out, args.seed)
    print(f"{args.format}: {args.runs} cases, {len(findings)} distinct findings")
    return len(findings)


if __name__ == "__main__":
    sys.exit(main())
