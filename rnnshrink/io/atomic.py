"""Atomic output: write to a temporary file beside the target, rename into place on success.

An error or an interrupt leaves no partial file, and an existing output stays as it was until
the new one is complete: the data is flushed to disk (``fsync``) before the rename, which
replaces the old file in one step. A process killed outright (SIGKILL, power loss) cannot
remove its temporary file; it is named ``.<output name>.rnnshrink-tmp-<random>`` (see
:data:`TEMPORARY_MARK`) in the output's folder and is safe to delete.
"""

import contextlib
import os
import tempfile
from pathlib import Path

from ..errors import OptionError

TEMPORARY_MARK = ".rnnshrink-tmp-"


def check_output_path(output, inputs=(), force=False):
    """Refuse to write over an input file (any spelling, symlink or hard link of it), or over
    an existing file without ``force``.

    Parameters
    ----------
    inputs : iterable of path-like
        The files read: the model and, once it is read, its side files (ONNX external data).
    """
    output = Path(output)
    for source in inputs:
        if Path(source).exists() and output.exists() and os.path.samefile(output, source):
            raise OptionError(f"{output}: refusing to overwrite the input file")
    if output.exists() and not force:
        raise OptionError(f"{output}: already exists (pass --force to replace it)")
    if not output.parent.exists():
        raise OptionError(f"{output}: folder {output.parent} does not exist")


@contextlib.contextmanager
def atomic_path(output):
    """Yield a temporary path in the output's folder; rename it to ``output`` on success.

    Examples
    --------
    >>> with atomic_path("small.h5") as tmp:          # doctest: +SKIP
    ...     write_file(tmp)
    """
    output = Path(output)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}{TEMPORARY_MARK}",
                                         dir=output.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
