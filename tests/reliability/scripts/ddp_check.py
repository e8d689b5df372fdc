"""`phmdiff train` under torchrun, checking the DDP contract on every step; launched by the reliability tests.

    torchrun --standalone --nproc_per_node 2 ddp_check.py --report DIR [--kill-at S] -- TRAIN_ARGS...

Before every step (i.e. after the previous one) each rank hashes its model's state and all ranks compare the
hashes with all_gather_object. Every rank audits every file it creates, writes, renames or deletes under the
run folder (sys.addaudithook; rank 0 too, which shows the audit sees writes). Validation records which
validation slices each rank evaluated. Each rank writes DIR/rank<R>.json (outside the run folder).
`--kill-at S`: rank 1 SIGKILLs itself when step S begins.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path


def state_hash(state: dict) -> str:
    """sha256 over a state dict's tensors in name order (what the checkpoint's model.safetensors holds)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--kill-at", type=int, default=None)
    opts = parser.parse_args(argv[:split])
    train_args = argv[split + 1 :]

    import torch.distributed as dist

    from phmdiff.cli import main as cli_main
    from phmdiff.config import load_config
    from phmdiff.data import datasets
    from phmdiff.training import loop

    rank = int(os.environ["RANK"])
    report = {"rank": rank, "pid": os.getpid(), "hashes": [], "mismatch": [], "writes": [], "val_indices": []}
    run_dir = load_config(train_args[train_args.index("--config") + 1],
                          [a for a in train_args if "=" in a and not a.startswith("-")]).run_dir.resolve()

    if True:  # every rank audits; the test expects rank 0's list to be full and the others' empty
        def audit(event, args):
            paths = []
            if event == "open":
                path, mode, flags = args
                writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                paths = [path] if writing else []
            elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
                paths = [args[0]]
            elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
                paths = [args[0], args[1]]
            for p in paths:
                if isinstance(p, (str, bytes, os.PathLike)) and str(os.path.abspath(os.fsdecode(p))).startswith(
                        str(run_dir)):
                    report["writes"].append(f"{event} {os.fsdecode(p)}")

        sys.addaudithook(audit)

    captured = {}
    build = loop.build_denoiser

    def build_denoiser(*args, **kwargs):
        captured["model"] = build(*args, **kwargs)
        return captured["model"]

    loop.build_denoiser = build_denoiser

    def hook(step, terms):
        if opts.kill_at is not None and step == opts.kill_at and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        mine = state_hash(captured["model"].state_dict())
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        report["hashes"].append([step, mine])
        if len(set(every)) != 1:
            report["mismatch"].append(step)
        return terms

    original_validate, getitem = loop.validate, datasets.PairedSlices.__getitem__
    in_validation = {"on": False}

    def validate(*args, **kwargs):
        in_validation["on"] = True
        try:
            return original_validate(*args, **kwargs)
        finally:
            in_validation["on"] = False

    def tracked_getitem(self, i):
        if in_validation["on"]:
            report["val_indices"].append(int(i))
        return getitem(self, i)

    loop.validate, datasets.PairedSlices.__getitem__ = validate, tracked_getitem
    original_train = loop.train
    loop.train = lambda cfg, resume="auto", progress=True, step_hook=None, **kwargs: original_train(
        cfg, resume=resume, progress=progress, step_hook=hook, **kwargs)
    code = cli_main(["train", *train_args])
    report["final_hash"] = state_hash(captured["model"].state_dict())
    report["exit"] = code
    report["process_group_destroyed"] = not dist.is_initialized()
    opts.report.mkdir(parents=True, exist_ok=True)
    (opts.report / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if dist.is_initialized():  # train() tears the group down; this is the belt to its braces
        dist.barrier()
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
