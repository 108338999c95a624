"""The fused Z-forcing recurrence: the only part of the model that must run step by step."""
from __future__ import annotations

from .. import _autocast, _dispatch
from .._checks import check_same, check_shape, check_tensor
from .naive import ChainOutput, zforcing_chain_ln_ref, zforcing_chain_ref

__all__ = ["zforcing_chain", "zforcing_chain_ln", "ChainOutput"]

_dispatch.register("zforcing_chain", "torch", f"{__name__}.naive:zforcing_chain_ref")
_dispatch.register("zforcing_chain", "triton", f"{__name__}.triton:zforcing_chain",
                   traced_form=f"{__name__}.triton_op:zforcing_chain")
# The CUDA kernels have only run in their CPU emulation: "auto" takes them once a GPU run has
# verified them (then drop not_auto).
_dispatch.register("zforcing_chain", "cuda", f"{__name__}.cuda:zforcing_chain",
                   traced_form=f"{__name__}.cuda_op:zforcing_chain",
                   not_auto="the CUDA zforcing_chain has not been verified on a GPU yet; pass backend='cuda' to use it")
_dispatch.register("zforcing_chain_ln", "torch", f"{__name__}.naive:zforcing_chain_ln_ref")
_dispatch.register("zforcing_chain_ln", "triton", f"{__name__}.triton_ln:zforcing_chain_ln",
                   traced_form=f"{__name__}.triton_op:zforcing_chain_ln")


def _check_posterior_args(gates_x, post_x, eps, weight_qh, weight_q2, bias_q2, weight_hh):
    """The arguments both chains share (all but g(z)'s weights and the states), checked;
    returns ``(T, B, H, M, Z)``."""
    check_tensor("gates_x", gates_x, ndim=3)
    T, B, four_h = gates_x.shape
    check_tensor("weight_hh", weight_hh, ndim=2)
    H = weight_hh.shape[1]
    check_shape("weight_hh", weight_hh, (4 * H, H))
    if four_h != 4 * H:
        raise ValueError(f"gates_x must have last dim 4H = {4 * H} (from weight_hh), got {four_h}")
    check_tensor("weight_qh", weight_qh, ndim=2)
    M = weight_qh.shape[0]
    check_shape("weight_qh", weight_qh, (M, H))
    check_tensor("post_x", post_x, ndim=3)
    check_shape("post_x", post_x, (T, B, M))
    check_tensor("eps", eps, ndim=3)
    Z = eps.shape[-1]
    check_shape("eps", eps, (T, B, Z))
    where = f" (Z = {Z}: eps's last dim; M = {M}: weight_qh's rows)"
    check_tensor("weight_q2", weight_q2, ndim=2)
    check_shape("weight_q2", weight_q2, (2 * Z, M), where)
    check_tensor("bias_q2", bias_q2, ndim=1)
    check_shape("bias_q2", bias_q2, (2 * Z,), where)
    return T, B, H, M, Z


def _check_states(h0, c0, B, H):
    for name, s in (("h0", h0), ("c0", c0)):
        check_tensor(name, s, ndim=2)
        check_shape(name, s, (B, H))


