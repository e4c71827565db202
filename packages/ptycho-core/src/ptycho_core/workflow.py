"""Backend-neutral orchestration shared by both backends (``specs/physics.md``,
``specs/training.md``).

A backend's ``train`` calls :func:`prepare_training` and feeds ``prepared.train.diffraction``
(``(G, C, N, N) float32`` = ``s·α·X``, photon-count amplitude; TF: ``.channels_last()``) and
``prepared.train.offsets`` to its model, with ``prepared.probe`` (normalised) and
``prepared.intensity_scale`` (``s``). Its ``reconstruct`` calls :func:`prepare_inference`, then
:func:`run_inference` with a ``predict(batch) -> (B, C_out, N, N) complex`` function, which
batches (:func:`iter_batches`), stitches chunk by chunk (bounded memory) and returns a
:class:`Reconstruction`. The train/reconstruct skeleton around these steps is
:mod:`ptycho_core.engine`. Framework code stays out of here.

Randomness: grouping and the train/validation split use one ``Generator(config.seed)``;
subsampling uses ``Generator(subsample_seed)`` (default ``config.seed``); inference groups with
the fixed seed :data:`INFERENCE_SEED`, so reconstructing twice gives identical results.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core import physics
from ptycho_core.config import InferenceConfig, ModelConfig, TrainingConfig, legacy_model_config
from ptycho_core.errors import ConfigError, DataContractError
from ptycho_core.grouping import GroupedData, group_scan, make_rng
from ptycho_core.io import ScanData, atomic_write, load_scan
from ptycho_core.stitching import Stitcher, StitchResult, default_stitch_crop

__all__ = [
    "INFERENCE_SEED",
    "InferenceShard",
    "PROGRESS_LOGGER",
    "Reconstruction",
    "PreparedInference",
    "PreparedTraining",
    "iter_batches",
    "make_result",
    "prepare_inference",
    "prepare_training",
    "read_history_csv",
    "run_inference",
    "write_history_csv",
]

logger = logging.getLogger(__name__)
#: Progress records (one per training epoch, one per 10 % of an inference) go to this logger at
#: INFO with ``extra={"progress": "epoch" | "inference"}``; the CLI decides whether to show them
#: (``specs/cli.md``).
PROGRESS_LOGGER = "ptycho.progress"
_progress = logging.getLogger(PROGRESS_LOGGER)

INFERENCE_SEED = 0


def _load(
    data: ScanData | None,
    path: Path | None,
    field_name: str,
    owner: str,
    skip: tuple[str, ...] = (),
) -> ScanData:
    if data is not None:
        return data
    if path is None:
        raise ConfigError(
            f"{owner}.{field_name} = None is invalid; allowed: a path to an NPZ "
            "scan when no data are passed in"
        )
    return load_scan(path, skip=skip)


def _without_y(scan: ScanData) -> ScanData:
    """``scan`` without its ground-truth patches ``Y`` (a shallow copy; nothing re-validated):
    inference never uses them, and ``Y`` is twice the size of the diffraction stack."""
    if scan.Y is None:
        return scan
    light = copy.copy(scan)
    light.Y = None
    return light


def _check_n(scan: ScanData, model: ModelConfig, owner: str) -> None:
    if scan.N != model.N:
        raise ConfigError(
            f"{owner}.model.N = {model.N} is invalid for {scan.source or 'the scan'}: its "
            f"patterns are {scan.N}x{scan.N}; allowed: N = {scan.N} (set N to the pattern size)"
        )


def _group(scan: ScanData, model: ModelConfig, owner: str, **kw: Any) -> GroupedData:
    try:
        return group_scan(scan, model.gridsize, **kw)
    except DataContractError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{owner}: cannot group {scan.M} positions: {exc}") from exc


def _ground_truth(scan: ScanData) -> np.ndarray | None:
    """Per-position truth patches ``(M, N, N) complex64``: ``Y``, else cut from ``objectGuess``."""
    if scan.Y is not None:
        return scan.Y
    if scan.object is not None:
        return physics.extract_patches(scan.object, scan.positions, scan.N).astype(np.complex64)
    return None


@dataclass(eq=False)
class PreparedTraining:
    """Everything a backend needs to train, framework-free.

    ``train``/``val``: grouped data whose ``diffraction`` is the model input ``s·α·X``
    ``(G, C, N, N) float32`` (photon-count amplitude); ``val`` may be None.
    ``probe``: ``(N, N) complex64`` normalised probe. ``norm_factor`` α, ``nphotons`` (mean
    photons per pattern), ``intensity_scale`` s = sqrt(nphotons)/(N/2).
    """

    config: TrainingConfig
    scan: ScanData
    train: GroupedData
    val: GroupedData | None
    probe: np.ndarray
    norm_factor: float
    nphotons: float
    nphotons_source: str
    intensity_scale: float
    timings: dict[str, float] = field(default_factory=dict)

    def normalization(self) -> dict[str, Any]:
        """JSON-safe normalisation facts for the bundle manifest."""
        return {
            "norm_factor": self.norm_factor,
            "nphotons": self.nphotons,
            "nphotons_source": self.nphotons_source,
            "intensity_scale": self.intensity_scale,
            "probe_scale": self.config.model.probe_scale,
        }


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_val = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def prepare_training(
    config: TrainingConfig, train_data: ScanData | None = None
) -> PreparedTraining:
    """Load, normalise, group and split a training scan (see the module docstring).

    Raises ConfigError when the patterns' N differs from ``config.model.N`` or the grouping
    request cannot be met, DataContractError for bad or too small data and, when the loss needs
    ground truth (``model_type='supervised'`` or ``realspace_weight > 0``), when there is
    neither ``Y`` nor ``objectGuess`` (:meth:`ptycho_core.training.LossSpec.check_ground_truth`).
    """
    t0 = time.perf_counter()
    owner = "TrainingConfig"
    scan = _load(train_data, config.train_data_file, "train_data_file", owner)
    model = config.model
    _check_n(scan, model, owner)
    if config.n_subsample is not None and config.n_subsample < scan.M:
        sub_seed = config.seed if config.subsample_seed is None else config.subsample_seed
        keep = np.sort(make_rng(sub_seed).choice(scan.M, config.n_subsample, replace=False))
        logger.info("subsampled %d of %d positions (seed %d)", len(keep), scan.M, sub_seed)
        scan = scan.subset(keep)

    alpha = float(physics.diffraction_norm_factor(scan.diffraction))
    if config.nphotons is not None:
        nphotons, source = float(config.nphotons), "config"
    else:
        nphotons, source = float(physics.estimate_nphotons(scan.diffraction)), "estimated"
        logger.info(
            "nphotons not given: estimated %.6g mean photons per pattern from the data "
            "(assumes photon-unit amplitudes)",
            nphotons,
        )
    s = float(physics.intensity_scale(nphotons, model.N))
    if not (math.isfinite(s) and s > 0 and math.isfinite(alpha) and alpha > 0):
        raise DataContractError(
            f"{scan.source or '<in-memory scan>'}: key 'diffraction': "
            f"expected non-zero patterns, got α = {alpha}, s = {s}"
        )

    truth = _ground_truth(scan)
    # The one ground-truth rule (supervised or realspace_weight > 0); imported here because
    # ptycho_core.training imports this module.
    from ptycho_core.training import LossSpec

    LossSpec.from_training_config(config).check_ground_truth(
        truth is not None, scan.source or "<in-memory scan>"
    )
    rng = make_rng(config.seed)
    grouped = _group(
        scan,
        model,
        owner,
        n_groups=config.n_groups,
        neighbor_count=config.neighbor_count,
        seed=rng,
        sequential=config.sequential_sampling,
        Y=truth,
    ).with_scale(s * alpha)
    tr, va = _split(len(grouped), config.validation_fraction, rng)
    probe = np.asarray(physics.normalize_probe(scan.probe, model.probe_scale), np.complex64)
    logger.info(
        "training data: %d groups (%d train, %d val) of C=%d, N=%d, α=%.6g, s=%.6g",
        len(grouped),
        len(tr),
        len(va),
        model.C,
        model.N,
        alpha,
        s,
    )
    return PreparedTraining(
        config=config,
        scan=scan,
        train=grouped.subset(tr),
        val=grouped.subset(va) if len(va) else None,
        probe=probe,
        norm_factor=alpha,
        nphotons=nphotons,
        nphotons_source=source,
        intensity_scale=s,
        timings={"prepare_s": time.perf_counter() - t0},
    )


@dataclass(eq=False)
class PreparedInference:
    """A scan grouped for inference: every position, ``diffraction`` = ``s·α·X``.

    ``model`` is the bundle's ModelConfig (gridsize from the manifest); ``stitch_crop`` in
    pixels; ``object_shape`` the object frame ``(H, W)`` when the scan has an object.
    """

    config: InferenceConfig
    model: ModelConfig
    scan: ScanData
    grouped: GroupedData
    norm_factor: float
    intensity_scale: float
    stitch_crop: int
    object_shape: tuple[int, int] | None
    timings: dict[str, float] = field(default_factory=dict)

    def make_stitcher(self) -> Stitcher:
        """A stitcher in the object frame (the scan's object, else the positions' bounding box)."""
        return Stitcher(
            self.model.N,
            self.stitch_crop,
            object_shape=self.object_shape,
            positions=self.scan.positions,
        )


def prepare_inference(
    config: InferenceConfig, manifest: Mapping[str, Any], data: ScanData | None = None
) -> PreparedInference:
    """Group all positions of a scan for a trained bundle (``manifest`` = its manifest dict).

    α comes from the data, ``s`` from ``manifest['intensity_scale']``; gridsize and N from
    ``manifest['model_config']``, keys it lacks as
    :func:`ptycho_core.config.legacy_model_config` sets them (no ``gridsize``: gridsize 1).
    ``config.n_groups`` limits the groups (None: every position).
    """
    t0 = time.perf_counter()
    owner = "InferenceConfig"
    try:
        mc = manifest["model_config"]
        model = ModelConfig.from_dict(
            legacy_model_config(dict(mc)) if isinstance(mc, Mapping) else mc
        )
        s = float(manifest["intensity_scale"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"bundle manifest lacks a usable model_config/intensity_scale: {exc}"
        ) from exc
    # Y is neither read nor held: memory stays that of the diffraction stack (issue D17).
    scan = _without_y(_load(data, config.test_data_file, "test_data_file", owner, ("Y",)))
    _check_n(scan, model, owner)
    stack: Any = scan.diffraction  # a streamed scan's stack knows its α (one pass at open)
    alpha = float(
        stack.norm_factor()
        if hasattr(stack, "norm_factor")
        else physics.diffraction_norm_factor(stack)
    )
    if config.neighbor_count < model.C - 1:
        raise ConfigError(
            f"{owner}.neighbor_count = {config.neighbor_count} is invalid for the "
            f"bundle's gridsize {model.gridsize}; allowed: >= {model.C - 1}"
        )
    grouped = _group(
        scan,
        model,
        owner,
        cover=config.grouping == "cover",
        n_groups=config.n_groups,
        neighbor_count=config.neighbor_count,
        seed=INFERENCE_SEED,
        sequential=True,
    ).with_scale(s * alpha)
    crop = (
        config.stitch_crop if config.stitch_crop is not None else int(default_stitch_crop(model.N))
    )
    if crop > model.N:
        raise ConfigError(f"{owner}.stitch_crop = {crop} is invalid; allowed: <= N = {model.N}")
    shape = None if scan.object is None else tuple(int(v) for v in scan.object.shape)
    logger.info(
        "inference data: %d groups (%s) of C=%d, N=%d, α=%.6g, s=%.6g",
        len(grouped),
        config.grouping,
        model.C,
        model.N,
        alpha,
        s,
    )
    return PreparedInference(
        config=config,
        model=model,
        scan=scan,
        grouped=grouped,
        norm_factor=alpha,
        intensity_scale=s,
        stitch_crop=crop,
        object_shape=shape,  # type: ignore[arg-type]
        timings={"prepare_s": time.perf_counter() - t0},
    )


def iter_batches(grouped: GroupedData, batch_size: int) -> Iterator[GroupedData]:
    """Consecutive groups in chunks of ``batch_size`` (the last may be shorter); lazy gathers."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} is invalid; allowed: an integer >= 1")
    for start in range(0, len(grouped), int(batch_size)):
        yield grouped.subset(slice(start, start + int(batch_size)))


