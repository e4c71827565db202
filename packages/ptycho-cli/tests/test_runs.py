"""Run folders, locking, resume and interruptions of the ``ptycho`` command (issue 11: D4–D7, the
SIGTERM case; ``specs/cli.md``).

In-process tests use the framework-free backend of ``cli_fake_backend.py`` (epochs, a checkpoint
per epoch, resume). The signal tests start that backend as a real ``ptycho`` subprocess and send
SIGINT / SIGTERM while an epoch (or a prediction) is running; each takes about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ptycho_cli import interrupts
from ptycho_cli.commands import COMMANDS
from ptycho_cli.main import main
from ptycho_cli.runfolder import (
    REPLACED_NAME,
    RUN_INFO,
    WORK_NAME,
    RunFolder,
    RunFolderError,
)
from ptycho_cli.runlock import LOCK_NAME, RunFolderBusyError, RunLock
from ptycho_core.errors import PtychoError

from .cli_fake_backend import CKPT, history_rows, install

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def slow(monkeypatch):
    """The fake backend of cli_fake_backend.py in this process (no sleeping)."""
    monkeypatch.setenv("FAKE_EPOCH_S", "0")
    monkeypatch.delenv("FAKE_FAIL_AT", raising=False)
    return install(monkeypatch)


def _error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("ptycho: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _train(scan: Path, out: Path, *extra: str) -> int:
    return main(["-q", "train", str(scan), "-o", str(out), *extra])


def _listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` → its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _manifest(run: Path) -> dict:
    with zipfile.ZipFile(run / "wts.h5.zip") as zf:
        return json.loads(zf.read("manifest.json"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- lock
def test_lock_records_its_owner_and_is_removed_after(tmp_path):
    folder = tmp_path / "new" / "run"
    with RunLock(folder, "train") as lock:
        owner = json.loads((folder / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "train" and lock.held
    assert not (folder / LOCK_NAME).exists() and not lock.held


_HOLD = """
import sys, time
from ptycho_cli.runlock import RunLock
with RunLock(sys.argv[1], "train"):
    print("LOCKED", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_fails_fast(slow, scan_file, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(RunFolderBusyError) as info:
            RunLock(out, "demo").acquire()
        assert isinstance(info.value, PtychoError) and str(holder.pid) in str(info.value)
        t0 = time.perf_counter()
        assert _train(scan_file(), out) == 1
        assert time.perf_counter() - t0 < 5  # fails at once, does not wait for the holder
        line = _error(capsys)
        assert line.startswith(f"ptycho: error: {out}: another ptycho train (PID {holder.pid}")
        assert "choose another output folder" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died without removing its lock file: the lock is stale and taken over
    assert (out / LOCK_NAME).exists()
    assert _train(scan_file(), out, "--epochs", "1") == 0
    assert (out / "wts.h5.zip").is_file() and not (out / LOCK_NAME).exists()


def test_a_stale_lock_file_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = {"pid": _dead_pid(), "host": "x", "command": "train", "started": "then"}
    (folder / LOCK_NAME).write_text(json.dumps(dead))
    with caplog.at_level("WARNING", logger="ptycho_cli.runlock"), RunLock(folder, "train") as lk:
        assert lk.stale_owner["pid"] == dead["pid"]
    assert f"PID {dead['pid']}" in caplog.text and "stale" in caplog.text


def test_pid_fallback_without_flock(tmp_path, monkeypatch):
    """Where flock is unavailable the owner's PID decides: alive → busy, dead → stale."""
    from ptycho_cli import runlock

    monkeypatch.setattr(runlock, "fcntl", None)
    folder = tmp_path / "run"
    folder.mkdir()
    live = {"pid": os.getppid(), "host": runlock.socket.gethostname(), "command": "train"}
    (folder / LOCK_NAME).write_text(json.dumps(live))
    with pytest.raises(RunFolderBusyError, match=f"PID {live['pid']}"):
        RunLock(folder, "train").acquire()
    (folder / LOCK_NAME).write_text(json.dumps(dict(live, pid=_dead_pid())))
    with RunLock(folder, "train") as lock:
        assert lock.stale_owner and json.loads((folder / LOCK_NAME).read_text())["pid"] == (
            os.getpid()
        )


# ----------------------------------------------------------------------------- D5/D6 folders
def test_a_folder_holding_a_run_is_refused_without_overwrite_or_resume(
    slow, scan_file, tmp_path, capsys
):
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "1") == 0
    before = _listing(out)
    slow["pytorch"].hooks.fit = None  # must not be reached
    assert _train(scan, out, "--epochs", "3") == 1
    line = _error(capsys)
    assert line.startswith(f"ptycho: error: {out}: holds another run (wts.h5.zip")
    assert "--overwrite" in line and "--resume" in line
    assert _listing(out) == before


def test_overwrite_replaces_the_whole_set_and_nothing_else(slow, scan_file, tmp_path):
    scan, out = scan_file(), tmp_path / "run"
    test = scan_file("test.npz", seed=3)
    assert _train(scan, out, "--epochs", "1", "--test-data", str(test)) == 0
    assert main(["-q", "evaluate", str(out), str(test)]) == 0
    own = out / "notes.txt"  # not a run's file: never touched
    own.write_text("mine")
    assert {"recon.npz", "metrics.json", "comparison.png"} <= {p.name for p in out.iterdir()}
    assert _train(scan, out, "--epochs", "3", "--overwrite") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [".ptycho-run.json", "checkpoints", "history.csv", "loss.png", "notes.txt", "wts.h5.zip"]
    )
    assert own.read_text() == "mine"
    assert len(history_rows(out / "history.csv")) == 3
    assert _manifest(out)["epochs_trained"] == 3
    # the bundle records where the run lives, not the work folder it was made in
    assert _manifest(out)["training_config"]["output_dir"] == str(out)


