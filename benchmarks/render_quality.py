"""docs/benchmarks.md's quality and ablation sections (issue 25's protocol) and the learning-curve figures,
rendered from the result JSON only (run_all.py calls these)."""

from __future__ import annotations

import json
import math
from pathlib import Path

FIGURES = Path("docs") / "images"
CURVE_METHODS = {"unet": "U-Net (L1, tuned)"}  # besides PHMDiff's n-sample mean
LABEL = {"z_off": "no through-plane filter", "z_on": "through-plane filter on every method"}


def is_protocol(results: dict) -> bool:
    """Whether a quality/ablation result is in issue 25's format (budgets per task)."""
    return bool(results.get("tasks")) and "budgets" in results["tasks"][0]


def _ci(c: dict | None, unit: str = "") -> str:
    if not c or c.get("n_pairs", 0) == 0:
        return ""
    if not all(map(math.isfinite, c["ci"])):  # one group (a pooled score over 1 seed): no spread to resample
        return f"{c['mean']:+.2f}{unit} (one group: no interval)"
    text = f"{c['mean']:+.2f}{unit} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] {c['verdict']}"
    if "target" in c:
        text += f"; target >= {c['target']:+.2f}: {'met' if c['target_met'] else '**missed**'}"
    return text


def _num(v: dict, key: str, digits: int = 2) -> str:
    return f"{v[key]:.{digits}f}" if key in v else ""


def quality_lines(r: dict, cmd: str, figures: dict[str, str] | None = None) -> list[str]:
    """Per task and budget: the methods' means and the paired differences, for both filter settings."""
    n = r["n_samples"]
    ours = f"phmdiff_mean{n}"
    lines = [f"Budgets {', '.join(f'{b:g}' for b in r['budgets_cpu_s'])} CPU seconds of the process per method and "
             f"seed ({r['budget_clock']}); seeds {r['seeds']}; subjects train/val/test "
             f"{r['split']['train']}/{r['split']['val']}/{r['split']['test']}; PHMDiff: mean of {n} samples; flips "
             f"{'on' if r['flips'] else 'off'} for every method; through-plane filter sigma {r['z_filter']['sigma']:g}"
             f", h {r['z_filter']['h']:g} on every method or none; load average "
             f"{r['load_average_before'][0]:.2f} before, {r['load_average_after'][0]:.2f} after. `{cmd}`", ""]
    for task in r["tasks"]:
        phys = f", phantom physics {task['physics']}{' + N4' if task.get('n4') else ''}" if task.get("physics") else ""
        lines += [f"**{task['task']}** ({' + '.join(task['sources'])} -> {task['target']}; test subjects "
                  f"{', '.join(task['subjects']['test'])}{phys})", ""]
        for budget, b in task["budgets"].items():
            sel, gate = b.get("unet_selection"), b.get("monai_ddpm_gate")
            if sel:
                lines.append(f"{budget} CPU-s: U-Net chosen on the validation subjects: lr {sel['lr']:g}, "
                             f"{sel['weights']} weights (of " + ", ".join(
                                 f"{t['lr']:g}/{t['weights']} {t['val_psnr']:.2f} dB" for t in sel["trials"]) + ").")
            if gate and not gate["runs"]:
                lines.append(f"MONAI DDPM: {gate['reason']}.")
            lines.append("")
            for f, s in b["summary"].items():
                runs = b["runs"]
                lines += [f"{budget} CPU-s, {LABEL[f]}:", "",
                          "| method | PSNR dB (per seed) | lesion PSNR dB | edema ratio | enhancing ratio | "
                          "necrosis ratio | WM ratio | Dice WT | MS-SWD (1 sample) | calls / volume | s / volume |",
                          "|---|---|---|---|---|---|---|---|---|---|---|"]
                for m, v in s["methods"].items():
                    run = (runs.get(m) or [{}])[0]
                    seeds = ", ".join(f"{x:.2f}" for x in v["psnr_per_seed"])
                    calls = run.get("network_calls_per_volume")
                    secs = run.get("seconds_per_volume")
                    lines.append(f"| {m} | {v['psnr']:.2f} ({seeds}) | {_num(v, 'lesion_psnr')} | "
                                 f"{_num(v, 'ratio_edema')} | {_num(v, 'ratio_enhancing')} | "
                                 f"{_num(v, 'ratio_necrosis')} | {_num(v, 'ratio_wm')} | {_num(v, 'dice_wt', 3)} | "
                                 f"{v['ms_swd_single']:.1f} | {'' if calls is None else f'{calls:.0f}'} | "
                                 f"{'' if secs is None else f'{secs:.1f}'} |")
                lines += ["", f"| {ours} minus | PSNR dB | lesion PSNR dB | edema ratio | Dice WT | MS-SWD |",
                          "|---|---|---|---|---|---|"]
                for other, c in s["comparisons"].items():
                    lines.append(f"| {other} | {_ci(c.get('psnr'))} | {_ci(c.get('lesion_psnr'))} | "
                                 f"{_ci(c.get('ratio_edema'))} | {_ci(c.get('dice_wt'))} | "
                                 f"{_ci(c.get('ms_swd_single'))} |")
                lines.append("")
        if figures and task["task"] in figures:
            lines += [f"![learning curve, {task['task']}]({figures[task['task']]})", ""]
    return lines


