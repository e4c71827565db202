"""Training policy (``specs/training.md``): schedules, monitor fallback, history, loss spec."""

from __future__ import annotations

import csv
import math

import pytest

from ptycho_core import training
from ptycho_core.config import ModelConfig, TrainingConfig
from ptycho_core.errors import DataContractError
from ptycho_core.training import HistoryRecorder, LossSpec, min_lr, monitored_metric, scheduled_lr


# ----------------------------------------------------------------------------- schedules
def test_cosine_endpoints_and_midpoint():
    lr0 = 1e-2
    assert scheduled_lr("cosine", lr0, 0, 10) == pytest.approx(1e-2)
    # half way: (lr0 + η_min) / 2 with η_min = 1e-4
    assert scheduled_lr("cosine", lr0, 5, 10) == pytest.approx((1e-2 + 1e-4) / 2)
    assert scheduled_lr("cosine", lr0, 10, 10) == pytest.approx(1e-4)
    lrs = [scheduled_lr("cosine", lr0, e, 10) for e in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # strictly decreasing


def test_cosine_below_the_floor_is_constant():
    # an initial rate below MIN_LR is its own floor
    assert min_lr(5e-5) == 5e-5 and min_lr(1e-2) == 1e-4
    assert [scheduled_lr("cosine", 5e-5, e, 4) for e in range(5)] == pytest.approx([5e-5] * 5)


def test_step_halves_every_third_of_the_run():
    # nepochs = 9: step size 3 -> epochs 0-2 at lr0, 3-5 at lr0/2, 6-8 at lr0/4
    got = [scheduled_lr("step", 1e-3, e, 9) for e in range(9)]
    assert got == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3)
    # nepochs = 2: step size max(1, 0) = 1 -> halves every epoch
    assert [scheduled_lr("step", 1.0, e, 2) for e in range(3)] == [1.0, 0.5, 0.25]


def test_none_is_constant():
    assert [scheduled_lr("none", 3e-3, e, 7) for e in range(7)] == [3e-3] * 7


def test_plateau_and_unknown_schedules_raise():
    with pytest.raises(ValueError, match="plateau"):
        scheduled_lr("plateau", 1e-3, 0, 10)
    with pytest.raises(ValueError, match="'linear'"):
        scheduled_lr("linear", 1e-3, 0, 10)


def test_plateau_constants():
    assert training.PLATEAU_FACTOR == 0.5 and training.PLATEAU_PATIENCE == 2
    assert training.MIN_LR == 1e-4 and training.STEP_GAMMA == 0.5


def test_monitored_metric():
    assert monitored_metric("val_loss", has_validation=True) == "val_loss"
    assert monitored_metric("val_loss", has_validation=False) == "train_loss"
    assert monitored_metric("val_nll", has_validation=False) == "train_nll"
    assert monitored_metric("train_loss", has_validation=False) == "train_loss"
    assert monitored_metric("loss", has_validation=False) == "loss"


# ----------------------------------------------------------------------------- history
def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_history_rows_and_missing_values(tmp_path):
    rec = HistoryRecorder(tmp_path / "history.csv")
    row = rec.record(
        0, train_loss=2.0, val_loss=3.0, lr=1e-3, components={"val_nll": 2.5, "train_nll": 1.5}
    )
    assert row == {
        "epoch": 0.0,
        "train_loss": 2.0,
        "val_loss": 3.0,
        "lr": 1e-3,
        "train_nll": 1.5,
        "val_nll": 2.5,
    }
    rec.record(1, train_loss=1.0)  # no validation, no lr, no components
    rec.record(2, train_loss="x", val_loss=None, lr=5e-4, components={"train_mae": 0.25})
    h = rec.history()
    assert list(h) == ["epoch", "train_loss", "val_loss", "lr", "train_nll", "val_nll", "train_mae"]
    assert h["epoch"] == [0.0, 1.0, 2.0]
    assert h["train_loss"][:2] == [2.0, 1.0] and math.isnan(h["train_loss"][2])
    assert h["val_loss"][0] == 3.0 and math.isnan(h["val_loss"][1]) and math.isnan(h["val_loss"][2])
    assert math.isnan(h["lr"][1]) and h["lr"][2] == 5e-4
    assert h["train_nll"][0] == 1.5 and all(math.isnan(v) for v in h["train_nll"][1:])
    assert all(math.isnan(v) for v in h["train_mae"][:2]) and h["train_mae"][2] == 0.25
    assert all(len(v) == 3 for v in h.values())

    rows = _read(tmp_path / "history.csv")
    assert rows[0] == ["epoch", "train_loss", "val_loss", "lr", "train_nll", "val_nll", "train_mae"]
    assert rows[1] == ["0", "2.0", "3.0", "0.001", "1.5", "2.5", ""]
    assert rows[2] == ["1", "1.0", "", "", "", "", ""]  # NaN is an empty cell
    assert rows[3] == ["2", "", "", "0.0005", "", "", "0.25"]


