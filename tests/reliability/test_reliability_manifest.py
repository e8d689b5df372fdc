"""Issue 28, item 9 (data side): the prepared manifest and the latent cache's meta.json record the modality
order and the shards (with their checksums); an edited order or a replaced shard is refused, never trained on
as swapped channels."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.data.latent_cache import load_cache_meta  # noqa: E402
from phmdiff.data.prepare import load_manifest  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _copy(tmp_path_factory, tmp_path, name) -> Path:
    data = fx.shared(tmp_path_factory)
    shutil.copytree(data / name, tmp_path / name)
    return tmp_path / name


def _edit(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_an_untouched_manifest_and_cache_load(tmp_path_factory, tmp_path):
    assert load_manifest(_copy(tmp_path_factory, tmp_path, "prepared"))["modalities"]
    assert load_cache_meta(_copy(tmp_path_factory, tmp_path, "latents"))["modalities"]


@pytest.mark.parametrize("edit", [lambda m: m["modalities"].reverse(), lambda m: m.pop("integrity"),
                                  lambda m: m["splits"]["train"]["shards"][0].update(sha256="0" * 64)])
def test_an_edited_modality_order_or_shard_record_is_refused(tmp_path_factory, tmp_path, edit):
    prepared = _copy(tmp_path_factory, tmp_path, "prepared")
    _edit(prepared / "manifest.json", edit)
    with pytest.raises(ValueError, match="modality order"):
        load_manifest(prepared)


def test_a_shard_with_swapped_channels_is_refused_by_encode(tmp_path_factory, tmp_path):
    prepared = _copy(tmp_path_factory, tmp_path, "prepared")
    shard = prepared / load_manifest(prepared)["splits"]["train"]["shards"][0]["file"]
    rows = np.load(shard)
    np.save(shard, rows[:, ::-1].copy())  # the same shape and dtype, the modalities in another order
    data = fx.shared(tmp_path_factory)
    res = fx.cli("encode", str(prepared), str(data / "autoencoder"), str(tmp_path / "cache"), check=False)
    assert res.returncode == 2 and "checksum" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "cache").exists()


def test_a_cache_whose_modality_order_was_swapped_is_refused_by_train(tmp_path_factory, tmp_path):
    cache = _copy(tmp_path_factory, tmp_path, "latents")
    _edit(cache / "meta.json", lambda m: m["modalities"].reverse())
    with pytest.raises(ValueError, match="modality order"):
        load_cache_meta(cache)
    data = fx.shared(tmp_path_factory)
    config = fx.write_config(data, tmp_path / "run", cache=cache)
    res = fx.cli("train", "--config", str(config), "--no-progress", check=False)
    assert res.returncode == 2 and "modality order" in res.stderr and "Traceback" not in res.stderr, res.stderr
