"""Fuzzing the readers: every failure is a ``PtychoError`` subclass, every success is sound.

Seeded mutations of valid files, at three levels (``specs/data-contracts.md``, "Fuzzing"):

- bytes: truncations, bit flips, random bytes, runs of ``0xff`` near the end (zip central
  directories, HDF5 metadata), inserted and deleted ranges;
- container: rebuilt zip archives (damaged or forged ``.npy`` headers, renamed, duplicated,
  dropped or re-compressed members, truncated data) and edited HDF5 files (datasets deleted,
  replaced by groups, links, strings, compound or empty data, attributes of the wrong type);
- content: valid containers holding wrong arrays or values (NaN, inf, empty, wrong shape or
  dtype, bad metadata JSON, manifests re-hashed so that only the content is wrong).

For each case the reader either returns a result that passes :func:`_check_scan`,
:func:`_check_product` or :func:`_check_bundle` (non-empty, finite), or raises a
:class:`~ptycho_core.errors.PtychoError` subclass. Anything else (``KeyError``,
``struct.error``, ``TokenError``, an unsound result, a case over :data:`CASE_TIMEOUT_S`, a crash
of the process) is an escape and fails the test. Each reader's cases run in a child process
(:func:`run_fuzz_isolated`), so a segfault or a hang inside libhdf5 fails the test naming its
case instead of killing pytest. The cases are reproducible: case ``i`` of reader ``r`` uses
``numpy.random.default_rng([seed, r, i])``.

CI runs :data:`CI_CASES` per reader (8 s in all on an idle core, ~40 s on the loaded 2-core
box); ``benchmarks/bench_fuzz.py`` runs the same harness with 20,000 cases per reader and
records the figures in ``benchmarks/README.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ptycho_core.bundle import (
    Bundle,
    make_manifest,
    npy_bytes,
    read_bundle,
    write_bundle,
)
from ptycho_core.errors import PtychoError
from ptycho_core.io import (
    Product,
    ScanData,
    load_npz,
    read_product,
    save_npz,
    scan_to_product,
    write_product,
)

#: Cases per reader in CI (the issue asks for >= 2,000 NPZ, >= 1,000 products and bundles).
CI_CASES = {"npz": 2000, "product": 1000, "bundle": 1000}
#: A case that takes longer than this counts as a hang.
CASE_TIMEOUT_S = 10.0
SEED = 20240611
READERS = ("npz", "product", "bundle")


# ----------------------------------------------------------------------------- valid inputs
def _scan(rng: np.random.Generator, m: int = 5, n: int = 8, full: bool = True) -> ScanData:
    return ScanData(
        rng.random((m, n, n)),
        rng.random(m) * 8 + 4,
        rng.random(m) * 8 + 4,
        (rng.random((n, n)) + 1j).astype(np.complex64),
        object=np.ones((16, 16), np.complex64) if full else None,
        Y=(rng.random((m, n, n)) + 0j).astype(np.complex64) if full else None,
        scan_index=np.arange(m) % 2,
        metadata={"nphotons": 1e4, "note": "fuzz"} if full else {},
    )


def _base_npz(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    path = tmp / "base.npz"
    save_npz(path, _scan(rng), nphotons=1e4)
    out.append(path.read_bytes())
    s = _scan(rng, full=False)
    np.savez_compressed(
        path,
        diff3d=s.diffraction.astype(np.float64),
        xcoords=s.xcoords,
        ycoords=s.ycoords,
        probeGuess=s.probe,
        _metadata=np.array('{"nphotons": 100.0}'),
    )
    out.append(path.read_bytes())
    return out


def _base_products(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(1)
    path = tmp / "base.h5"
    write_product(path, scan_to_product(_scan(rng), pixel_size_m=1e-8, loss_values=[1.0, 0.5]))
    first = path.read_bytes()
    with h5py.File(path, "w") as h5:  # a Ptychodus-like file: compressed, other spellings
        h5.attrs["photon_energy_eV"] = 8000.0
        h5.attrs["name"] = b"fuzz"
        for key, data in (
            ("probe_position_indexes", np.arange(5)),
            ("probe_position_x_m", rng.random(5) * 1e-6),
            ("probe_position_y_m", rng.random(5) * 1e-6),
        ):
            h5.create_dataset(key, data=data)
        h5.create_dataset("probe", data=np.ones((1, 1, 8, 8), np.complex128), compression="gzip")
        obj = h5.create_dataset(
            "object", data=np.ones((1, 16, 16), np.complex64), compression="gzip", chunks=(1, 8, 8)
        )
        for key, value in (("center_x_m", 0.0), ("center_y_m", 0.0)):
            obj.attrs[key] = value
        for key in ("pixel_width_m", "pixel_height_m"):
            obj.attrs[key] = 1e-8
        h5.create_dataset("costs", data=[3.0, 2.0])
    return [first, path.read_bytes()]


def _base_bundles(tmp: Path) -> list[bytes]:
    path = tmp / "wts.h5.zip"
    manifest = make_manifest(
        "pytorch", {"N": 8, "gridsize": 1}, {"nepochs": 2}, 3.0, {"norm_factor": 0.5}, ["m"]
    )
    write_bundle(
        path,
        manifest,
        {
            "probe.npy": npy_bytes(np.ones((8, 8), np.complex64)),
            "state_dict.pt": bytes(range(256)) * 8,
        },
    )
    return [path.read_bytes()]


# ----------------------------------------------------------------------------- byte mutations
def _mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    size = len(data)
    buf = bytearray(data)
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return "truncate", bytes(buf[: int(rng.integers(0, size))])
    if kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, size))
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return "bitflip", bytes(buf)
    if kind == 2:
        for i in rng.integers(0, size, size=int(rng.integers(2, 30))):
            buf[int(i)] = int(rng.integers(0, 256))
        return "random-bytes", bytes(buf)
    if kind == 3:
        start = int(rng.integers(max(0, size - 600), size))
        buf[start : start + int(rng.integers(1, 16))] = b"\xff" * int(rng.integers(1, 16))
        return "tail-ff", bytes(buf)
    if kind == 4:
        i = int(rng.integers(0, size))
        junk = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        return "insert", bytes(buf[:i]) + junk + bytes(buf[i:])
    if kind == 5:
        i = int(rng.integers(0, size))
        return "delete", bytes(buf[:i]) + bytes(buf[i + int(rng.integers(1, 256)) :])
    i = int(rng.integers(0, size))
    j = min(size, i + int(rng.integers(1, 512)))
    return "duplicate-range", bytes(buf[:j]) + bytes(buf[i:j]) + bytes(buf[j:])


# ----------------------------------------------------------------------------- zip helpers
def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _zip(members: list[tuple[str, bytes]], rng: np.random.Generator | None = None) -> bytes:
    buf = io.BytesIO()
    methods = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what some cases want
        with zipfile.ZipFile(buf, "w") as zf:
            for name, payload in members:
                method = zipfile.ZIP_STORED
                if rng is not None and rng.random() < 0.15:
                    method = methods[int(rng.integers(0, len(methods)))]
                zf.writestr(name, payload, compress_type=method)
    return buf.getvalue()


_DESCRS = [
    "'<f4'",
    "'<f8'",
    "'>f8'",
    "'<c8'",
    "'|O'",
    "'<U3'",
    "'|S0'",
    "'|V8'",
    "'<M8[s]'",
    "'|b1'",
    "'<i8'",
    "[('a', '<f4')]",
    "('<f4', (2,))",
    "'bogus'",
    "3",
    "None",
]


def _npy_header(rng: np.random.Generator) -> bytes:
    """A forged ``.npy`` v1.0 header: a random descr, shape and fortran flag, or garbage."""
    descr = _DESCRS[int(rng.integers(0, len(_DESCRS)))]
    dims = [
        int(v)
        for v in rng.choice([0, 1, 2, 5, 8, -1, 10**6, 10**12, 2**62], size=int(rng.integers(0, 4)))
    ]
    shape = "(" + "".join(f"{d}, " for d in dims) + ")"
    fortran = ["False", "True", "'no'", "0"][int(rng.integers(0, 4))]
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    kind = rng.random()
    if kind < 0.2:  # cut the header text short (the audit's TokenError)
        text = text[: int(rng.integers(0, len(text)))]
    elif kind < 0.3:
        text = "(" * int(rng.integers(1, 300))
    elif kind < 0.35:
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8, 8), 'extra': 1}"
    raw = text.encode("latin1") + b"\n"
    version = b"\x01\x00" if rng.random() < 0.9 else bytes(rng.integers(0, 4, 2, dtype=np.uint8))
    return b"\x93NUMPY" + version + len(raw).to_bytes(2, "little") + raw


def _mutate_npz_container(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    members = _members(data)
    i = int(rng.integers(0, len(members)))
    name, payload = members[i]
    kind = int(rng.integers(0, 8))
    if kind == 0:
        hlen = int.from_bytes(payload[8:10], "little")
        members[i] = (name, _npy_header(rng) + payload[10 + hlen :])
        return "npy-header", _zip(members, rng)
    if kind == 1:
        cut = int(rng.integers(0, len(payload)))
        members[i] = (name, payload[:cut])
        return "npy-truncate", _zip(members, rng)
    if kind == 2:
        members[i] = (name, payload + bytes(int(rng.integers(1, 64))))
        return "npy-extend", _zip(members, rng)
    if kind == 3:
        other = ["diffraction.npy", "xcoords.npy", "Y.npy", "x", "probeGuess", "a/../b.npy"]
        members[i] = (other[int(rng.integers(0, len(other)))], payload)
        return "rename", _zip(members, rng)
    if kind == 4:
        members.append(members[i])
        return "duplicate", _zip(members, rng)
    if kind == 5:
        del members[i]
        return "drop", _zip(members, rng)
    if kind == 6:
        j = int(rng.integers(0, len(payload)))
        buf = bytearray(payload)
        buf[j] ^= 0xFF
        members[i] = (name, bytes(buf))
        return "npy-byte", _zip(members, rng)
    return "recompress", _zip(members, rng)


# ----------------------------------------------------------------------------- content mutations
_JSON_TEXTS = [
    "{not json",
    "[]",
    '"x"',
    '{"nphotons": NaN}',
    '{"nphotons": Infinity}',
    '{"nphotons": "many"}',
    '{"nphotons": -1}',
    '{"nphotons": true}',
    '{"nphotons": null}',
    "[" * 5000,
    '{"a": ' * 2000 + "1" + "}" * 2000,
    "",
]


def _bad_array(rng: np.random.Generator, like: np.ndarray) -> Any:
    """A wrong replacement for ``like``: NaN/inf, empty, wrong shape or dtype, or a scalar."""
    kind = int(rng.integers(0, 12))
    a = np.array(like, copy=True)
    if a.dtype.kind not in "biufc":  # text (the metadata): replace it by numbers first
        a = rng.random(3)
    if kind == 0 and a.size and a.dtype.kind in "fc":
        a.reshape(-1)[int(rng.integers(0, a.size))] = [np.nan, np.inf, -np.inf][
            int(rng.integers(0, 3))
        ]
        return a
    if kind == 1:
        shape = list(a.shape) or [1]
        shape[int(rng.integers(0, len(shape)))] = 0
        return np.zeros(shape, a.dtype)
    if kind == 2:
        return a.reshape(-1)
    if kind == 3:
        return a[..., np.newaxis]
    if kind == 4:
        return a.astype(bool)
    if kind == 5:
        return a.astype(str) if a.dtype.kind != "c" else a.real.astype(str)
    if kind == 6:
        return np.ones(a.shape, np.complex128)
    if kind == 7:
        return np.zeros(a.shape, dtype=[("r", "<f4"), ("i", "<f4")])
    if kind == 8:
        return np.float64(rng.random())
    if kind == 9:
        with np.errstate(over="ignore"):
            return (a.real if a.dtype.kind == "c" else a).astype(np.float64) * -1e308
    if kind == 10:
        return np.zeros(a.shape, "datetime64[s]")
    return a[: max(0, a.shape[0] - 1)] if a.ndim else a


def _mutate_npz_content(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = sorted(arrays)[int(rng.integers(0, len(arrays)))]
    roll = rng.random()
    if roll < 0.15:
        del arrays[key]
        kind = f"drop {key}"
    elif roll < 0.3:
        arrays["_metadata"] = np.array(_JSON_TEXTS[int(rng.integers(0, len(_JSON_TEXTS)))])
        kind = "metadata"
    else:
        arrays[key] = _bad_array(rng, arrays[key])
        kind = f"bad {key}"
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return kind, buf.getvalue()


def _h5_edit(data: bytes, rng: np.random.Generator, work: Path) -> tuple[str, bytes]:
    """Edit a product file with h5py: the container stays valid, its content does not."""
    path = work / "edit.h5"
    path.write_bytes(data)
    with h5py.File(path, "a") as h5:
        keys = sorted(h5.keys())
        key = keys[int(rng.integers(0, len(keys)))]
        kind = int(rng.integers(0, 9))
        if kind == 0:
            del h5[key]
            what = f"delete {key}"
        elif kind == 1:
            old = np.asarray(h5[key][()])
            del h5[key]
            bad = _bad_array(rng, old)
            with contextlib.suppress(TypeError, ValueError):  # h5py cannot store datetime64
                h5.create_dataset(key, data=bad)
            what = f"replace {key}"
        elif kind == 2:
            del h5[key]
            h5.create_group(key)
            what = f"group {key}"
        elif kind == 3:
            del h5[key]
            h5[key] = h5py.SoftLink("/nowhere")
            what = f"dangling link {key}"
        elif kind == 4:
            del h5[key]
            h5[key] = h5py.ExternalLink("/etc/hostname", "/x")
            what = f"external link {key}"
        elif kind == 5:
            del h5[key]
            h5.create_dataset(key, data=h5py.Empty("f"))
            what = f"null dataspace {key}"
        elif kind == 6:
            del h5[key]
            h5.create_dataset(key, data=[b"a", b"bc"], dtype=h5py.string_dtype())
            what = f"strings {key}"
        else:
            target = h5 if rng.random() < 0.5 else h5[key]
            names = list(target.attrs) or ["pixel_width_m"]
            attr = names[int(rng.integers(0, len(names)))]
            values: list[Any] = [
                np.nan,
                np.inf,
                "x",
                np.zeros(0),
                np.ones(3),
                True,
                1 + 2j,
                -1.0,
                b"\xff\xfe",
            ]
            target.attrs[attr] = values[int(rng.integers(0, len(values)))]
            what = f"attr {attr}"
    return what, path.read_bytes()


def _rehash(members: list[tuple[str, bytes]], manifest: Any) -> bytes:
    """A bundle whose manifest lists the given members' true sizes and hashes."""
    import hashlib

    if isinstance(manifest, dict):
        manifest = dict(manifest)
        manifest["files"] = {
            n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in members
            if n != "manifest.json"
        }
    text = json.dumps(manifest).encode()
    rest = [(n, b) for n, b in members if n != "manifest.json"]
    return _zip([("manifest.json", text), *rest])


