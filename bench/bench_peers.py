"""rnnshrink's presets against PyTorch and onnxruntime dynamic quantization, measured in one run.

Not a test: run by hand (``python bench/run_all.py`` runs it for every model), 1 thread. For one
model of :mod:`tasks` it measures

* torch: the float32 module and ``quantize_dynamic`` int8 / float16 (:mod:`peers`), run in torch;
* onnxruntime: the float ONNX export and ``onnxruntime.quantization.quantize_dynamic`` of it;
* rnnshrink: every preset of :data:`presets.PRESETS`, compressed from that same float ONNX file
  and exported to ONNX (:mod:`presets`), run in onnxruntime;

and for each: bytes on disk of the file the runtime loads and the size ratio to the float model
of the same runtime; the relative error ``‖y − y₀‖ / ‖y₀‖`` of the model's outputs (logits, or
the LSTM output sequence) on the held-out sequences against that float model; bits per character
and next-character accuracy where the model has a task; and the median batch-1 latency on one
held-out sequence (all runners interleaved round by round, 1 thread) with the speed-up over the
float model of the same runtime. For rnnshrink also the container's bytes, its own LSTM size
ratio and the output error ``compress`` reports (on its calibration or probe inputs). Prints a
markdown table; writes ``bench/results/MODEL.json`` and ``.csv``.

    python bench/bench_peers.py --model {fixture,pydoc,lstm1024} [--repeats N]
"""

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import rnnshrink
from _common import RESULTS, bits_per_char, interleaved_timings, ort_session, write_json
from rnnshrink.fidelity import relative_error
from peers import export_onnx, ort_quantize, state_dict_bytes, torch_variants
from presets import PRESETS, command, run, run_order
from tasks import STEPS, TASKS
from torch_models import load

