"""Bad input at every entry point ends in one sentence and exit code 2: never a traceback, a hang or a partial
output; and checkpoints are loaded safely: a pickle payload never runs, a flipped byte is named (issue 8).

Broken inputs are generated with hypothesis (a few per kind in CI, many more under PHMDIFF_STRESS=1) and fed
to `phmdiff.cli.main` in this process; a few go through real subprocesses as well."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.training.checkpoint import MANIFEST, find_latest, load_checkpoint, sha256_file  # noqa: E402

STRESS = os.environ.get("PHMDIFF_STRESS") == "1"
EXAMPLES = 150 if STRESS else 6
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not STRESS, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED = {"n": 0}
pytestmark = pytest.mark.timeout(1800 if STRESS else 300)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nreliability: {TRIED['n']} broken inputs tried, none ended in a traceback, a hang or a partial output")


def _run(argv: list, capsys) -> tuple[int, str]:
    TRIED["n"] += 1
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses malformed option values itself: usage + one error line
        code = exc.code
    return code, capsys.readouterr().err


def _refused(code: int, err: str) -> str:
    """Exit 2 with one error line and no traceback; returns that line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert len(lines[0].split("error:", 1)[1].split()) >= 3, lines[0]  # a sentence, not a bare code
    return lines[0]


def _nothing_under(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert leftovers == [], leftovers


# --- NIfTI and PNG through `phmdiff prepare` ---------------------------------------------------------------

NIFTI_DAMAGE = ("garbage", "truncate", "empty", "nan", "inf", "shape", "affine", "dims", "not-gzip")


def _subjects(root: Path, rng: np.random.Generator) -> None:
    for i in range(3):
        for mod in ("t1", "t2", "flair"):
            v = np.zeros((16, 16, 6), np.float32)
            v[2:-2, 2:-2] = rng.uniform(50, 500, (12, 12, 6))
            (root / f"s{i}").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(v, np.eye(4)), root / f"s{i}" / f"{mod}.nii.gz")


def _damage_nifti(path: Path, how: str, data: bytes, where: float) -> None:
    raw = path.read_bytes()
    img = nib.load(path)
    v = np.asarray(img.dataobj, dtype=np.float32)
    if how == "garbage":
        path.write_bytes(data or b"\0")
    elif how == "truncate":
        path.write_bytes(raw[: int(where * (len(raw) - 1))])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not-gzip":
        path.write_bytes(gzip.decompress(raw)[: max(1, int(where * 348))])
    elif how in ("nan", "inf"):
        v.flat[int(where * (v.size - 1))] = np.nan if how == "nan" else -np.inf  # (flat: nibabel is F-ordered)
        nib.save(nib.Nifti1Image(v, img.affine), path)
    elif how == "shape":
        nib.save(nib.Nifti1Image(v[:, :-1], img.affine), path)
    elif how == "affine":
        nib.save(nib.Nifti1Image(v, np.diag([1.01 + where, 1.0, 1.0, 1.0])), path)
    elif how == "dims":
        nib.save(nib.Nifti1Image(v[..., 0] if where < 0.5 else v[..., None, None], img.affine), path)


@given(how=st.sampled_from(NIFTI_DAMAGE), subject=st.integers(0, 2), mod=st.sampled_from(["t1", "t2", "flair"]),
       data=st.binary(max_size=512), where=st.floats(0.0, 0.99))
@SETTINGS
def test_broken_nifti_is_refused_by_prepare_with_a_sentence_and_no_output(capsys, how, subject, mod, data, where):
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", Path(tmp) / "prepared"
        _subjects(root, np.random.default_rng(subject))
        _damage_nifti(root / f"s{subject}" / f"{mod}.nii.gz", how, data, where)
        code, err = _run(["prepare", root, out, "--modalities", "t1", "t2", "flair", "--size", "16",
                          "--split", "0.34", "0.33", "0.33", "--min-foreground", "0"], capsys)
        line = _refused(code, err)
        assert f"s{subject}" in line, line  # the sentence names the subject (or its file)
        _nothing_under(out)


