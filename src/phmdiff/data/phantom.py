"""`phmdiff phantom`: write the built-in synthetic dataset (brain in BraTS-2021 names, pelvis in SynthRAD names).

Everything is deterministic from the seed: the same seed writes the same bytes. Each subject also gets a
`noise_free/` folder with its images before noise, which bounds the PSNR any method can reach on it.
The anatomy and the signal models live in `phantom_brain.py` and `phantom_pelvis.py`.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from phmdiff import __version__
from phmdiff.argtypes import SEED, finite_float, whole
from phmdiff.data.phantom_brain import BRAIN_MODALITIES, brain_linear, make_brain_subject
from phmdiff.data.phantom_pelvis import make_pelvis_subject, pelvis_linear
from phmdiff.data.phantom_physics import make_brain_subject_literature
from phmdiff.fsutil import atomic_dir, atomic_path, atomic_write_text
from phmdiff.limits import check_voxels

PHANTOM_VERSION = "1"
KINDS = ("brain", "pelvis")
DEFAULT_SHAPES = {"brain": (96, 96, 64), "pelvis": (128, 96, 40)}
FINE_FACTOR = 2  # --grid fine: every axis of the default shape doubled (the anatomy is built in millimetres)
# brain image physics: the default phantom's, or literature relaxometry (phantom_physics.py)
PHYSICS = {"default": make_brain_subject, "literature": make_brain_subject_literature}
MIN_SIZE = 16
# world position of the grid centre, mm (any offset: it shows that readers keep the affine)
WORLD_CENTRE = {"brain": (0.0, -18.0, 12.0), "pelvis": (4.0, -30.0, -120.0)}
CT_DTYPE = np.int16  # CT written as whole Hounsfield units in int16, as SynthRAD does; MR float32

__all__ = ["make_brain_subject", "make_pelvis_subject", "write_phantom", "phantom_affine", "subject_id",
           "subject_seed"]


def phantom_affine(kind: str, shape) -> np.ndarray:
    """The 4x4 voxel-to-world (RAS, mm) affine of a phantom volume of this kind and shape."""
    linear = brain_linear(shape) if kind == "brain" else pelvis_linear(shape)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(WORLD_CENTRE[kind]) - linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def subject_id(kind: str, index: int) -> str:
    """BraTS-like `PHANTOM_00000` for the brain, SynthRAD-like `1PA000` for the pelvis."""
    return f"PHANTOM_{index:05d}" if kind == "brain" else f"1PA{index:03d}"


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject `index` in a dataset made with `seed` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _subject_files(kind: str, sid: str, volumes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Relative path -> array for the files of one subject."""
    if kind == "brain":
        files = {f"{sid}/{sid}_{m}.nii.gz": volumes[m] for m in (*BRAIN_MODALITIES, "seg")}
        files.update({f"{sid}/noise_free/{sid}_{m}.nii.gz": volumes[f"{m}_noise_free"] for m in BRAIN_MODALITIES})
        return files
    ct, ct_clean = (np.clip(np.rint(volumes[k]), -1024, 3071).astype(CT_DTYPE) for k in ("ct", "ct_noise_free"))
    return {f"{sid}/mr.nii.gz": volumes["mr"], f"{sid}/ct.nii.gz": ct, f"{sid}/mask.nii.gz": volumes["mask"],
            f"{sid}/noise_free/mr.nii.gz": volumes["mr_noise_free"], f"{sid}/noise_free/ct.nii.gz": ct_clean}


def _check(kind, n_subjects, shape, noise, seed) -> tuple[int, int, int]:
    if kind not in KINDS:
        raise ValueError(f"Phantom kind {kind!r} is not known; expected 'brain' or 'pelvis'.")
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(f"Number of subjects {n_subjects} is not valid; expected a whole number of at least 1.")
    shape = tuple(DEFAULT_SHAPES[kind] if shape is None else shape)
    if len(shape) != 3 or any(int(s) != s or s < MIN_SIZE for s in shape):
        raise ValueError(f"Phantom shape {shape} is not valid; expected three whole sizes of at least {MIN_SIZE}.")
    check_voxels(shape, "phantom --shape", "phantom")  # before any array is allocated
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"Noise level {noise} is not valid; expected a fraction between 0 and 1.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"Seed {seed} is not valid; expected a whole number of at least 0.")
    return tuple(int(s) for s in shape)


