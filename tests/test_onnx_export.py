"""Tests of rnnshrink.io.onnx_export: onnxruntime runs the exported stack like the reference.

Compressed weights are built by hand from the weight classes (an SVD, a mask, codes and steps),
so every representation and the combinations the transforms produce are covered at small sizes.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _models import lstm_layer  # noqa: E402
import rnnshrink  # noqa: E402
from rnnshrink.errors import OptionError  # noqa: E402
from rnnshrink.io.onnx_export import build_stack, export_stack, lstm_layer_nodes  # noqa: E402
from rnnshrink.io.onnx_model import export_model  # noqa: E402
from rnnshrink.model import (  # noqa: E402
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    Activation,
    Model,
    run_stack,
)
from rnnshrink.model import EntropyCoded, step_map  # noqa: E402
from rnnshrink.model.weights import Dense, LowRank, Quantized, Sparse, Weight  # noqa: E402
from rnnshrink.fidelity import probe_inputs  # noqa: E402
from rnnshrink.model.gated import SLIM_VARIANTS  # noqa: E402
from rnnshrink.pipeline import Pipeline, parse_step  # noqa: E402
from rnnshrink.transforms import Context  # noqa: E402

RNG = np.random.default_rng(7)
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


# ---- compressed weights, by hand ----------------------------------------------------------

def low_rank(matrix, rank=3):
    U, s, Vt = np.linalg.svd(matrix, full_matrices=False)
    return LowRank(Dense(U[:, :rank] * s[:rank]), Dense(Vt[:rank]))


def magnitude_mask(matrix, keep):
    """The ``keep`` fraction of entries of largest magnitude (at least one)."""
    count = max(1, round(keep * matrix.size))
    threshold = np.sort(np.abs(matrix).ravel())[-count]
    return np.abs(matrix) >= threshold


def quantized(matrix, bits, scales, group=4, mask=None):
    """Symmetric codes with a float16 step per tensor, row or group of ``group`` columns."""
    rows, cols = matrix.shape
    limit = 2 ** (bits - 1) - 1
    width = {"tensor": None, "row": cols, "group": group}[scales]
    if width is None:
        amax = np.abs(matrix).max(keepdims=True)
    else:
        padded = np.pad(np.abs(matrix), ((0, 0), (0, -cols % width)))
        amax = padded.reshape(rows, -1, width).max(axis=2)
    steps = np.maximum(amax / limit, 1e-3).astype(np.float16).astype(np.float32)
    step_matrix = np.repeat(steps, width or cols, axis=1)[:, :cols]
    codes = np.clip(np.round(matrix / step_matrix), -limit, limit).astype(np.int8)
    if mask is not None:
        codes = np.where(mask, codes, 0).astype(np.int8)
    return Quantized(codes, steps, bits, group if scales == "group" else None, mask)


def coded(matrix, step_in_rms=0.3, col_exp=None, mask=None):
    """Entropy-coded codes on row steps ``step_in_rms`` row RMS (times ``2^(col_exp/8)``)."""
    rms = np.sqrt((matrix ** 2).mean(axis=1)) + 1e-6
    row_exp = np.round(8 * np.log2(step_in_rms * rms / 0.5)).astype(int)
    col_exp = np.zeros(matrix.shape[1], int) if col_exp is None else col_exp
    codes = np.round(matrix / step_map(0.5, row_exp, col_exp)).astype(int)
    if mask is not None:
        codes = np.where(mask, codes, 0)
    return EntropyCoded(codes, 0.5, row_exp, col_exp, mask)


def _factors_coded(matrix):
    factors = low_rank(matrix)
    return LowRank(coded(factors.U.values, 0.1), coded(factors.V.values, 1.0))


def _factors_quantized(matrix):
    factors = low_rank(matrix)
    return LowRank(quantized(factors.U.values, 4, "group", 2),
                   quantized(factors.V.values, 8, "row"))


REPRESENTATIONS = {
    "dense": Dense,
    "float16": lambda m: Dense(m, "float16"),
    "bfloat16": lambda m: Dense(m, "bfloat16"),
    "lowrank": low_rank,
    "sparse": lambda m: Sparse.from_dense(m, magnitude_mask(m, 0.4)),
    "sparse-float16": lambda m: Sparse.from_dense(m, magnitude_mask(m, 0.4), "float16"),
    "q8-tensor": lambda m: quantized(m, 8, "tensor"),
    "q8-row": lambda m: quantized(m, 8, "row"),
    "q6-group": lambda m: quantized(m, 6, "group"),
    "q4-group": lambda m: quantized(m, 4, "group"),
    "q4-row": lambda m: quantized(m, 4, "row"),
    "q3-group": lambda m: quantized(m, 3, "group", 3),
    "q2-tensor": lambda m: quantized(m, 2, "tensor"),
    "q4-mask": lambda m: quantized(m, 4, "group", mask=magnitude_mask(m, 0.4)),
    "q8-row-mask": lambda m: quantized(m, 8, "row", mask=magnitude_mask(m, 0.3)),
    "lowrank-q4": _factors_quantized,
    "coded": coded,  # exact re-packs: per-row step maps, codes within int8 / int4
    "coded-int4": lambda m: coded(m, 1.0),
    "coded-mask": lambda m: coded(m, 0.3, mask=magnitude_mask(m, 0.4)),
    "lowrank-coded": _factors_coded,
}


def compress(layer, representation):
    """``layer`` with every matrix (W, R, proj) in ``representation``."""
    make = REPRESENTATIONS[representation]
    directions = [dataclasses.replace(d, **{role: make(w.materialize(np.float32))
                                            for role, w in d.matrices.items()})
                  for d in layer.directions]
    return dataclasses.replace(layer, directions=directions)


def stack(representation, proj=0):
    """A forward layer feeding a bidirectional one, both in ``representation``."""
    first = lstm_layer("first", 5, 6, RNG, proj=proj)
    second = lstm_layer("second", first.output_size, 5, RNG, directions=2, proj=proj)
    return Model(layers=[compress(first, representation), compress(second, representation)])


# ---- running ------------------------------------------------------------------------------

def run_export(model, tmp_path, style, x=None):
    """Export, check, run in onnxruntime on ``x`` (batch-first; random when omitted) and compare
    with run_stack; returns the outputs by name, and the file size as ``"size"``."""
    path = tmp_path / f"{style}.onnx"
    export_stack(model, path, style=style)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    layers = model.lstm_layers
    if x is None:
        x = RNG.normal(0, 1, (3, 7, layers[0].input_size)).astype(np.float32)
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"X": x.transpose(1, 0, 2)})))
    results = run_stack(layers, x)
    assert_close(got["Y"], results[-1][0].transpose(1, 0, 2))
    for k, (_, h, c) in enumerate(results):
        assert_close(got[f"h_{k}"], h)
        assert_close(got[f"c_{k}"], c)
    return {**got, "size": path.stat().st_size}


def assert_close(got, want):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


# ---- agreement ----------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["scan", "folded"])  # "auto" is "scan" for these, the LSTM
@pytest.mark.parametrize("representation", list(REPRESENTATIONS))  # op ("folded") for dense
def test_every_representation_runs_like_the_reference(representation, style, tmp_path):
    run_export(stack(representation), tmp_path, style)


@pytest.mark.parametrize("representation", ["dense", "lowrank", "q4-group", "sparse", "q4-mask"])
def test_projection_layers_run_like_the_reference(representation, tmp_path):
    run_export(stack(representation, proj=3), tmp_path, "scan")
    run_export(stack(representation, proj=3), tmp_path, "auto")


def test_mixed_stack_auto(tmp_path):
    """Dense layers become the LSTM op, compressed ones a Scan, in one graph."""
    model = stack("dense")
    model = model.replace(layers=[model.layers[0], compress(model.layers[1], "lowrank-q4")])
    run_export(model, tmp_path, "auto")
    ops = [node.op_type for node in build_stack(model).graph.node]
    assert ops.count("LSTM") == 1 and ops.count("Scan") == 1


def test_directions_of_different_ranks(tmp_path):
    """A bidirectional layer whose R factors differ in rank is rebuilt densely in the graph."""
    layer = lstm_layer("bi", 4, 6, RNG, directions=2)
    forward, backward = layer.directions
    layer = dataclasses.replace(layer, directions=[
        dataclasses.replace(forward, R=low_rank(forward.R.materialize(), 2)), backward])
    run_export(Model(layers=[layer]), tmp_path, "scan")


@pytest.mark.parametrize("style", ["auto", "scan", "folded"])
@pytest.mark.parametrize("representation", ["dense", "q4-group"])
def test_reverse_only_layer(representation, style, tmp_path):
    layer = dataclasses.replace(lstm_layer("back", 4, 5, RNG), reverse_only=True)
    run_export(Model(layers=[compress(layer, representation)]), tmp_path, style)


ACTIVATIONS = {
    "keras2": (HARD_SIGMOID_KERAS2, Activation("tanh"), Activation("tanh")),
    "keras3": (HARD_SIGMOID_KERAS3, Activation("softsign"), Activation("softplus")),
    "relu": (Activation("sigmoid"), Activation("relu"), Activation("elu", 0.7)),
    "scaled": (Activation("hard_sigmoid", 0.3, 0.4), Activation("scaled_tanh", 1.5, 0.7),
               Activation("leaky_relu", 0.2)),
    "affine": (Activation("sigmoid"), Activation("affine", 0.5, 0.1), Activation("linear")),
    "thresholded": (Activation("sigmoid"), Activation("thresholded_relu", 0.1),
                    Activation("tanh")),
}


@pytest.mark.parametrize("style", ["auto", "scan"])
@pytest.mark.parametrize("functions", list(ACTIVATIONS))
def test_activations_and_clip(functions, style, tmp_path):
    gate, cell, hidden = ACTIVATIONS[functions]
    clip = 0.5 if functions in ("keras2", "relu", "scaled") else None
    layers = [dataclasses.replace(layer, gate_activation=gate, cell_activation=cell,
                                  hidden_activation=hidden, clip=clip)
              for layer in stack("dense").layers]
    run_export(Model(layers=layers), tmp_path, style)


def read_fixture(name):
    """``fixtures/<name>`` read by rnnshrink, or skip while it or its reader is missing."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixtures/{name} not generated yet")
    try:
        return rnnshrink.read(path)
    except ImportError as error:
        pytest.skip(f"the reader of {name} is not there yet ({error})")


