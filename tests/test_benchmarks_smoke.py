"""The benchmark scripts (benchmarks/) in their --smoke mode on the CPU: they run, write the
result files and the chart, and report what cannot run here (CUDA graphs) as rows instead of
crashing. Nothing is timed or asserted about speed. Also a syntax check of device_check.sh."""
import json
import math
import os
import re
import shutil
import tarfile
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_ops, bench_train_step, bench_trainer, common, step_flops, tune_tiles  # noqa: E402


def _rows(path):
    return json.loads(Path(path).read_text())["rows"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both scripts' smoke runs appended to one results file (as device_check.sh does)."""
    out = tmp_path_factory.mktemp("bench")
    base = ["--smoke", "--device", "cpu", "--out", str(out), "--name", "r", "--quiet"]
    assert bench_ops.main(base + ["--fresh", "--providers", "torch,cudnn"]) == 0
    assert bench_train_step.main(base + ["--providers", "torch,torch+graph,cudnn,cuda", "--models", "auto"]) == 0
    assert bench_trainer.main(base + ["--providers", "torch,torch+cuda-graph,torch+compile", "--steps", "2",
                                      "--warmup-steps", "1", "--compile-backend", "aot_eager"]) == 0
    assert tune_tiles.main(base) == 0
    assert bench_train_step.main(base + ["--providers", "torch,triton,torch+graph", "--cases", "timit",
                                         "--count-kernels"]) == 0
    return out


def test_ops_rows(results):
    rows = [r for r in _rows(results / "r.json") if r["suite"] == "ops"]
    torch_rows = [r for r in rows if r["provider"] == "torch"]
    assert {r["op"] for r in torch_rows} == set(bench_ops.OPS)
    for r in torch_rows:
        assert r["status"] == "ok", r
        assert r["mode"] in bench_ops.MODES and r["ms"] > 0 and r["method"] == "perf_counter"
        assert r["rel_err"] < 1e-5, r          # the reference against itself in float64
    cudnn = [r for r in rows if r["provider"] == "cudnn"]
    assert {r["op"] for r in cudnn} == {"lstm"} and all(r["status"] == "ok" for r in cudnn)
    assert all(r["rel_err"] < 1e-5 for r in cudnn)
    header = (results / "r.csv").read_text().splitlines()[0].split(",")
    assert header[: len(common.FIELDS)] == common.FIELDS


def test_train_rows(results):
    rows = [r for r in _rows(results / "r.json") if r["suite"] == "train"]
    zf = [r for r in rows if r["op"] == "zforcing"]
    assert {r["provider"] for r in zf} == {"torch", "torch+graph", "cudnn", "cuda"}
    for r in zf:
        if r["provider"] == "cuda":             # "auto" would not pick the CUDA recurrences: why
            assert r["status"] == "unavailable" and "'auto' picks torch for lstm, not cuda" in r["note"], r
        elif r["provider"] == "torch":
            assert r["status"] == "ok" and r["ms"] > 0 and r["rel_err"] == 0.0, r
        elif r["provider"] == "cudnn":             # torch's LSTM op for the backward network: same loss
            assert r["status"] == "ok" and r["ms"] > 0 and r["rel_err"] < 1e-5, r
        else:                                   # CUDA graphs: a row saying why not, no crash
            assert r["status"] == "skipped" and "CUDA" in r["note"], r
    assert len({r["case"] for r in zf}) == 2
    others = bench_train_step.model_names("others")
    for name in others:                         # python/{vrnn,srnn,storn}.py where present
        mine = [r for r in rows if r["op"] == name and r["provider"] == "torch"]
        assert mine and all(r["status"] == "ok" for r in mine), (name, mine)


def test_trainer_rows(results):
    rows = [r for r in _rows(results / "r.json") if r["suite"] == "trainer"]
    assert {(r["case"], r["provider"]) for r in rows} == {
        (c["label"], p) for c in bench_trainer.SMOKE_CASES.values() for p in ("torch", "torch+cuda-graph", "torch+compile")}
    for r in rows:
        if r["provider"] == "torch":
            assert r["status"] == "ok" and r["ms"] > 0 and r["n"] == 2 and r["rel_err"] == 0.0, r
            assert math.isfinite(float(r["note"].rsplit("mean loss ", 1)[1])), r
        elif r["provider"] == "torch+compile":  # --compile aot_eager: the eager run's losses
            assert r["status"] == "ok" and r["ms"] > 0 and r["n"] == 2 and r["rel_err"] < 1e-5, r
        else:                                   # --cuda-graph on the CPU: a row saying why not
            assert r["status"] == "skipped" and "CUDA" in r["note"], r


def test_tune_rows(results):
    rows = [r for r in _rows(results / "r.json") if r["suite"] == "tune"]
    tiles = ("persistent-32x16", "persistent-16x16")
    both = tiles + ("stepwise", "persistent-32x16-k64", "persistent-32x16-k128") + tuple(
        f"{t}-s{n}" for t in tiles for n in (2, 3)) + (
        "persistent-32x16-wt", "persistent-32x16-s3-wt", "persistent-32x16-k128-wt", "stepwise-wt")  # W^T forward
    assert {(r["op"], r["provider"]) for r in rows} == {(op, p) for op in ("lstm", "zforcing_chain") for p in both}
    # the first three providers of each case before the rest of any (a budget drops the tail)
    assert [r["provider"] for r in rows[:6]] == ["persistent-32x16", "persistent-32x16-s3", "persistent-32x16-k128"] * 2
    assert tune_tiles.parse_provider("persistent-32x16-s3-k128-wt") == ((32, 16), 3, 128, True)
    assert tune_tiles.parse_provider("stepwise") == (None, None, None, False)
    for r in rows:   # in the interpreter every tile is one program per batch block: same numbers
        assert r["status"] == "ok" and r["ms"] > 0 and r["rel_err"] < 1e-4, (r["case"], r["provider"], r["note"])


def test_plot_and_summary(results):
    pytest.importorskip("matplotlib")
    from benchmarks import plot, summarize
    png = plot.plot(results / "r.json")
    assert png == results / "r.png" and png.stat().st_size > 1000
    text = summarize.summarize(results / "r.json", results / "missing.log")
    assert "## Targets" in text and "lstm T5 B3 I7 H8" in text and "no log at" in text
    assert "trainer tiny-gaussian T5 B3" in text and "## Persistent tiles" in text


def test_summary_prefers_a_later_successful_row():
    """A second device call reruns a stage the first cut short: the table shows its result."""
    from benchmarks import summarize
    row = dict(suite="ops", case="c", dtype="float32", mode="fwd", provider="compile")
    rows = [dict(row, status="skipped"), dict(row, status="ok", ms=2.5), dict(row, provider="torch", status="error")]
    line = summarize.ops_table(rows, ("fwd",))[-1]
    assert "2.500" in line and "skipped" not in line and "error" in line, line


def test_ops_interpreted_kernel(tmp_path):
    """One tiny op through backend='triton' under TRITON_INTERPRET=1 (what conftest sets on a CPU)."""
    if os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 on a CPU-only machine")
    pytest.importorskip("triton")
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "t", "--fresh", "--quiet",
            "--providers", "triton", "--ops", "reparameterize"]
    assert bench_ops.main(argv) == 0
    rows = _rows(tmp_path / "t.json")
    assert len(rows) == 2 and all(r["status"] == "ok" and r["provider"] == "triton" for r in rows), rows


