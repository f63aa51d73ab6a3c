"""rnnshrink's side of the peer benchmark: the presets, as data, and how each is run.

A preset is ``(label, arguments)``: ``{"steps": [...]}`` is ``rnnshrink compress -t STEP ...``
and ``{"budget": {...}}`` is ``rnnshrink compress --target-ratio R`` (the keyword arguments of
:func:`rnnshrink.budget.search`: ``target_ratio``, optionally ``using`` and ``plain``);
``"onnx_style"`` is ``convert --onnx-style`` (default ``auto``). Adding
a method is one line here. A preset the installed rnnshrink cannot run (an unknown transform
or parameter, a target out of reach, a representation the ONNX exporter refuses) is skipped
with its error as the note, and the rest still run.

Each preset goes through :func:`rnnshrink.api.compress_file` on the float ONNX model (writing
the rnnshrink container, whose size is reported) and is then exported for onnxruntime the way
``rnnshrink convert --to onnx`` exports a model read from ONNX: the original graph with each
``LSTM`` node replaced by the compressed layer (:func:`rnnshrink.io.onnx_model.export_model`,
default ``--onnx-style auto``: compact ``Scan`` graphs for compressed layers). The container
does not keep the source graph, so the bench gives the container's model the graph it read
(``meta["onnx_model"]``) before exporting; ``convert`` on the container alone writes the LSTM
stack without the embedding and head.

``--target-ratio R`` is the entropy-coded allocation (``ecsq:ratio=R``), run once per target;
its ONNX export re-packs the codes at int8 (onnxruntime cannot decode the entropy code), so its
ONNX file is about 8-bit size while the container holds the coded size. The greedy per-layer
search presets (``using`` given) run by falling target: the search for the largest target runs
once, and a smaller target's recipe is read off its path and rerun (:func:`_from_search`),
which is what a search for that target returns; the row's note says so.
"""

import inspect
import time

import rnnshrink
from rnnshrink import api, budget
from rnnshrink.io import onnx_model
from rnnshrink.pipeline import make_step, parse_step

PRESETS = [
    ("svd tau 0.5", {"steps": ["svd:tau=0.5"]}),
    ("svd tau 0.7", {"steps": ["svd:tau=0.7"]}),
    ("svd tau 0.9", {"steps": ["svd:tau=0.9"]}),
    ("8-bit", {"steps": ["quant:bits=8"]}),
    ("4-bit, groups of 64", {"steps": ["quant:bits=4,group=64"]}),
    ("8-bit, folded", {"steps": ["quant:bits=8"], "onnx_style": "folded"}),
    ("4-bit g64, folded", {"steps": ["quant:bits=4,group=64"], "onnx_style": "folded"}),
    ("svd tau 0.9 + 4-bit g64", {"steps": ["svd:tau=0.9", "quant:bits=4,group=64"]}),
    ("iss keep 0.5", {"steps": ["iss:keep=0.5"]}),
    ("prune 50 %", {"steps": ["prune:sparsity=0.5"]}),
    ("prune 80 %", {"steps": ["prune:sparsity=0.8"]}),
    ("--target-ratio 4", {"budget": {"target_ratio": 4}}),
    ("--target-ratio 6", {"budget": {"target_ratio": 6}}),
    ("--target-ratio 8", {"budget": {"target_ratio": 8}}),
    ("--target-ratio 12", {"budget": {"target_ratio": 12}}),
    ("--target-ratio 16", {"budget": {"target_ratio": 16}}),
    ("search svd,quant 8x", {"budget": {"target_ratio": 8, "using": ["svd", "quant"]}}),
]


def command(arguments, calib):
    """The ``rnnshrink compress`` options of a preset, for the tables."""
    if "budget" in arguments:
        budget = arguments["budget"]
        options = [f"--target-ratio {budget['target_ratio']:g}"]
        options += [f"--using {','.join(budget['using'])}"] if "using" in budget else []
        options += ["--plain"] if budget.get("plain") else []
    else:
        options = [f"-t {step}" for step in arguments["steps"]]
    options += ["--calib calib.npy"] if calib else []
    style = arguments.get("onnx_style")
    return " ".join(options + ([f"&& convert --onnx-style {style}"] if style else []))


