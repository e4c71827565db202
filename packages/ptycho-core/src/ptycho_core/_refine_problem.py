"""Set-up of a refinement (``specs/refinement.md``): options, the working canvas, batches and
the global scale; the types a solver consumes and returns. Public names are re-exported by
:mod:`ptycho_core.refine`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ptycho_core import _refine_ops as ops
from ptycho_core.errors import ConfigError, DataContractError

logger = logging.getLogger("ptycho_core.refine")

NOISE_MODELS = ops.NOISE_MODELS
_MODES = ("fixed", "refine")


@dataclass(frozen=True)
class IterationInfo:
    """Passed to the progress callback after every iteration (0 = the start): ``iteration``,
    ``misfit`` (per pattern, photon counts), ``seconds`` (cumulative solver wall time, callbacks
    excluded) and ``canvas()``, a copy of the current working canvas ``(Hc, Wc) complex64``."""

    iteration: int
    misfit: float
    seconds: float
    get_canvas: Callable[[], np.ndarray]

    def canvas(self) -> np.ndarray:
        return np.asarray(self.get_canvas(), np.complex64)


#: Progress callback, called with an :class:`IterationInfo` after every iteration.
Progress = Callable[[IterationInfo], None]


def default_batch_size(m: int, canvas_pixels: int = 0, n: int = 64) -> int:
    """Mini-batch size when none is given: ``clip(ceil(M/20), 32, 128)`` patterns — about
    twenty updates per pass on a small scan (measured in ``specs/refinement.md``) — raised to
    ``ceil(canvas_pixels / (2 N²))`` on a large object, so the canvas-wide work of an update
    stays below its per-pattern work; at most ``M``."""
    size = max(32, min(128, math.ceil(m / 20)), math.ceil(canvas_pixels / (2 * n * n)))
    return int(min(m, size))


@dataclass(frozen=True)
class RefineOptions:
    """Validated options of :func:`refine` (``specs/refinement.md``).

    ``iterations``: passes over the scan. ``noise``: ``"poisson"`` (NLL of the counts) or
    ``"gaussian"`` (amplitude least squares). ``probe``/``positions``: ``"fixed"`` or
    ``"refine"``. ``batch_size``: patterns per update (None: :func:`default_batch_size`; ``>= M``:
    the full batch, deterministic, computed in chunks of ``chunk``). ``step``: relaxation ``β``
    in ``(0, 1]`` (full batch: the fixed step). ``regularization``: ``δ``, the fraction of the
    largest illumination added to every denominator. ``probe_start``/``positions_start``: the
    first iteration (1-based) that updates them. ``max_shift_px``: cap of one position update
    (pixels, per component); ``max_position_error_px``: cap of the total correction.
    ``fit_scale``: fit the one global scale between model and data first (it goes into the
    probe). ``seed``: batch composition and order.
    """

    iterations: int = 20
    noise: str = "poisson"
    probe: str = "fixed"
    positions: str = "fixed"
    batch_size: int | None = None
    step: float = 1.0
    regularization: float = 0.01
    probe_start: int = 2
    positions_start: int = 2
    max_shift_px: float = 0.5
    max_position_error_px: float = 4.0
    chunk: int = 256
    fit_scale: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(
                f"RefineOptions.{name} = {getattr(self, name)!r} is invalid; allowed: {allowed}"
            )

        for name in ("iterations", "chunk", "probe_start", "positions_start"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (0 if name == "iterations" else 1)
            ):
                raise bad(name, "an integer >= " + ("0" if name == "iterations" else "1"))
        if self.noise not in NOISE_MODELS:
            raise bad("noise", " | ".join(NOISE_MODELS))
        for name in ("probe", "positions"):
            if getattr(self, name) not in _MODES:
                raise bad(name, " | ".join(_MODES))
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise bad("batch_size", "None or an integer >= 1")
        if not 0 < self.step <= 1:
            raise bad("step", "0 < step <= 1")
        if not 0 <= self.regularization < 1e3:
            raise bad("regularization", "0 <= regularization < 1000")
        if not 0 < self.max_shift_px <= self.max_position_error_px <= 64:
            raise bad("max_shift_px", "0 < max_shift_px <= max_position_error_px <= 64")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class RefineProblem:
    """A refinement set up on its working canvas (built by :func:`prepare_refinement`).

    ``canvas``: ``(Hc, Wc) complex64`` start object; ``canvas_origin``: object-frame ``(x0, y0)``
    of canvas pixel ``[0, 0]`` (ints); ``positions``: ``(M, 2) float64`` ``(x, y)`` canvas pixels;
    ``diffraction``: ``(M, N, N) float32`` measured amplitude (photon units); ``probe``: ``(N, N)
    complex64`` with the fitted scale ``probe_scale`` applied; ``batches``: index arrays of the
    mini-batches (one array = the full batch); ``full_batch``: fixed-step full-batch mode;
    ``position_limits``: ``(2, M, 2)`` lowest/highest canvas position allowed.
    """

    canvas: np.ndarray
    canvas_origin: tuple[int, int]
    positions: np.ndarray
    diffraction: np.ndarray
    probe: np.ndarray
    probe_scale: float
    options: RefineOptions
    batches: list[np.ndarray]
    full_batch: bool
    position_limits: np.ndarray
    frame_shape: tuple[int, int]
    frame_origin: tuple[int, int]
    frame_object: np.ndarray
    prepare_s: float = 0.0

    @property
    def n(self) -> int:
        return int(self.diffraction.shape[-1])

    @property
    def m(self) -> int:
        return int(self.diffraction.shape[0])

    def batch_order(self, iteration: int) -> np.ndarray:
        """The order of the batches in ``iteration`` (1-based), from ``(seed, iteration)``."""
        rng = np.random.default_rng([self.options.seed, iteration])
        return rng.permutation(len(self.batches))

    def chunks(self) -> list[np.ndarray]:
        """Index arrays of at most ``options.chunk`` patterns covering the scan in order."""
        c = self.options.chunk
        return [np.arange(s, min(s + c, self.m)) for s in range(0, self.m, c)]

    def to_frame(self, canvas: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """A canvas ``(Hc, Wc)`` written into the input frame ``(H, W) complex64``: canvas
        values on the common region (where ``keep`` ``(Hc, Wc)`` bool is True, when given), the
        input object elsewhere."""
        obj = self.frame_object.copy()
        ov = _overlap(self.canvas_origin, canvas.shape, self.frame_origin, self.frame_shape)
        if ov is not None:
            cs, fs = ov
            c = np.asarray(canvas, np.complex64)[cs]
            obj[fs] = c if keep is None else np.where(keep[cs], c, obj[fs])
        return obj

    def clamp_positions(self, positions: np.ndarray) -> np.ndarray:
        """Clip ``(M, 2)`` canvas positions into :attr:`position_limits` (in place)."""
        np.clip(positions, self.position_limits[0], self.position_limits[1], out=positions)
        return positions


@dataclass(eq=False)
class SolverOutput:
    """What a solver returns (canvas frame): ``canvas (Hc, Wc) complex64``, ``probe (N, N)
    complex64``, ``positions (M, 2) float64``, ``misfit``/``seconds`` per iteration (``K+1``;
    misfit per pattern, photon counts), ``final_misfit`` (exact, at the returned state),
    ``rejected_steps`` (full batch) and ``device``."""

    canvas: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    misfit: list[float]
    seconds: list[float]
    final_misfit: float
    rejected_steps: int = 0
    device: str = "cpu"


class Solver(Protocol):
    """A backend's solver: the update of ``specs/refinement.md`` on its device."""

    name: str

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput: ...


