"""Backend-neutral workflow: normalisation facts, grouping/splitting, chunked inference, results."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from ptycho_core.config import InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.errors import ConfigError, DataContractError
from ptycho_core.io import ScanData, save_npz
from ptycho_core.simulation import simulate_scan
from ptycho_core.workflow import (
    Reconstruction,
    iter_batches,
    make_result,
    prepare_inference,
    prepare_training,
    read_history_csv,
    run_inference,
    write_history_csv,
)

N = 32


@pytest.fixture(scope="module")
def scan() -> ScanData:
    return simulate_scan(N=N, n_positions=40, nphotons=1e5, seed=4)


def _cfg(**kw) -> TrainingConfig:
    model = kw.pop("model", ModelConfig(N=N))
    return TrainingConfig(model=model, **kw)


def test_normalisation_facts(scan):
    # gridsize 1: each pattern once in the grouped stack, so its mean energy is the scan's
    p = prepare_training(_cfg(validation_fraction=0.1, model=ModelConfig(N=N, gridsize=1)), scan)
    energy = np.mean(np.sum(scan.diffraction.astype(np.float64) ** 2, axis=(1, 2)))
    assert p.norm_factor == pytest.approx(math.sqrt((N / 2) ** 2 / energy), rel=1e-5)
    assert p.nphotons == pytest.approx(energy, rel=1e-5) and p.nphotons_source == "estimated"
    assert p.nphotons == pytest.approx(1e5, rel=0.05)  # simulator's photon units
    assert p.intensity_scale == pytest.approx(math.sqrt(energy) / (N / 2), rel=1e-5)
    # the model input s·α·X carries nphotons photons per pattern on average
    x = np.concatenate([p.train.diffraction, p.val.diffraction]).astype(np.float64)
    assert np.mean(np.sum(x**2, axis=(-2, -1))) == pytest.approx(p.nphotons, rel=1e-4)
    facts = p.normalization()
    assert facts["norm_factor"] == p.norm_factor and facts["nphotons_source"] == "estimated"


def test_given_nphotons_and_normalised_probe(scan):
    p = prepare_training(_cfg(nphotons=1e6, model=ModelConfig(N=N, probe_scale=2.0)), scan)
    assert p.nphotons == 1e6 and p.nphotons_source == "config"
    assert p.intensity_scale == pytest.approx(1e3 / (N / 2))
    yy, xx = np.mgrid[:N, :N]
    disk = np.hypot(yy - (N - 1) / 2, xx - (N - 1) / 2) <= N / 4
    assert 2.0 * np.mean(np.abs(disk * p.probe)) == pytest.approx(1.0, rel=1e-4)
    assert p.probe.dtype == np.complex64


def test_split_is_seeded_disjoint_and_complete(scan):
    a = prepare_training(_cfg(validation_fraction=0.2, seed=1), scan)
    b = prepare_training(_cfg(validation_fraction=0.2, seed=1), scan)
    c = prepare_training(_cfg(validation_fraction=0.2, seed=2), scan)
    ta, va = a.train.indices[:, 0], a.val.indices[:, 0]
    assert len(va) == 8 and len(ta) == 32
    assert sorted(np.concatenate([ta, va]).tolist()) == list(range(40))
    np.testing.assert_array_equal(va, b.val.indices[:, 0])
    assert not np.array_equal(va, c.val.indices[:, 0])
    small = prepare_training(_cfg(validation_fraction=0.01), scan)
    assert len(small.val) == 1  # at least one validation group
    assert prepare_training(_cfg(validation_fraction=0.0), scan).val is None


def test_gridsize2_subsample_and_n_groups(scan):
    cfg = _cfg(
        model=ModelConfig(N=N, gridsize=2),
        n_subsample=20,
        subsample_seed=5,
        n_groups=12,
        validation_fraction=0.25,
    )
    p = prepare_training(cfg, scan)
    assert p.scan.M == 20
    assert len(p.train) + len(p.val) == 12
    assert p.train.diffraction.shape == (9, 4, N, N) and p.train.diffraction.dtype == np.float32
    # subsampled positions are a seeded subset of the original scan
    assert set(map(tuple, p.scan.positions)) <= set(map(tuple, scan.positions))
    q = prepare_training(cfg, scan)
    np.testing.assert_array_equal(p.scan.positions, q.scan.positions)
    np.testing.assert_array_equal(p.train.indices, q.train.indices)
    r = prepare_training(
        _cfg(model=ModelConfig(N=N, gridsize=2), n_subsample=20, subsample_seed=6, n_groups=12),
        scan,
    )
    assert not np.array_equal(p.scan.positions, r.scan.positions)


def test_errors(scan, tmp_path):
    with pytest.raises(ConfigError, match="model.N = 64"):
        prepare_training(_cfg(model=ModelConfig(N=64)), scan)
    with pytest.raises(ConfigError, match="train_data_file"):
        prepare_training(_cfg())
    with pytest.raises(ConfigError, match="n_groups"):
        prepare_training(_cfg(n_groups=41), scan)
    with pytest.raises(DataContractError, match="at least 9"):
        prepare_training(
            _cfg(model=ModelConfig(N=N, gridsize=3), neighbor_count=8, n_subsample=5), scan
        )


def test_loads_file(scan, tmp_path):
    path = tmp_path / "scan.npz"
    save_npz(path, scan)
    p = prepare_training(_cfg(train_data_file=path))
    assert p.scan.M == scan.M
    np.testing.assert_allclose(p.scan.diffraction, scan.diffraction)


def test_supervised_ground_truth(scan):
    no_truth = ScanData(
        diffraction=scan.diffraction, xcoords=scan.xcoords, ycoords=scan.ycoords, probe=scan.probe
    )
    sup = ModelConfig(N=N, model_type="supervised")
    with pytest.raises(DataContractError, match="supervised"):
        prepare_training(_cfg(model=sup), no_truth)
    with_obj = ScanData(
        diffraction=scan.diffraction,
        xcoords=np.round(scan.xcoords),
        ycoords=np.round(scan.ycoords),
        probe=scan.probe,
        object=scan.object,
    )
    p = prepare_training(_cfg(model=sup, validation_fraction=0.0), with_obj)
    g = p.train
    j = 7
    x, y = (int(v) for v in g.positions[j, 0])
    expected = scan.object[y - N // 2 : y + N // 2, x - N // 2 : x + N // 2]
    np.testing.assert_allclose(g.Y[j, 0], expected, atol=1e-6)


def _grid_scan(seed=0, step=6, size=72):
    """Integer raster positions, exact truth patches cut by slicing."""
    rng = np.random.default_rng(seed)
    obj = (
        rng.uniform(0.5, 1.0, (size, size)) * np.exp(1j * rng.uniform(-3, 3, (size, size)))
    ).astype(np.complex64)
    coords = np.arange(N // 2, size - N // 2 + 1, step)
    xs, ys = np.meshgrid(coords, coords)
    x, y = xs.ravel().astype(float), ys.ravel().astype(float)
    patches = np.stack(
        [
            obj[int(b) - N // 2 : int(b) + N // 2, int(a) - N // 2 : int(a) + N // 2]
            for a, b in zip(x, y, strict=False)
        ]
    )
    diff = rng.uniform(0, 5, (len(x), N, N)).astype(np.float32)
    return ScanData(
        diffraction=diff,
        xcoords=x,
        ycoords=y,
        probe=np.ones((N, N), np.complex64),
        object=obj,
        Y=patches,
    )


def _manifest(gridsize=1, s=2.5):
    return {"model_config": ModelConfig(N=N, gridsize=gridsize).to_dict(), "intensity_scale": s}


def test_prepare_inference():
    data = _grid_scan()
    pi = prepare_inference(InferenceConfig(model=ModelConfig(N=N)), _manifest(2, 2.5), data)
    assert len(pi.grouped) == data.M and pi.grouped.C == 4 and pi.model.gridsize == 2
    energy = np.mean(np.sum(data.diffraction.astype(np.float64) ** 2, axis=(1, 2)))
    alpha = math.sqrt((N / 2) ** 2 / energy)
    assert pi.norm_factor == pytest.approx(alpha, rel=1e-5)
    np.testing.assert_allclose(
        pi.grouped.diffraction[:, 0], 2.5 * alpha * data.diffraction, rtol=1e-5
    )
    assert pi.stitch_crop == 10 and pi.object_shape == (72, 72)
    again = prepare_inference(InferenceConfig(model=ModelConfig(N=N)), _manifest(2), data)
    np.testing.assert_array_equal(pi.grouped.indices, again.grouped.indices)
    with pytest.raises(ConfigError, match="manifest"):
        prepare_inference(InferenceConfig(), {"intensity_scale": 1.0}, data)
    with pytest.raises(ConfigError, match="test_data_file"):
        prepare_inference(InferenceConfig(), _manifest())
    with pytest.raises(ConfigError, match="N = 32"):
        prepare_inference(
            InferenceConfig(), {"model_config": {"N": 64}, "intensity_scale": 1.0}, data
        )


def test_iter_batches():
    data = _grid_scan()
    pi = prepare_inference(InferenceConfig(model=ModelConfig(N=N)), _manifest(), data)
    sizes = [len(b) for b in iter_batches(pi.grouped, 4)]
    assert sum(sizes) == data.M and max(sizes) == 4 and all(s > 0 for s in sizes)
    idx = np.concatenate([b.indices for b in iter_batches(pi.grouped, 4)])
    np.testing.assert_array_equal(idx, pi.grouped.indices)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(pi.grouped, 0))


@pytest.mark.parametrize("gridsize", [1, 2])
def test_run_inference_reassembles_truth(gridsize):
    data = _grid_scan()
    cfg = InferenceConfig(model=ModelConfig(N=N, gridsize=gridsize), stitch_crop=12)
    pi = prepare_inference(cfg, _manifest(gridsize), data)
    assert pi.grouped.Y is None and pi.scan.Y is None  # inference never holds Y (issue D17)
    truth = data.Y  # the exact patches: a perfect "model"
    res = run_inference(pi, lambda batch: truth[batch.indices], batch_size=5, backend="pytorch")
    assert isinstance(res, Reconstruction)
    cov = res.coverage > 0
    assert cov.sum() == 48 * 48  # positions 16..52, crop 12 covers p-6..p+5: pixels 10..57
    np.testing.assert_allclose(res.object[cov], data.object[cov], atol=1e-5)
    assert res.origin == (0.0, 0.0) and res.backend == "pytorch"
    assert res.amplitude.dtype == np.float32 and res.object.dtype == np.complex64
    assert res.phase.dtype == np.float32 and res.coverage.dtype == np.float32
    assert res.positions.dtype == np.float64
    np.testing.assert_array_equal(res.positions, data.positions)
    np.testing.assert_allclose(res.amplitude, np.abs(data.object) * cov, atol=1e-5)
    pi32 = np.float32(np.pi)
    assert np.all(res.phase > -pi32) and np.all(res.phase <= pi32)
    assert res.config["stitch_crop"] == 12
    assert res.norm_factor == pi.norm_factor and res.intensity_scale == 2.5
    assert res.timings["predict_s"] >= 0 and res.timings["inference_s"] >= res.timings["predict_s"]


def test_cover_grouping_reassembles_truth_with_fewer_groups():
    data = _grid_scan()
    every = InferenceConfig(model=ModelConfig(N=N, gridsize=2), stitch_crop=12)
    cover = InferenceConfig(model=ModelConfig(N=N, gridsize=2), stitch_crop=12, grouping="cover")
    pe = prepare_inference(every, _manifest(2), data)
    pc = prepare_inference(cover, _manifest(2), data)
    assert len(pe.grouped) == data.M and len(pc.grouped) < 0.5 * data.M
    np.testing.assert_array_equal(np.unique(pc.grouped.indices), np.arange(data.M))
    truth = data.Y
    re = run_inference(pe, lambda b: truth[b.indices], batch_size=5, backend="pytorch")
    rc = run_inference(pc, lambda b: truth[b.indices], batch_size=5, backend="pytorch")
    np.testing.assert_array_equal(rc.coverage > 0, re.coverage > 0)
    cov = rc.coverage > 0
    np.testing.assert_allclose(rc.object[cov], data.object[cov], atol=1e-5)
    with pytest.raises(ConfigError, match="grouping"):
        InferenceConfig(grouping="all")


def test_run_inference_one_patch_per_group_and_bad_shapes():
    data = _grid_scan()
    pi = prepare_inference(InferenceConfig(model=ModelConfig(N=N, gridsize=2)), _manifest(2), data)
    truth = data.Y
    res = run_inference(pi, lambda b: truth[b.indices][:, :1], batch_size=8, backend="tensorflow")
    assert res.object.shape == (72, 72) and np.any(res.coverage > 0)
    assert res.backend == "tensorflow"
    with pytest.raises(ValueError, match="predict returned shape"):
        run_inference(pi, lambda b: truth[b.indices][:, :, :8], batch_size=8, backend="tensorflow")


def test_make_result_without_object_frame():
    from ptycho_core.stitching import Stitcher

    st = Stitcher(N, 10, positions=np.array([[40.0, 50.0], [46.0, 50.0]]))
    st.add(np.full((2, N, N), -1 + 0j, np.complex64), np.array([[40.0, 50.0], [46.0, 50.0]]))
    res = make_result(
        st.result(),
        positions=np.zeros((2, 2)),
        backend="pytorch",
        config={"a": 1},
        timings={"t": 1},
    )
    assert isinstance(res, Reconstruction)
    assert res.origin == (35.0, 45.0)
    assert res.config == {"a": 1} and res.timings == {"t": 1.0}
    assert math.isnan(res.norm_factor) and math.isnan(res.intensity_scale)
    cov = res.coverage > 0
    np.testing.assert_allclose(res.amplitude[cov], 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.abs(res.phase[cov]), np.pi, rtol=1e-6)


@pytest.mark.parametrize("imag", [0.0, -0.0, -1e-9])
def test_make_result_phase_is_in_half_open_interval(imag):
    """Phase lies in (−π, π] (``specs/physics.md``): −1 − 0j and values that round to −π in
    float32 are reported as +π."""
    from ptycho_core.stitching import Stitcher

    pos = np.array([[40.0, 50.0]])
    st = Stitcher(N, 10, positions=pos)
    st.add(np.full((1, N, N), complex(-1.0, imag), np.complex64), pos)
    res = make_result(st.result(), positions=pos, backend="pytorch", config={}, timings={})
    cov = res.coverage > 0
    pi32 = np.float32(np.pi)
    assert np.all(res.phase > -pi32) and np.all(res.phase <= pi32)
    np.testing.assert_allclose(res.phase[cov], pi32, rtol=1e-6)


def test_write_history_csv(tmp_path):
    p = write_history_csv(
        tmp_path / "history.csv", {"train_loss": [3.0, 2.0, 1.5], "val_loss": [3.5, 2.5]}
    )
    rows = list(csv.reader(p.open()))
    assert rows[0] == ["epoch", "train_loss", "val_loss"]
    assert rows[1] == ["0", "3.0", "3.5"] and rows[3] == ["2", "1.5", ""]


def test_read_history_csv_inverts_write_history_csv(tmp_path):
    history = {
        "epoch": [0.0, 1.0, 2.0],
        "train_loss": [3.0, 2.0, 1.5],
        "val_loss": [3.5, math.nan, 2.25],
        "lr": [1e-3, 5e-4, 2.5e-4],
    }
    got = read_history_csv(write_history_csv(tmp_path / "h.csv", history))
    assert list(got) == list(history)
    for key, values in history.items():
        np.testing.assert_array_equal(got[key], values)  # NaN == NaN here
    assert read_history_csv(write_history_csv(tmp_path / "e.csv", {})) == {"epoch": []}


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "'epoch' column"),
        ("loss\n1.0\n", "'epoch' column"),
        ("epoch,train_loss\n0,1.0\n1,oops\n", "line 3, column 'train_loss'.*'oops'"),
    ],
)
def test_read_history_csv_rejects_what_it_cannot_read(tmp_path, text, match):
    p = tmp_path / "history.csv"
    p.write_text(text)
    with pytest.raises(DataContractError, match=match) as err:
        read_history_csv(p)
    assert str(p) in str(err.value)
