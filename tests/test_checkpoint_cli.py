"""The commands that start from a trainer checkpoint: ``python -m zf_kernels.evaluate`` (its
bounds on a split of its data set, by default the numbers of the run's results.json) and
``python -m zf_kernels.sample`` (sequences from its prior, by default the run's own samples, or
completions of the data's sequences with ``--prefix``);
clear errors for bad input."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from _helpers import quiet
from zf_kernels import evaluate as evaluate_mod
from zf_kernels import sample as sample_mod
from zf_kernels import train as train_mod
from zf_kernels.training.presets import make_config

SMALL = dict(emb_dim=16, rnn_dim=24, z_dim=4, mlp_dim=16, batch_size=16, train_limit=96, eval_limit=24,
             iwae_k=4, eval_batch_size=10, num_samples=3, progress=False, checkpoint_every=5, time_budget=None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    train_mod.train(make_config("synthetic", out=str(out), max_steps=8, **SMALL), log=quiet)
    return out


def _evaluate(capsys, *argv):
    rc = evaluate_mod.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_defaults_give_the_numbers_of_the_runs_results(run_dir, capsys, tmp_path):
    """The run directory's best.pt on test, with the run's seed, batch size, limit and k: what
    the trainer's final evaluation wrote; --json writes the printed object."""
    rc, got, _ = _evaluate(capsys, run_dir, "--json", tmp_path / "r.json")
    assert rc == 0
    want = json.loads((run_dir / "results.json").read_text())["test"]
    assert got["checkpoint"] == str(run_dir / "best.pt") and got["split"] == "test" and got["iwae_k"] == 4
    for key in ("neg_elbo", "nll", "kl", "iwae", "neg_elbo_per_step", "sequences"):
        assert got[key] == want[key], key
    assert json.loads((tmp_path / "r.json").read_text()) == got
    # valid as the run scored it, without IWAE (whose draws had moved the later batches' noise)
    rc, valid, _ = _evaluate(capsys, run_dir, "--split", "valid")
    want = json.loads((run_dir / "results.json").read_text())["valid"]
    assert rc == 0 and valid["iwae_k"] == 0 and "iwae" not in valid
    for key in ("neg_elbo", "nll", "kl", "neg_elbo_per_step", "sequences"):
        assert valid[key] == want[key], key


def test_split_limit_k_and_seed_are_flags(run_dir, capsys):
    rc, got, _ = _evaluate(capsys, run_dir / "last.pt", "--split", "valid", "--limit", "7", "--iwae-k", "0")
    assert rc == 0 and got["split"] == "valid" and got["sequences"] == 7 and "iwae" not in got
    rc, train, _ = _evaluate(capsys, run_dir, "--split", "train", "--limit", "12", "--iwae-k", "3", "--seed", "5")
    assert rc == 0 and train["sequences"] == 12 and train["iwae_k"] == 3 and "iwae" in train
    rc, other_seed, _ = _evaluate(capsys, run_dir, "--split", "train", "--limit", "12", "--iwae-k", "3")
    assert rc == 0 and other_seed["neg_elbo"] != train["neg_elbo"]   # the noise follows --seed


def test_window_is_a_flag_and_follows_the_runs_eval_window(run_dir, capsys, tmp_path):
    """--window N scores the split in N-step windows (``evaluate(window=N)``); by default the
    run's --eval-window (this run: unset, whole sequences), and --window 0 asks for whole
    sequences; a run trained with --eval-window reports it in results.json, evaluated that way."""
    rc, whole, _ = _evaluate(capsys, run_dir, "--iwae-k", "0")
    rc0, zero, _ = _evaluate(capsys, run_dir, "--iwae-k", "0", "--window", "0")
    rc5, five, _ = _evaluate(capsys, run_dir, "--iwae-k", "0", "--window", "5")
    assert rc == rc0 == rc5 == 0 and whole["window"] is None and zero == whole
    assert five["window"] == 5 and five["sequences"] == whole["sequences"]
    assert five["neg_elbo"] != pytest.approx(whole["neg_elbo"], rel=1e-6)   # synthetic T = 32 > 5
    out = tmp_path / "windowed"
    train_mod.train(make_config("synthetic", out=str(out), max_steps=2, eval_window=5, **SMALL), log=quiet)
    results = json.loads((out / "results.json").read_text())
    assert results["eval_window"] == 5
    rc, got, _ = _evaluate(capsys, out)
    assert rc == 0 and got["window"] == 5 and got["neg_elbo"] == results["test"]["neg_elbo"]
    rc, got0, _ = _evaluate(capsys, out, "--window", "0")
    assert rc == 0 and got0["window"] is None and got0["neg_elbo"] != got["neg_elbo"]


