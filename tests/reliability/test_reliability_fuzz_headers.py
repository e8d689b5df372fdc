"""Hypothesis fuzzing of NIfTI headers and of the internal JSON files (issue 14, items 3 and 10): whatever a
header or a manifest claims, reading it returns data or raises a ValueError sentence; never another exception,
never an allocation beyond the voxel limit. A few examples per test in CI, many under PHMDIFF_STRESS=1."""

from __future__ import annotations

import copy
import gzip
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.data.latent_cache import LatentPairs, load_cache_meta  # noqa: E402
from phmdiff.data.prepare import load_manifest  # noqa: E402
from phmdiff.data.readers import load_volume  # noqa: E402

STRESS = os.environ.get("PHMDIFF_STRESS") == "1"
SETTINGS = settings(max_examples=300 if STRESS else 25, deadline=None, derandomize=not STRESS, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(1800 if STRESS else 300)
# NIfTI-1 header fields: (byte offset, struct format) of what a crafted file would change.
FIELDS = {"dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim": (76, "<8f"),
          "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "qform_code": (252, "<h"),
          "sform_code": (254, "<h"), "srow_x": (280, "<4f")}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=6)


def _base_volume() -> bytes:
    img = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), np.eye(4))
    with tempfile.TemporaryDirectory() as d:
        nib.save(img, f"{d}/v.nii")
        return Path(f"{d}/v.nii").read_bytes()


BASE = _base_volume()


def _value(fmt: str):
    count = struct.calcsize(fmt) // struct.calcsize(fmt[-1])
    one = (st.integers(-2**15, 2**15 - 1) if fmt[-1] == "h"
           else st.floats(width=32, allow_nan=True, allow_infinity=True))
    return st.lists(one, min_size=count, max_size=count)


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(sorted(FIELDS)), st.just(None), min_size=1, max_size=4),
       data=st.data(), gz=st.booleans())
def test_fuzzed_nifti_headers_give_data_or_a_sentence(changes, data, gz):
    raw = bytearray(BASE)
    for name in changes:
        offset, fmt = FIELDS[name]
        raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *data.draw(_value(fmt), label=name))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("v.nii.gz" if gz else "v.nii")
        path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
        old = os.environ.get("PHMDIFF_MAX_VOXELS")
        os.environ["PHMDIFF_MAX_VOXELS"] = str(64**3)  # whatever the header claims, at most 1 MiB of float32
        try:
            volume, affine, _ = load_volume(path)
            assert volume.size <= 64**3 and np.isfinite(volume).all() and np.isfinite(affine).all()
        except ValueError as exc:
            assert str(exc).startswith(str(path)), exc
        finally:
            os.environ.pop("PHMDIFF_MAX_VOXELS") if old is None else os.environ.update(PHMDIFF_MAX_VOXELS=old)


def _paths(obj, prefix=()):
    """Every key path of a JSON value (lists capped at their first 2 items)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    obj = copy.deepcopy(obj)
    if not path:
        return value
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return obj


@pytest.fixture(scope="module")
def internal(tmp_path_factory):
    data = fx.shared(tmp_path_factory)
    manifest = json.loads((data / "prepared" / "manifest.json").read_text())
    meta = json.loads((data / "latents" / "meta.json").read_text())
    skip = ("inputs", "root", "package_version", "input_hash", "fingerprint", "prepared_dir", "autoencoder_id",
            "prepared_id")  # provenance only: read by no code path that could fail
    return data, manifest, [p for p in _paths(manifest) if not p or p[0] not in skip], meta, \
        [p for p in _paths(meta) if not p or p[0] not in skip]


@SETTINGS
@given(which=st.integers(0, 10**6), value=JSON_VALUES)
def test_fuzzed_manifests_give_a_manifest_or_a_sentence(internal, tmp_path_factory, which, value):
    data, manifest, paths, _, _ = internal
    folder = tmp_path_factory.mktemp("fuzz-manifest")
    path = paths[which % len(paths)]
    (folder / "manifest.json").write_text(json.dumps(_replace(manifest, path, value)))
    (folder / "shards").symlink_to(data / "prepared" / "shards")
    try:
        assert load_manifest(folder)["format"] == manifest["format"]
    except ValueError as exc:  # one sentence that names the file
        assert str(exc).startswith(str(folder / "manifest.json")) and "\n" not in str(exc), exc


@SETTINGS
@given(which=st.integers(0, 10**6), value=JSON_VALUES)
def test_fuzzed_latent_meta_gives_items_or_a_sentence(internal, tmp_path_factory, which, value):
    data, _, _, meta, paths = internal
    folder = tmp_path_factory.mktemp("fuzz-latents")
    path = paths[which % len(paths)]
    (folder / "meta.json").write_text(json.dumps(_replace(meta, path, value)))
    for f in (data / "latents").iterdir():
        if f.name != "meta.json":
            (folder / f.name).symlink_to(f)
    try:
        load_cache_meta(folder)
        pairs = LatentPairs(folder, "train", ["t1", "t2"], "flair")
        for i in range(0, len(pairs), max(1, len(pairs) // 3)):
            item = pairs[i]
            assert np.isfinite(item["target"].numpy()).all()
    except (ValueError, FileNotFoundError):  # FileNotFoundError names its file: one line at the CLI
        pass
