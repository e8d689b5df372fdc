"""`phmdiff report PATH --out DIR`: a static HTML page (no server) for an evaluation or a run folder.

PATH is an evaluation folder (`summary.json`, `per_subject.csv`, `per_slice.csv`,
`evaluation.json` from `phmdiff evaluate`), a folder holding one in `evaluation/`,
and/or a run folder (`log.csv`, `config.yaml`, `autoencoder_report.json`).

The evaluation page holds: the provenance (run, checkpoint, sources -> target, samples,
sampler and steps, dates, PHMDiff version); the scores per protocol with the
copy-the-source baseline and the ceilings beside the prediction, then once the metrics
every protocol shares; a unit on every number (PSNR dB, SSIM 0-1, MR errors in
normalized units, CT errors in HU) and a reason in every blank cell; per-subject and
per-slice plots; the uncertainty section (calibration plot, std-vs-error correlation per
subject); image panels named by modality, with colour bars and true aspect ratios
(`report_images`). The run page holds readable training curves, the resolved config and
the autoencoder's quality (`report_run`). All links are relative, so DIR can be moved.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phmdiff.argtypes import whole
from phmdiff.eval.baseline import REGION_TITLES, REGIONS  # noqa: E402
from phmdiff.eval.html import e, fmt, num, q, save_figure  # noqa: E402
from phmdiff.eval.protocols import NOTE_COLUMNS, PROTOCOL_SPECS  # noqa: E402
from phmdiff.eval.report_images import calibration, panel  # noqa: E402
from phmdiff.eval.report_run import autoencoder_quality, resolved_config, training_curves  # noqa: E402
from phmdiff.fsutil import publish_dir  # noqa: E402
from phmdiff.schema import check_evaluation_json, check_summary_json, read_json

# Counts images that really decoded, for humans and for the headless-browser test.
_LOAD_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-total', imgs.length);
});
</script>"""
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1500px}table{border-collapse:collapse;margin:0.5em 0}"
          "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td[data-unit]{white-space:nowrap}"
          "th{background:#f2f2f2}"
          "td.id,th.id{text-align:left}td.blank,.blank{color:#777;font-style:italic;text-align:left}"
          "img{max-width:100%}pre.verbatim{background:#f7f7f7;padding:1em;max-height:30em;overflow:auto}"
          "dl.prov{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dt{font-weight:bold}")
PROTOCOL_AVERAGE = {name: p.averaging for name, p in PROTOCOL_SPECS.items()}
# Metrics only some protocols have: shown in that protocol's row only.
PROTOCOL_EXTRA = {name: p.columns for name, p in PROTOCOL_SPECS.items()}
# Metrics whose value cannot depend on the protocol: shown once.
SHARED = ("mae", "mean_error", "lesion_psnr", "lesion_mae", "through_plane_pred", "through_plane_ref")
TITLES = {"psnr": "PSNR", "ssim": "SSIM", "ms_ssim": "MS-SSIM", "mae": "MAE", "mean_error": "mean error",
          "lesion_psnr": "lesion PSNR", "lesion_mae": "lesion MAE", "ssim_tumour": "SSIM tumour",
          "ssim_healthy": "SSIM outside tumour", "through_plane_pred": "through-plane step, prediction",
          "through_plane_ref": "through-plane step, reference"}


def add_arguments(parser) -> None:
    parser.add_argument("path", help="evaluation folder (from phmdiff evaluate) or run folder (with log.csv)")
    parser.add_argument("--out", required=True, help="output folder for index.html and img/")
    parser.add_argument("--panels", type=whole(0, 1000), default=3, help="number of subjects shown as image panels")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files (they are kept)")


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def unit(key: str, kind: str, protocol: str = "") -> str:
    """The unit of a metric: PSNR in dB, SSIM-like in 0-1, errors in HU (CT) or normalized units (MR)."""
    for prefix in ("baseline_", "pipeline_ceiling_", "noise_free_"):
        key = key[len(prefix):] if key.startswith(prefix) else key
    if key.endswith("psnr"):
        return "dB"
    if "ssim" in key:
        return "0-1"
    if key.startswith("std_error"):
        return "r"
    return PROTOCOL_SPECS[protocol].error_units(kind) if protocol in PROTOCOL_SPECS else \
        ("HU" if kind == "ct" else "norm. units")


