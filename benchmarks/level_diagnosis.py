"""Which pyramid level gets the tumour wrong? A trained two-level run's denoisers, inside and outside the tumour.

On the held-out slices of a run's latent cache that hold a tumour (BraTS labels > 0 in the subject's `*_seg`
file, at least `--min-voxels`), in the run's latent units:

- each level's denoiser at sigma in SIGMAS, given the *true* coarser target (the finest level) or nothing
  (the coarsest): its mean inside the tumour against the truth's, and its RMS error inside and outside;
  at sigma_max the denoiser's output is its estimate of the conditional mean, the regression it has learned;
- the run's own coarse-to-fine samples (its sampler settings, one sample per slice): the same figures, so the
  gap between "fine level given the true coarse" and "the sampled result" is the coarse level's share.

    python benchmarks/level_diagnosis.py --run demo_out/run --input demo_out/phantom
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
from common import set_threads, write_result

SIGMAS = (80.0, 10.0, 3.0, 1.0, 0.3)


def _load_seg(root, subject: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(f"{root}/{subject}/{subject}_seg.nii.gz").dataobj)


def tumour_slices(trained, cache: str, root: str, min_voxels: int):
    """Test items of the latent cache with a tumour: (source, target, avail) stacked and the tumour mask."""
    from phmdiff.data.latent_cache import LatentPairs

    data = LatentPairs(cache, "test", list(trained.plan.sources), trained.plan.target)
    segs, items = {}, []
    for i in range(len(data)):
        item = data[i]
        if item["subject"] not in segs:
            segs[item["subject"]] = _load_seg(root, item["subject"])
        seg = segs[item["subject"]][:, :, item["index"]] > 0  # the run's slice axis is the file's last here
        if seg.shape == tuple(item["target"].shape[-2:]) and seg.sum() >= min_voxels:
            items.append((item, seg))
    if not items:
        raise SystemExit(f"{cache}: no held-out slice with a tumour of {min_voxels} voxels or more.")
    stack = {k: torch.stack([x[k] for x, _ in items]) for k in ("source", "target", "avail")}
    return stack, torch.from_numpy(np.stack([s for _, s in items]))[:, None]


def figures(pred: torch.Tensor, truth: torch.Tensor, tumour: torch.Tensor) -> dict:
    """Tumour mean of the prediction and the truth, RMS error inside and outside (None inside when a coarse level
    keeps no tumour pixel: a 2x2 block counts as tumour when most of it is)."""
    if not tumour.any():
        return {"tumour_mean": None, "truth_tumour_mean": None, "tumour_rmse": None,
                "elsewhere_rmse": float((pred - truth).square().mean().sqrt())}
    return {"tumour_mean": float(pred[tumour].mean()), "truth_tumour_mean": float(truth[tumour].mean()),
            "tumour_rmse": float((pred - truth)[tumour].square().mean().sqrt()),
            "elsewhere_rmse": float((pred - truth)[~tumour].square().mean().sqrt())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run with two or more pyramid levels")
    p.add_argument("--input", required=True, help="the phantom (or BraTS) folder with the subjects' *_seg files")
    p.add_argument("--cache", default=None, help="latent cache (default: the run's data.cache)")
    p.add_argument("--min-voxels", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    threads = set_threads(args.threads)

    from phmdiff.inference import load_trained
    from phmdiff.pyramid import gaussian_pyramid
    from phmdiff.sample import level_kwargs

    trained = load_trained(args.run, "cpu")
    if hasattr(trained.denoiser, "mean_net"):
        raise SystemExit(f"{args.run}: a mean-and-residual run (model.mean_net): its pyramid denoises the residual, "
                         "which this diagnosis of the target's pyramid does not handle; pass a run without it.")
    levels = trained.cfg.model.pyramid_levels
    if levels < 2:
        raise SystemExit(f"{args.run}: has {levels} pyramid level; the diagnosis compares two or more.")
    batch, tumour = tumour_slices(trained, args.cache or trained.cfg.data.cache, args.input, args.min_voxels)
    src, tgt, avail = batch["source"], batch["target"], batch["avail"]
    src_pyr, tgt_pyr = gaussian_pyramid(src, levels), gaussian_pyramid(tgt, levels)
    masks = [tumour]
    for _ in range(1, levels):
        masks.append(torch.nn.functional.avg_pool2d(masks[-1].float(), 2) > 0.5)
    label = torch.full((len(tgt),), trained.target_label)
    g = torch.Generator().manual_seed(0)
    rows = []
    for level in range(levels):
        truth = tgt_pyr[level]
        kwargs = level_kwargs(src_pyr, tgt_pyr[level + 1] if level + 1 < levels else None, level, avail, label)
        for sigma in SIGMAS:
            noise = torch.randn(truth.shape, generator=g)
            with torch.no_grad():
                out = trained.denoiser(truth + sigma * noise, torch.full((len(truth),), sigma), **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            rows.append({"level": level, "sigma": sigma, "coarse": "true" if level + 1 < levels else "none",
                         **figures(out, truth, masks[level])})
    settings = trained.settings()
    sampled = trained.sample(src, avail, list(range(len(tgt))), settings)
    result = {"run": args.run, "threads": threads, "slices": len(tgt), "sampler": settings.to_dict(),
              "denoiser": rows, "sampled": figures(sampled, tgt, tumour)}
    for r in (r for r in rows if r["tumour_mean"] is not None):
        print(f"level {r['level']} (coarse {r['coarse']:>4}) sigma {r['sigma']:>5g}: "
              f"tumour mean {r['tumour_mean']:+.3f} (truth {r['truth_tumour_mean']:+.3f})  "
              f"RMSE tumour {r['tumour_rmse']:.3f}  elsewhere {r['elsewhere_rmse']:.3f}")
    s = result["sampled"]
    print(f"sampled coarse-to-fine: tumour mean {s['tumour_mean']:+.3f} (truth {s['truth_tumour_mean']:+.3f})  RMSE "
          f"tumour {s['tumour_rmse']:.3f}  elsewhere {s['elsewhere_rmse']:.3f}")
    print(f"wrote {write_result('level_diagnosis', result, out_dir=args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
