"""A whole ZForcing training step with its backward LSTM and its chain on the CUDA kernels, as
the benchmarks' "cuda" training-step rows run it (``backend="auto"``, ZF_AUTO_UNVERIFIED=1),
on the CPU: the kernels are csrc/'s source in the CPU emulation (tests/_cuda_emulation.py),
reached through ``ops``' real dispatch and autograd glue, the other ops on Triton in the
interpreter. Against the same step with ``backend="torch"`` in float64: the loss terms and the
gradient of every parameter. It fails if the step does not go through both CUDA recurrences
(forward and backward). Nothing here says anything about a GPU run."""
import functools
import sys
from pathlib import Path

import pytest
import torch

import _cuda_emulation as emu
from zf_kernels import ZForcing, ops, training_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: benchmarks/
from benchmarks import bench_train_step  # noqa: E402

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="no g++ to build the CPU emulation")



@pytest.fixture
def emulated_cuda_backend(monkeypatch):
    """``ops`` as on a GPU whose "auto" may take the CUDA recurrences: CPU tensors count as CUDA
    ones, the CUDA lstm / chain are the emulated kernels (3 hidden units and 8 threads per block,
    so the test shapes span several blocks), every other check is the real one (Triton runs in
    the interpreter). Returns the list of kernel calls the step made."""
    return emu.install_backend(monkeypatch, threads=8, tf32=0)


@pytest.fixture
def emulated_3xtf32_backend(monkeypatch):
    """The same with the kernels' 3xTF32 tensor-core tiles (one warp per block)."""
    return emu.install_backend(monkeypatch, threads=32, tf32=3)


@pytest.fixture
def emulated_bf16_backend(monkeypatch):
    """The same with the kernels' bfloat16 storage and tiles (one warp per block)."""
    return emu.install_backend(monkeypatch, threads=32, tf32=0)


def _step(model, y, eps):
    terms = model(y, eps=eps)
    loss = training_loss(terms, 0.7, 0.9, 1.1)      # every term, weights != 1
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: getattr(terms, k).detach() for k in ("nll", "kl", "aux", "bwd_nll")}, grads


@pytest.mark.parametrize("output_type,z_force,backend", [("gaussian", False, "auto"), ("bernoulli", True, "auto"),
                                                          ("gaussian", False, "cuda")])
def test_training_step_on_emulated_cuda_recurrences_matches_torch(emulated_cuda_backend, output_type, z_force,
                                                                  backend):
    """backend "auto" with ZF_AUTO_UNVERIFIED=1 (the benchmarks' rows) or the model's "cuda"
    (``--backend cuda``: the recurrences on the CUDA kernels, the other ops "auto")."""
    T, B, D = 5, 3, 4 if output_type == "gaussian" else 1
    build = functools.partial(ZForcing, D, output_type, emb_dim=6, rnn_dim=10, z_dim=5, mlp_dim=7,
                              z_force=z_force)
    torch.manual_seed(0)
    ours = build(backend=backend).double()
    ref = build(backend="torch").double()
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(1)
    y = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    if output_type == "bernoulli":
        y = (y > 0.3).double()
    eps = torch.randn(T, B, 5, generator=g, dtype=torch.float64)

    assert ops.explain("lstm", y.new_zeros(T, B, 6), ours.bwd_lstm.weight_ih_l0, ours.bwd_lstm.weight_hh_l0)[0] \
        == "cuda"
    bench_train_step.check_cuda_recurrences(ours, y)     # what the benchmark's cuda rows check first
    got_terms, got_grads = _step(ours, y, eps)
    calls = sorted(set(emulated_cuda_backend))
    assert calls == ["chain backward", "chain forward", "lstm backward", "lstm forward"], calls
    want_terms, want_grads = _step(ref, y, eps)

    for k in want_terms:
        torch.testing.assert_close(got_terms[k], want_terms[k], rtol=1e-10, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-9, atol=1e-10,
                                   msg=lambda m, n=n: f"grad {n}: {m}")


def _gaussian_models(*backends_and_dtypes):
    """Small Gaussian ZForcing models, one per (backend, dtype), all with the first one's weights
    (in its dtype), and a float64 batch y, eps."""
    T, B, D = 5, 3, 4
    build = functools.partial(ZForcing, D, "gaussian", emb_dim=6, rnn_dim=10, z_dim=5, mlp_dim=7)
    torch.manual_seed(0)
    models = [build(backend=backend).to(dtype) for backend, dtype in backends_and_dtypes]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    g = torch.Generator().manual_seed(1)
    y = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    eps = torch.randn(T, B, 5, generator=g, dtype=torch.float64)
    return models, y, eps


def test_float32_training_step_on_emulated_3xtf32_recurrences_matches_float64(emulated_3xtf32_backend):
    """The model's float32 step with both recurrences on the 3xTF32 tiles (``--backend cuda
    --fp32-dot tf32x3``) against the float64 torch step: float32 accuracy (one TF32 pass would be
    ~1e-3 off)."""
    (ours, ref), y, eps = _gaussian_models(("cuda", torch.float32), ("torch", torch.float64))
    got_terms, got_grads = _step(ours, y.float(), eps.float())
    assert sorted(set(emulated_3xtf32_backend)) == ["chain backward", "chain forward", "lstm backward",
                                                     "lstm forward"]
    want_terms, want_grads = _step(ref, y, eps)
    for k in want_terms:
        torch.testing.assert_close(got_terms[k].double(), want_terms[k], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{k}: {m}")
    for n in want_grads:
        torch.testing.assert_close(got_grads[n].double(), want_grads[n], rtol=1e-3, atol=1e-5,
                                   msg=lambda m, n=n: f"grad {n}: {m}")


def test_bfloat16_training_step_on_emulated_recurrences_no_worse_than_eager_bfloat16(emulated_bf16_backend):
    """The model cast to bfloat16 with both recurrences on the bf16 kernels (``--backend cuda
    --dtype bfloat16-pure``; the other ops on Triton in the interpreter) against the float64
    torch step: each loss term and parameter gradient at most 2x as far as the same bf16 model
    on ``backend="torch"`` (+ 1e-3). Measured: 0.5-1.4x (the chain's cell state stays float32;
    the other ops' rounding differs)."""
    (ours, eager, ref), y, eps = _gaussian_models(("cuda", torch.bfloat16), ("torch", torch.bfloat16),
                                                  ("torch", torch.float64))
    got_terms, got_grads = _step(ours, y.bfloat16(), eps.bfloat16())
    assert sorted(set(emulated_bf16_backend)) == ["chain backward", "chain forward", "lstm backward",
                                                   "lstm forward"]
    eager_terms, eager_grads = _step(eager, y.bfloat16(), eps.bfloat16())
    want_terms, want_grads = _step(ref, y, eps)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    for name, got, base, want in [*((k, got_terms[k], eager_terms[k], want_terms[k]) for k in want_terms),
                                  *((n, got_grads[n], eager_grads[n], want_grads[n]) for n in want_grads)]:
        assert got.dtype == torch.bfloat16
        assert rel(got, want) <= 2 * rel(base, want) + 1e-3, f"{name}: {rel(got, want):.2e} vs eager {rel(base, want):.2e}"
