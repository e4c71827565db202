"""The resumable training state (``ptycho_core.checkpoint``, ``specs/training.md``): a round trip
keeps every field and array bit for bit; every malformed file is a ConfigError naming the file
(and the key at fault)."""

import json
import math
import zipfile

import numpy as np
import pytest

from ptycho_core.checkpoint import (
    STATE_FORMAT,
    STATE_VERSION,
    TrainingSnapshot,
    checked_arrays,
    read_training_state,
    write_training_state,
)
from ptycho_core.errors import ConfigError, PtychoError


def _snapshot(**kw):
    rng = np.random.default_rng(0)
    fields = dict(
        backend="tensorflow",
        epoch=2,
        nepochs=5,
        stopped=False,
        history={"rows": [{"epoch": 0.0, "train_loss": 1.5, "val_loss": math.nan}]},
        callbacks={"EarlyStopping": {"wait": 1, "best": np.float32(0.25), "x": None}},
        weights=[rng.normal(size=(3, 3, 1, 4)).astype(np.float32), np.zeros(4, np.float32)],
        optimizer=[np.int64(7) * np.ones((), np.int64), rng.normal(size=(4,))],
    )
    fields.update(kw)
    return TrainingSnapshot(**fields)


def _write_raw(path, header, arrays):
    """An .npz with a hand-made ``state`` header (None: no header) and ``arrays``."""
    if header is not None:
        arrays = {"state": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}
    np.savez(path, **arrays)
    return path


def _header(**kw):
    h = dict(
        format=STATE_FORMAT,
        version=STATE_VERSION,
        backend="tensorflow",
        epoch=0,
        nepochs=1,
        stopped=False,
        history={"rows": []},
        callbacks={},
        n_weights=1,
        n_optimizer=0,
    )
    h.update(kw)
    return h


def test_round_trip_keeps_every_field_and_array(tmp_path):
    snap = _snapshot()
    path = write_training_state(tmp_path / "sub" / "last.state.npz", snap)
    back = read_training_state(path, "tensorflow")
    assert back.path == path and back.backend == "tensorflow"
    assert (back.epoch, back.nepochs, back.stopped) == (2, 5, False)
    assert back.history["rows"][0]["train_loss"] == 1.5
    assert math.isnan(back.history["rows"][0]["val_loss"])
    assert back.callbacks == {"EarlyStopping": {"wait": 1, "best": 0.25, "x": None}}
    assert isinstance(back.callbacks["EarlyStopping"]["best"], float)
    for got, want in zip(back.weights + back.optimizer, snap.weights + snap.optimizer, strict=True):
        assert got.dtype == np.asarray(want).dtype
        np.testing.assert_array_equal(got, want)
    assert read_training_state(path).backend == "tensorflow"  # any backend
    # atomic: no temporary file is left next to it
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.state.npz"]


def test_writer_refuses_object_arrays(tmp_path):
    bad = _snapshot(weights=[np.array([{"a": 1}], dtype=object)])
    with pytest.raises(ValueError, match="numeric arrays"):
        write_training_state(tmp_path / "s.npz", bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("stopped", "nepochs", "first"), [(False, 5, 3), (True, 5, 5), (True, 4, 4), (True, 8, 3)]
)
def test_first_epoch(stopped, nepochs, first):
    assert _snapshot(stopped=stopped).first_epoch(nepochs) == first


def _refused(path, match, backend="tensorflow"):
    with pytest.raises(ConfigError, match=match) as info:
        read_training_state(path, backend)
    assert str(path) in str(info.value) and isinstance(info.value, PtychoError)
    return str(info.value)


W = {"weight_0000": np.ones(2, np.float32)}


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.npz", "no such file")


@pytest.mark.parametrize("content", [b"", b"garbage, not an npz"], ids=["empty", "garbage"])
def test_not_an_npz(tmp_path, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    _refused(bad, "not a readable .npz")


def test_truncated_file(tmp_path):
    path = write_training_state(tmp_path / "s.npz", _snapshot())
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path.write_bytes(data[:cut])
        _refused(path, "not a readable")


def test_corrupt_member_names_the_key(tmp_path):
    """A member whose bytes changed (CRC mismatch) is refused with its key."""
    path = write_training_state(tmp_path / "s.npz", _snapshot())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weight_0000.npy")
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(path, "key 'weight_0000'")


def test_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(
        path,
        state=np.frombuffer(json.dumps(_header()).encode(), np.uint8),
        weight_0000=np.array([{"evil": 1}], dtype=object),
    )
    _refused(path, "key 'weight_0000'.*(pickle|allow_pickle)")


def test_missing_header(tmp_path):
    _refused(_write_raw(tmp_path / "h.npz", None, W), "missing key 'state'")


def test_header_not_json(tmp_path):
    path = tmp_path / "j.npz"
    np.savez(path, state=np.frombuffer(b"{not json", np.uint8), **W)
    _refused(path, "key 'state': not UTF-8 JSON")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "ptycho-tf-training-state"}, "format is not"),
        ({"version": STATE_VERSION + 1}, "version 2 is not supported"),
        ({"backend": "pytorch"}, "written by backend 'pytorch'"),
        ({"epoch": -1}, "epoch = -1, expected int >= 0"),
        ({"epoch": 1.5}, "epoch = 1.5, expected int"),
        ({"nepochs": 0}, "nepochs = 0"),
        ({"stopped": "no"}, "stopped = 'no', expected bool"),
        ({"history": []}, "history"),
        ({"callbacks": {"EarlyStopping": 3}}, "callbacks"),
        ({"n_weights": True}, "n_weights = True"),
        ({"n_weights": 2}, "missing key 'weight_0001'"),
        ({"n_weights": 0}, "unexpected key 'weight_0000'"),
    ],
)
def test_bad_header(tmp_path, change, match):
    _refused(_write_raw(tmp_path / "b.npz", _header(**change), W), match)


def test_missing_header_field(tmp_path):
    header = _header()
    del header["epoch"]
    _refused(_write_raw(tmp_path / "m.npz", header, W), "key 'state': epoch = None")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, value):
    bad = np.ones(3, np.float32)
    bad[1] = value
    path = write_training_state(tmp_path / "n.npz", _snapshot(optimizer=[np.int64(1), bad]))
    _refused(path, "key 'optimizer_0001': holds non-finite values")


def test_checked_arrays(tmp_path):
    snap = read_training_state(write_training_state(tmp_path / "c.npz", _snapshot()))
    expected = [("conv/kernel", (3, 3, 1, 4)), ("conv/bias", (4,))]
    assert checked_arrays(snap, "weights", expected) is snap.weights
    text = _refused_checked(snap, [("conv/kernel", (3, 3, 1, 8)), ("conv/bias", (4,))])
    assert "conv/kernel" in text and "[3, 3, 1, 4]" in text and "[3, 3, 1, 8]" in text
    assert "holds 2 weights arrays, this model has 1" in _refused_checked(snap, expected[:1])


def _refused_checked(snap, expected):
    with pytest.raises(ConfigError) as info:
        checked_arrays(snap, "weights", expected)
    assert str(snap.path) in str(info.value)
    return str(info.value)
