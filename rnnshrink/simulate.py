"""How far a compute-in-memory LSTM's outputs are from the float model's, over noise draws.

:func:`simulate` runs the reference pass with the numerics of :mod:`rnnshrink.cim` (DAC, ADC,
digital state bits, weight bits and analog weight noise) and measures, per LSTM layer and for
the whole model, the relative error of the output sequence and of the final ``h`` and ``c``
against the float run on the same inputs; with weight noise, mean and standard deviation over
Monte Carlo draws (noise redrawn per sequence and per draw, seeded). :func:`sweep` does this
over a range of one setting, the table a hardware designer reads before fixing bit widths.

References
----------
QuantizedLSTM, ISCAS 2021 (bit sweeps of DAC / ADC / noise, methods.md §5); PACT, Choi et al.
2018.
"""

import csv
import dataclasses

import numpy as np

from .cim import Crossbar, Peaks, option
from .errors import OptionError
from .fidelity import head_output, relative_error
from .io.atomic import atomic_path
from .model.network import trace_model
from .sweep import load_pyplot, save_png
from .transforms import Context

METRICS = ("output_rel_error", "h_rel_error", "c_rel_error")
SWEEPABLE = ("input_bits", "adc_bits", "state_bits", "weight_bits", "noise", "adc_clip", "max_w")
COLUMNS = ("setting", "value") + tuple(f"{m}{s}" for m in METRICS for s in ("", "_std")) + ("draws",)
# sequences simulated at once when each carries its own noisy weights (bounds the noise arrays)
NOISE_BYTES = 64 * 2**20


def reference(model, x, seed=0):
    """The float run of ``model`` on ``x`` and the largest magnitude at every point.

    Returns
    -------
    traces : dict
        :func:`rnnshrink.model.network.trace_model`'s result.
    peaks : dict
        :attr:`rnnshrink.cim.Peaks.peaks`, the calibrated clipping ranges.
    """
    recorder = Peaks()
    return trace_model(model, x, seed, numerics=recorder), recorder.peaks


