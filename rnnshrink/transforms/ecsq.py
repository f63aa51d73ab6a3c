"""ECSQ: every LSTM matrix entropy coded on one whole-model rate–distortion allocation.

Each matrix is quantized on its step map ``S_ij = δ · 2^(k_i/8) · 2^(l_j/8)`` with no clipping
(entropy-constrained scalar quantization) and its integer codes are rANS coded
(:class:`~rnnshrink.model.coded.EntropyCoded`). The maps come from the sensitivities ``w`` of
the weights (:mod:`rnnshrink.sensitivity`: ``rms``, ``hessian``, ``fisher``) tempered as
``w^β``, and one offset — one Lagrange multiplier for the whole model (:mod:`.allocation`) —
is bisected until the coded layers have the target size (``ratio``), or the largest size
whose output error on the held-out inputs stays within ``error``; ``offset`` reruns a chosen
allocation as it was. The codes are GPTQ's (:func:`.gptq.gptq_round`, ``H = E[x xᵀ]`` of
each matrix's inputs), except for a matrix reading one-hot inputs (diagonal ``H``: rounding).

The calibration inputs (the user's, or the probes rnnshrink makes) are split in two halves:
the first gives the sensitivities and ``H``, the second picks ``β`` (and the sensitivity,
when ``auto`` has two to choose from) by the output error it gives. Above :data:`LARGE` coded
weights ``auto`` tries one candidate (``hessian``, else ``rms``, with β = 0.5) and says so in
a note. The biases of the coded layers are folded into one float16 vector.

For a ratio, the offset is bisected on the estimated bytes of rounded, then GPTQ codes of a
seeded subsample of each big matrix's rows (:class:`.allocation.Allocation`; whole matrices up
to :data:`.allocation.SAMPLE_CODES` entries), then settled on the whole model: its GPTQ codes'
estimated bytes, then the real coded bytes, each miss corrected by the slope of the sampled
size, so a big model is GPTQ-coded whole about once or twice per candidate. Matrices are held
as stored and processed a run of rows at a time.

References
----------
rnnshrink ``methods.md`` §8; Gish & Pierce 1968, Chou, Lookabaugh & Gray 1989 (ECSQ, the
Lagrangian ``D + λR``); Han, Mao & Dally, "Deep Compression", ICLR 2016; Frantar et al.,
"GPTQ", ICLR 2023.
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..fidelity import compare, probe_inputs
from ..model import Dense
from ..model.coded import row_runs
from ..model.weights import LowRank, Sparse
from ..probes import Probes, softmax_head
from ..sensitivity import (available_kinds, fisher_problem, floored, head_log_probs, output_kl,
                           second_moments, sensitivities, temper)
from .allocation import (OFFSET_RANGE, Allocation, Matrix, bisect_offset, offset_text,
                         row_sample, step_shape)
from .base import Context, Param, Transform

BETAS = (0.5, 1.0)
# Above this many coded weights ``auto`` tries one candidate, the strongest sensitivity but
# fisher (per-sequence gradients as big as the model) with beta 0.5, the best on every model
# measured; each candidate costs a few passes of GPTQ over the whole model.
LARGE = 5_000_000
LARGE_BETA = 0.5
# GPTQ's codes carry a little more entropy than rounded ones: the offset found on rounded codes
# is refined on GPTQ codes, up to this many octaves above it.
GPTQ_BRACKET = 1.0
# Corrections of the offset from the estimated to the real coded size, aiming at this fraction
# of the budget.
SETTLE_STEPS = 12
AIM = 0.995


class EntropyCode(Transform):
    """Entropy-coded weights on one whole-model step allocation (ECSQ + rANS).

    Parameters
    ----------
    ratio : float, optional
        LSTM size ratio to reach: bytes of the coded layers before / after (within 1 %).
    error : float, optional
        Instead: the smallest model whose output relative error on the held-out calibration
        inputs is at most this.
    offset : float, optional
        Instead: the allocation's log2 step offset as a previous run chose it.
    sensitivity : {"auto", "rms", "hessian", "fisher"}
        What weighs each weight's squared error; ``auto`` tries the two strongest the model
        and inputs allow (``fisher`` needs a Dense head).
    beta : float, optional
        Temper the sensitivities as ``w^β``; by default 0.5 and 1 are tried.
    gptq : bool
        GPTQ error-compensating codes on the step maps.
    layers : str, optional
        Comma-separated LSTM layer names; all by default.
    """

    name = "ecsq"
    PARAMS = {
        "ratio": Param(float, None, 1.0, None,
                       help="LSTM size ratio to reach (before / after bytes), within 1 %"),
        "error": Param(float, None, 0.0, None,
                       help="instead of ratio: largest output relative error on held-out inputs"),
        "offset": Param(float, None, *OFFSET_RANGE,
                        help="instead of ratio: the log2 step offset a previous run printed"),
        "sensitivity": Param(str, "auto", choices=("auto", "rms", "hessian", "fisher"),
                             help="weight of each squared error: 1/row RMS^2, E[x^2] or Fisher"),
        "beta": Param(float, None, 0.0, 4.0,
                      help="temper sensitivities as w^beta (default: 0.5 or 1, the better)"),
        "gptq": Param(bool, True, help="GPTQ codes on the step maps (from the calibration inputs)"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        given = [name for name in ("ratio", "error", "offset") if self.params.get(name) is not None]
        if len(given) != 1:
            raise OptionError(f"ecsq: give exactly one of ratio=R, error=E or offset=T, got "
                              f"{', '.join(given) or 'none'}")

    def apply(self, model, context=None):
        context = context or Context()
        layers = self.selected_layers(model)
        x = context.inputs if context.inputs is not None else probe_inputs(model)[0]
        fit, held_out = (Probes(half, context.probe) for half in _halves(x))
        matrices = _codable(layers, context.seed)
        _attach_hessians(model, matrices, fit, context.seed)
        folded = _fold_biases(model, layers)
        fixed = sum(_bias_bytes(folded.layer(layer.name)) for layer in layers)
        budget = sum(layer.nbytes for layer in layers) / self.ratio if self.ratio else None
        candidates, large = self._candidates(model, fit, matrices)
        scorer = _HeldOutScore(model, held_out)
        progress = context.step("ecsq", len(candidates))
        best = None
        for number, (kind, beta) in enumerate(candidates, 1):
            tempered = temper(_sensitivities(model, kind, fit, matrices, context.seed), beta)
            shapes = [step_shape(tempered.pop(m.key)) for m in matrices]
            allocation = Allocation(matrices, shapes, fixed, self.gptq)
            offset = self._offset(model, folded, allocation, budget, held_out)
            offset, coded = self._settled(allocation, offset, budget)
            if number == len(candidates):  # GPTQ's factors are not needed any more
                for matrix in matrices:
                    matrix.release()
            candidate = _rebuild(folded, matrices, coded)
            score = scorer(candidate)
            if best is None or score[0] < best[0][0]:
                best = (score, kind, beta, offset, candidate, coded)
            del candidate, coded
            progress.update()
        progress.close()
        (_, score_text), kind, beta, offset, result, coded = best
        codes = "GPTQ" if self.gptq else "rounded"
        notes = list(model.notes) + [
            f"ecsq: sensitivity {kind}, beta {beta:g}, {offset_text(offset)}, {codes} codes, "
            f"biases folded to float16; held-out {score_text} on {held_out.description or 'probes'} "
            f"(rerun: ecsq:offset={offset:.6f},sensitivity={kind},beta={beta:g})"]
        if large:
            notes.append(f"ecsq: {sum(m.count for m in matrices):,} coded weights (over "
                         f"{LARGE:,}): one candidate, {kind} with beta {beta:g}, tried; give "
                         "sensitivity= and beta= for another")
        notes += [f"ecsq: {_key_text(m.key)}: {c.bits_per_weight:.2f} bits/weight"
                  for m, c in zip(matrices, coded)]
        return result.replace(notes=notes)

    def _candidates(self, model, probes, matrices):
        """(sensitivity, beta) pairs to try: as given, else the two strongest kinds the model
        allows (``fisher`` only for whole matrices) with beta 0.5 and 1; above :data:`LARGE`
        coded weights, the strongest but ``fisher`` with :data:`LARGE_BETA` only. Also whether
        that cut applied."""
        large = (self.sensitivity == "auto" and self.beta is None
                 and sum(m.count for m in matrices) > LARGE)
        if self.sensitivity != "auto":
            kinds = [self.sensitivity]
        elif large:
            kinds = [k for k in available_kinds(model, probes) if k != "fisher"][-1:]
        else:
            factored = any(m.key[3] is not None for m in matrices)
            kinds = [k for k in available_kinds(model, probes) if k != "fisher" or not factored][-2:]
        if "fisher" in kinds:
            problem = fisher_problem(model, probes)
            if problem is not None:
                raise OptionError(f"ecsq: {problem}")
        betas = (self.beta,) if self.beta is not None else (LARGE_BETA,) if large else BETAS
        pairs = [(kind, beta) for kind in kinds for beta in (betas if kind != "rms" else (1.0,))]
        return pairs, large

    def _settled(self, allocation, offset, budget):
        """The coded matrices at ``offset``, moved until the real coded bytes are within 1 %
        below ``budget``: (offset, coded).

        Each step computes the codes of the whole model and their estimated bytes; only an
        estimate within that band is coded for real (the estimate is within a fraction of a
        percent of the real bytes, and their ratio corrects later estimates). A size outside
        the band moves the offset by the slope of the sampled size
        (:meth:`.allocation.Allocation.correction`) toward :data:`AIM` of the budget, or, once
        offsets over and under the budget were seen (a size that jumps, e.g. with escapes),
        to the middle of the two; failing that, the finest offset seen under the budget."""
        if budget is None:
            return offset, allocation.coded(offset)
        bias, over, under, estimate = 1.0, None, None, None
        for _ in range(SETTLE_STEPS):
            codes = allocation.codes(offset)
            estimate = bias * allocation.estimated(codes)
            if _fits(estimate, budget):
                coded = allocation.coded(offset, codes)
                size = allocation.fixed + sum(c.nbytes for c in coded)
                if _fits(size, budget):
                    return offset, coded
                bias *= size / estimate
                estimate = size
            del codes
            if estimate > budget:
                over = offset
            else:
                under = offset
            if over is not None and under is not None:  # a jumpy size (escapes): bisect
                offset = 0.5 * (over + under)
            else:
                offset += allocation.correction(offset, estimate, AIM * budget)
        if under is not None:  # the finest offset seen under the budget, a little smaller
            coded = allocation.coded(under)
            if allocation.fixed + sum(c.nbytes for c in coded) <= budget:
                return under, coded
        raise OptionError(f"ecsq: the coded size did not settle within 1 % of "
                          f"ratio={self.ratio:g} ({estimate:.0f} bytes for a budget of "
                          f"{budget:.0f})")

    def _offset(self, model, folded, allocation, budget, held_out):
        """The allocation's offset: as given, for the target size (on the row subsamples), or
        for the error limit."""
        if self.offset is not None:
            return self.offset
        if budget is not None:
            offset = bisect_offset(lambda t: allocation.sampled(t, False), budget)[0]
            if self.gptq:  # GPTQ's codes: a little more entropy at the same steps
                offset = bisect_offset(lambda t: allocation.sampled(t, True), budget,
                                       offset - 0.25, offset + GPTQ_BRACKET, tolerance=0.005)[0]
            return offset

        def within(offset):
            candidate = _rebuild(folded, allocation.matrices, allocation.coded(offset))
            return compare(model, candidate, held_out.x)["output_rel_error"] <= self.error

        low, high = OFFSET_RANGE
        if not within(low):
            raise OptionError(f"ecsq: error={self.error:g} is out of reach even with the finest "
                              "steps")
        for _ in range(24):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if within(middle) else (low, middle)
        return low


def _fits(size, budget):
    """Whether ``size`` bytes are within 1 % below ``budget``."""
    return budget * 0.99 <= size <= budget


def _halves(x):
    """Calibration inputs split into fitting and held-out halves along the batch."""
    half = len(x) // 2
    return (x, x) if half == 0 else (x[:half], x[half:])


def _codable(layers, seed):
    """The matrices ecsq codes: dense ones, sparse ones (their mask kept), low-rank factors;
    each with a seeded subsample of its rows when it has over :data:`SAMPLE_CODES` entries."""
    found = []
    rng = np.random.default_rng(seed)
    for layer in layers:
        for k, direction in enumerate(layer.directions):
            for role, weight in direction.matrices.items():
                parts = ({"V": weight.V, "U": weight.U} if isinstance(weight, LowRank)
                         else {None: weight})
                for factor, part in parts.items():
                    if not isinstance(part, (Dense, Sparse)):
                        raise OptionError(
                            f"ecsq: layer {layer.name} {role}[{k}] is {part.kind}: ecsq codes "
                            "dense, pruned or low-rank weights (use it instead of quant)")
                    mask = part.mask if isinstance(part, Sparse) else None
                    values = part.materialize(part.values.dtype)  # a Dense's own array
                    found.append(Matrix((layer.name, k, role, factor), values, mask,
                                         sample=row_sample(values.shape, rng)))
    return found


def _attach_hessians(model, matrices, probes, seed):
    """``H = E[x xᵀ]`` of what each matrix reads on ``probes`` in the original model (a factor
    ``U`` of ``U V`` reads ``V x``: ``V H Vᵀ``), and its diagonal. One-hot inputs give a
    diagonal ``H``, on which GPTQ is plain rounding."""
    moments = second_moments(model, probes, seed)
    factors = {}
    for matrix in matrices:
        name, k, role, factor = matrix.key
        H = moments[(name, k, role)]
        if factor == "U":
            V = factors[(name, k, role)]
            H = V @ H @ V.T
        factors[(name, k, role)] = matrix.values
        matrix.H, matrix.h_diag = H, np.diag(H).copy()


def _sensitivities(model, kind, probes, matrices, seed):
    """``w`` of every coded matrix, keyed like ``matrices``: 1 / row RMS² of its values,
    ``diag H`` of its inputs, or the model's Fisher (whole matrices only)."""
    if kind == "fisher":
        found = sensitivities(model, kind, probes, seed)
        return {m.key: found[m.key[:3]] for m in matrices}
    weights = {}
    for m in matrices:
        if kind == "rms":
            square = np.concatenate([np.mean(np.square(m.values[part], dtype=np.float64), axis=1)
                                     for part in row_runs(*m.values.shape)])
            w = (1.0 / floored(square))[:, None]
        else:
            w = floored(m.h_diag)[None, :]
        weights[m.key] = np.broadcast_to(w, m.values.shape)
    return weights


