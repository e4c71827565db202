"""Where the network's error lives on the realistic scene (issue 8; PyTorch): phase vs amplitude.

Trains the defaults on the left half of the realistic scene (as ``bench_quality.py`` does), or
loads ``--bundle``, reconstructs the right half, and prints

- the spread of the reconstructed vs the true phase and amplitude, and their correlation, on
  the scored region (after registration, as ``compare_to_truth`` aligns them);
- the training loss (amplitude MAE, the default) on training patterns for candidate objects:
  the truth, the truth's amplitude with zero phase, a flat object, the network's output, and
  the two mixes — where the network sits between "right amplitude" and "right phase";
- SSIM when each patch's constant phase offset is taken from the truth (an oracle), as a bound
  on what synchronising per-patch offsets could recover.

    python benchmarks/diag_quality.py [--N 32 --positions 800 --epochs 10 --gridsize 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=32)
    ap.add_argument("--positions", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--gridsize", type=int, default=2)
    ap.add_argument("--photons", type=float, default=1e9)
    ap.add_argument("--bundle", type=Path, default=None, help="a trained bundle (skips training)")
    args = ap.parse_args(argv)

    import torch

    import ptycho_torch.workflows as workflows
    from ptycho_cli.compare import compare_to_truth
    from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
    from ptycho_core.engine import load_bundle
    from ptycho_core.physics import extract_patches
    from ptycho_core.simulation import held_out_halves, simulate_scan
    from ptycho_core.workflow import prepare_training
    from ptycho_torch import physics
    from ptycho_torch.losses import PtychoLoss
    from ptycho_torch.model import ModelOutput

    n = args.N
    scan = simulate_scan(N=n, n_positions=args.positions, nphotons=args.photons, seed=0)
    train_half, test_half = held_out_halves(scan)
    truth_obj = scan.object.astype(np.complex64)
    execution = ExecutionConfig(
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger_backend="none",
        early_stop_patience=max(args.epochs, 1),
    )
    with tempfile.TemporaryDirectory(prefix="diag_quality_") as tmp:
        bundle_path = args.bundle
        if bundle_path is None:
            cfg = TrainingConfig(
                model=ModelConfig(N=n, gridsize=args.gridsize),
                nepochs=args.epochs,
                n_groups=None,
                output_dir=Path(tmp),
                backend="pytorch",
            )
            bundle_path = workflows.train(cfg, execution, train_data=train_half).bundle_path
        bundle = load_bundle(workflows.HOOKS, bundle_path)
        model = bundle.model.eval()
        inf = InferenceConfig(model=bundle.model_config, model_path=bundle_path)

        # 1. the reconstruction, and the oracle per-patch phase offsets
        plain = workflows.HOOKS.make_predict
        oracle = {"on": False}

        def make_predict(m, ex):  # type: ignore[no-untyped-def]
            predict = plain(m, ex)

            def wrapped(batch):  # type: ignore[no-untyped-def]
                out = predict(batch)
                if oracle["on"]:
                    pos = np.asarray(batch.positions).reshape(-1, 2)
                    truth = extract_patches(truth_obj, pos, n).reshape(out.shape)
                    c = slice(n // 4, 3 * n // 4)
                    z = (out[..., c, c] * np.conj(truth[..., c, c])).sum(axis=(-2, -1))
                    out = out * np.exp(-1j * np.angle(z))[..., None, None]
                return out

            return wrapped

        workflows.HOOKS.make_predict = make_predict  # type: ignore[method-assign]
        for on in (False, True):
            oracle["on"] = on
            rec = workflows.reconstruct(inf, execution, data=test_half)
            c = compare_to_truth(
                rec.object, rec.coverage, rec.origin, scan.object, register=True, margin=4
            )
            label = "per-patch phase offsets from the truth" if on else "reconstruction"
            print(
                f"{label}: SSIM amp {c.metrics['ssim_amp']:.3f} phase {c.metrics['ssim_phase']:.3f}"
            )
            if not on:
                o, t, k = c.recon, c.truth, c.mask
                for name, f in (("phase", np.angle), ("amplitude", np.abs)):
                    r, q = f(o)[k], f(t)[k]
                    print(
                        f"  {name}: std {r.std():.3f} (truth {q.std():.3f}), "
                        f"correlation {np.corrcoef(r, q)[0, 1]:.3f}"
                    )
        workflows.HOOKS.make_predict = plain  # type: ignore[method-assign]

        # 2. the training loss for candidate objects on 256 training groups
        prep = prepare_training(
            TrainingConfig(model=bundle.model_config, n_groups=None), train_half
        )
        x = torch.from_numpy(prep.train.diffraction[:256])
        off = torch.from_numpy(prep.train.offsets[:256].astype(np.float32))
        pos = prep.train.positions[:256].reshape(-1, 2)
        y = extract_patches(truth_obj, pos, n).reshape(x.shape)
        with torch.no_grad():
            net = model.diffraction_to_obj(x, off).numpy()

            train_loss = PtychoLoss()  # the default loss spec: what training minimises

            def loss(obj: np.ndarray) -> float:
                o = torch.from_numpy(np.ascontiguousarray(obj, np.complex64))
                a = (
                    physics.forward_model(
                        o, model.probe, model.gaussian_smoothing_sigma, model.probe_mask
                    )
                    * model.intensity_scale
                )
                return float(train_loss(ModelOutput(o, a, a * a), x)["loss"])

            amp, ph = np.abs(y), np.angle(y)
            rows = {
                "truth": y,
                "true amplitude, zero phase": amp,
                "flat (mean amplitude)": np.full_like(y, amp.mean()),
                "network": net,
                "network amplitude, true phase": np.abs(net) * np.exp(1j * ph),
                "true amplitude, network phase": amp * np.exp(1j * np.angle(net)),
            }
            print("training loss (default: amplitude MAE) on 256 training groups:")
            for name, obj in rows.items():
                print(f"  {name:32s} {loss(obj):10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