def run(model, x, settings, peaks, traces, seed=0, draw=0):
    """One simulated pass (one Monte Carlo draw) over all sequences of ``x``.

    Sequence ``n`` of draw ``d`` draws its noise from ``default_rng([seed, d, n])``, so a
    result does not depend on how the batch is split.

    Returns
    -------
    dict of str to tuple (y, h, c)
        Per LSTM layer, as :func:`rnnshrink.model.run_layer`.
    """
    fixed = _fixed_inputs(traces, x)
    batch = len(x)
    if settings.noise == 0:
        numerics, chunk = Crossbar(settings, peaks), batch
    else:
        chunk = max(1, NOISE_BYTES // max(1, _weight_bytes(model)))
    results = []
    for start in range(0, batch, chunk):
        part = slice(start, min(batch, start + chunk))
        if settings.noise > 0:
            rngs = [np.random.default_rng([seed, draw, n]) for n in range(part.start, part.stop)]
            numerics = Crossbar(settings, peaks, rngs)
        inputs = {name: value[part] for name, value in fixed.items()}
        results.append(trace_model(model, x[part], seed, inputs, numerics))
    return {name: (np.concatenate([r[name][1] for r in results]),
                   np.concatenate([r[name][2] for r in results], axis=1),
                   np.concatenate([r[name][3] for r in results], axis=1)) for name in traces}


def simulate(model, x, settings, draws=1, seed=0, context=None, reference_run=None):
    """Errors of the compute-in-memory LSTM against the float model on inputs ``x``.

    Parameters
    ----------
    model : rnnshrink.model.Model
    x : ndarray of shape (batch, time, input of the first LSTM layer)
    settings : rnnshrink.cim.Settings
    draws : int
        Monte Carlo draws of the weight noise; without noise the pass is deterministic and runs
        once.
    seed : int
    context : Context, optional
        Its ``progress`` counts draws.
    reference_run : tuple, optional
        :func:`reference` of the same model and inputs, to reuse.

    Returns
    -------
    dict
        ``output_rel_error`` (the model's final output: its Dense head when the file has one,
        else the last LSTM's output sequence), ``h_rel_error`` and ``c_rel_error`` (all LSTM
        layers' final states together), each with ``_std`` over draws; ``layers``: the same per
        LSTM layer (its output sequence, final h, final c); ``draws`` run; ``settings``.
    """
    check_draws(draws)
    traces, peaks = reference_run or reference(model, x, seed)
    draws = draws if settings.noise > 0 else 1
    counter = (context or Context()).step("simulate", draws)
    errors = []
    try:
        for draw in range(draws):
            errors.append(_errors(model, traces, run(model, x, settings, peaks, traces, seed, draw)))
            counter.update()
    finally:
        counter.close()
    names = [layer.name for layer in model.lstm_layers]
    result = _summary([e[0] for e in errors])
    result["layers"] = {name: _summary([e[1][name] for e in errors]) for name in names}
    result.update(draws=draws, seed=seed, settings=dataclasses.asdict(settings))
    return result


def _errors(model, traces, simulated):
    """(overall, per layer) relative errors of one draw, each a dict of :data:`METRICS`."""
    layers = {}
    for name, (y, h, c) in simulated.items():
        _, y0, h0, c0 = traces[name]
        layers[name] = dict(zip(METRICS, (relative_error(y, y0), relative_error(h, h0),
                                          relative_error(c, c0))))
    last = model.lstm_layers[-1].name
    stack = lambda values: np.concatenate([v.ravel() for v in values])  # noqa: E731
    overall = dict(zip(METRICS, (
        relative_error(head_output(model, simulated[last][0]), head_output(model, traces[last][1])),
        relative_error(stack(s[1] for s in simulated.values()), stack(t[2] for t in traces.values())),
        relative_error(stack(s[2] for s in simulated.values()), stack(t[3] for t in traces.values())),
    )))
    return overall, layers


def _summary(draws):
    """Mean and standard deviation (ddof 1; 0 for one draw) of each metric over draws."""
    summary = {}
    for metric in METRICS:
        values = np.array([d[metric] for d in draws])
        summary[metric] = float(values.mean())
        summary[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def _fixed_inputs(traces, x):
    """Inputs of layers not fed by ``x`` or another LSTM layer (given or seeded), to reuse."""
    outputs = [trace[1] for trace in traces.values()]
    return {name: trace[0] for name, trace in traces.items()
            if trace[0] is not x and not any(trace[0] is y for y in outputs)}


def _weight_bytes(model):
    """Bytes of one sequence's noise draws: every LSTM matrix once, float64."""
    return 8 * sum(int(np.prod(w.shape)) for layer in model.lstm_layers
                   for d in layer.directions for w in (d.W, d.R, d.proj) if w is not None)


def parse_sweep(text, settings):
    """``"input-bits=2..8"`` or ``"noise=0,0.05,0.1"`` as (Settings field, list of values).

    Raises
    ------
    OptionError
        Unknown setting, malformed range or list, or a value ``settings`` cannot take.
    """
    name, _, values = (text or "").partition("=")
    field = name.strip().replace("-", "_")
    if field not in SWEEPABLE or not values.strip():
        raise OptionError(f"--sweep must be SETTING=FIRST..LAST or SETTING=V1,V2,... with SETTING "
                          f"one of {', '.join(option(f)[2:] for f in SWEEPABLE)}, got {text!r}")
    kind = int if field.endswith("_bits") else float
    try:
        if ".." in values:
            first, last = (int(v) for v in values.split(".."))
            parsed = list(range(first, last + 1)) if first <= last else list(range(first, last - 1, -1))
        else:
            parsed = [kind(v) for v in values.split(",")]
    except ValueError:
        raise OptionError(f"--sweep {name.strip()}: values must be FIRST..LAST (integers) or a "
                          f"comma-separated list of {kind.__name__}s, got {values!r}") from None
    for value in parsed:
        dataclasses.replace(settings, **{field: value})
    return field, parsed


def check_draws(draws):
    """Refuse a number of Monte Carlo draws outside [1, 10000]."""
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or not 1 <= draws <= 10000:
        raise OptionError(f"--draws must be an integer in [1, 10000], got {draws!r}")


def sweep(model, x, settings, field, values, draws=1, seed=0, context=None):
    """:func:`simulate` for each value of one setting, the others as in ``settings``.

    Returns
    -------
    list of dict
        One row per value, keys :data:`COLUMNS` (``setting`` spelled as on the command line).
    """
    points = [dataclasses.replace(settings, **{field: value}) for value in values]
    reference_run = reference(model, x, seed)
    counter = (context or Context()).step("sweep", len(points))
    rows = []
    try:
        for value, point in zip(values, points):
            result = simulate(model, x, point, draws, seed, reference_run=reference_run)
            rows.append({"setting": option(field)[2:], "value": value,
                         **{key: result[key] for key in COLUMNS[2:]}})
            counter.update()
    finally:
        counter.close()
    return rows


def write_csv(rows, path):
    """The sweep rows as CSV (header :data:`COLUMNS`), written atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value
                             for key, value in row.items()})


def plot(rows, path):
    """Output error (mean, ± std bars) against the swept setting, as PNG.

    Raises
    ------
    OptionError
        matplotlib is not installed.
    """
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 4))
    for metric, label in zip(METRICS, ("model output", "final h", "final c")):
        shown = [row for row in rows if row[metric] > 0]  # a log axis cannot show 0
        axes.errorbar([row["value"] for row in shown], [row[metric] for row in shown],
                      yerr=[row[f"{metric}_std"] for row in shown], marker="o", markersize=3,
                      capsize=3, label=label)
    axes.set(xlabel=rows[0]["setting"], ylabel="relative error vs float", yscale="log")
    save_png(pyplot, figure, axes, path)


def format_table(result):
    """The per-layer and overall errors as a text table (mean ± std over draws)."""
    def cell(entry, metric):
        text = f"{entry[metric]:.3e}"
        return text + (f" ± {entry[metric + '_std']:.1e}" if result["draws"] > 1 else "")

    width = max(len(name) for name in list(result["layers"]) + ["model"])
    lines = [f"{'layer':<{width}}  {'output error':<20}  {'final h error':<20}  final c error"]
    for name, entry in list(result["layers"].items()) + [("model", result)]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cell(entry, m):<20}" for m in METRICS).rstrip())
    return "\n".join(lines)


def format_rows(rows):
    """The sweep rows as text lines: ``input-bits=4  output 1.2e-02 ± 1e-03  h ...``."""
    def cell(row, metric):
        return f"{row[metric]:.3e}" + (f" ± {row[metric + '_std']:.1e}" if row["draws"] > 1 else "")

    return "\n".join(f"{row['setting']}={row['value']:<6}  " + "  ".join(
        f"{label} {cell(row, metric)}" for label, metric in zip(("output", "h", "c"), METRICS))
        for row in rows)


def describe(settings):
    """One line naming the simulated settings: ``DAC 4 bits, ADC 6 bits (clip 16), ...``."""
    def bits(value):
        return f"{value} bits" if value else "ideal"

    clip = f"clip {settings.adc_clip:g}" if settings.adc_clip else "calibrated clip"
    weights = (f"{settings.weight_bits} bits" if settings.weight_bits else "float") + (
        f" (clamp ±{settings.max_w:g})" if settings.weight_map == "clamp" else " (scale)")
    return (f"DAC {bits(settings.input_bits)}, ADC {bits(settings.adc_bits)}"
            + (f" ({clip})" if settings.adc_bits else "")
            + f", state {bits(settings.state_bits)}, weights {weights}, noise {settings.noise:g}")

