"""The run part of `phmdiff report`: training curves in a few large panels, the resolved config and the
autoencoder's quality, read from a run folder (`log.csv`, `config.yaml`, `autoencoder_report.json`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phmdiff.eval.html import e, num, q, save_figure  # noqa: E402
from phmdiff.schema import check_autoencoder_report, read_json

# Log columns that are not losses: drawn in their own panels, or not at all.
_VALIDATION = ("val_psnr", "val_ssim")
_SCHEDULE = ("lr", "mask_ratio")
_SPEED = ("sec_per_step",)
_SKIP = ("kimg", "nonfinite_total")
_LABELS = {"val_psnr": "validation PSNR (dB)", "val_ssim": "validation SSIM (0-1)", "lr": "learning rate",
           "mask_ratio": "mask ratio (fraction of tokens)"}


def _read_log(log: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{log}: expected a CSV log with a 'step' column.")
    steps = np.array([num(r["step"]) for r in rows])
    columns = {c: np.array([num(r.get(c)) for r in rows]) for c in rows[0] if c != "step"}
    return steps, {c: v for c, v in columns.items() if np.isfinite(v).any()}


def _plot(ax, steps, values, label, color=None):
    ok = np.isfinite(values)
    ax.plot(steps[ok], values[ok], "-" if ok.sum() > 20 else "o-", label=label, linewidth=1.6, markersize=4,
            color=color)


def training_curves(log: Path, img_dir: Path) -> str:
    """Four large panels: losses (log scale when all positive), validation scores, schedule, speed."""
    steps, cols = _read_log(log)
    losses = [c for c in cols if c not in (*_VALIDATION, *_SCHEDULE, *_SPEED, *_SKIP)]
    panels = [("Training losses", losses, None), ("Validation", [c for c in _VALIDATION if c in cols], None),
              ("Schedule", [c for c in _SCHEDULE if c in cols], None),
              ("Speed", [c for c in _SPEED if c in cols], "seconds per step")]
    panels = [p for p in panels if p[1]]
    nrows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(nrows, 2 if len(panels) > 1 else 1, figsize=(15, 4.6 * nrows), squeeze=False)
    plt.rcParams.update({"font.size": 12})
    for ax, (title, names, ylabel) in zip(axes.flat, panels):
        if title in ("Validation", "Schedule"):  # two quantities on two scales: a left and a right axis
            left, right_name = names[0], names[1] if len(names) > 1 else None
            _plot(ax, steps, cols[left], left)
            ax.set_ylabel(_LABELS.get(left, left))
            if right_name:
                right = ax.twinx()
                _plot(right, steps, cols[right_name], right_name, color="C1")
                right.set_ylabel(_LABELS.get(right_name, right_name))
                right.legend(loc="lower right", fontsize=11)
        else:
            values = np.concatenate([cols[n][np.isfinite(cols[n]) & (cols[n] != 0)] for n in names])
            log = values.size > 0 and values.min() > 0 and values.max() / values.min() > 5
            for name in names:
                v = cols[name].copy()
                if log:
                    v[v == 0] = np.nan  # a term switched off (e.g. the masked loss in the unmasked fine-tune)
                _plot(ax, steps, v, name)
            if log:
                ax.set_yscale("log")
                title += " (log scale; zero values, terms switched off, not drawn)"
            ax.set_ylabel(ylabel or ("loss" if title.startswith("Training") else "value"))
        ax.set_title(title, fontsize=14)
        ax.set_xlabel("training step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=11)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    src = save_figure(fig, img_dir, "training.png", dpi=90)
    bad = cols.get("nonfinite_total")
    note = ""
    if bad is not None and np.nanmax(bad) > 0:
        note = f"<p>Non-finite losses skipped during training: {q(np.nanmax(bad), 'steps', '.0f')}.</p>"
    last = int(np.nanmax(steps)) if steps.size else 0
    return (f"<h2>Training curves</h2><p>{q(len(steps), 'log rows', '.0f')} up to step "
            f"{q(last, 'steps', '.0f')}.</p>{note}<img src=\"{src}\" alt=\"training curves\">")


def resolved_config(run: Path) -> str:
    path = run / "config.yaml"
    if not path.is_file():
        return "<h2>Resolved config</h2><p>No config.yaml in the run folder.</p>"
    return (f"<h2>Resolved config</h2><details open><summary>{e(path.name)}</summary>"
            f"<pre class='verbatim'>{e(path.read_text())}</pre></details>")


def autoencoder_quality(run: Path) -> str:
    path = run / "autoencoder_report.json"
    if not path.is_file():
        return "<h2>Autoencoder quality</h2><p>No autoencoder_report.json in the run folder (train-ae writes it).</p>"
    rep = read_json(path, check_autoencoder_report)
    identity = rep.get("preset") == "identity"

    def metric(key, unit, fmt):
        value = rep.get(key)
        if value is None:
            return "<td class='blank'>not recorded</td>"
        if isinstance(value, float) and math.isinf(value):
            why = "lossless: identity autoencoder" if identity else "lossless"
            return f"<td data-unit='{unit}'>&infin; {unit} ({why})</td>"
        spread = rep.get(f"{key}_std")
        text = f"{value:{fmt}}" + (f" &plusmn; {spread:{fmt}}" if isinstance(spread, (int, float)) else "")
        return f"<td data-unit='{unit}'>{text} {unit}</td>"

    cells = [("preset", f"<td>{e(rep.get('preset', '?'))}</td>"),
             ("reconstruction PSNR", metric("psnr", "dB", ".2f")),
             ("reconstruction SSIM", metric("ssim", "(0-1)", ".4f")),
             ("slices scored", f"<td data-unit='slices'>{q(rep.get('n', 0), 'slices', '.0f')} "
                               f"({e(rep.get('split', '?'))} split)</td>"),
             ("training", f"<td data-unit='steps'>{q(rep.get('steps', 0), 'steps', '.0f')}, "
                          f"{q(rep.get('seconds', 0.0), 's', '.0f')}</td>"),
             ("latent scale", f"<td data-unit='x'>{q(rep.get('latent_scale', math.nan), 'x (1/std of latents)', '.4g')}"
                              "</td>"),
             ("quality gate", f"<td>{e(rep.get('quality_gate', 'not recorded'))}</td>")]
    rows = "".join(f"<tr><th>{name}</th>{cell}</tr>" for name, cell in cells)
    return ("<h2>Autoencoder quality</h2><p>Reconstruction of held-out slices through encoder and decoder (the "
            "ceiling the autoencoder puts on every synthesis).</p>"
            f"<table id='autoencoder'>{rows}</table>")