def _stitch_inputs(patches: np.ndarray, batch: GroupedData) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(patches)
    if (
        p.ndim != 4
        or p.shape[0] != len(batch)
        or p.shape[2:] != (batch.N, batch.N)
        or p.shape[1] not in (1, batch.C)
    ):
        raise ValueError(
            f"predict returned shape {p.shape}; expected ({len(batch)}, C_out, "
            f"{batch.N}, {batch.N}) with C_out in (1, {batch.C})"
        )
    if p.shape[1] == batch.C:
        return p.reshape(-1, batch.N, batch.N), batch.positions.reshape(-1, 2)
    return p[:, 0], batch.centers  # one patch per group sits at the group centre


@dataclass(frozen=True)
class InferenceShard:
    """This process's share of a multi-process inference (``specs/training.md``).

    Batch ``i`` (of ``batch_size`` groups, the same batches as one process makes) is predicted
    by rank ``i % world_size``; afterwards ``reduce(num, wt)`` must sum the stitcher's
    accumulators (complex128 and float64 canvases, :attr:`Stitcher.accumulators`) over all
    ranks in place, so that every rank holds the whole canvas.
    """

    rank: int
    world_size: int
    reduce: Callable[[np.ndarray, np.ndarray], None]


def run_inference(
    prepared: PreparedInference,
    predict: Callable[[GroupedData], np.ndarray],
    batch_size: int,
    backend: str,
    *,
    shard: InferenceShard | None = None,
) -> Reconstruction:
    """Chunked predict-and-stitch. ``predict(batch)`` maps a :class:`GroupedData` batch (use
    ``batch.diffraction`` ``(B, C, N, N)`` = ``s·α·X`` and ``batch.offsets``) to complex object
    patches ``(B, C_out, N, N)`` (``C_out`` = C, or 1: placed at the group centre).

    Memory: one batch (its patterns are gathered on demand, from a file for a streamed scan)
    plus the canvas. ``shard``: predict only this rank's batches, then sum the canvases."""
    t0 = time.perf_counter()
    stitcher = prepared.make_stitcher()
    t_pred = 0.0
    rank, world = (0, 1) if shard is None else (shard.rank, shard.world_size)
    total, done, decile = len(prepared.grouped), 0, 0
    for i, batch in enumerate(iter_batches(prepared.grouped, batch_size)):
        if i % world != rank:
            done += len(batch)
            continue
        t1 = time.perf_counter()
        patches = predict(batch)
        t_pred += time.perf_counter() - t1
        stitcher.add(*_stitch_inputs(patches, batch))
        done += len(batch)
        if done < total and done * 10 // total > decile:  # one line per 10 %, not the last
            decile = done * 10 // total
            _progress.info(
                "reconstructed %d%% (%d of %d groups, %.1f s)",
                100 * done // total,
                done,
                total,
                time.perf_counter() - t0,
                extra={"progress": "inference"},
            )
    extra: dict[str, float] = {}
    if shard is not None and world > 1:
        t1 = time.perf_counter()
        shard.reduce(*stitcher.accumulators)
        extra = {"reduce_s": time.perf_counter() - t1, "world_size": float(world)}
    stitched = stitcher.result()
    timings = dict(
        prepared.timings, predict_s=t_pred, inference_s=time.perf_counter() - t0, **extra
    )
    return make_result(
        stitched,
        positions=prepared.scan.positions,
        backend=backend,
        config=prepared.config,
        timings=timings,
        norm_factor=prepared.norm_factor,
        intensity_scale=prepared.intensity_scale,
    )


