"""How ``backend="cuda"`` and ``"auto"`` treat the CUDA LSTM and Z-forcing chain on any machine: "auto" never picks
it before a GPU run has verified it (and says so), an explicit request on CPU tensors or an
unsupported dtype is refused with the reason, and the extension loader turns every failure
into an ImportError carrying the reason."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zf_kernels import ops
from zf_kernels.ops import _cuda_ext, _dispatch
from zf_kernels.ops.lstm._cuda_function import why_unsupported
from zf_kernels.ops.recurrence import _cuda_function as chain_cuda_function


def _lstm_args(dtype=torch.float32):
    T, B, I, H = 3, 2, 4, 5
    return torch.randn(T, B, I, dtype=dtype), torch.randn(4 * H, I, dtype=dtype), torch.randn(4 * H, H, dtype=dtype)


def test_cuda_lstm_is_registered_but_not_eligible_for_auto():
    assert "cuda" in _dispatch._REGISTRY["lstm"]
    assert "not been verified on a GPU" in _dispatch._NOT_AUTO[("lstm", "cuda")]


def test_cuda_auto_skips_the_unverified_lstm_without_loading_it(monkeypatch):
    """On CUDA tensors (simulated), "auto" never asks whether the CUDA lstm can run (which
    would import it: a JIT build) and explain() reports why it was not tried."""
    asked = []

    def fake_why_not(op, backend, tensors):
        asked.append(backend)
        return "triton unavailable in this test" if backend == "triton" else None

    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    monkeypatch.setattr(_dispatch, "_why_not", fake_why_not)
    backend, reason = ops.explain("lstm", *_lstm_args())
    assert backend == "torch" and asked == ["triton"]
    assert "cuda not tried by 'auto': the CUDA lstm has not been verified on a GPU yet; " \
           "pass backend='cuda' to use it" in reason
    # with triton usable, auto takes it and still says why cuda was passed over
    monkeypatch.setattr(_dispatch, "_why_not", lambda op, backend, tensors: None)
    monkeypatch.setattr(_dispatch, "_with_detail", lambda op, backend, reason, tensors: reason)
    backend, reason = ops.explain("lstm", *_lstm_args())
    assert backend == "triton" and "cuda not tried by 'auto'" in reason
    # only the cuda backends (lstm, zforcing_chain) are flagged
    assert sorted(_dispatch._NOT_AUTO) == [("lstm", "cuda"), ("zforcing_chain", "cuda")]


def test_auto_takes_the_unverified_cuda_backend_only_when_asked_and_says_so(monkeypatch):
    """ZF_AUTO_UNVERIFIED=1 (what the benchmarks' "cuda" training-step rows set): "auto" tries
    the CUDA implementation and explain() names the opt-in; where it cannot run, "auto" goes on
    to triton and carries the reason. Any value but 0 / 1 is refused, naming the variable."""
    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    # every registered implementation can run (the real check would import, i.e. build, it)
    monkeypatch.setattr(_dispatch, "_why_not", lambda op, backend, tensors:
                        None if backend in _dispatch._REGISTRY[op] else "not registered")
    monkeypatch.setattr(_dispatch, "_with_detail", lambda op, backend, reason, tensors: reason)
    monkeypatch.setenv(_dispatch.AUTO_UNVERIFIED_ENV, "0")
    assert ops.explain("lstm", *_lstm_args())[0] == "triton"
    monkeypatch.setenv(_dispatch.AUTO_UNVERIFIED_ENV, "1")
    backend, reason = ops.explain("lstm", *_lstm_args())
    assert backend == "cuda"
    assert reason == ("cuda is available for 'lstm' (tried although the CUDA lstm has not been verified on a "
                      "GPU yet: ZF_AUTO_UNVERIFIED=1)")
    assert ops.explain("zforcing_chain", *_chain_args())[0] == "cuda"
    # ops without a CUDA implementation are unaffected
    assert ops.explain("gaussian_kl", *(torch.zeros(2, 3) for _ in range(4)))[0] == "triton"
    monkeypatch.setattr(_dispatch, "_why_not",
                        lambda op, backend, tensors: "the build failed" if backend == "cuda" else None)
    backend, reason = ops.explain("lstm", *_lstm_args())
    assert backend == "triton" and "cuda: the build failed" in reason
    monkeypatch.setenv(_dispatch.AUTO_UNVERIFIED_ENV, "yes")
    with pytest.raises(ValueError, match="ZF_AUTO_UNVERIFIED must be 0 or 1; got 'yes'"):
        ops.explain("lstm", *_lstm_args())


def test_triton_interpreter_refuses_cuda_tensors(monkeypatch):
    """TRITON_INTERPRET=1 runs Triton kernels on the CPU: CUDA tensors (simulated) then cannot
    go to them, and the reason says so."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    x = torch.zeros(2, 3)
    assert _dispatch._why_not("gaussian_nll", "triton", (x, x, x)) == "TRITON_INTERPRET=1 is set but the tensors are on CUDA"


def test_model_level_cuda_backend_maps_ops_without_cuda_kernels_to_auto():
    """ops.op_backend: what ZForcing(backend="cuda") passes to each op: "cuda" to the two
    recurrences that have CUDA kernels, "auto" to the rest; any other backend unchanged."""
    assert ops.op_backend("lstm", "cuda") == "cuda" and ops.op_backend("zforcing_chain", "cuda") == "cuda"
    for op in ("lstm_cell", "zforcing_chain_ln", "gaussian_nll", "gaussian_kl", "bernoulli_nll",
               "categorical_nll", "reparameterize", "leaky_clamp"):
        assert ops.op_backend(op, "cuda") == "auto", op
    for backend in ("auto", "torch", "triton"):
        assert ops.op_backend("gaussian_nll", backend) == backend and ops.op_backend("lstm", backend) == backend


def test_model_with_cuda_backend_on_cpu_tensors_says_why():
    from zf_kernels import ZForcing
    model = ZForcing(3, emb_dim=4, rnn_dim=5, z_dim=2, mlp_dim=4, backend="cuda")
    with pytest.raises(ops.BackendUnavailableError, match="backend='cuda' cannot run lstm: .*CUDA tensors"):
        model(torch.randn(4, 2, 3))


def _chain_args(dtype=torch.float32):
    T, B, H, M, Z, G = 3, 2, 5, 4, 3, 6
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    return (r(T, B, 4 * H), r(T, B, M), r(T, B, Z), r(B, H), r(B, H), r(M, H), r(2 * Z, M), r(2 * Z),
            r(G, Z), r(G), r(4 * H, G), r(4 * H, H))


def test_cuda_chain_is_registered_but_not_eligible_for_auto(monkeypatch):
    assert "cuda" in _dispatch._REGISTRY["zforcing_chain"]
    assert _dispatch._NOT_AUTO[("zforcing_chain", "cuda")] == (
        "the CUDA zforcing_chain has not been verified on a GPU yet; pass backend='cuda' to use it")
    asked = []

    def fake_why_not(op, backend, tensors):
        asked.append(backend)
        return "triton unavailable in this test"

    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    monkeypatch.setattr(_dispatch, "_why_not", fake_why_not)
    backend, reason = ops.explain("zforcing_chain", *_chain_args())
    assert backend == "torch" and asked == ["triton"]
    assert "cuda not tried by 'auto': the CUDA zforcing_chain has not been verified on a GPU yet" in reason


def test_cuda_chain_explicit_backend_on_cpu_tensors_and_dtypes_say_why():
    with pytest.raises(ops.BackendUnavailableError, match="CUDA tensors"):
        ops.zforcing_chain(*_chain_args(), backend="cuda")
    why = chain_cuda_function.why_unsupported
    assert "zforcing_chain supports float32, float64 and bfloat16" in why(torch.zeros(1, dtype=torch.float16))
    assert "CUDA tensors" in why(torch.zeros(1, dtype=torch.bfloat16))
    assert "CUDA tensors" in why(torch.zeros(1))


def test_cuda_explicit_backend_on_cpu_tensors_says_why():
    x, w_ih, w_hh = _lstm_args()
    with pytest.raises(ops.BackendUnavailableError, match="CUDA tensors"):
        ops.lstm(x, w_ih, w_hh, backend="cuda")
    backend, reason = ops.explain("lstm", x, w_ih, w_hh, backend="cuda")
    assert backend == "cuda" and "CUDA tensors" in reason


def test_cuda_lstm_names_unsupported_dtypes_and_devices():
    assert "float32, float64 and bfloat16" in why_unsupported(torch.zeros(1, dtype=torch.float16))
    assert "CUDA tensors" in why_unsupported(torch.zeros(1, dtype=torch.bfloat16))
    assert "CUDA tensors" in why_unsupported(torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the loader's message on a machine without CUDA")
def test_cuda_extension_loader_explains_why_it_cannot_load(monkeypatch):
    monkeypatch.setattr(_cuda_ext, "_cached", None)
    with pytest.raises(ImportError, match="no prebuilt zf_kernels._C") as info:
        _cuda_ext.load()
    assert "CPU-only build" in str(info.value) or "no CUDA device" in str(info.value)
    # the outcome is cached: the second call does not try again, and says the same
    with pytest.raises(ImportError, match="no prebuilt zf_kernels._C"):
        _cuda_ext.load()
    # ... and _dispatch carries it into its reason for CUDA tensors (simulated)
    monkeypatch.setattr(_dispatch, "_on_cuda", lambda tensors: True)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    why = _dispatch._why_not("lstm", "cuda", _lstm_args())
    assert why is not None and "cannot import the cuda implementation" in why and "zf_kernels._C" in why


def test_cuda_sources_are_what_setup_builds():
    names = sorted(p.name for p in _cuda_ext.sources())
    assert names == ["bindings.cpp", "chain_kernels.cu", "lstm_kernels.cu"]
    assert _cuda_ext.CSRC == _cuda_ext.CHECKOUT_CSRC   # in a checkout: csrc/ itself


def test_a_built_package_carries_the_cuda_sources_for_the_jit_build(tmp_path):
    """setup.py's build_py (what a wheel holds) copies csrc/'s sources into zf_kernels/_csrc, and
    the package imported from there JIT-builds from that copy: a wheel built without CUDA can
    still build the extension on a GPU machine."""
    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, ZF_KERNELS_SKIP_CUDA_BUILD="1")
    # egg_info's metadata into tmp_path too: the test writes nothing into the checkout
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "build_py",
                    "--build-lib", str(lib)], cwd=root, env=env, check=True, capture_output=True)
    packaged = lib / "zf_kernels" / "_csrc"
    wanted = sorted(p.name for p in (root / "csrc").iterdir() if p.suffix in _cuda_ext.SOURCE_SUFFIXES)
    assert sorted(p.name for p in packaged.iterdir()) == wanted and "zf_persistent.h" in wanted
    assert all((packaged / n).read_bytes() == (root / "csrc" / n).read_bytes() for n in wanted)
    probe = ("import zf_kernels.ops._cuda_ext as e; "
             "print(e.CSRC); print(' '.join(p.name for p in e.sources()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=lib, env=dict(os.environ, PYTHONPATH=str(lib)),
                         check=True, capture_output=True, text=True).stdout.split("\n")
    assert Path(out[0]) == packaged and out[1] == "bindings.cpp chain_kernels.cu lstm_kernels.cu"


