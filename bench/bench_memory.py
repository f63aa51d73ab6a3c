"""Peak memory of reading and compressing a big LSTM checkpoint, per format.

Not a test: run by hand, prints a markdown table. In one run it

1. builds, seeded and in a temporary directory, the 2-layer LSTM state dict of
   ``bench_big.py`` (hidden = input = ``--hidden``; 2500: 100 M parameters, 400 MB float32) as
   ``.pt`` (rnnshrink's ``torch_writer``), and from it ``.safetensors`` (rnnshrink's writer),
   ``.onnx`` with its weights in an external-data file beside it (``onnx.save_model``), and a
   Keras 3 ``.h5`` (``rnnshrink convert --to keras``);
2. measures, each in a fresh subprocess, the peak RSS (``VmHWM`` of ``/proc/self/status``)
   above the RSS after imports of: ``rnnshrink.read``; ``rnnshrink compress --tau 0.5``;
   ``rnnshrink compress -t quant:bits=8``; and baselines that load the same arrays with the
   format's own library (``numpy.fromfile`` of the whole file, ``torch.load``,
   ``safetensors.numpy.load_file``, ``onnx.load``, ``h5py`` reading every dataset);

and prints each figure in MB and as a multiple of the checkpoint's size (for ONNX: model plus
external data). ``--only read`` skips the compress runs (e.g. with ``--hidden 4000``, a 1 GB
``.pt``).

    OPENBLAS_NUM_THREADS=1 python bench/bench_memory.py [--hidden 2500] [--formats pt,onnx]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

CHILD = """
import json, sys
import h5py, numpy as np, onnx
import rnnshrink, rnnshrink.io
from rnnshrink.cli import cli

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

mode, path, *args = sys.argv[1:]
if mode == "torch":
    import torch
before = status("VmRSS")
if mode == "read":
    model = rnnshrink.read(path)
elif mode == "cli":
    cli.main(args=args, standalone_mode=False)
elif mode == "fromfile":
    data = np.fromfile(path, np.uint8)
elif mode == "torch":
    state = torch.load(path, weights_only=True, mmap=args == ["mmap"])
elif mode == "safetensors":
    from safetensors.numpy import load_file
    state = load_file(path)
elif mode == "onnx":
    proto = onnx.load(path)
elif mode == "h5py":
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: found.append(o[()]) if isinstance(o, h5py.Dataset) else None)
print(json.dumps({"after_imports": before, "peak": status("VmHWM")}))
"""


def build(folder, hidden, wanted):
    """The checkpoint files by format key, and their sizes in bytes (with side files); files
    already in ``folder`` are reused."""
    import bench_big
    from rnnshrink import api, read
    from rnnshrink.io import safetensors_file

    files = {key: folder / f"big.{key}" for key in wanted}
    pt = folder / "big.pt"
    if not pt.exists():
        bench_big.build(pt, hidden, hidden, noise=0.3)
    if "safetensors" in files and not files["safetensors"].exists():
        safetensors_file.write(read(pt), files["safetensors"])
    if "onnx" in files and not files["onnx"].exists():
        onnx_stack(read(pt), hidden, files["onnx"])
    if "h5" in files and not files["h5"].exists():
        api.convert_file(pt, "keras", files["h5"])
    size = {key: path.stat().st_size for key, path in files.items()}
    if "onnx" in files:
        size["onnx"] += (folder / "big.onnx.data").stat().st_size
    return files, size


def onnx_stack(model, hidden, path):
    """The LSTM stack as ONNX LSTM nodes, weights in ``<name>.data`` beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "X"
    for k, layer in enumerate(model.lstm_layers):
        d = layer.directions[0]  # canonical i, f, g, o -> ONNX i, o, f, c
        W, R = (m.materialize(np.float32).reshape(4, hidden, -1)[[0, 3, 1, 2]]
                .reshape(1, 4 * hidden, -1) for m in (d.W, d.R))
        B = np.concatenate([d.b.reshape(4, hidden)[[0, 3, 1, 2]].ravel(),
                            np.zeros(4 * hidden)]).astype(np.float32)[None]
        inits += [numpy_helper.from_array(a, f"{n}{k}") for n, a in (("W", W), ("R", R), ("B", B))]
        nodes.append(helper.make_node("LSTM", [x, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}"],
                                      hidden_size=hidden))
        nodes.append(helper.make_node("Squeeze", [f"Y{k}", "axis"], [f"X{k + 1}"]))
        x = f"X{k + 1}"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["T", "N", hidden])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path,
                    save_as_external_data=True, location=path.name + ".data")


BASELINES = {"pt": [("torch.load", "torch", []), ("torch.load(mmap=True)", "torch", ["mmap"])],
             "safetensors": [("safetensors.numpy.load_file", "safetensors", [])],
             "onnx": [("onnx.load", "onnx", [])], "h5": [("h5py, every dataset", "h5py", [])]}


def measure(mode, path, *args):
    """Peak RSS above the RSS after imports, in MB, of one child run."""
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), *map(str, args)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        sys.exit(f"{mode} {path} failed:\n{out.stderr}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["peak"] - found["after_imports"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2500)
    parser.add_argument("--formats", default="pt,safetensors,onnx,h5")
    parser.add_argument("--only", choices=["read"], help="measure reading only")
    parser.add_argument("--folder", help="build the checkpoints here once and reuse them "
                                         "(default: a temporary folder)")
    args = parser.parse_args()
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary)
        folder.mkdir(exist_ok=True)
        files, size = build(folder, args.hidden, formats)
        print(f"2-layer LSTM, hidden = input = {args.hidden}, float32\n")
        print("| format | file MB | run | peak RSS above imports, MB | / file size |")
        print("|---|---|---|---|---|")
        for key, path in files.items():
            megabytes = size[key] / 2**20
            whole = path.with_name("big.onnx.data") if key == "onnx" else path
            runs = [("numpy.fromfile (1 copy)", "fromfile", [whole])] + [
                (name, mode, [path, *extra]) for name, mode, extra in BASELINES[key]
                if mode != "torch" or _has("torch")] + [("rnnshrink.read", "read", [path])]
            if args.only != "read":
                out = Path(temporary) / "out.h5"
                runs += [(f"compress {' '.join(flags)}", "cli",
                          [path, "compress", path, *flags, "-o", out, "--force"])
                         for flags in (["--tau", "0.5"], ["-t", "quant:bits=8"])]
            for name, mode, arguments in runs:
                peak = measure(mode, *arguments)
                print(f"| {key} | {megabytes:.0f} | {name} | {peak:.0f} | {peak / megabytes:.2f} |",
                      flush=True)


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