def test_a_failed_overwrite_leaves_the_old_run(slow, scan_file, tmp_path, capsys, monkeypatch):
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2") == 0
    before = _listing(out)
    monkeypatch.setenv("FAKE_FAIL_AT", "0")
    assert _train(scan, out, "--epochs", "3", "--overwrite", "--disable-checkpointing") == 1
    assert "fake failure" in _error(capsys)
    assert _listing(out) == before  # no work folder either: it held no checkpoint


def test_a_new_folder_of_a_failed_run_is_removed(slow, scan_file, tmp_path):
    out = tmp_path / "fresh"
    assert _train(scan_file(), out, "--set", "no_such_key=1") == 1
    assert not out.exists()


def _make_run(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


OLD = {"wts.h5.zip": "old", "history.csv": "old", "recon.npz": "old", "checkpoints/last.ckpt": "o"}
NEW = {"wts.h5.zip": "new", "history.csv": "new", "loss.png": "new", "checkpoints/last.ckpt": "n"}


#: The commit's renames: the journal, 4 old files out, the journal again, 4 new files in.
N_RENAMES = 10


@pytest.mark.parametrize("crash_after", range(N_RENAMES + 1))
def test_a_commit_cut_short_is_completed_by_the_next_run(tmp_path, monkeypatch, crash_after):
    """A process killed after any number of the commit's renames: the next run into the folder
    finds the old run (killed before the journal was written) or completes the replacement —
    never a mix of the two runs."""
    out = tmp_path / "run"
    _make_run(out, {**OLD, "scan.npz": "data"})
    real = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        if calls["n"] == crash_after:
            raise SystemExit("killed")  # stands for SIGKILL: no cleanup code runs after it
        calls["n"] += 1
        real(src, dst)

    with RunFolder(out, "train") as rf:
        _make_run(rf.start(), NEW)
        monkeypatch.setattr(os, "replace", dying_replace)
        try:
            rf.commit()
        except SystemExit:
            pass
        monkeypatch.setattr(os, "replace", real)
    assert rf.committed == (crash_after == N_RENAMES)
    with RunFolder(out, "train"):
        pass
    expected = OLD if crash_after == 0 else NEW
    run_files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.is_file() and WORK_NAME not in p.parts and p.name != "scan.npz"
    }
    assert run_files == expected
    assert (out / "scan.npz").read_text() == "data" and not (out / REPLACED_NAME).exists()
    # killed before the journal: the new run waits, complete, in the work folder
    assert (out / WORK_NAME).exists() == (crash_after == 0)


