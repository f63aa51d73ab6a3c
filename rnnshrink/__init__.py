"""rnnshrink: make trained LSTM networks small and fast without retraining.

Read a checkpoint with :func:`read`, inspect it with :func:`rnnshrink.report.summarize`, run
it with :func:`rnnshrink.model.run_stack`.
"""

__version__ = "0.1.0"

from .errors import InputError, OptionError, RnnshrinkError  # noqa: E402
from .io import read  # noqa: E402

__all__ = ["InputError", "OptionError", "RnnshrinkError", "__version__", "read"]
