"""Brain phantom with literature tissue physics (`phmdiff phantom --physics literature`), beside the default one.

Three changes to the default brain phantom (`phantom_brain.make_brain_subject`), which stays as it is:

1. Healthy tissue T1/T2 at 3 T from published relaxometry, cited per value in LITERATURE_RELAXATION.
2. Peritumoral edema graded with distance from the tumour core: T1, T2 and PD raised most at the enhancing rim
   (EDEMA_PEAK) and falling linearly to white matter's values at the edema's outer border (vasogenic edema is
   free water spreading from the leaky core; its water fraction falls with distance). The peak values are an
   assumption of this phantom, about 1.8x white matter's T1 and 3.5x its T2, within the range reported for
   peritumoral edema at 3 T; they are not taken from one paper.
3. A bias field that is only partly shared between sequences: log bias = BIAS_AMPLITUDE (sqrt(s) coil + sqrt(1-s)
   own), with `s` = BIAS_SHARED of the variance from one coil field common to all sequences and the rest drawn
   per sequence (the default phantom shares almost all of it, so one gain moves every sequence alike).

The anatomy (labels, tumour geometry) is the default phantom's for the same seed; image draws use their own
random stream. Signal equations, blur, Rician noise and quantization are the default phantom's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from phmdiff.data.phantom_brain import (
    BRAIN_FOV_MM,
    FLAIR,
    GD_CONCENTRATION_MM,
    GD_R1_PER_MM_S,
    SIGNAL_SCALE,
    T1W,
    T2W,
    TISSUES,
    acquire,
    blur3,
    brain_anatomy,
    inversion_recovery,
    label_maps,
    null_inversion_time,
    smooth_field,
    spin_echo,
)

# name: (T1 ms, T2 ms, PD relative to water) at 3 T
LITERATURE_RELAXATION = {
    "background": (1.0, 1.0, 0.0),
    "scalp": (1412.0, 50.0, 0.70),  # skeletal muscle: Stanisz et al. 2005, MRM 54:507, Table 1 (3 T): 1412 / 50
    "fat": (382.0, 68.0, 0.90),  # subcutaneous fat at 3 T: Gold et al. 2004, AJR 183:343: 382 / 68
    "skull": (300.0, 1.0, 0.05),  # cortical bone: T2* far below any echo time, almost no signal (as default)
    "marrow": (382.0, 68.0, 0.80),  # fatty diploe: taken as fat (Gold 2004), less water
    "csf": (4163.0, 2000.0, 1.00),  # T1: Lu et al. 2005, JMRI 22:13 (3 T): 4163; T2 > 1 s (free water), assumed
    "gm": (1820.0, 99.0, 0.80),  # cortical grey matter: Stanisz 2005 Table 1 (3 T): 1820 / 99
    "wm": (1084.0, 69.0, 0.69),  # white matter: Stanisz 2005 Table 1 (3 T): 1084 / 69
    # deep grey matter: between white and cortical grey matter, as Wansapura et al. 1999 (JMRI 9:531) measure
    # the deep nuclei at 3 T relative to frontal WM (832 ms) and cortical GM (1331 ms); values assumed
    "deep_gm": (1450.0, 80.0, 0.76),
    "ventricle": (4163.0, 2000.0, 1.00),  # as csf
    "necrosis": (3000.0, 600.0, 0.95),  # fluid-filled core: long T1 and T2 (assumed, as default)
    "edema": (1084.0, 69.0, 0.69),  # replaced voxel by voxel by the graded model (EDEMA_PEAK -> white matter)
    "enhancing": (1500.0, 120.0, 0.85),  # viable rim before contrast (assumed, as default); gadolinium below
}
EDEMA_PEAK = (2000.0, 240.0, 0.86)  # at the enhancing rim; white matter's values at the outer border (assumed)
BIAS_AMPLITUDE = 0.12  # std of the log bias field (as default's coil term)
BIAS_SHARED = 0.5  # share of the log bias variance common to all sequences


def edema_distance(labels: np.ndarray, spacing) -> np.ndarray:
    """Normalized position g in [0, 1] of every edema voxel between the tumour core (0) and its outer border (1):
    g = d_core / (d_core + d_out), distances in mm; 0 outside the edema."""
    edema = labels == TISSUES["edema"]
    g = np.zeros(labels.shape, np.float32)
    if not edema.any():
        return g
    core = np.isin(labels, [TISSUES["enhancing"], TISSUES["necrosis"]])
    d_core = ndimage.distance_transform_edt(~core, sampling=spacing) if core.any() else np.ones(labels.shape)
    d_out = ndimage.distance_transform_edt(edema | core, sampling=spacing)  # distance to the non-tumour outside
    g[edema] = (d_core[edema] / np.maximum(d_core[edema] + d_out[edema], 1e-6)).astype(np.float32)
    return g


def tissue_maps(labels: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel T1, T2 (ms) and PD: the literature table by tissue, graded in the edema."""
    table = np.array([LITERATURE_RELAXATION[n] for n in TISSUES], np.float32)  # (n_tissues, 3)
    t1, t2, pd = (table[labels, i] for i in range(3))
    g = edema_distance(labels, spacing)
    edema = labels == TISSUES["edema"]
    for out, peak, base in zip((t1, t2, pd), EDEMA_PEAK, LITERATURE_RELAXATION["wm"]):
        out[edema] = peak + (base - peak) * g[edema]  # linear from the peak at the rim to white matter
    return t1, t2, pd


