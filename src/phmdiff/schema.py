"""Types of the internal JSON files (a prepared folder's manifest.json, a latent cache's meta.json), checked
when they are read: a hand-edited or crafted file ends in a sentence naming the key, not a traceback deep
inside a dataset, and never silently means something else (a string where a list of modalities belongs)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from phmdiff.fsutil import safe_name, safe_relpath
from phmdiff.limits import check_voxels

SPLITS = ("train", "val", "test")
MAX_CONTEXT_CHANNELS = 65  # 2k+1 neighbouring slices per modality; far beyond any useful 2.5D context


def _fail(path, key: str, expected: str, value) -> ValueError:
    shown = repr(value)
    return ValueError(f"{path}: '{key}' is {shown[:80]}{'...' if len(shown) > 80 else ''}; expected {expected}.")


def _int(value, path, key: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _fail(path, key, f"a whole number from {low}" + (f" to {high}" if high is not None else ""), value)
    return value


def _dict(value, path, key: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, key, "an object", value)
    return value


def _modalities(value, path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise _fail(path, "modalities", "a non-empty list of names", value)
    for m in value:
        safe_name(m, "modality name", path)
    return value


def _splits(meta: dict, path, file_key: str) -> None:
    splits = _dict(meta.get("splits"), path, "splits")
    slices = _dict(meta.get("slices"), path, "slices")
    for split in SPLITS:
        entry = _dict(splits.get(split), path, f"splits.{split}")
        n = _int(entry.get("n"), path, f"splits.{split}.n")
        shards = entry.get("shards")
        if not isinstance(shards, list):
            raise _fail(path, f"splits.{split}.shards", "a list", shards)
        total = 0
        for i, shard in enumerate(shards):
            shard = _dict(shard, path, f"splits.{split}.shards[{i}]")
            total += _int(shard.get("n"), path, f"splits.{split}.shards[{i}].n")
            name = shard.get(file_key)
            safe_relpath(name, Path(path).parent, path) if file_key == "file" else safe_name(name, "shard name", path)
        if total != n:
            raise _fail(path, f"splits.{split}.n", f"the sum of its shards' n ({total})", n)
        rows = slices.get(split, [])
        if not isinstance(rows, list) or len(rows) != n:
            raise _fail(path, f"slices.{split}", f"a list of {n} [subject, index] pairs", f"{type(rows).__name__} "
                        f"of {len(rows) if isinstance(rows, list) else '?'}")
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
                    and isinstance(row[1], int) and not isinstance(row[1], bool)):
                raise _fail(path, f"slices.{split}[{i}]", "a [subject, index] pair", row)


def layout_digest(meta: dict, file_key: str) -> str:
    """sha256 of what decides which channel is which modality: the modality order, the channels per modality
    (or the item shape) and every shard with its row count and content checksum."""
    shards = [[split, shard.get(file_key), shard.get("n"), shard.get("sha256")]
              for split in SPLITS for shard in meta["splits"][split]["shards"]]
    blob = {"modalities": meta.get("modalities"), "channels": meta.get("channels_per_modality", meta.get("item_shape")),
            "shards": shards}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _check_layout(meta: dict, path, file_key: str, writer: str) -> None:
    """The record the writer made of the modality order and shards must still match: a swapped modality list
    would otherwise train on swapped channels."""
    recorded = meta.get("integrity")
    if recorded is None:
        raise ValueError(f"{path}: has no integrity record of its modality order and shards (written by an older "
                         f"phmdiff, or edited); run phmdiff {writer} again.")
    if recorded != layout_digest(meta, file_key):
        raise ValueError(f"{path}: the modality order, channels or shard list no longer match the record phmdiff "
                         f"{writer} wrote (the file was edited); run phmdiff {writer} again instead of editing it.")


def check_shard_checksum(path, shard: dict, manifest_path) -> None:
    """A shard file's content against the sha256 its manifest recorded."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != shard.get("sha256"):
        raise ValueError(f"{path}: shard content does not match the checksum in {manifest_path}; the shard was "
                         "replaced or damaged; run phmdiff prepare again.")