def run(arguments, float_onnx, folder, name, calib=None, searches=None):
    """Compress ``float_onnx`` with one preset; write the container and the ONNX export.

    Parameters
    ----------
    arguments : dict
        ``{"steps": [...]}`` or ``{"budget": {...}}``.
    float_onnx, folder : pathlib.Path
    name : str
        Stem of the files written in ``folder``.
    calib : pathlib.Path, optional
        ``.npy`` calibration inputs (``--calib``).
    searches : dict, optional
        Budget searches already run on this file (filled in here), see :func:`_from_search`.

    Returns
    -------
    dict
        ``container``, ``onnx`` (paths), ``container_bytes``, ``lstm_ratio`` and
        ``probe_error`` (rnnshrink's own figures), ``recipe`` (the steps applied),
        ``seconds`` (compress time), ``note``; or ``{"skipped": reason}``.
    """
    container, exported = folder / f"{name}.h5", folder / f"{name}.onnx"
    searches = {} if searches is None else searches
    started = time.perf_counter()
    try:
        steps, search, note = _steps(arguments, searches)
        summary = api.compress_file(float_onnx, steps, output=container, calib=calib,
                                    budget=search, force=True)
        seconds = time.perf_counter() - started
        if search is not None:
            searches[_search_key(search)] = summary
        model = rnnshrink.read(container)
        model.meta["onnx_model"] = rnnshrink.read(float_onnx).meta["onnx_model"]
        onnx_model.export_model(model, exported, style=arguments.get("onnx_style", "auto"))
    except Exception as error:  # a preset this rnnshrink cannot run must not stop the others
        return {"skipped": f"{type(error).__name__}: {error}"}
    return {"container": container, "onnx": exported, "container_bytes": container.stat().st_size,
            "lstm_ratio": summary["lstm_ratio"], "probe_error": summary["output_rel_error"],
            "recipe": " ".join(f"-t {spec}" for spec in summary["recipe"]), "seconds": seconds,
            "note": note}


def run_order(presets):
    """Indices of ``presets`` in the order to run them: budget searches by falling target (so a
    smaller target can be read off a larger one's path, :func:`_from_search`), after the rest."""
    def key(index):
        budget = presets[index][1].get("budget")
        return (0, 0) if budget is None else (1, -budget["target_ratio"])
    return sorted(range(len(presets)), key=key)


def _steps(arguments, searches):
    """``(steps, search arguments or None, note)`` of a preset."""
    if "budget" not in arguments:
        return [parse_step(step) for step in arguments["steps"]], None, ""
    search = _budget(arguments["budget"])
    if search["using"] == ["ecsq"]:  # one allocation per target, not a path to read off
        return [], search, ""
    found = _from_search(search, searches)
    if found is None:
        return [], search, ""
    steps, larger = found
    return steps, None, (f"recipe read off the --target-ratio {larger:g} search's path (the "
                         "greedy search passes through it: the same recipe)")


def _from_search(search, searches):
    """The steps a search for ``search["target_ratio"]`` would return, from a search for a larger
    target with the same options, or None.

    :func:`rnnshrink.budget.search` is greedy: its moves do not depend on the target, and it
    returns the first recipe on its path whose LSTM ratio reaches the target. So that recipe can
    be read off the path of a search for a larger target, and rerun (``compress --recipe``
    reruns to the same bytes and error on the same calibration inputs).
    """
    target = search["target_ratio"]
    for (options, larger), summary in searches.items():
        if options == _search_key(search)[0] and larger > target:
            before = summary["lstm_bytes_before"]
            for point in summary["search"]["path"]:
                if before / point["lstm_bytes"] >= target:
                    return [_step(spec) for spec in point["recipe"]], larger
    return None


def _search_key(search):
    options = {key: value for key, value in search.items() if key != "target_ratio"}
    return repr(sorted(options.items())), search["target_ratio"]


def _step(spec):
    """A step from the text :meth:`~rnnshrink.transforms.base.Transform.spec` gives it. The
    search's steps end with ``layers=NAME,NAME`` — commas that ``parse_step`` would split."""
    name, _, arguments = spec.partition(":")
    arguments, _, layers = arguments.partition("layers=")
    params = dict(item.split("=", 1) for item in arguments.split(",") if item)
    return make_step(name, {**params, **({"layers": layers} if layers else {})})


def _budget(given):
    """``given`` with the search defaults the command line fills in (``max_error``, ``using``)."""
    using = inspect.signature(budget.search).parameters["using"].default
    return {"max_error": None, "using": list(using), "plain": False, **given}
