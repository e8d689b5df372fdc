"""`phmdiff evaluate`: metrics of predicted volumes against references, per protocol.

Inputs, one of:
- two NIfTI files: `phmdiff evaluate PRED.nii.gz REF.nii.gz`;
- two folders of subjects, matched by subject id: `ROOT/<id>.nii.gz` or
  `ROOT/<id>/<file>.nii.gz` (`--target flair` picks `*_flair.nii.gz` when a subject
  folder holds several modalities);
- a translate output folder `OUT` holding `OUT/translate.json`, written by the pipeline:
  `{"target": "flair", "sources": ["t1", "t2"], "modality_kind": "mr" | "ct",
    "subjects": [{"subject": id, "prediction": relpath, "std": relpath | null,
                  "samples": [relpaths], "reference": abspath | null,
                  "mask": abspath | null, "seg": abspath | null,
                  "source_images": {name: abspath} (optional, for report panels)}]}`
  (relpaths are relative to OUT; subjects without a reference are skipped).

Outputs in `--out DIR`, each written atomically: `per_subject.csv`, `per_slice.csv`,
`summary.json` (per protocol and metric: mean and std across subjects over finite
values, `n`, and `n_inf`, the count of infinite PSNRs, which CSVs write as "inf"),
`evaluation.json` (the inputs, read by `phmdiff report`); the summary is printed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from phmdiff.argtypes import whole
from phmdiff.data import bids
from phmdiff.data.names import bids_modality, canonical, spellings
from phmdiff.data.readers import find_subjects
from phmdiff.eval.baseline import (
    LABEL_METRICS,
    REGION_TITLES,
    baseline_row,
    below_baseline,
    choose_sources,
    label_psnrs,
    subject_below,
)
from phmdiff.eval.ensemble import evaluate_ensemble
from phmdiff.eval.labels import check_labels
from phmdiff.eval.metrics import format_value, through_plane_scores
from phmdiff.eval.protocols import (
    NOTE_COLUMNS,
    PROTOCOL_SPECS,
    PROTOCOLS,
    evaluate_subject,
    foreground_mask,
    matched_copy,
    normalize_pair,
)
from phmdiff.fsutil import atomic_write_text, check_out_dir, check_writable_dir, publish_dir, safe_relpath
from phmdiff.limits import LimitError, check_nifti
from phmdiff.schema import check_translate_json, read_json

# norm_low/high: the reference's scale (MR percentiles or the CT window); pred_norm_low/high: the prediction's own
# (the protocols that scale each image by its own percentiles: their ratio to the reference's is the gain missed).
SUBJECT_COLUMNS = ("subject", "protocol", "psnr", "ssim", "ms_ssim", "mae", "mean_error", "lesion_psnr", "lesion_mae",
                   "ssim_tumour", "ssim_healthy", "through_plane_pred", "through_plane_ref", "n_voxels", "norm_low",
                   "norm_high", "pred_norm_low", "pred_norm_high", "ms_ssim_note", *NOTE_COLUMNS)
# Ceilings scored beside each prediction: the pipeline's (translate --ceiling: the true target through
# normalization, autoencoder and inverse) and the noise-free one (a phantom's clean target, REF_DIR/noise_free/).
CEILINGS = ("pipeline_ceiling", "noise_free")
CEILING_METRICS = ("psnr", "ssim", "lesion_psnr")
# Copy-the-source baseline (intensity matched, `protocols.matched_copy`): per protocol and region (whole image,
# lesion, each tumour label) the source that scores best there (`eval.baseline`); what a method must beat.
BASELINE_METRICS = ("psnr", "ssim", "ms_ssim", "mae", "mean_error", "lesion_psnr", "lesion_mae", "ssim_tumour",
                    "ssim_healthy", "through_plane_pred", "through_plane_ref", *LABEL_METRICS)
SUMMARY_KEYS = ("psnr", "ssim", "ms_ssim", "mae", "mean_error", "lesion_psnr", "lesion_mae", "ssim_tumour",
                "ssim_healthy", *LABEL_METRICS, "through_plane_pred",
                "through_plane_ref", *(f"{c}_{m}" for c in CEILINGS for m in CEILING_METRICS),
                *(f"baseline_{m}" for m in BASELINE_METRICS), "std_error_pearson", "std_error_spearman")
# 3D consistency (`metrics.through_plane_scores`, volume protocol, normalized units): views across the slice axis
# and the error of the gradient through the slices, beside the in-plane one.
THROUGH_COLUMNS = ("psnr_through", "ssim_through", "grad_error_through", "grad_error_inplane")
SUBJECT_COLUMNS, SUMMARY_KEYS = SUBJECT_COLUMNS + THROUGH_COLUMNS, SUMMARY_KEYS + THROUGH_COLUMNS
_NII = (".nii.gz", ".nii")


def add_arguments(parser) -> None:
    parser.add_argument("pred", help="predicted NIfTI file, folder of subjects, or translate output folder")
    parser.add_argument("ref", nargs="?", help="reference NIfTI file or folder (not needed for a translate folder)")
    parser.add_argument("--protocol", action="append", help=f"one of {', '.join(PROTOCOLS)} or 'all' (repeatable)")
    parser.add_argument("--mask", help="foreground mask NIfTI (single-pair input); default: threshold on reference")
    parser.add_argument("--seg", help="tumour segmentation NIfTI (single-pair input) for lesion metrics")
    parser.add_argument("--modality", choices=("mr", "ct"), default=None,
                        help="mr or ct (HU); default: the modality translate.json records, else mr")
    parser.add_argument("--target", help="modality name to pick in subject folders, e.g. flair")
    parser.add_argument("--slice-axis", type=whole(-3, 2), default=None,
                        help="array axis of the slices (default: the anatomical axis translate sliced along, as "
                             "translate.json records it, found in each file's orientation; else the last)")
    parser.add_argument("--inception", help="TorchScript Inception feature extractor file for FID/KID")
    parser.add_argument("--out", default=None, help="output folder (default: PRED/evaluation or ./evaluation)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files (they are kept)")


def _stem(path: Path) -> str:
    return next((path.name[: -len(s)] for s in _NII if path.name.endswith(s)), path.stem)


def _subject_files(root: Path, target: str | None) -> dict[str, Path]:
    """Subject id -> NIfTI file, from ROOT/<id>.nii.gz, ROOT/<id>/<file>.nii.gz or a BIDS tree
    (ROOT/sub-<id>/[ses-<id>/][anat/]sub-<id>_<suffix>.nii.gz, the modality named by --target)."""
    found: dict[str, Path] = {}
    if bids.is_bids(root):
        if target is None:
            raise ValueError(f"{root}: a BIDS folder holds several modalities per subject; pass --target NAME.")
        found = {s.id: s.paths[canonical(target)] for s in find_subjects(root, "bids") if canonical(target) in s.paths}
        if not found:
            raise ValueError(f"{root}: no BIDS subject has a {canonical(target)} image.")
        return found

    def wanted(p: Path) -> bool:
        if p.name.startswith(".") or not p.name.endswith(_NII):
            return False
        if target is not None and p.name.startswith(bids.SUBJECT_PREFIX):  # sub-01_ce-Gd_T1w: suffix and entities
            return bids_modality(_stem(p)) == canonical(target)
        return target is None or any(f"{c}{t}." in p.name.lower() for c in "_-" for t in spellings(target))

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):  # hidden: an interrupted atomic write's temp file
            continue
        if entry.is_file() and entry.name.endswith(_NII):
            sid = _stem(entry)
            found[sid[: -len(target) - 1] if target and sid.endswith(target) else sid] = entry
        elif entry.is_dir():
            files = sorted(p for p in entry.iterdir() if p.is_file() and wanted(p))
            if len(files) > 1:
                raise ValueError(f"{entry}: holds {len(files)} NIfTI files; pass --target NAME to choose one.")
            if files:
                found[entry.name] = files[0]
    if not found:
        raise ValueError(f"{root}: no NIfTI subject found (expected <id>.nii.gz or <id>/<file>.nii.gz).")
    return found


def collect_subjects(args) -> tuple[list[dict], str]:
    """The subjects to evaluate as dicts of paths, and the modality kind."""
    pred = Path(args.pred)
    if pred.is_dir() and (pred / "translate.json").is_file():
        meta = read_json(pred / "translate.json", check_translate_json)
        subjects = []
        for s in meta.get("subjects", []):
            if not s.get("reference"):
                continue
            where = pred / "translate.json"  # its paths may only point inside PRED
            subjects.append({**s, "prediction": str(safe_relpath(s["prediction"], pred, where)),
                             "std": str(safe_relpath(s["std"], pred, where)) if s.get("std") else None,
                             "ceiling": str(safe_relpath(s["ceiling"], pred, where)) if s.get("ceiling") else None,
                             "samples": [str(safe_relpath(p, pred, where)) for p in s.get("samples") or []]})
        if not subjects:
            raise ValueError(f"{pred / 'translate.json'}: no subject has a reference; nothing to evaluate.")
        recorded = meta.get("modality_kind")
        if args.modality and recorded and args.modality != recorded:
            raise ValueError(f"{pred / 'translate.json'}: records the modality as '{recorded}' but --modality is "
                             f"'{args.modality}'; drop --modality (it is read from translate.json) or pass "
                             f"--modality {recorded}.")
        return subjects, args.modality or recorded or "mr"
    if args.ref is None:
        raise ValueError(f"{pred}: give a reference (file or folder), or a folder holding translate.json.")
    ref = Path(args.ref)
    if pred.is_file() and ref.is_file():
        one = {"subject": _stem(pred), "prediction": str(pred), "reference": str(ref), "mask": args.mask,
               "seg": args.seg}
        return [one], args.modality or "mr"
    if pred.is_dir() and ref.is_dir():
        preds, refs = _subject_files(pred, args.target), _subject_files(ref, args.target)
        common = sorted(set(preds) & set(refs))
        if not common:
            raise ValueError(f"{pred} and {ref}: no subject id in common (e.g. {next(iter(preds))}).")
        return [{"subject": s, "prediction": str(preds[s]), "reference": str(refs[s])} for s in common], \
            args.modality or "mr"
    raise ValueError(f"{pred} and {ref}: expected two NIfTI files or two folders.")


def load_volume(path, like=None, what: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Voxels (float64) and affine of a NIfTI file (or MHA/NRRD/DICOM), checked against `like` = (shape, affine)."""
    if not str(path).lower().endswith(_NII):  # the other formats: the readers' SimpleITK path (geometry as RAS)
        from phmdiff.data.itk_io import read_itk

        data, affine, _ = read_itk(path)
        data = data.astype(np.float64)
        if like is not None and data.shape != like[0]:
            raise ValueError(f"{path}: {what} shape {data.shape} differs from the reference's {like[0]}.")
        if like is not None and not np.allclose(affine, like[1], atol=1e-3):
            raise ValueError(f"{path}: {what} affine differs from the reference's; expected the same voxel grid.")
        return data, affine
    try:
        img = nib.load(str(path))
        check_nifti(img, path)  # before decoding: a crafted header cannot exhaust memory
        data = np.asarray(img.dataobj, dtype=np.float64)
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} file not found.") from None
    except LimitError:
        raise
    except Exception as exc:  # nibabel raises many types for a corrupt file
        raise ValueError(f"{path}: cannot read the {what} as NIfTI ({exc}).") from None
    data = np.squeeze(data) if data.ndim > 3 else data
    if like is not None:
        shape, affine = like
        if data.shape != shape:
            raise ValueError(f"{path}: {what} shape {data.shape} differs from the reference's {shape}.")
        if not np.allclose(img.affine, affine, atol=1e-3):
            raise ValueError(f"{path}: {what} affine differs from the reference's; expected the same voxel grid.")
    return data, img.affine


