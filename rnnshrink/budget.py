"""Budget search: the per-layer recipe that meets a size target (or an error limit) best.

The search moves every LSTM layer along a ladder of settings per transform (SVD energy kept,
pruning sparsity, quantization bits and scales), always taking the move that adds the least
output error per byte saved, as measured by applying the whole candidate recipe and comparing
outputs (:func:`rnnshrink.fidelity.compare`) on a few probe sequences. The chosen recipe names
its layers (``layers=``) so it reruns to the same model with ``compress --recipe``.

The search inputs are also the calibration inputs: unless ``plain``, quant candidates use
``method=gptq`` (the same step grid, so the same bytes, with error-compensating codes) and svd
candidates ``data=true`` (whitened SVD, :data:`DATA_LADDERS`), and the steps carry them, so a rerun with the same inputs (the same probes by default) gives the same
bytes and error. GPTQ is calibrated on all the inputs, not only the search sequences.
"""

import itertools

from .errors import OptionError
from .fidelity import compare, probe_inputs
from .pipeline import Pipeline, make_step
from .report import summarize
from .transforms import Context

# Settings per transform, lightest first, in pipeline order (structural, prune, quant).
# None: the transform leaves the layer alone. Quant starts at float16, lighter than any code.
LADDERS = {
    "svd": (None, {"tau": 0.99}, {"tau": 0.97}, {"tau": 0.95}, {"tau": 0.9}, {"tau": 0.8}),
    "prune": (None, {"sparsity": 0.3}, {"sparsity": 0.5}, {"sparsity": 0.7}),
    "quant": ({"bits": 16}, {"bits": 8}, {"bits": 6}, {"bits": 5}, {"bits": 4, "group": 64},
              {"bits": 4, "group": 32}, {"bits": 3, "group": 32}),
}
# Unless ``plain``, the data-aware variants, which measured better per byte on the char LM:
# parameters added to the candidates, and ladders replacing those above (as many rungs). The
# whitened spectrum of svd data=true is more concentrated, so its energies are closer to 1.
DATA_AWARE = {"quant": {"method": "gptq"}, "svd": {"data": True}}
DATA_LADDERS = {"svd": (None, {"tau": 0.999}, {"tau": 0.998}, {"tau": 0.995}, {"tau": 0.99},
                        {"tau": 0.97})}
# ``using`` may name ``ecsq`` instead of ladders: entropy-coded weights on one whole-model
# allocation (:mod:`rnnshrink.transforms.ecsq`) meet the goal in one step; the default.
ECSQ = "ecsq"
# Candidates are measured on this many of the input sequences (a max error is then checked on all).
SEARCH_SEQUENCES = 4
# How many rungs a move may skip: a rung that does not save bytes on its own (4-bit group 32
# after group 64, light pruning of codes) must not block the one after it.
REACH = 2


def search(model, target_ratio=None, max_error=None, using=(ECSQ,), x=None, context=None,
           plain=False):
    """Choose per-layer transforms for a size target or an error limit, greedily.

    Starting from the lightest setting of every layer, repeatedly take the single-layer move
    (one transform one or two rungs further) with the smallest increase in output relative
    error per LSTM byte saved, until ``lstm_bytes_before / lstm_bytes_after >= target_ratio``,
    or, with ``max_error``, while the error stays ``<= max_error``.

    Parameters
    ----------
    model : rnnshrink.model.Model
    target_ratio : float, optional
        LSTM size ratio to reach (every stored byte counted, as :func:`summarize` does).
    max_error : float, optional
        Largest output relative error allowed on ``x``; exactly one of the two is given.
    using : sequence of {"svd", "prune", "quant"}, or ("ecsq",)
        Transforms the search may use; ``("ecsq",)`` (the default) meets the goal with one
        :mod:`ecsq <rnnshrink.transforms.ecsq>` step instead of a search.
    x : ndarray of shape (batch, time, input), optional
        Inputs of the first LSTM layer (default: ``context.inputs``, else
        :func:`rnnshrink.fidelity.probe_inputs`). Candidates are measured on the first
        :data:`SEARCH_SEQUENCES` sequences; a ``max_error`` is then checked on all of them.
    context : Context, optional
        Its ``progress`` counts evaluations; ``seed`` and ``probe`` are passed on.
    plain : bool
        Candidates without calibration data: round-to-nearest quant and plain svd (no
        ``method=gptq``, no svd ``data=true``).

    Returns
    -------
    steps : list of Transform
        The recipe, each step restricted to its layers with ``layers=``.
    compressed : Model
    trace : dict
        ``path``: every accepted recipe with ``lstm_bytes``, ``ratio``, ``output_rel_error``
        (on the search sequences; the last one on all of ``x`` with ``max_error``);
        ``evaluations``: how many recipes were applied and measured; ``sequences``: on how many
        input sequences.

    Raises
    ------
    OptionError
        Bad arguments; a target the allowed transforms cannot reach (the message says the best
        ratio reachable); an error limit even the lightest setting exceeds.
    """
    check_arguments(target_ratio, max_error, using, plain)
    context = context or Context()
    if x is None:
        x = context.inputs if context.inputs is not None else probe_inputs(model)[0]
    if ECSQ in using:
        return _allocated(model, target_ratio, max_error, x, context, plain)
    knobs = [name for name in LADDERS if name in using]
    names = [layer.name for layer in model.lstm_layers]
    evaluate = _Evaluator(model, x, knobs, names, context, plain)
    try:
        path = _greedy(evaluate, target_ratio, max_error)
    finally:
        evaluate.counter.close()
    if max_error is not None and len(x) > SEARCH_SEQUENCES:
        path = _verified(evaluate, path, x, max_error)
    steps = evaluate.steps(path[-1]["state"])
    if not steps:
        raise OptionError(f"max error {max_error:g}: every {'+'.join(knobs)} step tried exceeds it")
    compressed = evaluate.run(steps)
    for point in path:
        del point["state"]
    return steps, compressed, {"path": path, "evaluations": len(evaluate.cache),
                               "sequences": len(evaluate.x)}


