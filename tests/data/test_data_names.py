"""The modality alias table, and prepare reading BraTS 2023 names and leaving incomplete subjects out."""

import json
import shutil

import pytest

from phmdiff.cli import main
from phmdiff.data.names import canonical, canonical_list, same_modality, spellings
from phmdiff.data.phantom import write_phantom
from phmdiff.data.readers import find_subjects


@pytest.mark.parametrize("given, name", [
    ("t1", "t1"), ("T1n", "t1"), ("T1w", "t1"), ("t1ce", "t1ce"), ("t1c", "t1ce"), ("T1Gd", "t1ce"),
    ("t1-gd", "t1ce"), ("t2w", "t2"), ("T2", "t2"), ("FLAIR", "flair"), ("t2f", "flair"), ("T2-FLAIR", "flair"),
    ("label", "seg"), ("mr", "mr"), ("CT", "ct"), ("pd", "pd"),
])
def test_every_spelling_has_one_canonical_name(given, name):
    assert canonical(given) == name


def test_two_spellings_of_one_modality_are_refused_and_spellings_list_both_releases():
    assert same_modality("t2f", "FLAIR") and not same_modality("t1", "t1ce")
    assert {"flair", "t2f"} <= set(spellings("T2F"))
    with pytest.raises(ValueError, match="'t1' and 'T1n' are the same modality"):
        canonical_list(["t1", "T1n"])


def _brats2023(src, dst):
    """The phantom's BraTS 2021 files renamed as BraTS 2023 ships them: `<id>-t1n.nii.gz`, ..."""
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / sub.name).mkdir(parents=True)
        for f in sub.glob("*.nii.gz"):
            mod = f.name[len(sub.name) + 1 : -len(".nii.gz")]
            shutil.copy(f, dst / sub.name / f"{sub.name}-{names[mod]}.nii.gz")


def test_prepare_takes_brats_2023_names_and_skips_incomplete_subjects_when_asked(tmp_path, capsys):
    write_phantom(tmp_path / "ph", "brain", n_subjects=3, shape=(16, 16, 16), seed=2)
    _brats2023(tmp_path / "ph", tmp_path / "b23")
    assert {s.layout for s in find_subjects(tmp_path / "b23")} == {"brats2023"}
    assert main(["prepare", str(tmp_path / "b23"), str(tmp_path / "p"), "--size", "16",
                 "--modalities", "t1n", "t2w", "t2f"]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["modalities"] == ["t1", "t2", "flair"] and len(manifest["volumes"]) == 3
    # One subject loses its FLAIR: an error naming the file and the flag, or left out and listed with it.
    (tmp_path / "b23" / "PHANTOM_00001" / "PHANTOM_00001-t2f.nii.gz").unlink()
    capsys.readouterr()
    assert main(["prepare", str(tmp_path / "b23"), str(tmp_path / "q"), "--size", "16",
                 "--modalities", "T1w", "T2w", "FLAIR"]) == 2
    err = capsys.readouterr().err
    assert "PHANTOM_00001-t2f.nii.gz: missing modality file (flair)" in err and "--skip-incomplete" in err
    assert main(["prepare", str(tmp_path / "b23"), str(tmp_path / "q"), "--size", "16",
                 "--modalities", "T1w", "T2w", "FLAIR", "--skip-incomplete"]) == 0
    err = capsys.readouterr().err
    assert "1 incomplete subject(s) left out" in err and "PHANTOM_00001: " in err
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert sorted(manifest["volumes"]) == ["PHANTOM_00000", "PHANTOM_00002"]
    assert list(manifest["skipped"]) == ["PHANTOM_00001"]
