"""The paper cuts of issue 29 item 5: each entry point says what happened in one sentence."""

import pytest

from phmdiff.translate import translate


@pytest.fixture(scope="module")
def two_subjects(tiny_run, tmp_path_factory):
    """A folder holding two of the tiny run's phantom subjects (links, not copies)."""
    root = tmp_path_factory.mktemp("two")
    for sid in ("PHANTOM_00000", "PHANTOM_00001"):
        (root / sid).symlink_to(tiny_run / "ph" / sid, target_is_directory=True)
    return root


def test_translate_progress_bar_counts_subjects_not_sample_volumes(tiny_run, two_subjects, tmp_path, capsys):
    translate(tiny_run / "run", two_subjects, tmp_path / "out", n_samples=2, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "subject" in err
    assert "/4" not in err and "volume" not in err.split("translate:")[-1]


def test_gitignore_lists_the_readme_output_folders():
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    for folder in ("/out/", "/demo_gen/", "/demo_out/", "/runs/"):
        assert folder in lines