def _greedy(evaluate, target_ratio, max_error):
    """The accepted recipes from the lightest one to the one meeting the target or limit."""
    knobs, names = evaluate.knobs, evaluate.names
    start = tuple(tuple(0 for _ in knobs) for _ in names)
    if target_ratio is not None:
        best = max(evaluate.ratio(state) for state in _extremes(knobs, names))
        if best < target_ratio:
            raise OptionError(f"target ratio {target_ratio:g}x is out of reach with "
                              f"{'+'.join(knobs)}: the best reachable is {best:.2f}x")
    elif evaluate(start)[1] > max_error:
        raise OptionError(f"max error {max_error:g} is out of reach: the lightest recipe "
                          f"({' '.join(evaluate.specs(start))}) already has error "
                          f"{evaluate(start)[1]:.3e}")
    state, path = start, [evaluate.record(start)]
    while target_ratio is None or evaluate.ratio(state) < target_ratio:
        state = _best_move(evaluate, state, max_error)
        if state is None:
            break
        path.append(evaluate.record(state))
    if target_ratio is not None and evaluate.ratio(path[-1]["state"]) < target_ratio:
        raise OptionError(f"target ratio {target_ratio:g}x was not reached: the search stopped "
                          f"at {path[-1]['ratio']:.2f}x")
    return path


def _verified(evaluate, path, x, max_error):
    """``path`` cut back to its last recipe whose error on all of ``x`` is within the limit."""
    while path:
        compressed = evaluate.run(evaluate.steps(path[-1]["state"]))
        error = compare(evaluate.model, compressed, x, evaluate.context.seed)["output_rel_error"]
        if error is not None and error <= max_error:
            path[-1]["output_rel_error"] = error
            return path
        path = path[:-1]
    raise OptionError(f"max error {max_error:g} is out of reach on all {len(x)} input sequences")


def check_arguments(target_ratio, max_error, using, plain=False):
    """Raise OptionError unless exactly one goal is given and ``using`` names known transforms."""
    if (target_ratio is None) == (max_error is None):
        raise OptionError("give a target ratio or a max error (exactly one)")
    if target_ratio is not None and not target_ratio > 1:
        raise OptionError(f"target ratio must be > 1, got {target_ratio}")
    if max_error is not None and not max_error > 0:
        raise OptionError(f"max error must be > 0, got {max_error}")
    unknown = [name for name in using if name not in LADDERS and name != ECSQ]
    if unknown or not using:
        raise OptionError(f"using: choose from {ECSQ} or {', '.join(LADDERS)}, got "
                          f"{', '.join(unknown) or '(nothing)'}")
    if ECSQ in using and len(using) > 1:
        raise OptionError(f"using: {ECSQ} allocates every LSTM matrix on its own; it cannot be "
                          f"combined with {', '.join(name for name in using if name != ECSQ)}")


