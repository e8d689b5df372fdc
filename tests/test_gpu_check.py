"""benchmarks/gpu_check.sh runs unchanged on a GPU machine: here its --device cpu --quick mode runs the same code
(steps, fraction of the measured peak, tiny run, translation of a bigger volume) at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_the_cpu_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out",
                           str(out), "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert list(tmp_path.glob("*.tmp")) == []
    assert "no CUDA device" in r["cuda_tests"]["skipped"]
    peak = r["bf16_peak"]
    assert 0 < peak["flops_per_s_worst"] <= peak["flops_per_s_median"] <= peak["flops_per_s_best"]
    assert r["complete"] and [row for row in r["training"] if "skipped" in row] == [
        {"model": "PHMDiff-T/2", "compiled": True, "skipped": "time budget spent"}]  # --quick: budget 0
    rows = [row for row in r["training"] if "skipped" not in row]
    assert {(row["model"], row["mask_ratio"]) for row in rows} == {("PHMDiff-T/2", 0.0), ("PHMDiff-T/2", 0.5)}
    for row in rows:
        lo, hi = row["fraction_range"]
        assert row["step_s"] > 0 and lo <= row["fraction_of_bf16_peak"] <= hi
    assert rows[1]["flops_per_step"] < rows[0]["flops_per_step"]  # the masked step does less work
    t = r["translate"]
    assert t["volume"] == [48, 40, 16] and t["seconds_2_samples"] > 0
    assert (tmp_path / "work" / "pred2").is_dir()
    assert r["targets"]["mfu_XL2"]["value"] is None  # XL/2 does not run in --quick

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = "\n".join(run_all._gpu_check(tmp_path))  # docs/benchmarks.md's section, rendered from this JSON
    assert "| PHMDiff-T/2 | True | | skipped: time budget spent |" in text and "Translate 48x40x16" in text
    assert "not run" in "\n".join(run_all._gpu_check(tmp_path / "nowhere"))


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU is available" in proc.stderr
    assert not (tmp_path / "x.json").exists()