# ----------------------------------------------------------------------------- D7 resume
def test_interrupted_run_resumes_to_the_uninterrupted_result(slow, scan_file, tmp_path, capsys):
    scan = scan_file()
    straight = tmp_path / "straight"
    assert _train(scan, straight, "--epochs", "5", "--gridsize", "1", "--seed", "3") == 0
    out = tmp_path / "run"
    assert _train(scan, out, "--epochs", "2") == 0  # an old run that must survive the interrupt
    before = _listing(out)

    real_fit = slow["pytorch"].hooks.fit

    def fit_interrupted_at_epoch_3(request):
        real_record = request.history.record

        def record(epoch, **kw):
            row = real_record(epoch, **kw)
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)  # mid-run, after epoch 2's checkpoint
            return row

        request.history.record = record
        return real_fit(request)

    slow["pytorch"].hooks.fit = fit_interrupted_at_epoch_3
    args = ("--epochs", "5", "--gridsize", "1", "--seed", "3", "--overwrite")
    assert _train(scan, out, *args) == 130
    line = _error(capsys)
    assert line == (
        f"ptycho: error: interrupted (SIGINT); {out} is unchanged; continue with: "
        f"ptycho train {scan} -o {out} --resume"
    )
    work = out / WORK_NAME
    assert (work / "checkpoints" / CKPT).is_file()
    visible = {k: v for k, v in _listing(out).items() if Path(k).parts[0] != WORK_NAME}
    assert visible == before
    # a plain run into the folder now names the unfinished run
    assert _train(scan, out, "--epochs", "5") == 1
    assert "holds an unfinished run (3 epochs of 5 done); use --resume" in _error(capsys)

    slow["pytorch"].hooks.fit = real_fit
    assert _train(scan, out, "--resume") == 0  # settings are the run's own
    assert not work.exists()
    assert history_rows(out / "history.csv") == history_rows(straight / "history.csv")
    resumed, reference = _manifest(out), _manifest(straight)
    assert resumed["intensity_scale"] == reference["intensity_scale"]
    assert resumed["history"] == reference["history"]
    assert resumed["training_config"]["seed"] == 3


def test_resume_with_contradicting_settings_is_refused(slow, scan_file, tmp_path, capsys):
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2", "--batch-size", "4") == 0
    before = _listing(out)
    assert _train(scan, out, "--epochs", "4", "--batch-size", "8", "--resume") == 1
    line = _error(capsys)
    assert f"{out}: --resume continues a run made with other settings" in line
    assert "batch_size: 4 → 8" in line
    assert _listing(out) == before


def test_resume_with_another_precision_is_refused(slow, scan_file, tmp_path, capsys):
    # mixed precision changes the trained weights, so it is one of the run's settings
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2") == 0
    assert json.loads((out / RUN_INFO).read_text())["execution"]["precision"] == "32-true"
    assert _train(scan, out, "--epochs", "4", "--precision", "bf16-mixed", "--resume") == 1
    assert "precision: '32-true' → 'bf16-mixed'" in _error(capsys)


def test_resume_a_finished_run_needs_more_epochs(slow, scan_file, tmp_path, capsys):
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2") == 0
    assert _train(scan, out, "--resume") == 1
    assert "the run already trained 2 epochs; give --epochs N with N > 2" in _error(capsys)
    assert _train(scan, out, "--resume", "--epochs", "4") == 0
    assert [r["epoch"] for r in history_rows(out / "history.csv")] == [0, 1, 2, 3]
    assert _manifest(out)["history"]["train_loss"] == [1.0, 0.5, 1 / 3, 0.25]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [CKPT]