def test_cuda_bench_provider_records_a_row_where_it_cannot_run(tmp_path):
    """bench_ops --providers cuda: an lstm and a zforcing_chain row per mode, 'unavailable' with the reason on a CPU
    (on a GPU whose build fails: the build error), never an aborted run."""
    import json
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from benchmarks import bench_ops
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "c", "--fresh", "--quiet",
            "--providers", "cuda,torch", "--ops", "lstm,zforcing_chain,gaussian_kl"]
    assert bench_ops.main(argv) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    cuda_rows = [r for r in rows if r["provider"] == "cuda"]
    assert {r["op"] for r in cuda_rows} == {"lstm", "zforcing_chain"}, rows
    assert len([r for r in cuda_rows if r["op"] == "zforcing_chain"]) == 2, rows
    assert all(r["status"] == "unavailable" and "CUDA tensors" in r["note"] for r in cuda_rows), cuda_rows
    assert any(r["provider"] == "torch" and r["status"] == "ok" for r in rows)


def test_an_lstm_backward_that_cannot_run_is_refused_before_the_forward():
    """The CUDA LSTM's backward pads its W slice to whole tiles and may not fit where the forward
    does (a review found B=32, H=1072-1184 in float32 on 132 SMs): with gradients needed, the
    kernels' check_backward runs first, so the planner's error comes before a whole forward (it
    came from loss.backward()); without gradients the forward alone runs."""
    from zf_kernels.ops.lstm._cuda_function import run_lstm

    class RefusingBackward:
        def __init__(self):
            self.calls = []

        def forward(self, gates, h0, w_hh, out, c_all, reverse):
            self.calls.append("forward")
            out.zero_()
            c_all.zero_()

        def backward(self, *a):
            self.calls.append("backward")

        def check_backward(self, x, w_hh):
            self.calls.append("check")
            raise ValueError("the CUDA lstm backward cannot run on B=2, H=9: needs 9216 B of shared memory")

    k = RefusingBackward()
    x, wi, wh = torch.randn(3, 2, 4), torch.randn(36, 4), torch.randn(36, 9)
    with pytest.raises(ValueError, match="backward cannot run"):
        run_lstm(k, x, wi.requires_grad_(), wh)
    assert k.calls == ["check"]
    with torch.no_grad():
        out, _ = run_lstm(k, x, wi, wh)
    assert k.calls == ["check", "forward"] and out.shape == (3, 2, 9)


