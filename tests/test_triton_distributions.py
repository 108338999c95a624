"""Fused Triton sampling/likelihood ops (zf_kernels.ops.distributions.triton) against the
plain-PyTorch reference (naive.py): values and gradients of every input, with and without
masks, odd shapes, extreme values, gradcheck, and the public ``backend="triton"`` path. The
tests taking the ``front_end`` fixture run both forms of each op: the autograd Functions of
triton.py (what eager code calls) and the torch.library custom ops of triton_op.py (what
torch.compile traces), called eagerly.

Runs on CUDA when available, else in the Triton interpreter (TRITON_INTERPRET=1, set in
conftest.py and here, before the Triton module is imported), float16 and bfloat16 included
(the interpreter's bf16 rounding repaired for the tests: tests/_interpreter_bf16.py). Every output buffer the module allocates with torch.empty/empty_like is NaN-filled,
so a value a kernel forgets to write cannot pass.
"""
import math
import os
import zlib

import pytest
import torch
import torch.utils._python_dispatch

# On a GPU the kernels are compiled, unless TRITON_INTERPRET=1 asks for the interpreter
# (then everything runs on the CPU, as on a machine without a GPU).
CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not CUDA:
    # read when a kernel is decorated: must precede the import of the Triton module
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

import zf_kernels.ops as zops  # noqa: E402
from zf_kernels.ops.distributions import naive  # noqa: E402
from zf_kernels.ops.distributions import triton as tri  # noqa: E402
from zf_kernels.ops.distributions import triton_op as tri_op  # noqa: E402
# pytest puts tests/ on sys.path (as for _helpers.py)
from test_ops_reference import assert_like_float64, gaussian_extreme_case  # noqa: E402

if not CUDA and type(tri._kl_fwd_kernel.fn).__name__ != "InterpretedFunction":
    pytest.fail("zf_kernels.ops.distributions.triton was imported before TRITON_INTERPRET=1 was set; "
                "set it in the environment (or tests/conftest.py) to run these tests on a CPU",
                pytrace=False)

DEVICE = "cuda" if CUDA else "cpu"
# the interpreter itself triggers this numpy deprecation when a loop bound is a kernel argument
pytestmark = [pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
              pytest.mark.usefixtures("nan_empty")]   # nan_empty: conftest.py

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (rtol, atol) of outputs and gradients. Fused and reference both compute in float32
# (float64) and round to the input dtype once, so half precision may differ by one ulp of
# the stored result (bf16: 2^-7 relative, fp16: 2^-10).
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
}
GRAD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
}

OPS = ["reparameterize", "gaussian_kl", "gaussian_nll", "bernoulli_nll", "categorical_nll"]
REDUCING = OPS[1:]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def _make(op, shape, dtype, gen, scale=1.0):
    """The op's positional data arguments (no mask); floating ones are leaves needing grad."""
    def rn(s=1.0, shift=0.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * s + shift)

    if op == "reparameterize":
        args = [rn(), rn(), rn()]
    elif op == "gaussian_kl":
        args = [rn(), rn(1.5), rn(), rn(1.5)]
    elif op == "gaussian_nll":
        args = [rn(2.0), rn(), rn(1.5)]
    elif op == "bernoulli_nll":
        args = [torch.rand(shape, generator=gen, dtype=torch.float64), rn(3.0)]
    else:
        n_classes = shape[-1]
        targets = torch.randint(0, n_classes, shape[:-1], generator=gen)
        if targets.numel():
            targets.view(-1)[0] = n_classes - 1  # the last class, in the last block
        args = [targets, rn(3.0 * scale)]
    return [a.to(DEVICE) if not a.is_floating_point() else
            a.to(device=DEVICE, dtype=dtype).requires_grad_() for a in args]


def _mask(kind, lead, dtype, gen, requires_grad=False):
    if kind is None:
        return None
    if kind == "full":
        shape = lead
    elif kind == "lead":      # (T, 1, ..., 1): per-sequence-step mask
        shape = lead[:1] + (1,) * (len(lead) - 1)
    elif kind == "trail":     # lead[1:]: broadcast along the first dim
        shape = lead[1:]
    else:
        raise ValueError(kind)
    m = torch.rand(shape, generator=gen, dtype=torch.float64)
    m = torch.where(m < 0.3, torch.zeros_like(m), m)  # some rows masked out
    return m.to(device=DEVICE, dtype=dtype).requires_grad_(requires_grad)


