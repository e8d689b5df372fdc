import json
import os

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.data.prepare import (
    PrepareSettings,
    gain_ratios,
    load_manifest,
    prepare,
    read_split_file,
    reference_norm,
    settings_from_manifest,
    split_subjects,
    subject_norm,
)
from phmdiff.data.readers import find_subjects
from phmdiff.data.volume import (
    NormParams,
    VolumeSettings,
    VolumeSpec,
    load_subject_volumes,
    slices_to_volume,
    volume_to_slices,
    write_like,
)

# LPS-like and axis-permuted: (i, j, k) -> (-y, -x, z) with 1 x 1.2 x 2.5 mm voxels.
OBLIQUE = np.array([[0.0, -1.2, 0.0, 90.0], [-1.0, 0.0, 0.0, 120.0], [0.0, 0.0, 2.5, -60.0], [0, 0, 0, 1]])


def _brain(shape, seed):
    """A bright ellipsoid on a zero background: MR-like intensities in arbitrary scanner units."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return np.where(inside, rng.uniform(200, 1800, shape), 0).astype(np.float32)


def _dataset(root, n=3, shape=(20, 18, 8), affine=OBLIQUE, mods=("t1", "t2", "flair"), seed=0):
    for i in range(n):
        for j, mod in enumerate(mods):
            (root / f"s{i:02d}").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(_brain(shape, seed + 10 * i + j), affine), root / f"s{i:02d}" / f"{mod}.nii.gz")
    return root


def _tol(spec, mod):
    """float16 storage of values in about [0, 1] (spacing <= 2**-11 below 1), in the volume's units."""
    return spec.norm[mod].scale * 2.0**-10


def test_round_trip_oblique_orientation_and_240_to_256_pad(tmp_path):
    root = _dataset(tmp_path / "in", n=2, shape=(240, 240, 6))
    out = tmp_path / "prep"
    settings = PrepareSettings(split=(0.5, 0.5, 0.0), volume=VolumeSettings(size=256, min_foreground=0.0))
    assert prepare(root, out, settings, ["t1", "flair"], progress=False) == "built"
    manifest = load_manifest(out)
    assert settings_from_manifest(manifest).size == 256
    for split in ("train", "val"):
        (shard,) = manifest["splits"][split]["shards"]
        data = np.load(out / shard["file"], mmap_mode="r")
        assert data.dtype == np.float16 and data.shape[1:] == (2, 256, 256)
        sid = manifest["slices"][split][0][0]
        spec = VolumeSpec.from_dict(manifest["volumes"][sid])
        assert spec.pad == [[8, 8], [8, 8]]
        for m, mod in enumerate(["t1", "flair"]):
            original = nib.load(root / sid / f"{mod}.nii.gz")
            back = slices_to_volume(data[:, m], spec, mod)
            np.testing.assert_allclose(back, original.get_fdata(), atol=_tol(spec, mod), rtol=0)
            written = write_like(back, root / sid / f"{mod}.nii.gz", tmp_path / "export" / f"{sid}_{mod}.nii.gz")
            again = nib.load(written)
            np.testing.assert_array_equal(again.affine, original.affine)
            np.testing.assert_array_equal(again.get_fdata(dtype=np.float32), back)


@pytest.mark.parametrize("norm", ["percentile", "median"])
def test_canonical_slices_match_a_hand_reorientation_and_normalization(norm):
    # LAS (x flipped): RAS reorientation flips axis 0; axial slices are v[::-1, :, k].
    v = _brain((12, 10, 5), 3)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    settings = VolumeSettings(["t1"], size=None, min_foreground=0.0, norm=norm)
    slices, spec = volume_to_slices({"t1": v}, affine, settings)
    assert spec.axis == 2 and slices.shape == (5, 1, 12, 10)
    fg = v > 0.1 * np.percentile(v, 99)
    if norm == "percentile":  # foreground 0.5 / 99.5 percentiles -> 0 / 1
        lo, hi = np.percentile(v[fg], [0.5, 99.5])
        top = 99.5
    else:  # background (0.5th percentile of the volume) -> 0, foreground median -> 0.5
        lo = np.percentile(v, 0.5)
        hi = lo + 2 * (np.median(v[fg]) - lo)
        top = 50.0
    expected = (np.moveaxis(v[::-1], 2, 0) - lo) / (hi - lo)  # (n, X, Y)
    np.testing.assert_allclose(slices[:, 0], expected, rtol=1e-5, atol=1e-5)
    level = 1.0 if norm == "percentile" else 0.5
    assert abs(np.percentile(slices[:, 0][np.moveaxis(fg[::-1], 2, 0)], top) - level) < 1e-4


