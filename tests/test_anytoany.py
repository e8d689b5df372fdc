"""Any-to-any translation (the BraSyn setting): one model, any non-empty subset of the modalities -> any missing
one. The direction sampler, the availability mask's guarantee, the latent pairs, training with resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from phmdiff.checkpoint_io import load_checkpoint
from phmdiff.config import data_modalities, load_config, source_slots
from phmdiff.data.datasets import PairedSlices, draw_direction
from phmdiff.data.latent_cache import LatentPairs
from phmdiff.masked_dit import build_masked_dit

MODS = ["t1", "t1ce", "t2", "flair"]
ANY = ["data.any_to_any=true", f"data.modalities=[{','.join(MODS)}]"]


@pytest.fixture(scope="module")
def anyto(tmp_path_factory) -> Path:
    """A tiny any-to-any run (4 brain modalities, 16x16 pixel space, 4 steps): root / {ph, prep, lat, run}."""
    from conftest import tiny_config

    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    root = tmp_path_factory.mktemp("anyto")
    write_phantom(root / "ph", "brain", n_subjects=4, shape=(16, 16, 16), seed=1)
    run_pipeline(tiny_config(root, *ANY), progress=False, log=lambda m: None)
    return root


def test_sampler_draws_every_target_and_every_nonempty_subset():
    n_mod, g = 4, torch.Generator().manual_seed(0)
    seen = Counter()
    for _ in range(3000):
        target, avail = draw_direction(n_mod, g)
        assert avail[target] == 0 and avail.sum() >= 1 and set(avail.tolist()) <= {0.0, 1.0}
        seen[(target, tuple(int(a) for a in avail))] += 1
    # 4 targets x 7 non-empty subsets of the 3 others, each drawn about 3000 / 28 = 107 times.
    assert len(seen) == 4 * 7
    assert min(seen.values()) > 60 and max(seen.values()) < 160
    with pytest.raises(ValueError, match="at least two"):
        draw_direction(1, g)


def test_an_unavailable_source_cannot_change_the_prediction():
    net = build_masked_dit("PHMDiff-T/2", input_size=8, latent_channels=2, num_sources=3, num_targets=3,
                           hidden_size=32, depth=2, num_heads=2, decoder_depth=1, decoder_hidden_size=32,
                           decoder_num_heads=2, conv_head_width=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # random weights everywhere: no zero-initialised layer hides the sources
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x, cond = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 6, 8, 8, generator=g)
    avail = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    changed = cond.clone()
    changed[0, 2:4] += 5 * torch.randn(2, 8, 8, generator=g)  # sample 0's slot 1 is unavailable
    changed[1, 0:2] = 7.0  # sample 1's slot 0 is unavailable
    kw = dict(noise_labels=torch.tensor([0.3, -0.2]), avail=avail, target_label=torch.tensor([1, 2]), level=0)
    with torch.no_grad():
        a = net(x, cond=cond, **kw)
        b = net(x, cond=changed, **kw)
        c = net(x, cond=changed, **{**kw, "avail": torch.ones(2, 3)})
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the same change through an available slot does reach the output


def test_config_any_to_any_slots_and_errors():
    cfg = load_config(None, ANY)
    assert source_slots(cfg.data) == MODS and data_modalities(cfg.data) == MODS
    plain = load_config(None)
    assert source_slots(plain.data) == ["t1", "t2"] and data_modalities(plain.data) == ["t1", "t2", "flair"]
    with pytest.raises(ValueError, match="two or more distinct"):
        load_config(None, ["data.any_to_any=true", "data.modalities=[t1]"])
    with pytest.raises(ValueError, match="same modality"):
        load_config(None, ["data.any_to_any=true", "data.modalities=[t1,t1n]"])


def test_latent_pairs_hold_each_modality_once_and_mask_the_missing(anyto):
    cfg = tiny_cfg(anyto)
    data = LatentPairs(anyto / "lat", "train", MODS, None, seed=0, any_to_any=True)
    assert data.meta["modalities"] == MODS  # one cache for every direction
    labels = set()
    for i in range(len(data)):
        item = data[i]
        slot = MODS.index(data.meta["modalities"][item["target_label"]])
        labels.add(slot)
        assert item["avail"][slot] == 0 and item["avail"].sum() >= 1
        src = item["source"].reshape(4, -1)
        assert all((src[j] == 0).all() == (item["avail"][j] == 0) for j in range(4))
        again = data[i]  # the same (seed, epoch, index) draws the same direction
        assert again["target_label"] == item["target_label"] and torch.equal(again["avail"], item["avail"])
    assert len(labels) >= 3
    val = PairedSlices(cfg.data.prepared, "val", MODS, None, any_to_any=True)
    item = val[0]
    missing = item["avail"] == 0
    assert (item["source"][missing] == -1).all() and item["target"].shape[0] == 1


def tiny_cfg(root: Path, *extra: str, run: str = "run"):
    from conftest import tiny_config

    return tiny_config(root, *ANY, *extra, run=run)


def test_any_to_any_run_trains_and_resumes_exactly(anyto, tmp_path):
    from phmdiff.training.loop import train

    plan = load_checkpoint(anyto / "run" / "checkpoints" / "step-000004").meta["plan"]
    assert plan["any_to_any"] and plan["sources"] == MODS and set(plan["target_norms"]) == set(MODS)
    assert train(tiny_cfg(anyto, "train.max_num_steps=2", run="split"), progress=False)["step"] == 2
    assert train(tiny_cfg(anyto, run="split"), resume="auto", progress=False)["step"] == 4
    a = load_checkpoint(anyto / "run" / "checkpoints" / "step-000004")
    b = load_checkpoint(anyto / "split" / "checkpoints" / "step-000004")
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert all(torch.equal(a.ema_state[k], b.ema_state[k]) for k in a.ema_state)


def test_plan_subject_chooses_targets_and_sources_or_says_why_not():
    from phmdiff.translate import SkipSubject, plan_subject

    ident = SimpleNamespace(any_to_any=True, sources=tuple(MODS), target=None)  # the RunPlan fields it reads
    assert plan_subject(ident, {"t1", "t2", "seg"}) == [("t1ce", ["t1", "t2"]), ("flair", ["t1", "t2"])]
    assert plan_subject(ident, set(MODS), target="flair", sources=["t1", "t2"]) == [("flair", ["t1", "t2"])]
    assert plan_subject(ident, {"t1", "t2"}, target="t2") == [("t2", ["t1"])]  # never its own source
    with pytest.raises(SkipSubject, match="nothing to synthesize"):
        plan_subject(ident, set(MODS))
    with pytest.raises(SkipSubject, match="none of the run's other modalities"):
        plan_subject(ident, {"seg"}, target="flair")
    with pytest.raises(SkipSubject, match=r"among \['t2'\]"):
        plan_subject(ident, {"t1", "flair"}, target="t1ce", sources=["t2"])
    single = SimpleNamespace(any_to_any=False, sources=("t1", "t2"), target="flair")
    assert plan_subject(single, {"t1", "t2", "flair"}) == [("flair", ["t1", "t2"])]  # as before any-to-any
    with pytest.raises(SkipSubject, match="missing source modality t2"):
        plan_subject(single, {"t1"})


def test_translate_synthesizes_each_missing_modality_from_the_present_ones(anyto, tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    import nibabel as nib
    import numpy as np

    inp = tmp_path / "in"
    subjects = sorted(p for p in (anyto / "ph").iterdir() if p.is_dir())
    for sub, gone in zip(subjects, MODS):  # subject i lacks modality i
        shutil.copytree(sub, inp / sub.name, ignore=shutil.ignore_patterns("noise_free"))
        (inp / sub.name / f"{sub.name}_{gone}.nii.gz").unlink()
    shutil.copytree(subjects[0], inp / "FULL", ignore=shutil.ignore_patterns("noise_free"))
    for f in (inp / "FULL").iterdir():
        f.rename(f.with_name(f.name.replace(subjects[0].name, "FULL")))
    cmd = [sys.executable, "-m", "phmdiff", "translate", "--run", str(anyto / "run"), "--input", str(inp),
           "--steps", "2", "--sampler", "ddim", "--no-progress"]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "  FULL: has every modality" in done.stderr  # listed, not a failure: exit 0
    meta = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert meta["any_to_any"] and [s["subject"] for s in meta["skipped"]] == ["FULL"]
    got = {e["subject"]: e for e in meta["subjects"]}
    assert len(got) == 4
    for sub, gone in zip(subjects, MODS):
        e = got[sub.name]
        assert e["target"] == gone and e["sources"] == [m for m in MODS if m != gone]
        assert set(e["source_images"]) == set(e["sources"]) and e["reference"] is None
        pred = tmp_path / "out" / e["prediction"]
        assert pred.name == f"{sub.name}_{gone}.nii.gz"
        vol = np.asarray(nib.load(pred).dataobj)
        assert vol.shape == nib.load(sub / f"{sub.name}_t1.nii.gz").shape and np.isfinite(vol).all()
    # One chosen direction: FLAIR from {T1, T2} only, scored against the real FLAIR where there is one.
    from phmdiff.translate import translate

    meta = translate(anyto / "run", inp, tmp_path / "flair", steps=2, sampler="ddim", progress=False,
                     target="flair", use_sources=["t1", "t2"])
    used = {e["subject"]: e["sources"] for e in meta["subjects"]}
    assert used == {subjects[0].name: ["t2"], subjects[1].name: ["t1", "t2"], subjects[2].name: ["t1"],
                    subjects[3].name: ["t1", "t2"], "FULL": ["t1", "t2"]}
    assert all(e["target"] == "flair" for e in meta["subjects"])
    assert [e["reference"] is not None for e in meta["subjects"]].count(True) == 4  # subject 3 lacks flair
    with pytest.raises(ValueError, match="'pd' is not a modality of this any-to-any run"):
        translate(anyto / "run", inp, tmp_path / "bad", progress=False, target="pd")


def test_generate_on_an_any_to_any_run_takes_any_of_its_modalities_by_label(anyto, tmp_path):
    from phmdiff.generate import generate

    with pytest.raises(ValueError, match="choose one with --label"):
        generate(anyto / "run", tmp_path / "none", seeds=[0], steps=2, nearest=False)
    generate(anyto / "run", tmp_path / "t1ce", seeds=[0, 1], steps=2, label="t1ce", nearest=False)
    assert (tmp_path / "t1ce" / "grid.png").is_file()
