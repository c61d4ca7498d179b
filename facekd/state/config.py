"""``config.toml``: the workspace's settings, their types and ranges, and the check on identity ids.

Every value a user writes (the file) or passes (an identity id) is refused here with a
:class:`~facekd.errors.WorkspaceError` naming it, before any arithmetic turns it into a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from facekd import methods
from facekd.core.tail import ALPHA
from facekd.errors import WorkspaceError
from facekd.faces import DEFAULT_LIMITS, ImageLimits

__all__ = ["CONFIG_NAME", "Config", "as_identity"]

CONFIG_NAME = "config.toml"


def as_identity(identity: int) -> int:
    """An identity id as int, refused when SQLite's signed 64-bit INTEGER cannot hold it."""
    value = int(identity)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise WorkspaceError(f"identity {value} is outside the signed 64-bit range")
    return value



@dataclass
class Config:
    """Contents of ``config.toml``.

    ``match_threshold`` is the cosine score at which a search result counts as a match; ``None``
    ("auto" in the file) means the score at FAR = ``far`` over the gallery's impostor pairs: the
    one-to-one threshold. One-to-many search labels MATCH at the gallery's FPIR ``fpir`` threshold.
    The acceptance bound for ``verify``: the erased identity's re-enrolment rank-1 must be at most
    ``max_rank1_over_chance`` times chance and its genuine-pair TAR at FAR ``far`` at most ``max_tar``.
    """

    encoder: str
    aligned: bool = False
    index: str = "flat"
    # Where the vectors live: "faiss" (this directory) or a Milvus address (gallery_tools.backend).
    backend: str = "faiss"
    match_threshold: float | None = None
    # One-to-many search labels MATCH above the score that this share of never-enrolled people's
    # photos exceed against this gallery (false-positive identification rate), estimated from the
    # gallery itself (measure.identification_threshold); one-to-one checks keep the FAR threshold.
    fpir: float = 0.01
    far: float = 1e-3
    # The gated scramble is the default: on LFW + dlib it is the method that passes verify while
    # leaving everyone else's scores untouched (README, "What an erasure achieves").
    method: str = "scramble"
    p: float = 1.5
    k: int | None = None
    energy: float | None = None
    # One photo is enough for the scramble: its gate generalises from a within-identity prior.
    min_vectors: int = 1
    # forget refuses (unless --force) an erasure whose held-out coverage is below this share: on
    # an encoder that cannot tell faces apart the gate opens on none of the person's photos, and
    # committing it would report an erasure that changes nothing (facekd.operations.measure.coverage).
    min_coverage: float = 0.5
    # The reference step (lr 1e-3 on the raw gradient) never moves a mask entry past the threshold
    # on face-sized forget sets, so ESC-T would erase nothing. The workspace normalises each step
    # by its largest gradient entry instead: lr is then the most any entry moves per step.
    esc_t_lr: float = 0.1
    esc_t_normalize_step: bool = True
    max_rank1_over_chance: float = 2.0
    max_tar: float = 0.05
    seed: int = 0
    # Gated scramble: the gate opens at this quantile of the gallery's discriminant scores (None,
    # "auto" in the file: the tightest of 0.9995 ... 0.95 (from 0.999 with 2-4 photos) that covers
    # the person's unseen photos with 2+ photos of them, the widest from 0.995 with one, within a
    # budget of gallery faces touched; facekd.methods.scramble_defaults.q_ladder), and a
    # scrambled face's deviation from the population mean is scaled by scramble_alpha.
    scramble_q: float | None = None
    # With one photo of the person, the gate opens above this quantile instead ("auto": the widest
    # from 0.995 within the budget). One-photo gates add up over erasures in sequence: a higher
    # value spares everyone else at the erased person's expense (facekd.methods.scramble_defaults
    # .ONE_PHOTO_FRONTIER, measured).
    scramble_q_one: float | None = None
    scramble_alpha: float = ALPHA
    # The look-alike guard: a gate opens on at most this share of any one enrolled identity's new
    # photos (1: no guard, the default), never lifted above the score that scramble_guard_keep of
    # the person's own unseen photos clear. Off by default: measured, it can leave more of the
    # erased person's new photos findable (scramble_defaults.GUARD, docs/threat-model.md);
    # 0.02 is the measured opt-in.
    scramble_guard: float = 1.0
    scramble_guard_keep: float = 1.0
    # From this many photos of the person on, the gate's hinge is soft (0.5 of the way to the
    # person's photos instead of 0.15): erasures in sequence cost everyone else a third as much,
    # and the erased person's new photos are found a little more often (docs/threat-model.md).
    # 0: never (the sharp hinge everywhere).
    scramble_soft_from: int = 10
    # A gate lets through a face that matches one of the enrolled people nearest it (above this
    # quantile of enrolled strangers' cosines to their mean faces; 0: off). 50 one-photo erasures
    # in sequence cost everyone else about a sixth as much (facekd.methods.spare). The edited
    # model then holds those people's mean faces (docs/threat-model.md).
    # auto: 0.99, and 0.9 with 2-4 photos (facekd.methods.scramble_defaults.SPARE_FEW).
    scramble_spare: float | None = None
    # The stranger map counts each identity's faces at most this many times the median
    # identity's (0: face by face, the default). Read when the map is fitted, at the workspace's
    # first erasure: later ones reuse it. One person enrolled with far more photos than the rest
    # pulls the map toward them, and the erased people's new photos get labelled MATCH as that
    # person (LFW, 40 people with one photo and one with 32: 9.4 % dlib, 10.4 % FaceNet, at
    # FPIR 1 %; with 4: 1.5 / 1.0 %). On LFW's own galleries 4 made the erased easier to spot
    # and a little easier to find (docs/benchmarks.md, "Thirteenth round"), so it is opt-in.
    scramble_stranger_cap: float = 0.0
    # Checked before decoding any image (file size, then the header's width x height).
    max_image_bytes: int = DEFAULT_LIMITS.max_bytes
    max_image_pixels: int = DEFAULT_LIMITS.max_pixels

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=int(self.max_image_bytes), max_pixels=int(self.max_image_pixels))

    def to_toml(self) -> dict:
        return {
            "encoder": {"spec": self.encoder, "aligned": self.aligned},
            "gallery": {"index": self.index,
                        **({"backend": self.backend} if self.backend != "faiss" else {}),
                        "match_threshold": "auto" if self.match_threshold is None
                        else float(self.match_threshold), "fpir": self.fpir},
            "forget": {"method": self.method, "p": self.p, "min_vectors": self.min_vectors,
                       "min_coverage": self.min_coverage,
                       "esc_t_lr": self.esc_t_lr, "esc_t_normalize_step": self.esc_t_normalize_step,
                       "seed": self.seed,
                       "scramble_q": _or_auto(self.scramble_q),
                       "scramble_q_one": _or_auto(self.scramble_q_one),
                       "scramble_alpha": self.scramble_alpha,
                       "scramble_guard": self.scramble_guard,
                       "scramble_guard_keep": self.scramble_guard_keep,
                       "scramble_soft_from": self.scramble_soft_from,
                       "scramble_spare": _or_auto(self.scramble_spare),
                       "scramble_stranger_cap": self.scramble_stranger_cap,
                       # TOML has no null: an unset rule is simply absent
                       **({"k": self.k} if self.k is not None else {}),
                       **({"energy": self.energy} if self.energy is not None else {})},
            "acceptance": {"far": self.far, "max_rank1_over_chance": self.max_rank1_over_chance,
                           "max_tar": self.max_tar},
            "images": {"max_image_bytes": self.max_image_bytes,
                       "max_image_pixels": self.max_image_pixels},
        }

    @classmethod
    def from_toml(cls, data: dict, source: str = CONFIG_NAME) -> "Config":
        try:
            flat: dict[str, Any] = {"encoder": data["encoder"]["spec"],
                                    "aligned": data["encoder"].get("aligned", False)}
            flat.update({k: v for k, v in data.get("gallery", {}).items()})
            flat.update(data.get("forget", {}))
            flat.update(data.get("acceptance", {}))
            flat.update(data.get("images", {}))
        except (KeyError, TypeError, AttributeError, ValueError):
            raise WorkspaceError(f"{source}: needs an [encoder] table with a 'spec' key") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise WorkspaceError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        for key in AUTO_KEYS:
            if flat.get(key) == "auto":
                flat[key] = None
        for key, value in flat.items():
            _check_type(key, value, source)
        cfg = cls(**flat)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = CONFIG_NAME) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), source)
        if self.index not in ("flat", "ivf"):
            raise WorkspaceError(f"{source}: index must be flat or ivf, got {self.index!r}")
        from gallery_tools.backend import parse_spec
        from gallery_tools.errors import GalleryError

        try:
            parse_spec(self.backend)
        except GalleryError as exc:
            raise WorkspaceError(f"{source}: [gallery] backend: {exc}") from None
        if not 0 < self.p <= 100:
            raise WorkspaceError(f"{source}: [forget] p must be in (0, 100]")
        if not 0 <= self.seed < 2 ** 32:
            raise WorkspaceError(f"{source}: [forget] seed must be in [0, 2^32)")
        if self.esc_t_lr <= 0:
            raise WorkspaceError(f"{source}: [forget] esc_t_lr must be > 0")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise WorkspaceError(f"{source}: [images] limits must be positive integers")
        if self.method not in methods.names():
            raise WorkspaceError(f"{source}: method must be one of {', '.join(methods.names())}, "
                                 f"got {self.method!r}")
        if any(v is not None and not 0 < float(v) < 1
               for v in (self.scramble_q, self.scramble_q_one)) \
                or not float(self.scramble_alpha) > 0:
            raise WorkspaceError(f"{source}: scramble_q and scramble_q_one must be 'auto' or in "
                                 "(0, 1), scramble_alpha > 0")
        if not 0 < float(self.scramble_guard) <= 1:
            raise WorkspaceError(f"{source}: [forget] scramble_guard must be in (0, 1] "
                                 "(1: no look-alike guard)")
        if not 0 < float(self.scramble_guard_keep) <= 1:
            raise WorkspaceError(f"{source}: [forget] scramble_guard_keep must be in (0, 1] "
                                 "(1: all of the person's unseen photos)")
        if self.scramble_spare is not None and not 0 <= float(self.scramble_spare) < 1:
            raise WorkspaceError(f"{source}: [forget] scramble_spare must be auto or in [0, 1) "
                                 "(0: a gate spares nobody)")
        if not float(self.scramble_stranger_cap) >= 0:
            raise WorkspaceError(f"{source}: [forget] scramble_stranger_cap must be >= 0 (0: the "
                                 "stranger map reads the gallery face by face)")
        if self.scramble_soft_from < 0 or self.scramble_soft_from == 1:
            raise WorkspaceError(f"{source}: [forget] scramble_soft_from must be 0 (never) or a "
                                 "photo count >= 2")
        if not 0 < self.far < 1 or not 0 <= self.max_tar <= 1 or self.max_rank1_over_chance <= 0:
            raise WorkspaceError(f"{source}: far and max_tar must be in (0, 1), "
                                 "max_rank1_over_chance > 0")
        if not 0 < float(self.fpir) < 1:
            raise WorkspaceError(f"{source}: [gallery] fpir must be in (0, 1)")
        if self.k is not None and self.energy is not None:
            raise WorkspaceError(f"{source}: [forget] sets both k and energy; keep one")
        if self.k is not None and not (isinstance(self.k, int) and self.k >= 1):
            raise WorkspaceError(f"{source}: [forget] k must be a positive integer")
        if self.energy is not None and not 0 < float(self.energy) <= 1:
            raise WorkspaceError(f"{source}: [forget] energy must be in (0, 1]")
        if int(self.min_vectors) < 1:
            raise WorkspaceError(f"{source}: min_vectors must be >= 1")
        if not 0 <= float(self.min_coverage) <= 1:
            raise WorkspaceError(f"{source}: [forget] min_coverage must be in [0, 1] (a share of "
                                 "the person's held-out photos; 0 turns the check off)")
        if self.match_threshold is not None and not -1 <= float(self.match_threshold) <= 1:
            raise WorkspaceError(f"{source}: match_threshold must be 'auto' or a cosine in [-1, 1]")


# Settings whose file value may be "auto" (None in Config: chosen per erasure or per gallery).
AUTO_KEYS = ("match_threshold", "scramble_q", "scramble_q_one", "scramble_spare")


def _or_auto(value: Any) -> Any:
    """An AUTO_KEYS setting as the file holds it: "auto" for None (TOML has no null)."""
    return "auto" if value is None else value
_KINDS = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float)}


def _check_type(key: str, value: Any, source: str) -> None:
    """Refuse a config value of the wrong TOML type (``p = "x"``) or a non-finite number,
    naming the key, before any arithmetic turns it into a traceback."""
    hint = {f.name: f.type for f in fields(Config)}.get(key)
    if hint is None:
        return
    optional = "None" in str(hint)
    if value is None and optional:
        return
    kind = str(hint).split("|")[0].strip()
    ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
    if ok and kind == "float" and not np.isfinite(float(value)):
        ok = False
    if not ok:
        want = {"str": "a string", "bool": "true or false", "int": "an integer",
                "float": "a finite number"}[kind]
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise WorkspaceError(f"{source}: {key} must be {want}"
                             f"{' (or auto)' if key in AUTO_KEYS else ''}, got {shown}")