# ----------------------------------------------------------------------------- set-up
def _int_origin(origin: Any, what: str) -> tuple[int, int]:
    o = np.asarray(origin, dtype=np.float64).reshape(-1)
    if o.shape != (2,) or not np.all(np.isfinite(o)) or np.any(np.abs(o - np.round(o)) > 1e-6):
        raise DataContractError(f"{what}: key 'origin': expected two integers (x0, y0), got {o}")
    return int(round(o[0])), int(round(o[1]))


def _check_inputs(obj: Any, diffraction: Any, positions: Any, probe: Any) -> tuple[np.ndarray, ...]:
    o = np.asarray(obj)
    if o.ndim != 2 or o.size == 0:
        raise DataContractError(f"object: expected an (H, W) array, got shape {o.shape}")
    d = np.asarray(diffraction, dtype=np.float32)
    if d.ndim != 3 or d.shape[1] != d.shape[2] or d.shape[1] % 2 or d.shape[0] == 0:
        raise DataContractError(f"diffraction: expected (M, N, N) with N even, got {d.shape}")
    m, n = d.shape[0], d.shape[1]
    p = np.asarray(positions, dtype=np.float64)
    if p.shape != (m, 2) or not np.all(np.isfinite(p)):
        raise DataContractError(f"positions: expected finite ({m}, 2) (x, y), got {p.shape}")
    pr = np.asarray(probe)
    if pr.shape != (n, n):
        raise DataContractError(f"probe: expected ({n}, {n}), got {pr.shape}")
    return o.astype(np.complex64), d, p, pr.astype(np.complex64)


