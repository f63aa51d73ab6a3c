"""What a user would pick instead of rnnshrink: PyTorch and onnxruntime dynamic quantization.

Bench-only (needs torch and onnxruntime, the ``bench`` extra).

* :func:`torch_variants` — the float32 module and ``torch.ao.quantization.quantize_dynamic``
  of its ``nn.LSTM`` and ``nn.Linear`` modules to int8 (``qint8`` weights, activations
  quantized on the fly) and to float16. Stored size: the bytes of ``torch.save(state_dict)``
  (the quantized state dicts hold the packed weights and reload into a quantized module).
* :func:`export_onnx` — ``torch.onnx.export`` of the float module (TorchScript exporter, opset
  17, dynamic batch and time): the float ONNX model every onnxruntime figure is relative to.
* :func:`ort_quantize` — ``onnxruntime.quantization.quantize_dynamic`` of that file with its
  defaults (int8 weights), and what it did to the graph: the ``LSTM`` nodes it turned into
  ``com.microsoft`` ``DynamicQuantizeLSTM`` (int8 W and R), the ``MatMul`` of a head into
  ``MatMulInteger``, and so on.
"""

import collections
import io
import warnings

import torch


def torch_variants(module):
    """``{label: module}`` for float32 and dynamic int8 / float16 quantization of ``module``."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # the eager-mode API's deprecation notice, on every call
        warnings.simplefilter("ignore")
        return {"torch float32": module,
                "torch dynamic int8": quantize_dynamic(module, {torch.nn.LSTM, torch.nn.Linear},
                                                       dtype=torch.qint8),
                "torch dynamic float16": quantize_dynamic(
                    module, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.float16)}


def state_dict_bytes(module):
    """Bytes of ``torch.save(module.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


def export_onnx(module, example, path, input_name):
    """``torch.onnx.export`` of ``module`` on ``example`` (batch-first) with dynamic batch and time."""
    axes = {input_name: {0: "batch", 1: "time"}, "output": {0: "batch", 1: "time"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(example),), str(path), dynamo=False,
                          opset_version=17, input_names=[input_name], output_names=["output"],
                          dynamic_axes=axes)


def ort_quantize(float_path, output_path):
    """``quantize_dynamic(float_path, output_path)`` and a description of what it changed.

    Returns
    -------
    str
        The operator counts that differ between the two graphs, e.g.
        ``"LSTM 2 -> 0, com.microsoft.DynamicQuantizeLSTM 0 -> 2, ..."``.

    Raises
    ------
    RuntimeError
        The quantized graph still has an ``LSTM`` node or has no ``DynamicQuantizeLSTM``: the
        LSTM weights were not quantized, so the figures would not be of the peer asked for.
    """
    import logging

    import onnx
    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
    quantize_dynamic(str(float_path), str(output_path))
    before, after = (_op_counts(onnx.load(str(path))) for path in (float_path, output_path))
    if after["LSTM"] or not after["com.microsoft.DynamicQuantizeLSTM"]:
        raise RuntimeError(f"onnxruntime did not quantize the LSTM nodes of {float_path}")
    changed = sorted(op for op in set(before) | set(after) if before[op] != after[op])
    return ", ".join(f"{op} {before[op]} -> {after[op]}" for op in changed)


def _op_counts(proto):
    return collections.Counter(
        f"{node.domain}.{node.op_type}" if node.domain else node.op_type for node in proto.graph.node)