@pytest.mark.parametrize("style", ["auto", "scan"])
@pytest.mark.parametrize("name", ["charlm.pt", "torch_bidir_proj.pt", "torch_bf16.pt",
                                  "keras2_bidir_hardsig.h5", "onnx_attrs.onnx"])
def test_fixtures_match_their_expected_outputs(name, style, tmp_path):
    """Real files: the export matches run_stack and the framework's own outputs."""
    model = read_fixture(name)
    expected = np.load(FIXTURES / "expected" / f"{name.split('.')[0]}.npz")
    got = run_export(model, tmp_path, style, x=expected["x"])
    last = len(model.lstm_layers) - 1
    assert_close(got["Y"], expected[f"y{last}"].transpose(1, 0, 2))
    for k in range(last + 1):
        assert_close(got[f"h_{k}"], expected[f"h{k}"])
        assert_close(got[f"c_{k}"], expected[f"c{k}"])


def test_fixture_charlm_compressed(tmp_path):
    """The trained char LM at 4 bits, groups of 4, low-rank factors: both compact styles."""
    model = read_fixture("charlm.pt")
    for representation in ("q4-group", "lowrank-q4"):
        layers = [compress(layer, representation) for layer in model.lstm_layers]
        for style in ("scan", "folded"):
            run_export(model.replace(layers=layers), tmp_path, style)


