"""The API Ptychodus 1.7's "PtychoPINN-Torch" child processes call (``specs/torch-backend.md``,
"Ptychodus entry").

Ptychodus has no plugin mechanism for reconstructors: its spawned children import these names
of the original PtychoPINN. Here they are thin delegations to :mod:`ptycho_torch.workflows`
(training and reconstruction with :mod:`ptycho_core.engine`); the mapping of data and settings
is :mod:`ptycho_torch.api._mapping`'s.

Reconstruct (Ptychodus's ``run_reconstruct``)::

    configs = PtychoModel._extract_configs_from_checkpoint(path)   # bundle under any name
    pm = PtychoModel(data_config=..., model_config=..., ...)
    pm.model = PtychoPINN_Lightning.load_from_checkpoint(path, ...)
    cm = ConfigManager.from_loaded_model(pm); cm.validate_arch_compatibility(pm)
    loader = PtychoDataLoader.from_np(counts, probe, positions_yx, cm)
    obj = InferenceEngine(config_manager=cm, ptycho_model=pm).predict_and_stitch(loader)

Train (``run_train``): ``ConfigManager(...)``, ``PtychoDataLoader(data_dir=..., ...)``,
``PtychoModel._new_model(...)``, ``Trainer._from_lightning(...)``, callbacks appended to
``trainer._trainer.callbacks`` (passed to the real Lightning ``Trainer``, so they run live),
``trainer.train(...)``, then ``lightning_utils.find_best_checkpoint(loader.output_dir)``.
"""

from __future__ import annotations

import enum
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.config import InferenceConfig as CoreInferenceConfig
from ptycho_core.io import ScanData
from ptycho_torch import config_params as cp
from ptycho_torch._ptychodus_module import PtychoPINN_Lightning
from ptycho_torch.api import _mapping

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
]

logger = logging.getLogger("ptycho_torch.api")


class DataloaderFormats(enum.Enum):
    """Data-loading modes Ptychodus may name; all read the same scan."""

    LIGHTNING_ONLY_MODULE = "lightning_only_module"
    LIGHTNING_MODULE = "lightning_module"
    TENSORDICT = "tensordict"


class ConfigManager:
    """The five :mod:`ptycho_torch.config_params` objects of one run."""

    def __init__(
        self,
        data_config: cp.DataConfig,
        model_config: cp.ModelConfig,
        training_config: cp.TrainingConfig,
        inference_config: cp.InferenceConfig,
        datagen_config: cp.DatagenConfig | None = None,
    ) -> None:
        self.data_config, self.model_config = data_config, model_config
        self.training_config, self.inference_config = training_config, inference_config
        self.datagen_config = datagen_config if datagen_config is not None else cp.DatagenConfig()

    @classmethod
    def from_loaded_model(cls, ptycho_model: PtychoModel) -> ConfigManager:
        """The configs a loaded :class:`PtychoModel` carries."""
        pm = ptycho_model
        return cls(pm.data_config, pm.model_config, pm.training_config, pm.inference_config)

    def validate_arch_compatibility(self, ptycho_model: PtychoModel) -> None:
        """Check that ``ptycho_model`` holds a loaded bundle whose N and C are this manager's;
        else ``ValueError``."""
        handle = ptycho_model.model
        if not isinstance(handle, PtychoPINN_Lightning) or handle.bundle is None:
            raise ValueError("PtychoModel holds no loaded model (load_from_checkpoint first)")
        mc = handle.bundle.model_config
        want = (vars(self.data_config).get("N"), vars(self.data_config).get("C"))
        if want != (mc.N, mc.C):
            raise ValueError(
                f"{handle.bundle_path}: bundle has N={mc.N}, C={mc.C}; configs say "
                f"N={want[0]}, C={want[1]}"
            )


class PtychoModel:
    """Configs plus a :class:`~ptycho_torch.model.PtychoPINN_Lightning` handle (``model``)."""

    def __init__(
        self,
        model_config: cp.ModelConfig,
        data_config: cp.DataConfig,
        training_config: cp.TrainingConfig,
        inference_config: cp.InferenceConfig,
    ) -> None:
        self.model_config, self.data_config = model_config, data_config
        self.training_config, self.inference_config = training_config, inference_config
        self.model: PtychoPINN_Lightning | None = None

    @staticmethod
    def _extract_configs_from_checkpoint(
        path: str,
    ) -> tuple[cp.DataConfig, cp.ModelConfig, cp.TrainingConfig, cp.InferenceConfig]:
        """``(data, model, training, inference)`` configs of the PyTorch bundle at ``path``
        (any file name); anything else → ``BundleError`` (a ``ValueError``) saying what it is."""
        kw = _mapping.configs_from_manifest(_mapping.check_model_file(path))
        return (
            cp.DataConfig(**kw["data"]),
            cp.ModelConfig(**kw["model"]),
            cp.TrainingConfig(**kw["training"]),
            cp.InferenceConfig(**kw["inference"]),
        )

    @classmethod
    def _new_model(
        cls, model: type[PtychoPINN_Lightning], config_manager: ConfigManager
    ) -> PtychoModel:
        """A :class:`PtychoModel` with a fresh (untrained) ``model`` handle of class ``model``."""
        cm = config_manager
        pm = cls(cm.model_config, cm.data_config, cm.training_config, cm.inference_config)
        pm.model = model(
            model_config=cm.model_config,
            data_config=cm.data_config,
            training_config=cm.training_config,
            inference_config=cm.inference_config,
        )
        return pm


