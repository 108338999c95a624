"""Small helpers shared by several test modules: the trainer's, the kernels' error measures, the
CUDA kernels' NaN-filled buffers (imported as a plain module: pytest puts this folder on sys.path)."""
import json
from pathlib import Path


def quiet(*_):
    """A ``log`` callback that prints nothing."""


def cli_flags(settings: dict) -> list:
    """``TrainConfig`` field values as command-line flags of ``python -m zf_kernels.train``."""
    args = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v is not None:
            args += [flag, str(v)]
    return args


def read_metrics(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


def without_timing(records):
    """Metrics records without their wall-clock fields, for exact comparisons."""
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def flat_tensors(out):
    """The op's output tensors, flattened: ``(out, (h, c))`` / ``(h, c)`` / ``ChainOutput``."""
    import torch
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat_tensors(o)]


def rel_err(a, b):
    """max |a - b| / max |b| in float64."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def skip_if_schedule_forced(*env_names):
    """Skip a test of what ``schedule="auto"`` picks while the environment forces a schedule
    (``ZF_LSTM_SCHEDULE`` / ``ZF_CHAIN_SCHEDULE``: benchmarks/device_check.sh sets them to
    "stepwise" for a whole GPU run after a failed persistent smoke test): the choice is then the
    environment's, and that failure is already reported once."""
    import os

    import pytest
    forced = [f"{n}={os.environ[n]}" for n in env_names if os.environ.get(n)]
    if forced:
        pytest.skip(f"the environment forces the schedule ({', '.join(forced)}): not auto's choice")


