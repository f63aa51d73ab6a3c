"""Exceptions raised by the rnnshrink library.

The library never prints and never exits; ``rnnshrink.cli`` alone turns these into one
``Error:`` line and a non-zero exit status.
"""


class RnnshrinkError(Exception):
    """Base class of every error rnnshrink raises on purpose."""


class InputError(RnnshrinkError):
    """A model file that cannot be read: missing, truncated, unsafe, or not an LSTM checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
        The file the problem was found in; it is named first in the message.
    problem : str
        What is wrong, in one line.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OptionError(RnnshrinkError):
    """An option or parameter value outside what rnnshrink accepts."""