class Context:
    """What the inputs hold, to give every blank cell its reason."""

    def __init__(self, meta: dict, rows: list[dict], kind: str):
        subjects = meta.get("subjects", [])
        self.kind = kind
        self.has_seg = any(s.get("seg") for s in subjects)
        self.has_sources = any(s.get("source_images") for s in subjects)
        self.has_ceiling = any(s.get("ceiling") for s in subjects)
        self.notes = {k: next((r[k] for r in rows if r.get(k)), "") for k in ("ms_ssim_note", *NOTE_COLUMNS)}
        # "got shape (49, 58, 40)" -> "got shape 49 x 58 x 40 voxels": a number on the page always has its unit
        self.notes["ms_ssim_note"] = re.sub(r"\((\d+(?:, \d+)*)\)", lambda m: m.group(1).replace(", ", " x ")
                                            + " voxels", self.notes["ms_ssim_note"])
        self.baseline = ", ".join(sorted({r["baseline_source"] for r in rows if r.get("baseline_source")}))
        # region -> source of its baseline (`eval.baseline`), as the first protocol chose them
        first = rows[0] if rows else {}
        self.baseline_sources = {r: first[f"baseline_source_{r}"] for r in REGIONS if first.get(f"baseline_source_{r}")}

    def why(self, key: str, prefix: str, protocol: str) -> str:
        """Why a cell is empty; `protocol` '' (a note about every protocol) or one of PROTOCOL_SPECS."""
        spec = PROTOCOL_SPECS.get(protocol)
        if spec is not None and not spec.scores(self.kind) and self.notes.get(f"{protocol}_note"):
            return self.notes[f"{protocol}_note"]
        if prefix == "baseline_" and not self.baseline:
            return ("CT target: an MR source has no HU to copy" if self.kind == "ct"
                    else "no source images recorded in translate.json")
        if prefix == "pipeline_ceiling_" and not self.has_ceiling:
            return "translate ran without --ceiling"
        if prefix == "noise_free_" and key == "psnr":
            return "no noise-free target (REF_DIR/noise_free/, written by the phantom)"
        if prefix in ("pipeline_ceiling_", "noise_free_") and key not in ("psnr", "ssim", "lesion_psnr"):
            return "ceilings are scored on PSNR, SSIM and lesion PSNR only"
        if key.startswith("lesion") or key == "ssim_tumour":
            return ("no tumour segmentation given" if not self.has_seg
                    else "the segmentation holds no tumour voxel")
        if key == "ms_ssim":
            return self.notes["ms_ssim_note"] or "not computed"
        if spec is not None and spec.challenge:
            return f"not part of the {protocol} protocol"
        return "not computed for this input"


def _value(st: dict, key: str, kind: str, protocol: str = "") -> str:
    """mean +- std with its unit; all-infinite PSNRs (identical images) as the symbol."""
    u = unit(key, kind, protocol)
    if st.get("mean") is None:
        return f"&infin; {u} (identical in all {q(st['n'], 'subjects', '.0f')})"
    spec = ".2f" if u == "dB" else ".4f" if u in ("0-1", "r") else ".4g"
    text = f"{fmt(st['mean'], spec)} &plusmn; {fmt(st['std'], '.2g')} {'(0-1)' if u == '0-1' else u}"
    return text + (f" ({q(st['n_inf'], 'inf', '.0f')} left out)" if st.get("n_inf") else "")


def _cell(st: dict | None, key: str, kind: str, reason: str, protocol: str = "") -> str:
    if not st:
        return f"<td class='blank'>&ndash; {e(reason)}</td>"
    return f"<td data-unit='{unit(key, kind, protocol)}'>{_value(st, key, kind, protocol)}</td>"