@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "does not exist"),
    (["{run}", "--window", "-1"], "--window must be >= 0, got -1"),
    (["{empty_dir}"], "without best.pt or last.pt"),
    (["{corrupt}"], "unreadable (truncated or corrupt)"),
    (["{run}", "--iwae-k", "-1"], "--iwae-k must be >= 0, got -1"),
    (["{run}", "--limit", "0"], "--limit must be > 0, got 0"),
    (["{run}", "--backend", "cuda-ish"], "--backend must be auto, torch, triton or cuda"),
    (["{run}", "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
], ids=["missing", "window", "empty-dir", "corrupt", "iwae-k", "limit", "backend", "device"])   # no message in the ids:
# "triton" in one would put this module (its fixture trains a run) in the GPU stage's -k "triton or gpu"
def test_bad_input_is_one_clear_line(run_dir, capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "last.pt").read_bytes()[:-300])
    paths = dict(missing=tmp_path / "nope.pt", empty_dir=tmp_path / "empty", corrupt=corrupt, run=run_dir)
    rc, _, err = _evaluate(capsys, *(a.format(**paths) for a in argv))
    assert rc == 2 and err.startswith("zf_kernels.evaluate: error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_run_is_evaluated_in_its_own_precision(tmp_path, dtype):
    """The checkpoint's --dtype: float64 parameters (not float32 copies of them), and bfloat16
    mixed precision (float32 parameters, forward passes under bfloat16 autocast), so that the
    command gives exactly the numbers of the run's results.json."""
    out = tmp_path / dtype
    small = SMALL | dict(train_limit=32, eval_limit=8, iwae_k=2, num_samples=0)
    train_mod.train(make_config("synthetic", out=str(out), max_steps=2, dtype=dtype, **small), log=quiet)
    want = json.loads((out / "results.json").read_text())["test"]
    got = evaluate_mod.evaluate_checkpoint(out)
    assert got["dtype"] == dtype and (got["neg_elbo"], got["iwae"]) == (want["neg_elbo"], want["iwae"])


def test_data_other_than_the_runs_is_refused(run_dir, capsys, monkeypatch):
    """A data set whose description (here the synthetic generator's seed; for speech the
    normalisation) differs from the one the run trained on: refused, naming what differs."""
    real = train_mod.load_data

    def other_data(cfg):
        bundle = real(cfg)
        return dataclasses.replace(bundle, meta={**bundle.meta, "seed": bundle.meta["seed"] + 1})

    monkeypatch.setattr(train_mod, "load_data", other_data)
    rc, _, err = _evaluate(capsys, run_dir)
    assert rc == 2 and "the data set differs from the one checkpoint" in err and "(its seed)" in err, err


def test_a_model_this_command_does_not_know_is_named(run_dir):
    with pytest.raises(ValueError, match=r"holds a 'zforcing' model; this command knows \['vrnn'\]"):
        evaluate_mod.evaluate_checkpoint(run_dir, models={"vrnn": None})


def test_a_checkpoint_whose_model_config_differs_is_refused(run_dir, tmp_path):
    """The saved model configuration must be the one the run's TrainConfig builds, even where
    the weights would load (here a key no parameter depends on)."""
    from zf_kernels.training.checkpoint import load_checkpoint, save_checkpoint
    state = load_checkpoint(run_dir / "best.pt")
    state["model_config"] = {**state["model_config"], "note": "another model"}
    save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt holds a model .*'note': 'another model'.*its configuration builds"):
        evaluate_mod.evaluate_checkpoint(tmp_path / "other.pt")


# ------------------------------------------------------------------------ python -m zf_kernels.sample
def _sample(capsys, *argv):
    rc = sample_mod.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out.split(), err


def test_default_samples_are_the_runs_own(run_dir, capsys, tmp_path):
    """The run's number of samples, its sequence length and its final samples' seed: the
    sequences the trainer generated at the end (regenerated here with the same generator)."""
    rc, paths, _ = _sample(capsys, run_dir, "--out", tmp_path / "s")
    assert rc == 0 and paths == [str(tmp_path / "s" / "samples_plot.png"), str(tmp_path / "s" / "samples.npy")]
    got = np.load(tmp_path / "s" / "samples.npy")
    run = train_mod.Run(make_config("synthetic", out=str(tmp_path / "unused"), **SMALL), log=quiet)
    run.model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=False)["model"])
    run.model.eval()
    gen = torch.Generator().manual_seed(run.cfg.seed + 2)     # what Run.write_samples uses
    want, _ = run.model.sample(run.data.train.y.shape[1], 3, generator=gen)
    assert got.shape == (3, run.data.train.y.shape[1], run.data.input_dim)
    np.testing.assert_array_equal(got, want.transpose(0, 1).numpy())


