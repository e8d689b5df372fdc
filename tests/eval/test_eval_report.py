"""`phmdiff report` from real NIfTI files, opened in headless Chromium: every image decodes, subjects listed."""

import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return str(path)


@pytest.fixture
def evaluated(tmp_path):
    rng = np.random.default_rng(0)
    shape = (32, 32, 16)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    subjects = []
    for sid in ("sub-A", "sub-B"):
        ref = np.where(z**2 + y**2 + x**2 < 0.7, 100 + 200 * (x > 0) + 20 * rng.random(shape), 0.0)
        pred = ref + 10 * rng.standard_normal(shape) * (ref > 0)
        subjects.append({"subject": sid, "prediction": f"{sid}_pred.nii.gz", "std": f"{sid}_std.nii.gz",
                         "samples": [], "reference": _write(tmp_path / "refs" / f"{sid}.nii.gz", ref),
                         "mask": None, "seg": None,
                         "source_images": {"t1": _write(tmp_path / "refs" / f"{sid}_t1.nii.gz", ref[::-1])}})
        _write(tmp_path / "tr" / f"{sid}_pred.nii.gz", pred)
        _write(tmp_path / "tr" / f"{sid}_std.nii.gz", np.abs(pred - ref) + 1)
    (tmp_path / "tr" / "translate.json").write_text(json.dumps(
        {"target": "flair", "sources": ["t1"], "modality_kind": "mr", "subjects": subjects}))
    assert main(["evaluate", str(tmp_path / "tr"), "--protocol", "volume", "--protocol", "slice"]) == 0
    log = "step,loss,lr\n" + "".join(f"{s},{1 / (s + 1)},{1e-4}\n" for s in range(20))
    (tmp_path / "tr" / "log.csv").write_text(log)
    return tmp_path


def test_report_files_and_relative_links(evaluated):
    out = evaluated / "moved" / "report"
    assert main(["report", str(evaluated / "tr"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 5  # training, per-subject, per-slice, 2 panels
    assert all(not s.startswith("/") and (out / s).is_file() for s in srcs)
    assert "sub-A" in page and "sub-B" in page


def test_report_refuses_a_folder_without_results(tmp_path):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_opens_in_headless_chromium(evaluated):
    out = evaluated / "report"
    assert main(["report", str(evaluated / "tr" / "evaluation"), "--out", str(out)]) == 0
    shutil.move(str(out), str(evaluated / "elsewhere"))  # relative paths: the folder can move
    page = evaluated / "elsewhere" / "index.html"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert total == 4 and loaded == total
    table = re.search(r"<table id=\"subjects\">(.*?)</table>", dom, re.S).group(1)
    assert "sub-A" in table and "sub-B" in table
    shot = evaluated / "shot.png"
    subprocess.run([*base, "--window-size=1300,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
