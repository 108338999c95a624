"""The whole model on the Triton backend (interpreter on the CPU) against the torch backend:
every op the model calls (lstm, zforcing_chain, the likelihoods and KL) swapped at once."""
import pytest
import torch

pytest.importorskip("triton")
from zf_kernels import ZForcing, training_loss  # noqa: E402


@pytest.mark.parametrize("output_type,mask,cond_ln", [("gaussian", False, False), ("bernoulli", True, False),
                                                      ("gaussian", True, True)])
def test_triton_backend_matches_torch_backend(output_type, mask, cond_ln):
    """cond_ln: the chain is ops.zforcing_chain_ln (triton_ln.py) instead of ops.zforcing_chain."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = ZForcing(3, output_type, emb_dim=5, rnn_dim=19, z_dim=3, mlp_dim=7, z_force=True,
                   cond_ln=cond_ln, backend="torch").double().to(device)
    fused = ZForcing(3, output_type, emb_dim=5, rnn_dim=19, z_dim=3, mlp_dim=7, z_force=True,
                     cond_ln=cond_ln, backend="triton").double().to(device)
    fused.load_state_dict(ref.state_dict())
    T, B = 5, 3
    y = torch.randn(T, B, 3, dtype=torch.float64, device=device)
    if output_type == "bernoulli":
        y = (y > 0).double()
    m = None
    if mask:
        m = torch.ones(T, B, dtype=torch.float64, device=device)
        m[3:, 1] = 0
    eps = torch.randn(T, B, 3, dtype=torch.float64, device=device)
    losses = []
    for model in (ref, fused):
        terms = model(y, mask=m, eps=eps)
        loss = training_loss(terms, 0.3, 0.5, 1.0)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        losses.append((terms, grads))
    (t_ref, g_ref), (t_fused, g_fused) = losses
    for k in ("nll", "kl", "aux", "bwd_nll"):
        torch.testing.assert_close(getattr(t_fused, k), getattr(t_ref, k), rtol=1e-9, atol=1e-9)
    for (name, _), a, b in zip(ref.named_parameters(), g_fused, g_ref):
        if b is None:
            assert a is None or torch.all(a == 0), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("output_type,cond_ln,backend", [("gaussian", False, "auto"), ("categorical", True, "auto"),
                                                         ("bernoulli", False, "torch")])
def test_explain_backends_names_what_a_step_runs(output_type, cond_ln, backend, monkeypatch):
    """ZForcing.explain_backends (printed by the trainer at the start of a run) against the
    backends a training step really resolves for its two recurrences, with "auto" deciding as
    on a GPU (on the CPU, where the interpreter's Triton kernels count as usable, its tensors
    pass for CUDA ones; on a GPU machine, where Triton refuses CPU tensors, they are CUDA ones)."""
    from zf_kernels.ops import _dispatch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    resolved = {}
    real_callable = _dispatch._callable

    def recording(op, chosen):
        resolved.setdefault(op, chosen)
        return real_callable(op, chosen)
    monkeypatch.setattr(_dispatch, "_callable", recording)
    T, B, D = 4, 3, (7 if output_type == "categorical" else 2)
    model = ZForcing(D, output_type, emb_dim=9, rnn_dim=6, z_dim=3, mlp_dim=5, cond_ln=cond_ln,
                     backend=backend).to(device)
    y = torch.randint(0, D, (T, B)) if output_type == "categorical" else (torch.rand(T, B, D) > 0.5).float()
    explained = model.explain_backends(T, B)
    chain = "zforcing_chain_ln" if cond_ln else "zforcing_chain"
    assert set(explained) == {"lstm", chain}
    training_loss(model(y.to(device), eps=torch.randn(T, B, 3, device=device)), 1.0, 1.0, 1.0).backward()
    for op, (chosen, why) in explained.items():
        assert resolved[op] == chosen, (op, chosen, why)
        assert chosen == ("torch" if backend == "torch" else "triton") and why
