"""Real MRI without training: what the intensity handling finds on each real subject (before and after the robust
background), and what the synthesized FLAIR's intensity scale can be at best when its scanner gain is unknown.

Part 1, foreground. Per subject and modality, the foreground share and median that normalization uses, with the
former rule (10 % of the way from the volume's minimum to its 99th percentile) and with `intensity.foreground`
(the border's constant or the noise floor), and the median scale each gives (the former one fell back to 1.0 when
the median was not above the 0.5th percentile).

Part 2, the scale ceiling. A perfect scale-free prediction (the true FLAIR itself) written back through each way
of setting the FLAIR's scale on a new subject, leave one subject out (the scale's facts come from the other
subjects only), scored under the `volume` protocol (the reference's intensity scale; `real_scoring`). Under the
`scalefree` protocol every one of them is perfect. Ways:
- `relative`: the target normalized by its sources in training (`data.target_norm: relative`); the model can only
  learn the training subjects' mean FLAIR / sources ratio, so the written scale is the subject's sources times it;
- `own+gains`: the target normalized by its own median (`data.target_norm: own`, configs/brats_cpu.yaml), its scale
  estimated from the sources through the training subjects' gain ratios (`prepare.gain_ratios`/`subject_norm`);
- `training scale`: the training subjects' median FLAIR scale, ignoring the sources.

    python benchmarks/real_scale.py            # ../shared/data/real, about a minute
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import numpy as np
import real_scoring
from common import ROOT, write_result

from phmdiff.data.intensity import foreground
from phmdiff.data.readers import find_subjects
from phmdiff.data.volume import VolumeSettings, load_subject_volumes, volume_to_slices

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real"
MODS = ("t1", "t2", "flair")


def former_foreground(v: np.ndarray) -> np.ndarray:
    """The rule before issue 35: above 10 % of the way from the minimum to the 99th percentile."""
    lo = float(v.min())
    return v > lo + 0.1 * (float(np.percentile(v, 99)) - lo)


def former_scale(v: np.ndarray, fg: np.ndarray) -> float:
    """The former median scale: 2 (median - p0.5), or its silent fallback 1.0."""
    half = float(np.median(v[fg])) - float(np.percentile(v, 0.5))
    return 2.0 * half if half > 0 else 1.0


def foreground_rows(subjects) -> list[dict]:
    rows = []
    for sub in subjects:
        volumes, affine, _ = load_subject_volumes(sub, list(MODS))
        _, spec = volume_to_slices(volumes, affine, VolumeSettings(modalities=list(MODS), size=64, fit="resize"))
        for m in MODS:
            v = volumes[m]
            old, new = former_foreground(v), foreground(v, False)
            rows.append({"subject": sub.id, "modality": m, "min": float(v.min()), "negative": int((v < 0).sum()),
                         "former": {"fraction": float(old.mean()), "median": float(np.median(v[old])),
                                    "scale": former_scale(v, old)},
                         "now": {"fraction": float(new.mean()), "median": float(np.median(v[new])),
                                 "scale": spec.norm[m].scale, "p99.5": spec.stats[m]["p99.5"]}})
    return rows


def scale_rows(subjects, rows) -> list[dict]:
    scale = {(r["subject"], r["modality"]): r["now"]["scale"] for r in rows}
    out = []
    for sub in subjects:
        train = [s.id for s in subjects if s.id != sub.id]

        def rel(sid):  # FLAIR scale over the sources' geometric-mean scale
            return scale[sid, "flair"] / np.sqrt(scale[sid, "t1"] * scale[sid, "t2"])

        gains = {m: np.median([scale[t, "flair"] / scale[t, m] for t in train]) for m in ("t1", "t2")}
        written = {
            "relative": np.exp(np.mean([np.log(rel(t)) for t in train])) * np.sqrt(scale[sub.id, "t1"]
                                                                                  * scale[sub.id, "t2"]),
            "own+gains": np.exp(np.mean([np.log(scale[sub.id, m] * g) for m, g in gains.items()])),
            "training scale": np.median([scale[t, "flair"] for t in train]),
        }
        volumes, _, _ = load_subject_volumes(sub, ["flair"])
        ref = real_scoring.RealReference.build(volumes["flair"], regions=False)
        for way, s in written.items():
            k = float(s / scale[sub.id, "flair"])  # the written FLAIR over the true one (offsets are 0 here)
            score = {r["protocol"]: r for r in real_scoring.score(volumes["flair"] * k, ref, ssim=False)}
            out.append({"held_out": sub.id, "way": way, "gain_error": k, "volume_psnr": score["volume"]["psnr"],
                        "scalefree_psnr": score["scalefree"]["psnr"]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a BraTS-layout folder")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    subjects = [s for s in find_subjects(Path(args.data), "auto") if all(m in s.paths for m in MODS)]
    rows = foreground_rows(subjects)
    for r in rows:
        print(f"{r['subject']:16s} {r['modality']:5s} min {r['min']:7.1f} ({r['negative']} negative)  former: "
              f"foreground {100 * r['former']['fraction']:5.1f} %, median {r['former']['median']:7.1f}, scale "
              f"{r['former']['scale']:7.1f}  now: {100 * r['now']['fraction']:5.1f} %, median "
              f"{r['now']['median']:7.1f}, scale {r['now']['scale']:7.1f}")
    scales = scale_rows(subjects, rows)
    for s in scales:
        print(f"held out {s['held_out']:16s} {s['way']:15s} gain error x{s['gain_error']:.2f}: volume PSNR "
              f"{s['volume_psnr']:5.1f} dB, scalefree {s['scalefree_psnr']:.1f} dB")
    print(write_result("real_scale", {"data": args.data, "foreground": rows, "scale_ceiling": scales},
                       out_dir=args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
