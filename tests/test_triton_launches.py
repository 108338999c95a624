"""How many kernels a training step of the model launches on the Triton backend (issue 3: "a
training step launches a handful of kernels per time step at most"), counted in the interpreter:
every Triton launch, by kernel, and every aten op the step dispatches (forward, loss, backward).

- Persistent schedules: 24 Triton launches per step whatever T (the LSTM and the chain one per
  direction, the likelihoods and the KL one per term and direction, the six clamped
  activations one each way), and no aten op inside the time loop: the step dispatches the
  same ops at T=5 as at T=8.
- Stepwise schedules: 8 Triton launches per time step (the backward LSTM 1 + 1, the chain 3 + 3),
  12 with cond_ln (the chain 5 + 5).
- The eager reference (backend="torch") dispatches more aten ops as T grows: the counter sees a loop.
On a GPU, benchmarks/bench_train_step.py counts the CUDA kernels of one step with the profiler.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

triton = pytest.importorskip("triton")
from zf_kernels import ZForcing, training_loss  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="counts launches of the Triton interpreter")

PERSISTENT_LAUNCHES = {
    "_lstm_fwd_persistent_kernel": 1, "_lstm_bwd_persistent_kernel": 1,   # the backward network
    "_gnll_fwd_kernel": 3, "_gnll_bwd_kernel": 3,                         # output, aux, reverse prediction
    "_kl_fwd_kernel": 1, "_kl_bwd_kernel": 1,
    # the prior's and the aux MLP's activation, the [-8, 8] clamp of four Gaussians' parameters
    "_leaky_clamp_fwd_kernel": 6, "_leaky_clamp_bwd_kernel": 6,
}
PERSISTENT_CHAIN = {False: {"_fwd_persistent": 1, "_bwd_persistent": 1},
                    True: {"_fwd_ln_persistent": 1, "_bwd_ln_persistent": 1}}
STEPWISE_PER_STEP = {False: 8, True: 12}


class _AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _record_launches(monkeypatch, record):
    """Call ``record(kernel's Python function, launch keywords)`` at every Triton launch (the interpreter's
    launch entry, which sees the keywords a GPU launch compiles with before it drops them; the
    keywords include the constexpr arguments)."""
    from triton.runtime import interpreter
    run = interpreter.InterpretedFunction.run

    def recorded(self, *args, grid, warmup, **kwargs):
        if not warmup:
            record(self.fn, kwargs)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recorded)


@pytest.fixture
def triton_launches(monkeypatch):
    """Counter of Triton kernel launches by kernel name."""
    count = collections.Counter()
    _record_launches(monkeypatch, lambda fn, kwargs: count.update([fn.__name__]))
    return count


def _step(T, cond_ln, backend, launches):
    """One training step's launches and aten ops (fresh model, same seed at every T)."""
    torch.manual_seed(0)
    model = ZForcing(3, "gaussian", emb_dim=5, rnn_dim=19, z_dim=3, mlp_dim=7, cond_ln=cond_ln, backend=backend)
    y, eps = torch.randn(T, 2, 3), torch.randn(T, 2, 3)
    launches.clear()
    with _AtenOps() as aten:
        training_loss(model(y, eps=eps), 0.3, 0.5, 1.0).backward()
    return dict(launches), aten.count


# Two lengths at which the model folds its embedding into the input projections alike
# (ZForcing._embedded_projection decides by T x B: at T=3, B=2 it would not fold, at T=8 it does,
# and the fold's products would count as ops that grow with T)
SHORT, LONG = 5, 8


def _short_and_long(schedule, cond_ln, launches, monkeypatch):
    """The Triton backend's step at T=SHORT and T=LONG under one schedule of the LSTM and the chain."""
    monkeypatch.setenv("ZF_LSTM_SCHEDULE", schedule)
    monkeypatch.setenv("ZF_CHAIN_SCHEDULE", schedule)
    return _step(SHORT, cond_ln, "triton", launches), _step(LONG, cond_ln, "triton", launches)