def test_history_csv_is_rewritten_each_epoch(tmp_path):
    path = tmp_path / "history.csv"
    rec = HistoryRecorder(path)
    for e in range(3):
        rec.record(e, train_loss=10.0 - e, val_loss=20.0 - e, lr=1e-3)
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == e + 1
        assert [float(r["train_loss"]) for r in rows] == [10.0 - i for i in range(e + 1)]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]  # no temp files


def test_history_csv_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    rec = HistoryRecorder(path)
    rec.record(0, train_loss=1.0)
    before = path.read_bytes()

    real_writer = csv.writer

    class Failing:
        def __init__(self, fh):
            self.inner = real_writer(fh)
            self.n = 0

        def writerow(self, row):
            self.n += 1
            if self.n > 1:
                raise OSError("disk full")
            return self.inner.writerow(row)

    monkeypatch.setattr(csv, "writer", Failing)
    with pytest.raises(OSError, match="disk full"):
        rec.record(1, train_loss=0.5)
    assert path.read_bytes() == before  # the old file is intact, not half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_history_infinite_loss_is_kept(tmp_path):
    rec = HistoryRecorder(tmp_path / "h.csv")
    rec.record(0, train_loss=math.inf)
    assert rec.history()["train_loss"] == [math.inf]
    assert _read(tmp_path / "h.csv")[1][1] == "inf"


def test_history_state_dict_round_trip_continues(tmp_path):
    first = HistoryRecorder(tmp_path / "a.csv")
    first.record(0, train_loss=3.0, val_loss=4.0, lr=1e-3, components={"train_nll": 2.0})
    first.record(1, train_loss=2.0, val_loss=3.5, lr=1e-3, components={"train_nll": 1.5})
    state = first.state_dict()
    # plain floats in plain dicts (a checkpoint can hold it without pickling objects)
    assert all(type(v) is float for r in state["rows"] for v in r.values())
    state["rows"][0]["train_loss"] = 99.0  # the state is a copy
    assert first.history()["train_loss"] == [3.0, 2.0]
    state = first.state_dict()

    resumed = HistoryRecorder(tmp_path / "b.csv")
    resumed.load_state_dict(state)
    resumed.record(2, train_loss=1.0, val_loss=3.0, lr=5e-4, components={"train_nll": 0.5})
    h = resumed.history()
    assert h["epoch"] == [0.0, 1.0, 2.0]
    assert h["train_loss"] == [3.0, 2.0, 1.0]
    assert h["train_nll"] == [2.0, 1.5, 0.5]
    rows = _read(tmp_path / "b.csv")
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [r[1] for r in rows[1:]] == ["3.0", "2.0", "1.0"]


def test_history_csv_epoch_column_is_the_recorded_epoch(tmp_path):
    rec = HistoryRecorder(tmp_path / "h.csv")
    rec.record(5, train_loss=1.0)
    rec.record(6, train_loss=0.5)
    assert [r[0] for r in _read(tmp_path / "h.csv")[1:]] == ["5", "6"]


def test_history_write_false_and_no_path_write_nothing(tmp_path):
    quiet = HistoryRecorder(tmp_path / "history.csv", write=False)
    quiet.record(0, train_loss=1.0)
    assert quiet.history()["train_loss"] == [1.0]
    memory = HistoryRecorder()
    memory.record(0, train_loss=2.0)
    assert memory.history()["train_loss"] == [2.0]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- loss
def test_loss_components_and_ground_truth_needs():
    assert LossSpec().components == ("nll", "mae") and not LossSpec().needs_ground_truth
    rs = LossSpec(realspace_weight=0.5)
    assert rs.components == ("nll", "mae", "realspace") and rs.needs_ground_truth
    sup = LossSpec(supervised=True)
    assert sup.components == ("amp_mae", "phase_mae") and sup.needs_ground_truth


def test_loss_from_training_config():
    cfg = TrainingConfig(nll_weight=0.5, mae_weight=0.25, realspace_weight=0.125)
    assert LossSpec.from_training_config(cfg) == LossSpec(0.5, 0.25, 0.125, supervised=False)
    sup = TrainingConfig(model=ModelConfig(model_type="supervised"))
    assert LossSpec.from_training_config(sup).supervised


def test_check_ground_truth_names_data_and_setting():
    LossSpec().check_ground_truth(False, "scan.npz")  # not needed: fine
    LossSpec(supervised=True).check_ground_truth(True, "scan.npz")  # present: fine
    with pytest.raises(DataContractError) as info:
        LossSpec(supervised=True).check_ground_truth(False, "/data/scan.npz")
    assert "/data/scan.npz" in str(info.value) and "model_type='supervised'" in str(info.value)
    assert "'Y'" in str(info.value)
    with pytest.raises(DataContractError) as info:
        LossSpec(realspace_weight=0.5).check_ground_truth(False)
    assert "<in-memory scan>" in str(info.value) and "realspace_weight=0.5" in str(info.value)


@pytest.mark.parametrize("field", ["nll_weight", "mae_weight", "realspace_weight"])
@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "1", None, True])
def test_invalid_loss_weights_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        LossSpec(**{field: value})


def test_invalid_eps_is_rejected():
    with pytest.raises(ValueError, match="eps"):
        LossSpec(eps=0.0)
