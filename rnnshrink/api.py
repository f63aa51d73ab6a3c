"""File-level operations behind the commands: read, transform, measure, write.

Each function here is what one command does, usable from Python without the command line.
"""

import dataclasses
from pathlib import Path

import numpy as np

from . import budget as budget_module
from . import io
from .errors import OptionError
from .fidelity import compare, load_calibration
from .io import container
from .io.atomic import atomic_path, check_output_path
from .pipeline import Pipeline, recipe_toml
from .probes import self_probes
from .report import compression_summary, summarize
from .transforms import Context

OUTPUT_FORMATS = ("rnnshrink", "same")


def default_output(model_path, output_format):
    """``model.rnnshrink.h5`` or, for a drop-in, ``model.compressed.<ext>`` beside the input."""
    path = Path(model_path)
    if output_format == "rnnshrink":
        return path.with_name(f"{path.stem}.rnnshrink.h5")
    return path.with_name(f"{path.stem}.compressed{path.suffix}")


# Probe multiply-adds per model run: the probe count shrinks for big models, within these.
PROBE_MACS = 2.5e9
PROBE_SAMPLES = (400, 12_800)


def probes_for(model, calib=None, seed=0):
    """Inputs for fidelity figures and data-aware steps: the user's (``calib``, an .npy / .npz
    path), or probes the model makes itself (:func:`rnnshrink.probes.self_probes`: text the
    language model writes, tokens of its input alphabet, ...), as many (sequence, step)
    samples as :data:`PROBE_MACS` allows through the LSTM layers (sequences of 200 steps,
    or 50 for big models), at least 8 sequences.

    Returns
    -------
    x : ndarray of shape (N, T, input of the first LSTM layer)
    description : str
    """
    if calib:
        return load_calibration(calib, model)
    params = max(sum(layer.params for layer in model.lstm_layers), 1)
    samples = int(np.clip(PROBE_MACS / params, *PROBE_SAMPLES))
    steps = 200 if samples >= 8 * 200 else 50
    probes = self_probes(model, count=max(samples // steps, 8), steps=steps, seed=seed)
    return probes.x, probes.description


def compress_file(model_path, steps, output=None, output_format="rnnshrink", calib=None,
                  force=False, progress=None, read_options=None, budget=None, recipe_output=None):
    """Compress a checkpoint file with ``steps`` (or a searched recipe) and write the result.

    Parameters
    ----------
    model_path : str or os.PathLike
    steps : list of Transform
        Validated as a :class:`~rnnshrink.pipeline.Pipeline` before the file is read; empty
        when ``budget`` is given.
    output : str or os.PathLike, optional
        Defaults to :func:`default_output`.
    output_format : {"rnnshrink", "same"}
        The rnnshrink container, or a drop-in checkpoint in the input's own format.
    calib : str, optional
        ``.npy`` inputs of the first LSTM, or ``.npz`` inputs per LSTM layer (see
        :func:`rnnshrink.fidelity.load_calibration`), for the fidelity figures and the
        data-aware transforms.
    force : bool
        Replace an existing output file.
    progress : callable, optional
        ``progress(description, total)`` returning a counter (see :class:`Context`).
    budget : dict, optional
        ``target_ratio`` or ``max_error``, and ``using``: choose the recipe with
        :func:`rnnshrink.budget.search` on the fidelity inputs.
    recipe_output : str or os.PathLike, optional
        Also write the recipe applied as TOML (for ``--recipe``).

    Returns
    -------
    summary : dict
        :func:`rnnshrink.report.compression_summary` plus ``output``, ``recipe_toml`` and, with
        ``budget``, ``search`` (the goal, the recipes measured and the accepted path).
    """
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if budget is None:
        pipeline = Pipeline(steps)
    elif steps:
        raise OptionError("a budget search chooses the transforms: give steps or a budget, not both")
    else:
        budget_module.check_arguments(**budget)
    output = Path(output) if output else default_output(model_path, output_format)
    check_output_path(output, inputs=[model_path], force=force)
    if recipe_output:
        check_output_path(recipe_output, inputs=[model_path, output], force=force)
    original = io.read(model_path, **(read_options or {}))
    check_output_path(output, inputs=original.meta.get("input_files", ()), force=True)
    x, probe = probes_for(original, calib)
    context = Context(progress=progress, inputs=x, probe=probe)
    if budget is None:
        compressed = pipeline.run(original, context)
    else:
        steps, compressed, trace = budget_module.search(original, x=x, context=context, **budget)
        pipeline = Pipeline(steps)
    summary = compression_summary(summarize(original), summarize(compressed),
                                  compare(original, compressed, x), pipeline.specs(), probe)
    summary["recipe_toml"] = recipe_toml(pipeline.steps)
    if budget is not None:
        summary["search"] = {**budget, "using": list(budget.get("using", ())), **trace}
    if output_format == "rnnshrink":
        compressed.meta.setdefault("source_file", Path(model_path).name)
        container.write(compressed, output, recipe=pipeline.specs(), summary=summary,
                        source_sha256=container.file_sha256(model_path))
    else:
        from .dropin import write_same

        write_same(compressed, original, output)
    if recipe_output:  # after the model, so a failed compress leaves no file at all
        with atomic_path(recipe_output) as temporary:
            temporary.write_text(summary["recipe_toml"])
        summary["recipe_output"] = str(recipe_output)
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


def sweep_file(model_path, output, plot_output=None, calib=None, force=False, progress=None,
               read_options=None):
    """Measure the :data:`rnnshrink.sweep.GRID` recipes on a checkpoint; write CSV (and a plot).

    Returns
    -------
    dict
        ``output``, ``plot``, ``probe``, ``rows`` (see :func:`rnnshrink.sweep.sweep`), ``skipped``.
    """
    from . import sweep

    if plot_output:
        sweep.load_pyplot()
    for path in [output] + ([plot_output] if plot_output else []):
        check_output_path(path, inputs=[model_path], force=force)
    model = io.read(model_path, **(read_options or {}))
    for path in [output] + ([plot_output] if plot_output else []):
        check_output_path(path, inputs=model.meta.get("input_files", ()), force=True)
    x, probe = probes_for(model, calib)
    rows, skipped = sweep.sweep(model, x, context=Context(progress=progress, inputs=x, probe=probe))
    sweep.write_csv(rows, output)
    if plot_output:
        sweep.plot(rows, plot_output)
    return {"output": str(output), "plot": plot_output and str(plot_output), "probe": probe,
            "rows": rows, "skipped": skipped}


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
    check_output_path(output, inputs=model.meta.get("input_files", ()), force=True)
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


def simulate_file(model_path, settings, calib=None, draws=5, seed=0, sweep=None, output=None,
                  plot_output=None, force=False, progress=None, read_options=None):
    """Simulate a checkpoint as a compute-in-memory LSTM (``rnnshrink simulate``).

    Parameters
    ----------
    settings : rnnshrink.cim.Settings
    sweep : str, optional
        ``SETTING=FIRST..LAST`` or ``SETTING=V1,V2,...`` (:func:`rnnshrink.simulate.parse_sweep`):
        simulate each value; ``output`` (CSV) and ``plot_output`` (PNG) are written from it.

    Returns
    -------
    dict
        ``probe``, ``calibrated`` (whether ``calib`` was given), ``settings``, and ``result``
        (:func:`rnnshrink.simulate.simulate`) or, with ``sweep``, ``rows``, ``output``, ``plot``.
    """
    from . import simulate as simulation

    if (output or plot_output) and not sweep:
        raise OptionError("-o/--plot write a sweep table: give --sweep SETTING=RANGE")
    simulation.check_draws(draws)
    swept = simulation.parse_sweep(sweep, settings) if sweep else None
    if plot_output:
        simulation.load_pyplot()
    for path in filter(None, (output, plot_output)):
        check_output_path(path, inputs=[model_path], force=force)
    model = io.read(model_path, **(read_options or {}))
    x, probe = probes_for(model, calib)
    context = Context(progress=progress, inputs=x, probe=probe)
    done = {"probe": probe, "calibrated": bool(calib), "settings": dataclasses.asdict(settings)}
    if swept is None:
        return {**done, "result": simulation.simulate(model, x, settings, draws, seed, context)}
    rows = simulation.sweep(model, x, settings, *swept, draws=draws, seed=seed, context=context)
    if output:
        simulation.write_csv(rows, output)
    if plot_output:
        simulation.plot(rows, plot_output)
    return {**done, "rows": rows, "output": output and str(output),
            "plot": plot_output and str(plot_output)}
