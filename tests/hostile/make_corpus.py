"""Write the hostile corpus to a folder: ``python tests/hostile/make_corpus.py OUT``.

Each entry goes to ``OUT/<category>/<name>/model/<file>`` with its side files where the entry
puts them (``../secret.bin`` beside ``model/``), and ``OUT/index.tsv`` lists entry, file and
the problem rnnshrink must report. The tests build the same files in temporary folders
(``tests/test_hostile.py``); this script is for looking at them, or seeding a fuzzer.
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import hostile  # noqa: E402


def main(out):
    out = Path(out)
    rows = []
    for entry in hostile.entries():
        folder = out / entry.category / entry.name / "model"
        folder.mkdir(parents=True, exist_ok=False)
        entry.build(folder)
        rows.append(f"{entry.id}\t{(folder / entry.file).relative_to(out)}\t{entry.problem}")
    (out / "index.tsv").write_text("entry\tfile\tproblem\n" + "\n".join(rows) + "\n")
    print(f"wrote {len(rows)} hostile files under {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n")[0])
    main(sys.argv[1])
