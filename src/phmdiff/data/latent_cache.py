"""`phmdiff encode`: the latent cache, i.e. each prepared slice's posterior mean and log-variance per modality.

The cache stores the diagonal Gaussian posterior (LDM, Rombach et al. 2022), not one fixed sample, so every
epoch draws fresh latents z = (mean + exp(logvar / 2) * eps) * latent_scale. Backends: sharded .npy
(default, memory-mapped), LMDB (the original code's `category: lmdb`) and webdataset-style tar shards
(`<key>.mean.npy`, `<key>.logvar.npy` members, written with the stdlib). `meta.json` records the sha256 of
the autoencoder file and of the prepared manifest; a cache is refused when either differs from the caller's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from phmdiff.argtypes import COUNT
from phmdiff.autoencoder import load_autoencoder
from phmdiff.data.datasets import direction_generator, draw_direction
from phmdiff.data.prepare import SPLITS, load_manifest, prepared_id
from phmdiff.devices import choose_device
from phmdiff.fsutil import atomic_write_text, publish_dir
from phmdiff.options import add_device, add_overwrite
from phmdiff.schema import check_cache_meta, check_shard_checksum, layout_digest

FORMAT = "phmdiff-latents/1"
BACKENDS = ("npy", "lmdb", "wds")


def autoencoder_id(path: str | Path) -> str:
    """sha256 of an autoencoder file (of every file, in name order, when it is a folder)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: autoencoder file not found.")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _as_id(value: str | Path | None, kind: str) -> str | None:
    """An identity given as a hex digest, or as the file/folder it is computed from."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 64 and not Path(value).exists():
        return value
    return autoencoder_id(value) if kind == "autoencoder" else prepared_id(value)


@torch.no_grad()
def _encode_rows(model, rows: np.ndarray, batch_size: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_mod, H, W) in [0, 1] -> posterior mean and logvar (n, n_mod, c, h, w)."""
    n, n_mod = rows.shape[:2]
    x = rows.reshape(n * n_mod, 1, *rows.shape[2:])  # (n * n_mod, 1, H, W): one shared single-channel encoder
    means, logvars = [], []
    for lo in range(0, len(x), batch_size):
        batch = torch.from_numpy(np.asarray(x[lo : lo + batch_size], dtype=np.float32) * 2.0 - 1.0).to(device)
        posterior = model.encode(batch)
        means.append(posterior.mean.float().cpu().numpy())
        logvars.append(posterior.logvar.float().cpu().numpy())
    mean, logvar = np.concatenate(means), np.concatenate(logvars)
    return mean.reshape(n, n_mod, *mean.shape[1:]), logvar.reshape(n, n_mod, *logvar.shape[1:])  # (n, M, c, h, w)


class _Writer:
    """Writes one backend's files into `folder`; `shards` lists what was written per split."""

    def __init__(self, folder: Path, backend: str, dtype: str, capacity: int):
        self.folder, self.backend, self.dtype, self.capacity = folder, backend, np.dtype(dtype), capacity
        self.shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.env = None

    def add(self, split: str, start: int, mean: np.ndarray, logvar: np.ndarray) -> None:
        mean, logvar = mean.astype(self.dtype), logvar.astype(self.dtype)
        name = f"{split}-{len(self.shards[split]):05d}"
        if self.backend == "npy":
            np.save(self.folder / f"{name}.mean.npy", mean)
            np.save(self.folder / f"{name}.logvar.npy", logvar)
            self.shards[split].append({"name": name, "n": len(mean)})
        elif self.backend == "lmdb":
            import lmdb

            if self.env is None:  # map size: every item of every split, twice over, plus slack
                self.env = lmdb.open(str(self.folder / "latents.lmdb"), map_size=4 * self.capacity * mean[0].nbytes
                                     + (64 << 20), subdir=True, lock=False)
            with self.env.begin(write=True) as txn:
                for j in range(len(mean)):
                    txn.put(f"{split}/{start + j:08d}".encode(), mean[j].tobytes() + logvar[j].tobytes())
            self.shards[split].append({"name": name, "n": len(mean)})
        else:
            with tarfile.open(self.folder / f"{name}.tar", "w") as tar:
                for j in range(len(mean)):
                    for field, arr in (("mean", mean[j]), ("logvar", logvar[j])):
                        buf = io.BytesIO()
                        np.save(buf, arr)
                        info = tarfile.TarInfo(f"{start + j:08d}.{field}.npy")
                        info.size = buf.tell()
                        buf.seek(0)
                        tar.addfile(info, buf)
            self.shards[split].append({"name": name, "n": len(mean)})

    def close(self) -> None:
        if self.env is not None:
            self.env.sync()
            self.env.close()