@dataclass(eq=False)
class Reconstruction:
    """A stitched reconstruction in the object frame, as both backends return it.

    ``object`` ``(H, W) complex64``; ``amplitude`` ``(H, W) float32`` = ``|object|``; ``phase``
    ``(H, W) float32`` = ``angle(object)`` in ``(−π, π]`` (radians; bounds are ``float32(π)``);
    ``coverage`` ``(H, W) float32`` (summed stitching weights, 0 where no patch landed);
    ``origin`` ``(x0, y0)`` the object-frame coordinates of pixel ``[0, 0]``; ``positions``
    ``(M, 2) float64`` ``(x, y)`` object pixels; ``backend`` its name; ``config`` the inference
    config as a JSON-safe dict; ``timings`` seconds; ``norm_factor`` α of the data and
    ``intensity_scale`` ``s`` of the bundle.
    """

    object: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    coverage: np.ndarray
    origin: tuple[float, float]
    positions: np.ndarray
    backend: str
    config: dict[str, Any]
    timings: dict[str, float]
    norm_factor: float = math.nan
    intensity_scale: float = math.nan


def make_result(
    stitched: StitchResult,
    *,
    positions: np.ndarray,
    backend: str,
    config: Any,
    timings: Mapping[str, float],
    norm_factor: float = math.nan,
    intensity_scale: float = math.nan,
) -> Reconstruction:
    """A :class:`Reconstruction` from a stitcher's result (dtypes as documented there)."""
    obj = np.asarray(stitched.object, dtype=np.complex64)
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    # (−π, π] in float32: angle(−1 − 0j) = −π, and angles just above −π round to float32(−π).
    pi32 = np.float32(np.pi)
    phase = np.angle(obj).astype(np.float32)
    phase[phase <= -pi32] = pi32
    return Reconstruction(
        object=obj,
        amplitude=np.abs(obj).astype(np.float32),
        phase=phase,
        coverage=np.asarray(stitched.coverage, dtype=np.float32),
        origin=(float(stitched.origin[0]), float(stitched.origin[1])),
        positions=np.asarray(positions, dtype=np.float64),
        backend=str(backend),
        config=cfg,
        timings={k: float(v) for k, v in timings.items()},
        norm_factor=float(norm_factor),
        intensity_scale=float(intensity_scale),
    )


