"""`phmdiff segcheck TRANSLATE_DIR`: does the synthesized image serve a tumour segmentation as well as the real one?

The BraSyn challenge (and the paper behind PHMDiff) judge a synthesis by what it does downstream: a
segmentation network is given the available modalities plus either the real missing one or the synthesized
one, and the Dice of its tumour labels is compared. Here a small 2D U-Net (`monai.networks.nets.UNet`) is
trained on the *real* modalities (sources + target) of the training subjects: every subject of the data
folder that has all of them and a tumour segmentation, except the subjects of the translate folder, which are
the test subjects. Each volume is normalized per modality by its own foreground 0.5 and 99.5 percentiles
(so a synthesized image is read on the same footing as a real one). The network is then applied slice by
slice to each test subject twice: with the real target and with the synthesized one; Dice per label (the
BraTS labels present, and the whole tumour, seg > 0) is reported for both, and their difference is the
figure the challenge ranks by.

Outputs in `--out DIR` (default TRANSLATE_DIR/segcheck): `segcheck.csv` (subject, label, dice_real,
dice_synth) and `segcheck.json` (settings, training loss, per-label means), written as one unit.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from phmdiff.argtypes import COUNT, SEED
from phmdiff.eval.evaluate import load_volume
from phmdiff.eval.labels import check_labels
from phmdiff.fsutil import atomic_write_text, check_out_dir, check_writable_dir, publish_dir, safe_relpath
from phmdiff.schema import check_translate_json, read_json

BRATS_LABELS = {1: "necrosis", 2: "edema", 4: "enhancing"}  # data.phantom_brain.BRATS_LABELS, BraTS 2021 values


def add_arguments(parser) -> None:
    parser.add_argument("translate_dir", help="translate output folder (translate.json) holding the synthesized "
                                              "target of the test subjects")
    parser.add_argument("--data", help="data folder of the real subjects (default: the folder holding the test "
                                       "subjects' references)")
    parser.add_argument("--steps", type=COUNT, default=600, help="training steps of the segmentation network")
    parser.add_argument("--batch-size", type=COUNT, default=16, help="slices per training step")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the network's weights and of the batches")
    parser.add_argument("--out", help="output folder (default: TRANSLATE_DIR/segcheck)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files (they are kept)")


def normalize(volume: np.ndarray) -> np.ndarray:
    """A volume's foreground (> 0) 0.5 and 99.5 percentiles mapped to 0 and 1; an empty volume stays 0."""
    fg = volume[volume > 0]
    if fg.size == 0:
        return np.zeros_like(volume, dtype=np.float32)
    lo, hi = np.percentile(fg, (0.5, 99.5))
    return ((volume - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def label_map(seg: np.ndarray, labels: list[int]) -> np.ndarray:
    """BraTS label values -> class indices 0 (background), 1.. in the order of `labels`."""
    out = np.zeros(seg.shape, np.int64)
    for k, value in enumerate(labels, start=1):
        out[seg == value] = k
    return out


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|); 1 when both are empty (nothing to find, nothing found), as BraTS scores it."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, ref).sum()) / total


def _stack(volumes: list[np.ndarray]) -> np.ndarray:
    return np.stack([normalize(v) for v in volumes])  # (C, X, Y, Z)


def build_network(in_channels: int, n_classes: int):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, channels=(16, 32, 64),
                strides=(2, 2), num_res_units=1)


