"""The pipeline ceiling: a perfect prediction through normalization, autoencoder and translate's inverse."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phmdiff.autoencoder import IdentityAutoencoder
from phmdiff.ceiling import oracle_volume, round_trip
from phmdiff.data.phantom import write_phantom
from phmdiff.data.readers import find_subjects
from phmdiff.data.volume import VolumeSettings, load_subject_volumes, volume_to_slices
from phmdiff.eval.protocols import evaluate_subject
from phmdiff.translate import target_norm_for


class Halve(torch.nn.Module):
    """A lossy 'autoencoder': decoding loses half the image's contrast around 0 (in [-1, 1] units)."""

    downsample_factor = 1

    def encode(self, x):
        return SimpleNamespace(mean=x)

    def decode(self, z):
        return z * 0.5


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, "brain", n_subjects=2, shape=(32, 32, 16), seed=3, progress=False)
    return find_subjects(root)


def _run(autoencoder):
    return SimpleNamespace(autoencoder=autoencoder, latent_scale=1.0, device=torch.device("cpu"))


@pytest.mark.parametrize("relative", [True, False])
def test_a_perfect_prediction_through_a_lossless_pipeline_is_the_reference(subjects, relative):
    # Relative normalization: translate's inverse is the training map, so the identity pipeline gives back
    # the reference to float precision. Without it the target's own scale must be guessed from elsewhere:
    # here the guess is another subject's scale, and the same perfect prediction loses far more.
    sources, target = ["t1", "t2"], "flair"
    settings = VolumeSettings([*sources, target], size=32, min_foreground=0.0,
                              relative={target: sources} if relative else {})
    sub, other = subjects
    vols, affine, _ = load_subject_volumes(sub, [*sources, target])
    _, spec = volume_to_slices({m: vols[m] for m in sources}, affine, settings)
    if relative:
        norm = target_norm_for(settings, target, sources, spec.norm, None, None)
    else:
        o_vols, o_affine, _ = load_subject_volumes(other, [*sources, target])
        norm = volume_to_slices(o_vols, o_affine, settings)[1].norm[target]  # a guess: another subject's scale
    oracle = oracle_volume(_run(IdentityAutoencoder()), sub, settings, sources, target, norm)
    ref = vols[target]
    psnr = evaluate_subject(oracle, ref, protocol="volume")["psnr"]
    if relative:
        np.testing.assert_allclose(oracle, ref, atol=1e-3 * float(ref.max()))
        assert psnr > 60
    else:
        assert psnr < 40


def test_the_ceiling_shows_what_the_autoencoder_loses(subjects):
    slices = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    np.testing.assert_allclose(round_trip(_run(IdentityAutoencoder()), slices), slices, atol=1e-6)
    # Halving around 0 in [-1, 1]: x -> ((2x - 1) / 2 + 1) / 2 = x / 2 + 0.25, in closed form.
    np.testing.assert_allclose(round_trip(_run(Halve()), slices), slices / 2 + 0.25, atol=1e-6)
    sources, target = ["t1", "t2"], "flair"
    settings = VolumeSettings([*sources, target], size=32, min_foreground=0.0, relative={target: sources})
    sub = subjects[0]
    vols, affine, _ = load_subject_volumes(sub, [*sources, target])
    norm = target_norm_for(settings, target, sources,
                           volume_to_slices({m: vols[m] for m in sources}, affine, settings)[1].norm, None, None)
    lossy = oracle_volume(_run(Halve()), sub, settings, sources, target, norm)
    assert evaluate_subject(lossy, vols[target], protocol="volume")["psnr"] < 25