def test_ops_coverage_names_what_each_case_lacks():
    """Issue 3's checklist: a case is covered by any ok row of each kind (compile-step counts as
    torch.compile); failed / skipped rows and other dtypes or modes do not count."""
    from benchmarks import summarize
    def row(case, provider, status="ok", dtype="float32", mode="fwd+bwd"):
        return dict(suite="ops", case=case, dtype=dtype, mode=mode, provider=provider, status=status, ms=1.0)
    lstm, kl = "lstm T40 B32 I512 H1024", "gaussian_kl 40x32x256"
    rows = [row(lstm, "torch"), row(lstm, "compile", status="skipped"), row(lstm, "compile-step"),
            row(lstm, "triton-stepwise"), row(lstm, "cudnn", status="error"),
            row(kl, "torch"), row(kl, "compile"), row(kl, "triton", dtype="bfloat16"), row(kl, "triton", mode="fwd")]
    lines = summarize.ops_coverage(rows, ops=("lstm", "gaussian_kl"))
    assert f"- {lstm}: no cuDNN" in lines and f"- {kl}: no triton" in lines, lines
    rows += [row(lstm, "cudnn"), row(kl, "triton")]
    # the cases no stage reached (a killed stage writes no row for them) are named too
    others = [f"{c.op} {c.label}" for c in bench_ops.cases(False) if c.op in ("lstm", "gaussian_kl")
              and f"{c.op} {c.label}" not in (lstm, kl)]
    assert others and summarize.ops_coverage(rows, ops=("lstm", "gaussian_kl"))[3:] == [
        f"- {case}: no eager, torch.compile, triton" + (", cuDNN" if case.startswith("lstm") else "") for case in others]
    rows += [row(case, p) for case in others for p in ("torch", "compile", "triton", "cudnn")]
    assert summarize.ops_coverage(rows, ops=("lstm", "gaussian_kl"))[-1] == "- complete"
    # an op no stage wrote a row of is missing, not left out: by default every op of bench_ops
    assert summarize.COVERAGE_OPS == bench_ops.OPS
    lines = summarize.ops_coverage(rows)
    assert "- leaky_clamp: no float32 fwd+bwd row at all" in lines and len(lines) == 3 + len(bench_ops.OPS) - 2, lines


def test_a_row_that_did_not_succeed_never_hides_an_earlier_good_one():
    """plot.latest (the rows summarize.py and the chart read): the last row per measurement, but a
    later skipped / cut-off / failed repeat (ops-cuda's cudnn rows on a short budget) leaves the
    earlier successful one in place; a later success replaces it."""
    from benchmarks import plot, summarize
    row = dict(suite="ops", case="lstm T784 B32 I64 H512", dtype="float32", mode="fwd+bwd", provider="cudnn")
    first, repeat = dict(row, status="ok", ms=35.0), dict(row, status="skipped", ms=None)
    assert plot.latest([first, repeat]) == [first]
    assert plot.latest([repeat, first]) == [first]
    better = dict(row, status="ok", ms=34.0)
    assert plot.latest([first, repeat, better]) == [better]
    assert plot.latest([repeat, dict(row, status="incomplete")]) == [dict(row, status="incomplete")]
    assert summarize._get(plot.latest([first, repeat]), "ops", row["case"], "fwd+bwd", "cudnn", "float32") == first


def test_compile_step_rows_compile_the_step_not_the_loop(tmp_path):
    """compile-step: torch.compile of the recurrence's one-step reference in a Python loop, for
    the recurrences only (the small ops have no step), right values, one compiled graph per
    distinct step signature (the LSTM's first step has h0 without grad), no graph breaks."""
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "s", "--fresh", "--quiet",
            "--providers", "compile-step", "--ops", "lstm,reparameterize", "--modes", "fwd+bwd"]
    assert bench_ops.main(argv) == 0
    rows = _rows(tmp_path / "s.json")
    assert [r["op"] for r in rows] == ["lstm"], rows
    (row,) = rows
    assert row["status"] == "ok" and row["rel_err"] < 1e-5, row
    assert "compiled step" in row["note"] and "2 graph(s), 0 graph break(s)" in row["note"], row


def test_triton_compile_rows_compile_the_step_with_the_fused_ops_in_it(tmp_path):
    """triton+compile: torch.compile of the Triton step (the interpreter's here, inductor's C++
    for the rest: ~18 s), its first loss that of the reference; every fused op is a custom op in
    the graph: one graph, no break. (On a GPU machine the CPU tensors cannot take Triton: the
    device check's train-compile stage measures the row there.)"""
    if os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 on a CPU-only machine")
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "c", "--fresh", "--quiet",
            "--providers", "triton+compile", "--cases", "timit"]
    assert bench_train_step.main(argv) == 0
    (row,) = _rows(tmp_path / "c.json")
    assert row["status"] == "ok" and row["rel_err"] < 1e-5, row
    graphs, breaks = map(int, re.search(r"dynamo: (\d+) graph\(s\), (\d+) graph break", row["note"]).groups())
    assert (graphs, breaks) == (1, 0), row