def provenance(meta: dict) -> str:
    p = meta.get("provenance")
    if not p:
        return "<h2>Provenance</h2><p class='blank'>Not recorded (evaluation written by an older PHMDiff).</p>"
    items = []
    if p.get("run"):
        items.append(("run", f"<code class='id'>{e(p['run'])}</code>"))
    if p.get("checkpoint"):
        step = f" (after {q(p['step'], 'training steps', '.0f')})" if p.get("step") is not None else ""
        items.append(("checkpoint", f"<code class='id'>{e(p['checkpoint'])}</code>{step}"))
    if p.get("target"):
        items.append(("translation", f"{e(' + '.join(p.get('sources') or []))} &rarr; {e(p['target'])} "
                                     f"({e(p.get('modality_kind', ''))})"))
    if p.get("inputs"):
        items.append(("inputs", f"<code class='id'>{e(p['inputs'])}</code>"))
    items.append(("samples per subject", q(p.get("n_samples", 1), "samples", ".0f")
                  + (" (the prediction is their mean)" if p.get("n_samples", 1) > 1 else "")))
    if p.get("sampler"):
        guidance = f", guidance {q(p['guidance'], 'x', '.3g')}" if p.get("guidance") is not None else ""
        items.append(("sampler", f"{e(p['sampler'])}, {q(p.get('steps', math.nan), 'steps', '.0f')}{guidance}"))
    items.append(("subjects evaluated", q(p.get("n_subjects", 0), "subjects", ".0f")))
    if p.get("translated"):
        items.append(("translated", f"<span class='q' data-unit='date'>{e(p['translated'])}</span>"))
    items.append(("evaluated", f"<span class='q' data-unit='date'>{e(p.get('evaluated', '?'))}</span>"))
    items.append(("PHMDiff version", f"<code class='id'>{e(p.get('phmdiff_version', '?'))}</code>"))
    return "<h2>Provenance</h2><dl class='prov'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _rows_kinds(ctx: Context) -> list[tuple[str, str]]:
    """The rows a table shows: the prediction, and the baseline and ceilings that were computed (the others are
    one sentence each under the table, `_not_shown`, not a row of blank cells)."""
    rows = [("prediction", "")]
    if ctx.baseline:
        per_region = "; ".join(f"{REGION_TITLES.get(r, r)}: {s}" for r, s in ctx.baseline_sources.items())
        rows.append((f"baseline: copy of the best source per region ({per_region or ctx.baseline}), intensity "
                     "matched", "baseline_"))
    if ctx.has_ceiling:
        rows.append(("pipeline ceiling", "pipeline_ceiling_"))
    return rows + [("noise-free ceiling", "noise_free_")]


def _not_shown(ctx: Context) -> str:
    """One sentence per row left out of the tables because it was not computed."""
    notes = []
    if not ctx.baseline:
        notes.append(f"No copy-the-source baseline: {ctx.why('psnr', 'baseline_', '')}.")
    if not ctx.has_ceiling:
        notes.append("No pipeline ceiling (the true target sent through normalization, autoencoder and inverse): "
                     "translate ran without --ceiling.")
    notes.append("Ceilings are scored on PSNR, SSIM and lesion PSNR only.")
    return "<p class='blank'>" + " ".join(e(n) for n in notes) + "</p>"


