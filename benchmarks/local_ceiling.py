"""How much of the brain phantom's FLAIR can any local map from T1 + T2 recover? The ceiling of local information.

A voxel-wise regressor (an MLP, squared error) is fit from the *noise-free* T1 and T2 around each voxel to the
FLAIR, on the training subjects, and scored (volume protocol, PSNR in the whole foreground and in the tumour)
on those same subjects and on held-out ones. Fit and scored on seen data with clean inputs, it is an upper
bound for every method that decides a voxel from the features it is given:

- `voxel`: the two intensities of the voxel;
- `voxel + in-plane context`: plus Gaussian means of radius 1, 2 and 4 voxels in the slice;
- `voxel + in-plane + through-plane`: plus the voxel's values two slices up and down.

Also the tumour's confusers: the fraction of tumour voxels whose (T1, T2) pair lies in a bin that healthy
voxels occupy, and the mean FLAIR of those healthy voxels against the tumour's (a grey/white matter and CSF
partial-volume voxel has an edema's T1 and T2 but half its FLAIR). Run at the demo's grid and at a finer one.

    python benchmarks/local_ceiling.py [--shapes 64x64x40 128x128x80] [--subjects 8] [--threads 1]
    python benchmarks/local_ceiling.py --quick      # one 32x32x16 grid, 100 steps (smoke test)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
from common import RESULTS, set_threads, write_result
from scipy import ndimage

FEATURES = {"voxel": ((), 0), "voxel + in-plane context": ((1.0, 2.0, 4.0), 0),
            "voxel + in-plane + through-plane": ((1.0, 2.0, 4.0), 2)}
BINS = (40, 40)  # (T1, T2) bins over [0, 3) x [0, 4) of the foreground median for the confuser count


def _load(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _scale(v: np.ndarray) -> float:
    """A subject's intensity unit from its own source: the median of the foreground (as prepare's `median`)."""
    from phmdiff.data.intensity import foreground

    return float(np.median(v[foreground(v, False)]))


def subject_arrays(folder: Path, sid: str) -> dict:
    t1, t2 = (_load(folder / sid / "noise_free" / f"{sid}_{m}.nii.gz") for m in ("t1", "t2"))
    unit = _scale(t1)
    return {"t1": t1 / unit, "t2": t2 / _scale(t2), "unit": unit, "flair": _load(folder / sid / f"{sid}_flair.nii.gz"),
            "seg": _load(folder / sid / f"{sid}_seg.nii.gz")}


def features(a: dict, sigmas, dz: int) -> np.ndarray:
    cols = []
    for m in ("t1", "t2"):
        v = a[m]
        cols.append(v)
        cols += [ndimage.gaussian_filter(v, (s, s, 0)) for s in sigmas]  # in-plane context (slice axis last)
        cols += [np.take(v, np.clip(np.arange(v.shape[2]) + k, 0, v.shape[2] - 1), axis=2)
                 for k in range(-dz, dz + 1) if k]
    return np.stack(cols, -1).reshape(-1, len(cols))  # (voxels, features)


def fit(x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                              torch.nn.SiLU(), torch.nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(x), (4096,), generator=g)
        loss = (net(x[i])[:, 0] - y[i]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def score(net, a: dict, sigmas, dz: int) -> dict:
    from phmdiff.eval.protocols import evaluate_subject

    with torch.no_grad():
        pred = net(torch.from_numpy(features(a, sigmas, dz)))[:, 0].numpy().reshape(a["flair"].shape) * a["unit"]
    r = evaluate_subject(pred, a["flair"], seg=a["seg"], protocol="volume")
    return {"psnr": r["psnr"], "lesion_psnr": r["lesion_psnr"]}


def confusers(arrays: list[dict]) -> dict:
    """Tumour voxels whose (T1, T2) bin is shared with healthy voxels, and the FLAIR of those healthy twins."""
    from phmdiff.data.intensity import foreground

    shared, tumour_flair, twin_flair, n = 0, [], [], 0
    for a in arrays:
        fg = foreground(a["t1"], False)
        i = np.clip((a["t1"] * BINS[0] / 3).astype(int), 0, BINS[0] - 1)
        j = np.clip((a["t2"] * BINS[1] / 4).astype(int), 0, BINS[1] - 1)
        key = i * BINS[1] + j
        tumour, healthy = a["seg"] > 0, fg & (a["seg"] == 0)
        sums = np.bincount(key[healthy], a["flair"][healthy], BINS[0] * BINS[1])
        counts = np.bincount(key[healthy], None, BINS[0] * BINS[1])
        k = key[tumour]
        has = counts[k] > 0
        shared, n = shared + int(has.sum()), n + int(tumour.sum())
        tumour_flair.append(a["flair"][tumour][has] / a["unit"])
        twin_flair.append(sums[k][has] / counts[k][has] / a["unit"])
    return {"tumour_voxels": n, "fraction_with_healthy_twins": shared / max(n, 1),
            "tumour_flair": float(np.mean(np.concatenate(tumour_flair))),
            "healthy_twin_flair": float(np.mean(np.concatenate(twin_flair)))}


def run_shape(shape, args) -> dict:
    from phmdiff.data.phantom import write_phantom
    from phmdiff.data.prepare import split_subjects
    from phmdiff.demo import demo_config
    from phmdiff.training import prepare_settings

    folder = Path(args.work) / "x".join(map(str, shape))
    if not folder.exists():
        write_phantom(folder, "brain", n_subjects=args.subjects, shape=shape, seed=0)
    ids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    demo = prepare_settings(demo_config(folder))  # the demo's split fractions and seed
    split = split_subjects(ids, demo.split, demo.seed)
    train = [s for s in ids if split[s] == "train"]
    test = [s for s in ids if split[s] == "test"]
    arrays = {s: subject_arrays(folder, s) for s in train + test}
    out = {"shape": list(shape), "train_subjects": train, "test_subjects": test,
           "confusers": confusers([arrays[s] for s in train]), "features": {}}
    for name, (sigmas, dz) in FEATURES.items():
        tic = time.process_time()
        x = np.concatenate([features(arrays[s], sigmas, dz) for s in train])
        y = np.concatenate([(arrays[s]["flair"] / arrays[s]["unit"]).reshape(-1) for s in train])
        net = fit(x, y, args.steps, args.seed)
        rows = {part: [score(net, arrays[s], sigmas, dz) for s in subjects]
                for part, subjects in (("train", train), ("test", test))}
        out["features"][name] = {part: {k: float(np.mean([r[k] for r in v])) for k in ("psnr", "lesion_psnr")}
                                 for part, v in rows.items()}
        out["features"][name]["cpu_seconds"] = time.process_time() - tic
        f = out["features"][name]
        print(f"{out['shape']} {name:<34} train {f['train']['psnr']:6.2f} dB (lesion {f['train']['lesion_psnr']:5.2f})"
              f"   test {f['test']['psnr']:6.2f} dB (lesion {f['test']['lesion_psnr']:5.2f})", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one 32x32x16 grid, 100 steps (smoke test)")
    p.add_argument("--shapes", nargs="+", default=None, help="phantom grids X x Y x Z (default 64x64x40 128x128x80)")
    p.add_argument("--subjects", type=int, default=8, help="phantom subjects (the demo's split)")
    p.add_argument("--steps", type=int, default=None, help="MLP steps of 4096 voxels (default 8000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(Path("bench_out") / "local_ceiling"))
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    args.shapes = args.shapes or (["32x32x16"] if args.quick else ["64x64x40", "128x128x80"])
    args.steps = args.steps or (100 if args.quick else 8000)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    if any(len(s) != 3 or min(s) < 8 for s in shapes):
        raise SystemExit(f"--shapes takes grids like 64x64x40 (three sizes of at least 8), got {args.shapes}.")
    results = {"threads": threads, "steps": args.steps, "grids": [run_shape(s, args) for s in shapes]}
    print(f"wrote {write_result('local_ceiling', results, out_dir=args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