def _canvas_box(
    positions: np.ndarray, n: int, margin: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Canvas origin ``(x0, y0)`` and shape ``(H, W)`` holding every ``(N+1)²`` block of every
    position moved by up to ``margin`` pixels."""
    lo = np.floor(positions.min(axis=0) - n / 2).astype(int) - margin
    hi = np.floor(positions.max(axis=0) - n / 2).astype(int) + n + margin
    return (int(lo[0]), int(lo[1])), (int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1))


def _overlap(
    a_origin: tuple[int, int],
    a_shape: tuple[int, int],
    b_origin: tuple[int, int],
    b_shape: tuple[int, int],
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Index slices of the common region of two frames (origin ``(x0, y0)``, shape ``(H, W)``)."""
    x0 = max(a_origin[0], b_origin[0])
    y0 = max(a_origin[1], b_origin[1])
    x1 = min(a_origin[0] + a_shape[1], b_origin[0] + b_shape[1])
    y1 = min(a_origin[1] + a_shape[0], b_origin[1] + b_shape[0])
    if x1 <= x0 or y1 <= y0:
        return None

    def sl(o: tuple[int, int]) -> tuple[slice, slice]:
        return slice(y0 - o[1], y1 - o[1]), slice(x0 - o[0], x1 - o[0])

    return sl(a_origin), sl(b_origin)


def _fill_value(values: np.ndarray) -> complex:
    """Mean amplitude times the phase of the mean of the covered pixels (1 when none)."""
    if values.size == 0:
        return 1.0 + 0.0j
    mean = complex(np.mean(values.astype(np.complex128)))
    amp = float(np.mean(np.abs(values)))
    if amp == 0:
        return 1.0 + 0.0j
    return amp * (mean / abs(mean)) if abs(mean) > 0 else complex(amp)


def _make_batches(m: int, size: int, seed: int) -> list[np.ndarray]:
    """``ceil(M/size)`` batches of a seeded permutation (spatially spread, sizes differ by <= 1)."""
    nb = max(1, math.ceil(m / size))
    perm = np.random.default_rng(seed).permutation(m)
    return [np.sort(perm[i::nb]) for i in range(nb)]


def _scale_sums(
    canvas: np.ndarray,
    probe: np.ndarray,
    positions: np.ndarray,
    diffraction: np.ndarray,
    chunk: int,
) -> tuple[float, float, float]:
    """``Σ a², Σ a·X, Σ X²`` over the scan with ``a = |F(P·O_m)|`` (one forward pass)."""
    n = probe.shape[0]
    cb = ops.checkerboard(n)
    saa = sax = sxx = 0.0
    for s in range(0, len(positions), chunk):
        sl = slice(s, s + chunk)
        a = np.abs(ops.propagate(ops.extract(canvas, positions[sl], n) * probe, cb))
        x = diffraction[sl]
        saa += float(np.sum(np.square(a), dtype=np.float64))
        sax += float(np.sum(a * x, dtype=np.float64))
        sxx += float(np.sum(np.square(x), dtype=np.float64))
    return saa, sax, sxx


def prepare_refinement(
    obj: Any,
    diffraction: Any,
    positions: Any,
    probe: Any,
    *,
    origin: Any = (0, 0),
    coverage: Any = None,
    options: RefineOptions | None = None,
) -> RefineProblem:
    """Build the working canvas and the batches, and fit the global scale (one forward pass).

    ``obj``: ``(H, W)`` complex start object with object-frame ``origin`` ``(x0, y0)``
    (integers); ``coverage``: ``(H, W)``, pixels ``> 0`` are trusted (None: all); the rest of the
    canvas starts from :func:`_fill_value` of the trusted pixels. ``diffraction``: ``(M, N, N)``
    amplitude, photon units; ``positions``: ``(M, 2)`` ``(x, y)`` object pixels; ``probe``:
    ``(N, N)`` complex. With ``fit_scale`` the probe is multiplied by the scale ``γ`` that best
    fits the data (Gaussian: ``ΣaX/Σa²``; Poisson: ``sqrt(ΣX²/Σa²)``).
    """
    t0 = time.perf_counter()
    opts = options or RefineOptions()
    o, d, pos, pr = _check_inputs(obj, diffraction, positions, probe)
    m, n = d.shape[0], d.shape[1]
    frame_origin = _int_origin(origin, "reconstruction")
    margin = 2 + (math.ceil(opts.max_position_error_px) if opts.positions == "refine" else 0)
    c_origin, c_shape = _canvas_box(pos, n, margin)
    trusted = np.isfinite(o)
    if coverage is not None:
        cov = np.asarray(coverage)
        if cov.shape != o.shape:
            raise DataContractError(
                f"coverage: expected the object's shape {o.shape}, got {cov.shape}"
            )
        trusted &= cov > 0
    canvas = np.full(c_shape, _fill_value(o[trusted]), dtype=np.complex64)
    ov = _overlap(c_origin, c_shape, frame_origin, o.shape)
    if ov is not None:
        cs, fs = ov
        canvas[cs] = np.where(trusted[fs], o[fs], canvas[cs])
    local = pos - np.asarray(c_origin, dtype=np.float64)
    limits = np.stack(
        [
            np.maximum(local - opts.max_position_error_px, n / 2 + 1e-9),
            np.minimum(
                local + opts.max_position_error_px,
                np.array([c_shape[1], c_shape[0]], np.float64) - n / 2 - 1 - 1e-9,
            ),
        ]
    )
    gamma = 1.0
    if opts.fit_scale:
        saa, sax, sxx = _scale_sums(canvas, pr, local, d, opts.chunk)
        if saa <= 0 or not math.isfinite(saa):
            raise DataContractError(
                "the start object and probe predict no signal (zero exit waves); cannot refine"
            )
        gamma = sax / saa if opts.noise == "gaussian" else math.sqrt(sxx / saa)
        if not gamma > 0:
            raise DataContractError(
                "the start object's prediction does not correlate with the data"
            )
    size = opts.batch_size
    if size is None:
        size = default_batch_size(m, c_shape[0] * c_shape[1], n)
    full = size >= m
    batches = [np.arange(m)] if full else _make_batches(m, size, opts.seed)
    logger.info(
        "refinement canvas %dx%d at origin %s, %d patterns, %s, probe scale %.6g",
        c_shape[0],
        c_shape[1],
        c_origin,
        m,
        "full batch" if full else f"{len(batches)} batches of ~{size}",
        gamma,
    )
    return RefineProblem(
        canvas=canvas,
        canvas_origin=c_origin,
        positions=local,
        diffraction=d,
        probe=(pr * np.float32(gamma)).astype(np.complex64),
        probe_scale=float(gamma),
        options=opts,
        batches=batches,
        full_batch=full,
        position_limits=limits,
        frame_shape=(int(o.shape[0]), int(o.shape[1])),
        frame_origin=frame_origin,
        frame_object=o,
        prepare_s=time.perf_counter() - t0,
    )