def _call(fn, op, args, mask):
    return fn(*args) if op == "reparameterize" else fn(*args, mask)


# the module whose functions _fused returns: triton.py's (the Functions) unless the front_end
# fixture says triton_op.py's (the custom ops)
_FRONT_ENDS = {"function": tri, "custom_op": tri_op}
_front_end = {"module": tri}


@pytest.fixture(params=sorted(_FRONT_ENDS))
def front_end(request, monkeypatch):
    monkeypatch.setitem(_front_end, "module", _FRONT_ENDS[request.param])
    return request.param


def _fused(op):
    return getattr(_front_end["module"], op)


def _ref(op):
    return getattr(naive, op + "_ref")


def _compare(op, args, mask, dtype, gen, leaves=None, tol=None):
    """Values and the gradients of ``leaves`` (default: every input requiring grad)."""
    out = _call(_fused(op), op, args, mask)
    exp = _call(_ref(op), op, args, mask)
    assert out.shape == exp.shape and out.dtype == exp.dtype
    torch.testing.assert_close(out, exp, **(tol or TOL[dtype]))
    if leaves is None:
        leaves = [a for a in args if a.requires_grad]
        if mask is not None and mask.requires_grad:
            leaves.append(mask)
    if not leaves:
        return out
    # a non-uniform upstream gradient (not all ones)
    g = (torch.randn(out.shape, generator=gen, dtype=torch.float64) * 2.0 + 0.5).to(DEVICE, dtype)
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(exp, leaves, g)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"gradient {i}"
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype], msg=lambda m: f"gradient {i}: {m}")
    return out


# ---------------------------------------------------------------------------------------
# values and gradients against the reference
# ---------------------------------------------------------------------------------------

# (shape, mask kind): odd sizes, D = 1, D not a multiple of the block, D > the 1024-wide
# block (several slices), N > BLOCK_N (several programs, a partial last one).
CASES = [
    ((3, 7, 5), None),
    ((3, 7, 5), "full"),
    ((3, 7, 5), "lead"),
    ((1, 1, 1), "full"),
    ((2, 13), "trail"),
    ((17, 1), None),
    ((3, 100, 20), "lead"),
    ((4, 1037), "full"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,shape,mask_kind", [
    (op, shape, mask_kind) for op in OPS for shape, mask_kind in CASES
    if op != "reparameterize" or mask_kind is None  # reparameterize takes no mask
], ids=lambda c: str(c).replace(" ", ""))
def test_matches_reference(op, shape, mask_kind, dtype, front_end):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((op, shape, mask_kind)).encode()))
    args = _make(op, shape, dtype, gen)
    mask = _mask(mask_kind, shape[:-1], dtype, gen)
    _compare(op, args, mask, dtype, gen)


@pytest.mark.parametrize("mask_kind", ["full", "lead", "trail"])
@pytest.mark.parametrize("op", REDUCING)
def test_mask_gradient(op, mask_kind, front_end):
    """A mask that requires grad gets the reference's gradient (reduced to its own shape)."""
    gen = torch.Generator().manual_seed(1)
    dtype = torch.float32
    args = _make(op, (4, 6, 9), dtype, gen)
    mask = _mask(mask_kind, (4, 6), torch.float64, gen, requires_grad=True)  # another dtype
    _compare(op, args, mask, dtype, gen)


@pytest.mark.parametrize("op", OPS)
def test_single_input_requires_grad(op, front_end):
    """Only the gradients asked for are computed; each alone is right."""
    gen = torch.Generator().manual_seed(2)
    dtype = torch.float32
    base = _make(op, (5, 11), dtype, gen)
    mask = None if op == "reparameterize" else _mask("full", (5,), dtype, gen)
    for i, a in enumerate(base):
        if not a.is_floating_point():
            continue
        args = [b.detach().requires_grad_(j == i) if b.is_floating_point() else b
                for j, b in enumerate(base)]
        _compare(op, args, mask, dtype, gen)


