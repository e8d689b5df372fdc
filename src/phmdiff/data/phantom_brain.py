"""Brain phantom: seeded head anatomy with tumours, imaged through the MR signal equations.

Tissue relaxation times are rounded 3T values from the MR literature (Wansapura et al. 1999, JMRI 9:531;
Stanisz et al. 2005, MRM 54:507; Lu et al. 2005, JMRI 22:13); tumour values follow the usual picture
(edema and necrosis: long T1 and T2 from free water; enhancing rim: T1 shortened by gadolinium,
1/T1 = 1/T1_0 + r1 C). Weighted images come from the spin-echo equation
S = PD (1 - exp(-TR/T1)) exp(-TE/T2) and FLAIR from inversion recovery
S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2), with TI chosen to null CSF.
Anatomy is built in millimetres over a fixed field of view, so a seed gives the same subject at any grid size.
The shared helpers here (smooth fields, signal equations, Rician noise) are also used by the pelvis phantom.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

BRAIN_FOV_MM = (240.0, 240.0, 155.0)  # BraTS 2021: 240 x 240 x 155 voxels of 1 mm
BRAIN_MODALITIES = ("t1", "t1ce", "t2", "flair")
# internal tissue labels of the brain phantom (returned as "tissue"); BraTS labels are in "seg"
TISSUES = {
    "background": 0, "scalp": 1, "fat": 2, "skull": 3, "marrow": 4, "csf": 5, "gm": 6, "wm": 7,
    "deep_gm": 8, "ventricle": 9, "necrosis": 10, "edema": 11, "enhancing": 12,
}
# name: (T1 ms, T2 ms, PD relative to water) at 3T
BRAIN_RELAXATION = {
    "background": (1.0, 1.0, 0.0),
    "scalp": (1400.0, 45.0, 0.70),  # skin and muscle
    "fat": (380.0, 110.0, 0.90),
    "skull": (300.0, 1.0, 0.05),  # cortical bone: almost no MR signal
    "marrow": (450.0, 90.0, 0.80),  # fatty diploe
    "csf": (4000.0, 2000.0, 1.00),
    "gm": (1330.0, 110.0, 0.80),
    "wm": (830.0, 80.0, 0.70),
    "deep_gm": (1100.0, 75.0, 0.76),
    "ventricle": (4000.0, 2000.0, 1.00),
    "necrosis": (3000.0, 600.0, 0.95),
    "edema": (1800.0, 250.0, 0.90),
    "enhancing": (1500.0, 120.0, 0.85),
}
GD_R1_PER_MM_S = 4.0  # gadolinium relaxivity r1 at 3T, 1/(mM s)
GD_CONCENTRATION_MM = 0.25  # tissue concentration in the enhancing rim
# sequence timings in ms (TR, TE) and FLAIR (TR, TE); FLAIR's TI is derived from CSF's T1
T1W = (500.0, 10.0)
T2W = (4000.0, 100.0)
FLAIR = (9000.0, 120.0)
SIGNAL_SCALE = 1000.0  # arbitrary scanner units: PD = 1 fully relaxed gives 1000
BRATS_LABELS = {"necrosis": 1, "edema": 2, "enhancing": 4}


def spin_echo(t1, t2, pd, tr: float, te: float):
    """Spin-echo signal S = PD (1 - exp(-TR/T1)) exp(-TE/T2)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(t1, t2, pd, tr: float, te: float, ti: float):
    """Magnitude inversion-recovery signal S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def null_inversion_time(t1: float, tr: float) -> float:
    """TI that nulls a tissue of longitudinal relaxation t1: TI = T1 (ln 2 - ln(1 + exp(-TR/T1)))."""
    return t1 * (math.log(2.0) - math.log1p(math.exp(-tr / t1)))


def rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of std sigma in each channel (Rician)."""
    real = rng.standard_normal(clean.shape, dtype=np.float32)
    real *= sigma
    real += clean
    np.square(real, out=real)
    imag = rng.standard_normal(clean.shape, dtype=np.float32)
    imag *= sigma
    np.square(imag, out=imag)
    real += imag
    return np.sqrt(real, out=real)


