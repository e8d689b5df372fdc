"""Shared benchmark helpers: machine description, result JSON, robust statistics, interleaved timing and the
matmul peak that achieved FLOP/s are compared with.

Timing follows the usual rules for noisy shared machines: warm-up calls first, then `repeats` rounds in which
every variant runs once, in turn, so that a burst of load from another process slows all variants alike;
medians and inter-quartile ranges instead of means.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))  # a fresh clone runs the scripts without installing


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The commit the benchmark ran at, with '+dirty' when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        # The result files themselves do not count: run_all's later scripts see the earlier ones' results.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(device: str = "cpu") -> dict:
    """What ran the benchmark: CPU model, cores, threads, torch version and accelerator name."""
    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = info["cpu_model"]
    try:
        info["load_average"] = list(os.getloadavg())  # the machine is shared: say how busy it was
    except OSError:
        pass
    return info


def _relative(script: str) -> str:
    """A script path as run from the repository root (what a reader types), when it lies inside it."""
    path = Path(script).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else script


def write_result(name: str, results: dict, device: str = "cpu", out_dir: str | Path | None = None) -> Path:
    """Write benchmarks/results/NAME.json with the machine, date, git commit and command line beside `results`."""
    from phmdiff.fsutil import atomic_write_text

    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(device),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": git_commit(), "command": " ".join([Path(sys.executable).name, _relative(sys.argv[0]),
                                                                *sys.argv[1:]]),
               "results": results}
    path = out_dir / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=1, default=float) + "\n")
    return path


def median_iqr(values) -> dict:
    """Median and inter-quartile range (q75 - q25, inclusive method) of a list of numbers."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("median_iqr needs at least one value, got an empty list.")
    if len(values) == 1:
        return {"median": values[0], "iqr": 0.0, "n": 1}
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "iqr": q3 - q1, "n": len(values)}


def synchronize(device: str | torch.device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(variants: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     device: str = "cpu", min_seconds: float = 0.0,
                     progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Seconds per call of each variant: `warmup` untimed calls each, then `repeats` rounds of one call each.

    Within a round the variants run one after the other (the order rotates every round), so machine noise is
    spread over all of them. Returns {name: median_iqr(seconds) + "times"}; stops early after `min_seconds`
    of total timing only once at least three rounds are in. `progress` gets a line after the warm-up and after
    every round.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
        synchronize(device)
    if progress:
        progress(f"warm-up of {len(names)} variants done")
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            synchronize(device)
            tic, cpu_tic = time.perf_counter(), time.process_time()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - tic)
            cpu[name].append(time.process_time() - cpu_tic)
        if progress:
            progress(f"round {r + 1}/{repeats} done ({sum(t[-1] for t in times.values()):.0f} s per round)")
        if min_seconds and r >= 2 and time.perf_counter() - start > min_seconds:
            break
    # CPU time (all threads of this process) beside wall time: on a shared machine wall time also counts the
    # time other processes held the cores, CPU time much less so.
    return {name: {**median_iqr(t), "times": t, "cpu_median": median_iqr(cpu[name])["median"], "cpu_times": cpu[name]}
            for name, t in times.items()}


def matmul_peak(dtypes=(torch.float32, torch.bfloat16), size: int = 2048, repeats: int = 5,
                device: str = "cpu") -> dict[str, dict]:
    """Measured matmul throughput (FLOP/s, 2 n^3 per product) of large square products per dtype.

    This is the practical peak a training step is compared with; the best repeat is reported beside the
    median because the peak is what the hardware can do when nothing else is running.
    """
    out = {}
    gen = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        stats = time_interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, repeats=repeats, warmup=2,
                                 device=device)["mm"]
        flops = 2.0 * size**3
        out[str(dtype).replace("torch.", "")] = {
            "size": size, "flops_per_s_median": flops / stats["median"],
            "flops_per_s_best": flops / min(stats["times"]), "seconds_median": stats["median"],
            "seconds_iqr": stats["iqr"]}
    return out


def peak_rss_child(argv: list[str], env: dict | None = None, cwd: str | Path | None = None,
                   timeout: float | None = None) -> dict:
    """Run `argv` in a child process and return its peak resident memory (ru_maxrss of the waited child).

    Each measurement gets its own process, so memory freed by an earlier step cannot hide a later peak.
    """
    code = ("import resource, subprocess, sys, json, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'rc': p.returncode, 'maxrss_kb': ru.ru_maxrss, 'seconds': time.perf_counter() - t,"
            " 'stderr_tail': p.stderr[-2000:]}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed to run {argv}: {proc.stderr[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_rss_bytes"] = int(out.pop("maxrss_kb")) * 1024  # Linux reports kilobytes
    return out