@pytest.mark.parametrize("op", OPS)
def test_no_grad_inputs(op, front_end):
    gen = torch.Generator().manual_seed(3)
    args = [a.detach() for a in _make(op, (3, 6), torch.float32, gen)]
    mask = None if op == "reparameterize" else _mask("full", (3,), torch.float32, gen)
    out = _compare(op, args, mask, torch.float32, gen)
    assert not out.requires_grad


@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_inputs(op, front_end):
    """Strided views (leading dims transposed, every other row and column) and a
    transposed mask give the reference's answer."""
    gen = torch.Generator().manual_seed(4)
    dtype = torch.float32
    full = _make(op, (9, 8, 14), dtype, gen)  # floating args (9, 8, 14)
    args = [a.detach().transpose(0, 1)[:, ::2, ::2].requires_grad_() if a.is_floating_point()
            else torch.randint(0, 7, (9, 8), generator=gen).to(DEVICE).transpose(0, 1)[:, ::2]
            for a in full]  # -> (8, 5, 7); targets (8, 5) for 7 classes
    assert all(not a.is_contiguous() for a in args)
    mask = None
    if op != "reparameterize":
        mask = _mask("full", (5, 8), dtype, gen).t()
        assert not mask.is_contiguous()
    _compare(op, args, mask, dtype, gen)


def _slices_of_one_tensor(op, lead, d, dtype, gen):
    """The op's floating arguments as slices of the last dim of one (lead, k d + 3) tensor
    (as the mu / logvar halves of one Linear output), targets as every other entry of an int
    tensor: nothing contiguous, every one a single row stride."""
    full = _make(op, lead + (d,), dtype, gen)
    floats = [a for a in full if a.is_floating_point()]
    big = torch.cat([a.detach() for a in floats] + [torch.zeros(lead + (3,), dtype=dtype, device=DEVICE)], -1)
    views = iter([big[..., i * d:(i + 1) * d].requires_grad_() for i in range(len(floats))])
    args = [next(views) if a.is_floating_point() else torch.stack([a, a], -1)[..., 0] for a in full]
    assert all(not a.is_contiguous() for a in args)
    return args