def test_ct_window_zscore_context_and_foreground_selection():
    ct = np.full((10, 10, 9), -1000.0, np.float32)
    ct[2:8, 2:8, 3:6] = np.linspace(-200, 2000, 108).reshape(6, 6, 3)
    mr = np.where(ct > -500, ct + 1500.0, 0.0).astype(np.float32)
    s = VolumeSettings(["mr", "ct"], size=None, min_foreground=0.3, context=1, norm="zscore")
    slices, spec = volume_to_slices({"mr": mr, "ct": ct}, np.eye(4), s)
    assert spec.indices == [3, 4, 5] and slices.shape == (3, 6, 10, 10)  # 36% foreground only on slices 3..5
    # channels: mr (k-1, k, k+1), ct (k-1, k, k+1)
    np.testing.assert_allclose(slices[:, 4], ((ct[..., 3:6] + 1024) / 4095).transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(slices[:, 3], ((ct[..., 2:5] + 1024) / 4095).transpose(2, 0, 1), atol=1e-6)
    inside = mr[mr > 0]
    z = (mr[..., 4] - inside.mean()) / (6 * inside.std()) + 0.5
    np.testing.assert_allclose(slices[1, 1], z, atol=1e-5)
    back = slices_to_volume(slices[:, 4], spec, "ct")
    np.testing.assert_allclose(back[..., 3:6], ct[..., 3:6], atol=1e-3)
    assert np.all(back[..., :3] == -1024.0)  # dropped slices come back as the window's air value


def test_split_is_by_subject_seeded_and_a_split_file_is_obeyed(tmp_path):
    ids = [f"s{i:02d}" for i in range(10)]
    a, b = split_subjects(ids, (0.6, 0.2, 0.2), 0), split_subjects(ids, (0.6, 0.2, 0.2), 1)
    assert a == split_subjects(ids, (0.6, 0.2, 0.2), 0) and a != b
    assert sorted(a.values()).count("train") == 6 and sorted(a.values()).count("test") == 2
    root = _dataset(tmp_path / "in", n=6, shape=(12, 12, 6))
    out = tmp_path / "prep"
    rc = main(["prepare", str(root), str(out), "--size", "16", "--split", "0.5", "0.25", "0.25", "--seed", "3"])
    assert rc == 0
    manifest = load_manifest(out)
    owners = {}
    for split, pairs in manifest["slices"].items():
        assert len(pairs) == manifest["splits"][split]["n"]
        for sid, _ in pairs:
            owners.setdefault(sid, set()).add(split)
    assert all(len(v) == 1 for v in owners.values()) and len(owners) == 6  # no subject in two splits
    assert {sid: s.pop() for sid, s in owners.items()} == manifest["split"]
    fixed = tmp_path / "split.txt"
    fixed.write_text("\n".join(f"s{i:02d} {'test' if i < 2 else 'train'}" for i in range(6)))
    assert main(["prepare", str(root), str(tmp_path / "p2"), "--size", "16", "--split-file", str(fixed)]) == 0
    assert {p[0] for p in load_manifest(tmp_path / "p2")["slices"]["test"]} == {"s00", "s01"}
    twice = tmp_path / "twice.json"  # a subject in two splits is refused, in either format
    twice.write_text(json.dumps({"train": ids[:4], "val": ["s03"], "test": ids[4:]}))
    with pytest.raises(ValueError, match="s03 is assigned to both train and val"):
        read_split_file(twice, ids)
    fixed.write_text(fixed.read_text() + "\ns01 train")
    with pytest.raises(ValueError, match="s01 is assigned to both test and train"):
        read_split_file(fixed, ids[:6])


def test_rerun_reuses_and_changed_input_or_settings_rebuild(tmp_path, capsys):
    root = _dataset(tmp_path / "in", n=2, shape=(12, 12, 6))
    out = tmp_path / "prep"
    args = ["prepare", str(root), str(out), "--size", "16"]
    assert main(args) == 0
    first = (out / "manifest.json").read_bytes()
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(args) == 0 and "reused" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    assert main([*args, "--min-foreground", "0.2"]) == 0  # settings changed -> rebuilt
    assert "prepared" in capsys.readouterr().err and (out / "manifest.json").read_bytes() != first
    path = root / "s00" / "t1.nii.gz"
    nib.save(nib.Nifti1Image(_brain((12, 12, 6), 99), OBLIQUE), path)
    os.utime(path, ns=(stamp, stamp))
    before = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert main([*args, "--min-foreground", "0.2"]) == 0  # input content changed -> rebuilt
    assert "prepared" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "prep"]  # no temp folders left