class _HeldOutScore:
    """What candidates are ranked by on the held-out inputs: the KL of the softmax head's
    outputs where the model has one (the original's computed once), else the output relative
    error. Calling it gives (value, text)."""

    def __init__(self, original, probes):
        self.original, self.probes = original, probes
        has_head = softmax_head(original) is not None
        self.reference = head_log_probs(original, probes) if has_head else None

    def __call__(self, compressed):
        if self.reference is not None:
            kl = output_kl(self.original, compressed, self.probes, self.reference)
            return kl, f"output KL {kl:.3e} nats/step"
        error = compare(self.original, compressed, self.probes.x)["output_rel_error"]
        return error, f"output relative error {error:.3e}"


def _fold_biases(model, layers):
    """``model`` with the biases of ``layers`` stored once, as float16."""
    for layer in layers:
        directions = [dataclasses.replace(d, b=d.b.astype(np.float16).astype(np.float64),
                                          bias_terms=1, bias_dtype="float16")
                      for d in layer.directions]
        model = model.replace_layer(layer.name, dataclasses.replace(layer, directions=directions))
    return model


def _bias_bytes(layer):
    return sum(d.nbytes - sum(m.nbytes for m in d.matrices.values()) for d in layer.directions)


def _rebuild(model, matrices, coded):
    """``model`` with every coded matrix in place (factors joined back into LowRank)."""
    weights = {}
    for matrix, weight in zip(matrices, coded):
        name, k, role, factor = matrix.key
        weights.setdefault((name, k, role), {})[factor] = weight
    for (name, k, role), parts in weights.items():
        weight = parts[None] if None in parts else LowRank(parts["U"], parts["V"])
        layer = model.layer(name)
        directions = list(layer.directions)
        directions[k] = dataclasses.replace(directions[k], **{role: weight})
        model = model.replace_layer(name, dataclasses.replace(layer, directions=directions))
    return model


def _key_text(key):
    name, k, role, factor = key
    return f"layer {name} {role}[{k}]" + (f" factor {factor}" if factor else "")
