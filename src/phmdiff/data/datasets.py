"""PyTorch datasets over prepared slice shards (memory-mapped, never loaded whole).

Shards hold (n, n_mod * (2k+1), H, W) in [0, 1] (k = 2.5D context, channel = modality * (2k+1) + offset);
the datasets hand out `x * 2 - 1` in [-1, 1] as float32, per docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from phmdiff.data.prepare import SPLITS, load_manifest


def draw_direction(n_mod: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """Any-to-any training (BraSyn): a target slot uniform over `n_mod`, and an availability mask (n_mod,)
    uniform over the non-empty subsets of the other slots (the target's own slot is always 0)."""
    if n_mod < 2:
        raise ValueError(f"any-to-any needs at least two modalities, got {n_mod}.")
    target = int(torch.randint(n_mod, (1,), generator=generator))
    subset = int(torch.randint(1, 2 ** (n_mod - 1), (1,), generator=generator))  # bits over the other slots
    others = [j for j in range(n_mod) if j != target]
    avail = torch.zeros(n_mod)
    for bit, j in enumerate(others):
        avail[j] = float((subset >> bit) & 1)
    return target, avail


def direction_generator(*key: int) -> torch.Generator:
    """A generator seeded by integers (seed, epoch, index, ...): draws repeat across workers and restarts."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([*key]).generate_state(1)[0]))


class _PreparedSplit(Dataset):
    """Index -> (shard, row) over one split's memory-mapped shards, plus seeded per-epoch flips."""

    def __init__(self, prepared_dir: str | Path, split: str, flip: bool = False, seed: int = 0):
        self.root = Path(prepared_dir)
        self.manifest = load_manifest(self.root)
        if split not in SPLITS:
            raise ValueError(f"split '{split}' is unknown; expected one of {', '.join(SPLITS)}.")
        self.split, self.flip, self.seed, self.epoch = split, flip, seed, 0
        self.modalities: list[str] = list(self.manifest["modalities"])
        self.k = int(self.manifest.get("channels_per_modality", 1))
        self.shards = self.manifest["splits"][split]["shards"]
        self.slices = self.manifest["slices"][split]
        self.starts = np.cumsum([0] + [s["n"] for s in self.shards])
        self._maps: list[np.ndarray] | None = None  # opened lazily, so each DataLoader worker maps its own

    def _modality_index(self, name: str) -> int:
        if name not in self.modalities:
            raise ValueError(f"{self.root}: modality '{name}' was not prepared; found {', '.join(self.modalities)}.")
        return self.modalities.index(name)

    def set_epoch(self, epoch: int) -> None:
        """Flips depend on (seed, epoch, index) only, so they are the same across workers and restarts."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _row(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} slices in split {self.split}.")
        if self._maps is None:
            self._maps = [np.load(self.root / s["file"], mmap_mode="r") for s in self.shards]
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self._maps[shard][i - self.starts[shard]]  # (C, H, W), still memory-mapped

    def _flip(self, i: int) -> bool:
        return self.flip and bool(np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5)

    def _channels(self, row: np.ndarray, mods: list[int], centre_only: bool, flip: bool) -> torch.Tensor:
        """The channels of `mods` (all context slices, or only the centre one) as float32 in [-1, 1]."""
        if centre_only:
            picks = [m * self.k + self.k // 2 for m in mods]
        else:
            picks = [m * self.k + j for m in mods for j in range(self.k)]
        if not picks:  # a generation run has no sources: (0, H, W)
            return torch.zeros(0, *row.shape[1:], dtype=torch.float32)
        x = row[picks] if picks != list(range(picks[0], picks[-1] + 1)) else row[picks[0] : picks[-1] + 1]
        x = np.asarray(x, dtype=np.float32) * 2.0 - 1.0  # (C, H, W); numpy, not torch.cat: no thread-pool overhead
        return torch.from_numpy(np.ascontiguousarray(x[..., ::-1] if flip else x))

    def _meta(self, i: int) -> dict:
        subject, index = self.slices[i]
        return {"subject": subject, "index": int(index)}


class PairedSlices(_PreparedSplit):
    """Source modalities -> target modality pairs for translation.

    Returns dict(source (n_src * (2k+1), H, W), target (1, H, W), avail (n_src,), target_label, subject, index).
    With `any_to_any`, `sources` are all the slots, `target` is unused, and each slice gets its own fixed draw
    of target and available sources (`draw_direction`, seeded by (seed, index)); unavailable slots are -1.
    """

    def __init__(self, prepared_dir, split, sources=("t1", "t2"), target="flair", flip=False, seed=0,
                 any_to_any=False):
        super().__init__(prepared_dir, split, flip, seed)
        self.sources, self.any_to_any = list(sources), bool(any_to_any)
        if not self.any_to_any and target in self.sources:
            raise ValueError(f"target '{target}' is also a source; a modality cannot be synthesized from itself.")
        self.source_idx = [self._modality_index(m) for m in self.sources]
        if not self.any_to_any:
            self.target, self.target_label = target, self._modality_index(target)

    def __getitem__(self, i: int) -> dict:
        row, flip = self._row(i), self._flip(i)
        if not self.any_to_any:
            return {
                "source": self._channels(row, self.source_idx, False, flip),
                "target": self._channels(row, [self.target_label], True, flip),
                "avail": torch.ones(len(self.sources)),
                "target_label": self.target_label,
                **self._meta(i),
            }
        slot, avail = draw_direction(len(self.sources), direction_generator(self.seed, i))
        source = self._channels(row, self.source_idx, False, flip)  # (n_src * k, H, W)
        keep = avail.repeat_interleave(self.k)[:, None, None]  # (n_src * k, 1, 1)
        return {
            "source": source * keep - (1 - keep),  # a missing slot is black (-1), never the real image
            "target": self._channels(row, [self.source_idx[slot]], True, flip),
            "avail": avail,
            "target_label": self.source_idx[slot],
            **self._meta(i),
        }


class TargetSlices(_PreparedSplit):
    """Slices of one modality for generation (nearest training slices, realism): dict(target (1, H, W),
    target_label, subject, index). Training reads the latent cache's `LatentTargets` instead."""

    def __init__(self, prepared_dir, split, target="flair", flip=False, seed=0):
        super().__init__(prepared_dir, split, flip, seed)
        self.target, self.target_label = target, self._modality_index(target)

    def __getitem__(self, i: int) -> dict:
        row = self._row(i)
        return {
            "target": self._channels(row, [self.target_label], True, self._flip(i)),
            "target_label": self.target_label,
            **self._meta(i),
        }
