"""The ``rnnshrink`` command line: parse, call the library, print.

Only this module imports click; it turns the library's :class:`~rnnshrink.errors.RnnshrinkError`
into one ``Error:`` line and exit status 1.
"""

import functools
import json

import click

from . import __version__, api, io
from .cim import Settings
from .errors import OptionError, RnnshrinkError
from .pipeline import parse_step, read_recipe
from .report import format_compression, format_table, summarize
from .simulate import describe, format_rows
from .simulate import format_table as format_errors


def _library_errors(command):
    """Turn the library's own exceptions into one clean ``Error:`` line."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RnnshrinkError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def read_options(command):
    """Options every command that reads a checkpoint shares."""
    command = click.option(
        "--recurrent-activation",
        type=click.Choice(["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"]),
        help="Gate activation for Keras weights-only files, which do not record it "
        "(default: by keras_version, see README).",
    )(command)
    command = click.option(
        "--allow-nonfinite",
        is_flag=True,
        help="Read LSTM weights holding NaN or Inf instead of refusing the file.",
    )(command)
    return command


def _read_options(recurrent_activation, allow_nonfinite):
    options = {"allow_nonfinite": allow_nonfinite}
    if recurrent_activation:
        options["recurrent_activation"] = recurrent_activation
    return options


def _progress(description, total, unit="layer"):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=False, disable=None)


def _recipe_progress(description, total):
    return _progress(description, total, unit="recipe")


def _echo_json(data):
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnshrink")
def cli():
    """Make trained LSTM networks small and fast without retraining."""


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in docs/report.md).")
@click.option("--compare", "original", type=click.Path(dir_okay=False),
              help="Also measure MODEL's output error against this original checkpoint.")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Inputs of the first LSTM (.npy, shape (N, T, D)) for --compare.")
@read_options
@_library_errors
def report(model_path, as_json, original, calib, recurrent_activation, allow_nonfinite):
    """Show the LSTM layers of MODEL, their sizes and per-step cost.

    Example: rnnshrink report fixtures/charlm.pt --json
    """
    options = _read_options(recurrent_activation, allow_nonfinite)
    summary = summarize(io.read(model_path, **options))
    comparison = api.compare_files(model_path, original, calib, options) if original else None
    if as_json:
        _echo_json({**summary, "compare": comparison} if comparison else summary)
        return
    click.echo(format_table(summary))
    if comparison:
        click.echo("\n" + format_compression(comparison))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-t", "--transform", "transforms", multiple=True, metavar="NAME:K=V,...",
              help="A transform step, e.g. svd:tau=0.6 or quant:bits=4,group=64; repeat to chain "
              "(applied in order). Names: svd, lowrank, iss, prune, quant, slim.")
@click.option("--tau", type=float,
              help="Shortcut for -t svd:tau=TAU (fraction of energy kept), applied before -t steps.")
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="TOML file of [[transform]] tables, applied before any -t steps.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default MODEL.rnnshrink.h5, or MODEL.compressed.EXT with --format same).")
@click.option("--format", "output_format", type=click.Choice(api.OUTPUT_FORMATS), default="rnnshrink",
              show_default=True,
              help="rnnshrink: the compressed representations; same: a drop-in checkpoint in the "
              "input's format with the LSTM weights replaced by their compressed values.")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Inputs of the first LSTM (.npy, shape (N, T, D)) for the fidelity figures.")
@click.option("--target-ratio", type=float,
              help="Reach this LSTM size ratio (before/after) with the least output error: "
              "entropy-coded weights on one allocation (ecsq), or a per-layer search (--using).")
@click.option("--max-error", type=float,
              help="The smallest model whose output relative error stays within this.")
@click.option("--using", metavar="NAMES",
              help="What --target-ratio/--max-error use: ecsq (default), or a greedy per-layer "
              "search over any of svd, prune, quant.")
@click.option("--plain", is_flag=True,
              help="--target-ratio/--max-error without calibration data: rounded codes (ecsq "
              "with 1/row RMS^2 sensitivities; quant without gptq) and plain svd.")
@click.option("--save-recipe", type=click.Path(dir_okay=False),
              help="Also write the recipe applied as TOML, to rerun with --recipe.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@read_options
@_library_errors
def compress(model_path, transforms, tau, recipe, output, output_format, calib, target_ratio,
             max_error, using, plain, save_recipe, force, as_json, recurrent_activation,
             allow_nonfinite):
    """Compress the LSTM layers of MODEL and write the smaller model.

    Examples: rnnshrink compress model.h5 --tau 0.1;
    rnnshrink compress model.pt -t svd:tau=0.6 -t quant:bits=4,group=64 -o small.h5;
    rnnshrink compress model.pt --target-ratio 6 --save-recipe six.toml
    """
    budget = _budget(target_ratio, max_error, using, transforms, tau, recipe, plain)
    steps = read_recipe(recipe) if recipe else []
    if tau is not None:
        steps.append(parse_step(f"svd:tau={tau}"))
    steps += [parse_step(text) for text in transforms]
    if not steps and not budget:
        raise OptionError("no transform given: use --tau, -t NAME:K=V, --recipe or --target-ratio")
    progress = None if as_json else _recipe_progress if budget else _progress
    summary = api.compress_file(model_path, steps, output, output_format, calib, force, progress,
                                _read_options(recurrent_activation, allow_nonfinite), budget,
                                save_recipe)
    if as_json:
        _echo_json(summary)
        return
    click.echo(format_compression(summary))
    if budget:
        goal = (f"target ratio {target_ratio:g}x" if target_ratio is not None
                else f"max error {max_error:g}")
        search = summary["search"]
        how = ("entropy-coded allocation" if search["using"] == ["ecsq"] else
               f"budget search: {search['evaluations']} recipes measured on the first "
               f"{search['sequences']} of {summary['probe']}")
        click.echo(f"{how} ({goal}); the recipe (rerun with --recipe FILE):\n")
        click.echo(summary["recipe_toml"])
    if save_recipe:
        click.echo(f"wrote recipe {save_recipe}")
    click.echo(f"wrote {summary['output']}")


def _budget(target_ratio, max_error, using, transforms, tau, recipe, plain=False):
    """The budget-search arguments of ``compress``, or None; conflicting options refused."""
    search = [name for name, value in (("--target-ratio", target_ratio), ("--max-error", max_error))
              if value is not None]
    if len(search) == 2:
        raise OptionError("--target-ratio and --max-error cannot be combined: give one")
    if not search:
        for name, value in (("--using", using is not None), ("--plain", plain)):
            if value:
                raise OptionError(f"{name} needs --target-ratio or --max-error")
        return None
    given = [name for name, value in (("-t", transforms), ("--tau", tau is not None),
                                      ("--recipe", recipe)) if value]
    if given:
        raise OptionError(f"{search[0]} cannot be combined with {'/'.join(given)}: the search "
                          "chooses the transforms")
    using = [name.strip() for name in (using or "ecsq").split(",") if name.strip()]
    return {"target_ratio": target_ratio, "max_error": max_error, "using": using, "plain": plain}


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="CSV file: recipe, method, lstm_ratio, macs_ratio, output_rel_error, pareto.")
@click.option("--plot", "plot_output", type=click.Path(dir_okay=False),
              help="Also draw size ratio against error per method as PNG (needs matplotlib).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Inputs of the first LSTM (.npy, shape (N, T, D)) for the errors.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@read_options
@_library_errors
def sweep(model_path, output, plot_output, calib, force, recurrent_activation, allow_nonfinite):
    """Measure size against output error for a grid of recipes; mark the Pareto front.

    Example: rnnshrink sweep fixtures/charlm.pt -o sweep.csv --plot sweep.png
    """
    result = api.sweep_file(model_path, output, plot_output, calib, force, _recipe_progress,
                            _read_options(recurrent_activation, allow_nonfinite))
    front = [row for row in result["rows"] if row["pareto"]]
    click.echo(f"{len(result['rows'])} recipes measured on {result['probe']}; Pareto front:")
    for row in sorted(front, key=lambda row: row["lstm_ratio"]):
        click.echo(f"  {row['lstm_ratio']:6.2f}x  error {row['output_rel_error']:.3e}  {row['recipe']}")
    for reason in result["skipped"]:
        click.echo(f"skipped {reason}")
    for path in filter(None, (result["output"], result["plot"])):
        click.echo(f"wrote {path}")


def _run_progress(description, total):
    return _progress(description, total, unit="run")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Inputs of the first LSTM (.npy, shape (N, T, D)) to simulate on (default: probes).")
@click.option("--input-bits", type=int, help="DAC bits of the crossbar inputs x_t, h_t-1 (default: ideal).")
@click.option("--adc-bits", type=int, help="ADC bits of the matrix-vector outputs (default: ideal).")
@click.option("--adc-clip", type=float,
              help="PACT clip before the ADC, in pre-activation units (default: the largest seen).")
@click.option("--state-bits", type=int, help="Bits of the digital gate and state arithmetic (default: ideal).")
@click.option("--weight-bits", type=int, help="Conductance bits of weights and biases (default: float).")
@click.option("--weight-map", type=click.Choice(["scale", "clamp"]), default="scale", show_default=True,
              help="scale: each matrix spans the full conductance range, rescaled after the product; "
              "clamp: QuantizedLSTM's rule on the weights as trained (clamped to +-max_w).")
@click.option("--max-w", type=float, default=0.2, show_default=True,
              help="Largest weight of --weight-map clamp (its noise unit).")
@click.option("--noise", type=float, default=0.0, show_default=True,
              help="Weight noise nl: sigma = nl * max_w (scale: nl * the matrix's largest weight), "
              "drawn per sequence.")
@click.option("--draws", type=int, default=5, show_default=True,
              help="Monte Carlo draws of the noise (one pass without noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise draws.")
@click.option("--sweep", "sweep_spec", metavar="SETTING=RANGE",
              help="Simulate each value of one setting (replacing its option): input-bits=2..8, "
              "noise=0,0.05,0.1, ...")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the --sweep table as CSV.")
@click.option("--plot", "plot_output", type=click.Path(dir_okay=False),
              help="Also draw the --sweep errors as PNG (needs matplotlib).")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@read_options
@_library_errors
def simulate(model_path, calib, draws, seed, sweep_spec, output, plot_output, force, as_json,
             recurrent_activation, allow_nonfinite, **settings):
    """Simulate MODEL on compute-in-memory hardware: its error against the float model.

    Examples: rnnshrink simulate fixtures/charlm.pt --input-bits 4 --adc-bits 6 --noise 0.02;
    rnnshrink simulate model.pt --calib x.npy --sweep input-bits=2..8 -o dac.csv --plot dac.png
    """
    settings = Settings(**settings)
    done = api.simulate_file(model_path, settings, calib, draws, seed, sweep_spec, output,
                             plot_output, force, None if as_json else _run_progress,
                             _read_options(recurrent_activation, allow_nonfinite))
    if as_json:
        _echo_json(done)
        return
    click.echo(f"{describe(settings)}\nsimulated on {done['probe']}"
               + ("" if done["calibrated"] else " (rnnshrink's probes: give --calib for real inputs)"))
    click.echo(format_errors(done["result"]) if "result" in done else format_rows(done["rows"]))
    for path in filter(None, (done.get("output"), done.get("plot"))):
        click.echo(f"wrote {path}")


def main():
    cli(prog_name="rnnshrink")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--to", "target", type=click.Choice(list(api.CONVERT_TARGETS)), required=True,
              help="onnx: a graph onnxruntime runs (compact for compressed layers); torch: an "
              "nn.LSTM state dict; keras: a Keras 3 h5 model.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default MODEL.TO.EXT beside the input).")
@click.option("--onnx-style", type=click.Choice(["auto", "scan", "folded"]), default="auto",
              show_default=True,
              help="scan: compact weights, recurrence in a Scan (small and fast); folded: the "
              "standard LSTM op fed by weights rebuilt in the graph (small, dense speed); auto: "
              "the LSTM op for dense layers, scan for compressed ones.")
@click.option("--opset", type=int, default=21, show_default=True, help="ONNX opset (21 or later).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@read_options
@_library_errors
def convert(model_path, target, output, onnx_style, opset, force, as_json, recurrent_activation,
            allow_nonfinite):
    """Export MODEL (a checkpoint or a compressed file) for a runtime.

    Examples: rnnshrink convert small.h5 --to onnx; rnnshrink convert small.h5 --to torch
    """
    written = api.convert_file(model_path, target, output, force, onnx_style, opset,
                               _read_options(recurrent_activation, allow_nonfinite))
    if as_json:
        _echo_json(written)
        return
    click.echo(f"wrote {written['output']} ({written['bytes']:,} bytes; LSTM weights "
               f"{written['lstm_bytes']:,} bytes as stored)")
    for note in written.get("notes", []):
        click.echo(f"note: {note}")
    if written.get("snippet"):
        click.echo(written["snippet"])
