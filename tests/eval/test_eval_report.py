"""`phmdiff report` from real NIfTI files, opened in headless Chromium: every image decodes, every number carries
its unit, every blank cell its reason, subjects listed."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

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
    assert len(srcs) == 6  # per-subject, per-slice, calibration, 2 panels, training
    assert all(not s.startswith("/") and (out / s).is_file() for s in srcs)
    assert "sub-A" in page and "sub-B" in page


def test_report_refuses_a_folder_without_results(tmp_path):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


# A number with its unit: inside an element that names it (data-unit), or followed by a unit word in prose.
_NUMBER = re.compile(r"(?<![\w.\-/:+\[])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.\-/:\]])")
_PROSE_UNITS = ("voxels", "scales", "samples", "subjects", "slices", "steps", "dB", "HU", "mm")
_VOID = {"img", "br", "meta", "input", "hr", "link"}


class _PageCheck(HTMLParser):
    """Numbers without a unit, and table cells left empty, in a rendered page (identifiers and code exempt)."""

    def __init__(self):
        super().__init__()
        self.stack, self.bare, self.cells, self.empty_cells = [], [], 0, []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        self.stack.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        while self.stack:
            top, _ = self.stack.pop()
            if top == tag:
                break
        if tag == "td":
            self.cells += 1
            if not self._cell.strip(" \u2013"):
                self.empty_cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        tags = [t for t, _ in self.stack]
        if {"script", "style", "code", "pre", "title"} & set(tags):
            return
        if any("data-unit" in a or {"id", "verbatim"} & set(a.get("class", "").split()) for _, a in self.stack):
            return
        for m in _NUMBER.finditer(data):
            after = data[m.end():].lstrip()
            if not after.startswith(_PROSE_UNITS):
                self.bare.append(data.strip())


def check_page(dom: str) -> _PageCheck:
    checker = _PageCheck()
    checker.feed(dom)
    return checker


def test_page_check_finds_bare_numbers_and_empty_cells():
    bad = check_page("<p>PSNR 21.5</p><table><tr><td></td><td data-unit='dB'>3 dB</td></tr></table>")
    assert bad.bare == ["PSNR 21.5"] and len(bad.empty_cells) == 1 and bad.cells == 2
    ok = check_page("<p>needs 176 voxels, <span data-unit='x'>2</span>, 0.5-99.5 pct</p><td class='id'>s-01 7</td>")
    assert ok.bare == [] and ok.empty_cells == []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_opens_in_headless_chromium(evaluated):
    out = evaluated / "report"
    assert main(["report", str(evaluated / "tr"), "--out", str(out)]) == 0
    shutil.move(str(out), str(evaluated / "elsewhere"))  # relative paths: the folder can move
    page = evaluated / "elsewhere" / "index.html"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert total == 6 and loaded == total  # every image decoded (naturalWidth > 0)
    table = re.search(r"<table id=\"subjects\">(.*?)</table>", dom, re.S).group(1)
    assert "sub-A" in table and "sub-B" in table
    check = check_page(dom)
    assert check.bare == [], f"numbers without a unit: {check.bare[:5]}"
    assert check.cells > 50 and check.empty_cells == [], "a blank cell without its reason"
    for words in ("Provenance", "t1 &rarr; flair", "calibration plot", "Pearson",
                  "best source per region (whole image: t1)",
                  "no tumour segmentation given", "translate ran without --ceiling", "Training curves",
                  "Autoencoder quality"):
        assert words.replace("&rarr;", "\u2192") in dom, words
    shot = evaluated / "shot.png"
    subprocess.run([*base, "--window-size=1300,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_ct_windows_and_true_aspect_ratio():
    from phmdiff.eval.report_images import _columns, views

    vol = np.zeros((8, 6, 4))
    planes = views(vol, (4, 3, 2), (1.0, 2.0, 3.0))
    assert [p.shape for p, _ in planes] == [(6, 8), (4, 8), (4, 6)]  # axial, coronal, sagittal
    assert [a for _, a in planes] == [2.0, 3.0, 1.5]  # row spacing / column spacing
    cols = _columns("ct", {"target": "ct", "source": "mr"}, vol, vol, vol, None, -1024, 3071, 1)
    windows = {title: (vmin, vmax, label) for title, _, _, vmin, vmax, label in cols}
    assert windows["ct real, soft tissue W400/L40"] == (-160.0, 240.0, "HU")
    assert windows["ct synth., bone W1800/L400"] == (-500.0, 1300.0, "HU")
    assert cols[0][0] == "source: mr"


def test_cells_that_say_nothing_are_one_sentence_and_units_read_once(evaluated):
    out = evaluated / "r"
    assert main(["report", str(evaluated / "tr"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "((" not in page and "SSIM (0-1)" in page
    assert page.count("translate ran without --ceiling") == 1  # a sentence, not a column of cells
    assert page.count("scored on PSNR, SSIM and lesion PSNR only") == 1
    summary = re.search(r"<table id='summary'>(.*?)</table>", page, re.S).group(1)
    assert "pipeline ceiling" not in summary and "best source per region (whole image: t1)" in summary
    check = check_page(page)
    assert check.bare == [] and check.empty_cells == []


def test_scalefree_has_its_row_its_units_and_its_sentence(evaluated):
    tr = evaluated / "tr"
    assert main(["evaluate", str(tr), "--protocol", "volume", "--protocol", "scalefree", "--out",
                 str(evaluated / "ev2")]) == 0
    out = evaluated / "r2"
    assert main(["report", str(evaluated / "ev2"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    summary = re.search(r"<table id='summary'>(.*?)</table>", page, re.S).group(1)
    rows = [r for r in summary.split("<tr>") if "<td class='id'>scalefree</td>" in r]
    assert rows and "MAE: " in rows[0] and "scale-free units" in rows[0]  # its errors in its row, its own units
    assert "lesion PSNR: &ndash; no tumour segmentation given" in rows[0]
    assert "its own 0.5-99.5 percentiles over the reference's foreground" in page
    assert "(scalefree: its own errors, in its row above)" in page
    subjects = re.search(r"<table id='subjects'>(.*?)</table>", page, re.S).group(1)
    assert subjects.count("<td class='id'>scalefree</td>") == 2
    check = check_page(page)
    assert check.bare == [] and check.empty_cells == []


def test_whole_volume_protocols_alone_say_there_is_no_per_slice_plot(evaluated):
    tr = evaluated / "tr"
    assert main(["evaluate", str(tr), "--protocol", "scalefree", "--out", str(evaluated / "ev3")]) == 0
    out = evaluated / "r3"
    assert main(["report", str(evaluated / "ev3"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "No per-slice scores" in page and "per_slice.png" not in page
    check = check_page(page)
    assert check.bare == [] and check.empty_cells == []
