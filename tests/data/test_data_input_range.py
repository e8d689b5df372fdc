"""data/input_range.py and the listing of untrusted subjects: prepare and plan skip a subject whose intensity
scale cannot be found, with its sentence; a run records its training range and translate flags an input outside."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.data.input_range import margin, outside_range, range_sentence, training_ranges
from phmdiff.data.prepare import PrepareSettings, load_manifest, prepare
from phmdiff.data.volume import VolumeSettings
from phmdiff.inference import load_trained
from phmdiff.pipeline import target_scale_kind
from phmdiff.translate import translate


def _brain(shape=(20, 18, 10), seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.7
    return np.where(inside, scale * rng.uniform(300, 900, shape), 0).astype(np.float32)


def _dataset(root, n=3, broken: str | None = None):
    for i in range(n):
        (root / f"s{i:02d}").mkdir(parents=True)
        for j, mod in enumerate(("t1", "t2")):
            v = _brain(seed=10 * i + j)
            if f"s{i:02d}" == broken:  # zero but for 10 voxels: not constant, yet no brain to take a scale from
                v = np.zeros_like(v)
                v[8:10, 8:10, 4:6] = 500.0
            nib.save(nib.Nifti1Image(v, np.eye(4)), root / f"s{i:02d}" / f"{mod}.nii.gz")
    return root


def test_prepare_skips_an_untrusted_subject_with_its_sentence_and_lists_it(tmp_path):
    root = _dataset(tmp_path / "raw", broken="s01")
    said = []
    settings = PrepareSettings(split=(1.0, 0.0, 0.0), volume=VolumeSettings(modalities=["t1", "t2"], size=24))
    assert prepare(root, tmp_path / "prep", settings, ["t1", "t2"], progress=False, log=said.append) == "built"
    manifest = load_manifest(tmp_path / "prep")
    assert sorted(manifest["volumes"]) == ["s00", "s02"] and "s01" not in manifest["split"]
    why = manifest["skipped"]["s01"]
    assert why.startswith("s01: t1: ") and "cannot be trusted" in why
    assert any(line == f"prepare: skipped {why}" for line in said)
    for v in manifest["volumes"].values():  # the normalized statistics every run needs for its guard
        assert set(v["stats"]) == {"t1", "t2"} and v["stats"]["t1"]["median"] == pytest.approx(0.5)


def test_plan_lists_the_untrusted_subject_and_plans_the_others(tmp_path, capsys):
    root = _dataset(tmp_path / "raw", broken="s02")
    assert main(["plan", str(root), "--modalities", "t1", "t2", "--size", "24", "--json",
                 str(tmp_path / "plan.json")]) == 0
    text = capsys.readouterr().out
    assert "skipped: s02: t1: the foreground found is" in text
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["planned"] == 2 and list(plan["skipped"]) == ["s02"]
    assert all(0.2 < r["normalized"]["t1"]["p99.5"] < 2.0 for r in plan["per_subject"])


def test_training_ranges_and_the_margin():
    manifest = {"volumes": {
        "a": {"split": "train", "stats": {"t1": {"fraction": 0.15, "p0.5": 0.1, "median": 0.5, "p99.5": 0.7}}},
        "b": {"split": "train", "stats": {"t1": {"fraction": 0.17, "p0.5": 0.0, "median": 0.5, "p99.5": 0.9}}},
        "c": {"split": "test", "stats": {"t1": {"fraction": 0.90, "p0.5": 5.0, "median": 0.5, "p99.5": 9.0}}}}}
    ranges = training_ranges(manifest)
    assert ranges == {"t1": {"fraction": [0.15, 0.17], "p0.5": [0.0, 0.1], "median": [0.5, 0.5],
                             "p99.5": [0.7, 0.9]}}
    assert margin(0.7, 0.9) == pytest.approx(0.1) and margin(0.5, 0.5) == pytest.approx(0.05)
    assert margin(0.15, 0.17) == pytest.approx(0.02)
    ok = {"t1": {"fraction": 0.185, "p0.5": 0.05, "median": 0.5, "p99.5": 0.99}}
    assert outside_range(ok, ranges) == []
    far = {"t1": {"fraction": 0.30, "p0.5": 0.5, "median": 0.5, "p99.5": 1.5}}  # p0.5 recorded, not checked
    found = outside_range(far, ranges)
    assert [(f["statistic"], f["value"]) for f in found] == [("fraction", 0.30), ("p99.5", 1.5)]
    sentence = range_sentence("s9", found)
    assert "s9:" in sentence and "t1 foreground share 30.0 % (trained on 15.0-17.0 %)" in sentence
    assert "t1 99.5th percentile 1.5 (trained on 0.7-0.9)" in sentence
    del manifest["volumes"]["a"]["stats"]  # prepared before statistics were recorded: nothing to compare against
    assert training_ranges(manifest) == {}


def test_translate_flags_an_input_outside_the_training_range_and_lists_it(tiny_run, tmp_path):
    plan = load_trained(tiny_run / "run", device="cpu").plan
    assert set(plan.input_ranges) >= set(plan.sources)
    src = tiny_run / "ph" / "PHANTOM_00002"
    odd = tmp_path / "odd" / "PHANTOM_00002"
    shutil.copytree(src, odd)
    for f in odd.iterdir():  # squared intensities: the same anatomy with a contrast no training subject had
        if "_t2" in f.name:
            img = nib.load(f)
            v = np.asarray(img.dataobj, dtype=np.float32)
            nib.save(nib.Nifti1Image(v**2 / max(float(v.max()), 1.0), img.affine), f)
    said = []
    normal = translate(tiny_run / "run", src, tmp_path / "out-normal", progress=False, log=said.append)
    assert normal["subjects"][0]["outside_training"] == [] and not any("outside what" in s for s in said)
    assert normal["subjects"][0]["target_scale"] == "relative" and not any("its own median" in s for s in said)
    meta = translate(tiny_run / "run", odd, tmp_path / "out-odd", progress=False, log=said.append)
    flagged = meta["subjects"][0]["outside_training"]
    assert flagged and {f["modality"] for f in flagged} == {"t2"}
    assert any(s.startswith("translate: warning: PHANTOM_00002: its normalized inputs lie outside") for s in said)


def test_how_the_target_scale_is_set_is_named():
    s = VolumeSettings(modalities=["t1", "t2", "flair", "ct"], relative={"flair": ["t1", "t2"]})
    assert [target_scale_kind(s, m) for m in ("flair", "t2", "ct")] == ["relative", "estimated", "window"]