_AXIS_CODES = {"sagittal": "RL", "coronal": "AP", "axial": "SI"}  # translate.json's axis names -> nibabel codes


def array_axis(slice_axis: int | None, named: str | None, affine) -> int:
    """The array axis of the slices: `slice_axis` when given; else the axis of this file that runs along the
    anatomical direction translate sliced (`named`, e.g. "axial (S-I)"), whatever the file's orientation;
    else the last."""
    if slice_axis is not None:
        return slice_axis
    wanted = _AXIS_CODES.get(str(named).split(" ")[0]) if named else None
    codes = nib.aff2axcodes(affine) if wanted else ()
    return next((i for i, c in enumerate(codes) if c is not None and c in wanted), -1)


def _protocols(values) -> list[str]:
    chosen = []
    for v in values or ["volume"]:
        for name in PROTOCOLS if v == "all" else [v]:
            if name not in PROTOCOLS:
                raise ValueError(f"unknown protocol '{name}'; expected one of {', '.join(PROTOCOLS)} or 'all'.")
            if name not in chosen:
                chosen.append(name)
    return chosen


def _csv(rows: list[dict], columns) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_value(row.get(k)) for k in columns})
    return buf.getvalue()


def summarize(rows: list[dict], keys=SUMMARY_KEYS) -> dict:
    """Mean and std (ddof 0) across subjects over finite values; infinite values are counted in n_inf."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if not values:
            continue
        finite = [v for v in values if math.isfinite(v)]
        out[key] = {"mean": float(np.mean(finite)) if finite else None,
                    "std": float(np.std(finite)) if finite else None,
                    "n": len(values), "n_inf": len(values) - len(finite)}
    return out


def ceiling_volumes(s: dict, like) -> dict[str, np.ndarray]:
    """The ceiling volumes known for one subject (see CEILINGS)."""
    out = {}
    if s.get("ceiling"):
        out["pipeline_ceiling"] = load_volume(s["ceiling"], like, "pipeline ceiling")[0]
    clean = Path(s["reference"]).parent / "noise_free" / Path(s["reference"]).name
    if clean.is_file():
        out["noise_free"] = load_volume(clean, like, "noise-free reference")[0]
    return out


def _copies(s: dict, ref, like, mask, modality: str) -> dict[str, np.ndarray]:
    """Each source image copied and intensity-matched to the reference, or {} without source images (MR only:
    a CT target's MR source has no HU to match)."""
    if modality != "mr" or not s.get("source_images"):
        return {}
    region = foreground_mask(ref, modality) if mask is None else mask
    return {name: matched_copy(load_volume(path, like, f"source image '{name}'")[0], ref, region)
            for name, path in sorted(s["source_images"].items())}


def _scores(vol, ref, mask, seg, protocol: str, modality: str, slice_axis: int) -> dict:
    """A volume scored as a prediction (per-slice rows dropped), with the tumour labels' PSNR under `volume`."""
    out = evaluate_subject(vol, ref, mask=mask, seg=seg, protocol=protocol, modality=modality, slice_axis=slice_axis)
    out.pop("slices", None)
    if PROTOCOL_SPECS[protocol].volume_extras:
        out.update(label_psnrs(vol, ref, mask, seg, modality))
    return out


def evaluate(subjects: list[dict], modality: str, protocols: list[str], slice_axis: int | None = None) -> tuple:
    """Per-subject rows, per-slice rows and the summary for every subject and protocol (the summary's
    "baseline_sources": protocol -> region -> source; "below_baseline": where the prediction scores below).
    `slice_axis` None: each subject's from `array_axis`."""
    subject_rows, slice_rows = [], []
    copy_scores: dict[str, list[dict]] = {p: [] for p in protocols}  # protocol -> per subject {source: scores}
    for s in subjects:
        ref, affine = load_volume(s["reference"], what="reference")
        like = (ref.shape, affine)
        pred, _ = load_volume(s["prediction"], like, "prediction")
        axis = array_axis(slice_axis, s.get("slice_axis"), affine)
        mask = load_volume(s["mask"], like, "mask")[0] > 0 if s.get("mask") else None
        seg = check_labels(load_volume(s["seg"], like, "segmentation")[0], s["seg"]) if s.get("seg") else None
        ceilings = ceiling_volumes(s, like)
        copies = _copies(s, ref, like, mask, modality)
        for protocol in protocols:
            res = evaluate_subject(pred, ref, mask=mask, seg=seg, protocol=protocol, modality=modality,
                                   slice_axis=axis)
            slice_rows += [{"subject": s["subject"], "protocol": protocol, **r} for r in res.pop("slices")]
            row = {"subject": s["subject"], **res}
            if PROTOCOL_SPECS[protocol].volume_extras:
                row.update(label_psnrs(pred, ref, mask, seg, modality))
            if PROTOCOL_SPECS[protocol].volume_extras and ref.ndim == 3:
                lo, hi = res["norm_low"], res["norm_high"]
                fg = foreground_mask(ref, modality) if mask is None else mask
                row.update(through_plane_scores((pred - lo) / (hi - lo), (ref - lo) / (hi - lo), 1.0, axis, fg))
            for name, vol in ceilings.items():
                top = evaluate_subject(vol, ref, mask=mask, seg=seg, protocol=protocol, modality=modality,
                                       slice_axis=axis)
                row.update({f"{name}_{m}": top[m] for m in CEILING_METRICS if m in top})
            if copies:
                copy_scores[protocol].append({name: _scores(vol, ref, mask, seg, protocol, modality, axis)
                                              for name, vol in copies.items()})
                row["_copies"] = copy_scores[protocol][-1]
            if PROTOCOL_SPECS[protocol].volume_extras and len(s.get("samples") or []) >= 2:
                samples = [load_volume(p, like, "sample")[0] for p in s["samples"]]
                row.update(evaluate_ensemble(samples, ref, mask=mask, modality=modality, slice_axis=axis))
            subject_rows.append(row)
    chosen = {p: choose_sources(copy_scores[p]) for p in protocols if copy_scores[p]}
    for row in subject_rows:  # each region's baseline from the source that is best there over all subjects
        if "_copies" in row:
            row.update(baseline_row(row.pop("_copies"), chosen[row["protocol"]], BASELINE_METRICS))
            row["below_baseline"] = subject_below(row)
    summary = {p: {"n_subjects": sum(r["protocol"] == p for r in subject_rows),
                   **summarize([r for r in subject_rows if r["protocol"] == p])} for p in protocols}
    for p, regions in chosen.items():
        summary[p]["baseline_sources"] = regions
    for protocol in (p for p in protocols if PROTOCOL_SPECS[p].pooled_slices):
        pooled = [r for r in slice_rows if r["protocol"] == protocol]
        if pooled:  # SynDiff's test.py reports np.nanmean over all test slices, not a mean of subject means
            summary[protocol].update(summarize(pooled, ("psnr", "ssim")), n_slices=len(pooled),
                                     averaged_over="all slices pooled (psnr, ssim), as SynDiff's test.py")
    return subject_rows, slice_rows, summary


def distribution(subjects: list[dict], modality: str, slice_axis: int | None = None, inception=None) -> dict:
    """MS-SWD (and FID/KID with an extractor) between predicted and reference foreground slices, pooled."""
    from phmdiff.eval.distribution import fid_kid, ms_swd  # torch: imported only once inputs passed their checks
    pred_slices, ref_slices = [], []
    for s in subjects:
        ref, affine = load_volume(s["reference"], what="reference")
        pred, _ = load_volume(s["prediction"], (ref.shape, affine), "prediction")
        if ref.ndim != 3:
            continue
        mask = load_volume(s["mask"], (ref.shape, affine), "mask")[0] > 0 if s.get("mask") else None
        mask = foreground_mask(ref, modality) if mask is None else mask
        pred_n, ref_n, _ = normalize_pair(pred, ref, mask, modality)
        axis = array_axis(slice_axis, s.get("slice_axis"), affine)
        keep = np.moveaxis(mask, axis, 0).any(axis=(1, 2))
        pred_slices += list(np.clip(np.moveaxis(pred_n, axis, 0)[keep], 0, 1))
        ref_slices += list(np.clip(np.moveaxis(ref_n, axis, 0)[keep], 0, 1))
    if len({x.shape for x in ref_slices}) != 1:
        return {"note": "MS-SWD skipped: no 3D subject, or slices of different sizes across subjects."}
    out = {"n_slices": len(ref_slices), **ms_swd(np.stack(pred_slices), np.stack(ref_slices))}
    if inception:
        out.update(fid_kid(inception, np.stack(pred_slices), np.stack(ref_slices)))
    else:
        out["fid_note"] = "FID/KID not computed: give a TorchScript Inception feature extractor with --inception PATH."
    return out


def format_table(summary: dict) -> str:
    keys = ("psnr", "ssim", "mae", "baseline_psnr", *(f"{c}_psnr" for c in CEILINGS))
    shown = [k for k in keys if any(k in stats for stats in summary.values())]
    titles = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE", "baseline_psnr": "copy baseline (dB)",
              "pipeline_ceiling_psnr": "pipeline ceil. (dB)",
              "noise_free_psnr": "noise-free ceil. (dB)"}
    lines = [f"{'protocol':<9} {'n':>3}  " + "  ".join(f"{titles[k]:>21}" for k in shown)]
    for protocol, stats in summary.items():
        cells = []
        for key in shown:
            st = stats.get(key)
            text = "-" if not st or st["mean"] is None else f"{st['mean']:.4g} +- {st['std']:.2g}"
            if st and st["n_inf"]:
                text += f" ({st['n_inf']} inf)"
            cells.append(text)
        lines.append(f"{protocol:<9} {stats['n_subjects']:>3}  " + "  ".join(f"{c:>21}" for c in cells))
    return "\n".join(lines)


