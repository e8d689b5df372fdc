"""`phmdiff report PATH --out DIR`: a static HTML page (no server) for an evaluation or a run folder.

PATH is an evaluation folder (`summary.json`, `per_subject.csv`, `per_slice.csv`,
`evaluation.json` from `phmdiff evaluate`), a folder holding one in `evaluation/`,
and/or a run folder with a CSV log `log.csv` (columns `step,loss,...`). The page holds
the metrics table, per-subject and per-slice plots, image panels
source | reference | prediction | |error| | uncertainty in axial, coronal and sagittal
views with a fixed window (the reference's normalization for MR, the HU window for
CT), and the training curves. All links are relative, so DIR can be moved.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nibabel import orientations as nib_orient  # noqa: E402

from phmdiff.data.intensity import CT_WINDOW  # noqa: E402
from phmdiff.eval.evaluate import load_volume  # noqa: E402
from phmdiff.fsutil import publish_dir  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")
# Counts images that really decoded, for humans and for the headless-browser test.
_LOAD_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-total', imgs.length);
});
</script>"""


def add_arguments(parser) -> None:
    parser.add_argument("path", help="evaluation folder (from phmdiff evaluate) or run folder (with log.csv)")
    parser.add_argument("--out", required=True, help="output folder for index.html and img/")
    parser.add_argument("--panels", type=int, default=3, help="number of subjects shown as image panels")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files (they are kept)")


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _e(value) -> str:
    """Any value read from an input file, made inert in HTML (a name like `<script>` shows as text)."""
    return html.escape(str(value), quote=True)


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _save(fig, img_dir: Path, name: str) -> str:
    fig.savefig(img_dir / name, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"img/{name}"


def _training_curves(log: Path, img_dir: Path) -> str:
    rows = _read_csv(log)
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{log}: expected a CSV log with a 'step' column.")
    steps = np.array([_num(r["step"]) for r in rows])
    columns = [c for c in rows[0] if c != "step" and np.isfinite([_num(r[c]) for r in rows]).any()]
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4 * max(1, len(columns)), 3), squeeze=False)
    for ax, col in zip(axes[0], columns):
        values = np.array([_num(r[col]) for r in rows])
        ax.plot(steps, values)
        ax.set_title(col)
        ax.set_xlabel("step")
        if col.startswith("loss") and np.nanmin(values) > 0:
            ax.set_yscale("log")
    return f'<h2>Training curves</h2><img src="{_save(fig, img_dir, "training.png")}" alt="training curves">'


def _metric_plots(ev: Path, img_dir: Path) -> str:
    subjects = _read_csv(ev / "per_subject.csv")
    slices = _read_csv(ev / "per_slice.csv")
    protocols = list(dict.fromkeys(r["protocol"] for r in subjects))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for p in protocols:
        rows = [r for r in subjects if r["protocol"] == p]
        axes[0].plot([r["subject"] for r in rows], [_num(r["psnr"]) for r in rows], "o", label=p)
        axes[1].plot([r["subject"] for r in rows], [_num(r["ssim"]) for r in rows], "o", label=p)
    for ax, name in zip(axes, ("PSNR (dB, inf not drawn)", "SSIM")):
        ax.set_title(f"{name} per subject")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
    out = f'<h2>Per subject</h2><img src="{_save(fig, img_dir, "per_subject.png")}" alt="per-subject metrics">'
    fig, ax = plt.subplots(figsize=(10, 3.5))
    base = "slice" if any(r["protocol"] == "slice" for r in slices) else "volume"
    for sid in dict.fromkeys(r["subject"] for r in slices):
        rows = [r for r in slices if r["subject"] == sid and r["protocol"] == base]
        ax.plot([int(r["slice"]) for r in rows], [_num(r["psnr"]) for r in rows], label=sid)
    ax.set_title(f"PSNR per slice ({base} protocol, foreground)")
    ax.set_xlabel("slice index")
    ax.legend(fontsize=7, ncol=4)
    return out + f'<h2>Per slice</h2><img src="{_save(fig, img_dir, "per_slice.png")}" alt="per-slice PSNR">'


def _to_ras(vol, affine):
    """Reorient a 3D volume to RAS so the three views are axial, coronal and sagittal whatever the file's order."""
    if vol is None or vol.ndim != 3:
        return vol
    ornt = nib_orient.ornt_transform(nib_orient.io_orientation(affine), nib_orient.axcodes2ornt("RAS"))
    return nib_orient.apply_orientation(vol, ornt)


def _views(vol: np.ndarray, center: tuple[int, ...]) -> list[np.ndarray]:
    """Axial, coronal and sagittal planes through `center`, transposed for origin='lower' display."""
    if vol.ndim == 2:
        return [vol.T]
    i, j, k = center
    return [vol[:, :, k].T, vol[:, j, :].T, vol[i, :, :].T]