@pytest.mark.parametrize("gate", [HARD_SIGMOID_KERAS2, Activation("sigmoid")])
@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_slim_variants_run_as_the_lstm_op(variant, gate, tmp_path):
    """A Slim LSTM is the standard LSTM it is: materialized, the LSTM op runs it (its fixed
    gates held by their biases), in every style."""
    first = lstm_layer("first", 5, 6, RNG, gate=gate)
    second = lstm_layer("second", 6, 6, RNG, directions=2, gate=gate)
    x = RNG.normal(0, 1, (4, 9, 5))
    model = Pipeline([parse_step(f"slim:variant={variant}")]).run(
        Model(layers=[first, second]), Context(inputs=x))
    for style in ("auto", "scan", "folded"):
        run_export(model, tmp_path, style)
    assert [node.op_type for node in build_stack(model).graph.node].count("LSTM") == 2


def test_fixture_charlm_slim(tmp_path):
    model = read_fixture("charlm.pt")
    x = probe_inputs(model)[0]
    for variant in ("LSTM4a", "LSTM11"):
        small = Pipeline([parse_step(f"slim:variant={variant}"), parse_step("quant:bits=8")]).run(
            model, Context(inputs=x))
        run_export(small, tmp_path, "auto", x.astype(np.float32))


def test_entropy_coded_stacks_run_like_the_reference_of_their_codes(tmp_path):
    """Per-row step maps re-pack exactly: onnxruntime matches run_stack of the coded model to
    float32 accuracy (1e-5 of the output scale)."""
    model = stack("coded")
    assert all(w.fixed_width()[1] for layer in model.lstm_layers for d in layer.directions
               for w in d.matrices.values())
    run_export(model, tmp_path, "scan")
    x = RNG.normal(0, 1, (3, 7, 5)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "scan.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(["Y"], {"X": x.transpose(1, 0, 2)})[0].transpose(1, 0, 2)
    reference = run_stack(model.lstm_layers, x)[-1][0]
    np.testing.assert_allclose(y, reference, atol=1e-5 * np.abs(reference).max())


def test_column_step_maps_are_requantized_within_a_stated_bound(tmp_path):
    """Column exponents make the step map (rows, cols): the matrix is re-quantized at int8 per
    row, a weight error of at most half a step, amax / 254 per row; outputs move by a
    fraction of a percent, and the convert note says how much the weights moved."""
    layer = lstm_layer("cols", 12, 16, RNG, scale=0.3)
    make = lambda m: coded(m, 0.3, col_exp=RNG.integers(-6, 7, m.shape[1]))  # noqa: E731
    layer = dataclasses.replace(layer, directions=[dataclasses.replace(
        d, **{role: make(w.materialize()) for role, w in d.matrices.items()})
        for d in layer.directions])
    model = Model(layers=[layer])
    path = tmp_path / "cols.onnx"
    description = export_model(model, path, style="scan")
    note, = [n for n in description["notes"] if "entropy-coded" in n]
    assert note.startswith("2 entropy-coded matrices re-packed at fixed width")
    assert "2 re-quantized at int8 per row (relative weight error up to" in note
    error = float(note.rsplit(" ", 1)[1].rstrip(")"))
    assert 0 < error < 1 / 127
    x = RNG.normal(0, 1, (4, 9, 12)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(["Y"], {"X": x.transpose(1, 0, 2)})[0].transpose(1, 0, 2)
    reference = run_stack(model.lstm_layers, x)[-1][0]
    assert np.linalg.norm(y - reference) < 0.01 * np.linalg.norm(reference)


def test_fixture_with_branches_is_refused():
    """An If whose branches hold different LSTM layers is no chain."""
    model = read_fixture("onnx_handmade_if.onnx")
    with pytest.raises(OptionError, match="lstm_else and lstm_then do not chain"):
        build_stack(model)


# ---- stored size --------------------------------------------------------------------------

def stored_nbytes(weight):
    """What the file must hold for ``weight``: its nbytes, codes counted at INT4 / INT8 width."""
    if isinstance(weight, LowRank):
        return stored_nbytes(weight.U) + stored_nbytes(weight.V)
    if isinstance(weight, EntropyCoded):
        return stored_nbytes(weight.fixed_width()[0])
    if isinstance(weight, Quantized):
        width = 4 if weight.bits <= 4 else 8
        return Quantized(weight.codes, weight.steps, width, weight.group, weight.mask,
                         weight.step_dtype).nbytes
    return weight.nbytes


@pytest.mark.parametrize("representation", ["dense", "float16", "bfloat16", "lowrank", "sparse",
                                            "q8-row", "q4-group", "q2-tensor", "q4-mask",
                                            "lowrank-q4", "coded", "coded-int4"])
@pytest.mark.parametrize("style", ["scan", "folded"])
def test_file_size_is_the_compressed_size(representation, style, tmp_path):
    """The initializers hold the compressed weights and one float32 bias; the graph a few KB."""
    layer = compress(lstm_layer("big", 48, 48, RNG, scale=0.1), representation)
    size = run_export(Model(layers=[layer]), tmp_path, style)["size"]
    stored = sum(len(t.raw_data) for t in onnx.load(tmp_path / f"{style}.onnx").graph.initializer)
    weights = sum(stored_nbytes(w) for w in layer.directions[0].matrices.values())
    biases = 4 * layer.hidden_size * 4 * (2 if style == "folded" else 1)  # LSTM op: B = b || 0
    assert weights + biases <= stored <= weights + biases + 300  # + shapes and scalars
    assert size - stored < 8000


@pytest.mark.parametrize("columns, index_dtype", [(200, np.uint8), (300, np.uint16)])
def test_very_sparse_matrices_store_csr_indices(columns, index_dtype, tmp_path):
    """2 % kept of (24, 200) or (24, 300): CSR columns of one or two bytes, int32 row pointers."""
    layer = lstm_layer("wide", columns, 6, RNG)
    direction = layer.directions[0]
    W = direction.W.materialize(np.float32)
    mask = magnitude_mask(W, 0.02)
    for weight in (Sparse.from_dense(W, mask), quantized(W, 8, "row", mask=mask)):
        layer = dataclasses.replace(layer, directions=[dataclasses.replace(direction, W=weight)])
        run_export(Model(layers=[layer]), tmp_path, "scan")
        initializers = onnx.load(tmp_path / "scan.onnx").graph.initializer
        dtypes = {t.name.rstrip("0123456789"): t.data_type for t in initializers}
        wanted = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(index_dtype))
        assert dtypes["lstm0_columns"] == wanted
        stored = sum(len(t.raw_data) for t in initializers)
        expected = stored_nbytes(weight) + direction.R.nbytes + direction.b.size * 4
        assert expected <= stored <= expected + 300


def test_sparse_matrix_that_saves_nothing_is_stored_dense(tmp_path):
    layer = lstm_layer("full", 4, 5, RNG)
    direction = layer.directions[0]
    W = direction.W.materialize(np.float32)
    layer = dataclasses.replace(layer, directions=[dataclasses.replace(
        direction, W=Sparse.from_dense(W, magnitude_mask(W, 1.0)))])
    run_export(Model(layers=[layer]), tmp_path, "scan")
    ops = {node.op_type for node in onnx.load(tmp_path / "scan.onnx").graph.node}
    assert "ScatterElements" not in ops


# ---- the builder API and refusals ---------------------------------------------------------

def test_layer_nodes_use_the_prefix():
    layer = compress(lstm_layer("one", 3, 4, RNG), "q4-group")
    nodes, initializers, y, h, c = lstm_layer_nodes(layer, "input", "p_", "scan")
    names = [o for n in nodes for o in n.output] + [t.name for t in initializers]
    assert all(name.startswith("p_") for name in names)
    assert {y, h, c} <= set(names)


def test_layers_that_do_not_chain_are_refused():
    first, second = lstm_layer("a", 4, 5, RNG), lstm_layer("b", 6, 5, RNG)
    message = "a and b do not chain: a outputs 5 features, b expects 6"
    with pytest.raises(OptionError, match=message):
        build_stack(Model(layers=[first, second]))


def test_folded_projection_is_refused(tmp_path):
    with pytest.raises(OptionError, match="layer first has a projection.*style 'scan'"):
        export_stack(stack("dense", proj=3), tmp_path / "out.onnx", style="folded")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, message", [
    ({"style": "fast"}, "style must be one of auto, scan, folded, got 'fast'"),
    ({"opset": 17}, r"opset must be in \[21, \d+\], got 17"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        build_stack(stack("dense"), **options)


def test_model_without_lstm_is_refused():
    with pytest.raises(OptionError, match="no LSTM layer"):
        build_stack(Model(layers=[]))


def test_unknown_weight_kind_is_refused():
    class Odd(Weight):
        kind = "odd"
        shape = property(lambda self: (16, 4))
        nbytes = params = macs = 0

        def materialize(self, dtype=np.float64):
            return np.zeros(self.shape, dtype)

    layer = lstm_layer("a", 3, 4, RNG)
    odd = dataclasses.replace(layer.directions[0], R=Odd())
    layer = dataclasses.replace(layer, directions=[odd])
    with pytest.raises(OptionError, match="cannot export a weight of kind 'odd'"):
        build_stack(Model(layers=[layer]))
