"""Resumable training states (``specs/training.md``), framework-free.

A state is one ``.npz`` without pickles, written atomically after every epoch:

- ``state``: a UTF-8 JSON header (``uint8`` bytes) — ``format`` :data:`STATE_FORMAT`, ``version``
  :data:`STATE_VERSION`, the ``backend`` that wrote it, the completed ``epoch`` (0-based),
  ``nepochs``, ``stopped``, the :class:`~ptycho_core.training.HistoryRecorder` state, the
  callbacks' carried-over attributes and the array counts ``n_weights`` / ``n_optimizer``.
  Python's JSON: ``NaN`` / ``Infinity`` stand for non-finite history values and callback bests.
- ``weight_NNNN`` / ``optimizer_NNNN``: the model's and the optimizer's arrays, in the backend's
  variable order.

A backend only collects its variables into a :class:`TrainingSnapshot` and assigns them back
(:func:`checked_arrays` checks the shapes first); the TensorFlow backend's is
``ptycho_tf.training`` (``specs/tf-backend.md``). Every problem with a file is a
:class:`~ptycho_core.errors.ConfigError` (the file is the ``resume_from`` setting) naming the
file and, where one is at fault, the key.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.errors import ConfigError
from ptycho_core.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "STATE_FORMAT",
    "STATE_NAME",
    "STATE_VERSION",
    "TrainingSnapshot",
    "assign_state",
    "callback_state",
    "checked_arrays",
    "read_training_state",
    "restore_callback_state",
    "resume_state",
    "write_training_state",
]

#: The file name of the latest state in a run's ``checkpoints/`` folder.
STATE_NAME = "last.state.npz"
STATE_FORMAT = "ptycho-training-state"
STATE_VERSION = 1
_LISTS = (("weights", "weight"), ("optimizer", "optimizer"))
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


@dataclass(eq=False)
class TrainingSnapshot:
    """The state after epoch ``epoch`` (0-based) of a run of ``nepochs`` epochs by ``backend``.

    ``weights``: the model's arrays and ``optimizer``: the optimizer's (step count, learning
    rate, moments), both in the backend's variable order; ``history``:
    :meth:`HistoryRecorder.state_dict`; ``callbacks``: per callback class name, the attributes
    that carry over epochs (JSON scalars; numbers are written as floats unless ``int``);
    ``stopped``: early stopping had ended the run; ``path``: the file it was read from.
    """

    backend: str
    epoch: int
    nepochs: int
    stopped: bool
    history: dict[str, Any]
    callbacks: dict[str, dict[str, Any]]
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    path: Path | None = None

    def first_epoch(self, nepochs: int) -> int:
        """The epoch a resumed run of ``nepochs`` epochs starts at: the one after
        :attr:`epoch`, or ``nepochs`` (nothing left to train) when early stopping had ended
        the run and no more epochs than its own are asked for."""
        if self.stopped and nepochs <= self.nepochs:
            return int(nepochs)
        return self.epoch + 1


def _bad(path: object, backend: str | None, problem: str) -> ConfigError:
    return ConfigError(
        f"{path}: {problem}; resume_from must be a {backend or 'ptycho'} training state "
        f"({STATE_NAME}, written in checkpoints/ with enable_checkpointing)"
    )


def _scalar(value: Any) -> Any:
    """A callback attribute as a JSON scalar (numpy numbers → ``float``)."""
    return value if value is None or isinstance(value, bool | int | str) else float(value)


def write_training_state(path: str | Path, snapshot: TrainingSnapshot) -> Path:
    """Write ``snapshot`` to ``path`` atomically (its folder is created); returns ``path``.
    ``snapshot.path`` is not written."""
    header = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "backend": snapshot.backend,
        "epoch": int(snapshot.epoch),
        "nepochs": int(snapshot.nepochs),
        "stopped": bool(snapshot.stopped),
        "history": snapshot.history,
        "callbacks": {
            str(c): {str(k): _scalar(v) for k, v in attrs.items()}
            for c, attrs in snapshot.callbacks.items()
        },
        "n_weights": len(snapshot.weights),
        "n_optimizer": len(snapshot.optimizer),
    }
    arrays: dict[str, Any] = {"state": np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)}
    for attr, prefix in _LISTS:
        for i, a in enumerate(getattr(snapshot, attr)):
            arrays[f"{prefix}_{i:04d}"] = np.asarray(a)
    if any(a.dtype.hasobject for a in arrays.values()):
        raise ValueError(f"{path}: a training state holds numeric arrays only (no objects)")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(p) as fh:
        fh.write(buf.getbuffer())
    return p


def read_training_state(path: str | Path, backend: str | None = None) -> TrainingSnapshot:
    """Read and validate a state written by ``backend`` (its name, e.g. ``"tensorflow"``;
    None: by any backend, the snapshot names it).

    Refused, as a :class:`ConfigError` naming the file: a missing file, one that is not a
    readable ``.npz`` (empty, truncated, corrupt), a pickled (object) array, a ``state`` header
    that is not JSON or of another format, version or backend, a missing or mistyped header
    field, a missing or unexpected array, and non-finite values in a floating-point array.
    """
    p = Path(path)
    if not p.is_file():
        raise _bad(p, backend, "no such file")
    arrays: dict[str, np.ndarray] = {}
    try:
        npz = np.load(p, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _bad(p, backend, f"not a readable .npz ({exc})") from exc
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except _READ_ERRORS as exc:  # object arrays (pickles) included
                raise _bad(p, backend, f"key {key!r}: not a readable array ({exc})") from exc
    if "state" not in arrays:
        raise _bad(p, backend, "missing key 'state'")
    try:
        header = json.loads(arrays.pop("state").tobytes().decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad(p, backend, f"key 'state': not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != STATE_FORMAT:
        raise _bad(p, backend, f"key 'state': format is not {STATE_FORMAT!r}")
    if header.get("version") != STATE_VERSION:
        raise _bad(p, backend, f"key 'state': version {header.get('version')!r} is not supported")
    if backend is not None and header.get("backend") != backend:
        raise _bad(p, backend, f"key 'state': written by backend {header.get('backend')!r}")

    def field(name: str, kind: type, minimum: int | None = None) -> Any:
        value: Any = header.get(name)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok or (minimum is not None and value < minimum):
            at_least = f" >= {minimum}" if minimum is not None else ""
            raise _bad(
                p, backend, f"key 'state': {name} = {value!r}, expected {kind.__name__}{at_least}"
            )
        return value

    callbacks = field("callbacks", dict)
    if not all(isinstance(v, dict) for v in callbacks.values()):
        raise _bad(p, backend, "key 'state': callbacks must map names to objects")
    lists: dict[str, list[np.ndarray]] = {}
    for attr, prefix in _LISTS:
        keys = [f"{prefix}_{i:04d}" for i in range(field(f"n_{attr}", int, 0))]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise _bad(p, backend, f"missing key {missing[0]!r}")
        lists[attr] = [arrays.pop(k) for k in keys]
    if arrays:
        raise _bad(p, backend, f"unexpected key {sorted(arrays)[0]!r}")
    for attr, prefix in _LISTS:
        for i, a in enumerate(lists[attr]):
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise _bad(p, backend, f"key '{prefix}_{i:04d}': holds non-finite values")
    return TrainingSnapshot(
        backend=field("backend", str),
        epoch=field("epoch", int, 0),
        nepochs=field("nepochs", int, 1),
        stopped=field("stopped", bool),
        history=field("history", dict),
        callbacks=callbacks,
        weights=lists["weights"],
        optimizer=lists["optimizer"],
        path=p,
    )


def checked_arrays(
    snapshot: TrainingSnapshot, what: str, expected: Sequence[tuple[str, Sequence[int]]]
) -> list[np.ndarray]:
    """``snapshot.weights`` (``what = "weights"``) or ``.optimizer``, after checking that they
    are one array per ``(variable name, shape)`` of ``expected``, in order, of exactly that
    shape; otherwise a :class:`ConfigError` naming the file and the first variable that
    differs."""
    arrays: list[np.ndarray] = getattr(snapshot, what)
    where = snapshot.path if snapshot.path is not None else "training state"
    if len(arrays) != len(expected):
        raise _bad(
            where,
            snapshot.backend,
            f"holds {len(arrays)} {what} arrays, this model has {len(expected)}",
        )
    for (name, shape), a in zip(expected, arrays, strict=True):
        if tuple(int(d) for d in shape) != a.shape:
            raise _bad(
                where,
                snapshot.backend,
                f"{what} {name}: shape {list(a.shape)} does not match the model's {list(shape)}",
            )
    return arrays


def resume_state(path: str | Path | None, backend: str, history: Any) -> TrainingSnapshot | None:
    """The state to resume from (``path``, None: a fresh run → None), read for ``backend``
    (:func:`read_training_state`), with its history rows put into ``history`` (a
    :class:`~ptycho_core.training.HistoryRecorder`) so the resumed run continues them."""
    if path is None:
        return None
    snapshot = read_training_state(path, backend)
    history.load_state_dict(snapshot.history)
    logger.info("resuming from %s after epoch %d", snapshot.path, snapshot.epoch)
    return snapshot


def callback_state(
    callbacks: Sequence[Any], fields: Mapping[type, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """``TrainingSnapshot.callbacks`` for ``callbacks``: per callback whose type is in
    ``fields``, its class name → those attributes' values."""
    return {
        type(cb).__name__: {f: getattr(cb, f) for f in fields[type(cb)]}
        for cb in callbacks
        if type(cb) in fields
    }


def restore_callback_state(snapshot: TrainingSnapshot, callbacks: Sequence[Any]) -> None:
    """Put the attributes :func:`callback_state` saved back into ``callbacks`` (by class
    name; callbacks the snapshot does not name are left as they are)."""
    for cb in callbacks:
        for name, value in snapshot.callbacks.get(type(cb).__name__, {}).items():
            setattr(cb, name, value)


def assign_state(snapshot: TrainingSnapshot, **variables: Sequence[Any]) -> None:
    """Assign ``snapshot.weights`` / ``.optimizer`` (keywords ``weights=``, ``optimizer=``) to
    the backend's variables — objects with ``path``, ``shape`` and ``assign(array)`` (Keras
    variables) — after checking every shape first (:func:`checked_arrays`), so a mismatch
    changes nothing."""
    expected = {what: [(v.path, v.shape) for v in vs] for what, vs in variables.items()}
    arrays = {what: checked_arrays(snapshot, what, spec) for what, spec in expected.items()}
    for what, vs in variables.items():
        for var, arr in zip(vs, arrays[what], strict=True):
            var.assign(arr)
