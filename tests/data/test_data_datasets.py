import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from phmdiff.data.datasets import PairedSlices, TargetSlices
from phmdiff.data.prepare import PrepareSettings, load_manifest, prepare
from phmdiff.data.volume import VolumeSettings


def _prepared(tmp_path, context=0, n=3):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(n):
        for mod in ("t1", "t2", "flair"):
            (root / f"s{i}").mkdir(parents=True, exist_ok=True)
            v = np.zeros((12, 10, 6), np.float32)
            v[1:-1, 1:-1] = rng.uniform(50, 500, (10, 8, 6))
            nib.save(nib.Nifti1Image(v, np.eye(4)), root / f"s{i}" / f"{mod}.nii.gz")
    out = tmp_path / "prep"
    settings = PrepareSettings(split=(0.34, 0.33, 0.33), shard_mib=0.001,  # tiny shards: one per subject
                               volume=VolumeSettings(size=16, min_foreground=0.0, context=context))
    prepare(root, out, settings, ["t1", "t2", "flair"], progress=False)
    return out


def _shard_rows(out, split):
    m = load_manifest(out)
    return np.concatenate([np.load(out / s["file"]) for s in m["splits"][split]["shards"]]).astype(np.float32)


def test_paired_slices_match_the_shards_in_minus_one_to_one(tmp_path):
    out = _prepared(tmp_path)
    rows = _shard_rows(out, "train")
    ds = PairedSlices(out, "train", sources=("t1", "flair"), target="t2")
    assert len(ds) == len(rows) == 6 and len(load_manifest(out)["splits"]["train"]["shards"]) == 1
    item = ds[4]
    assert item["source"].shape == (2, 16, 16) and item["target"].shape == (1, 16, 16)
    assert item["source"].dtype == torch.float32 and item["target_label"] == 1
    torch.testing.assert_close(item["source"], torch.from_numpy(rows[4, [0, 2]] * 2 - 1))
    torch.testing.assert_close(item["target"], torch.from_numpy(rows[4, [1]] * 2 - 1))
    assert item["avail"].tolist() == [1.0, 1.0]
    assert (item["subject"], item["index"]) == tuple(load_manifest(out)["slices"]["train"][4])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["source"].shape == (4, 2, 16, 16) and batch["target_label"].tolist() == [1] * 4


def test_index_runs_across_shards(tmp_path):
    out = _prepared(tmp_path, n=6)
    m = load_manifest(out)
    assert len(m["splits"]["train"]["shards"]) == 2  # two subjects in train, one shard each
    rows = _shard_rows(out, "train")
    ds = TargetSlices(out, "train", target="flair")
    for i in (0, 5, 6, 11):
        torch.testing.assert_close(ds[i]["target"], torch.from_numpy(rows[i, [2]] * 2 - 1))
    with pytest.raises(IndexError):
        ds[12]


def test_flips_are_deterministic_per_seed_and_epoch(tmp_path):
    out = _prepared(tmp_path)
    plain = PairedSlices(out, "train")
    a = PairedSlices(out, "train", flip=True, seed=1)

    def flips(ds):
        return [not torch.equal(ds[i]["target"], plain[i]["target"]) for i in range(len(ds))]

    for i in range(len(a)):
        x, y = a[i], plain[i]
        assert torch.equal(x["target"], y["target"]) or torch.equal(x["target"], y["target"].flip(-1))
        assert torch.equal(x["source"], y["source"]) == torch.equal(x["target"], y["target"])  # flipped together
    per_seed = {}
    for seed in (1, 2):
        c = PairedSlices(out, "train", flip=True, seed=seed)
        per_seed[seed] = []
        for epoch in range(6):
            a.set_epoch(epoch)
            c.set_epoch(epoch)
            per_seed[seed].append(tuple(flips(c)))
            if seed == 1:
                assert per_seed[1][-1] == tuple(flips(a))  # same seed and epoch: same flips
    assert len(set(per_seed[1])) > 1  # epochs differ (6 slices x 6 epochs: all equal has probability 2**-30)
    assert per_seed[1] != per_seed[2]  # seeds differ


def test_context_sources_and_centre_target(tmp_path):
    out = _prepared(tmp_path, context=1)
    rows = _shard_rows(out, "train")
    assert rows.shape[1] == 9  # 3 modalities x 3 slices
    item = PairedSlices(out, "train", sources=("t1", "t2"), target="flair")[2]
    assert item["source"].shape == (6, 16, 16)
    torch.testing.assert_close(item["source"], torch.from_numpy(rows[2, :6] * 2 - 1))
    torch.testing.assert_close(item["target"], torch.from_numpy(rows[2, [7]] * 2 - 1))  # flair's centre slice


def test_unknown_modality_or_split_is_a_sentence(tmp_path):
    out = _prepared(tmp_path)
    with pytest.raises(ValueError, match="modality 'ct' was not prepared"):
        PairedSlices(out, "train", target="ct")
    with pytest.raises(ValueError, match="split 'training' is unknown"):
        TargetSlices(out, "training")
    with pytest.raises(ValueError, match="no manifest.json"):
        TargetSlices(tmp_path, "train")
