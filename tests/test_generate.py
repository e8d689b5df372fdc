"""generate.py: seed parsing, the image grid, and a run on the session's tiny trained run."""

import numpy as np
import pytest

from phmdiff.generate import MAX_SEEDS, generate, parse_seeds, sample_grid
from phmdiff.image_grid import FONT_SIZE, GAP, labelled_grid


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


def test_the_grid_names_its_rows_and_columns_and_places_cells_row_major():
    images = (np.arange(5, dtype=np.float32)[:, None, None] + 1) / 10 * np.ones((5, 16, 16), np.float32)
    nearest = 1 - images
    grid = sample_grid(images, nearest, [0, 1, 2, 3, 4], "flair")
    k, cell = 6, 96  # 16 px cells scaled by 6
    # 5 samples: 3 pairs per row, 2 rows; titles above and at the left take what is left of the cells and gaps
    top, left = grid.shape[0] - 2 * (cell + GAP), grid.shape[1] - 6 * (cell + GAP)
    assert top > FONT_SIZE and left > FONT_SIZE and k * 16 == cell

    def at(r, c):
        return grid[top + r * (cell + GAP) + cell // 2, left + c * (cell + GAP) + cell // 2]

    assert [at(0, c) for c in range(6)] == pytest.approx([0.1, 0.9, 0.2, 0.8, 0.3, 0.7], abs=0.003)
    assert [at(1, c) for c in range(4)] == pytest.approx([0.4, 0.6, 0.5, 0.5], abs=0.003)
    assert at(1, 4) == 1.0 and at(1, 5) == 1.0  # the empty place stays white
    assert (grid[:top - GAP, left:] < 0.5).any() and (grid[top:, : left - GAP] < 0.5).any()  # the titles' ink
    assert (grid[:top - GAP, :left] == 1.0).all()  # the corner holds nothing


def test_grid_titles_are_the_modality_seeds_and_sample_or_nearest():
    from PIL import Image, ImageDraw

    from phmdiff.image_grid import wrap

    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    assert wrap("nearest training slice", 200, draw) == ["nearest training slice"]
    assert wrap("nearest training slice", 94, draw) == ["nearest training", "slice"]  # two lines in a 96 px cell
    one = sample_grid(np.zeros((2, 8, 8), np.float32), None, [3, 7], "t2")
    two = sample_grid(np.zeros((2, 8, 8), np.float32), None, [3, 7], "flair")
    assert one.shape[0] == two.shape[0] and not np.array_equal(one, two)  # the row title is drawn
    with pytest.raises(ValueError, match="one title per row and per column"):
        labelled_grid([[np.zeros((4, 4))]], ["a", "b"], ["x"])


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
