"""Word sequences from text (zf_kernels.data.text): splits from a folder or the end of one
file, the vocabulary from the training split, lines cut into masked sequences, clear errors;
and the `text` preset end to end (training, perplexity, samples as words)."""
import json

import numpy as np
import pytest
import torch

from _helpers import quiet
from zf_kernels import evaluate as evaluate_mod
from zf_kernels import sample as sample_mod
from zf_kernels import train as train_mod
from zf_kernels.data import load_dataset, load_text
from zf_kernels.training.presets import make_config


def _tokens(split, vocab):
    """Each sequence as its words, padding dropped."""
    mask = split.mask if split.mask is not None else torch.ones(split.y.shape)
    return [[vocab[i] for i, m in zip(row.tolist(), mrow.tolist()) if m] for row, mrow in zip(split.y, mask)]


def test_a_folder_gives_its_splits_the_vocabulary_and_masked_sequences(tmp_path):
    (tmp_path / "Train.txt").write_text("a b a c\n\nb a\n a a a a a d e\n")
    (tmp_path / "dev.txt").write_text("c z a\n")
    (tmp_path / "test.txt").write_text("b\n")
    data = load_text(tmp_path, seq_len=3, vocab_size=4)
    vocab = data.meta["vocab"]
    assert vocab == ["<eos>", "<unk>", "a", "b"]        # a: 8, b: 2, then c, d, e (one each) cut
    assert data.output_type == "categorical" and data.input_dim == 4 and data.meta["seq_len"] == 3
    # each non-blank line and its <eos>, cut into pieces of 3; the last piece padded and masked
    assert _tokens(data.train, vocab) == [["a", "b", "a"], ["<unk>", "<eos>"], ["b", "a", "<eos>"],
                                          ["a", "a", "a"], ["a", "a", "<unk>"], ["<unk>", "<eos>"]]
    assert _tokens(data.valid, vocab) == [["<unk>", "<unk>", "a"], ["<eos>"]]
    assert _tokens(data.test, vocab) == [["b", "<eos>"]]
    assert data.train.mask[1].tolist() == [1, 1, 0] and data.train.y.dtype == torch.int64


def test_vocabulary_ties_go_by_word_and_literal_special_tokens_are_the_specials(tmp_path):
    """Words of one count in alphabetical order (not as first met), whatever vocab_size cuts; a
    text that already holds ``<unk>`` / ``<eos>`` (as Penn Treebank's does) gets them once, at
    ids 1 and 0, however often they occur."""
    (tmp_path / "train.txt").write_text("zeta <unk> beta <unk> <eos>\nalpha <unk> zeta\n")
    (tmp_path / "valid.txt").write_text("alpha\n")
    (tmp_path / "test.txt").write_text("<unk> beta\n")
    data = load_text(tmp_path, seq_len=8, vocab_size=5)
    assert data.meta["vocab"] == ["<eos>", "<unk>", "zeta", "alpha", "beta"]
    assert load_text(tmp_path, seq_len=8, vocab_size=4).meta["vocab"] == ["<eos>", "<unk>", "zeta", "alpha"]
    assert data.test.y.tolist() == [[1, 4, 0, 0, 0, 0, 0, 0]] and data.input_dim == 5
    assert data.train.y[0, :6].tolist() == [2, 1, 4, 1, 0, 0]