def tables(ev: Path, meta: dict) -> str:
    summary = read_json(ev / "summary.json", check_summary_json)
    rows = _read_csv(ev / "per_subject.csv")
    kind = summary["modality"]
    ctx = Context(meta, rows, kind)
    err_unit = "HU" if kind == "ct" else "normalized units (the reference's foreground 0.5-99.5 percentiles map to 0-1)"
    parts = [f"<h2>Scores (mean &plusmn; std across subjects)</h2><p>Modality: {e(kind)}. Errors in {err_unit}"
             f"{_own_scale_sentence(summary['protocols'], kind)}. "
             "PSNR in dB, SSIM on a 0-1 scale. Each protocol reproduces one paper's or challenge's computation "
             "(see the README, \"Reading the numbers\"); the baseline is what a method must beat, the ceilings "
             "what no method can exceed.</p>"]
    head = ("<tr><th class='id'>protocol</th><th class='id'>averaged over</th><th class='id'>images</th>"
            "<th>n</th><th>PSNR (dB)</th><th>SSIM (0-1)</th><th>protocol-specific</th></tr>")
    body = []
    for protocol, st in summary["protocols"].items():
        extra = PROTOCOL_EXTRA.get(protocol, ())
        note = ctx.notes.get(f"{protocol}_note")
        spec = PROTOCOL_SPECS.get(protocol)  # None: a name this version does not know, shown as it is
        if spec is not None and not spec.scores(kind) and note:  # one line, not a row of repeated blanks
            body.append(f"<tr><td class='id'>{e(protocol)}</td><td class='blank' colspan='6'>&ndash; "
                        f"{e(note)}</td></tr>")
            continue
        for label, prefix in _rows_kinds(ctx):
            if prefix == "noise_free_" and not any(k.startswith(prefix) for k in st):
                continue  # only the phantom has one: a row of blanks would say nothing
            pooled = spec is not None and spec.pooled_slices and not prefix
            n = st.get("n_slices") if pooled else st["n_subjects"]
            n_unit = "slices" if pooled else "subjects"
            cells = [_cell(st.get(prefix + k), k, kind, ctx.why(k, prefix, protocol), protocol)
                     for k in ("psnr", "ssim")]
            specific = []
            for k in extra:
                s_ = st.get(prefix + k)
                if s_:
                    specific.append(f"<span data-unit='{unit(k, kind, protocol)}'>{TITLES[k]}: "
                                    f"{_value(s_, k, kind, protocol)}</span>")
                elif prefix not in ("pipeline_ceiling_", "noise_free_"):  # ceilings: said once under the table
                    specific.append(f"<span class='blank'>{TITLES[k]}: &ndash; {e(ctx.why(k, prefix, protocol))}"
                                    "</span>")
            spec_cell = ("<td class='id'>" + "<br>".join(specific) + "</td>") if specific else \
                "<td class='blank'>&ndash; none beyond PSNR and SSIM</td>" if not extra else \
                "<td class='blank'>&ndash; not scored for ceilings (below)</td>"
            body.append(f"<tr><td class='id'>{e(protocol)}</td><td class='id'>"
                        f"{e(PROTOCOL_AVERAGE.get(protocol, '') if not prefix else 'subjects')}</td>"
                        f"<td class='id'>{e(label)}</td><td data-unit='{n_unit}'>{q(n, n_unit, '.0f')}</td>"
                        + "".join(cells) + spec_cell + "</tr>")
    parts.append(f"<table id='summary'>{head}{''.join(body)}</table>{_not_shown(ctx)}")
    base = next((p for p in ("volume", "slice", "selfrdb", "syndiff") if p in summary["protocols"]), None)
    if base:
        st = summary["protocols"][base]
        head = "".join(f"<th>{TITLES[k]} ({unit(k, kind)})</th>" for k in SHARED)
        body = []
        for label, prefix in [r for r in _rows_kinds(ctx) if r[1] != "noise_free_"]:
            cells = "".join(_cell(st.get(prefix + k), k, kind, ctx.why(k, prefix, base)) for k in SHARED)
            body.append(f"<tr><td class='id'>{e(label)}</td>{cells}</tr>")
        own = [p for p in summary["protocols"] if p in PROTOCOL_SPECS and PROTOCOL_SPECS[p].own_scale]
        but = f" ({', '.join(own)}: its own errors, in its row above)" if own else ""
        parts.append(f"<h3>The same under every protocol{e(but)}</h3><p>Errors in the reference's units, inside the "
                     "foreground (lesion: inside the tumour segmentation); through-plane step: mean "
                     "<code>|x[k+1] - x[k]|</code> along the slice axis, the prediction beside the reference's own.</p>"
                     f"<table id='shared'><tr><th class='id'>images</th>{head}</tr>{''.join(body)}</table>")
    parts.append(below_baseline_section(summary))
    parts.append(_distribution(summary.get("distribution", {})))
    parts.append(_subject_table(rows, kind, ctx))
    return "\n".join(parts)