class PtychoDataLoader:
    """One scan for the entry: ``scan`` (:class:`ptycho_core.io.ScanData`, amplitudes) and
    ``output_dir`` (training: a new ``run_<time>`` folder under the given one)."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        config_manager: ConfigManager | None = None,
        data_format: DataloaderFormats = DataloaderFormats.LIGHTNING_ONLY_MODULE,
        output_dir: str | Path | None = None,
        *,
        scan: ScanData | None = None,
    ) -> None:
        self.config_manager, self.data_format = config_manager, DataloaderFormats(data_format)
        if scan is None:
            if data_dir is None:
                raise ValueError("PtychoDataLoader needs data_dir (a training folder) or a scan")
            scan = _mapping.read_training_scan(data_dir)
        self.scan = scan
        self.output_dir: Path | None = None
        if output_dir is not None:
            self.output_dir = _new_run_dir(Path(output_dir))

    @classmethod
    def from_np(
        cls,
        diff_patterns: np.ndarray,
        probe: np.ndarray,
        positions: np.ndarray,
        config_manager: ConfigManager | None = None,
    ) -> PtychoDataLoader:
        """From Ptychodus's reconstruct input: detector counts ``(M, N, N)`` (→ ``sqrt``),
        probe ``(modes, N, N)`` (one mode, else ``DataContractError`` naming the shape),
        positions ``(M, 2)`` ``(y, x)`` in Ptychodus's object pixels (its object grid is
        inferred from them, :func:`ptycho_torch.api._mapping.object_grid`)."""
        scan = _mapping.scan_from_ptychodus(diff_patterns, probe, positions)
        return cls(config_manager=config_manager, scan=scan)


def _new_run_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        run = parent / (f"run_{stamp}" if k == 0 else f"run_{stamp}_{k}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: cannot create a new run_{stamp}* folder")


class _CallbackList:
    """What Ptychodus reaches as ``trainer._trainer``: ``callbacks``, a list it appends
    Lightning callbacks to before :meth:`Trainer.train` builds the real Lightning Trainer."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []


class Trainer:
    """Trains a :class:`PtychoModel` on a :class:`PtychoDataLoader`'s scan with
    :mod:`ptycho_torch.workflows` (the bundle goes to ``dataloader.output_dir``)."""

    def __init__(
        self, model: PtychoModel, dataloader: PtychoDataLoader, config_manager: ConfigManager
    ) -> None:
        self.model, self.dataloader, self.config_manager = model, dataloader, config_manager
        self._trainer = _CallbackList()
        self.result: Any = None

    @classmethod
    def _from_lightning(
        cls,
        model: PtychoModel,
        dataloader: PtychoDataLoader,
        orchestration: str = "lightning",
        config_manager: ConfigManager | None = None,
    ) -> Trainer:
        cm = config_manager if config_manager is not None else dataloader.config_manager
        if cm is None:
            raise ValueError("Trainer needs a ConfigManager")
        return cls(model, dataloader, cm)

    def train(self, orchestration: str = "lightning", experiment_name: str = "") -> Any:
        """Map the configs (one log line per ignored or changed setting), train, write
        ``<output_dir>/wts.h5.zip`` and ``history.csv``; the appended callbacks run inside the
        Lightning fit. Returns the :class:`ptycho_core.engine.TrainResult`."""
        import torch

        from ptycho_core import engine
        from ptycho_torch.bundle import load_bundle
        from ptycho_torch.workflows import TorchHooks

        cm, loader = self.config_manager, self.dataloader
        if loader.output_dir is None:
            loader.output_dir = _new_run_dir(Path("outputs"))
        config, execution = _mapping.training_configs(
            cm.data_config.to_dict(),
            cm.model_config.to_dict(),
            cm.training_config.to_dict(),
            cm.inference_config.to_dict(),
            n=loader.scan.N,
            output_dir=loader.output_dir,
            cuda_available=torch.cuda.is_available(),
        )
        hooks = TorchHooks(callbacks=tuple(self._trainer.callbacks))
        result = engine.train(hooks, config, execution, train_data=loader.scan)
        self.result = result
        if self.model.model is not None:
            self.model.model.bundle = load_bundle(result.bundle_path)
            self.model.model.bundle_path = result.bundle_path
        return result


class InferenceEngine:
    """Reconstructs a :class:`PtychoDataLoader`'s scan with a loaded :class:`PtychoModel`."""

    def __init__(self, config_manager: ConfigManager, ptycho_model: PtychoModel) -> None:
        self.config_manager, self.ptycho_model = config_manager, ptycho_model

    def predict_and_stitch(self, dataloader: PtychoDataLoader) -> np.ndarray:
        """``(H, W)`` complex64 object on the scan's object grid (Ptychodus's), from
        :func:`ptycho_torch.workflows.reconstruct` with the loaded bundle."""
        from ptycho_torch.workflows import reconstruct

        handle = self.ptycho_model.model
        if handle is None or handle.bundle is None:
            raise ValueError("InferenceEngine: the PtychoModel holds no loaded model")
        b = handle.bundle
        tc = b.training_config
        config = CoreInferenceConfig(
            model=b.model_config,
            model_path=b.path,
            neighbor_count=tc.neighbor_count if tc is not None else 6,
            backend=_mapping.BACKEND,
        )
        result = reconstruct(config, data=dataloader.scan, bundle=b)
        return np.asarray(result.object, dtype=np.complex64)