def _panels(ev: Path, meta: dict, img_dir: Path, count: int) -> str:
    ct = meta.get("modality") == "ct"
    rows = {r["subject"]: r for r in _read_csv(ev / "per_subject.csv") if r["protocol"] == "volume"}
    parts = ["<h2>Images</h2><p>source | reference | prediction | |error| | uncertainty; "
             f"window {'HU ' + str(CT_WINDOW) if ct else 'of the reference normalization (0.5-99.5 pct)'}, "
             "error and uncertainty on 0 to 25% of that window.</p>"]
    for s in meta["subjects"][:count]:
        ref, affine = load_volume(s["reference"], what="reference")
        like = (ref.shape, affine)
        pred = load_volume(s["prediction"], like, "prediction")[0]
        std = load_volume(s["std"], like, "std")[0] if s.get("std") else None
        srcs = s.get("source_images") or {}
        src = load_volume(next(iter(srcs.values())), like, "source")[0] if srcs else None
        ref, pred, std, src = (_to_ras(v, affine) for v in (ref, pred, std, src))
        row = rows.get(s["subject"], {})
        lo, hi = CT_WINDOW if ct else (_num(row.get("norm_low")), _num(row.get("norm_high")))
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            lo, hi = np.percentile(ref, (0.5, 99.5))
        fg = np.argwhere(ref > lo + 0.1 * (hi - lo)) if ref.ndim == 3 else np.zeros((0, 3))
        center = tuple(int(c) for c in (fg.mean(0) if len(fg) else np.array(ref.shape) // 2))
        err_window = (0, 0.25 * (hi - lo))
        columns = [("source", src, "gray", (None, None)), ("reference", ref, "gray", (lo, hi)),
                   ("prediction", pred, "gray", (lo, hi)), ("|error|", np.abs(pred - ref), "magma", err_window),
                   ("uncertainty", std, "magma", err_window)]
        nviews = 1 if ref.ndim == 2 else 3
        fig, axes = plt.subplots(nviews, 5, figsize=(12, 2.6 * nviews), squeeze=False)
        for c, (title, vol, cmap, (vmin, vmax)) in enumerate(columns):
            planes = _views(vol, center) if vol is not None else [None] * nviews
            for v in range(nviews):
                ax = axes[v, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if planes[v] is None:
                    ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                else:
                    if title == "source":  # the source has its own units: its own percentile window
                        vmin, vmax = np.percentile(vol, (0.5, 99.5))
                    ax.imshow(planes[v], cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
                if v == 0:
                    ax.set_title(title)
                if c == 0:
                    ax.set_ylabel(VIEWS[v])
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s["subject"])
        src_rel = _save(fig, img_dir, f"panel_{safe}.png")
        parts.append(f'<h3>{_e(s["subject"])}</h3><img src="{_e(src_rel)}" alt="panels {_e(safe)}">')
    return "\n".join(parts)


def _tables(ev: Path) -> str:
    summary = json.loads((ev / "summary.json").read_text())
    keys = ("psnr", "ssim", "ms_ssim", "mae", "mean_error", "lesion_psnr", "lesion_mae")
    head = "".join(f"<th>{k}</th>" for k in ("protocol", "n", *keys))
    body = []
    for p, st in summary["protocols"].items():
        cells = []
        for k in keys:
            m = st.get(k)
            text = "" if not m else ("inf" if m["mean"] is None else f"{_num(m['mean']):.4g} &plusmn; "
                                     f"{_num(m['std']):.2g}")
            cells.append(text + (f" ({_e(m['n_inf'])} inf)" if m and m["n_inf"] and m["mean"] is not None else ""))
        body.append(f"<tr><td>{_e(p)}</td><td>{_e(st['n_subjects'])}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    dist = summary.get("distribution", {})
    dist_text = ", ".join(f"{_e(k)} = {v:.4g}" for k, v in dist.items() if isinstance(v, float))
    notes = " ".join(_e(v) for k, v in dist.items() if str(k).endswith("note"))
    rows = _read_csv(ev / "per_subject.csv")
    cols = ("subject", "protocol", "psnr", "ssim", "mae", "mean_error")
    sub = "".join("<tr>" + "".join(f"<td>{_e(r.get(c) or '')}</td>" for c in cols) + "</tr>" for r in rows)
    return (f"<h2>Metrics (mean &plusmn; std across subjects)</h2><table id='summary'><tr>{head}</tr>{''.join(body)}"
            f"</table><p>Modality: {_e(summary['modality'])}. Distribution: {dist_text or 'n/a'}. {notes}</p>"
            f"<h2>Subjects</h2><table id='subjects'><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{sub}</table>")


def write_report(path, out, panels: int = 3, overwrite: bool = False) -> Path:
    """Write DIR/index.html and DIR/img/*.png for an evaluation and/or run folder."""
    path = Path(path)
    ev = path if (path / "summary.json").is_file() else path / "evaluation"
    has_eval, log = (ev / "summary.json").is_file(), path / "log.csv"
    if not has_eval and not log.is_file():
        raise ValueError(f"{path}: neither an evaluation folder (summary.json) nor a run folder (log.csv).")
    with publish_dir(out, "report", overwrite) as tmp:
        img_dir = tmp / "img"
        img_dir.mkdir()
        sections = []
        if log.is_file():
            sections.append(_training_curves(log, img_dir))
        if has_eval:
            sections += [_tables(ev), _metric_plots(ev, img_dir)]
            meta_path = ev / "evaluation.json"
            if meta_path.is_file():
                sections.append(_panels(ev, json.loads(meta_path.read_text()), img_dir, panels))
        style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #bbb;" \
                "padding:2px 8px;text-align:right}img{max-width:100%}"
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PHMDiff report</title><style>{style}"
                f"</style></head><body><h1>PHMDiff report: {_e(path.name)}</h1>\n" + "\n".join(sections)
                + f"\n{_LOAD_SCRIPT}</body></html>\n")
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out) / "index.html"


def run(args) -> int:
    page = write_report(args.path, args.out, args.panels, args.overwrite)
    print(f"wrote {page}")
    return 0
