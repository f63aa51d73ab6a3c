"""What a checkpoint holds: its LSTM layers, their sizes and per-step cost, as a dict and a table.

The dict returned by :func:`summarize` is the stable ``rnnshrink report --json`` schema,
documented in ``docs/report.md``. Sizes come from the weight objects alone
(:mod:`rnnshrink.model.weights`); nothing here computes a size itself.
"""

from .model import DenseLayer, EmbeddingLayer, LSTMLayer

SCHEMA = "rnnshrink.report/1"


def summarize(model):
    """The report of ``model`` as a JSON-serialisable dict (schema ``rnnshrink.report/1``).

    Parameters
    ----------
    model : rnnshrink.model.Model

    Returns
    -------
    dict
        ``format``, ``producer``, ``topology``, ``lstm_layers`` (list of per-layer dicts with
        ``name``, ``path``, ``directions``, ``input_size``, ``hidden_size``, ``proj_size``,
        ``variant``, ``activations``, ``params``, ``bytes``, ``macs_per_step``, ``inputs``, ``weights``),
        ``lstm_params``, ``lstm_bytes``, ``lstm_macs_per_step``, ``other_params``,
        ``other_bytes``, ``total_params``, ``total_bytes``, ``notes``.
    """
    layers = [_layer_summary(layer) for layer in model.lstm_layers]
    lstm_params = sum(layer["params"] for layer in layers)
    lstm_bytes = sum(layer["bytes"] for layer in layers)
    # Dense and Embedding layers count their own weights; a reader that also keeps them as
    # pass-through tensors (ONNX) names those in source["tensors"], so they count once.
    weighted = [layer for layer in model.layers if isinstance(layer, (DenseLayer, EmbeddingLayer))]
    held = {name for layer in weighted for name in layer.source.get("tensors", ())}
    tensors = [t for name, t in model.tensors.items() if name not in held]
    other_params = sum(t.data.size for t in tensors) + sum(layer.params for layer in weighted)
    other_bytes = sum(t.nbytes for t in tensors) + sum(layer.nbytes for layer in weighted)
    dense_macs = sum(layer.W.macs for layer in model.layers if isinstance(layer, DenseLayer))
    return {
        "schema": SCHEMA,
        "file": model.path,
        "format": model.format,
        "producer": model.producer,
        "topology": model.topology,
        "lstm_layers": layers,
        "lstm_params": lstm_params,
        "lstm_bytes": lstm_bytes,
        "lstm_macs_per_step": sum(layer["macs_per_step"] for layer in layers),
        "macs_per_step": sum(layer["macs_per_step"] for layer in layers) + dense_macs,
        "other_params": other_params,
        "other_bytes": other_bytes,
        "total_params": lstm_params + other_params,
        "total_bytes": lstm_bytes + other_bytes,
        "notes": list(model.notes),
    }


def _layer_summary(layer: LSTMLayer):
    weights = {}
    for k, direction in enumerate(layer.directions):
        for role, weight in direction.matrices.items():
            weights[f"{role}[{k}]" if layer.num_directions > 1 else role] = weight.describe()
    return {
        "name": layer.name,
        "path": layer.source.get("path", layer.name),
        "directions": layer.num_directions,
        "reverse": layer.reverse_only,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "proj_size": layer.proj_size,
        "variant": layer.variant,
        "activations": {
            "gate": layer.gate_activation.describe(),
            "cell": layer.cell_activation.describe(),
            "hidden": layer.hidden_activation.describe(),
        },
        "clip": layer.clip,
        "params": layer.params,
        "bytes": layer.nbytes,
        "macs_per_step": layer.macs_per_step,
        "inputs": layer.inputs,
        "weights": weights,
    }


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _representation(layer):
    """How the layer's matrices are stored, e.g. ``W q4/group64, R lowrank r15 (q8/row)`` or
    ``W coded 3.1 b/w, R coded 2.9 b/w``."""
    parts = {}
    for role, weight in layer["weights"].items():
        parts.setdefault(_weight_text(weight), []).append(role)
    if len(parts) == 1:
        text = next(iter(parts))
    else:
        text = ", ".join(f"{'/'.join(roles)} {text}" for text, roles in parts.items())
    return text if layer["variant"] == "LSTM" else f"{layer['variant']}: {text}"


def _weight_text(weight):
    kind = weight["kind"]
    if kind == "dense":
        return weight["dtype"]
    if kind == "lowrank":
        factors = {_weight_text(weight["U"]), _weight_text(weight["V"])}
        return f"lowrank r{weight['rank']} ({'/'.join(sorted(factors))})"
    if kind == "gated":  # gate blocks with the same storage grouped, e.g. "g float32, i/f/o diag"
        blocks = {}
        for gate, block in weight["blocks"].items():
            shown = _weight_text(block) if isinstance(block, dict) else block
            blocks.setdefault(shown, []).append(gate)
        return ", ".join(f"{'/'.join(gates)} {text}" for text, gates in blocks.items()
                         if text != "zero")
    if kind == "quantized":
        text = f"q{weight['bits']}/{weight['scales']}"
    elif kind == "coded":
        text = f"coded {weight['bits_per_weight']:.1f} b/w"
    else:
        text = weight["dtype"]
    if "sparsity" in weight:
        text += f" sparse {100 * weight['sparsity']:.0f}%"
    return text


