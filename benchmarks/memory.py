"""Peak resident memory of `phmdiff prepare` and `phmdiff translate` on one 240x240x155 phantom volume, each
measured as ru_maxrss of its own child process (so nothing an earlier step freed can hide a later peak).

The translate run is a briefly trained PHMDiff with the BraTS240 geometry (slices padded to 256, KL-f8
autoencoder, 32x32x4 latents, 3-level pyramid); its autoencoder is narrow (32 channels at every level) and its
backbone defaults to PHMDiff-T/2 so the CPU run takes minutes; the weights of bigger backbones are added
analytically (4 bytes per parameter) beside it.

    python benchmarks/memory.py            # 240x240x155
    python benchmarks/memory.py --quick    # 64x64x40, tiny autoencoder (smoke test)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
from common import ROOT, peak_rss_child, print_table, set_threads, write_result

TARGET_TRANSLATE_BYTES = 3 * 1024**3
GB = 1024**3


def phmdiff_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "phmdiff", *args]


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def backbone_weight_bytes() -> dict:
    """fp32 parameter bytes of every PHMDiff preset with the BraTS240 conditioning (2 sources, coarse input)."""
    import torch

    from phmdiff.masked_dit import PHMDiff_models

    out = {}
    for name, build in PHMDiff_models.items():
        with torch.device("meta"):
            model = build(input_size=32, latent_channels=4, num_sources=2)
        out[name] = 4 * sum(p.numel() for p in model.parameters())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64x64x40 volume, tiny autoencoder (smoke test)")
    p.add_argument("--model", default="PHMDiff-T/2", help="backbone of the translate run")
    p.add_argument("--steps", type=int, default=4, help="sampling steps of the translate run (memory, not quality)")
    p.add_argument("--batch-size", type=int, default=16, help="translate --batch-size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=None)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    threads = set_threads(args.threads or (1 if args.quick else None))
    work = Path(args.work or Path("bench_out") / ("memory_quick" if args.quick else "memory"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shape = (64, 64, 40) if args.quick else (240, 240, 155)
    size, preset, in_size = (64, "tiny", 16) if args.quick else (256, "f8", 32)
    # A narrow autoencoder of the same geometry: the full-width f8 needs about an hour of this CPU to encode
    # the two volumes, which only the memory of its activations would repay.
    channels = (32, 32, 64) if args.quick else (32, 32, 32, 32)
    tic = time.perf_counter()

    from phmdiff.config import load_config
    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    # Two subjects (one trains, one validates); the volume measured is the first one.
    write_phantom(work / "phantom", "brain", n_subjects=2, shape=shape, seed=0)
    subject = sorted(d for d in (work / "phantom").iterdir() if d.is_dir())[0]
    env = child_env(threads)
    prepare = peak_rss_child(phmdiff_cli("prepare", str(work / "phantom"), str(work / "prepared"), "--modalities",
                                         "t1", "t2", "flair", "--size", str(size), "--split", "0.5", "0.5", "0"),
                             env=env, cwd=ROOT)
    if prepare["rc"] != 0:
        raise RuntimeError(f"phmdiff prepare failed: {prepare['stderr_tail']}")

    # configs/BraTS240.yaml with a small backbone and two training steps: a valid run of the real geometry.
    cfg = load_config(ROOT / "configs" / "BraTS240.yaml", [
        f"data.root={work / 'phantom'}", f"data.prepared={work / 'prepared'}", f"data.cache={work / 'latents'}",
        f"log.run_dir={work / 'run'}", f"data.resolution={size}", f"model.in_size={in_size}",
        f"model.model_type={args.model}", f"model.autoencoder.preset={preset}", "data.num_workers=0",
        f"model.autoencoder.channels=[{','.join(map(str, channels))}]",
        "model.autoencoder.steps=2", "model.autoencoder.batchsize=4", "train.batchsize=4", "train.max_num_steps=2",
        "train.unmasked_finetune_steps=0", "train.amp=no", "train.device=cpu", "eval.every=0",
        "log.tensorboard=false", "data.val_fraction=0.5", "data.test_fraction=0.0",
        # --quick's 2x2-token coarsest grid leaves the cross-granularity MMD nothing to compare.
        *(["model.cross_granularity_weight=0"] if args.quick else [])])
    run_pipeline(cfg, stages=("train-ae", "encode", "train"), progress=False, log=lambda *_: None)

    translate = peak_rss_child(phmdiff_cli("translate", "--run", str(work / "run"), "--input", str(subject),
                                           "--out", str(work / "translate"), "--steps", str(args.steps),
                                           "--batch-size", str(args.batch_size), "--device", "cpu"),
                               env=env, cwd=ROOT)
    if translate["rc"] != 0:
        raise RuntimeError(f"phmdiff translate failed: {translate['stderr_tail']}")
    weights = backbone_weight_bytes()
    extra = {name: translate["peak_rss_bytes"] - weights[args.model] + w for name, w in weights.items()}
    rows = [{"command": "prepare", "peak_rss_gb": prepare["peak_rss_bytes"] / GB, "seconds": prepare["seconds"]},
            {"command": "translate", "peak_rss_gb": translate["peak_rss_bytes"] / GB, "seconds": translate["seconds"]}]
    results = {
        "volume_shape": list(shape), "plane_size": size, "autoencoder": preset, "autoencoder_channels": channels,
        "model": args.model,
        "steps": args.steps, "batch_size": args.batch_size, "threads": threads, "quick": args.quick,
        "prepare": {k: v for k, v in prepare.items() if k != "stderr_tail"},
        "translate": {k: v for k, v in translate.items() if k != "stderr_tail"},
        "backbone_fp32_weight_bytes": weights,
        "translate_estimate_by_backbone_bytes": extra,
        "target": {"target": "translate peak RSS < 3 GB", "value_gb": translate["peak_rss_bytes"] / GB,
                   "met": translate["peak_rss_bytes"] < TARGET_TRANSLATE_BYTES},
        "wall_s": time.perf_counter() - tic}
    path = write_result("memory", results, "cpu", args.out_dir)
    print_table(rows, ["command", "peak_rss_gb", "seconds"])
    print("translate estimate with other backbones (measured RSS - this backbone's weights + theirs): "
          + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in extra.items()))
    print(f"translate < 3 GB: {'met' if results['target']['met'] else 'MISSED'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
