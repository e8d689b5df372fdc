import math
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from phmdiff.autoencoder import IdentityAutoencoder, save_autoencoder
from phmdiff.cli import main
from phmdiff.data.latent_cache import LatentPairs, autoencoder_id, encode_prepared, load_cache_meta
from phmdiff.data.prepare import PrepareSettings, load_manifest, prepare, prepared_id
from phmdiff.data.volume import VolumeSettings

LOGVAR = math.log(0.25)  # posterior std 0.5 everywhere


class TinyAE(nn.Module):
    """The autoencoder interface the cache needs: encode -> posterior(.mean, .logvar), scale, factor, channels."""

    downsample_factor, latent_channels, in_channels = 2, 2, 1

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 2, stride=2)
        self.register_buffer("latent_scale", torch.tensor(0.5))

    def encode(self, x):
        mean = self.conv(x)  # (N, 2, H/2, W/2)
        return SimpleNamespace(mean=mean, logvar=torch.full_like(mean, LOGVAR))


def _setup(tmp_path, seed=0):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(3):
        for mod in ("t1", "t2", "flair"):
            (root / f"s{i}").mkdir(parents=True, exist_ok=True)
            v = np.zeros((8, 8, 4), np.float32)
            v[1:-1, 1:-1] = rng.uniform(50, 500, (6, 6, 4))
            nib.save(nib.Nifti1Image(v, np.eye(4)), root / f"s{i}" / f"{mod}.nii.gz")
    prep = tmp_path / "prep"
    settings = PrepareSettings(split=(0.34, 0.33, 0.33), volume=VolumeSettings(size=8, min_foreground=0.0))
    prepare(root, prep, settings, ["t1", "t2", "flair"], progress=False)
    model = TinyAE(seed)
    ae_file = tmp_path / f"ae{seed}.pt"
    torch.save(model.state_dict(), ae_file)
    return prep, model, ae_file


def test_backends_store_the_same_posteriors_and_match_the_model(tmp_path):
    prep, model, ae_file = _setup(tmp_path)
    ae_id = autoencoder_id(ae_file)
    for backend in ("npy", "lmdb", "wds"):
        assert encode_prepared(prep, model, tmp_path / backend, ae_id, backend, batch_size=5, progress=False) == "built"
    manifest = load_manifest(prep)
    shard = np.load(prep / manifest["splits"]["train"]["shards"][0]["file"]).astype(np.float32)  # (n, 3, 8, 8)
    with torch.no_grad():
        direct = model.encode(torch.from_numpy(shard[:, 1:2] * 2 - 1)).mean.numpy()  # t2 of every train slice
    readers = {b: LatentPairs(tmp_path / b, "train", ("t1",), "t2", seed=0) for b in ("npy", "lmdb", "wds")}
    for i in range(len(readers["npy"])):
        got = {b: r.reader.get(i) for b, r in readers.items()}
        for b in ("lmdb", "wds"):
            np.testing.assert_array_equal(got[b][0], got["npy"][0])  # identical float16 bytes
            np.testing.assert_array_equal(got[b][1], got["npy"][1])
        mean, logvar = got["npy"]
        assert mean.shape == (3, 2, 4, 4) and mean.dtype == np.float16
        np.testing.assert_allclose(mean[1].astype(np.float32), direct[i], atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(logvar.astype(np.float32), LOGVAR, atol=1e-3)
        for b in ("lmdb", "wds"):  # same seed: same sampled latents whatever the backend
            torch.testing.assert_close(readers[b][i]["target"], readers["npy"][i]["target"])
    meta = load_cache_meta(tmp_path / "npy")
    assert meta["latent_scale"] == 0.5 and meta["item_shape"] == [3, 2, 4, 4]
    assert meta["prepared_id"] == prepared_id(prep)


def test_latent_pairs_sample_the_posterior(tmp_path):
    prep, model, ae_file = _setup(tmp_path)
    encode_prepared(prep, model, tmp_path / "cache", autoencoder_id(ae_file), progress=False)
    ds = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2", autoencoder_id=ae_file, prepared_id=prep)
    mean, _ = ds.reader.get(0)
    item = ds[0]
    assert item["source"].shape == (4, 4, 4) and item["target"].shape == (2, 4, 4)
    assert item["target_label"] == 1 and item["avail"].tolist() == [1.0, 1.0]
    assert torch.equal(ds[0]["target"], item["target"])  # deterministic per (seed, epoch, index)
    draws = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        draws.append(ds[0]["target"])
    eps = (torch.stack(draws) / 0.5 - torch.from_numpy(mean[1].astype(np.float32))) / 0.5  # should be N(0, 1)
    assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1.0) < 0.08  # 1280 draws: about 4 sigma bounds
    other = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2", seed=1)
    assert not torch.equal(other[0]["target"], item["target"])