def test_step_flops_split_the_timit_step():
    """step_flops.py on the meta device: the backward LSTM's share is its formula (with the
    embedding folded into it, the input projection of the D = 200 data forward and its weight
    gradient, no data gradient; the recurrent product forward and both gradients, 3 x 2 T B 4H H,
    less the product with h0 = 0 that the reference skips: 1%), and the parts add up to the step."""
    f = step_flops.step_flops("timit")
    T, B, D, H = 40, 32, 200, 1024
    assert f["lstm"] == pytest.approx(2 * 2 * T * B * 4 * H * D + 3 * 2 * T * B * 4 * H * H, rel=0.01)
    assert f["lstm"] + f["zforcing_chain"] + f["rest"] == f["step"] > f["fwd"] > 0
    assert 0 < f["rest"] < f["step"] / 2
    # the README's floor: 1.94 ms at the IEEE float32 peak, the first column
    assert "| **whole step** | 129.9 | 1.94 ms |" in "\n".join(step_flops.table("timit", f))
    # the floor summarize.py's targets table quotes
    from benchmarks import summarize
    ieee = step_flops.PEAK_TFLOPS["IEEE float32"] * 1e12
    assert summarize.IEEE_FLOOR_MS[summarize.TIMIT] == round(f["step"] / ieee * 1e3, 2)


def test_budget_and_unavailable_rows(tmp_path):
    """A used-up budget skips rows; a backend that cannot run is a row, not a crash."""
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "b", "--fresh", "--quiet",
            "--ops", "gaussian_kl", "--budget-s", "0"]
    assert bench_ops.main(argv) == 0
    rows = _rows(tmp_path / "b.json")
    assert rows and all(r["status"] == "skipped" and "budget" in r["note"] for r in rows)


def test_budget_ends_at_zf_budget_end_if_sooner(monkeypatch):
    """device_check.sh passes each stage's budget also as an end time (ZF_BUDGET_END): a script's
    imports and setup come off its budget; without a budget the end time means nothing."""
    monkeypatch.delenv("ZF_BUDGET_END", raising=False)
    assert not common.Budget(100).exhausted() and common.Budget(0).exhausted()
    monkeypatch.setenv("ZF_BUDGET_END", str(time.time() - 1))
    assert common.Budget(100).exhausted() and common.Budget(None).left() == float("inf")
    monkeypatch.setenv("ZF_BUDGET_END", str(time.time() + 50))
    assert 40 < common.Budget(100).left() <= 50 and common.Budget(10).left() <= 10


def test_compile_step_plans_no_unrolled_loop(tmp_path):
    """--compile step (device_check's ops-compile): the recurrences get compile-step rows only, the
    other ops compile rows; their unrolled loops wait for ops-compile-loops (plain --compile short)."""
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--quiet", "--budget-s", "0",
            "--providers", "compile,compile-step", "--ops", "lstm,lstm_cell,reparameterize", "--dtypes", "float32"]
    assert bench_ops.main(argv + ["--name", "step", "--compile", "step"]) == 0
    planned = {(r["op"], r["provider"]) for r in _rows(tmp_path / "step.json")}
    assert planned == {("lstm", "compile-step"), ("lstm_cell", "compile"), ("reparameterize", "compile")}, planned
    assert bench_ops.main(argv + ["--name", "short"]) == 0
    assert ("lstm", "compile") in {(r["op"], r["provider"]) for r in _rows(tmp_path / "short.json")}


def test_refuses_cpu_timings_in_results_dir():
    env = common.environment(torch.device("cpu"), smoke=True)
    with pytest.raises(SystemExit, match="refusing"):
        common.Results(common.RESULTS_DIR, "x", env, "ops")
    assert not (common.RESULTS_DIR / "x.json").exists()


def test_time_fn_and_quantiles():
    t = common.time_fn(lambda: torch.ones(3).sum(), torch.device("cpu"), host_reps=3)
    assert t.method == "perf_counter" and t.n == 3 and 0 < t.p20 <= t.ms <= t.p80
    assert common._quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert common.rel_err([torch.ones(3)], [torch.ones(3)]) == 0.0
    assert math.isnan(common.rel_err([torch.full((3,), math.nan)], [torch.ones(3)]))


