"""``zf_kernels.evaluate.evaluate``: scoring in windows (the authors' TIMIT protocol) and bounds
per recording (sequences cut from one file)."""
import pytest
import torch

from zf_kernels import ZForcing
from zf_kernels.data.batching import SequenceSplit
from zf_kernels.evaluate import check_window, evaluate

SIZES = dict(emb_dim=8, rnn_dim=12, z_dim=4, mlp_dim=8, backend="torch")


class NoiseFree(ZForcing):
    """The model with its posterior noise at 0: two evaluations that draw their noise in a
    different order (other batches, other windows) then give the same numbers."""

    def forward(self, y, u=None, mask=None, eps=None, generator=None, return_latents=False):
        eps = torch.zeros(*y.shape[:2], self.z_dim, dtype=self.fwd_weight_hh.dtype, device=y.device)
        return super().forward(y, u, mask, eps=eps, return_latents=return_latents)


def _data(output_type, N=5, T=23, D=3, seed=0):
    """A split of N sequences of T steps, two of them right-padded (lengths 15 and 4)."""
    g = torch.Generator().manual_seed(seed)
    if output_type == "categorical":
        y = torch.randint(0, D, (N, T), generator=g)
    else:
        y = torch.randn(N, T, D, generator=g)
    mask = torch.ones(N, T)
    mask[1, 15:] = 0
    mask[3, 4:] = 0
    return y, mask


def _model(cls, output_type, D=3):
    torch.manual_seed(1)
    return cls(input_dim=D, output_type=output_type, **SIZES).double()


def _cut(model, y, mask, window):
    """Float data: the sequences cut into ``window``-step pieces the slow way, each padded to ``window``
    steps, with the inputs of the whole sequence (a piece starts from the frame before it) and
    the sequence it came from as its recording; pieces past a sequence's end left out."""
    u = model.shift_inputs(y.transpose(0, 1)).transpose(0, 1)
    ys, us, ms, rec = [], [], [], []
    for n in range(y.shape[0]):
        for t0 in range(0, y.shape[1], window):
            m = mask[n, t0:t0 + window]
            if not m.any():
                continue
            pad = window - len(m)
            ys.append(torch.cat([y[n, t0:t0 + window], torch.zeros_like(y[n, :pad])]))
            us.append(torch.cat([u[n, t0:t0 + window], torch.zeros_like(u[n, :pad])]))
            ms.append(torch.cat([m, torch.zeros(pad)]))
            rec.append(n)
    return SequenceSplit(torch.stack(ys), torch.stack(us), torch.stack(ms), recording=torch.tensor(rec))