def write_history_csv(path: str | Path, history: Mapping[str, list[float]]) -> Path:
    """Write a loss history (metric → per-epoch values) as CSV (``epoch`` first), atomically.

    The ``epoch`` column holds ``history['epoch']`` when given (as integers), else the row
    index. NaN (a missing value) and shorter series' missing rows are empty cells.
    """
    p = Path(path)
    epochs = history.get("epoch")
    names = [k for k in history if k != "epoch"]
    n = max((len(v) for v in history.values()), default=0)

    def cell(values: list[float], e: int) -> Any:
        v = values[e] if e < len(values) else math.nan
        return "" if isinstance(v, float | np.floating) and math.isnan(v) else v

    def epoch(e: int) -> int:
        v = epochs[e] if epochs is not None and e < len(epochs) else math.nan
        return int(v) if math.isfinite(v) else e

    with atomic_write(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", *names])
        for e in range(n):
            w.writerow([epoch(e), *(cell(history[k], e) for k in names)])
    return p


def read_history_csv(path: str | Path) -> dict[str, list[float]]:
    """Read a loss history written by :func:`write_history_csv` (the inverse): column name →
    per-epoch float values, ``epoch`` included; empty cells are NaN.

    A file without an ``epoch`` column, or a cell that is neither empty nor a number, is a
    :class:`DataContractError` naming the file, the line and the column.
    """
    p = Path(path)
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = list(reader.fieldnames or [])
        if "epoch" not in names:
            raise DataContractError(
                f"{p}: expected a CSV header with an 'epoch' column, got {names}"
            )
        history: dict[str, list[float]] = {k: [] for k in names}
        for line, row in enumerate(reader, start=2):
            for k in names:
                cell = row[k]
                try:
                    history[k].append(math.nan if cell in ("", None) else float(cell))
                except ValueError:
                    raise DataContractError(
                        f"{p}: line {line}, column {k!r}: expected a number or an empty cell, "
                        f"got {cell!r}"
                    ) from None
    return history