def test_device_check_script_syntax():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    r = subprocess.run([bash, "-n", str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_device_check_dry_run_parses_every_stage(tmp_path):
    """ZF_DRY_RUN=1: every stage's command as written (benchmarks with --smoke --device cpu
    --budget-s 0, pytest --collect-only): a misspelt flag, provider or dtype in device_check.sh
    fails here instead of costing a device session (~1.5 min on 2 cores)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = dict(os.environ, ZF_DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("ZF_STAGES", None)
    r = subprocess.run([bash, str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=900)
    script = (REPO / "benchmarks" / "device_check.sh").read_text()
    n_stages = len(re.search(r'^ALL_STAGES="([^"]+)"', script, re.M).group(1).split(","))
    assert n_stages >= 20
    stages = r.stdout[r.stdout.rindex("== stages"):].splitlines()[1:]
    assert r.returncode == 0 and len(stages) == n_stages, r.stdout[-3000:]
    assert all(line.strip().split(":")[1].startswith(" rc=0") for line in stages), "\n".join(stages)
    rows = _rows(tmp_path / "results.json")
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert {r["suite"] for r in rows} >= {"ops", "train", "tune", "kernels", "trainer"}
    status = dict(line.split() for line in (tmp_path / "stages.txt").read_text().splitlines())
    assert len(status) == n_stages and set(status.values()) == {"ok"}, status
    # the device tool returns at most 8 files from $OUT: the rest travel in one archive
    back = sorted(p.name for p in tmp_path.iterdir())
    assert len(back) <= 8 and "device_check_files.tar.gz" in back, back
    with tarfile.open(tmp_path / "device_check_files.tar.gz") as tar:
        packed = {Path(n).name for n in tar.getnames()}
    assert {"stages.txt", "results.json", "bench.log", "tests.log", "cuda_tests.log"} <= packed, packed
    # a second call continues with what the first skipped or cut short (ZF_STAGES=rest)
    for ext in ("json", "csv"):
        shutil.copy(tmp_path / f"results.{ext}", tmp_path / f"seed.{ext}")
    verdicts = {"tune": "skipped", "kernels": "timed-out", "ops": "failed"}
    (tmp_path / "seed_stages.txt").write_text("".join(f"{s} {verdicts.get(s, 'ok')}\n" for s in status))
    out2 = tmp_path / "second"
    env.update(ZF_STAGES="rest", ZF_SEED_RESULTS=str(tmp_path / "seed"), OUT=str(out2))
    r = subprocess.run([bash, str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=900)
    assert r.returncode == 0 and "ZF_STAGES=rest: tune,kernels" in r.stdout, r.stdout[-3000:]
    ran = [line.split()[0] for line in (out2 / "stages.txt").read_text().splitlines() if not line.endswith("not-selected")]
    assert ran == ["tune", "kernels"]
    assert len(_rows(out2 / "results.json")) > len(rows)      # appended to the seed's rows


def test_cuda_sanitize_cases_are_valid_calls_of_the_ops(capsys):
    """benchmarks/cuda_sanitize.py's cases (run under compute-sanitizer after failing GPU tests)
    are valid calls: run here with backend "torch" on the CPU; its arguments are checked."""
    from benchmarks import cuda_sanitize
    assert cuda_sanitize.run_child("cpu", "torch") == 0
    assert capsys.readouterr().out.count("\nok ") + 1 == len(cuda_sanitize.cases()) == 18
    assert cuda_sanitize.main(["--smoke", "--device", "cpu", "--tools", "memcheck,racecheck"]) == 0
    assert capsys.readouterr().out.count("--tool=") == 2
    with pytest.raises(SystemExit):
        cuda_sanitize.main(["--tools", "memchek"])
    assert "--tools: expected names from memcheck,racecheck,synccheck" in capsys.readouterr().err


def test_persistent_smoke_script_runs_and_agrees_on_cpu():
    """device_check.sh trusts this script's exit status to choose the LSTM schedule of the whole
    GPU session: check it runs (tiny shapes, interpreter) and reports agreement."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "persistent_smoke.py"), "--tiny"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[-1] == "ENV", r.stdout   # 2 lstm, 1 chain, 1 cond_ln chain
    assert all(line.endswith(": ok") and "schedule persistent" in line for line in lines[:4]), r.stdout
    assert lines[3].startswith("zforcing_chain_ln "), r.stdout


class _FakeCudaTensor:
    """What the persistent-grid choice reads of a tensor: is_cuda, dtype, device."""
    is_cuda = True
    dtype = torch.float32
    device = torch.device("cuda", 0)


@pytest.mark.parametrize("sms", [114, 132])   # H100 PCIe; H100 SXM / H200
def test_persistent_smoke_shapes_get_persistent_grids_on_a_gpu(monkeypatch, sms):
    """persistent_smoke.py (and the GPU tests) force schedule="persistent" at these shapes:
    each must fit a grid of one program per SM, else they raise instead of testing."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import persistent_smoke
    from zf_kernels.ops.lstm import triton as lt
    from zf_kernels.ops.recurrence import triton as ct
    monkeypatch.setattr(lt, "num_sms", lambda t: sms)
    monkeypatch.setattr(ct, "num_sms", lambda t: sms)
    ref = _FakeCudaTensor()
    for T, B, I, H, _ in persistent_smoke.LSTM_CASES:
        cfg, why = lt._persistent_config(B, H, ref)
        assert cfg is not None, (B, H, why)
    for T, B, H, M, Z, G in persistent_smoke.CHAIN_CASES:
        cfg, why = ct._persistent_config(B, {"H": H, "M": M, "Z": Z}, torch.float32, ref)
        assert cfg is not None, (B, H, why)
    for T, B, H, M, Z, G in persistent_smoke.CHAIN_LN_CASES:   # its stages' widths include G
        cfg, why = ct._persistent_config(B, {"H": H, "M": M, "Z": Z, "G": G}, torch.float32, ref)
        assert cfg is not None, (B, H, why)
    # and a shape that cannot fit says why
    cfg, why = lt._persistent_config(128, 4096, ref)
    assert cfg is None and f"{sms} SMs" in why


def test_kernel_count_rows(results):
    rows = [r for r in _rows(results / "r.json") if r["suite"] == "kernels"]
    assert {r["provider"] for r in rows} == {"torch", "triton", "torch+graph"}
    for r in rows:                  # no GPU: a row saying why, never a timing
        assert r["status"] == "skipped" and r.get("ms") is None and r.get("kernels") is None, r
        assert ("GPU only" if r["provider"] != "torch+graph" else "CUDA") in r["note"], r


def test_count_kernels_is_none_on_a_cpu():
    assert common.count_kernels(lambda: torch.ones(3) + 1, torch.device("cpu")) == (None, "kernels are counted on a GPU only")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_count_kernels_counts_each_launch_and_no_copies():
    x = torch.ones(1000, device="cuda")

    def three_adds_and_a_copy():
        y = x + 1
        y = y * 2
        y.add_(3)
        x.cpu()                                   # a copy: not a kernel
    n, where = common.count_kernels(three_adds_and_a_copy, x.device)
    assert n == 3 and " ms (" in where and "%)" in where, (n, where)


def test_kernel_time_breakdown_sums_by_name_and_ranks():
    got = common.kernel_time_breakdown([("a", 100.0), ("b", 500.0), ("a", 300.0), ("c", 100.0)], top=2)
    assert got == "b 0.500 ms (50%), a 0.400 ms (40%)"


def test_own_state_counts_parameters_gradients_and_optimizer_state():
    """The training step's peak_mb counts the provider's own state (not tensors other
    providers left in the process): parameters, as many gradient values, Adam's two moments
    and its step counters."""
    m = torch.nn.Linear(10, 10)                       # 110 float32 parameters
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 10)).sum().backward()
    opt.step()
    expected = (4 * 110 * 4 + 2 * 4) / common.MB       # params, grads, exp_avg, exp_avg_sq; 2 float32 steps
    assert bench_train_step.own_state_mb(m, opt) == pytest.approx(expected)


def test_rows_with_a_wrong_result_are_marked_mismatch():
    assert common.accuracy_status("float32", 3e-7) == ("ok", "")
    assert common.accuracy_status("float32", None) == ("ok", "")          # not checked
    status, why = common.accuracy_status("float32", 0.5)
    assert status == "mismatch" and "rel_err 5.0e-01 > 0.01 for float32" in why
    assert common.accuracy_status("bfloat16", 0.2)[0] == "ok"
    assert common.accuracy_status("bfloat16", math.nan)[0] == "mismatch"
    # a row's error is over whole tensors: tune_tiles compared a bias gradient element by element
    # (1.0 here, where an error of 1e-6 on the smallest of four elements is 2.7e-7 of the tensor)
    ref = [torch.tensor([1.0, 2.0, 3.0, 1e-6], dtype=torch.float64)]
    got = [ref[0] + torch.tensor([0, 0, 0, 1e-6], dtype=torch.float64)]
    assert common.case_rel_err(ref, ref, got, ref) == pytest.approx(2.67e-7, rel=1e-2)
    assert math.isnan(common.case_rel_err(ref, ref, [ref[0] * math.nan], ref))     # NaN after a number
    assert common.case_rel_err(got, ref) == pytest.approx(2.67e-7, rel=1e-2)


def test_training_step_rows_with_a_wrong_loss_are_marked_mismatch(tmp_path, monkeypatch):
    """bench_train_step and bench_trainer hold each provider's loss to the reference's like the
    ops rows (a provider computing something else was an ok row, and the targets counted it)."""
    seen = []

    def wrong_for_cudnn(dtype_name, err):
        seen.append(dtype_name)
        return ("mismatch", "stand-in verdict") if len(seen) == 2 else ("ok", "")
    monkeypatch.setattr(common, "accuracy_status", wrong_for_cudnn)
    base = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "m", "--quiet"]
    assert bench_train_step.main(base + ["--fresh", "--providers", "torch,cudnn", "--cases", "timit"]) == 0
    rows = _rows(tmp_path / "m.json")
    assert [(r["provider"], r["status"]) for r in rows] == [("torch", "ok"), ("cudnn", "mismatch")], rows
    assert "stand-in verdict" in rows[1]["note"] and seen == ["float32", "float32"]
    seen.clear()
    assert bench_trainer.main(base + ["--fresh", "--providers", "torch", "--cases", "timit", "--steps", "1",
                                      "--warmup-steps", "1"]) == 0
    assert seen == ["float32"]


def test_targets_compare_the_bfloat16_lstm_with_cudnn_in_bfloat16():
    from benchmarks import summarize
    row = dict(suite="ops", case=summarize.LSTM_T40, mode="fwd+bwd", status="ok")
    rows = [dict(row, provider="cudnn", dtype="bfloat16", ms=2.0), dict(row, provider="cuda", dtype="bfloat16", ms=1.0),
            dict(row, provider="cudnn", dtype="float32", ms=3.0)]
    lines = [line for line in summarize.targets(rows, "NVIDIA H200") if "ops.lstm" in line and "T40" in line]
    bf16 = [line for line in lines if "bfloat16" in line]
    assert len(bf16) == 1 and "cuda 1.000 / cuDNN 2.000" in bf16[0] and "2.00x cuDNN's speed" in bf16[0], lines


def test_variant_table_puts_the_builds_side_by_side(tmp_path):
    """device_check's variant stages: the same rows from several builds, each with variant / base."""
    import json

    from benchmarks import summarize
    row = dict(suite="ops", case="lstm T40", dtype="bfloat16", mode="fwd+bwd", provider="cuda", status="ok")

    def write(name, rows):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return tmp_path / name

    base = write("results_variants_default.json", [dict(row, ms=1.0), dict(row, dtype="tf32", ms=2.0)])
    v1 = write("results_variant_batch1.json", [dict(row, ms=1.5), dict(row, dtype="tf32", status="error")])
    v2 = write("results_variant_no-sync.json", [dict(row, ms=0.25)])
    lines = summarize.ab_table(base, [v1, v2, tmp_path / "results_variant_gone.json"])
    assert "missing: results_variant_gone.json" in lines[1], lines[1]
    assert "batch1" in lines[3] and "no-sync" in lines[3], lines[3]
    bf16 = next(line for line in lines if "bfloat16" in line)
    tf32 = next(line for line in lines if " tf32 " in line)
    assert "1.000" in bf16 and "1.500 (1.50)" in bf16 and "0.250 (0.25)" in bf16, bf16
    assert "2.000" in tf32 and "error" in tf32 and tf32.rstrip().endswith("-"), tf32
    assert "no " in summarize.ab_table(tmp_path / "nope.json", [v1])[1]


def test_unpack_device_run_names_the_files_by_card_and_date(tmp_path):
    """benchmarks/unpack_device_run.py: device_check's archive -> <gpu>_<date>* under the results
    folder, a second run of the day beside it, never over it; no GPU in the record: refused."""
    from benchmarks import unpack_device_run as unpack
    run = tmp_path / "run"
    run.mkdir()
    env = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-28T01:02:03Z"}
    (run / "results.json").write_text(json.dumps({"environment": env, "rows": []}))
    for name in ("results.csv", "summary.md", "stages.txt", "bench.log", "cuda_tests.log",
                 "results_variant_no-sync.json", "results_variants_default.csv", "scratch.tmp"):
        (run / name).write_text(name)
    back = tmp_path / "back"
    back.mkdir()
    with tarfile.open(back / unpack.ARCHIVE, "w:gz") as tar:
        tar.add(run, arcname=".")
    dest = tmp_path / "results"
    first = [p.name for p in unpack.unpack(back, dest)]
    assert first == sorted(["h100_2026-11-28.json", "h100_2026-11-28.csv", "h100_2026-11-28.md",
                            "h100_2026-11-28_stages.txt", "h100_2026-11-28_bench.log",
                            "h100_2026-11-28_cuda_tests.log", "h100_2026-11-28_variant_no-sync.json",
                            "h100_2026-11-28_variants_default.csv"])
    assert (dest / "h100_2026-11-28_stages.txt").read_text() == "stages.txt"
    second = [p.name for p in unpack.unpack(back / unpack.ARCHIVE, dest)]
    assert "h100_2026-11-28_2.json" in second and len(second) == len(first)
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        unpack.unpack(back, dest, base="h100_2026-11-28")
    env["device"] = "cpu"
    (run / "results.json").write_text(json.dumps({"environment": env, "rows": []}))
    with tarfile.open(back / unpack.ARCHIVE, "w:gz") as tar:
        tar.add(run, arcname=".")
    with pytest.raises(SystemExit, match="names no GPU run"):
        unpack.unpack(back, dest)
    assert unpack.card("NVIDIA H200") == "h200" and unpack.card("Tesla V100-SXM2-16GB") == "v100"


def test_ops_plan_puts_every_case_before_any_stepwise_row(tmp_path):
    """bench_ops runs, per dtype, every case's baselines and default Triton rows before any
    triton-stepwise row: a budget that runs out cuts the stepwise comparisons, not the rows issue
    3's table needs (2026-11-27's GPU run lost chain_ln's Triton rows behind stepwise ones)."""
    assert bench_ops.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "r", "--quiet",
                           "--budget-s", "0", "--providers", "torch,triton,triton-stepwise",
                           "--dtypes", "float32"]) == 0
    providers = [r["provider"] for r in _rows(tmp_path / "r.json")]
    first_stepwise = providers.index("triton-stepwise")
    assert "triton-stepwise" not in providers[:first_stepwise]
    assert not {"torch", "triton"} & set(providers[first_stepwise:]), providers