_MANIFEST_VALUES: list[Any] = [
    None,
    "x",
    True,
    -1.0,
    0,
    math.nan,
    math.inf,
    [],
    {},
    [1, 2],
    {"N": "x"},
    2,
    10**400,
]


def _mutate_bundle_content(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    members = _members(data)
    manifest = json.loads(dict(members)["manifest.json"])
    kind = int(rng.integers(0, 7))
    if kind == 0:
        key = sorted(manifest)[int(rng.integers(0, len(manifest)))]
        manifest[key] = _MANIFEST_VALUES[int(rng.integers(0, len(_MANIFEST_VALUES)))]
        return f"manifest {key}", _rehash(members, manifest)
    if kind == 1:
        key = sorted(manifest)[int(rng.integers(0, len(manifest)))]
        del manifest[key]
        return f"manifest drop {key}", _rehash(members, manifest)
    if kind == 2:
        whole = _MANIFEST_VALUES[int(rng.integers(0, len(_MANIFEST_VALUES)))]
        return "manifest not an object", _rehash(members, whole)
    if kind == 3:
        probe = _bad_array(rng, np.ones((8, 8), np.complex64))
        try:
            payload = npy_bytes(probe)
        except ValueError:
            payload = b"\x93NUMPY\x01\x00" + b"junk"
        members = [(n, payload if n == "probe.npy" else b) for n, b in members]
        return "probe content", _rehash(members, manifest)
    if kind == 4:
        members = [(n, _npy_header(rng) + b[128:] if n == "probe.npy" else b) for n, b in members]
        return "probe header", _rehash(members, manifest)
    if kind == 5:
        names = ["../evil", "/abs", "a\\b", "dir/", "probe.npy", "x/./y", "C:x", "ok.bin"]
        members.append((names[int(rng.integers(0, len(names)))], b"payload"))
        return "extra entry", _rehash(members, manifest)
    payload = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
    members = [(n, payload if n == "state_dict.pt" else b) for n, b in members]
    return "payload swapped, not rehashed", _zip(members, rng)


# ----------------------------------------------------------------------------- soundness
def _check_scan(scan: ScanData) -> None:
    d = scan.diffraction
    assert d.ndim == 3 and d.size > 0 and d.dtype == np.float32
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    for a in (scan.xcoords, scan.ycoords, scan.probe):
        assert a.size > 0 and np.all(np.isfinite(a))
    for opt in (scan.object, scan.Y):
        assert opt is None or (opt.size > 0 and np.all(np.isfinite(opt)))
    nph = scan.metadata.get("nphotons")
    assert nph is None or (math.isfinite(nph) and nph > 0)


def _check_product(p: Product) -> None:
    for a in (p.probe_position_x_m, p.probe_position_y_m, p.probe, p.object):
        assert a.size > 0 and np.all(np.isfinite(a))
    assert np.all(np.isfinite(p.object_layer_spacing_m))
    for key in ("probe_pixel_width_m", "object_pixel_width_m", "object_center_x_m"):
        assert math.isfinite(getattr(p, key))


def _check_bundle(b: Bundle) -> None:
    s = b.manifest["intensity_scale"]
    assert isinstance(s, int | float) and math.isfinite(s) and s > 0
    if "probe.npy" in b.files:
        probe = b.load_npy()  # part of the reader's surface: may raise BundleError only
        assert probe.size > 0 and np.all(np.isfinite(probe))


# ----------------------------------------------------------------------------- the harness
class _HangError(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise _HangError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class FuzzStats:
    """Outcome of :func:`run_fuzz` for one reader."""

    reader: str
    cases: int = 0
    accepted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    escapes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest_s: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.reader}: {self.cases} cases in {self.seconds:.1f} s (slowest "
            f"{self.slowest_s * 1e3:.0f} ms): {self.accepted} accepted, "
            f"{sum(self.errors.values())} refused {dict(self.errors)}, "
            f"{len(self.escapes)} escapes"
        )


def _reader_for(name: str) -> tuple[Callable[[Path], Any], Callable[[Any], None]]:
    if name == "npz":
        return load_npz, _check_scan
    if name == "product":
        return read_product, _check_product
    return read_bundle, _check_bundle


def _case(name: str, bases: list[bytes], rng: np.random.Generator, work: Path) -> tuple[str, bytes]:
    base = bases[int(rng.integers(0, len(bases)))]
    level = rng.random()
    if level < 0.4:
        return _mutate_bytes(base, rng)
    if name == "npz":
        if level < 0.7:
            return _mutate_npz_container(base, rng)
        return _mutate_npz_content(base, rng)
    if name == "product":
        return _h5_edit(base, rng, work)
    if level < 0.55:
        members = _members(base)
        i = int(rng.integers(0, len(members)))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            members.append(members[i])
        elif kind == 1:
            del members[i]
        else:
            members[i] = (members[i][0], members[i][1][: int(rng.integers(0, 50))])
        return ("duplicate", "drop", "truncate member")[kind], _zip(members, rng)
    return _mutate_bundle_content(base, rng)


def run_fuzz(
    name: str,
    cases: int,
    work: Path,
    *,
    seed: int = SEED,
    start: int = 0,
    reader: Callable[[Path], Any] | None = None,
    progress: Path | None = None,
) -> FuzzStats:
    """Run cases ``start .. start + cases - 1`` of reader ``name`` ('npz', 'product',
    'bundle').

    ``reader`` replaces the real reader (to test the harness itself). Case ``i`` is
    reproducible: ``numpy.random.default_rng([seed, READERS.index(name), i])``. With
    ``progress``, each case's number and mutation are written (and flushed) there before the
    reader runs, so that a crash of the process (a segfault in a C library) names its case.
    """
    work.mkdir(parents=True, exist_ok=True)
    builders = {"npz": _base_npz, "product": _base_products, "bundle": _base_bundles}
    bases = builders[name](work)
    read, check = _reader_for(name)
    read = reader or read
    suffix = {"npz": ".npz", "product": ".h5", "bundle": ".zip"}[name]
    target = work / f"case{suffix}"
    stats = FuzzStats(name)
    log: Any = open(progress, "a", encoding="utf-8") if progress is not None else None
    with contextlib.closing(log) if log is not None else contextlib.nullcontext():
        t_start = time.perf_counter()
        for i in range(start, start + cases):
            rng = np.random.default_rng([seed, READERS.index(name), i])
            kind, data = _case(name, bases, rng, work)
            stats.kinds[kind.split(" ")[0]] += 1
            target.write_bytes(data)
            if log is not None:
                log.write(f"{i} {kind}\n")
                log.flush()
            t0 = time.perf_counter()
            try:
                with _deadline(CASE_TIMEOUT_S), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = read(target)
                    check(result)
            except PtychoError as exc:
                stats.errors[type(exc).__name__] += 1
            except _HangError as exc:
                stats.escapes.append(f"case {i} ({kind}): hang: {exc}")
            except AssertionError as exc:
                stats.escapes.append(f"case {i} ({kind}): unsound result accepted {exc!r}")
            except Exception as exc:
                stats.escapes.append(f"case {i} ({kind}): {type(exc).__name__}: {exc}"[:300])
            else:
                stats.accepted += 1
            stats.slowest_s = max(stats.slowest_s, time.perf_counter() - t0)
            stats.cases += 1
        stats.seconds = time.perf_counter() - t_start
    return stats


# ----------------------------------------------------------------------------- tests
_CHILD = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("fuzz_harness", sys.argv[1])
harness = importlib.util.module_from_spec(spec)
sys.modules["fuzz_harness"] = harness
spec.loader.exec_module(harness)
name, cases, start, work = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
seed = int(sys.argv[6])
st = harness.run_fuzz(name, cases, work, start=start, seed=seed, progress=work / "progress.txt")
print(json.dumps({"summary": st.summary(), "escapes": st.escapes, "cases": st.cases,
                  "accepted": st.accepted, "refused": sum(st.errors.values()),
                  "seconds": st.seconds, "slowest_s": st.slowest_s, "kinds": st.kinds}))
"""


def run_fuzz_isolated(
    name: str,
    cases: int,
    work: Path,
    *,
    start: int = 0,
    seed: int = SEED,
    timeout: float = 900,
) -> dict[str, Any]:
    """:func:`run_fuzz` in a child process, so that a crash (a segfault in libhdf5) or a hang
    inside C code (which no signal handler interrupts) is reported with its case instead of
    taking the caller down. Returns the stats as a dict; ``crash`` names the case, if any."""
    import subprocess
    import sys

    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.txt"
    progress.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _CHILD, __file__, name, str(cases), str(start), str(work)]
    argv.append(str(seed))
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        failure = None if out.returncode == 0 else f"exit status {out.returncode}"
    except subprocess.TimeoutExpired:
        out, failure = None, f"no answer within {timeout} s"
    if failure is None and out is not None:
        return dict(json.loads(out.stdout.strip().splitlines()[-1]), crash=None)
    lines = progress.read_text(encoding="utf-8").splitlines() if progress.exists() else []
    last = lines[-1] if lines else f"{start} (before the first case)"
    stderr = "" if out is None else out.stderr[-2000:]
    return {"crash": f"{name}: case {last}: {failure}\n{stderr}", "last_case": last}


@pytest.mark.parametrize("name", READERS)
def test_fuzz_every_failure_is_a_ptycho_error(tmp_path, name):
    stats = run_fuzz_isolated(name, CI_CASES[name], tmp_path, timeout=300)
    assert stats["crash"] is None, stats["crash"]
    print(stats["summary"])
    assert not stats["escapes"], "\n".join(stats["escapes"][:20])
    assert stats["cases"] == CI_CASES[name]
    # the mutations really were detected, and some left a valid file (both paths exercised)
    assert stats["refused"] > stats["cases"] // 2, stats["summary"]
    assert stats["accepted"] > 0, stats["summary"]


def test_isolated_run_names_the_case_that_crashed(tmp_path, monkeypatch):
    """A reader that kills its process (as a libhdf5 segfault does) fails with its case."""
    stats = run_fuzz_isolated("npz", 3, tmp_path / "ok")
    assert stats["crash"] is None and stats["cases"] == 3
    crashing = tmp_path / "crashing_harness.py"
    crashing.write_text(
        Path(__file__).read_text(encoding="utf-8")
        + "\n_reader_for = lambda name: (lambda path: __import__('os')._exit(139), None)\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "__file__", str(crashing))
    stats = run_fuzz_isolated("bundle", 5, tmp_path / "crash", start=7)
    assert stats["crash"] is not None and stats["last_case"].startswith("7 ")
    assert "exit status 139" in stats["crash"]


def test_harness_reports_foreign_exceptions_and_unsound_results(tmp_path):
    """The harness itself can fail: a reader raising KeyError, or returning NaN, is caught."""

    def raises_key_error(path: Path) -> Any:
        raise KeyError("probe")

    stats = run_fuzz("npz", 5, tmp_path, reader=raises_key_error)
    assert len(stats.escapes) == 5 and "KeyError" in stats.escapes[0]

    def returns_nan(path: Path) -> Any:
        scan = load_npz(tmp_path / "base.npz")
        scan.diffraction = np.full_like(scan.diffraction, np.nan)
        return scan

    stats = run_fuzz("npz", 3, tmp_path, reader=returns_nan)
    assert len(stats.escapes) == 3 and "unsound" in stats.escapes[0]


def test_harness_reports_hangs(tmp_path, monkeypatch):
    def sleeps(path: Path) -> Any:
        time.sleep(1)

    with monkeypatch.context() as m:
        m.setitem(globals(), "CASE_TIMEOUT_S", 0.05)
        stats = run_fuzz("bundle", 1, tmp_path, reader=sleeps)
    assert len(stats.escapes) == 1 and "hang" in stats.escapes[0]
