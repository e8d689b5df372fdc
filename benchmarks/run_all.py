"""Run the benchmarks (speed, quality, ablation, sampling, memory, anytoany, realism, translate_speed,
local_ceiling) in order,
each in its own process, and write their JSON to benchmarks/results/. `make bench` calls this; `--quick` runs the
smoke-test sizes.

sampling.py reuses quality.py's PHMDiff run when it has two pyramid levels or more, else trains a brief one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import render_quality

HERE = Path(__file__).resolve().parent
SCRIPTS = ("speed", "quality", "ablation", "sampling", "memory", "anytoany", "realism", "translate_speed",
           "local_ceiling")
# Result files rendered into docs/benchmarks.md: each script's, quality.py's 10-minute run (--budget 600) and
# real_scale.py's and real_mri.py's (run alone: they need the real scans; real_mri.py hours)
RESULTS = (*SCRIPTS[:2], "quality_600", *SCRIPTS[2:], "real_scale", "real_mri")


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "met" if v else "**missed**"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.3e}"
    return str(v)


def _targets(rows: dict, command: str) -> list[str]:
    out = ["| target | measured | result | reproduce |", "|---|---|---|---|"]
    for name, t in rows.items():
        value = next(t[k] for k in t if k.startswith("value"))
        out.append(f"| {name}: {t['target']} | {_fmt(value)} | {_fmt(t['met'])} | `{command}` |")
    return out


def _met(value: float, target: str) -> bool:
    """A value against a target written as '<= x' or '>= x'."""
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def _speed_targets(r: dict, command: str) -> list[str]:
    """speed.py's targets on wall-time medians and on CPU-time medians (met or not on each: on a loaded machine
    wall time also counts the time others held the cores), and the older code's ratios (--before) when run."""
    out = ["| target | wall-time ratio | CPU-time ratio | before (wall, CPU) | result (wall, CPU) | reproduce |",
           "|---|---|---|---|---|---|"]
    rows = {(t["kind"], t["mask_ratio"], t["dtype"]): t for t in r["training"]}
    for name, t in r["targets"].items():
        cpu = t.get("value_cpu_time")
        peak = r["matmul_peak"]["bfloat16"].get("flops_per_s_cpu_median")
        if cpu is None and name.startswith("bf16_peak_fraction") and peak and "step_cpu_s" in rows[
                ("phmdiff", 0.0, "bf16")]:
            row = rows[("phmdiff", 0.0, "bf16")]
            cpu = row["flops_per_step"] / row["step_cpu_s"] / peak  # CPU-time FLOP/s over the CPU-time peak
        before = f"{_fmt(t['before'])}, {_fmt(t['before_cpu_time'])}" if "before" in t else ""
        rng = t.get("range_over_peak_repeats")
        value = _fmt(t["value"]) + (f" ({_fmt(rng[0])}-{_fmt(rng[1])})" if rng else "")
        result = _fmt(t["met"]) + ("" if cpu is None else f", {_fmt(_met(cpu, t['target']))}")
        out.append(f"| {name}: {t['target']} | {value} | {'' if cpu is None else _fmt(cpu)} | {before} | "
                   f"{result} | `{command}` |")
    return out


