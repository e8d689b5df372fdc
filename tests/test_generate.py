"""generate.py: seed parsing, the image grid, and a run on the session's tiny trained run."""

import numpy as np
import pytest

from phmdiff.generate import MAX_SEEDS, _grid, generate, parse_seeds


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("1,5,9", [1, 5, 9]), ("0-1, 7", [0, 1, 7]),
                                         ("4", [4])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, needle", [("5-1", "runs backwards"), ("x", "not a whole number"),
                                          ("1,,2", "empty item"), (f"0-{MAX_SEEDS}", "more than"),
                                          (f"{2**32}", r"below 2\^32")])
def test_parse_seeds_refuses_with_a_sentence(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_seeds(text)


def test_grid_places_images_row_major_in_a_near_square():
    images = np.arange(5, dtype=float)[:, None, None] * np.ones((5, 2, 3))
    grid = _grid(images)
    assert grid.shape == (2 * 2, 3 * 3)  # 5 images: 3 columns, 2 rows
    assert grid[0, 0] == 0 and grid[0, 3] == 1 and grid[0, 6] == 2 and grid[2, 0] == 3 and grid[2, 3] == 4
    assert (grid[2:, 6:] == 0).all()  # the empty cell stays black


def test_generate_on_the_tiny_run_is_seeded_per_sample(tiny_run, tmp_path):
    a = generate(tiny_run / "run", tmp_path / "a", [0, 1, 2], batch_size=3, device="cpu")
    b = generate(tiny_run / "run", tmp_path / "b", [2], batch_size=1, device="cpu")
    assert a["seeds"] == [0, 1, 2] and b["seeds"] == [2]
    assert (tmp_path / "a" / "png" / "seed000002.png").read_bytes() == (tmp_path / "b" / "png" / "seed000002.png"
                                                                         ).read_bytes()
    assert (tmp_path / "a" / "grid.png").is_file() and (tmp_path / "a" / "samples.nii.gz").is_file()
    with pytest.raises(ValueError):
        generate(tiny_run / "run", tmp_path / "a", [0], device="cpu")  # exists, no overwrite


def test_generate_with_churn_is_seeded_per_sample_and_recorded(tiny_run, tmp_path):
    kw = dict(device="cpu", sampler="heun", steps=3, churn=40.0, nearest=False)
    a = generate(tiny_run / "run", tmp_path / "a", [0, 1, 2], batch_size=3, **kw)
    b = generate(tiny_run / "run", tmp_path / "b", [2], batch_size=1, **kw)
    assert a["churn"] == b["churn"] == 40.0
    assert (tmp_path / "a" / "png" / "seed000002.png").read_bytes() == (tmp_path / "b" / "png" / "seed000002.png"
                                                                         ).read_bytes()
    c = generate(tiny_run / "run", tmp_path / "c", [2], batch_size=1, **{**kw, "churn": 0.0})
    assert c["churn"] == 0.0
    assert (tmp_path / "c" / "png" / "seed000002.png").read_bytes() != (tmp_path / "b" / "png" / "seed000002.png"
                                                                         ).read_bytes()
    with pytest.raises(ValueError, match="needs the heun or euler"):
        generate(tiny_run / "run", tmp_path / "d", [0], device="cpu", sampler="ddim", churn=5.0)
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_generate_says_when_a_deterministic_sampler_drops_the_runs_churn(tiny_run, tmp_path, monkeypatch, capsys):
    import phmdiff.generate as gen

    load = gen.load_trained

    def churning(*args, **kwargs):  # the tiny run as if trained with eval.churn 40
        trained = load(*args, **kwargs)
        trained.cfg.eval.churn = 40.0
        return trained

    monkeypatch.setattr(gen, "load_trained", churning)
    meta = generate(tiny_run / "run", tmp_path / "a", [0], device="cpu", sampler="ddim", steps=2, nearest=False)
    assert meta["churn"] == 0.0
    assert "eval.churn 40 is not used" in capsys.readouterr().err
