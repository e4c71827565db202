"""Run folders (``specs/cli.md``): a training run into ``DIR`` is exclusive and all or nothing.

- Exclusive: :class:`RunFolder` holds ``DIR/.ptycho.lock`` (:mod:`ptycho_cli.runlock`) for the
  whole command; a second run into ``DIR`` fails at once.
- All or nothing: the run works in the hidden folder ``DIR/.ptycho-run/`` (the backend's
  ``config.output_dir``): bundle, ``history.csv``, ``checkpoints/``, logs, figures,
  reconstruction. Only when every file is written does :meth:`RunFolder.commit` replace the
  previous run's files in ``DIR`` by the new ones — signals held back, with a journal
  (``DIR/.ptycho-replaced/commit.json``) so that even a crash in the middle of the renames is
  completed by the next run into ``DIR``. ``DIR`` never holds a mix of two runs; files that are
  not a run's (e.g. the scan itself) are never touched.
- A folder that already holds a run is refused unless ``--overwrite`` (replace it when the new
  run completes) or ``--resume`` (continue it) is given.
- Interrupted or failed, a run keeps ``DIR/.ptycho-run/`` only if it holds a checkpoint to
  resume from (``ptycho train --resume``); otherwise the folder is removed. ``DIR`` itself is
  left as it was.
- ``DIR/.ptycho-run.json`` (in the work folder, then committed with the run) records how the run
  was made — backend, training config, the execution settings that shape training, the training
  data — so ``--resume`` continues with the same settings.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ptycho_cli import interrupts
from ptycho_cli.runlock import RunLock
from ptycho_core.engine import legacy_model_config
from ptycho_core.errors import PtychoError
from ptycho_core.io import atomic_write

__all__ = [
    "DEMO_NAMES",
    "LAST_CHECKPOINT",
    "RUN_INFO",
    "RUN_NAMES",
    "REPLACED_NAME",
    "ResumePlan",
    "RunFolder",
    "RunFolderError",
    "SHAPING_EXECUTION_FIELDS",
    "WORK_NAME",
    "adopt_run_settings",
    "check_same_settings",
    "retarget",
    "retarget_bundle",
]

logger = logging.getLogger(__name__)

#: The run in progress, or an interrupted one kept to resume.
WORK_NAME = ".ptycho-run"
#: The previous run's files while a commit replaces them (with the journal ``commit.json``).
REPLACED_NAME = ".ptycho-replaced"
_JOURNAL = "commit.json"
#: How the run was made (backend, configs, data); read by ``--resume``.
RUN_INFO = ".ptycho-run.json"
_RUN_FORMAT = "ptycho-run"

#: The names a training run owns in its folder: replaced together, never mixed with another
#: run's (``specs/cli.md``). Input data files are not among them.
RUN_NAMES: tuple[str, ...] = (
    "wts.h5.zip",
    "history.csv",
    "loss.png",
    "checkpoints",
    "logs",
    "mlruns",
    "recon.npz",
    "recon.h5",
    "recon.png",
    "metrics.json",
    "comparison.png",
    "demo.png",
    RUN_INFO,
)
#: ``ptycho demo`` also owns the scans it simulated.
DEMO_NAMES: tuple[str, ...] = (*RUN_NAMES, "train.npz", "test.npz")
#: The checkpoint each backend writes last in ``checkpoints/`` (what ``--resume`` continues).
LAST_CHECKPOINT: dict[str, str] = {"pytorch": "last.ckpt", "tensorflow": "last.state.npz"}
#: Run sub-folders a resumed run carries over from the run it continues.
_CARRIED = ("checkpoints", "logs", "mlruns")
#: Execution settings that change the trained weights: recorded, adopted and checked on resume.
SHAPING_EXECUTION_FIELDS: tuple[str, ...] = (
    "learning_rate",
    "scheduler",
    "accum_steps",
    "gradient_clip_val",
    "early_stop_patience",
    "enable_checkpointing",
    "checkpoint_monitor_metric",
    "checkpoint_mode",
    "checkpoint_save_top_k",
    "deterministic",
    "precision",
)
#: Training-config keys a resumed run may change (paths are the command's; epochs may grow).
_FREE_KEYS = ("train_data_file", "test_data_file", "output_dir", "nepochs")


class RunFolderError(PtychoError, RuntimeError):
    """The output folder holds another run, or ``--resume`` has nothing to continue."""


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)


def read_run_info(path: Path) -> dict[str, Any]:
    """A run-info file (``{}`` when missing, unreadable or of another format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == _RUN_FORMAT else {}


def _history_rows(run_dir: Path) -> int:
    try:
        with open(run_dir / "history.csv", encoding="utf-8") as fh:
            return max(0, sum(1 for line in fh if line.strip()) - 1)
    except OSError:
        return 0


def find_checkpoint(ckpt_dir: Path, backend: str | None) -> tuple[Path, str] | None:
    """``(path, backend)`` of the last checkpoint in ``ckpt_dir`` (of ``backend`` when given)."""
    names = {backend: LAST_CHECKPOINT[backend]} if backend in LAST_CHECKPOINT else LAST_CHECKPOINT
    for name, filename in names.items():
        if (ckpt_dir / filename).is_file():
            return ckpt_dir / filename, str(name)
    return None


def _list(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


@dataclass
class ResumePlan:
    """Where a resumed run continues from.

    ``checkpoint``: the backend checkpoint; ``in_place``: it is the unfinished run in
    ``DIR/.ptycho-run`` (continued there); ``source``: the run folder it belongs to, whose
    ``checkpoints/`` and logs a fresh work folder starts from (None when ``in_place`` or when a
    bare checkpoint file was given); ``info``: that run's run info (``{}`` if unknown);
    ``epochs_done``: epochs that run had recorded.
    """

    checkpoint: Path
    in_place: bool
    source: Path | None
    info: dict[str, Any] = field(default_factory=dict)
    epochs_done: int = 0


class RunFolder:
    """``with RunFolder(DIR, "train") as rf:`` — the locked output folder of one run.

    Entering takes the lock (creating ``DIR``) and completes a commit that a crash cut short;
    leaving releases the lock and removes ``DIR`` again if this run created it and left it
    empty. ``names``: the run-owned names (:data:`RUN_NAMES`, :data:`DEMO_NAMES`).
    """

    def __init__(self, folder: str | Path, command: str, names: Iterable[str] = RUN_NAMES):
        self.folder = Path(folder)
        self.command = command
        self.names = tuple(names)
        self.lock = RunLock(self.folder, command)
        self._created = False
        #: True once :meth:`commit` has put the run in place.
        self.committed = False

    @property
    def work(self) -> Path:
        return self.folder / WORK_NAME

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RunFolder:
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"{self.folder}: is a file, not a folder (the output folder)")
        self._created = not self.folder.exists()
        self.lock.acquire()
        try:
            self.recover()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty

    # ------------------------------------------------------------------ state
    def existing(self) -> list[str]:
        """Run-owned names present in the folder (not counting an unfinished run)."""
        return [n for n in self.names if _exists(self.folder / n)]

    def has_unfinished(self) -> bool:
        return self.work.is_dir()

    def unfinished_checkpoint(self) -> Path | None:
        found = find_checkpoint(self.work / "checkpoints", None)
        return found[0] if found else None

    def describe_unfinished(self) -> str:
        info = read_run_info(self.work / RUN_INFO)
        done = _history_rows(self.work)
        total = (info.get("config") or {}).get("nepochs")
        of = f" of {total}" if total else ""
        return f"an unfinished run ({done} epoch{'' if done == 1 else 's'}{of} done)"

    def _drop_useless_unfinished(self) -> None:
        """An unfinished run without a checkpoint (killed in its first epoch) cannot be
        resumed: remove it."""
        if self.has_unfinished() and self.unfinished_checkpoint() is None:
            logger.info("%s: removing an unfinished run without a checkpoint", self.work)
            _remove(self.work)

    def check_free(self, *, overwrite: bool) -> None:
        """Refuse a folder holding another run (unless ``overwrite``)."""
        self._drop_useless_unfinished()
        if overwrite:
            return
        if self.has_unfinished():
            raise RunFolderError(
                f"{self.folder}: holds {self.describe_unfinished()}; use --resume to continue "
                "it or --overwrite to start afresh"
            )
        present = self.existing()
        if present:
            raise RunFolderError(
                f"{self.folder}: holds another run ({_list(present)}); use --overwrite to "
                "replace it or --resume to continue it"
            )

    # ------------------------------------------------------------------ resume
    def plan_resume(
        self, resume: bool | str | Path, *, overwrite: bool, backend: str | None
    ) -> ResumePlan:
        """Find what ``--resume [DIR|CKPT]`` continues (``True``: this folder) and check that
        the output folder can take the resumed run. ``backend``: the one asked for, if any."""
        self._drop_useless_unfinished()
        plan = self.locate_resume(resume, backend=backend)
        if not plan.in_place:
            self._check_takes_resumed(
                Path(str(resume)) if resume is not True else self.folder, overwrite
            )
        return plan

    def locate_resume(self, resume: bool | str | Path, *, backend: str | None) -> ResumePlan:
        """What ``--resume`` continues, without checks or changes (also for the processes a
        distributed launcher starts, which must resume from the same checkpoint)."""
        source = self.folder if resume is True else Path(str(resume))
        run_dir: Path | None
        if source.is_file():
            ckpt_dir = source.parent
            run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else None
            info = read_run_info(run_dir / RUN_INFO) if run_dir is not None else {}
            checkpoint = source
        elif source.is_dir():
            candidates = [source] if source.name == WORK_NAME else [source / WORK_NAME, source]
            for run_dir in candidates:
                info = read_run_info(run_dir / RUN_INFO)
                found = find_checkpoint(run_dir / "checkpoints", backend or info.get("backend"))
                if found is not None:
                    checkpoint = found[0]
                    break
            else:
                wanted = (
                    [LAST_CHECKPOINT[backend]]
                    if backend in LAST_CHECKPOINT
                    else list(LAST_CHECKPOINT.values())
                )
                raise RunFolderError(
                    f"{source}: no checkpoint to resume from (looked for "
                    f"{' or '.join(wanted)} in {source / 'checkpoints'} and in its unfinished "
                    "run); train without --resume"
                )
        else:
            raise RunFolderError(f"{source}: --resume: no such checkpoint file or run folder")
        in_place = run_dir is not None and run_dir.resolve() == self.work.resolve()
        return ResumePlan(
            checkpoint=checkpoint,
            in_place=in_place,
            source=None if in_place else run_dir,
            info=info,
            epochs_done=_history_rows(run_dir) if run_dir is not None else 0,
        )

    def _check_takes_resumed(self, source: Path, overwrite: bool) -> None:
        if overwrite:
            return
        if self.has_unfinished():
            raise RunFolderError(
                f"{self.folder}: holds {self.describe_unfinished()} that resuming from {source} "
                "would discard; use --resume without a value to continue it, or add --overwrite"
            )
        present = self.existing()
        same = source.resolve() == self.folder.resolve() or source.resolve().is_relative_to(
            self.folder.resolve()
        )
        if present and not same:
            raise RunFolderError(
                f"{self.folder}: holds another run ({_list(present)}); add --overwrite to "
                f"replace it with the run resumed from {source}"
            )

    # ------------------------------------------------------------------ work folder
    def start(self, plan: ResumePlan | None = None) -> Path:
        """The work folder for the run: the unfinished run itself (``plan.in_place``), or a
        fresh one — seeded with the resumed run's checkpoints and logs when there is one."""
        if plan is not None and plan.in_place:
            return self.work
        _remove(self.work)
        self.work.mkdir(parents=True)
        if plan is not None and plan.source is not None:
            for name in _CARRIED:
                src = plan.source / name
                if src.is_dir():
                    shutil.copytree(src, self.work / name)
        return self.work

    def write_info(self, info: Mapping[str, Any]) -> None:
        record = {
            "format": _RUN_FORMAT,
            "version": 1,
            "command": self.command,
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            **info,
        }
        _write_json(self.work / RUN_INFO, record)

    def abandon(self, *, keep_if_resumable: bool) -> Path | None:
        """After a failure or interruption: keep the work folder when it holds a checkpoint and
        ``keep_if_resumable`` (returns it), else remove it (returns None)."""
        if not self.work.exists():
            return None
        if keep_if_resumable and self.unfinished_checkpoint() is not None:
            with contextlib.suppress(OSError):  # the result files' staging, if any
                for tmp in self.work.glob(".ptycho-staging-*"):
                    _remove(tmp)
            return self.work
        _remove(self.work)
        return None

    def final_path(self, path: str | Path) -> Path:
        """Where a file of the work folder lands after :meth:`commit`."""
        p = Path(path)
        try:
            return self.folder / p.relative_to(self.work)
        except ValueError:
            return p

    # ------------------------------------------------------------------ commit
    def commit(self) -> None:
        """Replace the previous run's files in the folder by the work folder's, signals held
        back (a Ctrl-C arriving now is handled after the renames)."""
        with interrupts.blocked():
            self._commit()

    def recover(self) -> None:
        """Complete a commit that a crash interrupted (run when the lock is taken)."""
        replaced = self.folder / REPLACED_NAME
        if not replaced.exists():
            return
        if not (replaced / _JOURNAL).is_file():  # crashed before the journal: nothing moved
            _remove(replaced)
            return
        logger.warning("%s: completing the replacement of a run that was cut short", self.folder)
        with interrupts.blocked():
            self._commit()

    def _commit(self) -> None:
        folder, work = self.folder, self.work
        replaced = folder / REPLACED_NAME
        journal = replaced / _JOURNAL
        if not journal.is_file():
            replaced.mkdir(exist_ok=True)
            _write_json(journal, {"names": list(self.names), "moving_in": False})
        state = json.loads(journal.read_text(encoding="utf-8"))
        if not state.get("moving_in"):
            for name in state.get("names", []):
                src = folder / name
                if _exists(src) and not _exists(replaced / name):
                    os.replace(src, replaced / name)
            state["moving_in"] = True
            _write_json(journal, state)
        if work.is_dir():
            for item in sorted(work.iterdir()):
                dest = folder / item.name
                if _exists(dest):  # a name the run wrote beyond ``names``: set it aside too
                    n = 0
                    while _exists(replaced / f"{item.name}.{n}"):
                        n += 1
                    os.replace(dest, replaced / f"{item.name}.{n}")
                os.replace(item, dest)
            work.rmdir()
        _fsync_dir(folder)
        _remove(replaced)
        self.committed = True


# ----------------------------------------------------------------------------- settings
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_settings(config: Any, execution: Any, train_data: Path, n_patterns: int) -> dict:
    """What :data:`RUN_INFO` records for a run: backend, the training config, the execution
    settings that shape training (:data:`SHAPING_EXECUTION_FIELDS`) and the training data."""
    exe = execution.to_dict()
    return {
        "backend": config.backend,
        "config": _jsonable(config.to_dict()),
        "execution": _jsonable({k: exe[k] for k in SHAPING_EXECUTION_FIELDS if k in exe}),
        "train_data": str(train_data),
        "train_patterns": int(n_patterns),
    }


def adopt_run_settings(
    info: Mapping[str, Any], overrides: dict[str, Any], execution: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings of the run being resumed that the command does not give itself: its training
    config (model and training sections, paths excluded) joins ``overrides`` and its shaping
    execution settings join ``execution`` — each only where the command is silent. A model
    config recorded before a model field existed reads as what that run trained with
    (:func:`ptycho_core.engine.legacy_model_config`, e.g. ``generator='cnn'``)."""
    config = _legacy_run_config(info)
    given = set(overrides)
    adopted: dict[str, Any] = {}
    for key, value in config.items():
        if key == "model" and isinstance(value, Mapping):
            for mkey, mvalue in value.items():
                if mkey not in given and f"model.{mkey}" not in given:
                    adopted[mkey] = mvalue
        elif key not in _FREE_KEYS[:3] and key not in given and f"training.{key}" not in given:
            adopted[key] = value
    exe_adopted = {
        k: v
        for k, v in dict(info.get("execution") or {}).items()
        if k in SHAPING_EXECUTION_FIELDS and k not in execution
    }
    if adopted or exe_adopted:
        logger.info(
            "resuming with the run's settings: %s",
            ", ".join(f"{k}={v!r}" for k, v in sorted({**adopted, **exe_adopted}.items())),
        )
    return {**adopted, **overrides}, {**exe_adopted, **execution}


def _legacy_run_config(info: Mapping[str, Any]) -> dict[str, Any]:
    """The training config a run folder recorded, its model section read by the bundle rules."""
    config = dict(info.get("config") or {})
    if isinstance(config.get("model"), Mapping):
        config["model"] = legacy_model_config(dict(config["model"]))
    return config


def check_same_settings(
    info: Mapping[str, Any],
    config: Any,
    execution: Any,
    n_patterns: int,
    where: Path,
    epochs_done: int,
) -> None:
    """A resumed run must be the run it continues: same backend, training config (but paths and
    ``nepochs``), shaping execution settings and number of training patterns; and, resuming a
    finished run, more epochs than it has. Differences are a :class:`RunFolderError` listing
    them (``where``: the resumed run)."""
    diffs: list[str] = []
    if info:
        old_cfg = _legacy_run_config(info)
        new_cfg = _jsonable(config.to_dict())
        old_flat = {**dict(old_cfg.get("model") or {}), **old_cfg}
        new_flat = {**dict(new_cfg.get("model") or {}), **new_cfg}
        for key in sorted(set(old_flat) | set(new_flat)):
            if key in _FREE_KEYS or key == "model":
                continue
            if old_flat.get(key) != new_flat.get(key):
                diffs.append(f"{key}: {old_flat.get(key)!r} → {new_flat.get(key)!r}")
        old_exe = dict(info.get("execution") or {})
        new_exe = _jsonable(execution.to_dict())
        for key in SHAPING_EXECUTION_FIELDS:
            if key in old_exe and old_exe[key] != new_exe.get(key):
                diffs.append(f"{key}: {old_exe[key]!r} → {new_exe.get(key)!r}")
        old_n = info.get("train_patterns")
        if isinstance(old_n, int) and old_n != int(n_patterns):
            diffs.append(f"training patterns: {old_n} → {int(n_patterns)}")
    if diffs:
        raise RunFolderError(
            f"{where}: --resume continues a run made with other settings ({'; '.join(diffs)}); "
            "give the run's settings (or use --overwrite without --resume to start afresh)"
        )
    if epochs_done and int(config.nepochs) <= epochs_done:
        raise RunFolderError(
            f"{where}: the run already trained {epochs_done} epochs; give --epochs N with N > "
            f"{epochs_done} to train it further"
        )


# ----------------------------------------------------------------------------- paths
def retarget(value: Any, work: Path, final: Path) -> Any:
    """``value`` with every path string under ``work`` moved under ``final`` (nested)."""
    old, new = str(work), str(final)
    if isinstance(value, str):
        if value == old or value.startswith(old + os.sep):
            return new + value[len(old) :]
        return value
    if isinstance(value, Mapping):
        return {k: retarget(v, work, final) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(retarget(v, work, final) for v in value)
    return value


def retarget_bundle(bundle_path: Path, work: Path, final: Path) -> None:
    """Rewrite the bundle's manifest so the paths it records (``output_dir``, data files in the
    work folder) name where the run is committed, not the work folder."""
    from ptycho_core import bundle as core_bundle

    b = core_bundle.read_bundle(bundle_path)
    manifest = {k: v for k, v in b.manifest.items() if k != "files"}
    moved = retarget(manifest, work, final)
    if moved != manifest:
        core_bundle.write_bundle(bundle_path, moved, b.files)