def norm_rel_err(a, b):
    """||a - b|| / ||b|| in float64: for 16-bit gradients through the model's kinks (LeakyReLU at
    0, the clamps), where one element that rounding moves across a kink dominates rel_err."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def assert_no_worse_than_eager(names, ours, eager, exact, slack=1e-3, label=""):
    """Each of ``ours`` (a 16-bit run's outputs and gradients) off ``exact`` (float64) by norm
    (norm_rel_err) at most as far as ``eager`` (torch's own run in the same dtype) + ``slack``."""
    for name, a, e, ref in zip(names, ours, eager, exact, strict=True):
        assert a.isfinite().all(), f"{label}{name}: not finite"
        mine, theirs = norm_rel_err(a, ref), norm_rel_err(e, ref)
        assert mine <= theirs + slack, f"{label}{name}: ours {mine:.2e}, eager {e.dtype} {theirs:.2e}"


def errors_vs_float64(fn, ref, args64, out_names, in_names, dtype, seed, metric=None):
    """{tensor name: ``metric`` (default rel_err) of fn in ``dtype`` against ``ref`` in float64}:
    every output, and every input's gradient from one backward call with random output
    gradients scaled 1, 2, 3, ... (non-uniform, so a swapped output shows); no output or
    gradient may be non-finite."""
    metric = metric or rel_err
    import torch
    out64 = ref(*args64)
    g = torch.Generator().manual_seed(seed + 1)
    grads_out = [(torch.randn(o.shape, generator=g, dtype=torch.float64) * (1 + i)).to(o.device)
                 for i, o in enumerate(out64)]
    ref_grads = torch.autograd.grad(out64, args64, grads_out)
    args = [a.detach().to(dtype).requires_grad_() for a in args64]
    out = fn(*args)
    grads = torch.autograd.grad(tuple(out), args, [go.to(dtype) for go in grads_out])
    errs = {}
    for name, o, r in zip(out_names, out, out64):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"output {name} has non-finite entries"
        errs[name] = metric(o, r)
    for name, gr, r in zip(in_names, grads, ref_grads):
        assert gr is not None and gr.shape == r.shape, name
        assert torch.isfinite(gr).all(), f"grad of {name} has non-finite entries"
        errs["grad " + name] = metric(gr, r)
    return errs


def cuda_graph_replays_match_eager(step, leaves, rtol=1e-5, atol=1e-6):
    """``step()`` (a forward + backward on CUDA returning tensors) captured in a CUDA graph after
    an eager warm-up on a side stream, replayed, then replayed again after every leaf's values
    change in place: each replay's tensors must equal a fresh eager ``step()`` on the same values
    (a replay that recomputed nothing matches only the first). GPU only."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):   # kernels loaded, shared-memory attributes set, before the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    g = torch.Generator(device="cuda").manual_seed(7)
    for trial in range(2):
        if trial:
            with torch.no_grad():
                for a in leaves:
                    a.mul_(0.9).add_(0.1 * torch.randn(a.shape, generator=g, device=a.device, dtype=a.dtype))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for i, (c, e) in enumerate(zip(captured, eager)):
            torch.testing.assert_close(c, e, rtol=rtol, atol=atol, msg=lambda m: f"replay {trial}, tensor {i}: {m}")


def smooth_chain_inputs(T, B, H, M, Z, G, seed=0, device="cpu", ln=False):
    """float64 leaves (on `device`) of ops.zforcing_chain (ln: zforcing_chain_ln) and random
    output gradients (scaled 1, 2, ... per output), away from the chain's kinks: the posterior's
    pre-activation s = h W_qh^T + post_x within 1.5 +- ~0.15 (LeakyReLU's kink at 0 and its clamp
    at 3 ten standard deviations away), its parameters within ~+-0.8 of the clamp at 8; for ln the
    gain/bias MLP's pre-activation likewise at 1.5 +- ~0.15 and its outputs within ~+-0.6 of the
    clamp at 3. A 16-bit comparison of two implementations on such inputs compares their
    rounding. Near a kink a value rounding moves across it changes that element's gradient by a
    third of its size or more, in either implementation by chance, and that decides the
    comparison instead (emulated csrc/ chain at T3 B32 M20: 2.1x and 3.1x eager bf16's error on 2
    of 8 seeds; the Triton chain in the interpreter at T5 B40 H80: over the 16-bit bound on 1 to
    4 of 40 seeds). The kinks themselves: the per-stage checks and the float32 / float64 tests on
    clamp-heavy inputs."""
    import torch
    g = torch.Generator().manual_seed(seed)

    def r(*shape, sc=1.0, mean=0.0):
        t = mean + torch.randn(*shape, generator=g, dtype=torch.float64) * sc
        return t.to(device).requires_grad_()

    args = [r(T, B, 4 * H), r(T, B, M, sc=0.1, mean=1.5), r(T, B, Z), r(B, H, sc=0.5), r(B, H),
            r(M, H, sc=0.1 * H ** -0.5), r(2 * Z, M, sc=0.5 * M ** -0.5), r(2 * Z, sc=0.3)]
    if ln:   # g1 = act(z W_g1^T + b_g1), [gain | bias] = clamp(g1 W_g2^T + b_g2, -3, 3)
        args += [r(G, Z, sc=0.05 * Z ** -0.5), r(G, sc=0.1, mean=1.5), r(8 * H, G, sc=0.3 * G ** -0.5),
                 r(8 * H, sc=0.3)]
    else:
        args += [r(G, Z, sc=Z ** -0.5), r(G, sc=0.3), r(4 * H, G, sc=G ** -0.5)]
    args.append(r(4 * H, H, sc=H ** -0.5))
    grads = [(torch.randn(T, B, n, generator=g, dtype=torch.float64) * (1 + i)).to(device)
             for i, n in enumerate((H, H, Z, Z, Z))]
    return args, grads


def put_on_clamp_ends(args, ln=False):
    """Chain inputs (ops.zforcing_chain's or zforcing_chain_ln's argument order, float leaves)
    changed in place so that elements sit exactly on the ends of both clamps' closed intervals,
    where zf_kernels' clamps pass the gradient (``ops.activations.naive.clamp_ref``; torch.clamp
    did up to torch 2.13) (a kernel testing ``>`` for ``>=`` differs only there,
    which random inputs never hit): h0 = 0, so step 0's posterior pre-activation is post_x[0]
    exactly, with one column at -9 and one at 3 (LeakyReLU(1/3) clamped to [-3, 3] at -3 and 3);
    four rows of weight_q2 zeroed, so that mu and logvar entries are their biases, set to -8 and
    8 at every step. ``ln`` (zforcing_chain_ln's 13 arguments): likewise the gen MLP's hidden
    pre-activation (two rows of weight_g1 zeroed, their biases -9 and 3) and its clamp to [-3, 3]
    (a gain row and a bias row of weight_g2 zeroed, their biases -3 and 3). Needs M, Z, G >= 2."""
    import torch
    from zf_kernels.ops.recurrence.naive import ACT_CLAMP, COND_CLAMP, LEAKY_SLOPE, PARAM_CLAMP
    post_x, h0, w_q2, b_q2 = args[1], args[3], args[6], args[7]
    M, Z = post_x.shape[-1], w_q2.shape[0] // 2
    assert M >= 2 and Z >= 2, (M, Z)
    act_ends = (-ACT_CLAMP / LEAKY_SLOPE, ACT_CLAMP)

    def rows_at(weight, bias, rows_and_ends):   # those outputs are their biases, exactly
        for row, end in rows_and_ends:
            weight[row].zero_()
            bias[row] = end

    with torch.no_grad():
        h0.zero_()
        post_x[0, :, 0], post_x[0, :, 1] = act_ends
        rows_at(w_q2, b_q2, ((0, -PARAM_CLAMP), (1, PARAM_CLAMP), (Z, PARAM_CLAMP), (Z + 1, -PARAM_CLAMP)))
        if ln:
            w_g1, b_g1, w_g2, b_g2 = args[8:12]
            four_h = w_g2.shape[0] // 2      # rows [0, 4H): gain, [4H, 8H): bias
            assert w_g1.shape[0] >= 2, w_g1.shape
            rows_at(w_g1, b_g1, zip((0, 1), act_ends))
            rows_at(w_g2, b_g2, ((0, -COND_CLAMP), (four_h + 1, COND_CLAMP)))
    return args



def put_on_leaky_kink(args):
    """put_on_clamp_ends (so h0 = 0), and post_x[0, :, 2] = 0: that column of step 0's posterior
    pre-activation is exactly LeakyReLU's kink, where torch's gradient is the slope (``x > 0``
    passes g, ``x <= 0`` g * slope; a kernel testing ``x >= 0`` differs only there). Needs M >= 3."""
    import torch
    put_on_clamp_ends(args)
    with torch.no_grad():
        args[1][0, :, 2] = 0.0
    return args

def model_loss_and_grads(model, y, eps, weights=(0.3, 0.5, 1.0)):
    """``(step, loss_and_grads)`` for comparing a compiled training step with the eager one:
    ``step(y, eps)`` is the model's training loss; ``loss_and_grads(fn)`` runs ``fn`` (``step`` or
    a compiled ``step``) on ``y, eps`` with the value checks off and returns ``[loss, *grads]``."""
    from zf_kernels import ops, training_loss

    def step(y, eps):
        return training_loss(model(y, eps=eps), *weights)

    def loss_and_grads(fn):
        model.zero_grad()
        with ops.assume_valid_inputs():
            loss = fn(y, eps)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]
    return step, loss_and_grads


def check_sampling_with_prefix(model, steps=6, batch=3, K=3):
    """``model.sample(..., prefix=...)``: fed its own first K samples it repeats its own run (the
    same draws, the same inputs); fed another prefix, its first K samples are that prefix, its
    first step's output (which reads only the start frame) is unchanged and the step after the
    prefix is not (it reads the prefix)."""
    import torch

    def run(seed, prefix=None):
        return model.sample(steps, batch, generator=torch.Generator().manual_seed(seed), prefix=prefix)

    own, own_means = run(3)
    again, again_means = run(3, prefix=own[:K])
    assert torch.equal(again, own) and torch.equal(again_means, own_means)
    other = run(5)[0][:K]
    assert not torch.equal(other, own[:K])
    got, means = run(3, prefix=other)
    assert got.shape == own.shape and torch.equal(got[:K], other)
    assert torch.equal(means[0], own_means[0])
    assert not torch.allclose(means[K], own_means[K])
    # the whole sequence given: nothing left to sample
    full, _ = run(7, prefix=own)
    assert torch.equal(full, own)


class NaNFilledLSTMKernels:
    """CUDA LSTM kernels (the extension's or their CPU emulation's, ``forward`` / ``backward``)
    with every buffer the forward writes (out, c_1..c_T) pre-filled with NaN, so an element a
    block failed to write, or read before another block wrote it, shows. ``backward_kernels``:
    another set for the backward (default: the same)."""

    def __init__(self, kernels, backward_kernels=None):
        self.k, self.kb = kernels, backward_kernels or kernels

    def forward(self, gates, h0, w_hh, out, c_all, reverse):
        out.fill_(float("nan"))
        c_all[1:].fill_(float("nan"))
        self.k.forward(gates, h0, w_hh, out, c_all, reverse)

    def backward(self, *args):
        self.kb.backward(*args)


class NaNFilledChainKernels:
    """The same for the CUDA chain's kernels: the forward's outputs (arguments 10-15) NaN, its
    uint8 clamp mask (16) 77, the backward's outputs (16-19) NaN."""

    def __init__(self, kernels):
        self.k = kernels

    def forward(self, *a):
        for t in a[10:16]:
            t.fill_(float("nan"))
        a[16].fill_(77)
        self.k.forward(*a)

    def backward(self, *a):
        for t in a[16:20]:
            t.fill_(float("nan"))
        self.k.backward(*a)
