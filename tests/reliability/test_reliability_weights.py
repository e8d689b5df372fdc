"""Weights and numbers that enter from files are finite (issue 14, item 6), and crafted internal files end in
a sentence, not a traceback (item 10). Crafted checkpoints run through a real `phmdiff translate` process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.autoencoder import AutoencoderConfig, build_autoencoder, load_autoencoder, save_autoencoder  # noqa: E402
from phmdiff.data.readers import load_volume  # noqa: E402
from phmdiff.eval.evaluate import load_volume as load_eval_volume  # noqa: E402
from phmdiff.schema import layout_digest  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _set_nan_norm(meta):
    norms = meta["plan"]["target_norms"]
    for target, norm in norms.items():
        norms[target] = {k: (float("nan") if isinstance(v, float) else v) for k, v in norm.items()}


@pytest.mark.parametrize("label, edit_weights, edit_meta, words", [
    ("nan", lambda t: torch.full_like(t, float("nan")), None, "NaN or Inf"),
    ("huge", lambda t: torch.full_like(t, 1e38), None, "beyond"),
    ("bool", lambda t: t > 0, None, "torch.bool"),
    ("int", lambda t: (t * 1e6).to(torch.int64), None, "floating-point"),  # issue 28 item 5
    ("nan target_norm", None, _set_nan_norm, "expected a finite number"),
])
def test_crafted_weights_or_norm_end_in_one_sentence_and_no_output(tmp_path_factory, tmp_path, label, edit_weights,
                                                                   edit_meta, words):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    crafted = fx.crafted_run(tmp_path, run, edit_weights, edit_meta)
    out = tmp_path / "out"
    res = fx.cli("translate", "--run", str(crafted), "--input", str(data / "phantom" / "PHANTOM_00001"), "--out",
                 str(out), "--steps", "1", "--device", "cpu", check=False)
    assert res.returncode == 2, (label, res.stderr[-2000:])
    assert words in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list(out.rglob("*.nii.gz"))


def test_an_autoencoder_config_with_zero_norm_groups_is_one_sentence(tmp_path):
    cfg = AutoencoderConfig(channels=(8, 8, 8), attention_levels=(False,) * 3, norm_num_groups=4,
                            downsample_factor=4, latent_channels=2, num_res_blocks=1, mid_attention=False)
    path = tmp_path / "ae.safetensors"
    save_autoencoder(build_autoencoder(cfg), path)
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["norm_num_groups"] = 0
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(ValueError, match="ae.safetensors"):
        load_autoencoder(path)


@pytest.mark.parametrize("dtype, words", [(np.complex64, "complex"),
                                          (np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), "RGB")])
def test_complex_and_rgb_nifti_are_refused_not_silently_converted(tmp_path, dtype, words):
    path = tmp_path / "v.nii.gz"
    data = np.zeros((6, 6, 4), dtype=dtype)
    if np.dtype(dtype).kind == "c":
        data += (np.arange(data.size).reshape(data.shape) + 1j).astype(dtype)
    img = nib.Nifti1Image(data, np.eye(4))
    nib.save(img, str(path))
    with pytest.raises(ValueError, match=words):
        load_volume(path)
    with pytest.raises(ValueError, match=words):  # evaluate's reader cast complex to float, dropping the imaginary part
        load_eval_volume(path)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(keys, value):
    def edit(data):
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, words", [
    (_set(["splits"], [1, 2]), "'splits'"),
    (_set(["channels_per_modality"], 99), "channels_per_modality"),
    (_set(["modalities"], "t1t2"), "modalities"),
    (_set(["splits", "train", "shards", 0, "file"], "../../etc/passwd"), "cannot be used as a file name"),
])
def test_a_crafted_manifest_is_one_sentence(tmp_path_factory, tmp_path, edit, words):
    data = fx.shared(tmp_path_factory)
    prepared = tmp_path / "prepared"
    shutil.copytree(data / "prepared", prepared)
    _edit_json(prepared / "manifest.json", edit)
    res = fx.cli("encode", str(prepared), str(data / "autoencoder"), str(tmp_path / "cache"), check=False)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("edit, words", [
    (_set(["splits", "train", "n"], 10**6), "splits.train.n"),
    (_set(["splits", "train", "shards", 0, "n"], 10**6), "splits.train.n"),
    (_set(["item_shape"], [3, 1, 10**5, 10**5]), "voxels"),
    (_set(["modalities"], "t1"), "modalities"),
])
def test_a_crafted_latent_meta_is_one_sentence(tmp_path_factory, tmp_path, edit, words):
    data = fx.shared(tmp_path_factory)
    cache = tmp_path / "latents"
    shutil.copytree(data / "latents", cache)
    _edit_json(cache / "meta.json", edit)
    config = fx.write_config(data, tmp_path / "run", cache=cache)
    res = fx.cli("train", "--config", str(config), "--no-progress", check=False)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_latent_counts_larger_than_the_files_are_named(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    cache = tmp_path / "latents"
    shutil.copytree(data / "latents", cache)

    def grow(meta):  # consistent with itself, not with the files
        meta["splits"]["train"]["n"] += 5
        meta["splits"]["train"]["shards"][0]["n"] += 5
        meta["slices"]["train"] += meta["slices"]["train"][:5]
        meta["integrity"] = layout_digest(meta, "name")  # re-signed: only the files can tell
    _edit_json(cache / "meta.json", grow)
    config = fx.write_config(data, tmp_path / "run", cache=cache)
    res = fx.cli("train", "--config", str(config), "--no-progress", check=False)
    assert res.returncode == 2 and "meta.json says" in res.stderr and "Traceback" not in res.stderr, res.stderr