class _CopiesOutsideKernels(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the copies (clone, copy_, contiguous via _to_copy) an op's Python side makes;
    the interpreter's own copies of kernel arguments are not counted."""
    COPIES = ("aten.clone", "aten.copy_", "aten._to_copy", "aten.contiguous")

    def __init__(self, monkeypatch):
        super().__init__()
        self.copies, self._in_kernel = [], 0
        if not CUDA:
            from triton.runtime import interpreter
            run = interpreter.InterpretedFunction.run

            def counted(fn, *a, **k):
                self._in_kernel += 1
                try:
                    return run(fn, *a, **k)
                finally:
                    self._in_kernel -= 1
            monkeypatch.setattr(interpreter.InterpretedFunction, "run", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._in_kernel and str(func).startswith(self.COPIES):
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


# On a GPU every new stride specialisation is a Triton compilation inside device_check's time
# budget: the strided tests run in float32 with a mask there, in every dtype on the CPU.
INPLACE_DTYPES = [torch.float32] if CUDA else DTYPES
INPLACE_MASKS = ["full"] if CUDA else [None, "full"]


@pytest.mark.parametrize("dtype", INPLACE_DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", INPLACE_MASKS)
@pytest.mark.parametrize("op", REDUCING)
def test_row_strided_inputs_are_read_in_place(op, mask_kind, dtype, monkeypatch):
    """Slices of the last dim (one row stride each), a contiguous mask and the expanded
    gradient of a sum (stride 0) are read where they are: the reference's values and
    gradients, and no copy in the forward or the backward pass."""
    gen = torch.Generator().manual_seed(5)
    args = _slices_of_one_tensor(op, (6, 5), 7, dtype, gen)
    mask = _mask(mask_kind, (6, 5), dtype, gen)
    _compare(op, args, mask, dtype, gen)
    leaves = [a for a in args if a.requires_grad]
    with _CopiesOutsideKernels(monkeypatch) as mode:
        out = _call(_fused(op), op, args, mask)
        got = torch.autograd.grad(out.sum(), leaves)
    assert mode.copies == [], mode.copies
    want = torch.autograd.grad(_call(_ref(op), op, args, mask).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", INPLACE_DTYPES, ids=str)
def test_reparameterize_reads_halves_in_place(dtype, monkeypatch):
    """mu, logvar and eps as slices of the last dim of one tensor (the halves of a Linear
    output): the reference's z and gradients, no copy either way (the upstream gradient as a
    following Linear gives it: contiguous)."""
    gen = torch.Generator().manual_seed(7)
    args = _slices_of_one_tensor("reparameterize", (6, 5), 7, dtype, gen)
    _compare("reparameterize", args, None, dtype, gen)
    w = torch.randn((6, 5, 7), generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    with _CopiesOutsideKernels(monkeypatch) as mode:
        got = torch.autograd.grad((tri.reparameterize(*args) * w).sum(), args)
    assert mode.copies == [], mode.copies
    want = torch.autograd.grad((naive.reparameterize_ref(*args) * w).sum(), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype])


@pytest.mark.parametrize("op", OPS)
def test_leading_dims_that_do_not_collapse_are_copied(op, monkeypatch):
    """Transposed leading dims with a unit last stride: no single row stride, one copy per
    input, the reference's answer."""
    gen = torch.Generator().manual_seed(6)
    dtype = torch.float32
    full = _make(op, (5, 4, 6), dtype, gen)
    args = [a.detach().transpose(0, 1).requires_grad_() if a.is_floating_point() else a.t() for a in full]
    _compare(op, args, None, dtype, gen)
    with _CopiesOutsideKernels(monkeypatch) as mode:
        _call(_fused(op), op, args, None)
    assert len(mode.copies) == len(args), mode.copies


@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 7)], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_empty_rows(op, shape, front_end):
    """No rows: empty outputs and gradients, no launch needed."""
    gen = torch.Generator().manual_seed(5)
    args = _make(op, shape, torch.float32, gen)
    lead = shape[:-1]
    mask = None if op == "reparameterize" else _mask("full", lead, torch.float32, gen)
    out = _compare(op, args, mask, torch.float32, gen)
    assert out.numel() == 0


@pytest.mark.parametrize("shape", [(3, 0), (0,)], ids=str)
@pytest.mark.parametrize("op", ["gaussian_kl", "gaussian_nll", "bernoulli_nll"])
def test_empty_last_dim(op, shape, front_end):
    """D = 0: every row sums nothing -> zeros (written, not left as NaN)."""
    gen = torch.Generator().manual_seed(6)
    args = _make(op, shape, torch.float32, gen)
    mask = _mask("full", shape[:-1], torch.float32, gen)
    out = _compare(op, args, mask, torch.float32, gen)
    assert torch.equal(out, torch.zeros(shape[:-1], device=DEVICE))


def test_nan_fixture_is_active():
    assert torch.isnan(torch.empty(3)).all() and torch.isnan(torch.empty_like(torch.ones(2))).all()


# ---------------------------------------------------------------------------------------
# extreme values
# ---------------------------------------------------------------------------------------

def _pick(values, shape, gen):
    v = torch.tensor(values, dtype=torch.float64)
    return v[torch.randint(0, len(values), shape, generator=gen)]


def _extreme_args(op, shape, gen):
    rn = lambda: torch.randn(shape, generator=gen, dtype=torch.float64)  # noqa: E731
    if op == "reparameterize":
        return [rn() * 1e3, _pick([-80.0, -20.0, 0.0, 20.0, 80.0], shape, gen), rn()]
    if op == "gaussian_kl":
        # |lq - lp| <= 80 keeps exp(lq - lp) finite in float32; exp(-lp) up to e^80
        lp = _pick([-80.0, 0.0, 80.0], shape, gen)
        lq = (lp + _pick([-80.0, -40.0, 0.0, 40.0, 80.0], shape, gen)).clamp(-80.0, 80.0)
        return [rn(), lq, rn(), lp]
    if op == "gaussian_nll":
        mu = rn() * 1e4
        return [mu + rn(), mu, _pick([-80.0, -1.0, 0.0, 80.0], shape, gen)]
    if op == "bernoulli_nll":
        logits = _pick([-1e4, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e4], shape, gen)
        x = torch.where(rn() > 0.5, torch.ones(shape, dtype=torch.float64),
                        torch.rand(shape, generator=gen, dtype=torch.float64))
        x = torch.where(rn() < -0.8, torch.zeros_like(x), x)
        return [x, logits]
    # categorical: +-1e4 logits, ties, and -inf classes (never the target)
    logits = rn() * 1e4
    logits[0] = 1e4
    targets = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    neg_inf = torch.rand(shape, generator=gen) < 0.3
    neg_inf.scatter_(-1, targets.unsqueeze(-1), False)
    logits = logits.masked_fill(neg_inf, float("-inf"))
    return [targets, logits]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_extreme_values(op, dtype):
    """Large logits / logvars: finite results equal to the reference."""
    gen = torch.Generator().manual_seed(7)
    shape = (6, 7)
    args = [a.to(DEVICE) if not a.is_floating_point() else
            a.to(device=DEVICE, dtype=dtype).requires_grad_() for a in _extreme_args(op, shape, gen)]
    mask = None if op == "reparameterize" else _mask("full", shape[:-1], dtype, gen)
    exp = _call(_ref(op), op, args, mask)
    assert torch.isfinite(exp).all()  # the case is meant to be finite
    tol = dict(TOL[dtype])
    if CUDA and dtype == torch.float32:
        # compiled tl.exp is ex2.approx(x * log2(e)): the rounding of x * log2(e) costs up to
        # |x| * 2^-24 * log2(e) ~ 5e-6 relative at |x| = 80 (torch's expf is exact to 1 ulp)
        tol["rtol"] = 3e-5
    out = _compare(op, args, mask, dtype, gen, tol=tol)
    assert torch.isfinite(out).all()
    leaves = [a for a in args if a.is_floating_point()]
    grads = torch.autograd.grad(_call(_fused(op), op, args, mask), leaves, torch.ones_like(out))
    assert all(torch.isfinite(g).all() for g in grads)  # d/d(-inf logit) included: 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_categorical_row_whose_first_slice_is_all_minus_inf(dtype):
    """The online log-sum-exp over slices of the class dim (BLOCK_D <= 1024 wide): a row whose
    first slice holds only -inf logits (banned classes) and its target in a later one is finite,
    as log_softmax gives it; inf - inf in the first slice's running sum would make it NaN."""
    gen = torch.Generator().manual_seed(11)
    n, d = 3, tri._MAX_BLOCK_D + 5
    logits = torch.randn(n, d, generator=gen, dtype=torch.float64)
    logits[1, :tri._MAX_BLOCK_D] = float("-inf")
    targets = torch.tensor([0, d - 2, d - 1])
    args = [targets.to(DEVICE), logits.to(device=DEVICE, dtype=dtype).requires_grad_()]
    out = _compare("categorical_nll", args, None, dtype, gen)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_categorical_16bit_logits_far_from_zero(dtype):
    """Softmax does not care where the logits sit, nor may the kernels: 16-bit logits near 100
    (bfloat16's step there is 0.5) get the reference's gradient, softmax - onehot from float32
    sums around the row's max."""
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 2.0 + 100.0
    targets = torch.randint(0, 7, (5,), generator=gen)
    args = [targets.to(DEVICE), logits.to(device=DEVICE, dtype=dtype).requires_grad_()]
    _compare("categorical_nll", args, None, dtype, gen)


def test_categorical_float32_logits_far_from_zero():
    """float32 logits near 1e5 (float32's step there is 2^-7) with several classes sharing the
    probability: the backward's softmax is exp((l - max) - log_sum), never exp(l - (max +
    log_sum)), whose sum rounds to that step (softmaxes off by ~0.4%)."""
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 2.0 + 1e5
    targets = torch.randint(0, 7, (5,), generator=gen)
    args = [targets.to(DEVICE), logits.to(device=DEVICE, dtype=torch.float32).requires_grad_()]
    _compare("categorical_nll", args, None, torch.float32, gen)


def test_gaussian_kl_zero_gradient_times_infinite_ratio_is_nan_like_the_reference():
    """A zero upstream gradient gives the exp(lq - lp) term a zero gradient only where lq - lp <
    inf (float32 overflow of a finite exponent, where 0 * exp would be 0 * inf): at lq - lp = +inf
    the gradient stays 0 * inf = NaN, as torch's exp and the reference's ``_Exp`` give it, not 0."""
    lq = torch.tensor([[0.5, math.inf], [0.25, -1.0]], device=DEVICE, requires_grad=True)
    rest = [torch.tensor([[0.1, 0.2], [0.3, 0.4]], device=DEVICE, requires_grad=True) for _ in range(3)]
    g = torch.tensor([0.0, 1.5], device=DEVICE)           # row 0 (with the inf) gets a zero gradient
    got = torch.autograd.grad(tri.gaussian_kl(rest[0], lq, rest[1], rest[2]), [lq, rest[2]], g)
    want = torch.autograd.grad(naive.gaussian_kl_ref(rest[0], lq, rest[1], rest[2]), [lq, rest[2]], g)
    assert want[0][0, 1].isnan() and want[1][0, 1].isnan()
    # NaN exactly where the reference has it (equal_nan), the finite rest within the file's float32
    # gradient bound: at lq - lp = -0.05 the gradient 0.5 g (exp(-0.05) - 1) cancels 20x, so exp's
    # last bits, which differ on a GPU (Triton's ex2.approx, torch's expf: 2 ulp each), move it by
    # up to ~1e-5 relative
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **GRAD_TOL[torch.float32], equal_nan=True)


def test_categorical_bfloat16_large_vocabulary_gradient_to_a_rounding():
    """4,000 near-equal bfloat16 logits: each softmax is ~1 / 4,000, the row's log-sum-exp 7.9
    past its max. The backward reads it from the forward; kept in bfloat16 (step 1/32 there)
    rather than float32 it would shift the softmaxes by up to 1.6% (measured: 1.6%, median
    0.8%). Bound: the float64 gradient of the same bfloat16 logits rounded once to bfloat16, i.e.
    within half a bfloat16 ulp of it, plus 4e-6 relative for the float32 arithmetic before that
    rounding (exp as ex2.approx and the summation order on a GPU: ~1e-6). Not the
    bfloat16 reference's bits: its float32 softmax and the kernel's differ in the last bits on a
    GPU, and an element that close to a bfloat16 rounding midpoint (here the closest is 5.5e-7
    relative away) then rounds a whole ulp apart in the two."""
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(3, 4000, generator=gen, dtype=torch.float64) * 0.1).to(DEVICE, torch.bfloat16)
    targets = torch.randint(0, 4000, (3,), generator=gen).to(DEVICE)
    logits.requires_grad_()
    got, = torch.autograd.grad(tri.categorical_nll(targets, logits, None).sum(), logits)
    logits64 = logits.detach().double().requires_grad_()
    exact, = torch.autograd.grad(naive.categorical_nll_ref(targets, logits64, None).sum(), logits64)
    _, e = torch.frexp(exact)               # |exact| in [2^(e-1), 2^e): a bfloat16 ulp there is 2^(e-8)
    bound = torch.pow(2.0, (e - 9).double()) + 4e-6 * exact.abs()
    err = (got.double() - exact).abs()
    assert got.dtype == torch.bfloat16 and (err <= bound).all(), \
        f"{int((err > bound).sum())} elements beyond a bfloat16 rounding; worst {(err / bound).max().item():.2f}x"