def test_tests_summary_counts_what_finished_in_a_log_cut_off(tmp_path):
    """device_check runs the GPU tests with -v: a stage cut off by its limit has no pytest summary
    line, and summarize.py says so and counts the outcomes printed so far; a whole log gives its
    summary line and the failures."""
    from benchmarks import summarize
    cut = tmp_path / "tests.log"
    cut.write_text("\n".join(["[gw0] [ 10%] PASSED tests/test_a.py::test_x", "[gw1] [ 20%] PASSED tests/test_a.py::test_y",
                              "[gw0] [ 30%] FAILED tests/test_b.py::test_z", "[gw2] [ 40%] SKIPPED tests/test_c.py::test_w",
                              "[gw1] [ 50%] PASSED tests/test_d.py::test_v"]))
    text = "\n".join(summarize.tests_summary(cut))
    assert "no pytest summary line" in text and "finished before that: 3 passed, 1 failed, 1 skipped" in text
    whole = tmp_path / "whole.log"
    whole.write_text(cut.read_text() + "\nFAILED tests/test_b.py::test_z - AssertionError\n"
                     "=========== 1 failed, 3 passed, 1 skipped in 9.1s ===========\n")
    text = "\n".join(summarize.tests_summary(whole))
    assert "1 failed, 3 passed, 1 skipped in 9.1s" in text and "FAILED tests/test_b.py::test_z" in text
    assert "finished before that" not in text