def encode_prepared(prepared_dir: str | Path, model, out_dir: str | Path, ae_id: str, backend: str = "npy",
                    batch_size: int = 32, dtype: str = "float16", device: str = "cpu", overwrite: bool = False,
                    progress: bool = True) -> str:
    """Fill `out_dir` with the latents of every prepared slice; returns 'built' or 'reused'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is unknown; expected one of {', '.join(BACKENDS)}.")
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    manifest, data_id = load_manifest(prepared_dir), prepared_id(prepared_dir)
    if (out_dir / "meta.json").is_file() and not overwrite:
        old = json.loads((out_dir / "meta.json").read_text())
        if (old.get("autoencoder_id"), old.get("prepared_id"), old.get("backend"), old.get("dtype")) == (
            ae_id, data_id, backend, dtype
        ):
            return "reused"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path is a file; expected a folder for the latent cache.")
    from tqdm.auto import tqdm

    k = int(manifest.get("channels_per_modality", 1))
    n_mod = len(manifest["modalities"])
    centre = [m * k + k // 2 for m in range(n_mod)]  # the context channels are not encoded
    model = model.to(device).eval()
    total = sum(manifest["splits"][s]["n"] for s in SPLITS)
    item_shape = None
    with publish_dir(out_dir, "encode", overwrite) as tmp:  # never replaces a folder encode did not write
        writer = _Writer(tmp, backend, dtype, total)
        bar = tqdm(total=total, desc="encode", unit="slice", disable=not progress or None)
        for split in SPLITS:
            start = 0
            for shard in manifest["splits"][split]["shards"]:
                check_shard_checksum(prepared_dir / shard["file"], shard, prepared_dir / "manifest.json")
                rows = np.load(prepared_dir / shard["file"], mmap_mode="r")[:, centre]  # (n, n_mod, H, W)
                mean, logvar = _encode_rows(model, rows, batch_size, device)
                writer.add(split, start, mean, logvar)
                item_shape = list(mean.shape[1:])
                start += len(mean)
                bar.update(len(mean))
        bar.close()
        writer.close()
        meta = {
            "format": FORMAT,
            "backend": backend,
            "dtype": dtype,
            "autoencoder_id": ae_id,
            "prepared_id": data_id,
            "prepared_dir": str(prepared_dir),
            "latent_scale": float(torch.as_tensor(model.latent_scale).float().reshape(-1)[0]),
            "latent_channels": int(model.latent_channels),
            "downsample_factor": int(model.downsample_factor),
            "item_shape": item_shape,  # (n_mod, c, h, w)
            "modalities": manifest["modalities"],
            "splits": {s: {"n": manifest["splits"][s]["n"], "shards": writer.shards[s]} for s in SPLITS},
            "slices": manifest["slices"],
        }
        meta["integrity"] = layout_digest(meta, "name")  # modality order and shards, checked on read
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
    return "built"


def load_cache_meta(cache_dir: str | Path, autoencoder: str | Path | None = None,
                    prepared: str | Path | None = None) -> dict:
    """The cache's meta.json, refused with a sentence when it was made by another autoencoder or data."""
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{cache_dir}: not a latent cache (no meta.json); run phmdiff encode first.")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r} is not "
                         f"{FORMAT!r}.")
    check_cache_meta(meta, path)
    for kind, given in (("autoencoder", autoencoder), ("prepared", prepared)):
        want = _as_id(given, kind)
        if want is not None and want != meta[f"{kind}_id"]:
            raise ValueError(
                f"{cache_dir}: latent cache was made by {kind} {meta[f'{kind}_id'][:12]}, not by the given "
                f"{kind} {want[:12]}; re-run phmdiff encode with this {kind}."
            )
    return meta


