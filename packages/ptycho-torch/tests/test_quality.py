"""Reconstruction quality on a small simulated scan (seeded, ~a minute on an idle 2-core CPU): the
Poisson NLL falls, and the stitched reconstruction of *held-out* positions beats a flat object by a
stated amplitude-SSIM margin (ptycho_core.metrics, amplitude scaled to the truth mean).

Phase SSIM is printed, not asserted: with gridsize 1 a constant phase per pattern is invisible in
the data (|F(P·O·e^{ic})| = |F(P·O)|), so each stitched patch carries its own offset, while a flat
object already scores ~0.8 against the smooth, low-contrast random-field phase of the simulator.
Observed (600 positions, 300 trained, 40 epochs): amplitude SSIM ~0.5 vs 0.16 flat (15 epochs
gave only 0.3: the network is under-trained, not mis-modelled; see specs/torch-backend.md).
"""

import numpy as np
import pytest

from ptycho_core.config import InferenceConfig, ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_core.metrics import evaluate
from ptycho_core.physics import poisson_nll
from ptycho_core.simulation import simulate_scan
from ptycho_torch.backend import reconstruct, train

SSIM_MARGIN = 0.2  # held-out amplitude SSIM must beat the flat object by at least this


@pytest.mark.slow
def test_trained_model_beats_flat_object_on_held_out_positions(tmp_path):
    # The procedural scene (the margins below were measured on it; the default "realistic" scene
    # is a harder case, see specs/simulation.md).
    scan = simulate_scan(
        N=32, n_positions=600, nphotons=1e6, seed=21, object_size=128, scenario="procedural"
    )
    rng = np.random.default_rng(0)
    perm = rng.permutation(scan.M)
    train_scan, test_scan = scan.subset(np.sort(perm[:300])), scan.subset(np.sort(perm[300:]))
    model = ModelConfig(N=32, gridsize=1, n_filters_scale=1)
    cfg = TrainingConfig(
        model=model, nepochs=40, batch_size=8, output_dir=tmp_path, seed=1, validation_fraction=0.1
    )
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        enable_progress_bar=False,
        logger_backend="none",
        enable_checkpointing=False,
        early_stop_patience=20,
        learning_rate=2e-3,
    )
    res = train(cfg, ex, train_data=train_scan)
    nll = res.history["train_nll"]
    # The NLL carries a large data-dependent constant; its floor is the saturated value reached
    # when the predicted intensity equals the counts. Require the excess over that floor to halve.
    counts = (
        res.intensity_scale * res.norm_factor * train_scan.diffraction.astype(np.float64)
    ) ** 2
    floor = float(poisson_nll(counts, counts))
    excess = [v - floor for v in nll]
    print("train NLL excess over saturated per epoch:", [round(v, 3) for v in excess])
    assert excess[-1] < 0.5 * excess[0]

    rec = reconstruct(InferenceConfig(model=model, model_path=res.bundle_path), ex, data=test_scan)
    covered = rec.coverage > 0
    truth = scan.object
    got = evaluate(rec.object, truth, mask=covered)
    flat = evaluate(np.ones_like(truth), truth, mask=covered)
    print(
        f"held-out SSIM amp {got['ssim_amp']:.3f} (flat {flat['ssim_amp']:.3f}), "
        f"phase {got['ssim_phase']:.3f} (flat {flat['ssim_phase']:.3f}); "
        f"PSNR amp {got['psnr_amp']:.2f} (flat {flat['psnr_amp']:.2f})"
    )
    assert got["ssim_amp"] >= flat["ssim_amp"] + SSIM_MARGIN
    assert got["psnr_amp"] > flat["psnr_amp"]