@pytest.mark.parametrize("cond_ln", [False, True], ids=["plain", "cond_ln"])
def test_persistent_step_launches_a_fixed_set_of_kernels_whatever_t(cond_ln, triton_launches, monkeypatch):
    (short, short_ops), (long, long_ops) = _short_and_long("persistent", cond_ln, triton_launches, monkeypatch)
    assert short == long == {**PERSISTENT_LAUNCHES, **PERSISTENT_CHAIN[cond_ln]}, (short, long)
    grown = {op: long_ops[op] - short_ops[op] for op in long_ops if long_ops[op] != short_ops[op]}
    assert not grown, f"aten ops inside the time loop: {grown}"


@pytest.mark.parametrize("cond_ln", [False, True], ids=["plain", "cond_ln"])
def test_stepwise_step_launches_a_few_kernels_per_time_step(cond_ln, triton_launches, monkeypatch):
    (short, _), (long, _) = _short_and_long("stepwise", cond_ln, triton_launches, monkeypatch)
    assert sum(long.values()) - sum(short.values()) == (LONG - SHORT) * STEPWISE_PER_STEP[cond_ln], (short, long)
    fixed = {k: v for k, v in short.items() if long[k] == v}
    assert fixed == {k: v for k, v in PERSISTENT_LAUNCHES.items() if "lstm" not in k}, fixed


def test_the_counter_sees_the_eager_reference_loop(triton_launches):
    short, short_ops = _step(SHORT, False, "torch", triton_launches)
    long, long_ops = _step(LONG, False, "torch", triton_launches)
    assert short == long == {}
    assert sum(long_ops.values()) > sum(short_ops.values()) + (LONG - SHORT) * 10, (sum(short_ops.values()), sum(long_ops.values()))


def test_every_launch_pins_the_compile_options(monkeypatch):
    """Every kernel launch passes LAUNCH_OPTIONS (FMA contraction on), so the kernels compile the
    same whatever Triton's default (triton 3.10 turns FP fusion off unless asked), and every
    keyword it passes is a kernel argument or an option of the GPU compiler: the interpreter
    drops the others silently, so a misspelt ``num_warp=8`` would show only on a GPU (as an error)
    or never (a misspelt option of the kernel's own). The model's step on both schedules, with
    and without cond_ln, and each op the step does not launch."""
    import inspect
    from triton.backends.nvidia.compiler import CUDAOptions
    from zf_kernels import ops
    from zf_kernels.ops._triton_common import LAUNCH_OPTIONS
    options, unknown = collections.defaultdict(set), collections.defaultdict(set)

    def record(fn, kwargs):
        options[fn.__name__].add(tuple((k, kwargs.get(k)) for k in sorted(LAUNCH_OPTIONS)))
        unknown[fn.__name__] |= set(kwargs) - set(inspect.signature(fn).parameters) \
            - set(CUDAOptions.__dataclass_fields__)
    _record_launches(monkeypatch, record)
    for schedule in ("persistent", "stepwise"):
        monkeypatch.setenv("ZF_LSTM_SCHEDULE", schedule)
        monkeypatch.setenv("ZF_CHAIN_SCHEDULE", schedule)
        for cond_ln in (False, True):
            _step(3, cond_ln, "triton", collections.Counter())
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, requires_grad=True)
    w, h, c = torch.randn(20, 5, requires_grad=True), torch.randn(3, 5), torch.randn(3, 5)
    ops.lstm_cell(torch.randn(3, 20), h, c, w, backend="triton")[0].sum().backward()
    ops.reparameterize(x, x, x, backend="triton").sum().backward()
    ops.bernoulli_nll(torch.rand(2, 3, 5).round(), x, backend="triton").sum().backward()
    ops.categorical_nll(torch.randint(0, 5, (2, 3)), x, backend="triton").sum().backward()
    assert len(options) >= 30, sorted(options)       # the kernels above, each seen
    expected = {tuple(sorted(LAUNCH_OPTIONS.items()))}
    assert {name: seen for name, seen in options.items() if seen != expected} == {}
    assert {name: keys for name, keys in unknown.items() if keys} == {}