def _allocated(model, target_ratio, max_error, x, context, plain):
    """:func:`search` with ``using=("ecsq",)``: one ecsq step meets the goal (rounded codes and
    1 / row RMS² sensitivities when ``plain``)."""
    params = {"ratio": target_ratio} if target_ratio is not None else {"error": max_error}
    if plain:
        params.update(gptq=False, sensitivity="rms")
    step = make_step(ECSQ, params)
    compressed = step.apply(model, Context(context.progress, context.seed, x, context.probe))
    size = summarize(compressed)["lstm_bytes"]
    error = compare(model, compressed, x, context.seed)["output_rel_error"]
    point = {"recipe": [step.spec()], "lstm_bytes": size,
             "ratio": round(summarize(model)["lstm_bytes"] / size, 4), "output_rel_error": error}
    return [step], compressed, {"path": [point], "evaluations": 1, "sequences": len(x)}


def _extremes(knobs, names):
    """Every layer at the last rung of a subset of the transforms: where the bytes are fewest."""
    for subset in itertools.product((0, 1), repeat=len(knobs)):
        if any(subset):
            rungs = tuple(len(LADDERS[k]) - 1 if on else 0 for k, on in zip(knobs, subset))
            yield tuple(rungs for _ in names)


def _best_move(evaluate, state, max_error):
    """The neighbour of ``state`` adding the least error per byte saved (None: no move left)."""
    size, error = evaluate(state)
    best, best_score = None, None
    for index, rungs in enumerate(state):
        for knob, rung in enumerate(rungs):
            for reach in range(1, REACH + 1):
                if rung + reach >= len(LADDERS[evaluate.knobs[knob]]):
                    break
                moved = rungs[:knob] + (rung + reach,) + rungs[knob + 1:]
                candidate = state[:index] + (moved,) + state[index + 1:]
                new_size, new_error = evaluate(candidate)
                if new_size >= size or (max_error is not None and new_error > max_error):
                    continue
                score = (new_error - error) / (size - new_size)
                if best_score is None or score < best_score:
                    best, best_score = candidate, score
    return best


class _Evaluator:
    """Applies and measures recipes given as rungs per layer and transform; caches the figures."""

    def __init__(self, model, x, knobs, names, context, plain=False):
        self.model, self.x, self.knobs, self.names = model, x[:SEARCH_SEQUENCES], knobs, names
        self.before = summarize(model)["lstm_bytes"]
        self.context = context
        # data-aware steps are calibrated on all of ``x``, as a rerun of the recipe is
        self.inner = Context(seed=context.seed, inputs=x, probe=context.probe)
        self.extra = {} if plain else DATA_AWARE
        self.ladders = LADDERS if plain else {**LADDERS, **DATA_LADDERS}
        self.counter = context.step("budget search", None)
        self.cache, self.prefixes = {}, {}

    def steps(self, state):
        """The recipe of ``state``: one step per transform and setting, naming its layers."""
        steps = []
        for knob_index, knob in enumerate(self.knobs):
            by_rung = {}
            for name, rungs in zip(self.names, state):
                by_rung.setdefault(rungs[knob_index], []).append(name)
            for rung in sorted(by_rung):
                params = self.ladders[knob][rung]
                if params is not None:
                    extra = self.extra.get(knob, {}) if params.get("bits") != 16 else {}
                    steps.append(make_step(knob, {**params, **extra,
                                                  "layers": ",".join(by_rung[rung])}))
        return steps

    def specs(self, state):
        return [step.spec() for step in self.steps(state)]

    def run(self, steps):
        """``steps`` applied to the model; models after svd/prune prefixes are kept for reuse."""
        specs = tuple(step.spec() for step in steps)
        model = self.model
        for index, step in enumerate(Pipeline(steps).steps if steps else ()):
            key = specs[:index + 1]
            if key in self.prefixes:
                model = self.prefixes[key]
                continue
            model = step.apply(model, self.inner)
            if step.name != "quant":
                self.prefixes[key] = model
        return model

    def __call__(self, state):
        """``(lstm_bytes, output_rel_error)`` of the recipe ``state`` (inf error if it fails)."""
        if state not in self.cache:
            compressed = self.run(self.steps(state))
            error = compare(self.model, compressed, self.x, self.context.seed)["output_rel_error"]
            self.cache[state] = (summarize(compressed)["lstm_bytes"],
                                 float("inf") if error is None else error)
            self.counter.update()
        return self.cache[state]

    def ratio(self, state):
        return self.before / self(state)[0]

    def record(self, state):
        size, error = self(state)
        return {"state": state, "recipe": self.specs(state), "lstm_bytes": size,
                "ratio": round(self.before / size, 4), "output_rel_error": error}