def _own_scale_sentence(protocols: dict, kind: str) -> str:
    """What the scale-free protocols in this summary measure, for the scores' paragraph ('' when none is)."""
    own = [p for p in protocols if p in PROTOCOL_SPECS and PROTOCOL_SPECS[p].own_scale and
           PROTOCOL_SPECS[p].scores(kind)]
    if not own:
        return ""
    return (f"; under {', '.join(own)}, in {PROTOCOL_SPECS[own[0]].error_units(kind)}: the prediction and the "
            "reference each mapped to 0-1 by its own 0.5-99.5 percentiles over the reference's foreground, "
            "which scores contrast and not the synthesized modality's scale (a new scanner's gain leaves it "
            "unknown: read it for real MRI, beside volume's reference intensity scale)")


def below_baseline_section(summary: dict) -> str:
    """Every protocol and region where the prediction scores below the copy-the-source baseline, in words."""
    flags = summary.get("below_baseline")
    if flags is None:  # evaluated by an older PHMDiff
        return ""
    if not any(st.get("baseline_sources") for st in summary["protocols"].values()):
        return ""
    if not flags:
        return ("<h3>Against the copy-the-source baseline</h3><p>The prediction scores above the baseline in every "
                "protocol and region (whole image, lesion, each tumour label present).</p>")
    items = "".join(f"<li class='below'>{e(f['sentence'])}</li>" for f in flags)
    return ("<h3>Below the copy-the-source baseline</h3><p>Where copying a source image (intensity matched) "
            f"scores better than the prediction:</p><ul>{items}</ul>")


