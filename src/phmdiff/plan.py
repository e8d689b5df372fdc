"""The run plan: what a trained run needs to be used on new volumes, typed and versioned (after nnU-Net's plans).

Training writes it into every checkpoint (`meta["plan"]`); `inference.load_trained` reads it back as
`TrainedRun.plan`, and translate, generate, the ceiling and evaluate ask it instead of loose keys. A run saved
before the plan existed carries an untyped `identity` dict instead: `migrate` turns it into a plan, the one
place that knows the old layout. Torch-free, so a command that only prints a plan stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from phmdiff.data.input_range import training_ranges
from phmdiff.data.intensity import IntensityScheme
from phmdiff.data.names import canonical
from phmdiff.data.prepare import gain_ratios, reference_norm
from phmdiff.data.volume import NormParams, VolumeSettings
from phmdiff.fsutil import safe_name

PLAN_VERSION = 1
# The data identity a plan keeps as provenance (hashes pin the latent cache a resume must reuse).
DATA_KEYS = ("autoencoder_id", "prepared_id", "prepared_dir", "item_shape", "cache_dir")


@dataclass(frozen=True)
class RunPlan:
    """Source slots, target(s), volume settings, plane multiple, latent scale and each modality's intensity
    scheme, with the training scale of each modality the run synthesizes (its median `NormParams` and, for an MR
    target, its gains over each source's scale)."""

    sources: tuple[str, ...]  # source slots in the model's channel order; empty for a generation run
    target: str | None  # a translation run's target; None for any-to-any and generation runs
    modalities: tuple[str, ...]  # prepared modalities: a modality's model label is its index here
    volume: VolumeSettings  # how one volume becomes slices (prepare's settings, spacing included)
    intensity: dict[str, IntensityScheme]  # per prepared modality
    target_norms: dict[str, NormParams]  # per synthesized modality: its training median scale
    target_gains: dict[str, dict | None] = field(default_factory=dict)  # per synthesized modality
    targets: tuple[str, ...] = ()  # a generation run's modalities
    any_to_any: bool = False  # every slot may be the target, from any subset of the others
    plane_multiple: int = 1  # every side of a plane must be a multiple of this (autoencoder x patch x pyramid)
    latent_scale: float = 1.0
    layout: str | None = None  # the prepared data's layout (brats, synthrad, ...), for input discovery
    slice_axis: dict | str | None = None  # the slice axis prepare recorded (`phmdiff plan`), when it did
    # per modality, the range of its normalized foreground statistics over the training subjects
    # (`input_range.training_ranges`); translate flags an input outside it. {}: not recorded (older runs)
    input_ranges: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # provenance: DATA_KEYS
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        for name in (*self.sources, *self.targets, *([self.target] if self.target else [])):
            if name not in self.modalities:
                raise ValueError(f"run plan: modality '{name}' is not among the prepared {list(self.modalities)}.")
        missing = [m for m in self.generated if m not in self.target_norms]
        if missing and self.sources:  # a generation run inverts no scale
            raise ValueError(f"run plan: no training scale for the synthesized modality {missing[0]!r}.")
        if int(self.plane_multiple) < 1 or not float(self.latent_scale) > 0:
            raise ValueError(f"run plan: plane_multiple {self.plane_multiple} and latent_scale {self.latent_scale} "
                             "must be positive.")

    @property
    def generated(self) -> list[str]:
        """The modalities this run synthesizes."""
        if self.any_to_any:
            return list(self.sources)
        return list(self.targets or ([self.target] if self.target else []))

    def scheme(self, modality: str) -> IntensityScheme:
        """`modality`'s intensity scheme (the volume settings' answer for a modality the run was not prepared with)."""
        return self.intensity.get(modality) or self.volume.scheme(modality)

    @property
    def training_axis(self) -> int | None:
        """The RAS axis the training data was sliced along: the volume settings' fixed axis, or the one prepare
        recorded for an `auto` run (None: mixed or not recorded)."""
        if self.volume.axis != "auto":
            return int(self.volume.axis)
        record = self.slice_axis
        return int(record["axis"]) if isinstance(record, dict) and record.get("axis") in (0, 1, 2) else None

    def volume_settings(self, modalities: list[str] | None = None) -> VolumeSettings:
        """The training volume settings, for `modalities` (default: the source slots)."""
        return replace(self.volume, modalities=list(self.sources if modalities is None else modalities))

    def target_scale(self, target: str, sources: list[str]) -> tuple[NormParams, dict | None]:
        """The training scale of `target` and its gains over `sources` (None: no gain to follow)."""
        if target not in self.target_norms:
            raise ValueError(f"this run does not synthesize '{target}'; it makes {', '.join(self.generated)}.")
        gains = self.target_gains.get(target)
        return self.target_norms[target], ({s: gains[s] for s in sources if s in gains} if gains else None)

    def to_dict(self) -> dict:
        return {"version": self.version, "sources": list(self.sources), "target": self.target,
                "targets": list(self.targets), "any_to_any": self.any_to_any, "modalities": list(self.modalities),
                "volume": asdict(self.volume), "intensity": {m: s.to_dict() for m, s in self.intensity.items()},
                "target_norms": {m: asdict(n) for m, n in self.target_norms.items()},
                "target_gains": dict(self.target_gains), "plane_multiple": self.plane_multiple,
                "latent_scale": self.latent_scale, "layout": self.layout, "slice_axis": self.slice_axis,
                "input_ranges": dict(self.input_ranges), "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "run plan") -> RunPlan:
        """A plan written by `to_dict`; a sentence naming `where` when it is not one."""
        if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
            version = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: plan version {version!r} is not {PLAN_VERSION}; this phmdiff cannot read it.")
        try:
            for name in d["modalities"]:  # names become file names: none may leave an output folder
                safe_name(name, "modality name", where)
            return cls(sources=tuple(d["sources"]), target=d["target"], targets=tuple(d.get("targets") or ()),
                       any_to_any=bool(d.get("any_to_any")), modalities=tuple(d["modalities"]),
                       volume=VolumeSettings.from_dict(d["volume"]),
                       intensity={m: IntensityScheme.from_dict(s) for m, s in d["intensity"].items()},
                       target_norms={m: NormParams(**n) for m, n in d["target_norms"].items()},
                       target_gains=dict(d.get("target_gains") or {}), plane_multiple=int(d["plane_multiple"]),
                       latent_scale=float(d["latent_scale"]), layout=d.get("layout"), slice_axis=d.get("slice_axis"),
                       input_ranges=dict(d.get("input_ranges") or {}), data=dict(d.get("data") or {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: the run plan is malformed ({type(exc).__name__}: {exc}).") from None
        except ValueError as exc:
            raise ValueError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None

    def identity(self) -> dict:
        """The untyped dict runs carried before the plan (meta["identity"]), the layout `migrate` reads."""
        out = {"data": {**{k: self.data.get(k) for k in DATA_KEYS if k != "cache_dir"},
                        "latent_scale": self.latent_scale, "modalities": list(self.modalities)},
               "cache_dir": self.data.get("cache_dir"), "sources": list(self.sources), "layout": self.layout,
               "volume_settings": asdict(self.volume), "slice_axis": self.slice_axis}
        if self.any_to_any:
            return {**out, "any_to_any": True, "target": None,
                    "target_norms": {m: asdict(n) for m, n in self.target_norms.items()},
                    "target_gains": dict(self.target_gains)}
        norm = self.target_norms.get(self.target) if self.target else None
        return {**out, "target": self.target, "targets": list(self.targets) or None,
                "target_norm": asdict(norm) if norm else None, "target_gain": self.target_gains.get(self.target)}


def build_plan(manifest: dict, cache_meta: dict, sources: list[str], target: str | None, targets: list[str],
               any_to_any: bool, plane_multiple: int, cache_dir: str) -> RunPlan:
    """The plan of a run trained on a prepared folder (`manifest`) through its latent cache (`cache_meta`)."""
    volume = VolumeSettings.from_dict(manifest["config"]["volume"])
    modalities = list(cache_meta["modalities"])
    if any_to_any:  # every slot may be the target: its training scale, and its gains over every other slot
        made = list(sources)
        gains = {m: gain_ratios(manifest, m, [o for o in sources if o != m]) for m in made}
    else:
        made = list(targets) if targets else [target]
        gains = {m: gain_ratios(manifest, m, list(sources)) for m in made} if sources else {m: None for m in made}
    return RunPlan(sources=tuple(sources), target=None if any_to_any else target, targets=tuple(targets or ()),
                   any_to_any=any_to_any, modalities=tuple(modalities), volume=volume,
                   intensity={m: volume.scheme(m) for m in modalities},
                   target_norms={m: reference_norm(manifest, m) for m in made}, target_gains=gains,
                   plane_multiple=plane_multiple, latent_scale=float(cache_meta["latent_scale"]),
                   layout=manifest.get("layout"), slice_axis=manifest.get("slice_axis"),
                   input_ranges=training_ranges(manifest),
                   data={**{k: cache_meta.get(k) for k in DATA_KEYS if k != "cache_dir"}, "cache_dir": cache_dir})


def migrate(identity: dict, plane_multiple: int, where: str = "checkpoint") -> RunPlan:
    """A plan from the untyped `identity` dict of a run saved before plans (version 0), modality names made
    canonical (runs prepared before the alias table kept spellings such as ``t1w``)."""
    def names(x):
        return [canonical(m) for m in x or []]

    try:
        data = identity["data"]
        vs = dict(identity["volume_settings"])
        vs["modalities"] = names(vs.get("modalities"))
        vs["relative"] = {canonical(k): names(v) for k, v in (vs.get("relative") or {}).items()}
        volume = VolumeSettings.from_dict(vs)
        modalities = names(data["modalities"])
        if identity.get("any_to_any"):
            norms = {canonical(m): NormParams(**n) for m, n in identity["target_norms"].items()}
            gains = {canonical(m): _canonical_keys(g) for m, g in (identity.get("target_gains") or {}).items()}
        else:
            target = canonical(identity["target"])  # old runs kept the scale of their (default) target only
            norms = {target: NormParams(**identity["target_norm"])}
            gains = {target: _canonical_keys(identity.get("target_gain"))}
        return RunPlan(sources=tuple(names(identity.get("sources"))),
                       target=canonical(identity["target"]) if identity.get("target") else None,
                       targets=tuple(names(identity.get("targets"))), any_to_any=bool(identity.get("any_to_any")),
                       modalities=tuple(modalities), volume=volume,
                       intensity={m: volume.scheme(m) for m in modalities}, target_norms=norms, target_gains=gains,
                       plane_multiple=plane_multiple, latent_scale=float(data["latent_scale"]),
                       layout=identity.get("layout"), slice_axis=identity.get("slice_axis"),
                       data={**{k: data.get(k) for k in DATA_KEYS if k != "cache_dir"},
                             "cache_dir": identity.get("cache_dir")})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: the run's identity is malformed ({type(exc).__name__}: {exc}).") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _canonical_keys(d):
    return {canonical(k): v for k, v in d.items()} if isinstance(d, dict) else d


def plan_of(meta: dict, plane_multiple: int, where: str = "checkpoint") -> RunPlan:
    """The plan in a checkpoint's meta: `meta["plan"]`, or the migrated `meta["identity"]` of an older run."""
    if "plan" in meta:
        return RunPlan.from_dict(meta["plan"], where)
    if not meta.get("identity"):
        raise ValueError(f"{where}: checkpoint has no run plan; it was not written by phmdiff train.")
    return migrate(meta["identity"], plane_multiple, where)