def train_segmenter(cases: list[tuple[np.ndarray, np.ndarray]], labels: list[int], steps: int = 600,
                    batch_size: int = 16, seed: int = 0, log=None):
    """A 2D U-Net trained on axial slices of (image (C, X, Y, Z), BraTS seg (X, Y, Z)) cases with Dice + CE;
    slices holding tumour are drawn half the time, so the small tumour is not drowned by background."""
    import torch
    from monai.losses import DiceCELoss

    if not cases:
        raise ValueError("no training subject: segcheck needs subjects with every modality and a segmentation "
                         "besides the test subjects.")
    if steps < 1:
        raise ValueError(f"--steps is {steps}; expected 1 or more.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = np.concatenate([np.moveaxis(img, -1, 0) for img, _ in cases])  # (N, C, X, Y): N slices of all cases
    targets = np.concatenate([np.moveaxis(label_map(seg, labels), -1, 0) for _, seg in cases])  # (N, X, Y)
    tumour = np.flatnonzero(targets.reshape(len(targets), -1).any(1))
    model = build_network(images.shape[1], len(labels) + 1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        half = batch_size // 2 if tumour.size else 0
        idx = np.concatenate([rng.choice(tumour, half) if half else np.zeros(0, int),
                              rng.integers(0, len(images), batch_size - half)])
        x = torch.from_numpy(images[idx])
        y = torch.from_numpy(targets[idx])[:, None]  # (B, 1, X, Y)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % max(steps // 5, 1) == 0:
            log(f"segcheck: step {step + 1}/{steps}, loss {np.mean(losses[-20:]):.4f}")
    model.eval()
    return model, losses


def segment(model, image: np.ndarray) -> np.ndarray:
    """Class index per voxel of an image (C, X, Y, Z), axial slice by slice."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))  # (Z, C, X, Y)
        out = model(x).argmax(1).numpy()  # (Z, X, Y)
    return np.moveaxis(out, 0, -1)


def dice_rows(model, image: np.ndarray, seg: np.ndarray, labels: list[int]) -> dict[str, float]:
    """Dice per BraTS label and for the whole tumour of one subject."""
    pred = segment(model, image)
    truth = label_map(seg, labels)
    out = {BRATS_LABELS.get(v, f"label {v}"): dice(pred == k, truth == k) for k, v in enumerate(labels, start=1)}
    out["whole tumour"] = dice(pred > 0, truth > 0)
    return out


def _padded(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The U-Net halves the plane twice: its sides must divide by 4."""
    return tuple(int(math.ceil(n / 4) * 4) for n in shape)


def _pad(x: np.ndarray, plane: tuple[int, int]) -> np.ndarray:
    pads = [(0, 0)] * (x.ndim - 3) + [(0, plane[0] - x.shape[-3]), (0, plane[1] - x.shape[-2]), (0, 0)]
    return np.pad(x, pads)


def collect(translate_dir: Path, data: str | None):
    """(meta, test subjects [(id, {modality: path}, seg path, prediction path)], training subjects)."""
    from phmdiff.data.readers import find_subjects

    meta_path = translate_dir / "translate.json"
    if not meta_path.is_file():
        raise ValueError(f"{translate_dir}: no translate.json; give a translate output folder.")
    meta = read_json(meta_path, check_translate_json)
    # An any-to-any listing names every modality of the run as a source, the target among them.
    sources = [m for m in meta.get("sources") or [] if m != meta.get("target")]
    modalities = [*sources, meta.get("target")]
    if None in modalities or not sources:
        raise ValueError(f"{meta_path}: expected 'sources' and 'target' (an any-to-any run: translate with --target).")
    tests = []
    for s in meta.get("subjects", []):
        if not (s.get("reference") and s.get("seg") and all(m in (s.get("source_images") or {})
                                                            for m in sources)):
            continue
        paths = {**s["source_images"], meta["target"]: s["reference"]}
        tests.append((s["subject"], paths, s["seg"], safe_relpath(s["prediction"], translate_dir, meta_path)))
    if not tests:
        raise ValueError(f"{meta_path}: no subject has a reference, a tumour segmentation and its source images; "
                         "nothing to check.")
    root = Path(data) if data else Path(tests[0][1][meta["target"]]).parent.parent
    test_ids = {t[0] for t in tests}
    train = [(s.id, s.paths, s.mask) for s in find_subjects(root)
             if s.id not in test_ids and s.mask and all(m in s.paths for m in modalities)]
    return meta, modalities, tests, train


def segcheck(translate_dir, data=None, steps: int = 600, batch_size: int = 16, seed: int = 0, log=None) -> dict:
    """Train on the real training subjects, then Dice per label with the real vs the synthesized target."""
    import torch

    translate_dir = Path(translate_dir)
    meta, modalities, tests, train = collect(translate_dir, data)

    def case(paths, seg_path, replace=None):
        ref, affine = load_volume(paths[modalities[-1]], what="reference")
        like = (ref.shape, affine)
        vols = [load_volume(paths[m], like, m)[0] for m in modalities[:-1]]
        target = ref if replace is None else load_volume(replace, like, "prediction")[0]
        seg = check_labels(load_volume(seg_path, like, "segmentation")[0], seg_path)
        return _stack([*vols, target]), seg

    if not train:
        raise ValueError("no training subject: segcheck needs subjects with every modality and a segmentation "
                         "besides the test subjects (pass --data ROOT to name their folder).")
    train_cases = [case(p, m) for _, p, m in train]
    labels = sorted({int(v) for _, seg in train_cases for v in np.unique(seg) if v > 0})
    if not labels:
        raise ValueError("the training subjects' segmentations hold no tumour label; nothing to learn.")
    plane = _padded(tuple(max(c[1].shape[a] for c in train_cases) for a in (0, 1)))  # one plane for every slice
    train_cases = [(_pad(img, plane), _pad(seg, plane)) for img, seg in train_cases]
    start = time.perf_counter()
    threads = torch.get_num_threads()
    model, losses = train_segmenter(train_cases, labels, steps, batch_size, seed, log)
    seconds = time.perf_counter() - start
    rows = []
    for sid, paths, seg_path, pred_path in tests:
        for source, replace in (("real", None), ("synth", pred_path)):
            img, seg = case(paths, seg_path, replace)
            pl = _padded(seg.shape[:2])
            img, seg_p = _pad(img, pl), _pad(seg, pl)
            for label, value in dice_rows(model, img, seg_p, labels).items():
                rows.append({"subject": sid, "label": label, "input": source, "dice": value})
    table = []
    for label in dict.fromkeys(r["label"] for r in rows):
        real = [r["dice"] for r in rows if r["label"] == label and r["input"] == "real"]
        synth = [r["dice"] for r in rows if r["label"] == label and r["input"] == "synth"]
        table.append({"label": label, "dice_real": float(np.mean(real)), "dice_real_std": float(np.std(real)),
                      "dice_synth": float(np.mean(synth)), "dice_synth_std": float(np.std(synth)),
                      "difference": float(np.mean(synth) - np.mean(real))})
    return {"target": meta["target"], "sources": modalities[:-1], "labels": {str(v): BRATS_LABELS.get(v, str(v))
                                                                            for v in labels},
            "train_subjects": [t[0] for t in train], "test_subjects": [t[0] for t in tests],
            "steps": steps, "batch_size": batch_size, "seed": seed, "train_seconds": seconds, "threads": threads,
            "final_loss": float(np.mean(losses[-20:])), "rows": rows, "table": table}


def format_table(result: dict) -> str:
    lines = [f"Dice of a 2D U-Net ({len(result['train_subjects'])} training subjects, {result['steps']} steps) on "
             f"{len(result['test_subjects'])} test subjects, {' + '.join(result['sources'])} + {result['target']}:",
             f"{'label':<14} {'real ' + result['target']:>18} {'synthesized':>18} {'difference':>11}"]
    for t in result["table"]:
        lines.append(f"{t['label']:<14} {t['dice_real']:>10.3f} +- {t['dice_real_std']:.3f} "
                     f"{t['dice_synth']:>10.3f} +- {t['dice_synth_std']:.3f} {t['difference']:>+11.3f}")
    return "\n".join(lines)


def run(args) -> int:
    translate_dir = Path(args.translate_dir)
    out = check_out_dir(args.out or translate_dir / "segcheck", "segcheck", args.overwrite)
    check_writable_dir(out.parent)
    result = segcheck(translate_dir, args.data, args.steps, args.batch_size, args.seed,
                      log=lambda m: print(m, flush=True))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["subject", "label", "dice_real", "dice_synth"], lineterminator="\n")
    writer.writeheader()
    for sid in result["test_subjects"]:
        for label in dict.fromkeys(r["label"] for r in result["rows"]):
            pick = {r["input"]: r["dice"] for r in result["rows"] if r["subject"] == sid and r["label"] == label}
            writer.writerow({"subject": sid, "label": label, "dice_real": f"{pick['real']:.6g}",
                             "dice_synth": f"{pick['synth']:.6g}"})
    with publish_dir(out, "segcheck", args.overwrite) as tmp:
        atomic_write_text(tmp / "segcheck.csv", buf.getvalue())
        atomic_write_text(tmp / "segcheck.json", json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {out}/segcheck.csv, segcheck.json")
    return 0
