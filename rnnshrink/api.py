"""File-level operations behind the commands: read, transform, measure, write.

Each function here is what one command does, usable from Python without the command line.
"""

from pathlib import Path

from . import io
from .errors import OptionError
from .fidelity import compare, load_calibration, probe_inputs
from .io import container
from .io.atomic import check_output_path
from .pipeline import Pipeline
from .report import compression_summary, summarize
from .transforms import Context

OUTPUT_FORMATS = ("rnnshrink", "same")


def default_output(model_path, output_format):
    """``model.rnnshrink.h5`` or, for a drop-in, ``model.compressed.<ext>`` beside the input."""
    path = Path(model_path)
    if output_format == "rnnshrink":
        return path.with_name(f"{path.stem}.rnnshrink.h5")
    return path.with_name(f"{path.stem}.compressed{path.suffix}")


def probes_for(model, calib=None, seed=0):
    """Inputs for fidelity figures: the user's (``calib``, an .npy path) or seeded probes."""
    return load_calibration(calib, model) if calib else probe_inputs(model, seed=seed)


def compress_file(model_path, steps, output=None, output_format="rnnshrink", calib=None,
                  force=False, progress=None, read_options=None):
    """Compress a checkpoint file with ``steps`` and write the result.

    Parameters
    ----------
    model_path : str or os.PathLike
    steps : list of Transform
        Validated as a :class:`~rnnshrink.pipeline.Pipeline` before the file is read.
    output : str or os.PathLike, optional
        Defaults to :func:`default_output`.
    output_format : {"rnnshrink", "same"}
        The rnnshrink container, or a drop-in checkpoint in the input's own format.
    calib : str, optional
        ``.npy`` inputs of the first LSTM for the fidelity figures.
    force : bool
        Replace an existing output file.
    progress : callable, optional
        ``progress(description, total)`` returning a counter (see :class:`Context`).

    Returns
    -------
    summary : dict
        :func:`rnnshrink.report.compression_summary` plus ``output``.
    """
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    pipeline = Pipeline(steps)
    output = Path(output) if output else default_output(model_path, output_format)
    check_output_path(output, inputs=[model_path], force=force)
    original = io.read(model_path, **(read_options or {}))
    x, probe = probes_for(original, calib)
    compressed = pipeline.run(original, Context(progress=progress, inputs=x, probe=probe))
    summary = compression_summary(summarize(original), summarize(compressed),
                                  compare(original, compressed, x), pipeline.specs(), probe)
    if output_format == "rnnshrink":
        compressed.meta.setdefault("source_file", Path(model_path).name)
        container.write(compressed, output, recipe=pipeline.specs(), summary=summary,
                        source_sha256=container.file_sha256(model_path))
    else:
        from .dropin import write_same

        write_same(compressed, original, output)
    summary["output"] = str(output)
    summary["format"] = output_format
    return summary


def compare_files(model_path, original_path, calib=None, read_options=None):
    """Fidelity and sizes of ``model_path`` against ``original_path`` (``report --compare``)."""
    model = io.read(model_path, **(read_options or {}))
    original = io.read(original_path, **(read_options or {}))
    if len(model.lstm_layers) != len(original.lstm_layers):
        raise OptionError(
            f"{model_path} has {len(model.lstm_layers)} LSTM layers, {original_path} has "
            f"{len(original.lstm_layers)}: not the same network"
        )
    x, probe = probes_for(original, calib)
    recipe = model.meta.get("recipe", [])
    return compression_summary(summarize(original), summarize(model),
                               compare(original, model, x), recipe, probe)


CONVERT_TARGETS = {"onnx": ".onnx", "torch": ".pt", "keras": ".h5"}


def convert_file(model_path, to, output=None, force=False, onnx_style="auto", opset=21,
                 read_options=None):
    """Export a checkpoint or compressed file so a runtime can run it.

    Parameters
    ----------
    model_path : str or os.PathLike
        Any checkpoint rnnshrink reads, or an rnnshrink container.
    to : {"onnx", "torch", "keras"}
    output : str or os.PathLike, optional
        Defaults to ``MODEL.<to>.<ext>`` beside the input.
    onnx_style : {"auto", "scan", "folded"}
        See :mod:`rnnshrink.io.onnx_export`.

    Returns
    -------
    dict
        What was written: ``output``, ``to``, ``bytes``, and the exporter's description.
    """
    if to not in CONVERT_TARGETS:
        raise OptionError(f"--to must be one of {', '.join(CONVERT_TARGETS)}, got {to!r}")
    path = Path(model_path)
    output = Path(output) if output else path.with_name(f"{path.stem}.{to}{CONVERT_TARGETS[to]}")
    check_output_path(output, inputs=[model_path], force=force)
    model = io.read(model_path, **(read_options or {}))
    if to == "onnx":
        from .io import onnx_model

        description = onnx_model.export_model(model, output, style=onnx_style, opset=opset)
    elif to == "torch":
        from .io import torch_export

        description = torch_export.export_torch(model, output)
    else:
        from .io import keras_export

        description = keras_export.export_keras(model, output)
    return {"output": str(output), "to": to, "bytes": output.stat().st_size,
            "lstm_bytes": summarize(model)["lstm_bytes"], **description}