def ablation_lines(r: dict, cmd: str) -> list[str]:
    lines = [f"Budgets {', '.join(f'{b:g}' for b in r['budgets_cpu_s'])} CPU-s per variant and seed, seeds "
             f"{r['seeds']}, {r['split']['test']} test subjects, mean of {r['n_samples']} samples; paired difference "
             f"variant - shipped per (subject, seed) with 95 % bootstrap intervals over subjects. `{cmd}`", ""]
    for task in r["tasks"]:
        for budget, b in task["budgets"].items():
            for f, table in b["summary"].items():
                lines += [f"**{task['task']}**, {budget} CPU-s, {LABEL[f]}:", "",
                          "| variant | PSNR dB | minus shipped | lesion PSNR dB | minus shipped | edema ratio "
                          "| minus shipped | steps |",
                          "|---|---|---|---|---|---|---|---|"]
                for name, v in table.items():
                    lines.append(f"| {name} | {_num(v, 'psnr')} | {_ci(v.get('psnr_minus_shipped'))} | "
                                 f"{_num(v, 'lesion_psnr')} | {_ci(v.get('lesion_psnr_minus_shipped'))} | "
                                 f"{_num(v, 'ratio_edema')} | {_ci(v.get('ratio_edema_minus_shipped'))} | "
                                 f"{v['steps']:.0f} |")
                lines.append("")
    return lines


def curve_points(results_dir: Path) -> dict:
    """task -> method -> metric -> {budget: per-seed means}, from every quality*.json in the protocol format
    (filter off)."""
    out: dict = {}
    for path in sorted(Path(results_dir).glob("quality*.json")):
        r = json.loads(path.read_text())["results"]
        if not is_protocol(r):
            continue
        ours = f"phmdiff_mean{r['n_samples']}"
        for task in r["tasks"]:
            for budget, b in task["budgets"].items():
                rows = [x for x in b["rows"] if x["filter"] == "z_off"]
                for m in (ours, *CURVE_METHODS):
                    for k in ("psnr", "lesion_psnr"):
                        seeds = sorted({x["seed"] for x in rows if x["method"] == m and k in x})
                        vals = [sum(x[k] for x in rows if x["method"] == m and x["seed"] == s and k in x)
                                / max(1, sum(1 for x in rows if x["method"] == m and x["seed"] == s and k in x))
                                for s in seeds]
                        if vals:
                            name = "PHMDiff (mean)" if m == ours else CURVE_METHODS[m]
                            out.setdefault(task["task"], {}).setdefault(name, {}).setdefault(k, {})[
                                float(budget)] = vals
    return out


