"""The image part of `phmdiff report`: source | reference | prediction | |error| | uncertainty panels at the
true aspect ratio, and the uncertainty section (calibration plot, std-vs-error correlation per subject).

Views are taken after reorienting to RAS, so axial, coronal and sagittal mean what they say whatever the file's
axis order; each view's pixel aspect is the ratio of its two voxel spacings. MR is shown in the reference's
normalized units (its foreground 0.5 and 99.5 percentiles at 0 and 1), CT in HU through a soft-tissue window
(W400/L40) and a bone window (W1800/L400).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nibabel import affines as nib_affines  # noqa: E402
from nibabel import orientations as nib_orient  # noqa: E402

from phmdiff.eval.ensemble import uncertainty_error_correlation  # noqa: E402
from phmdiff.eval.evaluate import load_volume  # noqa: E402
from phmdiff.eval.html import e, q, save_figure  # noqa: E402
from phmdiff.eval.protocols import foreground_mask  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")
# (name, level, width) in HU: the soft-tissue window radiologists read body CT in, and a bone window.
CT_WINDOWS = (("soft tissue W400/L40", 40.0, 400.0), ("bone W1800/L400", 400.0, 1800.0))
CALIBRATION_BINS = 10


def to_ras(vol, affine):
    """A 3D volume reoriented to RAS, and its voxel spacing in the new axis order."""
    spacing = nib_affines.voxel_sizes(affine)
    if vol is None or vol.ndim != 3:
        return vol, spacing[: 2 if vol is None else vol.ndim]
    ornt = nib_orient.ornt_transform(nib_orient.io_orientation(affine), nib_orient.axcodes2ornt("RAS"))
    new = np.empty(3)
    new[ornt[:, 0].astype(int)] = spacing[:3]
    return nib_orient.apply_orientation(vol, ornt), new


def views(vol: np.ndarray, center, spacing) -> list[tuple[np.ndarray, float]]:
    """(plane, aspect) for axial, coronal and sagittal through `center`; planes transposed for origin='lower',
    aspect = row spacing / column spacing so a voxel is drawn at its true shape."""
    if vol.ndim == 2:
        return [(vol.T, spacing[1] / spacing[0])]
    i, j, k = center
    sx, sy, sz = spacing
    return [(vol[:, :, k].T, sy / sx), (vol[:, j, :].T, sz / sx), (vol[i, :, :].T, sz / sy)]


def _columns(kind: str, names: dict, src, ref, pred, std, lo, hi, n_samples: int) -> list:
    """(title, volume, cmap, vmin, vmax, colour-bar label) for each panel column."""
    target = names["target"]
    pred_title = f"{target} synthesized" + (f" (mean of {n_samples})" if n_samples > 1 else "")
    std_title = f"uncertainty: std of {n_samples} samples" if std is not None else "uncertainty"
    src_col = (f"source: {names['source']}", src, "gray", *(np.percentile(src, (0.5, 99.5)) if src is not None
                                                           else (0, 1)), f"{names['source']}, own 0.5-99.5 pct")
    err = np.abs(pred - ref)
    if kind == "ct":
        cols = [src_col]
        for wname, level, width in CT_WINDOWS:
            cols += [(f"{target} real, {wname}", ref, "gray", level - width / 2, level + width / 2, "HU"),
                     (f"{target} synth., {wname}", pred, "gray", level - width / 2, level + width / 2, "HU")]
        return cols + [("|error|", err, "magma", 0, 200, "HU"), (std_title, std, "magma", 0, 200, "HU")]
    unit = "normalized units (ref. 0.5-99.5 pct = 0-1)"
    scale = hi - lo
    norm = [None if v is None else (v - lo) / scale for v in (ref, pred)]
    return [src_col, (f"{target} real", norm[0], "gray", 0, 1, unit), (pred_title, norm[1], "gray", 0, 1, unit),
            ("|error|", err / scale, "magma", 0, 0.25, unit),
            (std_title, None if std is None else std / scale, "magma", 0, 0.25, unit)]


def panel(s: dict, kind: str, names: dict, lo: float, hi: float, img_dir, safe: str) -> str:
    """One subject's figure: a row per view, a column per image, a colour bar under each column."""
    ref, affine = load_volume(s["reference"], what="reference")
    like = (ref.shape, affine)
    pred = load_volume(s["prediction"], like, "prediction")[0]
    std = load_volume(s["std"], like, "std")[0] if s.get("std") else None
    srcs = s.get("source_images") or {}
    src_name = next(iter(srcs), None)
    src = load_volume(srcs[src_name], like, "source")[0] if src_name else None
    (ref, spacing), (pred, _), (std, _), (src, _) = (to_ras(v, affine) for v in (ref, pred, std, src))
    fg = np.argwhere(ref > lo + 0.1 * (hi - lo)) if ref.ndim == 3 else np.zeros((0, 3))
    center = tuple(int(c) for c in (fg.mean(0) if len(fg) else np.array(ref.shape) // 2))
    n_samples = max(len(s.get("samples") or []), 1)
    cols = _columns(kind, {**names, "source": src_name or "none"}, src, ref, pred, std, lo, hi, n_samples)
    nviews = 1 if ref.ndim == 2 else 3
    # Row heights follow each view's true height/width, so flat views leave no empty band.
    ratios = [plane.shape[0] * aspect / plane.shape[1] for plane, aspect in views(ref, center, spacing)]
    width = 2.9
    fig, axes = plt.subplots(nviews, len(cols), figsize=(width * len(cols), width * sum(ratios) + 0.8 * nviews + 1.0),
                             squeeze=False, layout="constrained", gridspec_kw={"height_ratios": ratios})
    for c, (title, vol, cmap, vmin, vmax, label) in enumerate(cols):
        planes = views(vol, center, spacing) if vol is not None else [None] * nviews
        image = None
        for v in range(nviews):
            ax = axes[v, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if planes[v] is None:
                reason = "no source image recorded" if c == 0 else "no std map (translate --n-samples 1)"
                ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
            else:
                image = ax.imshow(planes[v][0], cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect=planes[v][1],
                                  interpolation="nearest")
            ax.set_title(f"{title}\n{VIEWS[v] if nviews == 3 else 'slice'}", fontsize=10)
        if image is not None:
            bar = fig.colorbar(image, ax=axes[-1, c], orientation="horizontal", fraction=0.08, pad=0.04)
            bar.set_label(label, fontsize=8)
            bar.ax.tick_params(labelsize=8)
    src_rel = save_figure(fig, img_dir, f"panel_{safe}.png", dpi=90)
    voxel = " x ".join(f"{v:.3g}" for v in spacing)
    return (f"<h3>{e(s['subject'])}</h3><p>Voxel spacing (RAS) <span class='q' data-unit='mm'>{voxel} mm</span>; "
            f"views cut through the foreground's centre.</p><img src=\"{e(src_rel)}\" alt=\"panels {e(safe)}\">")


def calibration(subjects: list[dict], kind: str, norm: dict, img_dir) -> str:
    """Binned predicted std against observed RMS error (a calibrated model lies on y = x), and the per-subject
    Pearson and Spearman correlation of std with |error| inside the foreground."""
    with_std = [s for s in subjects if s.get("std")]
    head = "<h2>Uncertainty</h2>"
    if not with_std:
        return head + ("<p class='blank'>No uncertainty map: translate ran with one sample per subject "
                       "(<code>--n-samples 2</code> or more writes the per-voxel std).</p>")
    unit = "HU" if kind == "ct" else "normalized units"
    fig, ax = plt.subplots(figsize=(7, 6))
    rows, top = [], 0.0
    for s in with_std:
        ref, affine = load_volume(s["reference"], what="reference")
        like = (ref.shape, affine)
        pred = load_volume(s["prediction"], like, "prediction")[0]
        std = load_volume(s["std"], like, "std")[0]
        mask = load_volume(s["mask"], like, "mask")[0] > 0 if s.get("mask") else foreground_mask(ref, kind)
        scale = 1.0 if kind == "ct" else norm.get(s["subject"], (0.0, 1.0))[1] - norm.get(s["subject"], (0.0, 1.0))[0]
        sd, err = std[mask] / scale, (pred - ref)[mask] / scale
        edges = np.unique(np.quantile(sd, np.linspace(0, 1, CALIBRATION_BINS + 1)))
        if len(edges) < 2:  # a constant std map: one bin
            edges = np.array([sd.min(), sd.min() + 1.0])
        which = np.clip(np.searchsorted(edges, sd, side="right") - 1, 0, len(edges) - 2)
        xs = [sd[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        ys = [math.sqrt(float(np.mean(err[which == b] ** 2))) for b in range(len(edges) - 1) if (which == b).any()]
        ax.plot(xs, ys, "o-", label=s["subject"])
        top = max(top, max(xs + ys))
        corr = uncertainty_error_correlation(std, pred - ref, mask)
        rows.append((s["subject"], corr["pearson"], corr["spearman"], float(np.sqrt(np.mean(err**2))),
                     float(sd.mean()), max(len(s.get("samples") or []), 1)))
    ax.plot([0, top], [0, top], "k--", label="calibrated (RMS error = std)")
    ax.set_xlabel(f"predicted std, bin mean ({unit})")
    ax.set_ylabel(f"observed RMS error in the bin ({unit})")
    ax.set_title(f"Calibration: {CALIBRATION_BINS} equal-count bins of predicted std, foreground voxels")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    src = save_figure(fig, img_dir, "calibration.png", dpi=80)
    def corr_cell(value, name):
        if not math.isfinite(value):
            return "<td class='blank'>&ndash; undefined: the std or the error is constant</td>"
        return f"<td data-unit='{name}'>{q(value, name, '.3f')}</td>"

    body = "".join(f"<tr><td class='id'>{e(sid)}</td>{corr_cell(p, 'r')}{corr_cell(sp, 'rho')}"
                   f"<td data-unit='{unit}'>{q(rmse, unit, '.4g')}</td>"
                   f"<td data-unit='{unit}'>{q(msd, unit, '.4g')}</td><td data-unit='samples'>"
                   f"{q(n, 'samples', '.0f')}</td></tr>" for sid, p, sp, rmse, msd, n in rows)
    return (head + "<p>Does the spread of the samples say where the prediction is wrong? Points above the dashed "
            "line: the model is over-confident there; below: under-confident.</p>"
            f"<img src=\"{src}\" alt=\"calibration plot\"><table id='uncertainty'><tr><th>subject</th>"
            "<th>Pearson r (std vs |error|)</th><th>Spearman &rho;</th><th>RMS error</th><th>mean std</th>"
            f"<th>samples</th></tr>{body}</table>")