PNG_DAMAGE = ("garbage", "truncate", "empty", "colour", "size")


@given(how=st.sampled_from(PNG_DAMAGE), data=st.binary(max_size=256), where=st.floats(0.0, 0.99),
       bits=st.sampled_from([8, 16]))
@SETTINGS
def test_broken_png_is_refused_by_prepare_with_a_sentence_and_no_output(capsys, how, data, where, bits):
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", Path(tmp) / "prepared"
        rng = np.random.default_rng(0)
        dtype = np.uint8 if bits == 8 else np.uint16
        for mod in ("t1", "t2"):
            (root / mod).mkdir(parents=True)
            for sid in ("a", "b", "c"):
                for k in range(3):
                    img = np.zeros((16, 16), dtype)
                    img[3:-3, 3:-3] = rng.integers(10, 200, (10, 10))
                    Image.fromarray(img).save(root / mod / f"{sid}_{k:03d}.png")
        victim = root / "t2" / "b_001.png"
        raw = victim.read_bytes()
        if how == "garbage":
            victim.write_bytes(data or b"\x89PNG")
        elif how == "truncate":
            victim.write_bytes(raw[: int(where * (len(raw) - 1))])
            if _still_whole(victim, raw):  # only trailers/checksums cut: the pixels read are exactly the original
                return
        elif how == "empty":
            victim.write_bytes(b"")
        elif how == "colour":
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(victim)
        else:
            Image.fromarray(np.zeros((12, 16), dtype)).save(victim)
        code, err = _run(["prepare", root, out, "--layout", "png", "--size", "16", "--split", "0.34", "0.33",
                          "0.33", "--min-foreground", "0"], capsys)
        line = _refused(code, err)
        assert "b_001" in line or (how == "size" and "t2" in line), line  # size: names the modality folder
        _nothing_under(out)


def _still_whole(path: Path, original: bytes) -> bool:
    """True when the reader accepts a cut PNG and returns exactly the original pixels (nothing read wrong)."""
    from phmdiff.data.readers import load_png

    whole = path.with_suffix(".orig.png")
    whole.write_bytes(original)
    try:
        cut = load_png(path)
    except ValueError:
        return False
    finally:
        expected = load_png(whole)
        whole.unlink()
    assert np.array_equal(cut, expected), f"{path}: a truncated PNG was read with different pixels"
    return True


# --- config files and command-line values ------------------------------------------------------------------

BAD_OVERRIDES = st.one_of(
    st.builds("train.max_num_steps={}".format, st.integers(-10**6, 0)),
    st.builds("train.batchsize={}".format, st.integers(-50, 0)),
    st.builds("train.seed={}-{}".format, st.integers(0, 99), st.integers(0, 99)),
    st.builds("train.seed={}".format, st.integers(-10**6, -1)),
    st.builds("train.lr={}".format, st.sampled_from(["nan", "-1e-3", "0", "inf", "fast", "[1]"])),
    st.builds("model.mask_ratio={}".format, st.floats(1.0, 1e6) | st.floats(-1e6, -1e-6)),
    st.builds("train.{}=1".format, st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
        lambda k: k not in {f for f in __import__("phmdiff.config").config.TrainConfig.__dataclass_fields__})),
    st.sampled_from(["=3", "train.lr", "model.model_type=DiT-Q/3", "train.amp=fp8", "data.sources=[]",
                     "data.target=t1", "model.in_size=15", "train.grad_accum=3", "eval.sampler=magic",
                     "train.adam_betas=[0.9]", "log.ckpt_every=0", "model.pyramid_levels=0"]),
)