def format_table(summary):
    """The report as text for a terminal: a header, one row per LSTM layer, totals, notes."""
    lines = [
        f"{summary['file']}",
        f"  format {summary['format']}, written by {summary['producer']}, "
        f"layer topology {summary['topology']}",
        "",
    ]
    header = ("layer", "dirs", "in", "hidden", "proj", "gate/cell act", "params", "bytes",
              "MACs/step", "stored as")
    rows = [header]
    for layer in summary["lstm_layers"]:
        acts = layer["activations"]
        direction = "rev" if layer["reverse"] else str(layer["directions"])
        rows.append((
            layer["path"], direction, str(layer["input_size"]), str(layer["hidden_size"]),
            str(layer["proj_size"] or "-"), f"{acts['gate']}/{acts['cell']}",
            f"{layer['params']:,}", _size(layer["bytes"]), f"{layer['macs_per_step']:,}",
            _representation(layer),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines += [
        "",
        f"  LSTM total   {summary['lstm_params']:,} params  {_size(summary['lstm_bytes'])}  "
        f"{summary['lstm_macs_per_step']:,} MACs/step",
        f"  other        {summary['other_params']:,} params  {_size(summary['other_bytes'])}",
        f"  whole file   {summary['total_params']:,} params  {_size(summary['total_bytes'])}",
    ]
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


def compression_summary(before, after, fidelity, recipe, probe):
    """The ``compress`` summary: sizes and multiply-adds before and after, ratios, fidelity.

    Parameters
    ----------
    before, after : dict
        :func:`summarize` of the original and of the compressed model.
    fidelity : dict
        :func:`rnnshrink.fidelity.compare` of the two.
    recipe : list of str
    probe : str
        Which inputs the fidelity was measured on.
    """
    layers = []
    for old, new in zip(before["lstm_layers"], after["lstm_layers"]):
        errors = fidelity["layers"].get(old["name"], {})
        layers.append({
            "name": old["name"], "bytes_before": old["bytes"], "bytes_after": new["bytes"],
            "macs_before": old["macs_per_step"], "macs_after": new["macs_per_step"], **errors,
        })
    return {
        "schema": "rnnshrink.compress/1",
        "recipe": list(recipe),
        "lstm_bytes_before": before["lstm_bytes"],
        "lstm_bytes_after": after["lstm_bytes"],
        "lstm_ratio": _ratio(before["lstm_bytes"], after["lstm_bytes"]),
        "bytes_before": before["total_bytes"],
        "bytes_after": after["total_bytes"],
        "ratio": _ratio(before["total_bytes"], after["total_bytes"]),
        "lstm_macs_before": before["lstm_macs_per_step"],
        "lstm_macs_after": after["lstm_macs_per_step"],
        "macs_before": before["macs_per_step"],
        "macs_after": after["macs_per_step"],
        "output_rel_error": fidelity["output_rel_error"],
        "state_rel_error": fidelity["state_rel_error"],
        "probe": probe,
        "layers": layers,
        "notes": after["notes"][len(before["notes"]):],
    }


def _ratio(before, after):
    return round(before / after, 4) if after else None


def format_compression(summary):
    """The compress summary as text for a terminal."""
    def error(value):
        return "-" if value is None else f"{value:.3e}"

    lines = [f"recipe: {' '.join(summary['recipe'])}"]
    for layer in summary["layers"]:
        lines.append(
            f"  {layer['name']}: {_size(layer['bytes_before'])} -> {_size(layer['bytes_after'])}, "
            f"{layer['macs_before']:,} -> {layer['macs_after']:,} MACs/step, "
            f"output error {error(layer.get('output_rel_error'))}"
            + (f" (at {layer['compared_at']})" if layer.get("compared_at", "output") != "output" else "")
        )
    lines += [
        f"LSTM weights: {_size(summary['lstm_bytes_before'])} -> {_size(summary['lstm_bytes_after'])} "
        f"({summary['lstm_ratio']}x smaller), {summary['lstm_macs_before']:,} -> "
        f"{summary['lstm_macs_after']:,} MACs/step",
        f"whole model:  {_size(summary['bytes_before'])} -> {_size(summary['bytes_after'])} "
        f"({summary['ratio']}x), {summary['macs_before']:,} -> {summary['macs_after']:,} MACs/step",
        f"output relative error {error(summary['output_rel_error'])}, final state "
        f"{error(summary['state_rel_error'])} on {summary['probe']}",
    ]
    lines += [f"note: {note}" for note in summary["notes"]]
    return "\n".join(lines)