def test_one_file_holds_out_valid_and_test_from_its_end(tmp_path):
    lines = [f"a{i % 7} b{i % 3}" for i in range(39)] + ["only_in_test b0"]
    (tmp_path / "all.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset("text", str(tmp_path / "all.txt"), seq_len=3)
    vocab = data.meta["vocab"]
    assert [" ".join(t) for t in _tokens(data.test, vocab)] == ["a3 b2 <eos>", "<unk> b0 <eos>"]
    assert [" ".join(t) for t in _tokens(data.valid, vocab)] == ["a1 b0 <eos>", "a2 b1 <eos>"]
    assert len(data.train) == 36 and data.train.mask is None          # every line fills 3 tokens
    assert "only_in_test" not in vocab                                 # the vocabulary is train's


@pytest.mark.parametrize("setup,kwargs,error,message", [
    (lambda p: p, {}, FileNotFoundError, "needs train.txt"),
    (lambda p: p / "missing.txt", {}, FileNotFoundError, "does not exist"),
    (lambda p: (p / "t.txt").write_text("\n \n") and p / "t.txt", {}, ValueError, "the train text has no words"),
    (lambda p: (p / "t.txt").write_bytes(b"ok\n\xff\xfe bad\n") and p / "t.txt", {}, ValueError, "not UTF-8"),
    (lambda p: (p / "t.txt").write_text("one line\n") and p / "t.txt", {}, ValueError, "too few to hold out"),
    (lambda p: (p / "t.txt").write_text("one\ntwo\n") and p / "t.txt", {}, ValueError,
     "1 training lines are too few to hold out a valid split"),
    (lambda p: (p / "t.txt").write_text("a\n" * 50) and p / "t.txt", {"seq_len": 0}, ValueError,
     "seq_len must be an int >= 1"),
    (lambda p: (p / "t.txt").write_text("a\n" * 50) and p / "t.txt", {"vocab_size": 2}, ValueError,
     "vocab_size must be an int >= 3"),
])
def test_bad_text_is_a_clear_error(tmp_path, setup, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_text(setup(tmp_path), **kwargs)


def test_text_preset_trains_and_reports_perplexity_and_word_samples(tmp_path):
    rng = np.random.default_rng(0)
    words = "the a movie film good bad great plot actor story".split()
    (tmp_path / "reviews.txt").write_text(
        "\n".join(" ".join(rng.choice(words, rng.integers(2, 30))) for _ in range(200)) + "\n")
    cfg = make_config("text", data=str(tmp_path / "reviews.txt"), out=str(tmp_path / "run"), max_steps=4,
                      emb_dim=8, rnn_dim=12, z_dim=3, mlp_dim=8, iwae_k=2, num_samples=3, progress=False)
    results = train_mod.train(cfg, log=quiet)
    test = results["test"]
    assert np.isclose(test["perplexity"], np.exp(test["iwae_per_step"]))
    assert 1 < test["perplexity"] < 3 * len(words)                      # near uniform after 4 steps
    lines = (tmp_path / "run" / "samples.txt").read_text().split("\n")
    assert len(lines) == 3 and set(" ".join(lines).split()) <= set(words) | {"<unk>"}
    got = evaluate_mod.evaluate_checkpoint(tmp_path / "run")           # the checkpoint command agrees
    assert got["perplexity"] == test["perplexity"] and got["data"] == "text"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"]["perplexity"] == test["perplexity"]
    # the sampling command continues a prompt (an unknown word as <unk>), the same for every sequence
    sample_mod.sample_checkpoint(tmp_path / "run", out=tmp_path / "p", prompt="the movie zzz", num=2, steps=8)
    ids = np.load(tmp_path / "p" / "samples.npy")
    vocab = train_mod.load_data(cfg).meta["vocab"]
    assert ids.shape == (2, 8) and (ids[:, :3] == [vocab.index("the"), vocab.index("movie"), 1]).all()
    assert all(line.startswith("the movie <unk>") for line in (tmp_path / "p" / "samples.txt").read_text().split("\n"))
    with pytest.raises(ValueError, match=r"--prompt has 3 words: --steps \(3\) must be more"):
        sample_mod.sample_checkpoint(tmp_path / "run", out=tmp_path / "q", prompt="the movie zzz", steps=3)
    with pytest.raises(ValueError, match="--prompt holds no words"):
        sample_mod.sample_checkpoint(tmp_path / "run", out=tmp_path / "q", prompt="  ")


def test_seq_len_and_vocab_size_flags_reach_the_loaders(tmp_path):
    """--seq-len cuts text (and synthetic, WAV-folder) sequences, --vocab-size sizes the text
    vocabulary; both are refused where the data set's files fix them."""
    (tmp_path / "t.txt").write_text("\n".join(f"a b c d e f g w{i % 9}" for i in range(60)) + "\n")
    cfg = make_config("text", data=str(tmp_path / "t.txt"), seq_len=5, vocab_size=6, out=str(tmp_path / "r"))
    data = train_mod.load_data(cfg)
    assert data.train.y.shape[1] == 5 and data.input_dim == 6 and len(data.meta["vocab"]) == 6
    assert train_mod.load_data(make_config("synthetic", seq_len=9, train_limit=4, eval_limit=2)).train.y.shape[1] == 9
    with pytest.raises(ValueError, match="--seq-len applies to text, a folder of WAV files and synthetic data; "
                                         "the 'seqmnist' data set's sequences are fixed by its files"):
        train_mod.load_data(make_config("seqmnist", seq_len=9))
    with pytest.raises(ValueError, match="--vocab-size applies to text data, not to the 'synthetic' data set"):
        train_mod.load_data(make_config("synthetic", vocab_size=9))
    with pytest.raises(ValueError, match="--seq-len must be a finite number > 0, got 0"):
        make_config("text", seq_len=0)