def test_resume_from_another_folder_or_a_checkpoint_file(slow, scan_file, tmp_path, capsys):
    scan, src = scan_file(), tmp_path / "src"
    assert _train(scan, src, "--epochs", "2") == 0
    dst = tmp_path / "dst"
    assert _train(scan, dst, "--epochs", "3", f"--resume={src}") == 0
    assert len(history_rows(dst / "history.csv")) == 3
    ckpt = src / "checkpoints" / CKPT
    other = tmp_path / "other"
    assert _train(scan, other, "--epochs", "4", "--resume", str(ckpt)) == 0
    assert len(history_rows(other / "history.csv")) == 4
    # resuming into a folder that holds another run needs --overwrite
    assert _train(scan, other, "--epochs", "5", f"--resume={src}") == 1
    assert "add --overwrite" in _error(capsys)


def test_resume_with_nothing_to_resume(slow, scan_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(scan_file(), tmp_path / "out", f"--resume={empty}") == 1
    assert f"{empty}: no checkpoint to resume from" in _error(capsys)
    assert _train(scan_file(), tmp_path / "out", f"--resume={tmp_path / 'nope'}") == 1
    assert "no such checkpoint file or run folder" in _error(capsys)


def test_run_info_records_settings(slow, scan_file, tmp_path):
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2", "--learning-rate", "0.01") == 0
    info = json.loads((out / RUN_INFO).read_text())
    assert info["backend"] == "pytorch" and info["config"]["nepochs"] == 2
    assert info["execution"]["learning_rate"] == 0.01 and info["train_patterns"] == 12


def test_plan_resume_errors_are_ptycho_errors(tmp_path):
    with RunFolder(tmp_path / "x", "train") as rf, pytest.raises(RunFolderError) as info:
        rf.plan_resume(True, overwrite=False, backend=None)
    assert isinstance(info.value, PtychoError)


# ----------------------------------------------------------------------------- DDP followers
@pytest.mark.parametrize(
    ("env", "flags", "rank"),
    [
        ({}, [], 0),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, [], 0),  # Lightning's launching process
        ({"LOCAL_RANK": "2"}, [], 2),
        ({"RANK": "3"}, [], 3),
        ({"SLURM_PROCID": "1"}, [], 0),  # srun tasks of separate runs
        ({"SLURM_PROCID": "1"}, ["--devices", "2"], 1),
        ({"SLURM_PROCID": "1"}, ["--strategy", "ddp"], 1),
    ],
)
def test_follower_rank(env, flags, rank, monkeypatch):
    from ptycho_cli.commands.train import follower_rank
    from ptycho_cli.main import build_parser

    for var in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(["train", "x.npz", *flags])
    assert follower_rank(args) == rank


def test_a_ddp_follower_trains_in_the_owners_work_folder(slow, scan_file, tmp_path, monkeypatch):
    """Lightning's DDP launcher re-runs the command with LOCAL_RANK=1 while rank 0 holds the
    folder: the follower must neither fail on the lock nor write or commit outputs."""
    out = tmp_path / "run"
    with RunFolder(out, "train") as owner:
        owner.start()
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert _train(scan_file(), out, "--epochs", "2") == 0
        monkeypatch.delenv("LOCAL_RANK")
        assert not (out / "wts.h5.zip").exists() and not (out / "loss.png").exists()
        assert (out / WORK_NAME / "checkpoints" / CKPT).is_file()  # trained in the work folder
        assert (out / LOCK_NAME).exists()  # the owner's lock, untouched


# ----------------------------------------------------------------------------- D4 signals
@pytest.mark.parametrize("command", [m.NAME for m in COMMANDS])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_every_command_exits_128_plus_signal(command, sig, monkeypatch, capsys):
    module = next(m for m in COMMANDS if m.NAME == command)
    reached = []

    def run(args, console):
        signal.raise_signal(sig)
        reached.append("after")  # never: the handler raises
        return 0

    monkeypatch.setattr(module, "run", run)
    previous = signal.getsignal(sig)
    argv = {"backends": [], "demo": ["--quick"]}.get(command, ["a", "b"])
    if command == "train":
        argv = ["a.npz"]
    elif command == "simulate":
        argv = ["out.npz"]
    elif command == "inspect":
        argv = ["x.zip"]
    assert main([command, *argv]) == 128 + sig
    assert _error(capsys) == f"ptycho: error: interrupted ({signal.Signals(sig).name})"
    assert not reached and signal.getsignal(sig) == previous


