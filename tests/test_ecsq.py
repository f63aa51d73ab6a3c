"""ecsq: entropy-coded weights on one whole-model allocation — target met, reruns, composes."""

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import Model
from rnnshrink.model.coded import EntropyCoded
from rnnshrink.model.weights import LowRank
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.report import summarize
from rnnshrink.transforms import Context, allocation, ecsq
from rnnshrink.transforms.ecsq import EntropyCode

from _models import apply_checked, charlm, contract_builds, lstm_layer, stack_model


def _ratio(before, after, names=None):
    pick = [layer for layer in before.lstm_layers if names is None or layer.name in names]
    return sum(layer.nbytes for layer in pick) / sum(after.layer(layer.name).nbytes
                                                     for layer in pick)


@pytest.mark.parametrize("build", contract_builds())
def test_contract_and_target_ratio_within_one_percent(build):
    model = build()
    out, error = apply_checked(EntropyCode(ratio=6, sensitivity="rms"), model)
    assert 6 <= _ratio(model, out) <= 6 * 1.01
    assert all(isinstance(w, EntropyCoded) for layer in out.lstm_layers
               for d in layer.directions for w in d.matrices.values())
    assert error < 0.5


def test_report_counts_the_real_coded_bytes_and_bits_per_weight():
    model = charlm()
    out = EntropyCode(ratio=8, sensitivity="rms", gptq=False).apply(model)
    summary = summarize(out)
    weights = [w for layer in out.lstm_layers for d in layer.directions
               for w in d.matrices.values()]
    biases = sum(d.b.size * 2 for layer in out.lstm_layers for d in layer.directions)
    assert summary["lstm_bytes"] == sum(w.nbytes for w in weights) + biases
    assert all(1 < w.bits_per_weight < 8 for w in weights)
    assert any("bits/weight" in note for note in out.notes)


def test_offset_printed_in_the_note_reruns_to_the_same_bytes_and_codes():
    model = charlm()
    x = probe_inputs(model)[0]
    first = EntropyCode(ratio=8, sensitivity="hessian", beta=1.0).apply(model, Context(inputs=x))
    (rerun,) = [note.split("rerun: ")[1].rstrip(")") for note in first.notes if "rerun:" in note]
    again = Pipeline([parse_step(rerun)]).run(model, Context(inputs=x))
    for a, b in zip(first.lstm_layers, again.lstm_layers):
        for da, db in zip(a.directions, b.directions):
            for role, weight in da.matrices.items():
                np.testing.assert_array_equal(weight.codes, db.matrices[role].codes)
    assert summarize(first)["lstm_bytes"] == summarize(again)["lstm_bytes"]


def test_gptq_codes_give_lower_held_out_error_at_the_same_size():
    model = charlm()
    x = probe_inputs(model, batch=16, steps=100)[0]
    context = Context(inputs=x)
    errors = {}
    for gptq in (False, True):
        out = EntropyCode(ratio=10, sensitivity="hessian", beta=1.0, gptq=gptq).apply(model, context)
        assert 10 <= _ratio(model, out) <= 10.1
        errors[gptq] = compare(model, out, x[8:])["output_rel_error"]
    assert errors[True] < errors[False]


def test_error_limit_gives_the_coarsest_allocation_within_it():
    model = stack_model(sizes=(6, 20, 16))
    x = probe_inputs(model, batch=8)[0]
    out = EntropyCode(error=0.02, sensitivity="rms").apply(model, Context(inputs=x))
    assert compare(model, out, x[4:])["output_rel_error"] <= 0.02
    assert _ratio(model, out) > 2


def test_composes_with_low_rank_factors_and_pruned_masks():
    model = charlm()
    lowrank = Pipeline([parse_step("lowrank:rank=32"), parse_step("ecsq:ratio=2,sensitivity=rms")])
    out = lowrank.run(model, Context())
    factored = [d.R for layer in out.lstm_layers for d in layer.directions
                if isinstance(d.R, LowRank)]
    assert factored and all(isinstance(f.U, EntropyCoded) and isinstance(f.V, EntropyCoded)
                            for f in factored)
    pruned = Pipeline([parse_step("prune:sparsity=0.7"), parse_step("ecsq:ratio=2,sensitivity=rms")])
    out = pruned.run(model, Context())
    W = out.lstm_layers[0].directions[0].W
    assert W.mask is not None and not np.any(W.codes[~W.mask])


def test_refuses_quantized_weights_and_ambiguous_goals():
    quantized = Pipeline([parse_step("quant:bits=8")]).run(stack_model(), Context())
    with pytest.raises(OptionError, match="ecsq: layer lstm_0 W\\[0\\] is quantized"):
        EntropyCode(ratio=4).apply(quantized)
    with pytest.raises(OptionError, match="exactly one of ratio=R, error=E or offset=T"):
        EntropyCode(ratio=4, error=0.1)
    with pytest.raises(OptionError, match="exactly one"):
        EntropyCode()



def _mid_model(hidden=384, seed=0):
    """Two LSTM layers of ``hidden`` units reading ``hidden`` inputs (2.4 M weights at 384),
    weights of scale 1 / sqrt(hidden): matrices above the search's subsample size."""
    rng = np.random.default_rng(seed)
    scale = hidden ** -0.5
    layers = [lstm_layer("lstm_0", hidden, hidden, rng, scale=scale),
              lstm_layer("lstm_1", hidden, hidden, rng, scale=scale, inputs=["lstm_0"])]
    return Model(layers=layers, format="test", topology="unknown")


def test_mid_size_model_meets_the_ratio_from_the_row_subsamples(monkeypatch):
    model = _mid_model()
    x = probe_inputs(model, batch=8, steps=40)[0]
    passes = []
    whole_model = allocation.Allocation.codes
    monkeypatch.setattr(allocation.Allocation, "codes",
                        lambda self, offset: passes.append(offset) or whole_model(self, offset))
    out = EntropyCode(ratio=8, sensitivity="hessian", beta=1.0).apply(model, Context(inputs=x))
    assert 8 <= _ratio(model, out) <= 8 * 1.01
    assert 1 <= len(passes) <= 2  # the search ran on the subsamples: the whole model coded once


def test_large_models_try_one_candidate_and_say_so(monkeypatch):
    monkeypatch.setattr(ecsq, "LARGE", 100)
    model = stack_model(sizes=(6, 20, 16))
    x = probe_inputs(model, batch=8)[0]
    out = EntropyCode(ratio=4).apply(model, Context(inputs=x))
    (main,) = [note for note in out.notes if "rerun:" in note]
    assert "sensitivity hessian, beta 0.5" in main
    assert any("one candidate, hessian with beta 0.5" in note for note in out.notes)
    given = EntropyCode(ratio=4, sensitivity="fisher").apply(model, Context(inputs=x))
    assert not any("one candidate" in note for note in given.notes)