@_autocast.lower_precision
def zforcing_chain(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                   weight_gz, bias_gz, weight_iz, weight_hh, backend: str = "auto") -> ChainOutput:
    """The posterior -> sample -> g(z) -> LSTM chain of Z-forcing over T steps.

    Shapes (T steps, batch B, hidden H, posterior hidden M, latent Z, g(z) width G):
        gates_x  (T, B, 4H)  ``W_ie e_t + bias_ih + bias_hh``: the LSTM input projection of
                             everything but g(z), batched over time
        post_x   (T, B, M)   ``W_qb b_t + b_q1``: the posterior's first layer on b_t, plus its bias
        eps      (T, B, Z)   standard normal noise, drawn by the caller
        h0, c0   (B, H)
        weight_qh (M, H)     posterior first layer, h half
        weight_q2 (2Z, M), bias_q2 (2Z,)   posterior output layer -> [mu_q, logvar_q]
        weight_gz (G, Z), bias_gz (G,)     g(z) = Linear(Z, G)
        weight_iz (4H, G)    LSTM input weights for the g(z) part
        weight_hh (4H, H)
    Returns ``ChainOutput(h, c, z, mu_q, logvar_q)``, each time-major ``(T, B, .)``.
    See ``naive.zforcing_chain_ref`` for the equations.
    """
    T, B, H, M, Z = _check_posterior_args(gates_x, post_x, eps, weight_qh, weight_q2, bias_q2, weight_hh)
    check_tensor("weight_gz", weight_gz, ndim=2)
    G = weight_gz.shape[0]
    check_shape("weight_gz", weight_gz, (G, Z))
    check_tensor("bias_gz", bias_gz, ndim=1)
    check_shape("bias_gz", bias_gz, (G,))
    check_tensor("weight_iz", weight_iz, ndim=2)
    check_shape("weight_iz", weight_iz, (4 * H, G))
    _check_states(h0, c0, B, H)
    args = (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_gz, bias_gz,
            weight_iz, weight_hh)
    names = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
             "weight_gz", "bias_gz", "weight_iz", "weight_hh")
    check_same(list(zip(names, args)))
    return _dispatch.resolve("zforcing_chain", backend, *args)(*args)


@_autocast.lower_precision
def zforcing_chain_ln(gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2,
                      weight_g1, bias_g1, weight_g2, bias_g2, weight_hh,
                      backend: str = "auto") -> ChainOutput:
    """The ``cond_ln`` chain of Z-forcing over T steps: posterior -> sample -> g(z) = gain and
    bias of the layer-normalised recurrent projection -> LSTM cell.

    Shapes (T steps, batch B, hidden H, posterior hidden M, latent Z, g(z) hidden G):
        gates_x  (T, B, 4H)  ``LN(W_ie e_t)``: the layer-normalised input projection, batched
                             over time (no bias: the gates' bias comes from g(z))
        post_x   (T, B, M)   ``W_qb b_t + b_q1``: the posterior's first layer on b_t, plus its bias
        eps      (T, B, Z)   standard normal noise, drawn by the caller
        h0, c0   (B, H)
        weight_qh (M, H)     posterior first layer, h half
        weight_q2 (2Z, M), bias_q2 (2Z,)   posterior output layer -> [mu_q, logvar_q]
        weight_g1 (G, Z), bias_g1 (G,)     g(z) first layer (the model's ``gen.fc1``)
        weight_g2 (8H, G), bias_g2 (8H,)   g(z) output layer -> [gain (4H), bias (4H)]
        weight_hh (4H, H)
    Returns ``ChainOutput(h, c, z, mu_q, logvar_q)``, each time-major ``(T, B, .)``.
    See ``naive.zforcing_chain_ln_ref`` for the equations, ``triton_ln`` for the fused kernels.
    """
    T, B, H, M, Z = _check_posterior_args(gates_x, post_x, eps, weight_qh, weight_q2, bias_q2, weight_hh)
    check_tensor("weight_g1", weight_g1, ndim=2)
    G = weight_g1.shape[0]
    check_shape("weight_g1", weight_g1, (G, Z))
    check_tensor("bias_g1", bias_g1, ndim=1)
    check_shape("bias_g1", bias_g1, (G,))
    check_tensor("weight_g2", weight_g2, ndim=2)
    check_shape("weight_g2", weight_g2, (8 * H, G))
    check_tensor("bias_g2", bias_g2, ndim=1)
    check_shape("bias_g2", bias_g2, (8 * H,))
    _check_states(h0, c0, B, H)
    args = (gates_x, post_x, eps, h0, c0, weight_qh, weight_q2, bias_q2, weight_g1, bias_g1,
            weight_g2, bias_g2, weight_hh)
    names = ("gates_x", "post_x", "eps", "h0", "c0", "weight_qh", "weight_q2", "bias_q2",
             "weight_g1", "bias_g1", "weight_g2", "bias_g2", "weight_hh")
    check_same(list(zip(names, args)))
    return _dispatch.resolve("zforcing_chain_ln", backend, *args)(*args)