def test_a_framework_that_turns_the_interrupt_into_exit_1_still_gives_130(monkeypatch, capsys):
    """Lightning catches KeyboardInterrupt and calls sys.exit(1)."""
    module = next(m for m in COMMANDS if m.NAME == "backends")

    def run(args, console):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            sys.exit(1)
        return 0

    monkeypatch.setattr(module, "run", run)
    assert main(["backends"]) == 130
    assert _error(capsys) == "ptycho: error: interrupted (SIGINT)"
    assert interrupts.received() == signal.SIGINT


def test_a_signal_during_a_critical_section_is_acted_on_after_it():
    done = []
    with interrupts.handle_signals():
        with pytest.raises(interrupts.Interrupted), interrupts.blocked():
            signal.raise_signal(signal.SIGTERM)
            done.append("renames finished")
        assert done and interrupts.received() == signal.SIGTERM


def test_ctrl_c_during_the_commit_completes_it_first(slow, scan_file, tmp_path, capsys):
    from ptycho_cli import runfolder

    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "1") == 0
    real = runfolder.RunFolder._commit

    def commit_with_signal(self):
        os.kill(os.getpid(), signal.SIGINT)  # arrives as the renames start
        real(self)

    runfolder.RunFolder._commit = commit_with_signal
    try:
        assert _train(scan, out, "--epochs", "3", "--overwrite") == 130
    finally:
        runfolder.RunFolder._commit = real
    assert _error(capsys) == f"ptycho: error: interrupted (SIGINT); the run in {out} had completed"
    assert len(history_rows(out / "history.csv")) == 3 and not (out / WORK_NAME).exists()


def test_demo_replaces_a_demo_but_not_another_run(slow, scan_file, tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["-q", "demo", "--quick", "-o", str(demo)]) == 0
    first = (demo / "wts.h5.zip").read_bytes()
    assert main(["-q", "demo", "--quick", "--seed", "1", "-o", str(demo)]) == 0
    assert (demo / "wts.h5.zip").read_bytes() != first and not (demo / WORK_NAME).exists()
    run = tmp_path / "run"
    assert _train(scan_file(), run, "--epochs", "1") == 0
    before = _listing(run)
    assert main(["-q", "demo", "--quick", "-o", str(run)]) == 1
    assert f"{run}: holds another run" in _error(capsys) and _listing(run) == before
    assert main(["-q", "demo", "--quick", "-o", str(run), "--overwrite"]) == 0
    assert (run / "demo.png").is_file() and (run / "train.npz").is_file()


def _start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    environ = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        MPLBACKEND="Agg",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "cli_fake_backend", *args],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == marker:
            return
    proc.kill()
    raise AssertionError(f"never saw {marker!r}: {proc.stderr.read()[-2000:]}")


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_of_a_real_training_process(sig, scan_file, tmp_path):
    scan, out = scan_file(), tmp_path / "run"
    proc = _start(
        tmp_path, "train", str(scan), "-o", str(out), "--epochs", "50", FAKE_EPOCH_S="0.2"
    )
    _wait_for(proc, "EPOCH 1 START")  # epoch 0 is checkpointed; epoch 1 is running
    proc.send_signal(sig)
    code, err = _finish(proc)
    lines = [ln for ln in err.splitlines() if ln.startswith("ptycho: error:")]
    assert code == 128 + sig, err
    assert lines == [
        f"ptycho: error: interrupted ({signal.Signals(sig).name}); {out} is unchanged; "
        f"continue with: ptycho train {scan} -o {out} --resume"
    ]
    assert "Traceback" not in err
    # nothing of the unfinished run is visible; it is kept, hidden, to resume
    assert sorted(p.name for p in out.iterdir()) == [WORK_NAME]
    assert not list(out.rglob(".ptycho-staging-*")) and not list(out.rglob("*.tmp"))
    assert (out / WORK_NAME / "checkpoints" / CKPT).is_file()
    # resumed in another process, it completes the 50 epochs
    done = _start(tmp_path, "-q", "train", str(scan), "-o", str(out), "--resume")
    code, err = _finish(done)
    assert code == 0, err
    assert [r["epoch"] for r in history_rows(out / "history.csv")] == list(range(50))


