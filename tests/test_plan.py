"""The run plan: built by training, read back by every inference path, old runs migrated, schemes registered."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data.intensity import INTENSITY_SCHEMES, IntensityScheme
from phmdiff.data.volume import NormParams, VolumeSettings
from phmdiff.inference import load_trained
from phmdiff.plan import PLAN_VERSION, RunPlan, migrate, plan_of
from phmdiff.translate import translate

# The identity dict a checkpoint of the code before the plan carries (training/loop.py `_identity`, as written at
# main 51ffe13), with the old modality spellings that `migrate` must make canonical.
OLD = {"data": {"autoencoder_id": "ae", "prepared_id": "prep", "latent_scale": 0.5,
                "modalities": ["t1w", "T2w", "t2f"], "prepared_dir": "/p", "item_shape": [3, 1, 16, 16]},
       "cache_dir": "/c", "sources": ["t1w", "T2w"], "target": "t2f", "targets": ["t2f"], "layout": "brats",
       "volume_settings": {"modalities": ["t1w", "T2w", "t2f"], "size": 16, "relative": {"t2f": ["t1w", "T2w"]},
                           "spacing": [1.0, 1.0]},
       "target_norm": {"kind": "median", "offset": 3.0, "scale": 40.0, "clip": False},
       "target_gain": {"t1w": {"offset": 0.1, "scale": 1.2}, "T2w": {"offset": 0.2, "scale": 0.9}}}


def _plan(**kw):
    volume = VolumeSettings(modalities=["t1", "ct"], size=16)
    base = dict(sources=("t1",), target="ct", modalities=("t1", "ct"), volume=volume,
                intensity={m: volume.scheme(m) for m in ("t1", "ct")},
                target_norms={"ct": NormParams("window", -1024.0, 4095.0, True)}, target_gains={"ct": None},
                plane_multiple=4, latent_scale=0.5, data={"autoencoder_id": "ae"})
    return RunPlan(**{**base, **kw})


def test_an_old_runs_identity_migrates_with_canonical_names_and_its_schemes():
    plan = migrate(json.loads(json.dumps(OLD)), plane_multiple=8)
    assert (plan.sources, plan.target, plan.modalities) == (("t1", "t2"), "flair", ("t1", "t2", "flair"))
    assert plan.volume.relative == {"flair": ["t1", "t2"]} and plan.volume.spacing == [1.0, 1.0]
    assert plan.scheme("flair") == IntensityScheme("mr_relative", sources=("t1", "t2"))
    assert plan.scheme("t1") == IntensityScheme("mr_median") and plan.scheme("ct").kind == "ct_window"
    norm, gains = plan.target_scale("flair", ["t1"])
    assert norm == NormParams("median", 3.0, 40.0, False) and gains == {"t1": {"offset": 0.1, "scale": 1.2}}
    assert (plan.latent_scale, plan.plane_multiple, plan.data["cache_dir"]) == (0.5, 8, "/c")
    assert OLD["sources"] == ["t1w", "T2w"]  # the checkpoint's own record is left as written
    # the compatibility view gives the old keys back, names canonical
    ident = plan.identity()
    assert ident["target_gain"] == {"t1": {"offset": 0.1, "scale": 1.2}, "t2": {"offset": 0.2, "scale": 0.9}}
    assert (ident["data"]["modalities"], ident["target_norm"]["scale"]) == (["t1", "t2", "flair"], 40.0)


def test_plan_of_prefers_the_plan_and_round_trips_through_json():
    plan = _plan()
    meta = json.loads(json.dumps({"plan": plan.to_dict(), "identity": {"ignored": True}}))
    assert plan_of(meta, plane_multiple=99) == plan  # the plan's own multiple, not the caller's
    assert plan_of({"identity": OLD}, plane_multiple=8).target == "flair"
    with pytest.raises(ValueError, match="ckpt/meta.json: checkpoint has no run plan"):
        plan_of({}, 8, "ckpt/meta.json")


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(version=PLAN_VERSION + 1), "plan version 2 is not 1"),
    (lambda d: d.pop("modalities"), "malformed"),
    (lambda d: d.update(target="t2"), "modality 't2' is not among the prepared"),
    (lambda d: d["intensity"].update(ct={"kind": "pet_suv"}), "intensity scheme 'pet_suv' is unknown"),
    (lambda d: d["intensity"].update(ct={"kind": "ct_window", "lo": 5, "hi": 1}), "needs a window lo < hi"),
    (lambda d: d.update(target_norms={}), "no training scale for the synthesized modality 'ct'"),
    (lambda d: d.update(modalities=["t1", "../ct"]), "cannot be used as a file name"),
])
def test_a_bad_plan_is_one_sentence_naming_the_file(edit, words):
    d = json.loads(json.dumps(_plan().to_dict()))
    edit(d)
    with pytest.raises(ValueError, match=words) as exc:
        RunPlan.from_dict(d, "run/meta.json")
    assert str(exc.value).startswith("run/meta.json") and "\n" not in str(exc.value)


def test_each_intensity_kind_has_its_facts_and_round_trips():
    # Adding a kind: one INTENSITY_SCHEMES entry, and its row here.
    examples = {"mr_median": IntensityScheme("mr_median"), "mr_percentile": IntensityScheme("mr_percentile"),
                "mr_zscore": IntensityScheme("mr_zscore"),
                "mr_relative": IntensityScheme("mr_relative", sources=("t1", "t2")),
                "ct_window": IntensityScheme("ct_window", -1024.0, 3071.0)}
    assert set(examples) == set(INTENSITY_SCHEMES)
    for kind, scheme in examples.items():
        assert IntensityScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme, kind
        assert scheme.fixed == (kind == "ct_window") and scheme.units == ("HU" if scheme.fixed else "normalized units")
    with pytest.raises(ValueError, match="needs its source modalities"):
        IntensityScheme("mr_relative")


def test_volume_settings_give_each_modality_its_scheme():
    s = VolumeSettings(modalities=["t1", "t2", "flair", "ct"], norm="zscore", relative={"flair": ["t1", "t2"]},
                       ct_window=(-500.0, 1500.0))
    assert [s.scheme(m).kind for m in s.modalities] == ["mr_zscore", "mr_zscore", "mr_relative", "ct_window"]
    assert (s.scheme("ct").lo, s.scheme("ct").hi) == (-500.0, 1500.0)


def test_a_checkpoint_of_the_code_before_the_plan_translates_as_its_plan_does(tiny_run, tmp_path):
    """The shared run's checkpoint rewritten the way the code before the plan wrote it (meta["identity"], the
    untyped dict of training/loop.py at 51ffe13, which `RunPlan.identity` reproduces): it loads through `migrate`
    to the same plan and translates to the same voxels."""
    sys.path.insert(0, str(Path(__file__).parent / "reliability" / "scripts"))
    from rel_fixture import crafted_run

    def to_identity(meta):
        meta["identity"] = RunPlan.from_dict(meta.pop("plan")).identity()

    old = crafted_run(tmp_path / "old", tiny_run / "run", edit_meta=to_identity)
    new_plan = load_trained(tiny_run / "run", device="cpu").plan
    assert new_plan.input_ranges  # the old layout had no training ranges: the one field it cannot carry
    assert load_trained(old, device="cpu").plan == replace(new_plan, input_ranges={})
    preds = []
    for run in (tiny_run / "run", old):
        out = tmp_path / f"out-{len(preds)}"
        meta = translate(run, tiny_run / "ph" / "PHANTOM_00002", out, progress=False)
        preds.append(nib.load(out / meta["subjects"][0]["prediction"]).get_fdata())
    np.testing.assert_array_equal(preds[0], preds[1])