def _gpu_check(results_dir: Path) -> list[str]:
    """benchmarks/gpu_check.sh's JSON, or the sentence that it was not run."""
    path = results_dir / "gpu_check.json"
    if not path.exists():
        return ["`benchmarks/gpu_check.sh`: **not run** (no GPU was lent to this session); its `--device cpu "
                "--quick` mode is tested (`tests/test_gpu_check.py`)."]
    g = json.loads(path.read_text())
    lines = [f"`benchmarks/gpu_check.sh` on {g['machine'].get('device_name', g['device'])} ({g['wall_s']:.0f} s): "
             f"CUDA-only tests {g['cuda_tests'].get('summary', g['cuda_tests'].get('skipped'))}; bf16 peak "
             f"{g['bf16_peak']['flops_per_s_median'] / 1e12:.0f} TFLOP/s.", "",
             "| model | compiled | mask ratio | step ms | % bf16 peak (range) | peak GB |", "|---|---|---|---|---|---|"]
    for t in g["training"]:
        if "skipped" in t:
            lines.append(f"| {t['model']} | {t['compiled']} | | skipped: {t['skipped']} | | |")
            continue
        mem = t.get("peak_memory_bytes")
        lines.append(f"| {t['model']} | {t['compiled']} | {t['mask_ratio']} | {t['step_s'] * 1e3:.1f} | "
                     f"{100 * t['fraction_of_bf16_peak']:.1f} ({100 * t['fraction_range'][0]:.1f}-"
                     f"{100 * t['fraction_range'][1]:.1f}) | {'' if mem is None else f'{mem / 2**30:.2f}'} |")
    tr = g["translate"]
    lines += ["", f"Translate {'x'.join(map(str, tr['volume']))} ({tr['model']}, {tr['weights']}): " + ", ".join(
        f"{k.split('_')[1]} sample(s) {v:.1f} s" for k, v in tr.items() if k.startswith("seconds_")) + "."]
    return lines


def _command(recorded: str) -> str:
    """A recorded command as run from the repository root, whatever folder the recorded run was in."""
    cmd = recorded.replace("python3 ", "python ").split(" --out-dir")[0]
    return re.sub(r"\S*/(benchmarks/\w+\.py)", r"\1", cmd)


