import pytest

from phmdiff.fsutil import atomic_dir, atomic_path, atomic_write_text, check_writable_dir


def test_atomic_path_replaces_whole_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    atomic_write_text(target, "old")
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block succeeds
    assert target.read_text() == "new"


def test_atomic_path_failure_keeps_old_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "shards"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_check_writable_dir_refuses_a_path_under_a_file(tmp_path):
    # Runs as root in CI, where chmod cannot make a folder unwritable; a folder
    # that would have to live inside a regular file is unwritable for everyone.
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        check_writable_dir(blocker / "out")