@pytest.mark.parametrize("op", ["gaussian_nll", "gaussian_kl"])
def test_gaussian_at_float32_limits_match_float64(op):
    """Residuals up to 1e37 and logvars up to +-170 in float32 (``(x - mu)^2`` and
    ``exp(-logvar)`` overflow, their product often does not): values and gradients (upstream
    1, 0, -2.5, 0) equal a float64 evaluation -- no NaN, the same infinities, finite values to
    rtol 1e-5 (cases and checks shared with test_ops_reference.py). The former kernels'
    ``diff * diff * exp(-lv)`` gave NaN or a spurious inf here."""
    args, g, (out64, grads64, scale, gscales) = gaussian_extreme_case(op, DEVICE)
    # compiled tl.exp is ex2.approx (~7e-6 relative at |x| = 85); the interpreter's is exact
    rtol = 1e-4 if CUDA else 1e-5
    out = _fused(op)(*args, None)
    assert_like_float64(out, out64, scale, rtol, f"{op} value")
    for i, (a, w, sc) in enumerate(zip(torch.autograd.grad(out, args, g), grads64, gscales)):
        assert_like_float64(a, w, sc, rtol, f"{op} gradient {i}")
    # the public API agrees with the reference backend on the same cases
    pub = getattr(zops, op)(*args, backend="triton")
    ref = getattr(zops, op)(*args, backend="torch")
    torch.testing.assert_close(pub, ref, rtol=rtol, atol=0.0, equal_nan=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bernoulli_tiny_loss_relative_accuracy(dtype):
    """Confident, correct predictions: loss = log1p(exp(-|l|)) ~ 1e-3..1e-18 keeps its
    relative accuracy (log(1 + e) would round it to 0). Checked against log1p in float64
    with atol = 0; the reference's form loses these for x = 0, l << 0, so it is not used."""
    logits = torch.tensor([[20.0, 40.0, 5.0], [-20.0, -40.0, -5.0], [30.0, -30.0, 60.0]],
                          dtype=dtype, device=DEVICE)
    x = (logits > 0).to(dtype)
    exact = torch.log1p(torch.exp(-logits.double().abs())).sum(-1)
    out = tri.bernoulli_nll(x, logits)
    torch.testing.assert_close(out.double(), exact, rtol=TOL[dtype]["rtol"], atol=0.0)


# ---------------------------------------------------------------------------------------
# gradcheck (float64, through the Triton path, mask included)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):
    gen = torch.Generator().manual_seed(8)
    shape = (2, 3, 4)
    args = _make(op, shape, torch.float64, gen)
    fn = _fused(op)
    if op == "reparameterize":
        assert torch.autograd.gradcheck(fn, args)
        return
    mask = _mask("lead", shape[:-1], torch.float64, gen, requires_grad=True)
    if op == "categorical_nll":
        targets, logits = args
        assert torch.autograd.gradcheck(lambda lg, m: fn(targets, lg, m), (logits, mask))
    else:
        assert torch.autograd.gradcheck(fn, (*args, mask))


# ---------------------------------------------------------------------------------------
# public API: zf_kernels.ops.<op>(..., backend="triton")
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_public_api_triton_backend(op):
    gen = torch.Generator().manual_seed(9)
    args = _make(op, (3, 5, 6), torch.float32, gen)
    kw = {}
    if op != "reparameterize":
        kw["mask"] = torch.rand((3, 1), generator=gen).to(DEVICE) > 0.4  # bool, broadcast
    leaves = [a for a in args if a.is_floating_point()]
    assert zops.explain(op, *leaves, backend="triton") == ("triton", "requested")
    out = getattr(zops, op)(*args, **kw, backend="triton")
    exp = getattr(zops, op)(*args, **kw, backend="torch")
    torch.testing.assert_close(out, exp, **TOL[torch.float32])
    g = torch.randn(out.shape, generator=gen).to(DEVICE)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(exp, leaves, g)):
        torch.testing.assert_close(a, b, **GRAD_TOL[torch.float32])
    assert out.grad_fn is not None and "Triton" in type(out.grad_fn).__name__


# ---------------------------------------------------------------------------------------
# categorical specifics
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_categorical_target_dtypes(tdtype):
    gen = torch.Generator().manual_seed(10)
    targets, logits = _make("categorical_nll", (3, 4, 200), torch.float32, gen)
    _compare("categorical_nll", [targets.to(tdtype), logits], None, torch.float32, gen)


def test_categorical_many_classes():
    """10k classes: ten 1024-wide slices per row, one pass with a running max."""
    gen = torch.Generator().manual_seed(11)
    args = _make("categorical_nll", (3, 10_000), torch.float32, gen, scale=10.0)
    mask = _mask("full", (3,), torch.float32, gen)
    _compare("categorical_nll", args, mask, torch.float32, gen)