@given(override=BAD_OVERRIDES)
@SETTINGS
def test_bad_config_values_are_refused_with_a_sentence(capsys, override, tmp_path_factory):
    data = fx.shared(tmp_path_factory)
    config = fx.write_config(data, Path(tempfile.gettempdir()) / "never-created-run", data / "cli.yaml")
    _refused(*_run(["train", "--config", config, "--dry-run", override], capsys))
    assert not (Path(tempfile.gettempdir()) / "never-created-run").exists()


YAML_JUNK = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["[1, 2", "train: {lr: }}", "- a\n- b\n", "train: [1, 2]\n", "train:\n  lr: 1e-3\n lr: 2\n",
                     "model:\n  model_type: 7\n", "data: 5\n", "\0\0\0", "train:\n  batchsize: 2.5\n",
                     "wandb:\n  enabled: maybe\n", "train: !!python/object/apply:os.system ['touch pwned']\n"]),
)


@given(text=YAML_JUNK)
@SETTINGS
def test_broken_yaml_configs_end_in_a_sentence_or_are_valid(capsys, text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.yaml"
        path.write_bytes(text.encode("utf-8", "replace"))
        code, err = _run(["train", "--config", path, "--dry-run"], capsys)
        assert not Path("pwned").exists()
        if code != 0:  # some generated texts are valid configs (e.g. empty mappings): those print and exit 0
            _refused(code, err)


BAD_SEEDS = st.one_of(
    st.builds("{}-{}".format, st.integers(10, 99), st.integers(0, 9)),
    st.builds("-{}".format, st.integers(1, 99)),
    st.builds("{},,{}".format, st.integers(0, 9), st.integers(0, 9)),
    st.text("abcxyz.;:/ ", min_size=1, max_size=6),
    st.sampled_from(["", ",", "1-", "-", "0-99999999", "4294967296", "1.5", "0x10", "5-1"]),
)


@given(seeds=BAD_SEEDS, steps=st.integers(-5, 0) | st.none(), batch=st.integers(-5, 0) | st.none())
@SETTINGS
def test_generate_refuses_bad_seeds_steps_and_batch_sizes(capsys, tmp_path_factory, seeds, steps, batch):
    run = fx.trained_run(tmp_path_factory)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        extra = ["--steps", steps] if steps is not None else []
        extra += ["--batch-size", batch] if batch is not None else []
        _refused(*_run(["generate", "--run", run, "--out", out, f"--seeds={seeds}", "--device", "cpu", *extra],
                       capsys))
        _nothing_under(out)


@given(option=st.sampled_from(["--steps", "--n-samples", "--seed", "--batch-size"]), value=st.integers(-99, 0))
@SETTINGS
def test_translate_refuses_bad_numbers(capsys, tmp_path_factory, option, value):
    if option == "--seed" and value == 0:
        value = -1
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        _refused(*_run(["translate", "--run", run, "--input", data / "phantom" / "PHANTOM_00001", "--out", out,
                        option, value, "--device", "cpu"], capsys))
        _nothing_under(out)


# --- checkpoints -------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this calls Path.touch on a marker file: the code must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rehash(folder: Path) -> None:
    """An attacker who rewrote a file can rewrite the manifest too: hashes alone cannot stop a payload."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["state.pt (torch zip)", "state.pt (raw pickle)", "model.safetensors"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path_factory, tmp_path, capsys,
                                                                               where):
    run = fx.trained_run(tmp_path_factory)
    ckpt = tmp_path / "evil" / "checkpoints" / "step-000002"
    shutil.copytree(find_latest(run), ckpt)
    marker = tmp_path / "PWNED"
    target = ckpt / where.split()[0]
    if where == "state.pt (torch zip)":
        state = torch.load(target, weights_only=True)
        torch.save({**state, "payload": _Payload(marker)}, target)
    else:
        target.write_bytes(pickle.dumps({"step": 2, "payload": _Payload(marker)}))
    _rehash(ckpt)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused|not a readable safetensors"):
        load_checkpoint(ckpt)
    line = _refused(*_run(["generate", "--run", ckpt, "--out", tmp_path / "out", "--seeds", "0-1", "--steps", "1",
                           "--device", "cpu"], capsys))
    assert str(ckpt) in line
    assert not marker.exists()  # the payload never ran
    _nothing_under(tmp_path / "out")
    proc = fx.cli("translate", "--run", ckpt, "--input", tmp_path, "--out", tmp_path / "out2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not marker.exists()


CKPT_DAMAGE = ("flip", "truncate", "delete", "manifest-junk", "manifest-types", "extra-step-file")


@given(how=st.sampled_from(CKPT_DAMAGE), name=st.sampled_from(["model.safetensors", "ema.safetensors", "state.pt",
                                                               "config.yaml", "meta.json"]),
       where=st.floats(0.0, 0.999), bit=st.integers(0, 7))
@SETTINGS
def test_damaged_checkpoints_are_named_and_the_previous_one_is_used(capsys, tmp_path_factory, how, name, where, bit):
    run = fx.trained_run(tmp_path_factory)
    good = find_latest(run)
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = Path(tmp) / "run" / "checkpoints"
        older, newer = ckpts / "step-000001", ckpts / "step-000002"
        shutil.copytree(good, older)
        shutil.copytree(good, newer)
        victim = newer / name
        raw = bytearray(victim.read_bytes())
        if how == "flip":
            raw[int(where * len(raw))] ^= 1 << bit
            victim.write_bytes(bytes(raw))
        elif how == "truncate":
            victim.write_bytes(bytes(raw[: int(where * len(raw))]))
        elif how == "delete":
            victim.unlink()
        elif how == "manifest-junk":
            (newer / MANIFEST).write_bytes(bytes(raw[: int(where * len(raw))]) + b"\xff{")
        elif how == "manifest-types":
            (newer / MANIFEST).write_text(json.dumps({"format": "phmdiff-checkpoint/1", "files": [name]}))
        else:
            (newer / "extra.bin").write_bytes(b"x")  # not in the manifest: ignored, the checkpoint stays valid
        code, err = _run(["generate", "--run", newer, "--out", Path(tmp) / "out", "--seeds", "0", "--steps", "1",
                          "--device", "cpu"], capsys)
        if how == "extra-step-file":
            assert code == 0, err
            return
        line = _refused(code, err)
        assert str(newer) in line, line
        _nothing_under(Path(tmp) / "out")
        assert find_latest(Path(tmp) / "run") == older  # resume skips the damaged one


def test_a_flipped_byte_is_detected_with_a_sentence(tmp_path_factory, tmp_path):
    ckpt = tmp_path / "step-000002"
    shutil.copytree(find_latest(fx.trained_run(tmp_path_factory)), ckpt)
    raw = bytearray((ckpt / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    (ckpt / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"model\.safetensors: content hash does not match the manifest; the file "
                                         r"is corrupted or tampered with\."):
        load_checkpoint(ckpt)


# --- a few through real processes --------------------------------------------------------------------------

def test_bad_input_through_real_processes(tmp_path_factory, tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    root = tmp_path / "in"
    _subjects(root, np.random.default_rng(1))
    (root / "s1" / "t2.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    cases = [
        ["prepare", root, tmp_path / "prep", "--modalities", "t1", "t2", "flair", "--size", "16"],
        ["generate", "--run", run, "--out", tmp_path / "gen", "--seeds", "5-1"],
        ["train", "--config", fx.write_config(data, tmp_path / "r", tmp_path / "c.yaml"), "train.seed=5-1"],
        ["translate", "--run", tmp_path / "nowhere", "--input", root, "--out", tmp_path / "tr"],
    ]
    for args in cases:
        TRIED["n"] += 1
        proc = fx.cli(*args, check=False, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
    for out in ("prep", "gen", "r", "tr"):
        _nothing_under(tmp_path / out)


