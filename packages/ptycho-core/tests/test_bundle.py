"""Model bundles (``specs/data-contracts.md``): manifest, atomic archive, and every rejection
path."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import zipfile

import numpy as np
import pytest

from ptycho_core.backends import BACKENDS
from ptycho_core.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_NAME,
    SCHEMA_VERSION,
    BundleNotFoundError,
    bundle_file,
    load_npy_bytes,
    make_manifest,
    npy_bytes,
    read_bundle,
    read_manifest,
    write_bundle,
)
from ptycho_core.errors import BundleBackendMismatchError, BundleError


@dataclasses.dataclass(frozen=True)
class _Cfg:
    N: int = 64
    gridsize: int = 2

    def to_dict(self):
        return {"N": self.N, "gridsize": self.gridsize, "via": "to_dict"}


def _manifest(backend="pytorch"):
    return make_manifest(
        backend,
        _Cfg(),
        {"nepochs": 3, "batch_size": 16},
        12.5,
        {"norm_factor": np.float32(0.5), "nphotons": 1e9},
        ["autoencoder"],
    )


def _files():
    probe = (np.arange(16).reshape(4, 4) * (1 + 1j)).astype(np.complex64)
    return {"probe.npy": npy_bytes(probe), "state_dict.pt": os.urandom(300) + b"\0" * 3000}


def _good(tmp_path, backend="pytorch"):
    path = tmp_path / BUNDLE_NAME
    write_bundle(path, _manifest(backend), _files())
    return path


def test_constants():
    assert (BUNDLE_FORMAT, SCHEMA_VERSION, BUNDLE_NAME) == ("ptycho-bundle", 1, "wts.h5.zip")


def test_manifest_content():
    m = _manifest()
    assert m["format"] == "ptycho-bundle" and m["schema_version"] == 1
    assert m["backend"] == "pytorch" and m["model_names"] == ["autoencoder"]
    assert m["model_config"] == {"N": 64, "gridsize": 2, "via": "to_dict"}
    assert m["training_config"]["nepochs"] == 3
    assert m["intensity_scale"] == 12.5 and m["normalization"]["norm_factor"] == 0.5
    assert m["creator"]["ptycho-core"] and m["creator"]["numpy"] == np.__version__
    created = datetime.datetime.fromisoformat(m["created"])
    assert created.tzinfo is not None
    json.dumps(m, allow_nan=False)


def test_manifest_rejects_bad_values():
    with pytest.raises(ValueError, match="backend"):
        make_manifest("jax", {}, {}, 1.0, {}, [])
    with pytest.raises(ValueError, match="intensity_scale"):
        make_manifest("pytorch", {}, {}, float("nan"), {}, [])
    with pytest.raises(ValueError, match="shadow"):
        make_manifest("pytorch", {}, {}, 1.0, {}, [], extra={"backend": "x"})
    assert make_manifest("tensorflow", None, {}, 1.0, {}, [], extra={"N": 64})["N"] == 64


def test_round_trip_and_manifest_first(tmp_path):
    path = _good(tmp_path)
    b = read_bundle(path, expected_backend="pytorch")
    assert b.backend == "pytorch" and b.path == path
    assert set(b.files) == {"probe.npy", "state_dict.pt"}
    assert b.files["probe.npy"] == _files()["probe.npy"] and len(b.files["state_dict.pt"]) == 3300
    np.testing.assert_array_equal(
        b.load_npy("probe.npy"), (np.arange(16).reshape(4, 4) * (1 + 1j)).astype(np.complex64)
    )
    assert b.manifest["files"]["state_dict.pt"]["size"] == 3300
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "manifest.json"
    assert read_manifest(path)["backend"] == "pytorch"
    with pytest.raises(BundleError, match="model.weights.h5"):
        b.require("model.weights.h5")
    assert os.listdir(tmp_path) == [BUNDLE_NAME]


def test_backend_mismatch(tmp_path):
    path = _good(tmp_path, "tensorflow")
    with pytest.raises(BundleBackendMismatchError) as info:
        read_bundle(path, expected_backend="pytorch")
    assert "'tensorflow'" in str(info.value) and "'pytorch'" in str(info.value)
    assert isinstance(info.value, BundleError)


def test_folder_resolves_to_its_bundle(tmp_path):
    path = _good(tmp_path)
    assert bundle_file(tmp_path) == path and bundle_file(path) == path
    assert read_bundle(tmp_path).path == path
    assert read_manifest(tmp_path)["backend"] == "pytorch"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleNotFoundError, match=BUNDLE_NAME):
        read_bundle(empty)


def test_missing_file(tmp_path):
    with pytest.raises(BundleNotFoundError, match="nope.zip") as info:
        read_bundle(tmp_path / "nope.zip")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, BundleError)


def _raw_zip(path, entries, manifest=None):
    """A zip written by hand (bypassing write_bundle's checks)."""
    with zipfile.ZipFile(path, "w") as zf:
        if manifest is not None:
            zf.writestr(
                "manifest.json", manifest if isinstance(manifest, str) else json.dumps(manifest)
            )
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _bad(path, *fragments):
    with pytest.raises(BundleError) as info:
        read_bundle(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../evil.npy", "a/../../b", "C:/x.npy", "a\\..\\b", "./probe.npy", "a//b"],
)
def test_unsafe_names_rejected(tmp_path, name):
    m = _manifest()
    m["files"] = {name: {"size": 1, "sha256": "0" * 64}}
    _bad(_raw_zip(tmp_path / "b.zip", [(name, b"x")], m), "unsafe entry name")


def test_writer_refuses_unsafe_names(tmp_path):
    with pytest.raises(BundleError, match="unsafe"):
        write_bundle(tmp_path / "w.zip", _manifest(), {"../x": b""})
    assert os.listdir(tmp_path) == []


def test_duplicate_names_rejected(tmp_path):
    import warnings

    m = _manifest()
    m["files"] = {"probe.npy": {"size": 1, "sha256": "0" * 64}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we create on purpose
        path = _raw_zip(tmp_path / "d.zip", [("probe.npy", b"a"), ("probe.npy", b"b")], m)
    _bad(path, "duplicate")


def test_missing_manifest(tmp_path):
    _bad(_raw_zip(tmp_path / "m.zip", [("probe.npy", b"x")]), "missing manifest.json")


def test_invalid_manifest_json(tmp_path):
    _bad(_raw_zip(tmp_path / "j.zip", [], manifest="{not json"), "not valid JSON")


def test_unknown_format(tmp_path):
    m = dict(_manifest(), format="something-else")
    _bad(_raw_zip(tmp_path / "f.zip", [], m), "unknown bundle format")


@pytest.mark.parametrize("version", [2, "1", 0, None])
def test_unknown_schema_version(tmp_path, version):
    m = dict(_manifest(), schema_version=version)
    _bad(_raw_zip(tmp_path / "s.zip", [], m), "schema_version")


def test_not_a_zip_and_truncated(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip" * 4)
    _bad(junk, "not a valid zip")
    good = _good(tmp_path)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.zip"
    trunc.write_bytes(data[: len(data) // 2])
    _bad(trunc)


def test_crc_error_detected(tmp_path):
    path = tmp_path / "crc.zip"
    m = _manifest()
    payload = b"A" * 1000
    import hashlib

    m["files"] = {"w.bin": {"size": 1000, "sha256": hashlib.sha256(payload).hexdigest()}}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps(m))
        zf.writestr("w.bin", payload)
    raw = bytearray(path.read_bytes())
    i = raw.find(payload)
    raw[i + 500] = ord("B")  # flip one stored byte: sizes unchanged, CRC now wrong
    path.write_bytes(bytes(raw))
    _bad(path, "zip")


def test_sha_mismatch_and_unlisted_entries(tmp_path):
    m = _manifest()
    m["files"] = {"w.bin": {"size": 3, "sha256": "0" * 64}}
    _bad(_raw_zip(tmp_path / "sha.zip", [("w.bin", b"abc")], m), "checksum")
    m["files"] = {}
    _bad(_raw_zip(tmp_path / "extra.zip", [("w.bin", b"abc")], m), "not listed")
    m["files"] = {"gone.bin": {"size": 3, "sha256": "0" * 64}}
    _bad(_raw_zip(tmp_path / "gone.zip", [], m), "missing")


def test_zip_bomb_guard(tmp_path):
    path = tmp_path / BUNDLE_NAME
    write_bundle(path, _manifest(), {"zeros.bin": b"\0" * 2_000_000})
    assert path.stat().st_size < 50_000  # it really is a high-ratio archive
    with pytest.raises(BundleError, match="zip bomb"):
        read_bundle(path, max_total_bytes=1_000_000)
    assert len(read_bundle(path).files["zeros.bin"]) == 2_000_000


def test_npy_bytes_never_pickle():
    a = np.linspace(0, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(load_npy_bytes(npy_bytes(a)), a)
    with pytest.raises(ValueError):
        npy_bytes(np.array([{"a": 1}], dtype=object))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="non-pickled"):
        load_npy_bytes(buf.getvalue())
    with pytest.raises(BundleError):
        load_npy_bytes(b"garbage")


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / BUNDLE_NAME
    with pytest.raises(ValueError):
        write_bundle(path, dict(_manifest(), bad=float("nan")), _files())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("info", BACKENDS, ids=lambda i: i.name)
def test_creator_versions_follow_the_backend_table(monkeypatch, info):
    """A manifest records the ptycho distributions of every backend, and the framework
    distributions of its own backend only (names from ptycho_core.backends.BACKENDS)."""
    from ptycho_core import bundle as core_bundle

    monkeypatch.setattr(core_bundle._metadata, "version", lambda dist: f"v-{dist}")
    creator = make_manifest(info.name, {}, {}, 1.0, {}, [])["creator"]
    others = {f for b in BACKENDS if b is not info for f in b.framework_distributions}
    assert {b.distribution for b in BACKENDS} <= set(creator)
    assert set(info.framework_distributions) <= set(creator)
    assert not (others - set(info.framework_distributions)) & set(creator)
    assert all(creator[d] == f"v-{d}" for d in creator)
    # every backend of the table is accepted by the writer and the reader
    assert make_manifest(info.name, {}, {}, 1.0, {}, [])["backend"] == info.name


def test_old_bundle_with_positions_provided_still_loads(tmp_path):
    """Bundles written before TrainingConfig.positions_provided was removed carry the key."""
    from ptycho_core.config import ModelConfig, TrainingConfig
    from ptycho_core.engine import bundle_configs

    current = TrainingConfig(model=ModelConfig(N=32), nepochs=7)
    old_training = dict(current.to_dict(), positions_provided=True)
    path = tmp_path / BUNDLE_NAME
    manifest = make_manifest("tensorflow", ModelConfig(N=32), old_training, 2.0, {}, [])
    write_bundle(path, manifest, {"probe.npy": npy_bytes(np.ones((32, 32), np.complex64))})
    with pytest.warns(DeprecationWarning, match="positions_provided"):
        model, training = bundle_configs(read_manifest(path), path)
    assert model == ModelConfig(N=32)
    assert training == current


def test_bundle_without_merge_weights_reads_as_the_centre_merge(tmp_path):
    """Bundles written before ModelConfig.merge_weights were trained with the centre-square
    merge: a model config without the key (top level and the training config's nested one)
    reads as merge_weights='centre' (specs/model.md); a bundle that has the key keeps it."""
    from ptycho_core.config import ModelConfig, TrainingConfig
    from ptycho_core.engine import bundle_configs

    current = TrainingConfig(model=ModelConfig(N=32, gridsize=2), nepochs=7)
    assert current.model.merge_weights == "probe"  # the default of new models
    old_model = {k: v for k, v in current.model.to_dict().items() if k != "merge_weights"}
    old_training = dict(current.to_dict(), model=old_model)
    path = tmp_path / BUNDLE_NAME
    manifest = make_manifest("pytorch", old_model, old_training, 2.0, {}, [])
    write_bundle(path, manifest, {"probe.npy": npy_bytes(np.ones((32, 32), np.complex64))})
    model, training = bundle_configs(read_manifest(path), path)
    legacy = ModelConfig(N=32, gridsize=2, merge_weights="centre")
    assert model == legacy and training is not None and training.model == legacy
    assert "merge_weights" not in read_manifest(path)["model_config"]  # nothing written back

    new = tmp_path / "new" / BUNDLE_NAME
    new.parent.mkdir()
    manifest = make_manifest("pytorch", current.model, current, 2.0, {}, [])
    write_bundle(new, manifest, {"probe.npy": npy_bytes(np.ones((32, 32), np.complex64))})
    model, training = bundle_configs(read_manifest(new), new)
    assert model == current.model and training == current


@pytest.mark.parametrize(
    ("key", "default", "legacy", "backend"),
    [
        # bundles from before ModelConfig.generator hold CNN weights
        ("generator", "fourier", "cnn", "tensorflow"),
        # bundles from before ModelConfig.physics_stages have no stage weights
        ("physics_stages", 3, 0, "pytorch"),
        # hand-written manifests from before the default gridsize became 2
        ("gridsize", 2, 1, "pytorch"),
    ],
)
def test_bundle_without_a_later_model_key_reads_as_what_it_was_trained_with(
    tmp_path, key, default, legacy, backend
):
    """A model config without ``key`` (top level and nested) reads as the value the bundles
    written before the field were trained with (specs/model.md), not the new default."""
    from ptycho_core.config import ModelConfig, TrainingConfig
    from ptycho_core.engine import bundle_configs

    current = TrainingConfig(model=ModelConfig(N=32), nepochs=7)
    assert getattr(current.model, key) == default  # the default of new models
    old_model = {k: v for k, v in current.model.to_dict().items() if k != key}
    old_training = dict(current.to_dict(), model=old_model)
    path = tmp_path / BUNDLE_NAME
    manifest = make_manifest(backend, old_model, old_training, 2.0, {}, [])
    write_bundle(path, manifest, {"probe.npy": npy_bytes(np.ones((32, 32), np.complex64))})
    model, training = bundle_configs(read_manifest(path), path)
    expected = ModelConfig.from_dict(dict(current.model.to_dict(), **{key: legacy}))
    assert model == expected and training is not None and training.model == expected


# ----------------------------------------------------------------------------- reader soundness
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("intensity_scale", float("nan"), "'intensity_scale'"),
        ("intensity_scale", float("inf"), "'intensity_scale'"),
        ("intensity_scale", True, "'intensity_scale'"),
        ("intensity_scale", "x", "'intensity_scale'"),
        ("intensity_scale", None, "'intensity_scale'"),
        ("intensity_scale", 0, "'intensity_scale'"),
        ("model_config", "x", "'model_config'"),
        ("training_config", [1], "'training_config'"),
        ("normalization", 3, "'normalization'"),
        ("model_names", "abc", "'model_names'"),
    ],
)
def test_manifest_values_are_checked_by_both_readers(tmp_path, key, value, fragment):
    """Every reader checks what it returns: a manifest value of the wrong type, or a scale that
    is not finite and > 0, is a BundleError naming the key (read_manifest too, so `inspect`)."""
    m = dict(_manifest(), **{key: value})
    m["files"] = {}
    path = _raw_zip(tmp_path / "m.zip", [], m)
    _bad(path, "manifest key", fragment)
    with pytest.raises(BundleError, match=fragment):
        read_manifest(path)


def test_missing_intensity_scale(tmp_path):
    m = _manifest()
    del m["intensity_scale"]
    m["files"] = {}
    _bad(_raw_zip(tmp_path / "m.zip", [], m), "'intensity_scale'", "finite number > 0")


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.full((4, 4), np.nan, np.complex64), "finite"),
        (np.zeros((0, 4), np.complex64), "non-empty"),
        (np.array(["a", "b"]), "numeric"),
    ],
)
def test_load_npy_refuses_nan_empty_and_text(tmp_path, array, fragment):
    with pytest.raises(BundleError, match=fragment):
        load_npy_bytes(npy_bytes(array), name="probe.npy")
    path = tmp_path / BUNDLE_NAME
    write_bundle(path, _manifest(), {"probe.npy": npy_bytes(array)})
    with pytest.raises(BundleError, match=f"{BUNDLE_NAME}:probe.npy.*{fragment}"):
        read_bundle(path).load_npy()


def test_damaged_npy_header_in_a_bundle_is_a_bundle_error():
    """D1 for bundles: the header text that made numpy raise tokenize.TokenError."""
    data = npy_bytes(np.ones((4, 4), np.complex64))
    hlen = int.from_bytes(data[8:10], "little")
    text = b"{'descr': (\n"
    bad = data[:8] + len(text).to_bytes(2, "little") + text + data[10 + hlen :]
    with pytest.raises(BundleError, match="probe.npy"):
        load_npy_bytes(bad, name="probe.npy")