def test_num_steps_seed_and_temperature_are_flags(run_dir, capsys, tmp_path):
    def draw(name, *flags):
        rc, _, err = _sample(capsys, run_dir, "--out", tmp_path / name, *flags)
        assert rc == 0, err
        return np.load(tmp_path / name / "samples.npy")
    a = draw("a", "--num", "5", "--steps", "7", "--seed", "11")
    assert a.shape[:2] == (5, 7)
    np.testing.assert_array_equal(draw("b", "--num", "5", "--steps", "7", "--seed", "11"), a)
    assert not np.array_equal(draw("c", "--num", "5", "--steps", "7", "--seed", "12"), a)
    cold = draw("d", "--num", "5", "--steps", "7", "--seed", "11", "--temperature", "0.01")
    assert cold.std(axis=0).mean() < a.std(axis=0).mean()     # less noise: closer to the means


@pytest.mark.parametrize("flags,message", [
    (["--num", "0"], "--num must be >= 1, got 0"),
    (["--steps", "-2"], "--steps must be >= 1, got -2"),
    (["--temperature", "0"], "--temperature must be > 0, got 0.0"),
])
def test_bad_sampling_flags_are_one_clear_line(run_dir, capsys, tmp_path, flags, message):
    rc, _, err = _sample(capsys, run_dir, "--out", tmp_path, *flags)
    assert rc == 2 and err.strip() == f"zf_kernels.sample: error: {message}", err


def test_an_output_path_that_is_a_file_is_one_clear_line(run_dir, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    rc, _, err = _sample(capsys, run_dir, "--out", tmp_path / "file")
    assert rc == 2 and err.strip() == f"zf_kernels.sample: error: --out {tmp_path / 'file'} exists and is not a directory"
    assert train_mod.main(["--out", str(tmp_path / "file"), "--max-steps", "1"]) == 2
    assert f"--out {tmp_path / 'file'} exists and is not a directory" in capsys.readouterr().err


def test_prefix_completes_the_splits_sequences(run_dir, capsys, tmp_path, monkeypatch):
    """--prefix K: the test split's first --num sequences, their first K steps as given, the rest
    the model's (model.sample with that prefix and the same generator); the pictures' means are
    the given values over the prefix, the model's after it."""
    written = {}
    real_write = sample_mod.report.write_samples
    monkeypatch.setattr(sample_mod.report, "write_samples",
                        lambda samples, means, *a: written.update(means=means) or real_write(samples, means, *a))
    rc, paths, err = _sample(capsys, run_dir, "--out", tmp_path / "c", "--prefix", 5, "--num", 4, "--steps", 12)
    assert rc == 0, err
    got = np.load(tmp_path / "c" / "samples.npy")
    run = train_mod.Run(make_config("synthetic", out=str(tmp_path / "unused"), **SMALL), log=quiet)
    run.model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=False)["model"])
    run.model.eval()
    given = run.data.test.y[:4, :5]
    assert got.shape == (4, 12, run.data.input_dim)
    np.testing.assert_array_equal(got[:, :5], given.numpy())
    gen = torch.Generator().manual_seed(run.cfg.seed + 2)
    want, want_means = run.model.sample(12, 4, generator=gen, prefix=given.transpose(0, 1))
    np.testing.assert_array_equal(got, want.transpose(0, 1).numpy())
    assert torch.equal(written["means"][:5], given.transpose(0, 1)) and torch.equal(written["means"][5:], want_means[5:])
    rc, _, err = _sample(capsys, run_dir, "--out", tmp_path / "v", "--prefix", 5, "--num", 4, "--split", "valid")
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "v" / "samples.npy")[:, :5], run.data.valid.y[:4, :5].numpy())