def test_latent_pairs_crop_one_random_window_shared_by_source_and_target(tmp_path):
    prep, model, ae_file = _setup(tmp_path)
    encode_prepared(prep, model, tmp_path / "cache", autoencoder_id(ae_file), progress=False)
    full = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2")
    crops = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2", crop=2)
    offsets = set()
    for epoch in range(12):
        full.set_epoch(epoch), crops.set_epoch(epoch)
        a, b = full[0], crops[0]
        assert b["source"].shape == (4, 2, 2) and b["target"].shape == (2, 2, 2)
        hits = [(i, j) for i in range(3) for j in range(3)
                if torch.equal(a["target"][:, i : i + 2, j : j + 2], b["target"])
                and torch.equal(a["source"][:, i : i + 2, j : j + 2], b["source"])]
        assert hits  # the same window of the same draw for source and target
        offsets.add(hits[0])
    assert len(offsets) > 2  # the window moves between epochs
    for k in range(len(full)):  # a crop never changes which slice an item is
        assert (crops[k]["subject"], crops[k]["index"]) == (full[k]["subject"], full[k]["index"])


def test_latent_pairs_flip_mirrors_source_and_target_together_in_half_the_draws(tmp_path):
    prep, model, ae_file = _setup(tmp_path)
    encode_prepared(prep, model, tmp_path / "cache", autoencoder_id(ae_file), progress=False)
    plain = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2")
    flips = LatentPairs(tmp_path / "cache", "train", ("t1", "flair"), "t2", flip=True)
    seen = []
    for epoch in range(16):
        plain.set_epoch(epoch), flips.set_epoch(epoch)
        a, b = plain[0], flips[0]
        mirrored = torch.equal(b["target"], a["target"].flip(-1)) and torch.equal(b["source"], a["source"].flip(-1))
        assert mirrored or (torch.equal(b["target"], a["target"]) and torch.equal(b["source"], a["source"]))
        assert not torch.equal(a["target"], a["target"].flip(-1))  # a mirror is told apart from the original
        seen.append(mirrored)
    assert 3 <= sum(seen) <= 13  # about half, and both kinds


def test_cache_refuses_another_autoencoder_or_other_data_and_reuses_its_own(tmp_path):
    prep, model, ae_file = _setup(tmp_path)
    cache = tmp_path / "cache"
    encode_prepared(prep, model, cache, autoencoder_id(ae_file), progress=False)
    other = TinyAE(seed=1)
    other_file = tmp_path / "other.pt"
    torch.save(other.state_dict(), other_file)
    with pytest.raises(ValueError, match="latent cache was made by autoencoder .* not by the given autoencoder"):
        LatentPairs(cache, "train", ("t1",), "t2", autoencoder_id=other_file)
    with pytest.raises(ValueError, match="not by the given prepared"):
        LatentPairs(cache, "train", ("t1",), "t2", prepared_id="0" * 64)
    with pytest.raises(ValueError, match="modality 'ct' is not in the latent cache"):
        LatentPairs(cache, "train", ("t1",), "ct")
    stamp = (cache / "meta.json").stat().st_mtime_ns
    assert encode_prepared(prep, model, cache, autoencoder_id(ae_file), progress=False) == "reused"
    assert (cache / "meta.json").stat().st_mtime_ns == stamp
    assert encode_prepared(prep, other, cache, autoencoder_id(other_file), progress=False) == "built"
    assert load_cache_meta(cache, autoencoder=other_file)["autoencoder_id"] == autoencoder_id(other_file)


def test_encode_command_with_the_identity_autoencoder(tmp_path):
    prep, _, _ = _setup(tmp_path)
    ae_file = tmp_path / "identity.safetensors"
    save_autoencoder(IdentityAutoencoder(), ae_file)
    assert main(["encode", str(prep), str(ae_file), str(tmp_path / "cache"), "--backend", "lmdb"]) == 0
    ds = LatentPairs(tmp_path / "cache", "val", ("t1", "t2"), "flair", autoencoder_id=ae_file, prepared_id=prep)
    shard = np.load(prep / load_manifest(prep)["splits"]["val"]["shards"][0]["file"]).astype(np.float32)
    scale = float(ds.latent_scale)
    torch.testing.assert_close(ds[1]["target"] / scale, torch.from_numpy(shard[1, 2:3] * 2 - 1), atol=2e-3, rtol=0)


def test_generation_targets_read_one_lmdb_cache_through_one_environment(tmp_path):
    from phmdiff.data.latent_cache import LatentTargets

    prep, model, ae_file = _setup(tmp_path)
    encode_prepared(prep, model, tmp_path / "lmdb", autoencoder_id(ae_file), "lmdb", progress=False)
    data = LatentTargets(tmp_path / "lmdb", "train", ("t1", "t2"), seed=0)
    items = [data[k] for k in range(len(data))]  # both modalities: a second lmdb.open would raise here
    assert {it["target_label"] for it in items} == {0, 1} and all(it["target"].shape == (2, 4, 4) for it in items)