def quantize(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store noisy magnitudes as whole numbers, as scanners do, and the noise-free image to 1/16.

    Rounding adds noise of std 0.29 (1/16: 0.018) units, far below the Rician sigma, and lets gzip
    compress the volumes about 2.5x better and faster than full float32 mantissas would.
    """
    return np.rint(noisy).astype(np.float32), (np.rint(clean * 16.0) / 16.0).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape, n_freq: int, min_freq: int = 0) -> np.ndarray:
    """Unit-variance random field: a random sum of separable cosine (DCT-II) basis functions.

    The coefficients are drawn for a fixed number of frequencies, so the field is the same function of
    position for any grid size; a tensor product costs three small matrix products instead of a filter.
    """
    coef = rng.standard_normal((n_freq, n_freq, n_freq)).astype(np.float32)
    k = np.arange(n_freq)
    coef[np.add.outer(np.add.outer(k, k), k) < min_freq] = 0.0  # drop the lowest frequencies
    coef[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, k)).astype(np.float32) for n in shape]
    field = np.tensordot(bases[0], coef, axes=(1, 0))  # (X, K, K)
    field = np.tensordot(field, bases[1], axes=(1, 1))  # (X, K, Y)
    field = np.tensordot(field, bases[2], axes=(1, 1))  # (X, Y, Z)
    std = float(np.sqrt(np.square(coef).sum() / 8.0)) or 1.0  # variance of a cosine series, no extra pass
    field *= np.float32(1.0 / std)
    return field


def blur3(image: np.ndarray) -> np.ndarray:
    """Point-spread function of the scanner: a [1/4, 1/2, 1/4] kernel along every axis (partial volume)."""
    for axis in range(image.ndim):
        image = ndimage.convolve1d(image, np.array([0.25, 0.5, 0.25], np.float32), axis=axis, mode="nearest")
    return image


def grid_coordinates(shape, linear: np.ndarray):
    """Millimetre coordinates of voxel centres relative to the grid centre, through `linear` (3x3, mm/voxel)."""
    axes = [np.arange(n, dtype=np.float32) - (n - 1) / 2.0 for n in shape]
    ii, jj, kk = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    lin = [[float(v) for v in row] for row in linear]  # python floats keep the arrays float32
    return [lin[r][0] * ii + lin[r][1] * jj + lin[r][2] * kk for r in range(3)]


def brain_linear(shape) -> np.ndarray:
    """Voxel-to-world linear part of the brain affine: LPS storage (as BraTS) covering BRAIN_FOV_MM."""
    spacing = [f / n for f, n in zip(BRAIN_FOV_MM, shape)]
    return np.diag([-spacing[0], -spacing[1], spacing[2]]).astype(np.float64)


def box(shape, linear: np.ndarray, centre, half_mm, margin_mm: float = 30.0) -> tuple[slice, slice, slice]:
    """Array slices covering a world box (centre +- half_mm + margin) so small structures skip the full grid."""
    half = np.asarray(half_mm, np.float64) + margin_mm
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half + centre
    index = np.linalg.solve(linear, corners.T).T + (np.asarray(shape) - 1) / 2.0  # (8, 3)
    lo, hi = np.floor(index.min(0)).astype(int), np.ceil(index.max(0)).astype(int) + 1
    return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, shape))


def _ellipsoid(x, y, z, centre, axes) -> np.ndarray:
    """Squared normalized radius of a point set with respect to an axis-aligned ellipsoid."""
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2


def brain_anatomy(seed, shape, tumour: bool = True) -> tuple[np.ndarray, dict]:
    """Tissue label map (TISSUES) of one random head, and the drawn parameters."""
    rng = np.random.default_rng(seed)
    # every anatomical draw happens here, in a fixed order, so the anatomy does not depend on the grid
    scale = [float(v) for v in rng.uniform(0.93, 1.07, 3)]
    yaw, pitch = (math.radians(v) for v in rng.uniform(-4.0, 4.0, 2))
    disp_seed, fold_seed, tex_seed = rng.integers(0, 2**31, 3)
    vent = float(rng.uniform(0.8, 1.4))
    t_side = rng.choice([-1.0, 1.0])
    t_centre = [float(t_side * rng.uniform(15, 40)), float(rng.uniform(-45, 40)), float(rng.uniform(-5, 35))]
    t_radius = float(rng.uniform(10.0, 24.0))
    t_core = float(rng.uniform(0.0, 0.6))  # necrotic fraction of the radius; small values leave no necrosis
    t_edema = float(rng.uniform(1.5, 2.4))
    params = {"scale": [round(v, 4) for v in scale], "tumour": None}

    linear = brain_linear(shape)
    x, y, z = grid_coordinates(shape, linear)  # RAS millimetres from the grid centre
    # smooth random deformation: small rotation, per-axis scale, and a low-frequency displacement field
    drng = np.random.default_rng(disp_seed)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    x, y = (cy * x + sy * y), (-sy * x + cy * y)
    y, z = (cp * y + sp * z), (-sp * y + cp * z)
    x = x / scale[0] + 4.0 * smooth_field(drng, shape, 4)
    y = y / scale[1] + 4.0 * smooth_field(drng, shape, 4)
    z = z / scale[2] + 4.0 * smooth_field(drng, shape, 4)

    labels = np.zeros(shape, np.int8)
    head_axes = (82.0, 104.0, 90.0)
    rho = np.sqrt(_ellipsoid(x, y, z, (0.0, -5.0, -12.0), head_axes))
    depth = (1.0 - rho) * 90.0  # approximate depth below the scalp surface, mm
    del rho
    for name, top in (("scalp", 0.0), ("fat", 2.5), ("skull", 6.0), ("marrow", 8.5), ("skull", 10.5),
                      ("csf", 13.0)):
        labels[depth >= top] = TISSUES[name]
    d = depth - 16.0  # depth below the brain surface
    del depth
    # cortex: a gray-matter ribbon folded by sulci along the zero sheets of a random field
    fold = smooth_field(np.random.default_rng(fold_seed), shape, 22, min_freq=10)
    sulcus = np.clip(1.0 - np.abs(fold) / 0.6, 0.0, 1.0)
    del fold
    wm_depth = 3.5 + 18.0 * sulcus  # white matter retreats under the sulci; GM keeps ~3.5 mm
    brain = d >= 0
    labels[brain] = TISSUES["gm"]
    labels[brain & (d >= wm_depth)] = TISSUES["wm"]
    labels[brain & (sulcus > 0.6) & (d < wm_depth - 3.5)] = TISSUES["csf"]
    fissure = brain & (np.abs(x) < 1.5) & (z > -25.0)  # interhemispheric fissure
    labels[brain & (np.abs(x) < 4.5) & (d < 40.0) & (z > -25.0) & ~fissure] = TISSUES["gm"]
    labels[fissure & (d < 45.0)] = TISSUES["csf"]
    del sulcus, wm_depth, fissure
    # deep gray matter (thalamus, caudate, putamen) and ventricles
    def put(centre, axes, name, shear=0.0):
        sl = box(shape, linear, centre, axes)
        xs, ys, zs = x[sl], y[sl], z[sl]
        inside = _ellipsoid(xs - shear * (zs - centre[2]), ys, zs, centre, axes) < 1.0
        labels[sl][inside] = TISSUES[name]

    for side in (-1.0, 1.0):
        for (cx, cy, cz), axes in (((10.0, -14.0, 2.0), (9.0, 14.0, 9.0)), ((14.0, 14.0, 12.0), (5.0, 10.0, 8.0)),
                                   ((25.0, 4.0, 2.0), (6.0, 15.0, 10.0))):
            put((side * cx, cy, cz), axes, "deep_gm")
    for side in (-1.0, 1.0):
        put((side * 10.0, 0.0, 14.0), (5.0 * vent, 30.0, 8.0 * vent), "ventricle", shear=side * 0.15)
    put((0.0, -8.0, 0.0), (1.2 * vent, 12.0, 8.0), "ventricle")

    if tumour:
        sl = box(shape, linear, t_centre, [t_radius * t_edema / 0.7] * 3)
        tex = np.random.default_rng(tex_seed)
        wobble = np.maximum(1.0 + 0.18 * smooth_field(tex, shape, 6)[sl], 0.7)  # irregular, lobulated outline
        r = np.sqrt(_ellipsoid(x[sl], y[sl], z[sl], t_centre, (t_radius,) * 3)) * wobble
        lab, inside = labels[sl], d[sl] >= 0
        parenchyma = np.isin(lab, [TISSUES["gm"], TISSUES["wm"], TISSUES["deep_gm"]])
        # edema spreads along white matter and only a little into the cortex
        lab[parenchyma & (r < t_edema) & ((lab == TISSUES["wm"]) | (r < 1.0 + 0.4 * (t_edema - 1.0)))] = (
            TISSUES["edema"])
        lab[inside & (r < 1.0)] = TISSUES["enhancing"]
        lab[inside & (r < t_core)] = TISSUES["necrosis"]
        params["tumour"] = {"centre_mm": [round(v, 2) for v in t_centre], "radius_mm": round(t_radius, 2),
                            "core": round(t_core, 3), "edema": round(t_edema, 3)}
    return labels, params


def brain_signals() -> dict[str, np.ndarray]:
    """Noise-free signal of every tissue (indexed by TISSUES) for each modality, from the signal equations."""
    t1, t2, pd = (np.array([BRAIN_RELAXATION[n][i] for n in TISSUES], np.float64) for i in range(3))
    t1_gd = t1.copy()
    rim = TISSUES["enhancing"]
    t1_gd[rim] = 1.0 / (1.0 / t1[rim] + GD_R1_PER_MM_S * GD_CONCENTRATION_MM / 1000.0)  # 1/T1 = 1/T1_0 + r1 C
    ti = null_inversion_time(BRAIN_RELAXATION["csf"][0], FLAIR[0])
    table = {
        "t1": spin_echo(t1, t2, pd, *T1W),
        "t1ce": spin_echo(t1_gd, t2, pd, *T1W),
        "t2": spin_echo(t1, t2, pd, *T2W),
        "flair": inversion_recovery(t1, t2, pd, FLAIR[0], FLAIR[1], ti),
    }
    return {k: (SIGNAL_SCALE * v).astype(np.float32) for k, v in table.items()}


def make_brain_subject(seed, shape=(96, 96, 64), tumour: bool = True, noise: float = 0.03) -> dict[str, np.ndarray]:
    """One brain subject: t1, t1ce, t2, flair (Rician noise), their `<m>_noise_free`, `seg` (BraTS), `tissue`.

    Noise is Rician with sigma = noise x the mean noise-free white-matter signal of each modality; noisy images
    hold whole numbers and noise-free ones multiples of 1/16 (see `quantize`).
    """
    shape = tuple(int(s) for s in shape)
    labels, _ = brain_anatomy(seed, shape, tumour)
    rng = np.random.default_rng([int(seed), 1])  # image draws apart from the anatomy stream
    texture = 1.0 + 0.03 * smooth_field(rng, shape, 16)  # mild tissue heterogeneity
    coil = smooth_field(rng, shape, 3)
    wm = labels == TISSUES["wm"]
    out: dict[str, np.ndarray] = {}
    for name, table in brain_signals().items():
        bias = np.exp(0.12 * coil + 0.04 * smooth_field(rng, shape, 3))  # smooth multiplicative bias
        clean = blur3(table[labels] * texture * bias)
        sigma = noise * float(clean[wm].mean()) if wm.any() else noise * float(table[TISSUES["wm"]])
        out[name], out[f"{name}_noise_free"] = acquire(clean, sigma, noise, rng)
    return {**out, **label_maps(labels)}


def acquire(clean: np.ndarray, sigma: float, noise: float, rng: np.random.Generator):
    """(noisy, noise-free) images of one sequence, both stored as the scanner would: Rician noise of std sigma
    where `noise` > 0, then quantized (the noise-free image is a copy when there is no noise)."""
    noisy, clean = quantize(rician(clean, sigma, rng) if noise > 0 else clean, clean)
    return (noisy if noise > 0 else clean.copy()), clean


def label_maps(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The BraTS segmentation (uint8) and the tissue map of a subject's tissue labels."""
    seg = np.zeros(labels.shape, np.uint8)
    for name, value in BRATS_LABELS.items():
        seg[labels == TISSUES[name]] = value
    return {"seg": seg, "tissue": labels}