def test_prefix_takes_sequences_long_enough_binarised_as_evaluated():
    from zf_kernels.data import SequenceSplit
    y = torch.rand(5, 6, 2)
    mask = torch.ones(5, 6)
    mask[0, 3:] = 0      # 3 steps: too short for a 4-step prefix
    mask[2, 4:] = 0      # 4 steps: long enough
    split = SequenceSplit(y=y, mask=mask, binarize="dynamic")
    got = sample_mod._prefix_of(split, "test", 4, 3, 6, seed=0)
    assert got.shape == (4, 3, 2) and set(got.unique().tolist()) <= {0.0, 1.0}
    probs = SequenceSplit(y=y, mask=mask)
    np.testing.assert_array_equal(sample_mod._prefix_of(probs, "test", 4, 3, 6, seed=0).numpy(),
                                  y[[1, 2, 3], :4].transpose(0, 1).numpy())
    with pytest.raises(ValueError, match=r"the test split has 4 sequence\(s\) of at least 4 steps; ask for --num <= 4"):
        sample_mod._prefix_of(probs, "test", 4, 5, 6, seed=0)


@pytest.mark.parametrize("flags,message", [
    (["--prefix", "0"], "--prefix must be >= 1, got 0"),
    (["--prefix", "9", "--steps", "8"], "--prefix must be at most --steps (8), got 9"),
    (["--prefix", "40", "--steps", "50"], "--prefix must be at most the test split's length (32 steps), got 40"),
    (["--prefix", "3", "--split", "dev"], "--split must be one of test, valid, train, got 'dev'"),
    (["--prefix", "3", "--prompt", "a b"], "--prefix and --prompt do not combine (the data's sequences, or your text)"),
    (["--prompt", "a b"], "--prompt needs a text run (a vocabulary); this run's data set is 'synthetic': "
                          "use --prefix to complete its sequences"),
])
def test_bad_prefix_flags_are_one_clear_line(run_dir, capsys, tmp_path, flags, message):
    rc, _, err = _sample(capsys, run_dir, "--out", tmp_path, *flags)
    assert rc == 2 and err.strip() == f"zf_kernels.sample: error: {message}", err


def test_a_prompt_must_leave_steps_to_generate():
    vocab = ["<eos>", "<unk>", "a", "b"]
    assert sample_mod._prompt_of("a b", {"vocab": vocab}, "text", 2, 3).tolist() == [[2, 2], [3, 3]]
    with pytest.raises(ValueError, match=r"--prompt has 3 words: --steps \(3\) must be more"):
        sample_mod._prompt_of("a b a", {"vocab": vocab}, "text", 2, 3)


@pytest.mark.parametrize("meta,dims,names", [
    ({"image_shape": (2, 3)}, (6, 4, 1), ["samples.png"]),
    ({"mean": 0.1, "std": 0.3, "sample_rate": 8000}, (3, 6, 5), [f"sample_{i}.wav" for i in range(4)]),
    ({}, (5, 2), ["samples.txt"]),
    ({}, (5, 2, 3), ["samples_plot.png"]),
])
def test_samples_are_written_as_the_data_sets_kind_of_file(tmp_path, meta, dims, names):
    from zf_kernels.training.report import write_samples
    samples = torch.randint(0, 9, dims) if len(dims) == 2 else torch.rand(dims)
    means = samples.float() if len(dims) == 2 else 1 - samples   # images show the means, not the draws
    paths = write_samples(samples, means, meta, tmp_path)
    assert paths == [str(tmp_path / n) for n in names] and all((tmp_path / n).stat().st_size > 0 for n in names)
    if names == ["samples.png"]:   # tile 0 (1-pixel border) holds sequence 0's means as a 2 x 3 image
        import matplotlib.image
        tile = matplotlib.image.imread(tmp_path / "samples.png")[1:3, 1:4, 0]
        np.testing.assert_allclose(tile, means[:, 0, 0].reshape(2, 3).numpy(), atol=1 / 255)
    if "mean" in meta:   # the speech normalisation undone: frames * std + mean, 16-bit
        from zf_kernels.data.wav import read_audio
        audio, rate = read_audio(tmp_path / "sample_1.wav")
        want = samples[:, 1].reshape(-1).numpy() * meta["std"] + meta["mean"]
        assert rate == 8000
        np.testing.assert_allclose(audio, want, atol=2 / 32768)
    if names == ["samples.txt"]:
        assert (tmp_path / "samples.txt").read_text().splitlines()[0] == " ".join(map(str, samples[:, 0].tolist()))