def test_summary_verdicts():
    """summarize.targets: the fastest successful float32-mode row of ours against each target
    ("met" only at or under it), bfloat16 rows on a line of their own, a wrong result (status
    mismatch) never counted, the strongest baseline of any float32 mode (tf32 too) and the speedup
    as baseline / ours; tf32x3 LSTM rows against cuDNN's IEEE float32 row."""
    from benchmarks import summarize
    T40, TIMIT, MNIST = summarize.LSTM_T40, summarize.TIMIT, summarize.MNIST

    def row(case, provider, ms, dtype="float32", status="ok", suite="train", mode="step"):
        return dict(suite=suite, case=case, mode=mode, provider=provider, dtype=dtype, ms=ms, status=status)
    rows = [row(TIMIT, "triton", 2.5), row(TIMIT, "triton+graph", 1.8), row(TIMIT, "cuda", 1.0, "bfloat16"),
            row(TIMIT, "triton", 0.5, "tf32", status="mismatch"), row(TIMIT, "torch", 87.0),
            row(TIMIT, "torch+graph", 9.0, "tf32"), row(TIMIT, "cudnn+graph", 10.0),
            row(TIMIT, "torch+graph", 4.0, status="error"),
            row(MNIST, "triton", 45.0), row(MNIST, "torch", 1531.0),
            row(T40, "triton", 2.0, "tf32x3", suite="ops", mode="fwd+bwd"),
            row(T40, "cudnn", 3.5, suite="ops", mode="fwd+bwd")]
    lines = summarize.targets(rows, "NVIDIA H200")
    assert f"| train step {TIMIT} <= 2 ms | 1.800 ms | 0.90x the target (triton+graph, float32) - met |" in lines
    assert f"| train step {TIMIT} <= 2 ms, bfloat16 model | 1.000 ms | 0.50x (cuda) |" in lines
    assert (f"| train step {TIMIT} vs the strongest baseline | 1.800 / 9.000 ms (torch+graph, tf32) | "
            "5.00x its speed - faster |") in lines
    assert f"| train step {MNIST} <= 40 ms | 45.000 ms | 1.12x the target (triton, float32) |" in lines
    assert (f"| ops.lstm fwd+bwd {T40[5:]} tf32x3 >= cuDNN | triton 2.000 / cuDNN 3.500 ms | "
            "1.75x cuDNN's speed (need >= 1, aim 2) - met |") in lines, lines


def test_bench_median_quantiles_and_rel_err():
    """common: a timing is the median of the repetitions (an outlier moves neither it nor p20)
    with linearly interpolated p20 / p80; rel_err is the worst output's, and outputs of the wrong
    shape are NaN, never broadcast into agreement."""
    t = common._summary([100.0, 1.0, 3.0, 2.0], "x")
    assert (t.ms, t.p20, t.p80, t.n) == (2.5, pytest.approx(1.6), pytest.approx(41.8), 4)
    ref = torch.ones(4)
    assert common.rel_err([ref * 1.5, ref], [ref, ref]) == pytest.approx(0.5)
    assert common.rel_err([ref, ref * 1.5], [ref, ref]) == pytest.approx(0.5)
    assert math.isnan(common.rel_err([torch.ones(4, 1)], [ref]))