class _OnSecondGpu(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (the guard reads only the device)."""
    @property
    def device(self):
        return torch.device("cuda:1")


def test_triton_calls_run_with_the_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device, not the tensors': a call on cuda:1 tensors
    while cuda:0 is current runs under torch.cuda.device(cuda:1); on the current device, with
    the CUDA extension (which guards itself) and on the CPU, the function itself."""
    entered = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Guard)
    on_gpu1 = torch.zeros(2).as_subclass(_OnSecondGpu)
    fn = lambda *a: "ran"  # noqa: E731
    guarded = _dispatch.on_tensors_device(fn, "triton", (None, on_gpu1))
    assert guarded is not fn and guarded(1) == "ran" and entered == [torch.device("cuda:1")]
    assert _dispatch.on_tensors_device(fn, "cuda", (on_gpu1,)) is fn
    assert _dispatch.on_tensors_device(fn, "triton", (torch.zeros(2),)) is fn
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _dispatch.on_tensors_device(fn, "triton", (on_gpu1,)) is fn


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_triton_op_on_the_second_device_matches_the_reference():
    torch.cuda.set_device(0)
    x = torch.randn(5, 3, 4, device="cuda:1")
    w_ih, w_hh = torch.randn(32, 4, device="cuda:1"), torch.randn(32, 8, device="cuda:1") * 0.3
    out, _ = ops.lstm(x, w_ih, w_hh, backend="triton")
    ref, _ = ops.lstm(x.double(), w_ih.double(), w_hh.double(), backend="torch")
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