def sequence_bias(coil: np.ndarray, own: np.ndarray, shared: float = BIAS_SHARED) -> np.ndarray:
    """exp(BIAS_AMPLITUDE (sqrt(shared) coil + sqrt(1 - shared) own)) of unit-variance fields."""
    return np.exp(BIAS_AMPLITUDE * (np.sqrt(shared) * coil + np.sqrt(1.0 - shared) * own)).astype(np.float32)


def make_brain_subject_literature(seed, shape=(96, 96, 64), tumour: bool = True,
                                  noise: float = 0.03) -> dict[str, np.ndarray]:
    """One brain subject with literature physics: the same keys as `phantom_brain.make_brain_subject`."""
    shape = tuple(int(s) for s in shape)
    labels, _ = brain_anatomy(seed, shape, tumour)
    spacing = [f / n for f, n in zip(BRAIN_FOV_MM, shape)]
    rng = np.random.default_rng([int(seed), 2])  # image draws apart from the anatomy and the default's stream
    texture = 1.0 + 0.03 * smooth_field(rng, shape, 16)
    coil = smooth_field(rng, shape, 3)
    t1, t2, pd = tissue_maps(labels, spacing)
    t1_gd = t1.copy()
    rim = labels == TISSUES["enhancing"]
    t1_gd[rim] = 1.0 / (1.0 / t1[rim] + GD_R1_PER_MM_S * GD_CONCENTRATION_MM / 1000.0)  # 1/T1 = 1/T1_0 + r1 C
    ti = null_inversion_time(LITERATURE_RELAXATION["csf"][0], FLAIR[0])
    signals = {"t1": lambda: spin_echo(t1, t2, pd, *T1W), "t1ce": lambda: spin_echo(t1_gd, t2, pd, *T1W),
               "t2": lambda: spin_echo(t1, t2, pd, *T2W),
               "flair": lambda: inversion_recovery(t1, t2, pd, FLAIR[0], FLAIR[1], ti)}
    wm = labels == TISSUES["wm"]
    out: dict[str, np.ndarray] = {}
    for name, signal in signals.items():
        bias = sequence_bias(coil, smooth_field(rng, shape, 3))
        clean = blur3((SIGNAL_SCALE * signal()).astype(np.float32) * texture * bias)
        sigma = noise * float(clean[wm].mean()) if wm.any() else noise * SIGNAL_SCALE
        out[name], out[f"{name}_noise_free"] = acquire(clean, sigma, noise, rng)
    return {**out, **label_maps(labels)}