def _distribution(dist: dict) -> str:
    units = {"ms_swd": "normalized units", "fid": "FID units", "kid": "KID units", "n_slices": "slices"}
    shown = [f"{e(k)} = {q(v, units.get(k, 'normalized units'))}" for k, v in dist.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    notes = " ".join(e(v) for k, v in dist.items() if str(k).endswith("note"))
    return (f"<h3>Distribution</h3><p>{', '.join(shown) or 'not computed'}. {notes}</p>"
            if shown or notes else "")


def _subject_table(rows: list[dict], kind: str, ctx: Context) -> str:
    cols = ("psnr", "ssim", "mae", "mean_error") + (("baseline_psnr",) if ctx.baseline else ())
    head = "".join(f"<th>{TITLES.get(c, 'baseline PSNR')} ({unit(c, kind)})</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            value = r.get(c)
            if value in (None, ""):
                prefix = "baseline_" if c.startswith("baseline_") else ""
                cells.append(f"<td class='blank'>&ndash; {e(ctx.why(c[len(prefix):], prefix, r['protocol']))}</td>")
            else:
                u = unit(c, kind, r["protocol"])
                cells.append(f"<td data-unit='{u}'>{q(num(value), u, '.2f' if u == 'dB' else '.4g')}</td>")
        body.append(f"<tr><td class='id'>{e(r['subject'])}</td><td class='id'>{e(r['protocol'])}</td>"
                    + "".join(cells) + "</tr>")
    return (f"<h2>Subjects</h2><table id='subjects'><tr><th class='id'>subject</th><th class='id'>protocol</th>"
            f"{head}</tr>{''.join(body)}</table>")


def metric_plots(ev: Path, img_dir: Path) -> str:
    subjects = _read_csv(ev / "per_subject.csv")
    slices = _read_csv(ev / "per_slice.csv")
    protocols = list(dict.fromkeys(r["protocol"] for r in subjects))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for p in protocols:
        rows = [r for r in subjects if r["protocol"] == p]
        axes[0].plot([r["subject"] for r in rows], [num(r["psnr"]) for r in rows], "o", label=p)
        axes[1].plot([r["subject"] for r in rows], [num(r["ssim"]) for r in rows], "o", label=p)
    for ax, name in zip(axes, ("PSNR (dB; inf not drawn)", "SSIM (0-1)")):
        ax.set_title(f"{name} per subject")
        ax.set_ylabel(name)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    out = f'<h2>Per subject</h2><img src="{save_figure(fig, img_dir, "per_subject.png")}" alt="per-subject metrics">'
    if not slices:  # only whole-volume protocols (scalefree, the challenges) were evaluated
        return out + ("<h2>Per slice</h2><p class='blank'>No per-slice scores: the protocols evaluated score whole "
                      "volumes (add --protocol slice or volume to evaluate for them).</p>")
    fig, ax = plt.subplots(figsize=(13, 4))
    base = "slice" if any(r["protocol"] == "slice" for r in slices) else \
        next((r["protocol"] for r in slices), "volume")
    for sid in dict.fromkeys(r["subject"] for r in slices):
        rows = [r for r in slices if r["subject"] == sid and r["protocol"] == base]
        ax.plot([int(r["slice"]) for r in rows], [num(r["psnr"]) for r in rows], label=sid)
    ax.set_title(f"PSNR per slice ({base} protocol, slices holding foreground)")
    ax.set_xlabel("slice index")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    return out + f'<h2>Per slice</h2><img src="{save_figure(fig, img_dir, "per_slice.png")}" alt="per-slice PSNR">'


def image_panels(ev: Path, meta: dict, img_dir: Path, count: int) -> str:
    kind = meta.get("modality", "mr")
    rows = {r["subject"]: r for r in _read_csv(ev / "per_subject.csv") if r["protocol"] == "volume"}
    target = (meta.get("provenance") or {}).get("target") or "target"
    window = ("CT in HU: a soft-tissue window (W400/L40) and a bone window (W1800/L400); errors 0-200 HU"
              if kind == "ct" else "MR in the reference's normalized units (its foreground 0.5-99.5 percentiles = "
              "0-1); |error| and uncertainty on 0-0.25 of that range")
    parts = [f"<h2>Images</h2><p>{e(window)}. Each source is shown in its own 0.5-99.5 percentile window.</p>"]
    for s in meta["subjects"][:count]:
        row = rows.get(s["subject"], {})
        lo, hi = num(row.get("norm_low")), num(row.get("norm_high"))
        if kind != "ct" and not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            from phmdiff.eval.evaluate import load_volume
            from phmdiff.eval.protocols import foreground_mask, normalize_pair

            ref = load_volume(s["reference"], what="reference")[0]
            lo, hi = normalize_pair(ref, ref, foreground_mask(ref), "mr")[2]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s["subject"])
        parts.append(panel(s, kind, {"target": target}, lo, hi, img_dir, safe))
    return "\n".join(parts)


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
        if has_eval:
            meta_path = ev / "evaluation.json"
            meta = read_json(meta_path, check_evaluation_json) if meta_path.is_file() else {"subjects": []}
            norm = {r["subject"]: (num(r.get("norm_low")), num(r.get("norm_high")))
                    for r in _read_csv(ev / "per_subject.csv") if r["protocol"] == "volume"}
            sections += [provenance(meta), tables(ev, meta), metric_plots(ev, img_dir)]
            if meta["subjects"]:
                sections += [calibration(meta["subjects"], meta.get("modality", "mr"), norm, img_dir),
                             image_panels(ev, meta, img_dir, panels)]
        if log.is_file():
            sections += [training_curves(log, img_dir), autoencoder_quality(path), resolved_config(path)]
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PHMDiff report</title><style>{_STYLE}"
                f"</style></head><body><h1>PHMDiff report: <span class='id'>{e(path.name)}</span></h1>\n"
                + "\n".join(sections) + f"\n{_LOAD_SCRIPT}</body></html>\n")
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out) / "index.html"


def run(args) -> int:
    page = write_report(args.path, args.out, args.panels, args.overwrite)
    print(f"wrote {page}")
    return 0
