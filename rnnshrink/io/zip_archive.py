"""Zip archives read in place: never extracted, every name and size checked before use.

PyTorch (>= 1.6) and Keras 3 (``.keras``) checkpoints are zip files. :class:`Archive` refuses
an archive whose member names repeat, are absolute or climb out with ``..`` (nothing is ever
extracted, but only a crafted file has them), then reads members only within the file: a
stored member is mapped from the file where its local header says (:meth:`Archive.view`,
zero-copy, for tensors), a compressed one is inflated to at most its declared size, and only
when that size is at most :data:`MAX_RATIO` times its compressed size (a zip bomb claims far
more; real checkpoints are stored, or compress weights less than 2:1).

References
----------
PKWARE APPNOTE.TXT 6.3.10, sections 4.3.7 (local file header) and 4.4 (fields).
"""

import mmap
import struct
import zipfile
import zlib

import numpy as np

from ..errors import InputError

MAX_RATIO = 100
_LOCAL = struct.Struct("<4s5H3L2H")  # signature, versions, flags, method, time, date, crc, sizes
# what the zipfile module raises on a damaged archive (UnicodeDecodeError is a ValueError)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
              NotImplementedError, RuntimeError, zlib.error, struct.error)


class Archive:
    """A zip file opened for reading members by name.

    Parameters
    ----------
    path : pathlib.Path

    Raises
    ------
    InputError
        Not a readable zip archive, or member names repeated, absolute or with ``..``.
    """

    def __init__(self, path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except ZIP_ERRORS as error:
            raise InputError(path, f"truncated or corrupt zip archive ({error})") from None
        self.names = [info.filename for info in infos]
        for info in infos:
            parts = info.filename.replace("\\", "/").split("/")
            if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise InputError(path, f"zip member name {info.filename[:80]!r} leaves the "
                                       "archive (absolute or ..); refused")
        if len(set(self.names)) != len(self.names):
            twice = next(n for n in self.names if self.names.count(n) > 1)
            raise InputError(path, f"zip archive holds two members named {twice[:80]!r}; refused")
        self._infos = {info.filename: info for info in infos}
        self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()

    def __contains__(self, name):
        return name in self._infos

    def _info(self, name):
        try:
            return self._infos[name]
        except KeyError:
            raise InputError(self.path, f"zip archive lacks member {name}") from None

    def read(self, name):
        """The bytes of member ``name``, inflated if compressed (within :data:`MAX_RATIO`)."""
        info = self._info(name)
        if info.compress_type == zipfile.ZIP_STORED:
            self.view(name)  # its local header and bytes lie inside the file
        elif info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise InputError(self.path, f"zip member {name} claims {info.file_size} bytes from "
                                        f"{info.compress_size} (a zip bomb?); refused")
        try:
            return self._zip.read(info)
        except ZIP_ERRORS as error:
            raise InputError(self.path, f"zip member {name} is corrupt ({error})") from None

    def view(self, name):
        """Member ``name`` as a read-only uint8 array mapped from the file, without a copy.

        Raises
        ------
        InputError
            The member is compressed, or its local header disagrees with the directory or
            lies outside the file.
        """
        info = self._info(name)
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise InputError(self.path, f"zip member {name} is compressed; PyTorch stores "
                                        "records uncompressed")
        mapped = self._mapped()
        at = info.header_offset
        if not 0 <= at <= len(mapped) - _LOCAL.size:
            raise InputError(self.path, f"zip member {name}: local header outside the file")
        fields = _LOCAL.unpack_from(mapped, at)
        start = at + _LOCAL.size + fields[9] + fields[10]
        local_name = bytes(mapped[at + _LOCAL.size:at + _LOCAL.size + fields[9]])
        if fields[0] != b"PK\x03\x04" or not _same_name(local_name, fields[2], info):
            raise InputError(self.path, f"zip member {name}: local header does not match the "
                                        "central directory")
        if start + info.file_size > len(mapped):
            raise InputError(self.path, f"truncated: zip member {name} should hold "
                                        f"{info.file_size} bytes, the file ends before")
        return np.frombuffer(mapped, np.uint8, info.file_size, start)

    def _mapped(self):
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map


def _same_name(local, flags, info):
    """Whether a local header's name bytes are the directory's name (as zipfile checks it)."""
    try:
        return local.decode("utf-8" if flags & 0x800 else "cp437") == info.orig_filename
    except UnicodeDecodeError:
        return False