def budget_pacer(t, budget_s: float, clock: Callable[[], float] = time.perf_counter, origin: float | None = None,
                 finetune_share: float = 0.1, probe: int = 5):
    """A training loop `after_step` hook that fits the run into `budget_s` seconds of `clock`, counted from
    `origin` (default: the end of the first step, which carries one-off costs), and the dict it fills with
    "used" (clock seconds since the first step) and "steps" (steps since it).

    The loop re-reads `t.max_num_steps` (the train config `t`): after `probe` steps it is set from the pace so
    far, then re-set every step at the pace of the latest half of the steps until the run's tail begins (its
    unmasked `finetune_share` of the steps, MaskDiT's, and its learning-rate cool-down), so a machine that slows
    down mid-run still gets the tail it planned; past the budget the run stops at the next step, which saves the
    checkpoint."""
    from phmdiff.training.schedules import cooldown_steps

    t.max_num_steps, t.unmasked_finetune_steps = 10**9, 0
    mark: dict = {}
    times: list[float] = []  # the clock after each step

    def after_step(step, model, accelerator):
        now = clock()
        times.append(now)
        if step == 1:
            mark["first"] = now
            mark.setdefault("origin", now if origin is None else origin)
            return
        mark["used"], mark["steps"] = now - mark["first"], step - 1
        left = budget_s - (now - mark["origin"])
        tail = max(t.unmasked_finetune_steps, cooldown_steps(t.max_num_steps, t.lr_cooldown))
        if step > probe and step + 1 < t.max_num_steps - tail:
            half = (step - 1) // 2  # steps in the latest half
            pace = (now - times[-1 - half]) / half
            t.max_num_steps = max(step + 1, step + int(left / pace))
            t.unmasked_finetune_steps = int(finetune_share * t.max_num_steps)
        elif left < 0 and t.max_num_steps > step + 1:
            t.max_num_steps = step + 1

    return after_step, mark


def set_threads(n: int | None) -> int:
    """Use `n` intra-op threads (default: all cores); benchmarks only, never the library."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned text table on stdout."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def test_subjects(phantom_root: str | Path, prepared_dir: str | Path, sources: list[str], split: str = "test"):
    """The held-out subjects of a prepared folder, as reader Subjects with all `sources`."""
    from phmdiff.data.prepare import load_manifest
    from phmdiff.data.readers import find_subjects

    manifest = load_manifest(prepared_dir)
    ids = {sid for sid, s in manifest["split"].items() if s == split}
    subjects = [s for s in find_subjects(phantom_root) if s.id in ids and all(m in s.paths for m in sources)]
    if not subjects:
        raise ValueError(f"{prepared_dir}: no {split} subject with modalities {sources} under {phantom_root}.")
    return sorted(subjects, key=lambda s: s.id)


def slicewise_inputs(prepared_dir: str | Path, subject, sources: list[str], target: str, volumes: dict | None = None,
                     affine: np.ndarray | None = None) -> tuple[np.ndarray, object, object]:
    """One subject's centre source slices (n, n_src, H, W) in [0, 1], as translate's per-volume functions make them
    with a prepared folder's settings, their slice spec and the target's intensity map (translate's own).

    `volumes` ({modality: array}) and `affine`: the subject's sources already read (default: read here). The
    three are what `slicewise_volume` needs, so a subject's slices are made once for any number of predictors.
    """
    from phmdiff.data.prepare import gain_ratios, load_manifest, reference_norm, settings_from_manifest
    from phmdiff.data.volume import VolumeSettings, load_subject_volumes, volume_to_slices
    from phmdiff.pipeline import target_norm_for

    manifest = load_manifest(prepared_dir)
    settings = VolumeSettings.from_dict({**settings_from_manifest(manifest).__dict__, "modalities": sources})
    reference, ratios = reference_norm(manifest, target), gain_ratios(manifest, target, sources)
    if volumes is None:
        volumes, affine, _ = load_subject_volumes(subject, sources)
    slices, spec = volume_to_slices({m: volumes[m] for m in sources}, affine, settings)
    src = slices[:, spec.context :: 2 * spec.context + 1]  # centre slice of each source (n, n_src, H, W)
    norm = target_norm_for(settings, target, sources, spec.norm, reference, ratios)  # translate's own map
    return np.ascontiguousarray(src, dtype=np.float32), spec, norm


def slicewise_volume(predict, src: np.ndarray, spec, norm, subject_id: str, target: str, seed: int = 0) -> np.ndarray:
    """`predict(src, seeds)` on `slicewise_inputs`' slices, put back into a volume on the input's grid and units."""
    from phmdiff.data.volume import slices_to_volume
    from phmdiff.pipeline import subject_seed

    seeds = [subject_seed(seed, subject_id, 0, int(i)) for i in spec.indices]
    return slices_to_volume(predict(src, seeds), spec, target, norm=norm)


def apply_slicewise(predict, prepared_dir: str | Path, subjects, sources: list[str], target: str,
                    out_dir: str | Path, seed: int = 0) -> list[dict]:
    """Apply a slice predictor to whole volumes with the per-volume functions `phmdiff translate` uses.

    `predict(src (n, n_src, H, W) in [0, 1], seeds list[int]) -> (n, H, W) in [0, 1]`. Each subject's
    prediction is written as OUT/<id>/<id>_<target>.nii.gz on the input's grid and in its units; returns
    one row per subject with the prediction path and the seconds it took.
    """
    from phmdiff.data.volume import write_like

    rows = []
    for sub in subjects:
        tic = time.perf_counter()
        src, spec, norm = slicewise_inputs(prepared_dir, sub, sources, target)
        path = Path(out_dir) / sub.id / f"{sub.id}_{target}.nii.gz"
        write_like(slicewise_volume(predict, src, spec, norm, sub.id, target, seed), sub.paths[sources[0]], path)
        rows.append({"subject": sub.id, "prediction": str(path), "seconds": time.perf_counter() - tic})
    return rows
