"""The hostile corpus: files built to attack or break the readers, each with the problem
rnnshrink must report.

Every :class:`Entry` writes its file (and any side file) into a folder when asked; nothing is
committed as a binary blob. ``tests/test_hostile.py`` runs each through ``rnnshrink.read`` and
the CLI and checks one error line, no code run (a canary file never appears), no output and
nothing else written; ``python tests/hostile/make_corpus.py OUT`` writes the corpus to a
folder to look at. The entries by category are in :mod:`.pickles` (code and lies in torch
pickles), :mod:`.archives` (zip, safetensors and ONNX files) and :mod:`.hdf5` (Keras and
container files), plus one damaged file per format in :mod:`.archives`.
"""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Entry:
    """One hostile file.

    Parameters
    ----------
    category : str
    name : str
        Unique within the category.
    file : str
        The model file's name in the folder ``build`` writes to.
    build : callable
        ``build(folder)`` writes ``folder / file``; a pickle's payload would create
        ``folder.parent / "canary"``; files "outside the model's folder" go to ``folder.parent``.
    problem : str
        Regular expression the one-line problem must match.
    nonfinite : bool
        NaN / Inf weights: refused by default, read with ``allow_nonfinite``.
    """

    category: str
    name: str
    file: str
    build: Callable
    problem: str
    nonfinite: bool = False

    @property
    def id(self):
        return f"{self.category}/{self.name}"


def entries():
    """Every entry of the corpus."""
    from . import archives, hdf5, pickles

    found = [*pickles.ENTRIES, *archives.ENTRIES, *hdf5.ENTRIES]
    assert len({e.id for e in found}) == len(found), "entry names must be unique"
    return found