class _Reader:
    """Random access to (mean, logvar) of item i of a split, whatever the backend."""

    def __init__(self, cache_dir: Path, meta: dict, split: str):
        self.root, self.meta, self.split = cache_dir, meta, split
        self.shape, self.dtype = tuple(meta["item_shape"]), np.dtype(meta["dtype"])
        shards = meta["splits"][split]["shards"]
        self.starts = np.cumsum([0] + [s["n"] for s in shards])
        self.shards, self.handles = shards, None

    def _open(self) -> None:
        backend = self.meta["backend"]
        if backend == "npy":
            self.handles = [(np.load(self.root / f"{s['name']}.mean.npy", mmap_mode="r"),
                             np.load(self.root / f"{s['name']}.logvar.npy", mmap_mode="r")) for s in self.shards]
            for s, (mean, logvar) in zip(self.shards, self.handles):  # meta.json's counts against the files
                if len(mean) != s["n"] or len(logvar) != s["n"] or tuple(mean.shape[1:]) != self.shape:
                    raise ValueError(f"{self.root / (s['name'] + '.mean.npy')}: holds {len(mean)} items of shape "
                                     f"{tuple(mean.shape[1:])} but meta.json says {s['n']} of {self.shape}.")
        elif backend == "lmdb":
            import lmdb

            self.handles = lmdb.open(str(self.root / "latents.lmdb"), readonly=True, lock=False, readahead=False)
        else:  # tar: index member offsets once, then read members by seeking
            self.handles = {}
            for s in self.shards:
                with tarfile.open(self.root / f"{s['name']}.tar") as tar:
                    for m in tar.getmembers():
                        self.handles[m.name] = (self.root / f"{s['name']}.tar", m.offset_data, m.size)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.handles is None:
            self._open()
        backend = self.meta["backend"]
        if backend == "npy":
            shard = int(np.searchsorted(self.starts, i, side="right") - 1)
            mean, logvar = self.handles[shard]
            return np.asarray(mean[i - self.starts[shard]]), np.asarray(logvar[i - self.starts[shard]])
        if backend == "lmdb":
            with self.handles.begin() as txn:
                raw = txn.get(f"{self.split}/{i:08d}".encode())
            both = np.frombuffer(raw, dtype=self.dtype).reshape(2, *self.shape)  # (2, n_mod, c, h, w)
            return both[0], both[1]
        out = []
        for field in ("mean", "logvar"):
            path, offset, size = self.handles[f"{i:08d}.{field}.npy"]
            with open(path, "rb") as f:
                f.seek(offset)
                out.append(np.load(io.BytesIO(f.read(size))))
        return out[0], out[1]


