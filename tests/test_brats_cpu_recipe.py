"""configs/brats_cpu.yaml, the CPU recipe for a BraTS folder (issue 35): its choices, its split of a three-subject
folder, a run of it end to end on the real subjects through main.py, and a split file with no validation subject."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from phmdiff.config import load_config
from phmdiff.data.prepare import split_subjects
from phmdiff.training import prepare_settings

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "brats_cpu.yaml"
# The real subjects live beside the repository (CI clones it with ../shared next to it); never copied into it.
REAL = ROOT.parent / "shared" / "data" / "real"
REAL_IDS = ["AURORA_MET", "BraTS_GLI_00001", "TCGA_DU_7294"]


def _main():
    """The root main.py as a module."""
    spec = importlib.util.spec_from_file_location("entry_main", ROOT / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_is_pixel_space_fp32_resized_and_own_normalized():
    cfg = load_config(RECIPE, ["data.root=/data/BraTS2021"])
    assert cfg.model.autoencoder.preset == "identity" and cfg.model.model_type == "PHMDiff-T/4"
    assert cfg.data.resolution == cfg.model.in_size == 96  # the size chosen from the ceiling-vs-cost measurement
    assert cfg.train.device == "cpu" and cfg.train.amp == "auto"  # fp32 where bf16 is emulated (16x slower)
    settings = prepare_settings(cfg)
    assert settings.volume.fit == "resize" and settings.volume.size == 96
    assert settings.volume.relative == {}  # target_norm own: the FLAIR normalized by its own median
    assert all(str(p).startswith("brats_cpu_out") for p in (cfg.data.prepared, cfg.data.cache, cfg.run_dir))


@pytest.mark.parametrize("n, expected", [(3, (2, 1, 0)), (4, (3, 1, 0)), (30, (27, 3, 0))])
def test_the_recipe_holds_out_one_validation_subject_of_three(n, expected):
    """A folder of three subjects trains on two and validates (std calibration) on the third, never on a
    training subject."""
    settings = prepare_settings(load_config(RECIPE))
    ids = REAL_IDS if n == 3 else [f"s{i:02d}" for i in range(n)]
    split = split_subjects(ids, settings.split, settings.seed)
    assert tuple(list(split.values()).count(name) for name in ("train", "val", "test")) == expected


@pytest.mark.slow  # trains (through main.py's function, which the tier rule cannot see)
@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent: the real subjects are not beside this checkout.")
def test_the_recipe_trains_on_the_real_subjects_end_to_end(tmp_path):
    """prepare -> train-ae -> encode -> train on the three real subjects, with the recipe's data handling (resize,
    own-normalized FLAIR, 2 / 1 / 0 split) and a tiny plane and step count."""
    code = _main().main([
        "--config", str(RECIPE), f"data.root={REAL}", "data.resolution=32", "model.in_size=32",
        f"data.prepared={tmp_path / 'prep'}", f"data.cache={tmp_path / 'lat'}", f"log.run_dir={tmp_path / 'run'}",
        "train.max_num_steps=2", "train.unmasked_finetune_steps=1", "eval.num_val_slices=2", "eval.n_samples=2",
        "eval.num_steps=2", "eval.fine_num_steps=1", "--no-progress"])
    assert code == 0
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert sorted(manifest["split"]) == REAL_IDS
    assert sorted(manifest["split"].values()) == ["train", "train", "val"]
    volume = manifest["config"]["volume"]
    assert (volume["fit"], volume["size"], volume["relative"]) == ("resize", 32, {})
    assert all(v["resized_from"] for v in manifest["volumes"].values())  # 240 x 240 planes resized, not cropped
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "meta.json").read_text())
    val = meta["validation"]
    assert val["n"] == 2 and math.isfinite(val["psnr"])  # scored on the held-out subject
    assert val["std_scale"] > 0  # the std calibration was fitted
    assert set(meta["plan"]["target_gains"]["flair"]) == {"t1", "t2"}  # translate's scale estimate has its ratios


def test_a_split_file_with_no_validation_subject_trains_without_a_calibration(tmp_path):
    """A leave-one-out fold (train 2 / val 0 / test 1) from data.split_file: training runs, validation finds no
    slices (its scores NaN, no std calibration), and the split reaches the prepared folder."""
    from conftest import tiny_config

    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    write_phantom(tmp_path / "ph", "brain", n_subjects=3, shape=(16, 16, 16), seed=1)
    ids = sorted(p.name for p in (tmp_path / "ph").iterdir() if p.is_dir())
    (tmp_path / "fold.json").write_text(json.dumps({"train": ids[:2], "val": [], "test": ids[2:]}))
    cfg = tiny_config(tmp_path, f"data.split_file={tmp_path / 'fold.json'}", "eval.every=4", "eval.n_samples=2")
    said = []
    done = run_pipeline(cfg, progress=False, log=said.append)
    assert done["train"]["step"] == 4
    empty = [s for s in said if s.startswith("train: the val split is empty")]  # said once, not a NaN score
    assert len(empty) == 1 and "no std calibration" in empty[0]
    assert "nan" not in (tmp_path / "run" / "log.csv").read_text().lower()
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["split"] == {ids[0]: "train", ids[1]: "train", ids[2]: "test"}
    assert manifest["splits"]["val"]["n"] == 0
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "meta.json").read_text())
    assert meta.get("validation") is None and "NaN" not in json.dumps(meta)  # no std_scale: the samples' spread
