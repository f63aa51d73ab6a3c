"""Size against error over a grid of recipes: every transform over its range, common pairs.

Each recipe is applied to the whole model and measured like ``compress`` measures: LSTM size
ratio (every stored byte, :func:`rnnshrink.report.summarize`), multiply-add ratio, and output
relative error on the probes (:func:`rnnshrink.fidelity.compare`). A row is on the Pareto
front when no other recipe is at least as small with a smaller error.
"""

import csv

from .errors import OptionError, RnnshrinkError
from .fidelity import compare
from .io.atomic import atomic_path
from .pipeline import Pipeline, parse_step
from .report import summarize
from .transforms import Context

QUANTS = ["quant:bits=16", "quant:bits=8", "quant:bits=6", "quant:bits=5",
          "quant:bits=4,group=64", "quant:bits=4,group=32", "quant:bits=3,group=32"]
GRID = (
    [[f"svd:tau={tau}"] for tau in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)]
    + [[f"lowrank:rank_ratio={r}"] for r in (0.125, 0.25, 0.5, 0.75)]
    + [[f"iss:keep={keep}"] for keep in (0.5, 0.75, 0.9)]
    + [[f"prune:sparsity={s}"] for s in (0.3, 0.5, 0.7, 0.9)]
    + [[q] for q in QUANTS]
    + [[f"svd:tau={tau}", q] for tau in (0.8, 0.9, 0.95) for q in ("quant:bits=8", "quant:bits=4,group=64")]
    + [[f"prune:sparsity={s}", q] for s in (0.3, 0.5, 0.7) for q in ("quant:bits=8", "quant:bits=4,group=64")]
)
COLUMNS = ("recipe", "method", "lstm_ratio", "macs_ratio", "output_rel_error", "pareto")


def sweep(model, x, recipes=None, context=None):
    """Apply and measure every recipe of ``recipes`` on ``model``.

    Parameters
    ----------
    model : rnnshrink.model.Model
    x : ndarray of shape (batch, time, input)
        Inputs of the first LSTM layer the errors are measured on.
    recipes : list of list of str, optional
        Steps as written on the command line; :data:`GRID` by default.
    context : Context, optional
        Its ``progress`` counts recipes.

    Returns
    -------
    rows : list of dict
        One per recipe that applies (keys :data:`COLUMNS`), ``pareto`` marked.
    skipped : list of str
        ``"recipe: reason"`` for recipes the model refused.
    """
    context = context or Context()
    recipes = GRID if recipes is None else recipes
    inner = Context(seed=context.seed, inputs=x, probe=context.probe)
    before = summarize(model)
    counter = context.step("sweep", len(recipes))
    rows, skipped = [], []
    try:
        for recipe in recipes:
            try:
                compressed = Pipeline([parse_step(s) for s in recipe]).run(model, inner)
            except RnnshrinkError as error:
                skipped.append(f"{' '.join(recipe)}: {error}")
                continue
            finally:
                counter.update()
            after = summarize(compressed)
            rows.append({
                "recipe": " ".join(recipe),
                "method": "+".join(s.partition(":")[0] for s in recipe),
                "lstm_ratio": before["lstm_bytes"] / after["lstm_bytes"],
                "macs_ratio": before["lstm_macs_per_step"] / after["lstm_macs_per_step"],
                "output_rel_error": compare(model, compressed, x, context.seed)["output_rel_error"],
            })
    finally:
        counter.close()
    mark_pareto(rows)
    return rows, skipped


def mark_pareto(rows):
    """Set ``pareto`` on every row no other row beats: at least as small, smaller error."""
    for row in rows:
        row["pareto"] = row["output_rel_error"] is not None and not any(
            other["lstm_ratio"] >= row["lstm_ratio"] and other["output_rel_error"] is not None
            and other["output_rel_error"] < row["output_rel_error"]
            for other in rows
        )


def write_csv(rows, path):
    """The rows as CSV (header :data:`COLUMNS`), written atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "lstm_ratio": f"{row['lstm_ratio']:.4f}",
                             "macs_ratio": f"{row['macs_ratio']:.4f}",
                             "output_rel_error": _number(row["output_rel_error"]),
                             "pareto": int(row["pareto"])})


def _number(value):
    return "" if value is None else f"{value:.6g}"


def plot(rows, path):
    """Size ratio against output error, one curve per method, Pareto front marked, as PNG.

    Raises
    ------
    OptionError
        matplotlib is not installed (it is the optional extra ``rnnshrink[plot]``).
    """
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    # a log axis cannot show an error of 0 (a recipe that changed nothing)
    measured = [row for row in rows if row["output_rel_error"]]
    for method in dict.fromkeys(row["method"] for row in measured):
        points = sorted((r["lstm_ratio"], r["output_rel_error"]) for r in measured if r["method"] == method)
        axes.plot(*zip(*points), marker="o", markersize=3, label=method)
    front = sorted((r["lstm_ratio"], r["output_rel_error"]) for r in measured if r["pareto"])
    if front:
        axes.plot(*zip(*front), color="black", linestyle=":", label="Pareto front")
    axes.set(xlabel="LSTM size ratio (before / after)", ylabel="output relative error", yscale="log")
    save_png(pyplot, figure, axes, path)


def save_png(pyplot, figure, axes, path):
    """Grid and legend on ``axes``; ``figure`` written atomically to ``path`` as PNG, closed."""
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    pyplot.close(figure)


def load_pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or OptionError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install rnnshrink[plot]") from None
    return pyplot