class LatentPairs(Dataset):
    """Latent source/target pairs sampled from the cached posteriors, same dict as `PairedSlices`.

    With `any_to_any`, `sources` are the model's slots (every modality) and each example draws its own target
    and non-empty set of available sources (`datasets.draw_direction`, seeded by (seed, epoch, index)); the
    target's and the unavailable slots enter as zeros. The cache holds each modality once for all directions.
    With `crop`, latents larger than `crop` x `crop` are cut to a random window of that size (the same for
    source and target, seeded by (seed, epoch, index)): a model is trained on its configured grid while
    translate runs it on whole planes in windows of that grid (`phmdiff.windows`). With `flip`, half the
    examples are mirrored left-right, sources and target alike (seeded by (seed, epoch, index)).
    """

    def __init__(self, cache_dir, split, sources=("t1", "t2"), target="flair", autoencoder_id=None,
                 prepared_id=None, seed=0, any_to_any=False, crop: int | None = None, flip: bool = False):
        self.root = Path(cache_dir)
        self.meta = load_cache_meta(self.root, autoencoder_id, prepared_id)
        if split not in SPLITS:
            raise ValueError(f"split '{split}' is unknown; expected one of {', '.join(SPLITS)}.")
        mods = self.meta["modalities"]
        self.any_to_any = bool(any_to_any)
        for m in [*sources] + ([] if self.any_to_any else [target]):
            if m not in mods:
                raise ValueError(f"{self.root}: modality '{m}' is not in the latent cache; found {', '.join(mods)}.")
        self.source_idx = [mods.index(m) for m in sources]
        self.target_label = None if self.any_to_any else mods.index(target)
        self.latent_scale, self.seed, self.epoch, self.crop = float(self.meta["latent_scale"]), seed, 0, crop
        self.flip = bool(flip)
        self.slices = self.meta["slices"][split]
        self.reader = _Reader(self.root, self.meta, split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.meta["splits"][self.reader.split]["n"])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} latents.")
        mean, logvar = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in self.reader.get(i))
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
        z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * self.latent_scale
        if self.crop and max(z.shape[-2:]) > self.crop:  # (n_mod, c, h, w) -> (n_mod, c, crop, crop)
            h, w = z.shape[-2:]
            top, left = (int(torch.randint(0, max(s - self.crop, 0) + 1, (1,), generator=g)) for s in (h, w))
            z = z[..., top : top + self.crop, left : left + self.crop]
        if self.flip and bool(torch.rand(1, generator=g) < 0.5):
            z = z.flip(-1)  # (n_mod, c, h, w), mirrored along the plane's second axis
        subject, index = self.slices[i]
        if self.any_to_any:
            slot, avail = draw_direction(len(self.source_idx), direction_generator(self.seed, self.epoch, i, 1))
            return {
                "source": (z[self.source_idx] * avail[:, None, None, None]).flatten(0, 1),  # (n_src * c, h, w)
                "target": z[self.source_idx[slot]],  # (c, h, w)
                "avail": avail,
                "target_label": self.source_idx[slot],
                "subject": subject,
                "index": int(index),
            }
        return {
            "source": z[self.source_idx].flatten(0, 1),  # (n_src * c, h, w)
            "target": z[self.target_label],  # (c, h, w)
            "avail": torch.ones(len(self.source_idx)),
            "target_label": self.target_label,
            "subject": subject,
            "index": int(index),
        }


class LatentTargets(Dataset):
    """Target-only latents of a generation run: item k is slice k // T of modality k % T of the T `targets`, with
    that modality's label; the dict of `LatentPairs` without sources (source (0, h, w), avail (0,))."""

    def __init__(self, cache_dir, split, targets=("flair",), seed=0):
        if not targets:
            raise ValueError("a generation run needs at least one target modality (data.target or data.targets).")
        self.parts = [LatentPairs(cache_dir, split, (), t, seed=seed) for t in targets]
        for part in self.parts[1:]:  # one reader: an lmdb environment may be opened once per process
            part.reader = self.parts[0].reader
        self.meta = self.parts[0].meta

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    @property
    def crop(self) -> int | None:
        return self.parts[0].crop

    @crop.setter
    def crop(self, size: int | None) -> None:  # random crops of larger planes, as `LatentPairs`
        for part in self.parts:
            part.crop = size

    def __len__(self) -> int:
        return len(self.parts[0]) * len(self.parts)

    def __getitem__(self, k: int) -> dict:
        i, t = divmod(int(k), len(self.parts))
        return self.parts[t][i]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prepared", help="folder written by phmdiff prepare")
    parser.add_argument("autoencoder", help="autoencoder file written by phmdiff train-ae")
    parser.add_argument("out", help="output folder of the latent cache")
    parser.add_argument("--backend", default="npy", choices=BACKENDS,
                        help="npy files (random access) or tar shards (one file per split, streamed)")
    parser.add_argument("--batch-size", type=COUNT, default=32, help="slices encoded per batch")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                        help="storage type of the latent means and log-variances")
    add_device(parser, "cpu")
    add_overwrite(parser, "re-encode even when the cache is up to date")


def run(args: argparse.Namespace) -> int:
    device = str(choose_device(args.device, origin="--device"))
    ae_id = autoencoder_id(args.autoencoder)
    model = load_autoencoder(args.autoencoder)
    status = encode_prepared(args.prepared, model, args.out, ae_id, args.backend, args.batch_size, args.dtype,
                             device, args.overwrite)
    print(f"{args.out}: {'up to date, reused' if status == 'reused' else 'encoded'}.", file=sys.stderr)
    return 0
