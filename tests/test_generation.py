"""Generation runs (`data.sources: []`): training on target-only slices, the modality label and its dropout,
per-seed samples, `generate --label/--guidance`, the weights-file model path and the nearest training slice."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config

from phmdiff.checkpoint_io import resolve_weights
from phmdiff.config import data_modalities, load_config
from phmdiff.generate import generate, nearest_slices
from phmdiff.inference import load_trained, sample_latents
from phmdiff.objective import pyramid_loss

GEN = ["data.sources=[]", "data.targets=[t1,flair]", "model.class_dropout_prob=0.2"]


@pytest.fixture(scope="module")
def gen_run(tiny_run, tmp_path_factory):
    """A label-conditional generation run (T1 and FLAIR), 4 steps, on the session phantom: root / run."""
    from phmdiff.training import run_pipeline

    root = tmp_path_factory.mktemp("gen_run")
    cfg = tiny_config(root, *GEN, f"data.root={tiny_run / 'ph'}")
    run_pipeline(cfg, progress=False, log=lambda m: None)
    return root


def test_config_accepts_generation_runs_and_refuses_mixed_ones(tmp_path):
    cfg = load_config(None, ["data.sources=[]", "data.targets=[t1,t2]"])
    assert data_modalities(cfg.data) == ["t1", "t2"] and cfg.data.target == "t1"  # default flair is not generated
    assert data_modalities(load_config(None, ["data.sources=[]"]).data) == ["flair"]  # unconditional
    with pytest.raises(ValueError, match="data.targets.*generation runs"):
        load_config(None, ["data.targets=[t1,t2]"])  # sources t1, t2 by default
    with pytest.raises(ValueError, match="same modality"):
        load_config(None, ["data.sources=[]", "data.targets=[t1,t1]"])
    with pytest.raises(ValueError, match="data.targets.*generation runs"):
        load_config(None, ["data.any_to_any=true", "data.modalities=[t1,t2]", "data.targets=[t1,t2]"])


def test_generation_run_trains_on_both_modalities_and_resumes(gen_run):
    from phmdiff.training.loop import train

    ckpt = load_trained(gen_run / "run", "cpu")
    assert ckpt.plan.sources == () and ckpt.generated == ["t1", "flair"]
    assert ckpt.null_label == len(ckpt.plan.modalities) == 2
    shutil.copytree(gen_run / "run", gen_run / "resumed")
    cfg = tiny_config(gen_run, *GEN, "train.max_num_steps=6", run="resumed")
    assert train(cfg, resume="auto", progress=False)["step"] == 6
    steps = [int(line.split(",")[0]) for line in (gen_run / "resumed" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6]  # continued from step 4, each step logged once


def test_label_dropout_puts_the_null_label_where_the_condition_is_dropped():
    from phmdiff.diffusion.edm import EDMPrecond
    from phmdiff.masked_dit import build_masked_dit

    net = build_masked_dit("PHMDiff-T/2", input_size=8, latent_channels=2, num_sources=0, num_levels=2, num_targets=2,
                           hidden_size=32, depth=1, num_heads=2, decoder_depth=1, decoder_hidden_size=32,
                           decoder_num_heads=2)
    seen = []

    def recording(x, sigma, **kw):
        seen.append(kw["target_label"].clone())
        return EDMPrecond(net)(x, sigma, **kw)

    target, label = torch.randn(64, 2, 8, 8), torch.ones(64, dtype=torch.long)
    for null_label in (2, None):
        seen.clear()
        pyramid_loss(recording, torch.zeros(64, 0, 8, 8), target, torch.zeros(64, 0), label, levels=2,
                     mask_ratio=0.25, class_dropout_prob=0.5, null_label=null_label,
                     generator=torch.Generator().manual_seed(0))
        labels = torch.stack(seen)  # (calls, N): both levels of one batch drop the same examples
        assert len(seen) == 2 and (labels == labels[0]).all() and set(labels[0].tolist()) <= {1, 2}
        dropped = int((labels[0] == 2).sum())
        assert 10 < dropped < 54 if null_label is not None else dropped == 0


def test_samples_depend_on_their_seed_and_label_only_and_the_label_reaches_the_network(gen_run):
    trained = load_trained(gen_run / "run", "cpu")
    settings = trained.settings("ddim", 3)
    m = trained.cfg.model

    def draw(labels, seeds, guidance=1.0):
        s = type(settings)(**{**settings.to_dict(), "guidance": guidance})
        n = len(seeds)
        return sample_latents(trained.denoiser, torch.zeros(n, 0, m.in_size, m.in_size), torch.zeros(n, 0),
                              torch.tensor(labels), seeds, m, s, trained.null_label)

    assert trained.plan.modalities == ("t1", "flair")  # labels 0 and 1; 2 is the null label
    mixed = draw([0, 1, 2, 0], [5, 6, 7, 8])  # a batch of mixed labels
    alone = draw([1], [6])
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-5, rtol=0)
    assert (draw([0], [6]) - alone).abs().max() > 1e-5  # another label, another sample from the same seed
    assert (draw([1], [6], guidance=3.0) - alone).abs().max() > 1e-5  # guidance against the null label acts
    torch.testing.assert_close(draw([2], [6], guidance=3.0), draw([2], [6]))  # null against null: no effect


def test_generate_label_guidance_and_every_model_path_form(gen_run, tmp_path):
    ckpt = sorted((gen_run / "run" / "checkpoints").glob("step-*"))[-1]
    common = dict(seeds=[0, 1], steps=3, sampler="ddim", device="cpu")
    runs = {"run": gen_run / "run", "folder": ckpt, "model": ckpt / "model.safetensors",
            "ema": ckpt / "ema.safetensors"}
    metas = {k: generate(p, tmp_path / k, label="t1", **common) for k, p in runs.items()}
    assert [m["weights"] for m in metas.values()] == ["ema", "ema", "model", "ema"]
    same = [(tmp_path / k / "png" / "seed000001.png").read_bytes() for k in ("run", "folder", "ema")]
    assert same[0] == same[1] == same[2]
    assert (tmp_path / "model" / "png" / "seed000001.png").read_bytes() != same[0]  # raw weights, not the EMA
    flair = generate(gen_run / "run", tmp_path / "flair", label="flair", guidance=2.0, **common)
    assert flair["target"] == "flair" and flair["guidance"] == 2.0
    near = json.loads((tmp_path / "flair" / "nearest.json").read_text())
    assert near["modality"] == "flair" and [s["seed"] for s in near["samples"]] == [0, 1]
    from PIL import Image

    # 2 samples in one row, each beside its nearest slice: 4 cells of 16 px scaled by 6 (96 px), titled
    grid = np.asarray(Image.open(tmp_path / "flair" / "grid.png"))
    assert grid.shape[1] > 4 * 96 and grid.shape[0] > 96 and grid.shape[0] < 2 * 96
    with pytest.raises(ValueError, match="this run generates t1, flair only"):
        generate(gen_run / "run", tmp_path / "t2", label="t2", **common)
    with pytest.raises(ValueError, match="no source modalities"):
        generate(gen_run / "run", tmp_path / "c", condition="val", **common)


def test_a_wrong_model_path_is_one_sentence(gen_run, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("entry", Path(__file__).parents[1] / "generate.py")
    entry = importlib.util.module_from_spec(spec)  # the top-level script of the original usage
    spec.loader.exec_module(entry)

    with pytest.raises(ValueError, match="weights file not found"):
        resolve_weights(tmp_path / "nowhere" / "model.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a run folder, a checkpoint folder, a checkpoint's model.safetensors"):
        resolve_weights(tmp_path / "notes.txt")
    assert entry.main(["--model-path", str(tmp_path / "notes.txt"), "--output-dir", str(tmp_path / "g")]) == 2
    assert not (tmp_path / "g").exists()


def test_nearest_slices_finds_a_training_slice_itself(gen_run):
    from phmdiff.data.datasets import TargetSlices

    data = TargetSlices(gen_run / "prep", "train", "flair")
    picks = [3, 0, len(data) - 1]
    images = np.stack([(data[i]["target"][0].numpy() + 1) / 2 for i in picks])
    idx, rms = nearest_slices(images + 0.01, data, chunk=4)  # chunks smaller than the split
    assert idx.tolist() == picks and np.allclose(rms, 0.01, atol=1e-6)


def test_translate_refuses_a_generation_run_with_a_sentence(gen_run, tiny_run, tmp_path):
    from phmdiff.translate import translate

    subject = next(p for p in (tiny_run / "ph").iterdir() if p.is_dir())
    with pytest.raises(ValueError, match="generation run"):
        translate(gen_run / "run", subject, tmp_path / "out", progress=False, log=lambda m: None)
