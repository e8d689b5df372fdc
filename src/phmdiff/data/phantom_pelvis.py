"""Pelvis phantom: seeded body, fat, muscle, pelvic bones, bladder and rectal air as MR and CT (Hounsfield units).

CT numbers follow the usual clinical values (air -1000, fat about -100, urine about 0, muscle about 40,
trabecular bone a few hundred, cortical bone 1000-1800 HU). MR uses the spin-echo equation with rounded
3T relaxation times (Stanisz et al. 2005; Gold et al. 2004, AJR 183:343).
"""

from __future__ import annotations

import math

import numpy as np

from phmdiff.data.phantom_brain import (
    SIGNAL_SCALE,
    blur3,
    box,
    grid_coordinates,
    quantize,
    rician,
    smooth_field,
    spin_echo,
)

PELVIS_FOV_MM = (480.0, 360.0, 160.0)  # SynthRAD pelvis: about 1 x 1 x 2.5 mm at 480 x 360 x 64
PELVIS_ROTATION_DEG = 2.0  # a slightly rotated slice prescription, about the z axis
PELVIS_TISSUES = {"air": 0, "fat": 1, "muscle": 2, "cortical": 3, "trabecular": 4, "bladder": 5,
                  "rectal_air": 6}
# CT: (mean HU, texture HU, lowest HU, highest HU) of the noise-free image
PELVIS_HU = {
    "air": (-1000.0, 0.0, -1000.0, -1000.0),
    "fat": (-100.0, 12.0, -130.0, -70.0),
    "muscle": (42.0, 6.0, 30.0, 55.0),
    "cortical": (1400.0, 150.0, 1050.0, 1750.0),
    "trabecular": (300.0, 50.0, 200.0, 400.0),
    "bladder": (5.0, 3.0, -5.0, 15.0),
    "rectal_air": (-1000.0, 0.0, -1000.0, -1000.0),
}
PELVIS_RELAXATION = {  # (T1 ms, T2 ms, PD) at 3T
    "air": (1.0, 1.0, 0.0), "fat": (380.0, 110.0, 0.90), "muscle": (1420.0, 32.0, 0.70),
    "cortical": (300.0, 0.5, 0.10), "trabecular": (550.0, 60.0, 0.75), "bladder": (3000.0, 1500.0, 1.00),
    "rectal_air": (1.0, 1.0, 0.0),
}
MR_WEIGHTING = {"t1": (500.0, 10.0), "t2": (4000.0, 90.0)}  # (TR, TE) ms


def pelvis_linear(shape) -> np.ndarray:
    """Voxel-to-world linear part of the pelvis affine: LPS storage, anisotropic spacing, small rotation."""
    spacing = [f / n for f, n in zip(PELVIS_FOV_MM, shape)]
    a = math.radians(PELVIS_ROTATION_DEG)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])


def _bone(labels, x, y, z, shape, linear, centre, axes, angle_deg, cortex_mm):
    """Paint one bone: an ellipsoid (turned about z) with a cortical shell around trabecular bone."""
    sl = box(shape, linear, centre, [max(axes)] * 3, margin_mm=15.0)
    a = math.radians(angle_deg)
    dx, dy, dz = x[sl] - centre[0], y[sl] - centre[1], z[sl] - centre[2]
    u, v = math.cos(a) * dx + math.sin(a) * dy, -math.sin(a) * dx + math.cos(a) * dy
    rho = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    lab = labels[sl]
    lab[rho < 1.0] = PELVIS_TISSUES["cortical"]
    lab[rho < 1.0 - cortex_mm / min(axes)] = PELVIS_TISSUES["trabecular"]


