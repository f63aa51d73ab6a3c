"""Hostile HDF5 files: Keras files with missing, misshapen or mistyped weights, configs that
are not JSON, links and storage pointing into other files, sizes that lie, NaN / Inf weights;
and rnnshrink containers that lie about their weights."""

import functools
import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from . import Entry

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
KERNEL = "model_weights/lstm/lstm/lstm_cell/kernel:0"  # (16, 512) float32 in keras2_charlm.h5
RECURRENT = "model_weights/lstm_1/lstm_1/lstm_cell/recurrent_kernel:0"


def _keras(change):
    """keras2_charlm.h5 with ``change(h5_file, folder)`` applied."""
    def build(folder):
        path = folder / "m.h5"
        shutil.copy(FIXTURES / "keras2_charlm.h5", path)
        with h5py.File(path, "r+") as f:
            change(f, folder)
    return build


def _replace(name, data=None, **options):
    def change(f, folder):
        del f[name]
        f.create_dataset(name, data=data, **options)
    return change


def _set(name, index, value):
    def change(f, folder):
        values = f[name][()]
        values[index] = value
        f[name][...] = values
    return change


def _attr(key, value):
    def change(f, folder):
        f.attrs[key] = value
    return change


def _external_link(f, folder):
    (folder.parent / "other.h5").write_bytes((FIXTURES / "keras2_cudnn.h5").read_bytes())
    f["model_weights/lstm/lstm/lstm_cell/extra"] = h5py.ExternalLink("../other.h5", "/")


def _soft_through_external(f, folder):
    """A soft link listed before the external link it leads through."""
    (folder.parent / "other.h5").write_bytes((FIXTURES / "keras2_cudnn.h5").read_bytes())
    f["model_weights/aaa"] = h5py.SoftLink("/zzz/model_weights")
    f["zzz"] = h5py.ExternalLink("../other.h5", "/")


def _external_storage(f, folder):
    (folder.parent / "secret.bin").write_bytes(bytes(16 * 512 * 4))
    del f[KERNEL]
    f.create_dataset(KERNEL, (16, 512), "f4", external=[(str(folder.parent / "secret.bin"), 0,
                                                          16 * 512 * 4)])


def _virtual(f, folder):
    other = folder.parent / "source.h5"
    with h5py.File(other, "w") as source:
        source["x"] = np.zeros((16, 512), np.float32)
    layout = h5py.VirtualLayout((16, 512), "f4")
    layout[...] = h5py.VirtualSource(str(other), "x", (16, 512))
    del f[KERNEL]
    f.create_virtual_dataset(KERNEL, layout)


def _vlen_type_damaged(folder):
    """A Keras 3 file whose weight_names attribute type says variable-length sequence of type
    15 (neither sequence nor string): libhdf5 crashes reading it."""
    path = folder / "m.h5"
    raw = bytearray((FIXTURES / "keras3_bidir_hardsig.h5").read_bytes())
    at = raw.index(b"weight_names\x00\x00\x00\x00\x19\x01\x00\x00") + 17  # type bit field
    raw[at] = 0xFF
    path.write_bytes(bytes(raw))


KERAS = {  # name -> (change, problem, nonfinite)
    "missing-kernel": (lambda f, _: f.__delitem__(KERNEL), "listed in weight_names is missing"),
    "kernel-shape": (_replace(KERNEL, np.zeros((16, 508), np.float32)), "do not match"),
    "kernel-int": (_replace(KERNEL, np.zeros((16, 512), np.int32)), "has dtype int32"),
    "kernel-complex": (_replace(KERNEL, np.zeros((16, 512), np.complex64)),
                       "kernel:0 is of type compound .*, which rnnshrink does not read"),
    "kernel-string": (_replace(KERNEL, np.full((16, 512), b"x")), "has dtype"),
    "kernel-scalar": (_replace(KERNEL, np.float32(1)), "do not match"),
    "config-not-json": (_attr("model_config", "{not json"), "unreadable Keras file"),
    "config-not-object": (_attr("model_config", "[1, 2]"), "unreadable Keras file"),
    "config-layers-string": (_attr("model_config", '{"class_name": "Functional", "config": '
                                                   '{"layers": "lstm"}}'), "unreadable Keras file"),
    "external-link": (_external_link, r"link .* points into another file \(\.\./other\.h5\)"),
    "soft-through-external": (_soft_through_external, r"link /zzz points into another file"),
    "external-storage": (_external_storage, "keeps its data in external files"),
    "virtual-dataset": (_virtual, "is virtual"),
    "size-lies": (lambda f, _: f.create_dataset("model_weights/lstm/lstm/lstm_cell/huge",
                                                (2**20, 2**20), "f4", chunks=(64, 64)),
                  r"declares 4398046511104 bytes but the file stores 0"),
}
NONFINITE = {"kernel-nan": _set(KERNEL, (3, 7), np.nan),
             "recurrent-inf": _set(RECURRENT, (0, 0), np.inf)}