def test_sigterm_mid_demo_leaves_nothing(tmp_path):
    """The audit's SIGTERM case: the demo's folder must not keep the unfinished run's files."""
    out = tmp_path / "ptycho_demo"
    proc = _start(tmp_path, "demo", "--quick", "--epochs", "30", "-o", str(out), FAKE_EPOCH_S="0.2")
    _wait_for(proc, "EPOCH 1 START")
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err
    assert (
        err.strip().splitlines()[-1] == f"ptycho: error: interrupted (SIGTERM); {out} is unchanged"
    )
    assert not out.exists()  # created by the demo, removed with everything in it


def test_sigint_mid_inference_leaves_no_partial_output(scan_file, tmp_path):
    scan = scan_file()
    assert _start(tmp_path, "-q", "train", str(scan), "-o", "run", "--epochs", "1").wait() == 0
    rec = tmp_path / "rec"
    rec.mkdir()
    proc = _start(
        tmp_path,
        "infer",
        "run",
        str(scan),
        "-o",
        str(rec),
        "--inference-batch-size",
        "1",
        FAKE_PREDICT_S="0.2",
    )
    _wait_for(proc, "PREDICT")
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "ptycho: error: interrupted (SIGINT)"
    assert list(rec.iterdir()) == []


# ----------------------------------------------------------------------------- generator flag
def test_generator_flag_reaches_the_bundle(slow, scan_file, tmp_path, capsys):
    """``--generator`` sets ``model.generator`` (recorded in the manifest); the default is the
    'fourier' generator; anything else is a usage error (exit 2)."""
    scan = scan_file()
    assert _train(scan, tmp_path / "default", "--epochs", "1") == 0
    assert _manifest(tmp_path / "default")["model_config"]["generator"] == "fourier"
    assert _train(scan, tmp_path / "cnn", "--epochs", "1", "--generator", "cnn") == 0
    assert _manifest(tmp_path / "cnn")["model_config"]["generator"] == "cnn"
    capsys.readouterr()
    assert _train(scan, tmp_path / "bad", "--epochs", "1", "--generator", "unet") == 2
    assert "invalid choice: 'unet'" in capsys.readouterr().err


def test_physics_stages_flag_reaches_the_bundle(slow, scan_file, tmp_path, capsys):
    """``--physics-stages`` sets ``model.physics_stages`` (default 3); negative is a usage
    error (exit 2)."""
    scan = scan_file()
    assert _train(scan, tmp_path / "default", "--epochs", "1", "--gridsize", "2") == 0
    assert _manifest(tmp_path / "default")["model_config"]["physics_stages"] == 3
    out = tmp_path / "none"
    assert _train(scan, out, "--epochs", "1", "--gridsize", "2", "--physics-stages", "0") == 0
    assert _manifest(out)["model_config"]["physics_stages"] == 0
    capsys.readouterr()
    assert _train(scan, tmp_path / "bad", "--epochs", "1", "--physics-stages", "-1") == 2
    assert "--physics-stages" in capsys.readouterr().err


def test_resuming_a_run_recorded_before_the_generator_field_keeps_the_cnn(
    slow, scan_file, tmp_path
):
    """A run folder written before ``ModelConfig.generator`` trained the CNN generator; its
    record has no ``generator`` key. ``--resume`` reads it as 'cnn' (the bundle rule of
    specs/model.md) and continues with it, instead of refusing it or switching generators."""
    scan, out = scan_file(), tmp_path / "run"
    assert _train(scan, out, "--epochs", "2", "--generator", "cnn") == 0
    info = json.loads((out / RUN_INFO).read_text())
    del info["config"]["model"]["generator"]
    (out / RUN_INFO).write_text(json.dumps(info))
    assert _train(scan, out, "--epochs", "3", "--resume") == 0
    assert _manifest(out)["model_config"]["generator"] == "cnn"