@pytest.mark.parametrize("output_type", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("window", [1, 5, 10])
@pytest.mark.parametrize("padded", [True, False])
def test_windows_are_the_sequences_cut_into_pieces(output_type, window, padded):
    """Scoring whole sequences in windows = scoring the same windows cut out beforehand as
    sequences of their own (as a WAV folder's test split holds them) and summing each source
    sequence's pieces (its bound per recording); padded steps and windows past a sequence's end
    count nothing (T = 23: the last window of 5 or 10 is short, padded and masked too)."""
    y, mask = _data(output_type)
    if output_type == "bernoulli":
        y = (y > 0).float()
    if not padded:
        mask = torch.ones_like(mask)
    model = _model(NoiseFree, output_type)
    whole = evaluate(model, SequenceSplit(y, mask=mask if padded else None), batch_size=3, window=window, iwae_k=2)
    cut = _cut(model, y, mask, window)
    pieces = evaluate(model, cut, batch_size=4, iwae_k=2)
    assert pieces["recordings"] == y.shape[0] == whole["sequences"]
    assert pieces["sequences"] == len(cut) > y.shape[0]
    torch.testing.assert_close(pieces["neg_elbo_per_recording"], whole["neg_elbo"], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(pieces["neg_elbo_per_step"], whole["neg_elbo_per_step"], rtol=1e-12, atol=1e-9)
    # the IWAE bound in windows too (noise-free model: the same weights either way)
    torch.testing.assert_close(pieces["iwae_per_recording"], whole["iwae"], rtol=1e-12, atol=1e-9)
    for out in (whole, pieces):   # the bound is its two terms, each summed per sequence
        assert out["neg_elbo"] == pytest.approx(out["nll"] + out["kl"], rel=1e-12)


def test_token_windows_start_from_the_token_before_them():
    """Categorical data without inputs: a window's first input is the token before it (the
    model's start token only at t = 0), so windows of the sequence differ from the same tokens
    scored as sequences of their own, which start from the start token."""
    y, mask = _data("categorical")
    model = _model(NoiseFree, "categorical")
    split = SequenceSplit(y, mask=mask)
    windowed = evaluate(model, split, batch_size=5, window=5)
    # the same pieces, each scored with the previous token as its input
    u = model.shift_inputs(y.t()).t()
    total = own = 0.0
    with torch.no_grad():
        for t0 in range(0, y.shape[1], 5):
            m = mask[:, t0:t0 + 5].t()
            keep = m.any(0)
            y_w = y[keep, t0:t0 + 5].t()
            total += float(model(y_w, u[keep, t0:t0 + 5].t(), m[:, keep]).neg_elbo.sum())
            own += float(model(y_w, None, m[:, keep]).neg_elbo.sum())
    assert windowed["neg_elbo"] == pytest.approx(total / y.shape[0], rel=1e-12)
    assert windowed["neg_elbo"] != pytest.approx(own / y.shape[0], rel=1e-6)
    assert windowed["perplexity"] > 1


def test_a_window_covering_the_sequences_changes_nothing():
    y, mask = _data("gaussian")
    model = _model(ZForcing, "gaussian")
    split = SequenceSplit(y, mask=mask)
    whole = evaluate(model, split, batch_size=3, iwae_k=3)
    assert evaluate(model, split, batch_size=3, iwae_k=3, window=23) == whole
    assert evaluate(model, split, batch_size=3, iwae_k=3, window=100) == whole
    windowed = evaluate(model, split, batch_size=3, iwae_k=3, window=8)
    # a shorter window resets the states: another bound (of the windowed model), same steps
    assert windowed["neg_elbo"] != pytest.approx(whole["neg_elbo"], rel=1e-6)
    assert windowed["sequences"] == whole["sequences"]
    assert windowed["neg_elbo"] / windowed["neg_elbo_per_step"] == pytest.approx(
        whole["neg_elbo"] / whole["neg_elbo_per_step"])
    assert "recordings" not in whole   # the split does not say where its sequences came from


def test_bounds_per_recording_count_each_recording_once():
    """Three recordings cut into 2, 1 and 3 sequences: the sums are shared among 3, and a
    limit that stops after the first batch counts the recordings it saw."""
    y = torch.randn(6, 7, 3, generator=torch.Generator().manual_seed(2))
    split = SequenceSplit(y, recording=torch.tensor([0, 0, 1, 2, 2, 2]))
    model = _model(ZForcing, "gaussian")
    out = evaluate(model, split, batch_size=4, iwae_k=2)
    assert out["recordings"] == 3 and out["sequences"] == 6
    assert out["neg_elbo_per_recording"] == pytest.approx(out["neg_elbo"] * 6 / 3, rel=1e-12)
    assert out["iwae_per_recording"] == pytest.approx(out["iwae"] * 6 / 3, rel=1e-12)
    first = evaluate(model, split, batch_size=4, max_sequences=4)
    assert first["sequences"] == 4 and first["recordings"] == 3   # rows 0-3: recordings 0, 1, 2


def test_a_sequence_limit_cuts_the_last_batch():
    """max_sequences=5 in batches of 4 scores rows 0-4, exactly as a split of those 5 rows
    would (it scored the whole second batch, 8 rows, before)."""
    y = torch.randn(6, 7, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(6, 7)
    mask[3:, 5:] = 0   # rows 3-5 are 5 steps long
    model = _model(ZForcing, "gaussian")
    cut = evaluate(model, SequenceSplit(y, mask=mask), batch_size=4, iwae_k=2, max_sequences=5)
    five = evaluate(model, SequenceSplit(y[:5], mask=mask[:5]), batch_size=4, iwae_k=2)
    assert cut["sequences"] == 5 and cut == five
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="max_sequences must be an integer >= 1"):
            evaluate(model, SequenceSplit(y, mask=mask), max_sequences=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "40"])
def test_bad_window_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"window must be an integer >= 1"):
        check_window(bad)
    y, mask = _data("gaussian")
    with pytest.raises(ValueError, match=r"window must be an integer >= 1"):
        evaluate(_model(ZForcing, "gaussian"), SequenceSplit(y, mask=mask), window=bad)


def test_recording_must_name_one_recording_per_sequence():
    y = torch.randn(4, 5, 2)
    with pytest.raises(ValueError, match=r"recording must be int64 of shape \(4,\)"):
        SequenceSplit(y, recording=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"recording must be int64"):
        SequenceSplit(y, recording=torch.zeros(4))


def test_a_bfloat16_model_counts_every_step():
    """The per-step bounds divide by the number of valid steps: counted on the mask, which is in
    the model's dtype, so a bfloat16 sum rounded it (here 4,397 steps, 4,384 in bfloat16)."""
    torch.manual_seed(0)
    model = ZForcing(2, "gaussian", emb_dim=4, rnn_dim=4, z_dim=2, mlp_dim=4).to(torch.bfloat16)
    lengths = torch.tensor([97] + [100] * 43)
    mask = (torch.arange(100)[None] < lengths[:, None]).float()
    out = evaluate(model, SequenceSplit(torch.randn(44, 100, 2), mask=mask), batch_size=44)
    assert int(lengths.sum()) == 4397 and out["neg_elbo"] * 44 / out["neg_elbo_per_step"] == pytest.approx(4397, abs=0.5)
