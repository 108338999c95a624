"""``python -m zf_kernels.evaluate``: a trainer checkpoint evaluated on a split of its data set,
by default with the numbers of the run's results.json; clear errors for bad input."""
import dataclasses
import json

import pytest

from _helpers import quiet
from zf_kernels import evaluate as evaluate_mod
from zf_kernels import train as train_mod
from zf_kernels.training.presets import make_config

SMALL = dict(emb_dim=16, rnn_dim=24, z_dim=4, mlp_dim=16, batch_size=16, train_limit=96, eval_limit=24,
             iwae_k=4, eval_batch_size=10, num_samples=0, progress=False, checkpoint_every=5, time_budget=None)


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


def test_split_limit_k_and_seed_are_flags(run_dir, capsys):
    rc, got, _ = _evaluate(capsys, run_dir / "last.pt", "--split", "valid", "--limit", "7", "--iwae-k", "0")
    assert rc == 0 and got["split"] == "valid" and got["sequences"] == 7 and "iwae" not in got
    rc, train, _ = _evaluate(capsys, run_dir, "--split", "train", "--limit", "12", "--iwae-k", "3", "--seed", "5")
    assert rc == 0 and train["sequences"] == 12 and train["iwae_k"] == 3 and "iwae" in train
    rc, other_seed, _ = _evaluate(capsys, run_dir, "--split", "train", "--limit", "12", "--iwae-k", "3")
    assert rc == 0 and other_seed["neg_elbo"] != train["neg_elbo"]   # the noise follows --seed


@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "does not exist"),
    (["{empty_dir}"], "without best.pt or last.pt"),
    (["{corrupt}"], "unreadable (truncated or corrupt)"),
    (["{run}", "--iwae-k", "-1"], "--iwae-k must be >= 0, got -1"),
    (["{run}", "--limit", "0"], "--limit must be > 0, got 0"),
    (["{run}", "--backend", "cuda-ish"], "--backend must be auto, torch, triton or cuda"),
])
def test_bad_input_is_one_clear_line(run_dir, capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "last.pt").read_bytes()[:-300])
    paths = dict(missing=tmp_path / "nope.pt", empty_dir=tmp_path / "empty", corrupt=corrupt, run=run_dir)
    rc, _, err = _evaluate(capsys, *(a.format(**paths) for a in argv))
    assert rc == 2 and err.startswith("zf_kernels.evaluate: error: ") and message in err, err
    assert "Traceback" not in err


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