def test_dry_run_lists_subjects_and_problems_and_writes_nothing(tmp_path, capsys):
    root = _dataset(tmp_path / "in", n=2, shape=(8, 8, 4))
    (root / "s01" / "flair.nii.gz").unlink()
    assert main(["prepare", str(root), str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 subjects" in text and "s00: flair t1 t2" in text and "missing modality flair" in text
    assert not (tmp_path / "out").exists()


def test_load_subject_volumes_and_the_resize_fit(tmp_path):
    root = _dataset(tmp_path / "in", n=1, shape=(30, 20, 4), affine=np.eye(4))
    (subject,) = find_subjects(root)
    volumes, affine, _ = load_subject_volumes(subject, ["t2", "t1"])
    assert list(volumes) == ["t2", "t1"] and volumes["t1"].shape == (30, 20, 4)
    s = VolumeSettings(["t1"], size=16, fit="resize", min_foreground=0.0)
    slices, spec = volume_to_slices(volumes, affine, s)
    assert slices.shape == (4, 1, 16, 16) and spec.resized_from == [30, 30]
    back = slices_to_volume(slices[:, 0], spec, "t1")
    assert back.shape == (30, 20, 4)
    assert np.corrcoef(back.ravel(), volumes["t1"].ravel())[0, 1] > 0.6  # lossy, but the same picture
    with pytest.raises(ValueError, match=r"expected \(4, H, W\)"):
        slices_to_volume(slices[:2, 0], spec, "t1")


def test_a_synthesized_modality_is_inverted_with_the_training_median_scale(tmp_path):
    root = _dataset(tmp_path / "in", n=4, shape=(12, 12, 6))
    out = tmp_path / "prep"
    prepare(root, out, PrepareSettings(split=(0.5, 0.25, 0.25), volume=VolumeSettings(size=16, min_foreground=0.0)),
            ["t1", "flair"], progress=False)
    manifest = load_manifest(out)
    train = [v["norm"]["flair"] for v in manifest["volumes"].values() if v["split"] == "train"]
    norm = reference_norm(manifest, "flair")
    assert norm.offset == pytest.approx(np.median([p["offset"] for p in train]))
    assert norm.scale == pytest.approx(np.median([p["scale"] for p in train]))
    sid = manifest["slices"]["test"][0][0]
    t1_only = VolumeSpec.from_dict(manifest["volumes"][sid])
    t1_only.norm.pop("flair")
    pred = np.full((6, 16, 16), 0.5, np.float32)
    with pytest.raises(ValueError, match="reference_norm"):
        slices_to_volume(pred, t1_only, "flair")
    back = slices_to_volume(pred, t1_only, "flair", norm=norm)
    np.testing.assert_allclose(back, norm.offset + 0.5 * norm.scale, rtol=1e-6)


def test_a_subjects_target_scale_follows_its_sources_gain(tmp_path):
    # One anatomy, one gain per subject on every modality: the target's percentiles scale with the gain, so
    # the sources' scales give a held-out subject's target normalization exactly; the training median does not.
    base = {mod: _brain((12, 12, 6), j) for j, mod in enumerate(("t1", "t2", "flair"))}
    gains = [0.6, 0.9, 1.0, 1.4, 2.3]
    for i, g in enumerate(gains):
        (tmp_path / "in" / f"s{i:02d}").mkdir(parents=True)
        for mod, v in base.items():
            nib.save(nib.Nifti1Image(g * v, OBLIQUE), tmp_path / "in" / f"s{i:02d}" / f"{mod}.nii.gz")
    out = tmp_path / "prep"
    prepare(tmp_path / "in", out, PrepareSettings(split=(0.6, 0.2, 0.2), volume=VolumeSettings(size=16)),
            ["t1", "t2", "flair"], progress=False)
    manifest = load_manifest(out)
    ratios = gain_ratios(manifest, "flair", ["t1", "t2"])
    reference = reference_norm(manifest, "flair")
    for v in manifest["volumes"].values():
        spec = VolumeSpec.from_dict(v)
        truth = spec.norm.pop("flair")
        got = subject_norm(reference, ratios, spec.norm)
        assert (got.offset, got.scale) == pytest.approx((truth.offset, truth.scale), rel=1e-6)  # float32 files
    held_out = [VolumeSpec.from_dict(v).norm["flair"] for v in manifest["volumes"].values() if v["split"] != "train"]
    assert any(abs(n.scale / reference.scale - 1) > 0.2 for n in held_out)  # the median alone is off by > 20%
    assert subject_norm(reference, None, {}) is reference
    blank = {"t1": NormParams("percentile", 0.0, 0.0), "t2": spec.norm["t2"]}  # a constant source volume
    assert subject_norm(reference, ratios, blank) is reference


def test_a_ct_target_keeps_its_fixed_window(tmp_path):
    root = _dataset(tmp_path / "in", n=3, mods=("mr", "ct"))
    out = tmp_path / "prep"
    prepare(root, out, PrepareSettings(split=(0.67, 0.33, 0.0), volume=VolumeSettings(size=32, min_foreground=0.0)),
            ["mr", "ct"], progress=False)
    assert gain_ratios(load_manifest(out), "ct", ["mr"]) is None


def test_png_folders_prepare_and_invert_to_the_pixel_values(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for mod, dtype, top in (("t1", np.uint8, 255), ("t2", np.uint16, 65535)):
        (tmp_path / "in" / mod).mkdir(parents=True)
        for sid in ("p1", "p2"):
            for k in range(3):
                img = rng.integers(0, top, (12, 10)).astype(dtype)
                pixels[(mod, sid, k)] = img
                Image.fromarray(img).save(tmp_path / "in" / mod / f"{sid}_{k}.png")
    out = tmp_path / "prep"
    assert main(["prepare", str(tmp_path / "in"), str(out), "--size", "16", "--min-foreground", "0",
                 "--split", "0.5", "0.5", "0", "--dtype", "float32"]) == 0
    manifest = load_manifest(out)
    assert manifest["layout"] == "png" and manifest["modalities"] == ["t1", "t2"]
    split = manifest["volumes"]["p1"]["split"]
    data = np.load(out / manifest["splits"][split]["shards"][0]["file"])
    spec = VolumeSpec.from_dict(manifest["volumes"]["p1"])
    for m, mod in enumerate(("t1", "t2")):
        back = slices_to_volume(data[:, m], spec, mod)  # (H, W, slices), as read
        expected = np.stack([pixels[(mod, "p1", k)] for k in range(3)], axis=-1).astype(np.float32)
        np.testing.assert_allclose(back, expected, atol=spec.norm[mod].scale * 1e-6)


def test_write_like_is_byte_reproducible_with_a_clean_gzip_header(tmp_path):
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(_brain((6, 5, 4), 1), OBLIQUE), ref)
    arr = _brain((6, 5, 4), 2)
    first = write_like(arr, ref, tmp_path / "a" / "out.nii.gz").read_bytes()
    os.utime(ref)  # a later second, another temporary name: neither may reach the bytes
    second = write_like(arr, ref, tmp_path / "b" / "other.nii.gz").read_bytes()
    assert first == second
    # gzip header (RFC 1952): flags byte 3 without FNAME (0x08), mtime bytes 4..8 zero.
    assert first[:2] == b"\x1f\x8b" and first[3] & 0x08 == 0 and first[4:8] == b"\0\0\0\0"
    np.testing.assert_array_equal(nib.load(tmp_path / "b" / "other.nii.gz").get_fdata(dtype=np.float32), arr)
    plain = write_like(arr, ref, tmp_path / "c" / "out.nii")
    assert plain.read_bytes()[:2] != b"\x1f\x8b"
    np.testing.assert_array_equal(nib.load(plain).get_fdata(dtype=np.float32), arr)


def _lesioned(seed: int, lesion_fraction: float, gain: float) -> dict[str, np.ndarray]:
    """Three modalities of one head whose bright lesion covers `lesion_fraction` of the foreground."""
    rng = np.random.default_rng(seed)
    shape = (16, 16, 8)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grid)
    inside = r2 < 0.8
    lesion = inside & (r2 < np.quantile(r2[inside], lesion_fraction))
    tissue = rng.uniform(0.8, 1.2, shape)
    out = {}
    for mod, level, bright in (("t1", 900.0, 0.5), ("t2", 600.0, 3.0), ("flair", 400.0, 4.0)):
        v = np.where(inside, level * tissue, 0.0) * np.where(lesion, bright, 1.0)
        out[mod] = (gain * v).astype(np.float32)
    return out


def test_median_normalization_is_not_moved_by_the_lesion():
    # The 99.5th percentile of a bright lesion's modality follows the lesion; the median does not (much).
    small, big = _lesioned(0, 0.01, 1.0), _lesioned(0, 0.08, 1.0)
    affine = np.eye(4)
    scales = {}
    for norm in ("median", "percentile"):
        s = VolumeSettings(["t1", "t2", "flair"], size=16, min_foreground=0.0, norm=norm)
        a = volume_to_slices(small, affine, s)[1].norm["flair"]
        b = volume_to_slices(big, affine, s)[1].norm["flair"]
        scales[norm] = abs(b.scale / a.scale - 1)
    assert scales["percentile"] > 0.4  # the upper percentile lands in the lesion: the scale jumps
    assert scales["median"] < 0.1


def test_relative_target_normalization_inverts_a_perfect_prediction_exactly(tmp_path):
    # Training normalizes the target by its sources' parameters; translate has those for a new subject, so
    # the normalized truth goes back to scanner units to float precision, whatever the subject's gain.
    for i, (gain, lesion) in enumerate(((0.7, 0.01), (1.0, 0.03), (1.9, 0.08), (2.5, 0.05))):
        folder = tmp_path / "in" / f"s{i:02d}"
        folder.mkdir(parents=True)
        for mod, v in _lesioned(i, lesion, gain).items():
            nib.save(nib.Nifti1Image(v, OBLIQUE), folder / f"{mod}.nii.gz")
    volume = VolumeSettings(size=16, min_foreground=0.0, relative={"flair": ["t1", "t2"]})
    out = tmp_path / "prep"
    prepare(tmp_path / "in", out, PrepareSettings(split=(0.5, 0.25, 0.25), volume=volume), ["t1", "t2", "flair"],
            progress=False)
    manifest = load_manifest(out)
    settings = settings_from_manifest(manifest)
    assert settings.relative == {"flair": ["t1", "t2"]}
    for sub in find_subjects(tmp_path / "in"):
        vols, affine, _ = load_subject_volumes(sub, ["t1", "t2", "flair"])
        slices, spec = volume_to_slices(vols, affine, settings)
        assert spec.norm["flair"].kind == "relative"
        # translate's view: the sources only, the target's map from theirs
        _, src_spec = volume_to_slices({m: vols[m] for m in ("t1", "t2")}, affine, settings)
        from phmdiff.translate import target_norm_for

        norm = target_norm_for(settings, "flair", ["t1", "t2"], src_spec.norm, None, None)
        back = slices_to_volume(slices[:, 2], spec, "flair", norm=norm)
        np.testing.assert_allclose(back, vols["flair"], atol=1e-3 * float(vols["flair"].max()))
    with pytest.raises(ValueError, match="relative normalization"):
        VolumeSettings(relative={"flair": ["flair"]})
