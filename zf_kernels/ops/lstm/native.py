"""The "torch" backend of ``ops.lstm``: torch's own LSTM op where it computes what the reference
computes, else the reference.

``lstm_ref`` (naive.py) is the reference: a Python loop that launches each op of a step once
per time step, and whose backward replays them one by one. ``torch._VF.lstm``, the op behind
``nn.LSTM``, runs the same recurrence in C++ (on the CPU: oneDNN's RNN in float32 where torch
has it, ATen's loop otherwise, e.g. float64): the same numbers up to rounding, without the
interpreter's cost per step (measured once, 2026-11-28, on a 2-core CPU at T=32, B=32, H=64,
forward + backward: 1.6 ms against 5.6 ms; not a benchmark of record).

Taken where it is known to agree with ``lstm_ref`` (``tests/test_lstm_native.py``): eagerly (while
dynamo traces, ``lstm_ref``, whose ops inductor fuses; dynamo does not trace torch's RNN ops),
outside functorch transforms and forward-mode AD (torch's LSTM op has no vmap batching rule, and
oneDNN's no forward derivative), on the CPU, in float32 and float64, for T, B >= 1. On CUDA the
op is cuDNN's LSTM, faster than our Triton LSTM on 2026-11-27's H200 at TF32 (benchmarks/NOTES.md);
it is taken there only once a GPU run has passed the same tests (``CUDNN_VERIFIED``), and in
float32 only where cuDNN's TF32 switch equals the one of the reference's matmuls (cuDNN reads
its switch again in the backward pass: flipping it around the forward call would not do).
"""
from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as forward_ad

from .naive import lstm_ref

# cuDNN's LSTM has not run these tests on a GPU yet: until then CUDA tensors take lstm_ref
# (tests/test_lstm_native.py's GPU cases set this to check it; a passing GPU run flips it)
CUDNN_VERIFIED = False
_NATIVE_DTYPES = (torch.float32, torch.float64)
# cuDNN copies weights that are not one flat buffer (ours never are: they are separate
# parameters, or the embedding-folded input weight computed each step) and warns about it (the
# CPU op does not)
_FLAT_WEIGHTS_WARNING = "RNN module weights are not part of single contiguous chunk of memory"


def _transformed(tensors) -> bool:
    """Whether a functorch transform (vmap, grad, jvp) wraps an input, or one carries a
    forward-mode tangent."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and (torch._C._functorch.is_functorch_wrapped_tensor(t)
                                            or forward_ad.unpack_dual(t).tangent is not None):
            return True
    return False


def _cudnn_tf32_mismatch() -> str | None:
    """Why cuDNN would round float32 unlike the reference's matmuls, or None."""
    try:
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    except RuntimeError as exc:   # torch >= 2.9 refuses the old switches once the new API was used
        return f"cannot read torch's TF32 switches ({exc})"
    if cudnn != matmul:
        return (f"cuDNN would round float32 {'to TF32' if cudnn else 'in IEEE'} where the reference's matmuls "
                f"{'may use TF32' if matmul else 'do not'} (torch.backends.cudnn.allow_tf32={cudnn}, "
                f"torch.backends.cuda.matmul.allow_tf32={matmul})")
    return None


def why_reference(x, *tensors) -> str | None:
    """None where ``lstm`` runs torch's LSTM op on ``x`` (and the op's other tensors), else why it
    runs ``lstm_ref``."""
    if torch.compiler.is_compiling():
        return "under torch.compile the reference loop is traced"
    if _transformed((x, *tensors)):
        return "a functorch transform or forward-mode AD (torch's LSTM op supports neither fully)"
    if x.dtype not in _NATIVE_DTYPES:
        return f"torch's LSTM op is checked against the reference in float32 and float64 only, not {x.dtype}"
    if x.shape[0] == 0 or x.shape[1] == 0:
        return "an empty sequence or batch"
    if tensors and tensors[0] is not None and tensors[0].shape[0] == 0:   # weight_ih (4H, I)
        return "hidden size 0 (oneDNN's LSTM refuses it)"
    if x.device.type == "cuda":
        if not CUDNN_VERIFIED:
            return "cuDNN's LSTM has not passed the GPU tests yet (zf_kernels.ops.lstm.native.CUDNN_VERIFIED)"
        if x.dtype == torch.float32:
            return _cudnn_tf32_mismatch()
        return None
    if x.device.type != "cpu":
        return f"torch's LSTM op is checked on the CPU and CUDA only, not {x.device.type}"
    return None


def lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """``lstm_ref``'s signature and numbers (up to rounding), by torch's LSTM op where
    ``why_reference`` allows it."""
    if why_reference(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0) is not None:
        return lstm_ref(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)
    return torch_lstm(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, reverse)


def torch_lstm(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, reverse=False):
    """torch's LSTM op (what ``nn.LSTM`` runs) with ``lstm_ref``'s signature, wherever it runs:
    ``lstm`` calls it where it is known to agree; the benchmarks' cudnn providers always."""
    B, H = x.shape[1], weight_hh.shape[1]
    h = x.new_zeros(B, H) if h0 is None else h0
    c = x.new_zeros(B, H) if c0 is None else c0
    weights = [weight_ih, weight_hh]
    has_biases = bias_ih is not None or bias_hh is not None
    if has_biases:   # the op takes both or neither: a missing one adds nothing
        weights += [bias_ih if bias_ih is not None else torch.zeros_like(bias_hh),
                    bias_hh if bias_hh is not None else torch.zeros_like(bias_ih)]
    xs = x.flip(0) if reverse else x
    # train=True where a backward may follow: cuDNN keeps its reserve for it only then
    args = (xs, (h.unsqueeze(0), c.unsqueeze(0)), weights, has_biases, 1, 0.0, torch.is_grad_enabled(),
            False, False)
    if x.device.type == "cuda":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FLAT_WEIGHTS_WARNING)
            out, h_n, c_n = torch._VF.lstm(*args)
    else:
        out, h_n, c_n = torch._VF.lstm(*args)
    return (out.flip(0) if reverse else out), (h_n[0], c_n[0])


def explain(x, *tensors) -> str:
    """What ``lstm`` runs for ``x`` (``ops.explain``'s detail for backend "torch")."""
    why = why_reference(x, *tensors)
    if why is None:
        return "torch's own LSTM op (" + ("cuDNN" if x.device.type == "cuda" else "C++, on the CPU") + ")"
    return f"the reference loop (lstm_ref): {why}"


lstm.explain = explain