def pelvis_anatomy(seed, shape) -> np.ndarray:
    """Tissue label map (PELVIS_TISSUES) of one random pelvis."""
    rng = np.random.default_rng(seed)
    # python floats, not numpy scalars, so every full-size array stays float32
    body = [float(v) for v in rng.uniform(0.85, 1.1, 2) * (170.0, 115.0)]
    fat_mm = float(rng.uniform(12.0, 35.0))
    bladder = float(rng.uniform(0.5, 1.1))
    air = float(rng.uniform(0.2, 0.8))
    bone_scale = float(rng.uniform(0.92, 1.08))
    disp_seed = int(rng.integers(0, 2**31))
    linear = pelvis_linear(shape)
    x, y, z = grid_coordinates(shape, linear)
    drng = np.random.default_rng(disp_seed)
    x = x + 5.0 * smooth_field(drng, shape, 4)
    y = y + 5.0 * smooth_field(drng, shape, 4)
    widen = 1.0 + 0.0015 * z  # the body is a little wider towards the iliac crests
    outline = np.sqrt((x / (body[0] * widen)) ** 2 + ((y + 10.0) / (body[1] * widen)) ** 2)
    labels = np.zeros(shape, np.int8)
    labels[outline < 1.0] = PELVIS_TISSUES["fat"]
    inner = (1.0 - outline) * min(body) >= fat_mm  # approximate depth below the skin
    labels[inner] = PELVIS_TISSUES["muscle"]
    cavity = ((x / 60.0) ** 2 + ((y - 10.0) / 50.0) ** 2 < 1.0) & (z < 40.0) & inner
    labels[cavity] = PELVIS_TISSUES["fat"]  # pelvic fat around the organs
    del outline, inner, cavity
    s = bone_scale
    spacing = float(np.abs(np.linalg.svd(linear, compute_uv=False)).max())
    cortex = max(3.0, 1.5 * spacing)  # at least a voxel and a half, so every grid shows the shell
    for side in (-1.0, 1.0):
        # iliac wing, acetabulum / femoral head, femoral neck and shaft, pubic ramus, ischium
        _bone(labels, x, y, z, shape, linear, (side * 95 * s, -30.0, 35.0), (12 * s, 60 * s, 45 * s), side * 35, cortex)
        _bone(labels, x, y, z, shape, linear, (side * 92 * s, 5.0, -5.0), (24 * s, 24 * s, 24 * s), 0.0, cortex)
        _bone(labels, x, y, z, shape, linear, (side * 120 * s, 5.0, -45.0), (16 * s, 16 * s, 40 * s), 0.0, cortex)
        _bone(labels, x, y, z, shape, linear, (side * 35 * s, 55.0, -20.0), (36 * s, 10 * s, 12 * s), side * 20,
              cortex)
        _bone(labels, x, y, z, shape, linear, (side * 60 * s, -15.0, -30.0), (14 * s, 30 * s, 18 * s), 0.0, cortex)
    _bone(labels, x, y, z, shape, linear, (0.0, -80.0, 40.0), (42 * s, 18 * s, 45 * s), 0.0, cortex)  # sacrum
    sl = box(shape, linear, (0.0, 40.0, -5.0), (45.0, 35.0, 40.0))
    b = (x[sl] / (40.0 * bladder)) ** 2 + ((y[sl] - 40.0) / (30.0 * bladder)) ** 2 + ((z[sl] + 5.0) / 35.0) ** 2
    labels[sl][b < 1.0] = PELVIS_TISSUES["bladder"]
    sl = box(shape, linear, (0.0, -50.0, 0.0), (20.0, 20.0, 80.0))
    r = np.sqrt(x[sl] ** 2 + (y[sl] + 50.0) ** 2)
    lab = labels[sl]
    lab[r < 16.0] = PELVIS_TISSUES["muscle"]  # rectal wall
    lab[(r < 16.0 * air) & (z[sl] > -60.0)] = PELVIS_TISSUES["rectal_air"]
    return labels


def make_pelvis_subject(seed, shape=(128, 96, 40), noise: float = 0.03, ct_noise_hu: float = 20.0,
                        mr_weighting: str = "t2") -> dict[str, np.ndarray]:
    """One pelvis subject: `mr`, `ct` (HU, float32), `mask` (body, uint8), `mr_noise_free`, `ct_noise_free`, `tissue`.

    MR noise is Rician with sigma = noise x the mean noise-free muscle signal (stored as in `quantize`); CT noise
    is Gaussian in HU; CT is written to NIfTI as int16 whole HU.
    """
    if mr_weighting not in MR_WEIGHTING:
        raise ValueError(f"MR weighting {mr_weighting!r} is not known; expected one of {sorted(MR_WEIGHTING)}.")
    shape = tuple(int(s) for s in shape)
    labels = pelvis_anatomy(seed, shape)
    rng = np.random.default_rng([int(seed), 1])
    names = list(PELVIS_TISSUES)
    tex = smooth_field(rng, shape, 16)
    mean, spread, lo, hi = (np.array([PELVIS_HU[n][i] for n in names], np.float32) for i in range(4))
    ct_clean = np.clip(mean[labels] + spread[labels] * tex, lo[labels], hi[labels]).astype(np.float32)
    ct = np.clip(ct_clean + ct_noise_hu * rng.standard_normal(shape, dtype=np.float32), -1024.0, 3071.0)
    t1, t2, pd = (np.array([PELVIS_RELAXATION[n][i] for n in names], np.float64) for i in range(3))
    table = (SIGNAL_SCALE * spin_echo(t1, t2, pd, *MR_WEIGHTING[mr_weighting])).astype(np.float32)
    bias = np.exp(0.15 * smooth_field(rng, shape, 3))
    mr_clean = blur3(table[labels] * (1.0 + 0.03 * tex) * bias)
    muscle = labels == PELVIS_TISSUES["muscle"]
    sigma = noise * float(mr_clean[muscle].mean() if muscle.any() else table[PELVIS_TISSUES["muscle"]])
    mr, mr_clean = quantize(rician(mr_clean, sigma, rng) if noise > 0 else mr_clean, mr_clean)
    mr = mr if noise > 0 else mr_clean.copy()
    return {"mr": mr, "ct": ct.astype(np.float32), "mask": (labels != PELVIS_TISSUES["air"]).astype(np.uint8),
            "mr_noise_free": mr_clean, "ct_noise_free": ct_clean, "tissue": labels}