def learning_curves(results_dir: Path, root: Path) -> dict[str, str]:
    """One PNG per task (PSNR and lesion PSNR against CPU budget, each seed's mean as a dot, the line through the
    seeds' mean); returns task -> path relative to docs/. Tasks with fewer than two budgets get no figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phmdiff.fsutil import atomic_path

    figures = {}
    for task, methods in curve_points(results_dir).items():
        budgets = {b for m in methods.values() for k in m.values() for b in k}
        if len(budgets) < 2:
            continue
        metrics = [k for k in ("psnr", "lesion_psnr") if any(k in m for m in methods.values())]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
        for ax, k in zip(axes[0], metrics):
            for name, m in methods.items():
                if k not in m:
                    continue
                xs = sorted(m[k])
                line = ax.plot([x / 60 for x in xs], [sum(m[k][x]) / len(m[k][x]) for x in xs], marker="o",
                               label=name)[0]
                for x in xs:
                    ax.scatter([x / 60] * len(m[k][x]), m[k][x], s=10, color=line.get_color(), alpha=0.5)
            ax.set_xlabel("CPU minutes of training")
            ax.set_ylabel(f"{'lesion ' if k == 'lesion_psnr' else ''}PSNR dB")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(task, fontsize=10)
        fig.tight_layout()
        path = root / FIGURES / f"learning_{task}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png", metadata={"Software": None})
        plt.close(fig)
        figures[task] = str(path.relative_to(root / "docs"))
    return figures


REAL_PROTOCOLS = {
    "scalefree": "scale-free (each image by its own 0.5/99.5 foreground percentiles: read this for real MRI)",
    "volume": "volume (the reference's intensity scale: the synthesized gain counts)"}


def _fold_psnr(v: dict) -> str:
    return ", ".join(f"{f} {x['psnr']:.2f}" for f, x in v.get("per_fold", {}).items())


def real_scale_lines(r: dict, cmd: str) -> list[str]:
    """benchmarks/real_scale.py's section: the foreground before and after the robust background, and the scale
    ceiling of each way to set a synthesized FLAIR's scale."""
    lines = [f"The real subjects of `{r['data']}`, no training. `{cmd}`", "",
             "Foreground and median scale per modality, with the former rule (10 % from the volume's minimum to its "
             "99th percentile; its silent fallback scale 1.0) and now (`intensity.foreground`):", "",
             "| subject | modality | min (negative voxels) | former foreground | former median / scale | "
             "foreground now | median / scale now | normalized 99.5 % now |", "|---|---|---|---|---|---|---|---|"]
    for x in r["foreground"]:
        f, n = x["former"], x["now"]
        lines.append(f"| {x['subject']} | {x['modality']} | {x['min']:g} ({x['negative']}) | "
                     f"{100 * f['fraction']:.1f} % | {f['median']:g} / {f['scale']:g} | {100 * n['fraction']:.1f} % | "
                     f"{n['median']:g} / {n['scale']:g} | {n['p99.5']:.2f} |")
    lines += ["", "The scale ceiling: the true FLAIR (a perfect scale-free prediction) written with the scale each "
              "way gives a held-out subject (leave one subject out), scored under `volume` (the reference's "
              "intensity scale); under `scalefree` every row is perfect (> 150 dB, rounding only).", "",
              "| held out | way | written / true scale | volume PSNR dB |", "|---|---|---|---|"]
    lines += [f"| {x['held_out']} | {x['way']} | {x['gain_error']:.2f} | {x['volume_psnr']:.1f} |"
              for x in r["scale_ceiling"]]
    return lines + [""]


