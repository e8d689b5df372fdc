"""How much of the brain phantom's FLAIR can any voxel-wise map from T1 + T2 recover? The local ceiling.

The voxel-wise best predictor (under squared error) is the conditional mean of the target given the voxel's
sources. It is estimated as the mean FLAIR per fine (T1, T2) bin (`--bins` per axis over [0, 3) x [0, 4) of each
subject's own foreground median, noise-free sources, noisy target), fitted on the training subjects; a bin no
training voxel reached falls back to the mean of its 4x coarser bin, then to the global mean. It is scored
(volume protocol: PSNR, lesion PSNR, and the edema's mean-intensity ratio prediction / truth) on the training
subjects (seen data: an upper bound) and on held-out ones, each with a 95 % bootstrap interval over subjects.
Run on every phantom named by `--phantoms`: the default brain phantom, the literature-physics one
(`phmdiff phantom --physics literature`) and, with `literature_n4`, that one N4 bias-corrected. Numpy only.

`--mlp` adds the former context ceiling: an MLP (squared error) from the voxel's sources, with in-plane Gaussian
context (radius 1, 2, 4) and two slices up and down, to the FLAIR (torch, minutes).

    python benchmarks/local_ceiling.py [--phantoms default literature] [--shapes 64x64x40] [--subjects 16]
    python benchmarks/local_ceiling.py --quick      # one 32x32x16 grid, both phantoms (smoke test)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
from common import RESULTS, set_threads, write_result
from scipy import ndimage

FEATURES = {"voxel": ((), 0), "voxel + in-plane context": ((1.0, 2.0, 4.0), 0),
            "voxel + in-plane + through-plane": ((1.0, 2.0, 4.0), 2)}


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


def bin_keys(a: dict, bins: int) -> np.ndarray:
    """Fine (T1, T2) bin index of every voxel: `bins` per axis over [0, 3) x [0, 4) in subject units."""
    i = np.clip((a["t1"] * bins / 3).astype(np.int64), 0, bins - 1)
    j = np.clip((a["t2"] * bins / 4).astype(np.int64), 0, bins - 1)
    return i * bins + j


def fit_bins(arrays: list[dict], bins: int) -> dict:
    """Mean target (subject units) per fine bin and per 4x coarser bin, and the global mean, over the foreground."""
    from phmdiff.data.intensity import foreground

    tables = {}
    for b in (bins, max(bins // 4, 1)):
        sums, counts = np.zeros(b * b), np.zeros(b * b)
        for a in arrays:
            fg = foreground(a["t1"], False)
            key = bin_keys(a, b)[fg]
            sums += np.bincount(key, (a["flair"] / a["unit"])[fg], b * b)
            counts += np.bincount(key, None, b * b)
        tables[b] = (sums, counts)
    sums, counts = tables[bins]
    return {"bins": bins, "tables": tables, "global": float(sums.sum() / max(counts.sum(), 1.0))}


def predict_bins(model: dict, a: dict) -> np.ndarray:
    """The fitted bin means at every voxel (input units): fine bin, else coarse bin, else the global mean."""
    pred = np.full(a["t1"].shape, model["global"])
    for b in sorted(model["tables"]):  # coarse first, the fine bins overwrite where they have data
        sums, counts = model["tables"][b]
        key = bin_keys(a, b)
        has = counts[key] > 0
        pred[has] = sums[key[has]] / counts[key[has]]
    return pred * a["unit"]


def score_pred(pred: np.ndarray, a: dict) -> dict:
    from phmdiff.eval.pathology import label_intensity_ratios
    from phmdiff.eval.protocols import evaluate_subject

    r = evaluate_subject(pred, a["flair"], seg=a["seg"], protocol="volume")
    lo, hi = r["norm_low"], r["norm_high"]
    ratios = label_intensity_ratios((pred - lo) / (hi - lo), (a["flair"] - lo) / (hi - lo), a["seg"])
    return {"psnr": r["psnr"], "lesion_psnr": r["lesion_psnr"], "ratio_edema": ratios.get("edema", float("nan"))}


def summary(rows: list[dict]) -> dict:
    """Mean over subjects of each score and its 95 % bootstrap interval over subjects."""
    import stats

    out = {}
    for k in rows[0]:
        v = np.array([r[k] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[k] = float(v.mean())
            out[f"{k}_ci"] = list(stats.bootstrap_ci(v))
    return out


PHANTOMS = {"default": {}, "literature": {"physics": "literature"},
            "literature_n4": {"physics": "literature", "n4": True}}
SPLIT = (8, 2, 6)  # train / validation / test subjects, as quality.py's


def run_shape(phantom: str, shape, args) -> dict:
    """The bin-mean predictor (and with --mlp the context MLPs) on one phantom and grid."""
    from phmdiff.data.phantom import write_phantom
    from phmdiff.data.prepare import split_subjects

    folder = Path(args.work) / phantom / "x".join(map(str, shape))
    if not (folder / "phantom.json").exists():
        write_phantom(folder, "brain", n_subjects=args.subjects, shape=shape, seed=0, overwrite=True,
                      **PHANTOMS[phantom])
    ids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    split = split_subjects(ids, tuple(n / sum(SPLIT) for n in SPLIT), 0)
    train = [s for s in ids if split[s] == "train"]
    test = [s for s in ids if split[s] == "test"]
    arrays = {s: subject_arrays(folder, s) for s in train + test}
    out = {"phantom": phantom, "shape": list(shape), "train_subjects": train, "test_subjects": test, "features": {}}
    tic = time.process_time()
    model = fit_bins([arrays[s] for s in train], args.bins)
    out["bin_mean"] = {part: summary([score_pred(predict_bins(model, arrays[s]), arrays[s]) for s in subjects])
                       for part, subjects in (("train", train), ("test", test))}
    out["bin_mean"].update(bins=args.bins, cpu_seconds=time.process_time() - tic)
    b = out["bin_mean"]
    print(f"{phantom:<14} {out['shape']} bin mean ({args.bins}^2 bins)   train {b['train']['psnr']:6.2f} dB "
          f"(lesion {b['train']['lesion_psnr']:5.2f})   test {b['test']['psnr']:6.2f} dB "
          f"[{b['test']['psnr_ci'][0]:.2f}, {b['test']['psnr_ci'][1]:.2f}] (lesion {b['test']['lesion_psnr']:5.2f} "
          f"[{b['test']['lesion_psnr_ci'][0]:.2f}, {b['test']['lesion_psnr_ci'][1]:.2f}], edema x"
          f"{b['test']['ratio_edema']:.2f})", flush=True)
    for name, (sigmas, dz) in (FEATURES.items() if args.mlp else ()):
        tic = time.process_time()
        x = np.concatenate([features(arrays[s], sigmas, dz) for s in train])
        y = np.concatenate([(arrays[s]["flair"] / arrays[s]["unit"]).reshape(-1) for s in train])
        net = fit(x, y, args.steps, args.seed)
        rows = {part: [score(net, arrays[s], sigmas, dz) for s in subjects]
                for part, subjects in (("train", train), ("test", test))}
        out["features"][name] = {part: summary(v) for part, v in rows.items()}
        out["features"][name]["cpu_seconds"] = time.process_time() - tic
        f = out["features"][name]
        print(f"{phantom:<14} {out['shape']} {name:<34} train {f['train']['psnr']:6.2f} dB "
              f"(lesion {f['train']['lesion_psnr']:5.2f})   test {f['test']['psnr']:6.2f} dB "
              f"(lesion {f['test']['lesion_psnr']:5.2f})", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one 32x32x16 grid, 6 subjects (smoke test)")
    p.add_argument("--phantoms", nargs="+", default=["default", "literature"], choices=list(PHANTOMS))
    p.add_argument("--shapes", nargs="+", default=None, help="phantom grids X x Y x Z (default 64x64x40)")
    p.add_argument("--subjects", type=int, default=None, help=f"phantom subjects (default {sum(SPLIT)}, split "
                                                               f"{'/'.join(map(str, SPLIT))}; --quick: 6)")
    p.add_argument("--bins", type=int, default=200, help="fine bins per source axis (default 200)")
    p.add_argument("--mlp", action="store_true", help="also the context MLPs (torch; minutes)")
    p.add_argument("--steps", type=int, default=None, help="MLP steps of 4096 voxels (default 8000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(Path("bench_out") / "local_ceiling"))
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    args.shapes = args.shapes or (["32x32x16"] if args.quick else ["64x64x40"])
    args.subjects = args.subjects or (6 if args.quick else sum(SPLIT))
    args.steps = args.steps or (100 if args.quick else 8000)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    if any(len(s) != 3 or min(s) < 8 for s in shapes):
        raise SystemExit(f"--shapes takes grids like 64x64x40 (three sizes of at least 8), got {args.shapes}.")
    if args.bins < 4 or args.subjects < 3:
        raise SystemExit(f"--bins {args.bins} and --subjects {args.subjects}: expected at least 4 and 3.")
    load_before = list(os.getloadavg())
    scale = sum(np.prod(s) for s in shapes) / (64 * 64 * 40) * args.subjects / sum(SPLIT)
    minutes = scale * sum(3.0 if "n4" in ph else 0.5 for ph in args.phantoms)
    print(f"local_ceiling: phantoms {', '.join(args.phantoms)}, grids {', '.join(args.shapes)}, {args.subjects} "
          f"subjects; expected about {minutes:.0f} min on a quiet machine{' (+ the MLPs)' if args.mlp else ''}; "
          f"load average {load_before[0]:.2f}", flush=True)
    grids = [run_shape(ph, s, args) for ph in args.phantoms for s in shapes]
    results = {"threads": threads, "steps": args.steps if args.mlp else None, "bins": args.bins, "grids": grids,
               "load_average_before": load_before, "load_average_after": list(os.getloadavg())}
    print(f"wrote {write_result('local_ceiling', results, out_dir=args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
