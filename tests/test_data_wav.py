"""Raw audio folders for the speech presets (zf_kernels.data.wav): RIFF/WAVE and NIST SPHERE
files written here byte by byte (plus one by the stdlib ``wave`` module as an independent
writer), their framing into (u, x) sequences, the split rules, the normalisation, every error,
and one end-to-end trainer run on a generated folder."""
import json
import re
import struct
import wave

import numpy as np
import pytest
import torch

from zf_kernels.data import load_dataset, load_wav_folder, read_audio

# ---------------------------------------------------------------- writers

_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def riff_bytes(data: bytes, *, code=1, channels=1, rate=16000, bits=16, extensible=False,
               block_align=None, data_size=None, extra_chunks=()) -> bytes:
    """A RIFF/WAVE file; ``data_size`` overrides the data chunk's declared size (truncation),
    ``extra_chunks`` are (id, body) pairs placed before ``fmt ``."""
    block_align = channels * bits // 8 if block_align is None else block_align
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else code, channels, rate, rate * block_align,
                      block_align, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", code) + _GUID_TAIL
    chunks = b""
    for cid, body in (*extra_chunks, (b"fmt ", fmt)):
        chunks += cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)
    chunks += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def int24_bytes(values, big_endian=False) -> bytes:
    b = (np.asarray(values, np.int64) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
    return (b[:, ::-1] if big_endian else b).tobytes()


def sphere_bytes(data: bytes, *, count, n_bytes=2, rate=16000, channels=1, order="01", coding=None,
                 header_size=1024) -> bytes:
    lines = ["NIST_1A", f"{header_size:7d}", "database_id -s5 TIMIT", f"sample_count -i {count}",
             f"sample_n_bytes -i {n_bytes}", f"channel_count -i {channels}", f"sample_rate -i {rate}",
             f"sample_byte_format -s{len(order)} {order}", "sample_sig_bits -i 16"]
    if coding is not None:
        lines.append(f"sample_coding -s{len(coding)} {coding}")
    header = ("\n".join(lines + ["end_head"]) + "\n").encode("ascii")
    return header.ljust(header_size, b" ") + data


def write_pcm16(path, values, rate=16000) -> None:
    """A mono PCM16 WAV (int16 ``values``) via riff_bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(riff_bytes(np.asarray(values, "<i2").tobytes(), rate=rate))


# ---------------------------------------------------------------- read_audio: formats

PCM_CASES = {
    8: (np.array([0, 128, 255, 1, 200], np.uint8), lambda v: (v.astype(np.float64) - 128) / 128),
    16: (np.array([-32768, 0, 32767, 1234, -7], "<i2"), lambda v: v / 2.0 ** 15),
    24: (np.array([-2 ** 23, 0, 2 ** 23 - 1, -5, 77777, -1234567]), lambda v: v / 2.0 ** 23),
    32: (np.array([-2 ** 31, 0, 2 ** 31 - 1, 123456789, -3], "<i4"), lambda v: v / 2.0 ** 31),
}


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("extensible", [False, True])
def test_pcm_samples_are_scaled_exactly_to_minus_one_one(tmp_path, bits, extensible):
    values, scale = PCM_CASES[bits]
    data = int24_bytes(values) if bits == 24 else values.tobytes()
    path = tmp_path / "a.wav"
    path.write_bytes(riff_bytes(data, bits=bits, rate=22050, extensible=extensible))
    samples, rate = read_audio(path)
    assert rate == 22050 and samples.dtype == np.float32 and samples.shape == (len(values),)
    np.testing.assert_array_equal(samples, scale(values).astype(np.float32))
    # [-1, 1): exact up to 24 bits; float32 rounds 32-bit (2**31 - 1) / 2**31 up to 1.0
    assert samples.min() == -1 and (samples.max() < 1 if bits < 32 else samples.max() == 1)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_samples_are_kept_as_stored(tmp_path, bits, extensible):
    values = np.array([0.0, -1.0, 0.25, 1.5, -3e-5], f"<f{bits // 8}")   # beyond [-1, 1] is kept
    path = tmp_path / "f.wav"
    path.write_bytes(riff_bytes(values.tobytes(), code=3, bits=bits, extensible=extensible))
    samples, _ = read_audio(path)
    np.testing.assert_array_equal(samples, values.astype(np.float32))


def test_stdlib_wave_file_reads_the_same_samples(tmp_path):
    values = np.array([3, -3, 32767, -32768, 0, 100], "<i2")
    with wave.open(str(tmp_path / "w.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(values.tobytes())
    samples, rate = read_audio(tmp_path / "w.wav")
    assert rate == 8000
    np.testing.assert_array_equal(samples, values / np.float32(32768))


def test_unknown_and_odd_sized_chunks_are_skipped(tmp_path):
    values = np.array([1, 2, 3], "<i2")
    path = tmp_path / "c.wav"
    path.write_bytes(riff_bytes(values.tobytes(), extra_chunks=[(b"LIST", b"INFOabc"), (b"fact", b"\1\0\0\0")]))
    np.testing.assert_array_equal(read_audio(path)[0], values / np.float32(32768))


def test_stereo_is_mixed_down_to_the_channel_average(tmp_path):
    left, right = np.array([100, -200, 32767], "<i2"), np.array([300, 200, 32767], "<i2")
    path = tmp_path / "s.wav"
    path.write_bytes(riff_bytes(np.stack([left, right], 1).tobytes(), channels=2))
    samples, _ = read_audio(path)
    np.testing.assert_array_equal(samples, ((left / 32768 + right / 32768) / 2).astype(np.float32))


@pytest.mark.parametrize("order", ["01", "10"])
def test_nist_sphere_pcm16_in_both_byte_orders(tmp_path, order):
    values = np.array([-32768, -1, 0, 1, 32767, 4321], np.int16)
    data = values.astype("<i2" if order == "01" else ">i2").tobytes()
    path = tmp_path / "SA1.WAV"
    path.write_bytes(sphere_bytes(data, count=len(values), order=order, coding="pcm"))
    samples, rate = read_audio(path)
    assert rate == 16000
    np.testing.assert_array_equal(samples, values / np.float32(32768))


def test_nist_sphere_24_bit_big_endian_and_stereo(tmp_path):
    values = np.array([-2 ** 23, 5, 2 ** 23 - 1, -77])
    path = tmp_path / "x.wav"
    path.write_bytes(sphere_bytes(int24_bytes(values, big_endian=True), count=2, n_bytes=3, channels=2,
                                  order="10", rate=8000))
    samples, rate = read_audio(path)
    assert rate == 8000
    want = (values.reshape(2, 2) / 2.0 ** 23).mean(axis=1).astype(np.float32)
    np.testing.assert_array_equal(samples, want)


# ---------------------------------------------------------------- read_audio: errors

def _pcm16(n=4):
    return np.arange(n, dtype="<i2").tobytes()


ERROR_CASES = [
    ("junk", b"hello, this is not audio at all", r"not a RIFF/WAVE or NIST SPHERE"),
    ("riff_not_wave", b"RIFF\x10\0\0\0AVI LIST\0\0\0\0", r"not RIFF/WAVE.*'WAVE'"),
    ("truncated", riff_bytes(_pcm16(10), data_size=40), r"truncated data chunk.*40 bytes.*holds 20"),
    ("partial_frame", riff_bytes(_pcm16(3)[:-1]), r"truncated data chunk.*whole number"),
    ("no_fmt", b"RIFF\x0c\0\0\0WAVEdata\0\0\0\0", r"without a complete 'fmt '"),
    ("adpcm", riff_bytes(_pcm16(), code=2), r"unsupported WAV format code 0x0002.*expected 1 = PCM, 3 = IEEE"),
    ("ext_alaw", riff_bytes(_pcm16(), code=6, bits=8, extensible=True), r"unsupported WAV format code 0x0006"),
    ("pcm12", riff_bytes(_pcm16(), bits=12, block_align=2), r"unsupported bit depth 12 for PCM"),
    ("float16", riff_bytes(_pcm16(), code=3, bits=16), r"unsupported bit depth 16 for IEEE float"),
    ("bad_align", riff_bytes(_pcm16(), block_align=4), r"block align 4.*expected 2"),
    ("rate0", riff_bytes(_pcm16(), rate=0), r"1 channels at 0 Hz \(expected >= 1 channel and a positive rate\)"),
    ("zero", riff_bytes(b""), r"zero samples"),
    ("nan", riff_bytes(np.array([0.0, np.nan], "<f4").tobytes(), code=3, bits=32), r"non-finite sample nan at index 1"),
    ("inf64", riff_bytes(np.array([np.inf], "<f8").tobytes(), code=3, bits=64), r"non-finite sample inf at index 0"),
    ("big64", riff_bytes(np.array([1e300], "<f8").tobytes(), code=3, bits=64), r"beyond the float32 range"),
    ("shorten", sphere_bytes(b"\0" * 8, count=4, coding="pcm,embedded-shorten-v2.00"),
     r"shorten-compressed.*decompress it first"),
    ("ulaw", sphere_bytes(b"\0" * 4, count=4, n_bytes=1, coding="ulaw"), r"sample_coding 'ulaw'.*expected 'pcm'"),
    ("sph_truncated", sphere_bytes(b"\0" * 6, count=4), r"truncated NIST SPHERE data.*8 bytes.*holds 6"),
    ("sph_order", sphere_bytes(b"\0" * 8, count=4, order="1"), r"sample_byte_format '1'.*'01' = little"),
    ("sph_zero", sphere_bytes(b"", count=0), r"zero samples"),
    ("sph_no_end", sphere_bytes(b"", count=4)[:200], r"header of 1024 bytes"),
]


@pytest.mark.parametrize("name, blob, match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_files_raise_value_error_naming_the_file(tmp_path, name, blob, match):
    path = tmp_path / f"{name}.wav"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=match) as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.wav"))):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_wav_folder(tmp_path / "nope")


# ---------------------------------------------------------------- framing

def _ramp(file_id, n):
    """int16 samples that say which file and which position they come from."""
    assert file_id * 500 + n < 2 ** 15 and n < 500
    return (file_id * 500 + np.arange(n)).astype("<i2")


def _expected_sequences(wave_i16, D, L, keep_tail):
    """(u, x, mask) of one file, built the slow way."""
    frames = wave_i16[:len(wave_i16) // D * D].reshape(-1, D) / np.float32(32768)
    us, xs, ms = [], [], []
    start = 0
    while start + 1 < len(frames):
        steps = min(L, len(frames) - 1 - start)
        if steps < L and not keep_tail:
            break
        u, x = np.zeros((L, D), np.float32), np.zeros((L, D), np.float32)
        u[:steps], x[:steps] = frames[start:start + steps], frames[start + 1:start + 1 + steps]
        us.append(u), xs.append(x), ms.append(np.arange(L) < steps)
        start += L
    return us, xs, ms


def test_framing_overlap_and_padded_tails(tmp_path):
    D, L = 4, 3
    lengths = {"TRAIN": [46, 29, 5, 12], "TEST": [46, 9, 7]}   # samples per file
    waves = {}
    for split, ns in lengths.items():
        for i, n in enumerate(ns):
            waves[split, i] = _ramp(10 * len(waves) + 1, n)
            write_pcm16(tmp_path / split / f"dr{i}" / f"f{i}.WAV", waves[split, i])
    (tmp_path / "VALID").mkdir()
    write_pcm16(tmp_path / "VALID" / "v.wav", _ramp(62, 23))
    waves["VALID", 0] = _ramp(62, 23)
    b = load_wav_folder(tmp_path, frame_size=D, seq_len=L, normalize=False)
    assert b.output_type == "gaussian" and b.input_dim == D
    for split, attr, n_files in (("TRAIN", "train", 4), ("TEST", "test", 3), ("VALID", "valid", 1)):
        us, xs, ms, recs = [], [], [], []
        for i in range(n_files):
            u, x, m = _expected_sequences(waves[split, i], D, L, keep_tail=attr != "train")
            us += u
            xs += x
            ms += m
            recs += [i] * len(x)   # the file's place in the split (sorted paths: f0, f1, ...)
        s = getattr(b, attr)
        assert tuple(s.y.shape) == (len(xs), L, D) and s.u.shape == s.y.shape
        assert s.recording.tolist() == recs
        np.testing.assert_array_equal(s.y.numpy(), np.stack(xs))
        np.testing.assert_array_equal(s.u.numpy(), np.stack(us))
        if all(m.all() for m in ms):
            assert s.mask is None
        else:
            np.testing.assert_array_equal(s.mask.numpy(), np.stack(ms).astype(np.float32))
    # train file 0: 46 samples -> 11 frames (2 samples dropped) -> 10 targets = 3 sequences, tail dropped
    y, u = b.train.y.numpy(), b.train.u.numpy()
    assert len(y) == 3 + 2 + 0 + 0   # 29 -> 7 frames = 2 sequences; 5 -> 1 frame; 12 -> 3 frames < L + 1
    np.testing.assert_array_equal(u[0, 1:], y[0, :-1])            # u_t == x_{t-1} within a sequence
    np.testing.assert_array_equal(u[1, 0], y[0, -1])              # consecutive sequences share one frame
    assert b.meta["skipped_files"] == {"train": 1, "valid": 0, "test": 1}   # 5 and 7 samples: 1 frame
    assert b.meta["train_tail_frames_dropped"] == 1 + 0 + 2
    # test file 0 keeps its 1-step tail: [1, 0, 0], padding is 0 in u and x
    t = b.test
    np.testing.assert_array_equal(t.mask.numpy()[3], [1, 0, 0])
    assert not t.y[3, 1:].any() and not t.u[3, 1:].any()
    assert b.meta["files"] == {"train": 4, "valid": 1, "test": 3} and b.meta["sequences"]["test"] == len(t)
    assert b.meta["frame_size"] == D and b.meta["seq_len"] == L and b.meta["sample_rate"] == 16000


def test_every_frame_after_the_first_is_a_target_once_in_test(tmp_path):
    D, L = 5, 4
    for i, n in enumerate([5 * 23 + 3, 5 * 9, 5 * 17]):
        write_pcm16(tmp_path / "test" / f"{i}.wav", _ramp(i + 1, n))
    for i in range(2):
        write_pcm16(tmp_path / "train" / f"{i}.wav", _ramp(i + 7, 5 * 30))
    b = load_wav_folder(tmp_path, frame_size=D, seq_len=L, normalize=False)
    targets = b.test.y.numpy()[b.test.mask.numpy() > 0]
    want = np.concatenate([_ramp(i + 1, n)[:n // D * D].reshape(-1, D)[1:] / np.float32(32768)
                           for i, n in enumerate([5 * 23 + 3, 5 * 9, 5 * 17])])
    np.testing.assert_array_equal(targets, want)


# ---------------------------------------------------------------- splits

def _ids(split, D):
    """Which files (by the ramp's file id) a split's sequences come from."""
    return sorted({int(round(float(v) * 32768)) // 500 for v in split.u[:, 0, 0]})


def test_timit_layout_train_test_folders_with_valid_held_out(tmp_path):
    for i in range(21):
        write_pcm16(tmp_path / "TRAIN" / f"DR{i % 3}" / f"S{i:02d}.WAV", _ramp(i + 1, 40))
    for i in range(2):
        write_pcm16(tmp_path / "TEST" / "DR1" / f"T{i}.wav", _ramp(30 + i, 40))
    (tmp_path / "DOC").mkdir()   # other folders without audio are fine
    (tmp_path / "DOC" / "readme.txt").write_text("x")
    b = load_dataset("timit", str(tmp_path), frame_size=4, seq_len=2, normalize=False)
    assert b.meta["files"] == {"train": 20, "valid": 1, "test": 2}
    # sorted by relative path: DR0/S00, DR0/S03, ... DR2/S20 last -> valid = DR2/S20
    assert _ids(b.valid, 4) == [21] and _ids(b.test, 4) == [30, 31]
    assert 21 not in _ids(b.train, 4) and len(_ids(b.train, 4)) == 20
    assert b.meta["split_source"]["valid"].startswith("last 1 ")


def test_timit_speaker_folders_are_held_out_whole_and_spread(tmp_path):
    """TIMIT's TRAIN/DR*/SPEAKER/ layout: the valid (and test) files held out are whole speaker
    folders spread over the dialect regions (it took the last 5% of the sorted files: a speaker
    on both sides, one region only). 4 regions x 8 speakers x 2 files: 5% is 3 files, so 2
    speakers (4 files) each."""
    for dr in range(4):
        for spk in range(8):
            for sent in range(2):
                i = (dr * 8 + spk) * 2 + sent
                write_pcm16(tmp_path / "TRAIN" / f"DR{dr}" / f"S{spk}" / f"X{sent}.WAV", _ramp(i + 1, 40))
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert b.meta["files"] == {"train": 56, "valid": 4, "test": 4}
    speaker = lambda i: (i - 1) // 2  # noqa: E731   file id -> speaker (0 .. 31)
    spk = {s: {speaker(i) for i in _ids(getattr(b, s), 4)} for s in ("train", "valid", "test")}
    assert len(spk["valid"]) == len(spk["test"]) == 2 and len(spk["train"]) == 28
    assert not (spk["train"] & spk["valid"]) and not (spk["train"] & spk["test"]) and not (spk["valid"] & spk["test"])
    for s in ("valid", "test"):   # two speakers from two regions, each with both its files
        assert len({x // 8 for x in spk[s]}) == 2 and len(_ids(getattr(b, s), 4)) == 4, spk
    assert b.meta["split_source"]["valid"] == "2 of the 32 train folders, spread over them"


def test_hidden_files_and_folders_are_skipped(tmp_path):
    """A copy made on a Mac holds AppleDouble ``._X.wav`` files beside the audio (not audio), and
    a folder may hold hidden ones (``.cache/``): neither is read."""
    for i in range(3):
        write_pcm16(tmp_path / "TRAIN" / f"S{i}.WAV", _ramp(i + 1, 40))
        (tmp_path / "TRAIN" / f"._S{i}.WAV").write_bytes(b"\0\5\x16\7" + b"Mac OS X" * 8)
    write_pcm16(tmp_path / "TRAIN" / ".cache" / "x.wav", _ramp(9, 40))
    write_pcm16(tmp_path / "TEST" / "t.wav", _ramp(5, 40))
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert b.meta["files"] == {"train": 2, "valid": 1, "test": 1}
    assert sorted(_ids(b.train, 4) + _ids(b.valid, 4)) == [1, 2, 3]


def test_a_converted_twin_is_read_once(tmp_path):
    # TIMIT copies often hold SA1.WAV (SPHERE) beside SA1.WAV.wav (RIFF, the same audio)
    for split, ids in (("TRAIN", (1, 2, 3)), ("TEST", (4,))):
        for i in ids:
            wave = np.asarray(_ramp(i, 40), "<i2")
            folder = tmp_path / split / "DR1"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"S{i}.WAV").write_bytes(sphere_bytes(wave.tobytes(), count=len(wave)))
            write_pcm16(folder / f"S{i}.WAV.wav", wave)
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert b.meta["files"] == {"train": 2, "valid": 1, "test": 1}
    assert sorted(_ids(b.train, 4) + _ids(b.valid, 4)) == [1, 2, 3] and _ids(b.test, 4) == [4]


@pytest.mark.parametrize("valid_name", ["dev", "Validation", "valid"])
def test_dev_or_validation_folder_is_the_valid_split(tmp_path, valid_name):
    for i in range(3):
        write_pcm16(tmp_path / "train" / f"{i}.wav", _ramp(i + 1, 40))
    write_pcm16(tmp_path / valid_name / "v.wav", _ramp(8, 40))
    write_pcm16(tmp_path / "Test" / "t.wav", _ramp(9, 40))
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert _ids(b.train, 4) == [1, 2, 3] and _ids(b.valid, 4) == [8] and _ids(b.test, 4) == [9]


def test_flat_folder_splits_the_sorted_files_90_5_5(tmp_path):
    for i in range(40):
        write_pcm16(tmp_path / f"sub{i % 2}" / f"{i:02d}.wav", _ramp(i + 1, 40))
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert b.meta["files"] == {"train": 36, "valid": 2, "test": 2}
    # sorted: sub0/00, sub0/02, ..., sub0/38, sub1/01, ..., sub1/39
    assert _ids(b.test, 4) == [38, 40] and _ids(b.valid, 4) == [34, 36]
    three = tmp_path / "three"
    for i in range(3):
        write_pcm16(three / f"{i}.wav", _ramp(i + 1, 40))
    b = load_wav_folder(three, frame_size=4, seq_len=2)
    assert b.meta["files"] == {"train": 1, "valid": 1, "test": 1}


def test_split_errors(tmp_path):
    two = tmp_path / "two"
    for i in range(2):
        write_pcm16(two / f"{i}.wav", _ramp(1, 40))
    with pytest.raises(ValueError, match=r"2 training file\(s\), too few.*need at least 3 files"):
        load_wav_folder(two, frame_size=4, seq_len=2)
    one = tmp_path / "one"
    write_pcm16(one / "TRAIN" / "a.wav", _ramp(1, 40))
    write_pcm16(one / "TEST" / "b.wav", _ramp(1, 40))
    with pytest.raises(ValueError, match=r"1 training file\(s\), too few to hold out valid; need at least 2"):
        load_wav_folder(one, frame_size=4, seq_len=2)
    both = tmp_path / "both"
    for d in ("train", "valid", "dev"):
        write_pcm16(both / d / "a.wav", _ramp(1, 40))
    with pytest.raises(ValueError, match=r"folders 'dev' and 'valid' are both the valid split"):
        load_wav_folder(both, frame_size=4, seq_len=2)
    no_train = tmp_path / "no_train"
    write_pcm16(no_train / "test" / "a.wav", _ramp(1, 40))
    with pytest.raises(ValueError, match=r"no train folder"):
        load_wav_folder(no_train)
    outside = tmp_path / "outside"
    write_pcm16(outside / "train" / "a.wav", _ramp(1, 40))
    write_pcm16(outside / "stray.wav", _ramp(1, 40))
    with pytest.raises(ValueError, match=r"1 \*\.wav file\(s\) outside the split folders.*stray\.wav"):
        load_wav_folder(outside)
    empty_split = tmp_path / "empty_split"
    write_pcm16(empty_split / "train" / "a.wav", _ramp(1, 40))
    (empty_split / "test").mkdir()
    with pytest.raises(ValueError, match=r"the test folder 'test' holds no \*\.wav files"):
        load_wav_folder(empty_split)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio")
    with pytest.raises(FileNotFoundError, match=r"folder without \*\.wav files"):
        load_wav_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"is not a folder"):
        load_wav_folder(two / "0.wav")
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 1, got 0"):
        load_wav_folder(two, seq_len=0)


def test_sample_rates_must_agree_and_bad_files_are_named(tmp_path):
    for i in range(3):
        write_pcm16(tmp_path / "a" / f"{i}.wav", _ramp(1, 40), rate=16000 if i < 2 else 8000)
    with pytest.raises(ValueError, match=r"different sample rates.*0\.wav at 16000 Hz.*2\.wav at 8000 Hz"):
        load_wav_folder(tmp_path / "a", frame_size=4, seq_len=2)
    for i in range(3):
        write_pcm16(tmp_path / "b" / f"{i}.wav", _ramp(1, 40))
    (tmp_path / "b" / "1.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(ValueError, match=r"1\.wav: a RIFF file but not RIFF/WAVE"):
        load_wav_folder(tmp_path / "b", frame_size=4, seq_len=2)


def test_short_files_are_skipped_and_an_empty_split_is_an_error(tmp_path):
    write_pcm16(tmp_path / "train" / "long.wav", _ramp(1, 40))
    write_pcm16(tmp_path / "train" / "short.wav", _ramp(2, 7))       # < 2 frames of 4
    write_pcm16(tmp_path / "test" / "t.wav", _ramp(3, 8))
    write_pcm16(tmp_path / "valid" / "v.wav", _ramp(4, 8))
    b = load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False)
    assert b.meta["skipped_files"] == {"train": 1, "valid": 0, "test": 0}
    assert len(b.test) == 1 and b.test.mask.tolist() == [[1.0, 0.0]]
    write_pcm16(tmp_path / "test" / "t.wav", _ramp(3, 7))
    with pytest.raises(ValueError, match=r"no test sequence: each of the 1 test file\(s\) is shorter than 8 samples"):
        load_wav_folder(tmp_path, frame_size=4, seq_len=2)
    write_pcm16(tmp_path / "test" / "t.wav", _ramp(3, 8))
    with pytest.raises(ValueError, match=r"no train sequence.*shorter than 44 samples \(seq_len \+ 1 frames"):
        load_wav_folder(tmp_path, frame_size=4, seq_len=10)


# ---------------------------------------------------------------- normalisation

def test_global_normalisation_of_the_training_targets(tmp_path):
    rng = np.random.default_rng(0)
    for split, n_files in (("train", 4), ("valid", 2), ("test", 2)):
        for i in range(n_files):
            write_pcm16(tmp_path / split / f"{i}.wav", (rng.normal(500, 3000, 137 + 31 * i)).astype("<i2"))
    raw = load_wav_folder(tmp_path, frame_size=5, seq_len=3, normalize=False)
    b = load_wav_folder(tmp_path, frame_size=5, seq_len=3)
    targets = raw.train.y.numpy().astype(np.float64)
    mean, std = targets.mean(), targets.std()
    assert b.meta["mean"] == pytest.approx(mean, rel=1e-12) and b.meta["std"] == pytest.approx(std, rel=1e-12)
    assert b.meta["normalized"] and raw.meta["mean"] == 0 and raw.meta["std"] == 1
    for s in ("train", "valid", "test"):
        r, n = getattr(raw, s), getattr(b, s)
        m = np.ones(r.y.shape[:2], np.float32) if r.mask is None else r.mask.numpy()
        for got, want in ((n.y, r.y), (n.u, r.u)):
            np.testing.assert_allclose(got.numpy(), (want.numpy() - mean) / std * m[:, :, None],
                                       rtol=1e-5, atol=1e-5)
    assert b.valid.mask is not None and not b.valid.y[b.valid.mask == 0].any()   # padding stays 0
    assert abs(float(b.train.y.double().mean())) < 1e-6


def test_constant_training_waveform_cannot_be_normalised(tmp_path):
    for s in ("train", "valid", "test"):
        write_pcm16(tmp_path / s / "a.wav", np.full(40, 7, "<i2"))
    with pytest.raises(ValueError, match=r"constant.*normalize=False"):
        load_wav_folder(tmp_path, frame_size=4, seq_len=2)
    assert load_wav_folder(tmp_path, frame_size=4, seq_len=2, normalize=False).meta["std"] == 1


# ---------------------------------------------------------------- load_dataset and the trainer

def test_load_dataset_reads_a_folder_for_timit_and_blizzard(tmp_path):
    for i in range(3):
        tmp_path.joinpath(f"{i}.wav").write_bytes(
            sphere_bytes(_ramp(i + 1, 40).tobytes(), count=40, rate=16000))   # SPHERE named .wav, as TIMIT
    b = load_dataset("blizzard", str(tmp_path), frame_size=4, seq_len=3)
    assert b.name == "blizzard" and b.meta["source"] == "wav" and b.meta["files"]["train"] == 1


@pytest.mark.parametrize("name", ["SA1.WAV", "one.wav", "x.sph"])
def test_load_dataset_names_a_single_audio_file_instead_of_reading_it_as_npz(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(sphere_bytes(_ramp(1, 40).tobytes(), count=40, rate=16000))
    with pytest.raises(ValueError, match=r"single audio file.*folder of \*\.wav files"):
        load_dataset("timit", str(f))


def test_trainer_runs_on_a_generated_wav_folder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "timit"
    t = np.arange(16400) / 8000
    for split, n in (("TRAIN", 3), ("TEST", 2)):
        for i in range(n):
            tone = 8000 * np.sin(2 * np.pi * (200 + 50 * i) * t) + rng.normal(0, 300, t.size)
            write_pcm16(folder / split / f"s{i}.wav", tone.astype("<i2"), rate=8000)
    from zf_kernels import train
    out = tmp_path / "run"
    assert train.main(["--preset", "timit", "--data", str(folder), "--max-steps", "3", "--rnn-dim", "16",
                       "--emb-dim", "8", "--z-dim", "4", "--mlp-dim", "8", "--batch-size", "4", "--iwae-k", "2",
                       "--num-samples", "2", "--eval-limit", "4", "--no-progress", "--out", str(out)]) == 0
    samples = sorted(out.glob("sample_*.wav"))
    assert [p.name for p in samples] == ["sample_0.wav", "sample_1.wav"]
    with wave.open(str(samples[0])) as w:   # 40 frames of 200 samples at the folder's rate
        assert w.getframerate() == 8000 and w.getnframes() == 40 * 200
    assert torch.isfinite(torch.from_numpy(read_audio(samples[0])[0])).all()
    # each test file: 82 frames -> 81 targets = 2 sequences + a 1-step tail; --eval-limit 4 keeps
    # file 0's three and file 1's first: bounds per recording share the sums between 2 files
    test = json.loads((out / "results.json").read_text())["test"]
    assert test["sequences"] == 4 and test["recordings"] == 2
    assert test["neg_elbo_per_recording"] == pytest.approx(test["neg_elbo"] * 4 / 2)
    assert test["iwae_per_recording"] == pytest.approx(test["iwae"] * 4 / 2)
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert f"per recording (2): -ELBO {test['neg_elbo_per_recording']:.3f}" in done[0]
    assert "scored in 40-step windows" in done[0]   # the timit preset's protocol