def test_unpack_device_run_refuses_an_archive_without_results(tmp_path):
    """Every benchmark stage failed: the archive has logs but no results.json; say so."""
    from benchmarks import unpack_device_run as unpack
    (tmp_path / "bench.log").write_text("log")
    with tarfile.open(tmp_path / unpack.ARCHIVE, "w:gz") as tar:
        tar.add(tmp_path / "bench.log", arcname="bench.log")
    with pytest.raises(SystemExit, match="no results.json"):
        unpack.unpack(tmp_path, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_plot_draws_successful_rows_with_their_spread(tmp_path, monkeypatch):
    """plot.py: a bar per successful row, its error bar from p20 to p80; a failed row (a wrong
    result has a time too) gets no bar."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from benchmarks import plot
    row = dict(suite="ops", case="c", dtype="float32", mode="fwd+bwd")
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rows": [dict(row, provider="torch", status="ok", ms=2.0, ms_p20=1.5, ms_p80=3.0),
                                         dict(row, provider="triton", status="mismatch", ms=0.5)]}))
    bars, real = [], matplotlib.axes.Axes.bar

    def spy(self, x, height, *a, **k):
        bars.append((k.get("label"), list(height), [list(e) for e in k["yerr"]]))
        return real(self, x, height, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    plot.plot(path)
    assert bars == [("torch", [2.0], [[0.5], [1.0]])]


def test_design_cases_are_the_shapes_their_labels_and_the_presets_name():
    """The benchmarks' cases are the shapes their labels (and the README's targets) name: each
    label's T / B / I / H / M / Z / G and AxBxC sizes are the case's own, the step benchmarks'
    TIMIT and SeqMNIST models are the presets' (the authors' sizes), and exactly the 784-step
    cases are 'long' (torch.compile would unroll their loops: skipped unless --compile all)."""
    from zf_kernels.training.presets import PRESETS

    def label_dims(label):
        return {m[1]: int(m[2]) for m in re.finditer(r"\b([TBIHMZG])(\d+)\b", label)}
    data = {"timit": (200, "gaussian"), "seqmnist": (1, "bernoulli")}
    for name, case in bench_train_step.CASES.items():
        preset, model = PRESETS[name], case["model"]
        assert label_dims(case["label"]) == {"T": case["T"], "B": case["B"]} and case["B"] == preset["batch_size"]
        assert {k: model[k] for k in ("emb_dim", "rnn_dim", "z_dim", "mlp_dim", "z_force")} == {
            k: preset[k] for k in ("emb_dim", "rnn_dim", "z_dim", "mlp_dim", "z_force")}, name
        assert (model["input_dim"], model["output_type"]) == data[name] and case["long"] == (case["T"] == 784)
    assert (bench_train_step.CASES["timit"]["T"], bench_train_step.CASES["seqmnist"]["T"]) == (40, 784)
    for name in ("timit", "seqmnist"):
        case, preset = bench_trainer.CASES[name], PRESETS[name]
        assert label_dims(case["label"]) == {"T": case["T"], "B": case["size"]["batch_size"]}
        assert case["size"] == {k: preset[k] for k in case["size"]}, name
        assert (case["D"], case["output"], case["T"], case["long"]) == (*data[name], bench_train_step.CASES[name]["T"],
                                                                        case["T"] == 784)
    for c in bench_ops.cases(smoke=False):
        if "T" in c.dims:
            assert label_dims(c.label) == c.dims and c.long == (c.dims["T"] == 784), c
        elif "shape" in c.dims:
            assert c.label == "x".join(map(str, c.dims["shape"])) and not c.long, c
        else:
            assert label_dims(c.label) == c.dims and not c.long, c
    labels = [f"{c.op} {c.label}" for c in bench_ops.cases(smoke=False)]
    from benchmarks import summarize
    assert summarize.LSTM_T40 in labels and summarize.LSTM_T784 in labels
    # the backward LSTM of the TIMIT model: input the embedding, hidden the recurrent width
    timit = PRESETS["timit"]
    assert summarize.LSTM_T40 == f"lstm T40 B{timit['batch_size']} I{timit['emb_dim']} H{timit['rnn_dim']}"


def test_a_provider_computing_something_else_is_caught(tmp_path, monkeypatch):
    """The check before the timing: a provider whose numbers are not the reference's shows it.
    bench_train_step: a cuDNN step from other weights has a first loss off the torch provider's,
    whether that provider ran before it or not (then one untimed reference forward);
    bench_ops: an op with the right outputs but wrong gradients is a 'mismatch' in fwd+bwd."""
    def perturbed(model):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.25)
    monkeypatch.setattr(bench_train_step, "use_cudnn_backward_lstm", perturbed)
    base = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--quiet", "--cases", "timit", "--fresh"]
    assert bench_train_step.main(base + ["--name", "both", "--providers", "torch,cudnn"]) == 0
    assert bench_train_step.main(base + ["--name", "alone", "--providers", "cudnn"]) == 0
    rows = {(name, r["provider"]): r for name in ("both", "alone") for r in _rows(tmp_path / f"{name}.json")}
    assert rows["both", "torch"]["rel_err"] == 0.0
    assert rows["both", "cudnn"]["rel_err"] > 1e-3 and rows["alone", "cudnn"]["rel_err"] > 1e-3, rows
    assert rows["both", "cudnn"]["rel_err"] == pytest.approx(rows["alone", "cudnn"]["rel_err"], rel=1e-5)

    class DoubledGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g
    real_caller = bench_ops.caller

    def wrong_gradient(op, provider, inp):
        call = real_caller(op, provider, inp)
        return lambda: DoubledGradient.apply(call())
    monkeypatch.setattr(bench_ops, "caller", wrong_gradient)
    assert bench_ops.main(base[:-3] + ["--fresh", "--name", "ops", "--providers", "torch", "--ops", "leaky_clamp"]) == 0
    modes = {r["mode"]: r for r in _rows(tmp_path / "ops.json")}
    assert modes["fwd"]["status"] == "ok" and modes["fwd"]["rel_err"] < 1e-6, modes
    assert modes["fwd+bwd"]["status"] == "mismatch" and modes["fwd+bwd"]["rel_err"] == pytest.approx(1.0), modes


def test_float32_modes_set_and_restore_the_tf32_switches(monkeypatch):
    """benchmarks/common.py's float32 modes: "float32" is IEEE everywhere (cuDNN too, whose default
    allows TF32), "tf32" allows TF32 for torch and cuDNN, "tf32x3" keeps them IEEE and sets
    ZF_FP32_DOT for our kernels; each restores what was set before (a tf32 row's switch must
    not leak into the next float32 row); 16-bit dtypes change nothing."""
    import os
    monkeypatch.delenv("ZF_FP32_DOT", raising=False)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def state():
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, os.environ.get("ZF_FP32_DOT")
    try:
        for before in ((True, True), (False, False)):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
            for name, want in (("float32", (False, False, None)), ("tf32", (True, True, None)),
                               ("tf32x3", (False, False, "tf32x3")), ("bfloat16", (*before, None))):
                with common.matmul_precision(name):
                    assert state() == want, (name, before)
                assert state() == (*before, None), (name, before)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_trainer_row_loss_is_the_timed_steps_mean(tmp_path, monkeypatch):
    """bench_trainer's rel_err compares each provider's mean training loss over its timed steps
    (the metrics window flushed after the warm-up): the row's loss is the mean of the timed steps'
    losses, not of the warm-up's too."""
    from zf_kernels import train as train_mod
    losses, real_step = [], train_mod.Run.train_step

    def step(self, batch):
        before = self.window["loss"]
        out = real_step(self, batch)
        losses.append(self.window["loss"] - before)
        return out
    monkeypatch.setattr(train_mod.Run, "train_step", step)
    assert bench_trainer.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--name", "t", "--fresh",
                               "--quiet", "--providers", "torch", "--cases", "timit", "--steps", "2",
                               "--warmup-steps", "2"]) == 0
    (row,) = _rows(tmp_path / "t.json")
    assert len(losses) == 4 and len(set(losses)) == 4, losses
    assert float(row["note"].rsplit("mean loss ", 1)[1]) == pytest.approx(sum(losses[2:]) / 2, rel=1e-5), (row, losses)


