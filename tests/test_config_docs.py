"""docs/config.md is generated from the config dataclasses, and this test fails when it is out of date."""

from dataclasses import dataclass, field

from phmdiff import config_docs
from phmdiff.config_docs import render, rows


@dataclass
class _Inner:
    """An inner section."""

    width: int = 3  # how wide


@dataclass
class _Toy:
    """A toy root."""

    # a comment above,
    # on two lines
    name: str = "x"
    sizes: list[int] = field(default_factory=lambda: [1, 2])  # the sizes | each
    flag: bool = field(default=False, metadata={"help": "from metadata"})
    bare: float = 0.5
    inner: _Inner = field(default_factory=_Inner)


def test_docs_config_md_is_up_to_date(capsys):
    assert config_docs.main(["--check"]) == 0, "docs/config.md is out of date: run python -m phmdiff.config_docs"


def test_a_stale_page_fails_the_check(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(render().replace("| `train.lr` |", "| `train.learning_rate` |"))
    assert config_docs.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_rows_read_types_defaults_comments_and_nested_sections():
    assert rows(_Toy) == [
        ("", [("name", "str", '`"x"`', "a comment above, on two lines", ""),
              ("sizes", "list[int]", "`[1, 2]`", "the sizes | each", ""),
              ("flag", "bool", "`false`", "from metadata", ""),
              ("bare", "float", "`0.5`", "", "")]),
        ("inner", [("inner.width", "int", "`3`", "how wide", "")]),
    ]
    page = render(_Toy)
    assert "## `inner`" in page and "An inner section." in page
    assert "| `sizes` | list[int] | `[1, 2]` | the sizes \\| each |  |" in page


def test_every_key_of_the_real_config_has_a_meaning_and_a_stage():
    from phmdiff.config import Config

    for _, items in rows(Config):
        for key, _, _, meaning, stages in items:
            assert meaning and stages, key


def test_the_generators_tables_name_only_real_keys():
    from phmdiff.config import Config

    keys = {key for _, items in rows(Config) for key, *_ in items}
    sections = {k.rsplit(".", 1)[0] for k in keys}
    assert set(config_docs.MEANINGS) <= keys
    assert set(config_docs.STAGES) <= keys | sections
