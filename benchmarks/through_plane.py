"""3D consistency of slice-by-slice translation, with and without the through-plane joint bilateral filter.

    python benchmarks/through_plane.py --run demo_out/run --input demo_out/phantom \
        --subjects PHANTOM_00000 PHANTOM_00001 PHANTOM_00007

Each subject is translated once (fp32, `--samples` samples, seed 0, no filter); the filter
(`phmdiff.consistency.joint_bilateral_z`) is then applied for every (sigma, h) of the grid, and the volume
protocol's PSNR/SSIM and the 3D-consistency scores (`eval.metrics.through_plane_scores`) of the first sample
are written per subject and setting. Choose the setting on a validation subject, read it on the test ones.
"""

from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
from common import set_threads, write_result

GRID = [(0.0, 0.05)] + [(s, h) for s in (0.7, 1.0, 1.5) for h in (0.03, 0.06, 0.12, 0.25)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--input", required=True, help="folder of subjects with their real target")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    threads = set_threads(args.threads)

    from phmdiff.consistency import joint_bilateral_z
    from phmdiff.data.volume import load_subject_volumes, slices_to_volume
    from phmdiff.eval.metrics import through_plane_scores
    from phmdiff.eval.protocols import evaluate_subject, foreground_mask
    from phmdiff.inference import load_trained, plane_multiple
    from phmdiff.pipeline import subject_seed, target_norm_for, translate_samples
    from phmdiff.plane import crop_plane, plane_slices
    from phmdiff.translate import find_input_subjects

    trained = load_trained(args.run, "cpu")
    plan = trained.plan
    sources, target = list(plan.sources), plan.target
    settings = plan.volume_settings(sources)
    rows = []
    for sub in find_input_subjects(args.input, None, sources):
        if sub.id not in args.subjects:
            continue
        volumes, affine, _ = load_subject_volumes(sub, [*sources, target])
        ref = volumes.pop(target)
        slices, spec, pads = plane_slices(volumes, affine, settings, plane_multiple(trained.cfg))
        norm = target_norm_for(settings, target, sources, spec.norm, *plan.target_scale(target, sources))
        src = slices[:, spec.context :: 2 * spec.context + 1]
        seeds = [[subject_seed(0, sub.id, j, int(i)) for i in spec.indices] for j in range(args.samples)]
        preds = translate_samples(trained, src, seeds, trained.settings())
        mask = foreground_mask(ref, "mr")
        array_axis = int(np.argmax(np.abs(np.asarray(affine)[spec.axis, :3])))  # the slice axis in the file
        for sigma, h in GRID:
            first = joint_bilateral_z(preds[:1], src, spec.indices, sigma, h)[0]
            vol = slices_to_volume(crop_plane(first, pads), spec, target, norm=norm)
            res = evaluate_subject(vol, ref, mask=mask, protocol="volume")
            lo, hi = res["norm_low"], res["norm_high"]
            tp = through_plane_scores((vol - lo) / (hi - lo), (ref - lo) / (hi - lo), 1.0, array_axis, mask)
            rows.append({"subject": sub.id, "sigma": sigma, "h": h, "psnr": res["psnr"], "ssim": res["ssim"], **tp})
            print(rows[-1], flush=True)
    write_result("through_plane", {"run": str(args.run), "samples": args.samples, "threads": threads, "rows": rows},
                 out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