def real_mri_lines(r: dict, cmd: str) -> list[str]:
    """benchmarks/real_mri.py's section: per protocol the methods' means and per-fold PSNR, the paired differences
    with PHMDiff, the per-fold targets, the fold facts and the panels."""
    ours, s = r["ours"], r["summary"]
    folds = [f["held_out"] for f in r["folds"]]
    lines = [f"Leave one subject out over {', '.join(folds)} (`{r['data']}`); every method {r['budget_cpu_s']:g} CPU "
             f"seconds per fold and seed ({r['budget_clock']}); seeds {r['seeds']}; PHMDiff `{r['config']}` at "
             f"{r['size']} px ({r['fit']}), {ours} = the mean of {r['n_samples']} samples; flips "
             f"{'on' if r['flips'] else 'off'} for every method; U-Net lr among {r['unet_lrs']} and raw/EMA weights "
             f"chosen on an inner split of the training subjects (scale-free PSNR); no through-plane filter"
             f"{'' if r.get('ssim', True) else '; SSIM not computed'}. Copies and the ceiling need no training "
             f"(one score per fold). Paired differences per (fold, seed), 95 % bootstrap intervals resampling "
             f"folds. Load average {r['load_average_before'][0]:.2f} before, {r['load_average_after'][0]:.2f} "
             f"after. `{cmd}`", ""]
    if r.get("data_credit"):
        lines += [f"Scans: {r['data_credit']}.", ""]
    if r.get("left_out"):
        lines += ["Left out: " + "; ".join(f"{k} ({v})" for k, v in r["left_out"].items()) + ".", ""]
    for protocol, label in REAL_PROTOCOLS.items():
        p = s.get(protocol)
        if not p:
            continue
        lines += [f"**{label}**", "", "| method | PSNR dB (per fold) | SSIM | lesion PSNR dB | edema ratio | "
                  "hyperintensity PSNR dB | hyperintensity ratio |", "|---|---|---|---|---|---|---|"]
        for m, v in p["methods"].items():
            lines.append(f"| {m} | {v['psnr']:.2f} ({_fold_psnr(v)}) | {_num(v, 'ssim', 3)} | "
                         f"{_num(v, 'lesion_psnr')} | {_num(v, 'edema_ratio')} | {_num(v, 'hyper_psnr')} | "
                         f"{_num(v, 'hyper_ratio')} |")
        lines += ["", f"| {ours} minus | PSNR dB | lesion PSNR dB | edema ratio | hyperintensity PSNR dB |",
                  "|---|---|---|---|---|"]
        for other, c in p["comparisons"].items():
            name = f"best U-Net ({p['best_unet']})" if other == "best_unet" else other
            lines.append(f"| {name} | {_ci(c.get('psnr'))} | {_ci(c.get('lesion_psnr'))} | "
                         f"{_ci(c.get('edema_ratio'))} | {_ci(c.get('hyper_psnr'))} |")
        lines.append("")
    targets = s.get("fold_targets", {})
    if targets:
        lines += [f"Issue 35's targets per held-out fold ({ours}, scale-free; volume gap = scale-free - volume PSNR):",
                  "", "| held out | PSNR >= 20 | lesion PSNR >= 16 | edema ratio 0.85-1.15 | volume gap <= 2 dB |",
                  "|---|---|---|---|---|"]
        for f, t in targets.items():
            cells = [f"{t[k]['value']:.2f} {'met' if t[k]['met'] else '**missed**'}" if k in t else ""
                     for k in ("psnr", "lesion_psnr", "edema_ratio", "volume_gap")]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| held out | lesion region | voxels (foreground / lesion / edema) | hyperintensity Dice with the "
              "whole tumour | U-Net choice (validated on) | PHMDiff steps |", "|---|---|---|---|---|---|"]
    for f in r["folds"]:
        ref, sel = f["reference"], f["unet_selection"]
        dice = ref.get("hyperintensity_dice_wt")
        steps = ", ".join(str(x["steps"]) for x in f["runs"].get(ours, []))
        lines.append(f"| {f['held_out']} | {ref['lesion_region']} | {ref['foreground_voxels']} / "
                     f"{ref['lesion_voxels']} / {ref['edema_voxels']} | {'' if dice is None else f'{dice:.3f}'} | "
                     f"lr {sel['lr']:g}, {sel['weights']} ({sel['validation_subject']}) | {steps} |")
    lines.append("")
    for f in r["folds"]:
        panel = f.get("panel")
        if panel:
            link = panel[len("docs/"):] if panel.startswith("docs/") else panel
            lines += [f"![{f['held_out']} held out: T1, T2, real FLAIR, synthesized, error, std]({link})", ""]
    return lines