def test_device_check_stage_selection_and_budgets(tmp_path):
    """device_check.sh's own arithmetic with a stand-in interpreter that only records its
    arguments and environment (~1 s): ZF_STAGES runs the stages named, whole names only
    (train-cuda is not train); each gets min(its limit, time left) and passes 20 s less (half,
    at 40 s or less) to the benchmark as ZF_BUDGET_S; ZF_STAGES=rest runs what the first call
    skipped or cut short, but not a cuda-tests that hung (the extension switched off instead)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    fake, log = tmp_path / "python", tmp_path / "calls.log"
    fake.write_text('#!/bin/sh\necho "budget=${ZF_BUDGET_S:-} noext=${ZF_KERNELS_NO_CUDA_EXT:-} '
                    'end=${ZF_BUDGET_END:-} sched=${ZF_LSTM_SCHEDULE:-} $*" >>"$FAKE_LOG"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZF_")}
    env.update(ZF_DRY_RUN="1", PYTHON=str(fake), FAKE_LOG=str(log), ZF_CHECK_SECONDS="100")

    def run(out, **extra):
        r = subprocess.run([bash, str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True,
                           env=dict(env, OUT=str(out), **extra), cwd=REPO, timeout=120)
        with tarfile.open(out / "device_check_files.tar.gz") as tar:
            stages = tar.extractfile("./stages.txt").read().decode()
        ran = [line.split()[0] for line in stages.splitlines() if not line.endswith(("not-selected", "not-needed"))]
        calls = [line.split() for line in log.read_text().splitlines() if " benchmarks/" in line or " -m pytest" in line]
        log.unlink()
        return r, ran, calls

    t0 = time.time()
    r, ran, calls = run(tmp_path / "first", ZF_STAGES="train-cuda,ops-cuda,tests")
    assert ran == ["tests", "ops-cuda", "train-cuda"], (ran, r.stdout[-2000:])
    assert [c[4] for c in calls] == ["-m", "benchmarks/bench_ops.py", "benchmarks/bench_train_step.py"], calls
    budgets = [int(c[0].removeprefix("budget=")) for c in calls]
    assert 75 <= budgets[0] <= 80 and budgets[1:] == [20, 25], budgets   # 100 s left - 20; 40 / 2; 45 - 20
    # the same budgets as end times, counted from each stage's start (before the script's imports)
    ends = [int(c[2].removeprefix("end=")) for c in calls]
    assert all(-1 <= end - budget - t0 <= 10 for end, budget in zip(ends, budgets)), (ends, budgets, t0)
    assert all(c[1] == "noext=" for c in calls)
    seed = tmp_path / "seed"
    all_stages = re.search(r'^ALL_STAGES="([^"]+)"', (REPO / "benchmarks" / "device_check.sh").read_text(),
                           re.M).group(1).split(",")
    verdicts = {"cuda-tests": "timed-out", "ops-cuda": "timed-out", "train-cuda": "skipped", "ops": "failed"}
    (tmp_path / "seed_stages.txt").write_text("".join(f"{s} {verdicts.get(s, 'ok')}\n" for s in all_stages)
                                              + "persistent-smoke failed ZF_LSTM_SCHEDULE=stepwise\n")
    r, ran, calls = run(tmp_path / "second", ZF_STAGES="rest", ZF_SEED_RESULTS=str(seed))
    assert ran == ["persistent-smoke", "ops-cuda", "train-cuda"], (ran, r.stdout[-2000:])
    assert "ZF_STAGES=rest: ops-cuda,train-cuda" in r.stdout and all(c[1] == "noext=1" for c in calls), calls
    # the first call's persistent-smoke failure holds for the second's benchmarks
    assert all(c[3] == "sched=stepwise" for c in calls), calls
    # a first call killed during train-tf32: that stage and every later one have no line, and rerun
    cut = all_stages.index("train-tf32")
    (tmp_path / "seed_stages.txt").write_text("".join(f"{s} ok\n" for s in all_stages[:cut]))
    r, ran, calls = run(tmp_path / "killed", ZF_STAGES="rest", ZF_SEED_RESULTS=str(seed))
    assert ran == all_stages[cut:] and all(c[3] == "sched=" for c in calls), (ran, r.stdout[-2000:])
    # a misspelt stage name: refused before anything runs (it ran nothing and said nothing)
    r = subprocess.run([bash, str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True,
                       env=dict(env, OUT=str(tmp_path / "typo"), ZF_STAGES="train,opps"), cwd=REPO, timeout=120)
    assert r.returncode == 2 and "ZF_STAGES: unknown stage 'opps'" in r.stderr and not log.exists(), r.stderr
    r, ran, calls = run(tmp_path / "late", ZF_STAGES="train-cuda", ZF_CHECK_SECONDS="20")
    assert ran == ["train-cuda"] and calls == [], (ran, calls)   # under 25 s left: skipped
    assert "train-cuda: skipped (time budget used up)" in r.stdout


def test_trainer_benchmark_trains_the_models_of_the_step_benchmark(tmp_path):
    """bench_trainer's rows are the trainer's overhead over bench_train_step's only if both train
    the same model: the trainer's TIMIT case had z_force on (3% less matrix work per step)."""
    from zf_kernels import ZForcing
    for smoke in (False, True):
        trainer_cases = bench_trainer.SMOKE_CASES if smoke else bench_trainer.CASES
        step_cases = bench_train_step.SMOKE_CASES if smoke else bench_train_step.CASES
        for name in ("timit", "seqmnist"):
            case = trainer_cases[name]
            if smoke:   # a whole Run only at the small sizes
                run = bench_trainer.build_run(case, "torch", torch.device("cpu"),
                                              bench_trainer.make_data(case, 1), tmp_path / f"{name}")
                config = run.model.config
            else:
                size = {k: v for k, v in case["size"].items() if k != "batch_size"}
                config = ZForcing(case["D"], case["output"], **size).config
            assert config == ZForcing(**step_cases[name]["model"]).config, (name, smoke)