def markdown(results_dir: Path, figures_root: Path | None = None) -> str:
    """Tables for docs/benchmarks.md, read from the result JSON files only (nothing typed by hand); with
    `figures_root` (the repository) the learning-curve figures are drawn into its docs/images and linked."""
    figures = render_quality.learning_curves(results_dir, figures_root) if figures_root else {}
    lines = []
    extra = sorted(p.stem for p in Path(results_dir).glob("quality_*.json") if p.stem not in RESULTS)
    names = [*RESULTS[:2], *extra, *RESULTS[2:]]
    drawn: set[str] = set()  # each task's learning curve once, under its first table
    for name in names:
        path = results_dir / f"{name}.json"
        if not path.exists():
            script = "quality.py --budgets 600" if name == "quality_600" else f"{name}.py"
            lines += [f"### {name}", "", f"No result yet: run `python benchmarks/{script}`.", ""]
            continue
        data = json.loads(path.read_text())
        r, m = data["results"], data["machine"]
        cmd = _command(data["command"])
        lines += [f"### {name}", "", f"{data['date']}, commit `{data['git_commit'][:12]}`, {m['cpu_model']}, "
                  f"{m['cores']} cores ({r.get('threads', m['torch_threads'])} threads), torch {m['torch_version']}, "
                  f"load average {', '.join(f'{x:.1f}' for x in m.get('load_average', []))} (shared machine).", ""]
        if data.get("note"):  # how the recorded run was made, where it differs from the command shown
            lines += [f"Note: {data['note'].rstrip('.')}.", ""]
        if name == "speed":
            lines += _speed_targets(r, cmd) + [""]
            lines += ["| model | mask ratio | dtype | step s (median, IQR) | CPU s | GFLOP/step | achieved GFLOP/s | "
                      "% fp32 peak | % bf16 peak | peak RSS GB |", "|---|---|---|---|---|---|---|---|---|---|"]
            for t in r["training"]:
                mem = t.get("memory", {}).get("peak_rss_bytes")
                cpu = t.get("step_cpu_s")
                lines.append(f"| {t['kind']} | {t['mask_ratio']} | {t['dtype']} | {t['step_s']:.3f} "
                             f"({t['step_iqr_s']:.3f}) | {'' if cpu is None else f'{cpu:.3f}'} | "
                             f"{t['flops_per_step'] / 1e9:.1f} | "
                             f"{t['achieved_flops_per_s'] / 1e9:.1f} | "
                             f"{100 * t['fraction_of_float32_peak']:.1f} | "
                             f"{100 * t['fraction_of_bfloat16_peak']:.1f} | "
                             f"{'' if mem is None else f'{mem / 2**30:.2f}'} |")
            pk = r["matmul_peak"]
            spread = {k: (f" (repeats {v['flops_per_s_worst'] / 1e9:.0f}-{v['flops_per_s_best'] / 1e9:.0f})"
                          if "flops_per_s_worst" in v else "") for k, v in pk.items()}
            lines += ["", f"Matmul peak ({pk['float32']['size']}^2): fp32 "
                      f"{pk['float32']['flops_per_s_median'] / 1e9:.0f} GFLOP/s{spread['float32']}, bf16 "
                      f"{pk['bfloat16']['flops_per_s_median'] / 1e9:.0f} GFLOP/s{spread['bfloat16']} "
                      "(medians; the range is the worst and best repeat).", "",
                      "| sampler | steps | NFE | s per batch | slices/s |", "|---|---|---|---|---|"]
            lines += [f"| {x['sampler']} | {x['steps']} | {x['nfe']:g} | {x['seconds']:.3f} | "
                      f"{x['slices_per_s']:.2f} |" for x in r["sampling"]]
            lines += ["", f"GPU: {r['gpu_section']}.", ""] + _gpu_check(results_dir)
        elif name.startswith("quality") and render_quality.is_protocol(r):
            lines += render_quality.quality_lines(r, cmd, {t: f for t, f in figures.items() if t not in drawn})
            drawn |= {t["task"] for t in r["tasks"]}
        elif name == "ablation" and render_quality.is_protocol(r):
            lines += render_quality.ablation_lines(r, cmd)
        elif name == "real_mri":
            lines += render_quality.real_mri_lines(r, cmd)
        elif name == "real_scale":
            lines += render_quality.real_scale_lines(r, cmd)
        elif name.startswith("quality"):
            for task in r["tasks"]:
                # A task merged in from another run of the script carries that run's date, commit and command
                run = task.get("run")
                where = f"; run of {run['date']}, commit `{run['git_commit'][:12]}`" if run else ""
                lines += [f"**{task['task']}** ({' + '.join(task['sources'])} -> {task['target']}; held out: "
                          f"{', '.join(task['test_subjects'])}; budget {r['budget_s_per_method_per_task']:g} s{where})",
                          ""]
                lines += _targets(task["targets"], _command(run["command"]) if run else cmd) + [""]
                lines += ["| method | PSNR dB | SSIM | lesion PSNR dB | MAE | NFE | s/volume | train s |",
                          "|---|---|---|---|---|---|---|---|"]
                for k, v in task["methods"].items():
                    train, lesion = v.get("train_seconds"), v.get("lesion_psnr")
                    lines.append(f"| {k} | {v['psnr']:.2f} +- {v['std']['psnr']:.2f} | {v['ssim']:.4f} | "
                                 f"{'' if lesion is None else f'{lesion:.2f}'} | "
                                 f"{v['mae']:.4g} {(v.get('subjects') or [{}])[0].get('mae_units', '')} | {v['nfe']} | "
                                 f"{v.get('seconds_per_volume', 0.0):.2f} | "
                                 f"{'' if train is None else f'{train:.0f}'} |")
                lines.append("")
        elif name == "ablation":
            lines += [f"Budget {r['budget_s_per_variant']:g} s per variant, mean of {r['n_samples']} samples. `{cmd}`",
                      "", "| task | variant | PSNR dB | SSIM | lesion PSNR dB | 1-sample PSNR | steps | "
                      "pipeline ceiling dB |", "|---|---|---|---|---|---|---|---|"]
            for x in r["rows"]:
                lesion = "" if x["lesion_psnr"] is None else f"{x['lesion_psnr']:.2f}"
                lines.append(f"| {x['task']} | {x['variant']} | {x['psnr']:.2f} | {x['ssim']:.4f} | {lesion} | "
                             f"{x['single_psnr']:.2f} | {x['diffusion_steps']} | {x['pipeline_ceiling_psnr']:.2f} |")
        elif name == "sampling":
            lines += _targets({"sampling": r["target"]}, cmd) + [""]
            lines += ["| curve | best PSNR dB | fewest NFE within 0.1 dB | its PSNR |", "|---|---|---|---|"]
            for k, v in r["fewest_nfe_within_0.1db"].items():
                lines.append(f"| {k} ({v['curve']}) | {v['best_psnr']:.2f} | {v['nfe']} | {v['psnr']:.2f} |")
            lines += ["", "| curve | steps (coarse, fine) | NFE | PSNR dB | spread / error |", "|---|---|---|---|---|"]
            lines += [f"| {x['curve']} | {x['num_steps']}, {x['fine_num_steps']} | {x['nfe']} | {x['psnr']:.2f} | "
                      f"{x.get('spread_error_ratio', float('nan')):.2f} |" for x in r["rows"]]
        elif name == "memory":
            lines += _targets({"memory": r["target"]}, cmd) + [""]
            lines += ["| command | peak RSS GB | seconds |", "|---|---|---|"]
            for k in ("prepare", "translate"):
                lines.append(f"| phmdiff {k} ({'x'.join(map(str, r['volume_shape']))}) | "
                             f"{r[k]['peak_rss_bytes'] / 2**30:.2f} | {r[k]['seconds']:.0f} |")
            lines += ["", "Translate estimate per backbone (measured RSS with "
                      f"{r['model']}, minus its weights, plus each preset's fp32 weights): "
                      + ", ".join(f"{k} {v / 2**30:.2f} GB"
                                  for k, v in r["translate_estimate_by_backbone_bytes"].items()) + "."]
        elif name == "anytoany":
            per = r.get("budget_steps_per_dedicated_model")
            budget = (f"{3 * per} steps against a dedicated model per direction trained {per} steps" if per else
                      f"{r['budget_s_anytoany']:g} s against a dedicated model per direction trained "
                      f"{r['budget_s_per_dedicated_model']:g} s")
            lines += [f"One any-to-any model trained {budget} each; mean of {r['n_samples']} "
                      f"samples, held out: {', '.join(r['directions'][0]['test_subjects'])}. `{cmd}`", "",
                      "| direction | model | PSNR dB | SSIM | lesion PSNR dB | steps | train s | train CPU s |",
                      "|---|---|---|---|---|---|---|---|"]
            for d in r["directions"]:
                for k, v in d["methods"].items():
                    steps, train, cpu = v.get("diffusion_steps", ""), v.get("train_seconds"), v.get("train_cpu_seconds")
                    lesion = v.get("lesion_psnr")
                    lines.append(f"| {d['task']} | {k} | {v['psnr']:.2f} +- {v['std']['psnr']:.2f} | "
                                 f"{v['ssim']:.4f} | {'' if lesion is None else f'{lesion:.2f}'} | {steps} | "
                                 f"{'' if train is None else f'{train:.0f}'} | {'' if cpu is None else f'{cpu:.0f}'} |")
        elif name == "realism":
            lines += [f"Unconditional {r['target']} on {'x'.join(map(str, r['plane']))} phantom slices: "
                      f"{r['n_samples']} samples per method against {r['n_heldout_slices']} held-out real slices, "
                      f"budget {r['budget_s_per_method']:g} CPU seconds of training per method "
                      f"({r['threads']} thread).", ""]
            lines += _targets(r["targets"], cmd) + [""]
            tissues = list(next(iter(r["methods"].values()))["tissue_hist_parts"])
            lines += ["| method | MS-SWD x1e3 | tissue histogram W1 | " + " | ".join(tissues)
                      + " | train samples/CPU s | train steps | train CPU s | train wall s |",
                      "|---" * (7 + len(tissues)) + "|"]
            for k, v in r["methods"].items():
                steps, sps = v.get("diffusion_steps", ""), v.get("train_samples_per_cpu_s")
                secs = f"{v.get('train_cpu_seconds', 0):.0f} | {v.get('train_seconds', 0):.0f}"
                lines.append(f"| {k} | {v['ms_swd']:.1f} | {v['tissue_hist']:.4f} | "
                             + " | ".join(f"{v['tissue_hist_parts'][t]:.4f}" for t in tissues)
                             + f" | {'' if sps is None else f'{sps:.2f}'} | {steps} | {secs} |")
        elif name == "translate_speed":
            if "targets" in r:
                lines += _targets(r["targets"], cmd) + [""]
            lines += [f"One {'x'.join(map(str, r['volume']))} volume, {r['threads']} threads: "
                      f"{r['note']}.", "", "| model | code | samples | slices measured | plane predicted | "
                      "s per volume | CPU s | peak RSS GB | speed-up over per-sample |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for x in r["rows"]:
                up = x.get("speedup_over_per_sample")
                lines.append(f"| {x['preset']} | {x['variant']} | {x.get('samples', r['samples'])} | "
                             f"{x['slices_measured']} | {'x'.join(map(str, x['plane_predicted']))} | "
                             f"{x['volume_seconds']:.0f} | {x['volume_cpu_seconds']:.0f} | {x['peak_rss_gb']:.2f} | "
                             f"{'' if up is None else f'{up:.2f}'} |")
            if "bf16_psnr" in r:
                b = r["bf16_psnr"]
                lines += ["", f"bf16 against fp32 on a trained run ({b.get('samples', 1)} sample(s)): "
                          f"{b['bf16']['psnr']:.3f} vs {b['fp32']['psnr']:.3f} dB ({b['delta_db']:+.3f} dB)."]
        elif name == "local_ceiling":
            lines += local_ceiling_lines(r, cmd)
        lines.append("")
    return "\n".join(lines)


def _ci(v: dict, key: str) -> str:
    ci = v.get(f"{key}_ci")
    return f"{v[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def local_ceiling_lines(r: dict, cmd: str) -> list[str]:
    """The voxel-wise bound per phantom (bin mean; the context MLPs when run), with intervals over subjects."""
    if "confusers" in r["grids"][0]:  # the former format (MLP and bin-share statistic): rerun to render
        return [f"Result in the former format; rerun `{cmd}`."]
    lines = [f"The voxel-wise best predictor: the mean noisy FLAIR per fine (T1, T2) bin ({r['bins']} x {r['bins']} "
             "over each subject's noise-free T1 and T2 in units of its foreground median), fitted on the training "
             "subjects; scored there (seen data: an upper bound) and on held-out ones (volume protocol; 95 % "
             f"bootstrap intervals over subjects). `{cmd}`", "",
             "| phantom | grid | predictor | train PSNR dB | train lesion PSNR dB | test PSNR dB | "
             "test lesion PSNR dB | test edema ratio |", "|---|---|---|---|---|---|---|---|"]
    for g in r["grids"]:
        rows = [("bin mean", g["bin_mean"]), *((f"MLP, {k}", v) for k, v in g.get("features", {}).items())]
        for label, v in rows:
            edema = f"{v['test']['ratio_edema']:.2f}" if "ratio_edema" in v["test"] else ""
            lines.append(f"| {g.get('phantom', 'default')} | {'x'.join(map(str, g['shape']))} | {label} | "
                         f"{v['train']['psnr']:.2f} | {v['train']['lesion_psnr']:.2f} | {_ci(v['test'], 'psnr')} | "
                         f"{_ci(v['test'], 'lesion_psnr')} | {edema} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each on 2 cores)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--markdown", action="store_true", help="print the docs tables from the result JSON and exit")
    args, rest = p.parse_known_args(argv)
    if args.markdown:
        print(markdown(Path(args.out_dir) if args.out_dir else HERE / "results", HERE.parent))
        return 0
    failed = []
    for name in [s for s in SCRIPTS if s in args.only]:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else []),
               *(["--out-dir", args.out_dir] if args.out_dir else []), *rest]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        tic = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {name}: exit {rc} after {time.perf_counter() - tic:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