def write_phantom(root, kind: str = "brain", n_subjects: int = 6, shape=None, seed: int = 0, preview: bool = False,
                  overwrite: bool = False, noise: float = 0.03, tumour: bool = True, workers: int | None = None,
                  progress: bool = False, physics: str = "default", n4: bool = False) -> list[Path]:
    """Write a seeded phantom dataset under `root` (built in a temporary folder, swapped in whole at the end).

    Returns the subject folders. A non-empty `root` is refused unless `overwrite`. `physics` picks the brain's
    image physics (PHYSICS); `n4` writes the brain's MR volumes N4 bias-corrected (phantom_n4.py).
    """
    shape = _check(kind, n_subjects, shape, noise, seed)
    if physics not in PHYSICS:
        raise ValueError(f"Phantom physics {physics!r} is not known; expected one of {', '.join(PHYSICS)}.")
    if kind != "brain" and (physics != "default" or n4):
        raise ValueError(f"--physics {physics} and --n4 apply to the brain phantom, not to {kind!r}; "
                         "expected --kind brain.")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder; expected a folder for the phantom dataset.")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"{root}: folder is not empty; choose an empty folder or pass --overwrite to replace it.")
    affine = phantom_affine(kind, shape)
    ids = [subject_id(kind, i) for i in range(n_subjects)]
    seeds = [subject_seed(seed, i) for i in range(n_subjects)]
    workers = workers or min(4, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_subjects, desc=f"phantom {kind}", unit="subject")
    first: list[dict[str, np.ndarray]] = []
    pending: list = []
    with atomic_dir(root) as tmp, ThreadPoolExecutor(workers) as pool:
        for sid, sub_seed in zip(ids, seeds):
            if kind == "brain":
                volumes = PHYSICS[physics](sub_seed, shape, tumour=tumour, noise=noise)
                if n4:
                    from phmdiff.data.phantom_n4 import n4_correct  # SimpleITK: the optional itk extra

                    volumes = n4_correct(volumes, BRAIN_MODALITIES, volumes["tissue"] > 0)
            else:
                volumes = make_pelvis_subject(sub_seed, shape, noise=noise)
            # gzip releases the GIL: the files of this subject are compressed while the next one is made;
            # waiting for the previous subject first keeps at most two subjects in memory
            for future in pending:
                future.result()
            files = _subject_files(kind, sid, volumes)
            pending = [pool.submit(_save_nifti, tmp / rel, arr, affine) for rel, arr in files.items()]
            if preview and len(first) < 3:
                first.append({k: v[:, :, shape[2] // 2].copy() for k, v in volumes.items() if k != "tissue"})
            if bar is not None:
                bar.update(1)
        for future in pending:
            future.result()
        meta = {
            "generator": "phmdiff.data.phantom", "version": PHANTOM_VERSION, "phmdiff_version": __version__,
            "kind": kind, "seed": int(seed), "shape": list(shape), "noise": float(noise),
            "tumour": bool(tumour) if kind == "brain" else None,
            "spacing_mm": [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)],
            "affine": affine.round(6).tolist(), "ct_dtype": "int16" if kind == "pelvis" else None,
            "modalities": [*BRAIN_MODALITIES, "seg"] if kind == "brain" else ["mr", "ct", "mask"],
            "subjects": [{"id": sid, "seed": s} for sid, s in zip(ids, seeds)],
        }
        if physics != "default" or n4:  # the default phantom's phantom.json keeps its bytes
            meta.update(physics=physics, n4=bool(n4))
        atomic_write_text(tmp / "phantom.json", json.dumps(meta, indent=2) + "\n")
        if preview:
            _write_preview(tmp / "preview.png", kind, ids, first)
    if bar is not None:
        bar.close()
    return [root / sid for sid in ids]


def _write_preview(path: Path, kind: str, ids: list[str], slices: list[dict[str, np.ndarray]]) -> None:
    """A montage of the middle axial slice of every modality (columns) for the first subjects (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*BRAIN_MODALITIES, "seg"] if kind == "brain" else ["mr", "ct", "mask"]
    fig, axes = plt.subplots(len(slices), len(names), figsize=(2.4 * len(names), 2.4 * len(slices)), squeeze=False)
    for r, (sid, sub) in enumerate(zip(ids, slices)):
        for c, name in enumerate(names):
            ax = axes[r, c]
            image = sub[name].T  # LPS storage: patient's right on the left, anterior at the top (radiological)
            if name == "ct":
                ax.imshow(image, cmap="gray", vmin=-300, vmax=1200)
            elif name in ("seg", "mask"):
                ax.imshow(image, cmap="viridis", vmin=0, vmax=4 if name == "seg" else 1, interpolation="nearest")
            else:
                ax.imshow(image, cmap="gray", vmin=0, vmax=float(np.percentile(sub[name], 99.5)) or 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(sid, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata={"Software": None})
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--kind", choices=KINDS, default="brain", help="brain (BraTS names) or pelvis (SynthRAD)")
    parser.add_argument("--subjects", type=whole(1, 100_000), default=6, help="number of subjects (default 6)")
    parser.add_argument("--shape", type=whole(1, 2**20), nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="volume size in voxels (default brain 96 96 64, pelvis 128 96 40)")
    parser.add_argument("--seed", type=SEED, default=0, help="dataset seed (default 0)")
    parser.add_argument("--noise", type=finite_float(0, 10), default=0.03,
                        help="Rician noise sigma as a fraction of the white-matter (pelvis: muscle) signal")
    parser.add_argument("--grid", choices=("default", "fine"), default="default",
                        help=f"fine: the default shape x{FINE_FACTOR} per axis (the same anatomy, finer voxels)")
    parser.add_argument("--no-tumour", action="store_true", help="brain without tumours")
    parser.add_argument("--physics", choices=tuple(PHYSICS), default="default",
                        help="brain image physics: default, or literature (3 T relaxometry from Stanisz 2005 and "
                             "others, edema graded from the core, bias fields partly per sequence)")
    parser.add_argument("--n4", action="store_true",
                        help="brain: write the MR volumes N4 bias-corrected (SimpleITK, the itk extra)")
    parser.add_argument("--preview", action="store_true", help="also write OUT/preview.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    shape = args.shape
    if args.grid == "fine":
        if shape is not None:
            raise ValueError("--grid fine and --shape both set the grid; expected one of them.")
        shape = tuple(FINE_FACTOR * n for n in DEFAULT_SHAPES[args.kind])
    dirs = write_phantom(args.out, kind=args.kind, n_subjects=args.subjects, shape=shape, seed=args.seed,
                         preview=args.preview, overwrite=args.overwrite, noise=args.noise,
                         tumour=not args.no_tumour, progress=True, physics=args.physics, n4=args.n4)
    print(f"wrote {len(dirs)} {args.kind} phantom subjects to {args.out}")
    if args.preview:
        print(f"preview: {Path(args.out) / 'preview.png'}")
    return 0