def baseline_sentences(summary: dict, flags: list[dict]) -> str:
    """Which source each region's baseline copies, and every protocol and region where the prediction scores
    below it, in words."""
    sources = {p: st["baseline_sources"] for p, st in summary.items() if st.get("baseline_sources")}
    if not sources:
        return "No copy-the-source baseline (no source images recorded, or a CT target)."
    first = next(iter(sources.values()))
    lines = ["Copy-the-source baseline, best source per region: "
             + ", ".join(f"{REGION_TITLES[r]} {s}" for r, s in first.items())
             + ("" if all(v == first for v in sources.values()) else " (under the first protocol; see summary.json)")
             + "."]
    lines += [f"Below the baseline: {f['sentence']}" for f in flags]
    if not flags:
        lines.append("The prediction scores above the baseline in every protocol and region.")
    return "\n".join(lines)


def provenance(args, subjects: list[dict], modality: str) -> dict:
    """Where the numbers come from, for the report: translate.json's settings, dates and the PHMDiff version."""
    from datetime import datetime, timezone

    from phmdiff import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = {"phmdiff_version": __version__, "evaluated": now, "modality_kind": modality, "n_subjects": len(subjects),
           "n_samples": max([len(s.get("samples") or []) for s in subjects] + [1])}
    meta_path = Path(args.pred) / "translate.json"
    if not meta_path.is_file():
        out["inputs"] = f"{args.pred} against {args.ref}"
        return out
    meta = read_json(meta_path, check_translate_json)
    for key in ("target", "sources", "checkpoint", "sampler", "steps", "guidance"):
        if key in meta:
            out[key] = meta[key]
    out["translated"] = datetime.fromtimestamp(meta_path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["translate_folder"] = str(Path(args.pred).resolve())
    if meta.get("checkpoint"):
        ckpt = Path(meta["checkpoint"])
        out["run"] = str(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
        for where in (ckpt, Path(args.pred).resolve().parent.parent / ckpt):
            try:
                out["step"] = int(json.loads((where / "meta.json").read_text())["step"])
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


def run(args) -> int:
    protocols = _protocols(args.protocol)
    subjects, modality = collect_subjects(args)
    default_out = Path(args.pred) / "evaluation" if Path(args.pred).is_dir() and args.ref is None else "evaluation"
    out = check_out_dir(args.out or default_out, "evaluate", getattr(args, "overwrite", False))
    check_writable_dir(out.parent)
    subject_rows, slice_rows, summary = evaluate(subjects, modality, protocols, args.slice_axis)
    extra = sorted({k for r in subject_rows for k in r} - set(SUBJECT_COLUMNS) - {"modality"})
    flags = below_baseline(summary, {p: st.get("baseline_sources", {}) for p, st in summary.items()})
    summary_json = {"modality": modality, "protocols": summary, "below_baseline": flags,
                    "distribution": distribution(subjects, modality, args.slice_axis, args.inception)}
    inputs = {"modality": modality, "protocols": protocols, "subjects": subjects,
              "provenance": provenance(args, subjects, modality),
              **({"slice_axis": args.slice_axis} if args.slice_axis is not None else {})}
    with publish_dir(out, "evaluate", getattr(args, "overwrite", False)) as tmp:  # the four files as one unit
        atomic_write_text(tmp / "per_subject.csv", _csv(subject_rows, SUBJECT_COLUMNS + tuple(extra)))
        atomic_write_text(tmp / "per_slice.csv", _csv(slice_rows, ("subject", "protocol", "slice", "psnr", "ssim",
                                                                   "mae")))
        atomic_write_text(tmp / "summary.json", json.dumps(summary_json, indent=2, allow_nan=False) + "\n")
        atomic_write_text(tmp / "evaluation.json", json.dumps(inputs, indent=2) + "\n")
    print(format_table(summary))
    print(baseline_sentences(summary, flags))
    print(f"wrote {out}/per_subject.csv, per_slice.csv, summary.json")
    return 0
