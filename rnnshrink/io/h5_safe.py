"""HDF5 files opened so that reading them stays inside them and allocates only what they hold.

HDF5 can point outside the file: an external link names another file (any path), a dataset
with external storage keeps its bytes in other files (``/etc/passwd`` included), a virtual
dataset maps regions of other files. And a dataset's shape is only a claim: a chunked dataset
of shape (10^6, 10^6) whose chunks were never written takes a few hundred bytes on disk and
``dataset[()]`` would allocate 4 TB of fill values. :func:`open_h5` refuses all of these before
the caller reads anything: every link and every dataset of the file is checked once, on
metadata only. And libhdf5 itself loops forever on a global heap whose free-space object has
size 0, and crashes reading a damaged variable-length sequence type: the heaps are walked
here first, and every attribute and dataset must be of a plain type (numbers, booleans,
strings). A dataset without filters must store all its bytes; one with filters
(compression) at most :data:`MAX_RATIO` times fewer (deflate's own limit is about 1032:1).

References
----------
HDF5 User's Guide, "HDF5 Groups" (external links) and "HDF5 Datasets" (external storage,
virtual datasets, storage allocation and fill values).
"""

import contextlib

import h5py

from ..errors import InputError

MAX_RATIO = 1100
_GCOL_MIN = 4096  # libhdf5's smallest global heap collection
# numbers, strings (fixed or variable length) and h5py's booleans (an enum): what Keras and
# rnnshrink store; libhdf5 can crash reading a damaged variable-length sequence type
_PLAIN_TYPES = (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING, h5py.h5t.ENUM)
_CLASSES = {h5py.h5t.TIME: "time", h5py.h5t.BITFIELD: "bitfield", h5py.h5t.OPAQUE: "opaque",
            h5py.h5t.COMPOUND: "compound (complex numbers, records)",
            h5py.h5t.REFERENCE: "reference", h5py.h5t.VLEN: "variable-length sequence",
            h5py.h5t.ARRAY: "array"}
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)  # what h5py raises on damage


@contextlib.contextmanager
def open_h5(path, target=None):
    """Open ``target`` (default ``path``: a path or a file-like object) read-only and check it.

    Parameters
    ----------
    path : pathlib.Path
        The file named in error messages.

    Raises
    ------
    InputError
        Not HDF5, damaged, or pointing outside itself or claiming more than it stores.
    """
    if target is None:
        with open(path, "rb") as f:
            check_global_heaps(path, f)
    else:
        check_global_heaps(path, target)
        target.seek(0)
    try:
        h5 = h5py.File(path if target is None else target, "r")
    except H5_ERRORS as error:
        raise InputError(path, f"truncated or corrupt HDF5 file ({error})") from None
    with h5:
        try:
            check_file(path, h5)
        except H5_ERRORS as error:
            raise InputError(path, f"truncated or corrupt HDF5 file ({error})") from None
        yield h5


def check_global_heaps(path, f, chunk=1 << 20):
    """Refuse a global heap collection (where variable-length strings live) that libhdf5 would
    walk forever: an object whose size does not move the walk forward or reaches past the
    collection. Collections are found by their header: ``GCOL``, version 1, three zero bytes,
    a size of at least 4096 bytes that fits in the file."""
    size = f.seek(0, 2)
    start = 0
    while start < size:
        f.seek(start)
        block = f.read(chunk + 15)
        at = block.find(b"GCOL\x01\x00\x00\x00")
        while at != -1:
            length = int.from_bytes(block[at + 8:at + 16], "little")
            if len(block) >= at + 16 and _GCOL_MIN <= length <= size - start - at:
                f.seek(start + at)
                _walk_heap(path, f.read(length), start + at)
            at = block.find(b"GCOL\x01\x00\x00\x00", at + 1)
        start += chunk


def _walk_heap(path, heap, offset):
    """The object walk of libhdf5's ``H5HG__cache_heap_deserialize``, checked step by step."""
    p = 16
    while p + 16 <= len(heap):
        index = int.from_bytes(heap[p:p + 2], "little")
        length = int.from_bytes(heap[p + 8:p + 16], "little")
        step = (length if index == 0 else 16 + ((length + 7) & ~7)) % 2**64
        if step == 0 or step > len(heap) - p:
            raise InputError(path, f"HDF5 global heap at byte {offset} is damaged (object "
                                   f"{index} of {length} bytes); refused")
        p += step


def check_file(path, h5):
    """Refuse external links anywhere in ``h5``, and any dataset :func:`check_dataset` refuses.

    Every link is looked at before any soft link is followed (one could lead through an
    external link). The names are collected first and the objects opened afterwards: h5py
    turns an exception raised inside a visit callback into a SystemError.
    """
    links = {name: h5.get(name, getlink=True) for name in link_names(h5)}
    for name, link in links.items():  # all of them before following any soft link
        if isinstance(link, h5py.ExternalLink):
            raise InputError(path, f"HDF5 link /{name} points into another file "
                                   f"({link.filename[:80]}); refused")
    _check_attribute_types(path, h5)
    for name, link in links.items():
        target = h5.get(name)
        if target is None:
            raise InputError(path, f"HDF5 link /{name} points to nothing")
        if isinstance(link, h5py.HardLink):
            _check_attribute_types(path, target)
            if isinstance(target, h5py.Dataset):
                check_dataset(path, target)


def link_names(group):
    """The names of every link under ``group``, recursively (hard, soft and external)."""
    names = []
    group.visit_links(names.append)
    return names


def _check_attribute_types(path, item):
    for key in item.attrs:
        kind = item.attrs.get_id(key).get_type().get_class()
        if kind not in _PLAIN_TYPES:
            raise InputError(path, f"HDF5 attribute {key!r} of {item.name} is of type "
                                   f"{_CLASSES.get(kind, kind)}, which rnnshrink does not read")


def check_dataset(path, dataset):
    """Refuse a dataset stored outside the file, claiming more bytes than the file holds, or of
    a type other than numbers, booleans and strings."""
    name = dataset.name
    kind = dataset.id.get_type().get_class()
    if kind not in _PLAIN_TYPES:
        raise InputError(path, f"HDF5 dataset {name} is of type {_CLASSES.get(kind, kind)}, "
                               "which rnnshrink does not read")
    if dataset.is_virtual:
        raise InputError(path, f"HDF5 dataset {name} is virtual (mapped from other files); refused")
    if dataset.external:
        raise InputError(path, f"HDF5 dataset {name} keeps its data in external files "
                               f"({str(dataset.external[0][0])[:80]}); refused")
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if declared and (stored < declared if not filtered else declared > MAX_RATIO * stored):
        raise InputError(path, f"HDF5 dataset {name} of shape {dataset.shape} declares "
                               f"{declared} bytes but the file stores {stored}; refused")