COLUMNS = ["method", "family", "runtime", "command", "bytes", "size_ratio", "container_bytes",
           "container_ratio", "lstm_ratio", "output_rel_error", "probe_error", "bits_per_char",
           "bpc_change_pct", "accuracy", "latency_ms", "speedup", "compress_seconds", "note"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def torch_rows(task):
    """Rows (bytes, outputs) and batch-1 runners of the torch float and quantized modules."""
    rows, runners = [], {}
    held_out, single = torch.from_numpy(task.held_out), torch.from_numpy(task.held_out[:1])
    for label, module in torch_variants(load(task.spec, task.weights)).items():
        with torch.inference_mode():
            outputs = module(held_out).numpy()
        rows.append({"method": label, "family": "float" if "float32" in label else "peer",
                     "runtime": "torch", "bytes": state_dict_bytes(module), "outputs": outputs,
                     "command": "torch.save(model.state_dict())" if "float32" in label else
                     f"quantize_dynamic(model, {{nn.LSTM, nn.Linear}}, dtype=torch."
                     f"{'qint8' if 'int8' in label else 'float16'})"})
        runners[label] = _torch_runner(module, single)
    return rows, runners


def _torch_runner(module, x):
    def call():
        with torch.inference_mode():
            module(x)
    return call


def ort_row(label, family, path, task, command, **extra):
    """The row of an ONNX file run by onnxruntime on the held-out data, and its runner."""
    session = ort_session(path)
    outputs = session.run(None, {task.input_name: task.held_out})[0]
    single = {task.input_name: task.held_out[:1]}
    row = {"method": label, "family": family, "runtime": "onnxruntime", "command": command,
           "bytes": Path(path).stat().st_size, "outputs": outputs, **extra}
    return row, lambda: session.run(None, single)


def rnnshrink_rows(task, float_onnx, folder):
    """Rows and runners of every preset, in :data:`PRESETS` order; skipped presets as
    ``(label, reason)``."""
    calib = None
    if task.calib is not None:
        calib = folder / "calib.npy"
        np.save(calib, task.calib)
    found, runners, skipped, searches = {}, {}, [], {}
    for index in run_order(PRESETS):
        label, arguments = PRESETS[index]
        log(f"rnnshrink {label} ...")
        result = run(arguments, float_onnx, folder, f"preset{index}", calib, searches)
        if "skipped" in result:
            skipped.append((label, result["skipped"]))
            log(f"  skipped: {result['skipped']}")
            continue
        note = "; ".join(filter(None, [result["note"], "budget" in arguments
                                       and f"recipe: {result['recipe']}"]))
        found[index], runners[label] = ort_row(
            label, "rnnshrink", result["onnx"], task,
            f"rnnshrink compress float.onnx {command(arguments, calib)}",
            container_bytes=result["container_bytes"], lstm_ratio=result["lstm_ratio"],
            probe_error=result["probe_error"], compress_seconds=round(result["seconds"], 2),
            note=note)
    return [found[index] for index in sorted(found)], runners, skipped


def score(rows, task):
    """Fill errors, task metrics and size ratios against the float row of each runtime."""
    base = {row["runtime"]: row for row in rows if row["family"] == "float"}
    float_onnx_bytes = base["onnxruntime"]["bytes"]
    for row in rows:
        reference = base[row["runtime"]]
        row["size_ratio"] = reference["bytes"] / row["bytes"]
        row["output_rel_error"] = relative_error(row["outputs"], reference["outputs"])
        if row.get("container_bytes"):
            row["container_ratio"] = float_onnx_bytes / row["container_bytes"]
        if task.targets is not None:
            row["bits_per_char"] = bits_per_char(row["outputs"], task.targets)
            row["accuracy"] = float((row["outputs"].argmax(-1) == task.targets).mean())
    for row in rows:
        if task.targets is not None:
            before = base[row["runtime"]]["bits_per_char"]
            row["bpc_change_pct"] = 100 * (row["bits_per_char"] - before) / before
        del row["outputs"]


def time_all(rows, runners, repeats):
    """Median batch-1 latency of every row, interleaved; speed-up over its runtime's float row."""
    seconds = interleaved_timings(runners, repeats)
    base = {row["runtime"]: seconds[row["method"]] for row in rows if row["family"] == "float"}
    for row in rows:
        row["latency_ms"] = 1e3 * seconds[row["method"]]
        row["speedup"] = base[row["runtime"]] / seconds[row["method"]]


def table(rows, metric):
    """The rows as a markdown table (with the task-metric columns when ``metric``)."""
    lines = ["| method | runtime | file bytes | smaller | output rel. error | "
             + ("bits/char | change | accuracy | " if metric else "")
             + "ms | speed-up | container bytes (smaller) | LSTM ratio |",
             "|---" * (12 if metric else 9) + "|"]
    for row in rows:
        cells = [row["method"], row["runtime"], f"{row['bytes']:,}", f"{row['size_ratio']:.2f}x",
                 f"{row['output_rel_error']:.2e}"]
        if metric:
            cells += [f"{row['bits_per_char']:.4f}", f"{row['bpc_change_pct']:+.2f} %",
                      f"{row['accuracy']:.4f}"]
        cells += [f"{row['latency_ms']:.1f}", f"{row['speedup']:.2f}x"]
        cells += ([f"{row['container_bytes']:,} ({row['container_ratio']:.2f}x)",
                   f"{row['lstm_ratio']:.2f}x"] if row.get("container_bytes") else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine():
    """Where the figures were measured."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())
    import onnxruntime

    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "rnnshrink": rnnshrink.__version__,
            "numpy": np.__version__, "threads": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(TASKS), required=True)
    parser.add_argument("--repeats", type=int, help="timed runs per method (default: the model's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = TASKS[args.model]()
    repeats = args.repeats or task.repeats
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        rows, runners = torch_rows(task)
        float_onnx = folder / "float.onnx"
        export_onnx(load(task.spec, task.weights), task.held_out[:1], float_onnx, task.input_name)
        for label, family, path, what in (
                ("onnxruntime float32", "float", float_onnx, "torch.onnx.export(model)"),
                ("onnxruntime dynamic int8", "peer", folder / "ort_int8.onnx",
                 "quantize_dynamic(float.onnx, int8.onnx)")):
            note = "" if family == "float" else ort_quantize(float_onnx, path)
            row, runners[label] = ort_row(label, family, path, task, what, note=note)
            rows.append(row)
        found, more, skipped = rnnshrink_rows(task, float_onnx, folder)
        rows += found
        runners.update(more)
        log("timing ...")
        score(rows, task)
        time_all(rows, runners, repeats)
    seconds = time.perf_counter() - started
    print(f"{task.title}; scored on {task.scored}; latency: batch 1, T = {STEPS}, 1 thread, "
          f"median of {repeats} interleaved runs\n")
    print(table(rows, task.targets is not None))
    for label, reason in skipped:
        print(f"\nskipped {label}: {reason}")
    print(f"\n{seconds:.0f} s")
    result = {"model": task.key, "title": task.title, "scored": task.scored,
              "command": f"python bench/bench_peers.py --model {args.model}",
              "repeats": repeats, "steps": STEPS, "machine": machine(),
              "seconds": round(seconds, 1), "cpu_seconds": round(time.process_time(), 1),
              "rows": rows,
              "skipped": [{"method": label, "reason": reason} for label, reason in skipped]}
    write_json(result, RESULTS / f"{task.key}.json")
    with open(RESULTS / f"{task.key}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
