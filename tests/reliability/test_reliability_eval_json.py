"""Issue 28, item 10: every internal JSON evaluate and report read (translate.json, summary.json,
evaluation.json) goes through `phmdiff.schema`: a crafted or damaged file is one sentence and exit 2, never a
traceback; segmentations are bounded and finite before anything is allocated per label. The hypothesis part
runs a few examples by default and many under PHMDIFF_STRESS=1 (`make stress`)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phmdiff.cli import main
from phmdiff.eval.labels import MAX_LABELS, check_labels

STRESS = os.environ.get("PHMDIFF_STRESS") == "1"
# No shrinking: a report takes seconds, and the failing example is printed as found.
SETTINGS = settings(max_examples=200 if STRESS else 5, deadline=None, derandomize=not STRESS, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REPORT_SETTINGS = settings(SETTINGS, max_examples=100 if STRESS else 2)
pytestmark = pytest.mark.timeout(1800 if STRESS else 300)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=6)


def _save(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return str(path.resolve())


def _translated(root: Path) -> Path:
    """A translate-like folder: two subjects with a prediction, a reference and a tumour segmentation."""
    rng = np.random.default_rng(0)
    entries = []
    for sid in ("sub-A", "sub-B"):
        ref = np.pad(100 + 50 * rng.random((8, 8, 6)), 2)
        seg = np.zeros(ref.shape)
        seg[4:7, 4:7, 3:5] = 2
        entries.append({"subject": sid, "prediction": f"{sid}.nii.gz", "std": None, "samples": [],
                        "reference": _save(root / "refs" / f"{sid}.nii.gz", ref), "mask": None,
                        "seg": _save(root / "refs" / f"{sid}_seg.nii.gz", seg)})
        _save(root / "tr" / f"{sid}.nii.gz", ref + rng.standard_normal(ref.shape))
    (root / "tr" / "translate.json").write_text(json.dumps(
        {"target": "flair", "sources": ["t1"], "modality_kind": "mr", "subjects": entries}))
    return root / "tr"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tr = _translated(tmp_path_factory.mktemp("eval-json"))
    assert main(["evaluate", str(tr)]) == 0
    return tr


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    obj = copy.deepcopy(obj)
    target = obj
    for k in path[:-1]:
        target = target[k]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


_DROP = object()


def _copy_with(src: Path, dst: Path, name: str, edit) -> Path:
    shutil.copytree(src, dst)
    (dst / name).write_text(json.dumps(edit(json.loads((dst / name).read_text()))))
    return dst


def _exit(argv, capsys) -> tuple[int, str]:
    code = main(argv)  # anything but a user error propagates here and fails the test (a traceback at the CLI)
    return code, capsys.readouterr().err


CRAFTED_TRANSLATE = [lambda m: {}, lambda m: [], lambda m: {**m, "subjects": "x"},
                     lambda m: {**m, "subjects": [{}]}, lambda m: {**m, "subjects": [1]},
                     lambda m: _replace(m, ("subjects", 0, "prediction"), 5),
                     lambda m: _replace(m, ("subjects", 0, "samples"), [None]),
                     lambda m: _replace(m, ("subjects", 0, "reference"), ["a"]),
                     lambda m: _replace(m, ("modality_kind",), 3), lambda m: _replace(m, ("sources",), "t1")]


@pytest.mark.parametrize("edit", CRAFTED_TRANSLATE)
def test_a_crafted_translate_json_is_one_sentence_in_evaluate(evaluated, tmp_path, capsys, edit):
    tr = _copy_with(evaluated, tmp_path / "tr", "translate.json", edit)
    code, err = _exit(["evaluate", str(tr), "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "translate.json" in err and len(err.strip().splitlines()) == 1, err


CRAFTED_SUMMARY = [lambda m: {}, lambda m: {**m, "protocols": []}, lambda m: {**m, "modality": "pet"},
                   lambda m: _replace(m, ("protocols", "volume", "psnr"), {"mean": "x"}),
                   lambda m: _replace(m, ("protocols", "volume", "n_subjects"), "2"),
                   lambda m: _replace(m, ("protocols", "volume"), 7)]
CRAFTED_EVALUATION = [lambda m: {**m, "subjects": [1]}, lambda m: {**m, "subjects": {}},
                      lambda m: _replace(m, ("subjects", 0, "subject"), None),
                      lambda m: _replace(m, ("subjects", 0, "reference"), None),
                      lambda m: _replace(m, ("provenance",), "x"), lambda m: _replace(m, ("slice_axis",), 9)]


@pytest.mark.parametrize("name, edit", [("summary.json", e) for e in CRAFTED_SUMMARY]
                         + [("evaluation.json", e) for e in CRAFTED_EVALUATION])
def test_a_crafted_evaluation_folder_is_one_sentence_in_report(evaluated, tmp_path, capsys, name, edit):
    ev = _copy_with(evaluated / "evaluation", tmp_path / "ev", name, edit)
    code, err = _exit(["report", str(ev), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and name in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rep").exists()


def test_invalid_json_text_is_one_sentence(evaluated, tmp_path, capsys):
    ev = tmp_path / "ev"
    shutil.copytree(evaluated / "evaluation", ev)
    (ev / "summary.json").write_text("{" * 100_000)  # deeper than the JSON parser's recursion
    code, err = _exit(["report", str(ev), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and "summary.json" in err


@SETTINGS
@given(which=st.integers(0, 10**6), value=JSON_VALUES | st.just(_DROP))
def test_fuzzed_translate_json_gives_scores_or_a_sentence(evaluated, tmp_path_factory, capsys, which, value):
    meta = json.loads((evaluated / "translate.json").read_text())
    paths = list(_paths(meta))
    path = paths[which % len(paths)]
    if value is _DROP and not path:
        return
    tr = _copy_with(evaluated, tmp_path_factory.mktemp("fz") / "tr", "translate.json",
                    lambda m: _replace(m, path, value))
    code, _ = _exit(["evaluate", str(tr), "--out", str(tr.parent / "ev")], capsys)
    assert code in (0, 1, 2)


@REPORT_SETTINGS
@given(name=st.sampled_from(["summary.json", "evaluation.json"]), which=st.integers(0, 10**6),
       value=JSON_VALUES | st.just(_DROP))
def test_fuzzed_evaluation_json_gives_a_report_or_a_sentence(evaluated, tmp_path_factory, capsys, name, which,
                                                             value):
    meta = json.loads((evaluated / "evaluation" / name).read_text())
    paths = list(_paths(meta))
    path = paths[which % len(paths)]
    if value is _DROP and not path:
        return
    ev = _copy_with(evaluated / "evaluation", tmp_path_factory.mktemp("fz") / "ev", name,
                    lambda m: _replace(m, path, value))
    code, _ = _exit(["report", str(ev), "--out", str(ev.parent / "rep")], capsys)
    assert code in (0, 2)


# segmentations --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, words", [(np.full((4, 4, 4), np.inf), "NaN or Inf"),
                                        (np.full((4, 4, 4), np.nan), "NaN or Inf"),
                                        (np.arange(64.0).reshape(4, 4, 4) * 300, "from 0 to"),
                                        (-np.ones((4, 4, 4)), "from 0 to"),
                                        (np.arange(64.0).reshape(4, 4, 4), "distinct labels")])
def test_a_segmentation_is_bounded_and_finite(raw, words):
    with pytest.raises(ValueError, match=words):
        check_labels(raw, "seg.nii.gz")


def test_a_brats_segmentation_passes():
    raw = np.zeros((4, 4, 4))
    raw[0, 0, :3] = [1, 2, 4]
    assert sorted(np.unique(check_labels(raw, "seg.nii.gz"))) == [0, 1, 2, 4] and MAX_LABELS >= 4


def test_evaluate_refuses_an_all_inf_segmentation(evaluated, tmp_path, capsys):
    tr = tmp_path / "tr"
    shutil.copytree(evaluated, tr)
    meta = json.loads((tr / "translate.json").read_text())
    _save(Path(meta["subjects"][0]["seg"]).parent / "inf_seg.nii.gz", np.full((12, 12, 10), np.inf))
    meta["subjects"][0]["seg"] = str(Path(meta["subjects"][0]["seg"]).parent / "inf_seg.nii.gz")
    (tr / "translate.json").write_text(json.dumps(meta))
    code, err = _exit(["evaluate", str(tr), "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "NaN or Inf" in err, err


@pytest.mark.parametrize("rep", [[1], {"psnr": "high"}, {"preset": 3}, {"n": [1]}])
def test_a_crafted_autoencoder_report_is_one_sentence(tmp_path, capsys, rep):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    (run / "autoencoder_report.json").write_text(json.dumps(rep))
    code, err = _exit(["report", str(run), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and "autoencoder_report.json" in err and len(err.strip().splitlines()) == 1, err