@functools.cache
def _small_container(folder):
    """The bytes of a small container: a bidirectional projected LSTM, pruned and quantized."""
    from rnnshrink import api
    from rnnshrink.pipeline import parse_step

    path = folder / "base.h5"
    steps = [parse_step("prune:sparsity=0.5"), parse_step("quant:bits=4")]
    api.compress_file(FIXTURES / "torch_bidir_proj.pt", steps, path)
    data = path.read_bytes()
    path.unlink()
    return data


def _container(change):
    """The small container with ``change(h5_file)`` applied."""
    def build(folder):
        path = folder / "m.h5"
        path.write_bytes(_small_container(folder.parent.parent))
        with h5py.File(path, "r+") as f:
            change(f)
    return build


def _weight_attr(key, value):
    def change(f):
        f["layers/0000/d0/W"].attrs[key] = value
    return change


def _activations(gate):
    def change(f):
        f["layers/0000"].attrs["activations"] = json.dumps([gate] + [
            {"name": "tanh", "alpha": None, "beta": None}] * 2)
    return change


CONTAINER = {  # name -> (change, problem)
    "future-version": (lambda f: f.attrs.__setitem__("rnnshrink_format", 99),
                       "version 99 is not supported"),
    "no-layers": (lambda f: f.__delitem__("layers"), "damaged rnnshrink container"),
    "kind-unknown": (_weight_attr("kind", "magic"), "damaged rnnshrink container"),
    "shape-huge": (_weight_attr("shape", [2**20, 2**20]), "damaged rnnshrink container"),
    "shape-negative": (_weight_attr("shape", [-4, 3]), "damaged rnnshrink container"),
    "bits-invalid": (_weight_attr("bits", 99), "damaged rnnshrink container"),
    "codes-short": (lambda f: f["layers/0000/d0/W"].__delitem__("codes") or f[
        "layers/0000/d0/W"].create_dataset("codes", data=np.zeros(3, np.uint8)),
        "damaged rnnshrink container"),
    "external-link": (lambda f: f.__setitem__("extra", h5py.ExternalLink("/etc/hostname", "/")),
                      "points into another file"),
    "notes-not-a-list": (lambda f: f.attrs.__setitem__("notes", "5"), "not a JSON list"),
    "bias-dtype-unknown": (lambda f: f["layers/0000/d0"].attrs.__setitem__("bias_dtype", "int2"),
                           "unsupported weight dtype 'int2'"),
    "dangling-link": (lambda f: f["layers/0000"].__setitem__("lost", h5py.SoftLink("/nowhere")),
                      "link /layers/0000/lost points to nothing"),
    "activation-alpha-text": (_activations({"name": "sigmoid", "alpha": "x", "beta": None}),
                              "damaged rnnshrink container .*alpha and beta must be numbers"),
    "activation-unknown": (_activations({"name": "magic", "alpha": None, "beta": None}),
                           "damaged rnnshrink container .*unsupported activation 'magic'"),
}


def _heap_loop(folder):
    """The small container with its global heap's free-space object set to size 0: libhdf5
    walks such a heap forever (variable-length strings, every attribute here, live in it)."""
    path = folder / "m.h5"
    path.write_bytes(_small_container(folder.parent.parent))
    raw = bytearray(path.read_bytes())
    p = raw.index(b"GCOL\x01\x00\x00\x00") + 16
    while int.from_bytes(raw[p:p + 2], "little") != 0:  # to the free-space object, index 0
        p += 16 + ((int.from_bytes(raw[p + 8:p + 16], "little") + 7) & ~7)
    raw[p + 8:p + 16] = bytes(8)
    path.write_bytes(bytes(raw))


def _container_nan(f):
    steps = f["layers/0000/d0/W/steps"]
    values = steps[()]
    values.flat[0] = np.nan
    steps[...] = values


def _entries():
    for name, (change, problem) in KERAS.items():
        yield Entry("hdf5-keras", name, "m.h5", _keras(change), problem)
    yield Entry("hdf5-keras", "vlen-type-damaged", "m.h5", _vlen_type_damaged,
                "attribute 'weight_names' of .* is of type variable-length sequence")
    for name, change in NONFINITE.items():
        yield Entry("nonfinite", f"keras-{name}", "m.h5", _keras(change),
                    "has NaN or Inf in (W|R)", nonfinite=True)
    for name, (change, problem) in CONTAINER.items():
        yield Entry("hdf5-container", name, "m.h5", _container(change), problem)
    yield Entry("hdf5-container", "global-heap-loop", "m.h5", _heap_loop,
                r"HDF5 global heap at byte \d+ is damaged \(object 0 of 0 bytes\)")
    yield Entry("nonfinite", "container-steps-nan", "m.h5", _container(_container_nan),
                "has NaN or Inf in W", nonfinite=True)


ENTRIES = list(_entries())