def check_manifest(manifest, path) -> dict:
    """A prepared folder's manifest.json: the types every reader relies on."""
    manifest = _dict(manifest, path, "(top level)")
    _modalities(manifest.get("modalities"), path)
    _int(manifest.get("channels_per_modality", 1), path, "channels_per_modality", 1, MAX_CONTEXT_CHANNELS)
    if manifest.get("channels_per_modality", 1) % 2 == 0:
        raise _fail(path, "channels_per_modality", "an odd number (2k+1 context slices)",
                    manifest["channels_per_modality"])
    _dict(_dict(manifest.get("config"), path, "config").get("volume"), path, "config.volume")
    _dict(manifest.get("split", {}), path, "split")
    for sid, volume in _dict(manifest.get("volumes", {}), path, "volumes").items():
        _dict(volume, path, f"volumes.{sid}")
    _splits(manifest, path, "file")
    _check_layout(manifest, path, "file", "prepare")
    return manifest


def check_cache_meta(meta, path) -> dict:
    """A latent cache's meta.json: the types every reader relies on, and the item size within the limits."""
    meta = _dict(meta, path, "(top level)")
    modalities = _modalities(meta.get("modalities"), path)
    shape = meta.get("item_shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise _fail(path, "item_shape", "four positive sizes [n_mod, c, h, w]", shape)
    if shape[0] != len(modalities):
        raise _fail(path, "item_shape[0]", f"the number of modalities ({len(modalities)})", shape[0])
    check_voxels(shape, path, "latent item")
    if meta.get("backend") not in ("npy", "lmdb", "wds"):
        raise _fail(path, "backend", "one of npy, lmdb, wds", meta.get("backend"))
    if meta.get("dtype") not in ("float16", "float32"):
        raise _fail(path, "dtype", "float16 or float32", meta.get("dtype"))
    for key in ("latent_channels", "downsample_factor"):
        _int(meta.get(key), path, key, 1, 1 << 16)
    scale = meta.get("latent_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise _fail(path, "latent_scale", "a finite positive number", scale)
    _splits(meta, path, "name")
    _check_layout(meta, path, "name", "encode")
    return meta


# The JSON files evaluate and report read (written by translate and evaluate, possibly received from others). -----
def read_json(path, check):
    """`check(json of path, path)`; an unreadable or invalid file is one sentence naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; expected a JSON file written by phmdiff.") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({getattr(exc, 'msg', type(exc).__name__)}).") from None
    return check(value, path)


def _str(value, path, key: str, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise _fail(path, key, "a text" + (" or null" if optional else ""), value)
    return value


def _strs(value, path, key: str) -> list:
    if not isinstance(value, list):
        raise _fail(path, key, "a list of texts", value)
    for i, v in enumerate(value):
        _str(v, path, f"{key}[{i}]")
    return value


def _number(value, path, key: str, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, key, "a finite number" + (" or null" if optional else ""), value)
    return value


def _kind(value, path, key: str):
    if value is not None and value not in ("mr", "ct"):
        raise _fail(path, key, "'mr' or 'ct'", value)
    return value


def _subject_entry(s, path, key: str) -> dict:
    s = _dict(s, path, key)
    _str(s.get("subject"), path, f"{key}.subject")
    _str(s.get("prediction"), path, f"{key}.prediction")
    for k in ("std", "ceiling", "reference", "mask", "seg", "target", "slice_axis"):
        _str(s.get(k), path, f"{key}.{k}", optional=True)
    _strs(s.get("samples") or [], path, f"{key}.samples")
    images = s.get("source_images")
    if images is not None:
        for m, p in _dict(images, path, f"{key}.source_images").items():
            _str(p, path, f"{key}.source_images.{m}")
    return s


def check_translate_json(meta, path) -> dict:
    """translate.json: the keys evaluate, segcheck and report read, with their types."""
    meta = _dict(meta, path, "(top level)")
    _str(meta.get("target"), path, "target", optional=True)
    _strs(meta.get("sources") or [], path, "sources")
    _kind(meta.get("modality_kind"), path, "modality_kind")
    for k in ("checkpoint", "sampler", "run"):
        _str(meta.get(k), path, k, optional=True)
    for k in ("steps", "guidance"):
        _number(meta.get(k), path, k)
    subjects = meta.get("subjects", [])
    if not isinstance(subjects, list):
        raise _fail(path, "subjects", "a list", subjects)
    for i, s in enumerate(subjects):
        _subject_entry(s, path, f"subjects[{i}]")
    if not isinstance(meta.get("skipped", []), list):
        raise _fail(path, "skipped", "a list", meta.get("skipped"))
    return meta


def _plain(value, path, key: str) -> None:
    """A provenance value: text, a finite number, a boolean, null, or a list/object of those."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(v, path, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, path, f"{key}[{i}]")
    elif not (value is None or isinstance(value, (str, bool))):
        _number(value, path, key)


def check_evaluation_json(meta, path) -> dict:
    """An evaluation folder's evaluation.json (provenance and the subjects' files), as report reads it."""
    meta = _dict(meta, path, "(top level)")
    _kind(meta.get("modality", "mr"), path, "modality")
    if "slice_axis" in meta:
        _int(meta["slice_axis"], path, "slice_axis", -3, 2)
    subjects = meta.get("subjects", [])
    if not isinstance(subjects, list):
        raise _fail(path, "subjects", "a list", subjects)
    for i, s in enumerate(subjects):
        _subject_entry(s, path, f"subjects[{i}]")
        _str(s.get("reference"), path, f"subjects[{i}].reference")  # evaluate lists only scored subjects
    _plain(_dict(meta.get("provenance", {}), path, "provenance"), path, "provenance")
    return meta


def _stat(value, path, key: str) -> None:
    """One metric's statistics as evaluate's `summarize` writes them: mean and std (null: all infinite), counts."""
    value = _dict(value, path, key)
    for k in ("mean", "std"):
        _number(value.get(k), path, f"{key}.{k}")
    _int(value.get("n"), path, f"{key}.n")
    _int(value.get("n_inf", 0), path, f"{key}.n_inf")


def check_summary_json(summary, path) -> dict:
    """An evaluation folder's summary.json: per protocol its statistics, and the distribution scores."""
    summary = _dict(summary, path, "(top level)")
    if summary.get("modality") not in ("mr", "ct"):
        raise _fail(path, "modality", "'mr' or 'ct'", summary.get("modality"))
    for protocol, stats in _dict(summary.get("protocols"), path, "protocols").items():
        stats = _dict(stats, path, f"protocols.{protocol}")
        _int(stats.get("n_subjects"), path, f"protocols.{protocol}.n_subjects")
        for k, v in stats.items():
            if k in ("n_subjects", "n_slices"):
                _int(v, path, f"protocols.{protocol}.{k}")
            elif k == "averaged_over":
                _str(v, path, f"protocols.{protocol}.{k}")
            elif k == "baseline_sources":  # region -> the source whose copy is the baseline there
                for region, source in _dict(v, path, f"protocols.{protocol}.{k}").items():
                    _str(source, path, f"protocols.{protocol}.{k}.{region}")
            else:
                _stat(v, path, f"protocols.{protocol}.{k}")
    flags = summary.get("below_baseline", [])
    if not isinstance(flags, list):
        raise _fail(path, "below_baseline", "a list", flags)
    for i, flag in enumerate(flags):  # where the prediction scores below the baseline, each with its sentence
        flag = _dict(flag, path, f"below_baseline[{i}]")
        for k in ("protocol", "region", "sentence"):
            _str(flag.get(k), path, f"below_baseline[{i}].{k}")
    _plain(_dict(summary.get("distribution", {}), path, "distribution"), path, "distribution")
    return summary


def check_autoencoder_report(rep, path) -> dict:
    """A run's autoencoder_report.json (written by train-ae), as report reads it: texts and real numbers (a
    lossless autoencoder's PSNR is infinite)."""
    rep = _dict(rep, path, "(top level)")
    for k in ("preset", "split", "quality_gate"):
        _str(rep.get(k), path, k, optional=True)
    for k in ("psnr", "ssim", "psnr_std", "ssim_std", "seconds", "latent_scale", "n", "steps"):
        v = rep.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            raise _fail(path, k, "a number or null", v)
    return rep
