"""Procedural synthetic faces: aligned 112x112 RGB chips of made-up identities.

A test fixture and demo data source, **not** a face dataset: no real person is depicted, and an
encoder trained on these chips (``load_encoder("samples")``) is not a face model for real use.

Each identity number owns its appearance (face shape, eyes, brows, nose, mouth, skin, hair,
glasses, facial hair), drawn from a generator seeded by ``(seed, identity)`` only, so identity 1042
looks the same whichever other identities are rendered beside it. Each image adds its own nuisance
(pose, rotation, scale, translation, expression, lighting, occlusion, blur, noise, JPEG), seeded
by ``(seed, identity, image index)``. Rendering is bitwise deterministic for a seed on a given
OpenCV build and costs about a millisecond per chip.

Chips are roughly aligned to the ArcFace 112x112 template (eyes near y=52, x=38/74; mouth near
y=92) before the per-image pose jitter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facekd.errors import FacekdError

__all__ = ["SIZE", "FaceParams", "identity_params", "render_identity", "render_dataset",
           "write_tree"]

SIZE = 112
_SHIFT = 4  # cv2 fixed-point fractional bits: sub-pixel geometry keeps small features stable
_ONE = 1 << _SHIFT
_PROGRESS_MIN_CHIPS = 2000
_RAMP = np.linspace(-1, 1, SIZE, dtype=np.float32)
# Sensor noise: random windows of one fixed bank are far cheaper than fresh normals per chip and
# stay deterministic (the bank's seed is a constant of the renderer).
_NOISE = np.random.default_rng(0x5EED).standard_normal((256, 256, 3)).astype(np.float32)

# Palettes (RGB). Identities interpolate/jitter around them, so neighbours in parameter space
# exist and pixel matching alone is not enough to tell people apart.
_SKIN = np.array([(250, 222, 198), (238, 196, 160), (222, 170, 120), (196, 138, 90),
                  (150, 96, 60), (98, 62, 40)], np.float64)
_HAIR = np.array([(28, 24, 22), (62, 42, 30), (105, 72, 44), (140, 80, 45), (196, 160, 100),
                  (225, 200, 140), (150, 148, 145), (215, 212, 205), (165, 65, 35)], np.float64)
_IRIS = np.array([(70, 45, 25), (40, 28, 20), (70, 110, 160), (70, 120, 80), (115, 120, 125),
                  (120, 95, 50)], np.float64)
_FRAME = np.array([(20, 20, 20), (120, 70, 30), (170, 170, 175), (150, 30, 40), (30, 50, 120)],
                  np.float64)


@dataclass(frozen=True)
class FaceParams:
    """Appearance of one identity (pixel units in the 112x112 canonical frame, RGB colours)."""

    skin: tuple[float, float, float]
    face_w: float          # half-width of the face ellipse
    face_h: float          # half-height of the face ellipse
    jaw: float             # 0 = pointed chin .. 1 = square jaw
    face_cy: float
    ear: float             # ear size
    eye_dx: float          # half the distance between eye centres
    eye_y: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    iris_r: float
    brow_gap: float        # brow height above the eye line
    brow_len: float
    brow_thick: float
    brow_tilt: float       # outer end up (>0) or down (<0), pixels
    brow_col: tuple[float, float, float]
    nose_len: float
    nose_w: float
    nose_style: int        # 0 line + nostrils, 1 triangle shade, 2 broad
    mouth_y: float
    mouth_w: float
    lip: float             # lip thickness
    lip_col: tuple[float, float, float]
    hair_style: int        # 0 bald, 1 crop, 2 long, 3 fringe, 4 side part, 5 curly, 6 receding
    hair_col: tuple[float, float, float]
    hairline: float        # y of the hairline at the centre
    hair_vol: float        # how far hair extends beyond the face
    glasses: int           # 0 none, 1 round, 2 rectangular, 3 dark sunglasses
    frame_col: tuple[float, float, float]
    facial_hair: int       # 0 none, 1 moustache, 2 goatee, 3 full beard, 4 stubble
    mole: tuple[float, float] | None  # a small mark at (x, y), or none


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _mix(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, float, float]:
    """A colour between two neighbouring palette entries, jittered."""
    t = rng.uniform(0, len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    c = palette[i] * (1 - (t - i)) + palette[i + 1] * (t - i) + rng.normal(0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def _pick(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, float, float]:
    c = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def identity_params(identity: int, *, seed: int = 0) -> FaceParams:
    """The appearance of ``identity`` (an int >= 0) under ``seed``; independent of any other identity."""
    r = _rng(seed, identity, 0x1D)
    skin = _mix(_SKIN, r, 8.0)
    hair_col = _pick(_HAIR, r, 14.0)
    face_w = r.uniform(34, 45)
    face_h = r.uniform(48, 60)
    brow_col = tuple(float(v) for v in np.clip(np.array(hair_col) * r.uniform(0.6, 1.0), 0, 255))
    lip = np.array(skin) * np.array([0.92, 0.62, 0.6]) + r.normal(0, 8, 3)
    style = int(r.choice(7, p=[0.08, 0.24, 0.2, 0.14, 0.14, 0.1, 0.1]))
    glasses = int(r.choice(4, p=[0.7, 0.12, 0.12, 0.06]))
    facial_hair = int(r.choice(5, p=[0.6, 0.1, 0.08, 0.12, 0.1]))
    mole = (float(r.uniform(30, 82)), float(r.uniform(55, 98))) if r.random() < 0.25 else None
    return FaceParams(
        skin=skin, face_w=face_w, face_h=face_h, jaw=float(r.uniform(0, 1)),
        face_cy=float(r.uniform(58, 64)), ear=float(r.uniform(6, 11)),
        eye_dx=float(r.uniform(14.5, 20.5)), eye_y=float(r.uniform(48, 55)),
        eye_w=float(r.uniform(5.0, 8.5)), eye_h=float(r.uniform(2.4, 4.2)),
        iris=_pick(_IRIS, r, 12.0), iris_r=float(r.uniform(1.8, 3.0)),
        brow_gap=float(r.uniform(6, 11)), brow_len=float(r.uniform(9, 15)),
        brow_thick=float(r.uniform(1.2, 3.6)), brow_tilt=float(r.uniform(-3, 3)), brow_col=brow_col,
        nose_len=float(r.uniform(12, 22)), nose_w=float(r.uniform(5, 11)),
        nose_style=int(r.integers(3)), mouth_y=float(r.uniform(86, 97)),
        mouth_w=float(r.uniform(9, 17)), lip=float(r.uniform(1.5, 4.5)),
        lip_col=tuple(float(v) for v in np.clip(lip, 0, 255)),
        hair_style=style, hair_col=hair_col, hairline=float(r.uniform(14, 30)),
        hair_vol=float(r.uniform(3, 12)), glasses=glasses, frame_col=_pick(_FRAME, r, 10.0),
        facial_hair=facial_hair, mole=mole,
    )


# --- drawing helpers (float geometry -> cv2 fixed point) ---------------------------------------

def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ellipse(img, cx, cy, ax, ay, col, *, angle=0.0, a0=0, a1=360, thick=-1):
    cv2.ellipse(img, _pt(cx, cy), _pt(max(ax, 0.5), max(ay, 0.5)), angle, a0, a1, col,
                thick if thick < 0 else max(1, int(round(thick))), cv2.LINE_AA, _SHIFT)


def _poly(img, pts, col):
    p = np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)
    cv2.fillPoly(img, [p], col, cv2.LINE_AA, _SHIFT)


def _line(img, x0, y0, x1, y1, col, thick):
    cv2.line(img, _pt(x0, y0), _pt(x1, y1), col, max(1, int(round(thick))), cv2.LINE_AA, _SHIFT)


def _polyline(img, pts, col, thick, closed=False):
    p = np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)
    cv2.polylines(img, [p], closed, col, max(1, int(round(thick))), cv2.LINE_AA, _SHIFT)


def _shade(col, f):
    return tuple(float(min(255.0, max(0.0, c * f))) for c in col)


# --- one chip -----------------------------------------------------------------------------------

def _draw_face(p: FaceParams, r: np.random.Generator) -> np.ndarray:
    """Draw identity ``p`` with per-image pose/expression from ``r``; (112, 112, 3) uint8."""
    yaw = r.normal(0, 0.35)          # -1..1 turns the inner features sideways
    pitch = r.normal(0, 0.3)
    smile = r.uniform(-0.4, 1.0)
    open_m = r.uniform(0, 5) if r.random() < 0.3 else 0.0
    eye_open = 0.15 if r.random() < 0.08 else r.uniform(0.6, 1.15)
    brow_up = r.normal(0, 1.2)
    fx, fy = 6.0 * yaw, 3.0 * pitch  # inner-feature parallax
    cx = 56.0 + 1.5 * yaw

    img = np.empty((SIZE, SIZE, 3), np.uint8)
    bg0 = r.uniform(30, 230, 3)
    bg1 = np.clip(bg0 + r.normal(0, 40, 3), 0, 255)
    ramp = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    img[:] = (bg0 * (1 - ramp) + bg1 * ramp).astype(np.uint8)

    skin = p.skin
    dark_skin = _shade(skin, 0.8)
    hair = p.hair_col
    cy, fw, fh = p.face_cy, p.face_w, p.face_h
    top = cy - fh

    # Behind the head: long hair and shoulders (clothing colour is per image: no identity cue).
    if p.hair_style == 2:
        _poly(img, [(cx - fw - p.hair_vol, top + 20), (cx + fw + p.hair_vol, top + 20),
                    (cx + fw + p.hair_vol + 4, 118), (cx - fw - p.hair_vol - 4, 118)], hair)
    shirt = tuple(float(v) for v in r.uniform(20, 235, 3))
    _ellipse(img, cx, 132, 58, 26, shirt)
    _poly(img, [(cx - 15, cy + fh - 18), (cx + 15, cy + fh - 18), (cx + 17, 112), (cx - 17, 112)],
          dark_skin)

    # Ears: the far ear hides as the head turns.
    for side in (-1, 1):
        vis = 1.0 - 0.6 * max(0.0, side * -yaw)
        _ellipse(img, cx + side * (fw - 1), p.eye_y + 6 + fy * 0.3, p.ear * 0.55 * vis, p.ear,
                 dark_skin)

    # Face: upper ellipse plus a jaw polygon whose width sets the chin shape.
    _ellipse(img, cx, cy, fw, fh, skin)
    jw = fw * (0.45 + 0.45 * p.jaw)
    _poly(img, [(cx - fw * 0.98, cy + 4), (cx + fw * 0.98, cy + 4), (cx + jw, cy + fh * 0.9),
                (cx - jw, cy + fh * 0.9)], skin)

    # Facial hair under the features.
    if p.facial_hair == 3:
        _poly(img, [(cx - fw * 0.95, cy + 6), (cx + fw * 0.95, cy + 6), (cx + jw, cy + fh * 0.95),
                    (cx, cy + fh + 3), (cx - jw, cy + fh * 0.95)], _shade(hair, 0.95))
        _ellipse(img, cx + fx, p.mouth_y + fy, p.mouth_w + 2, p.lip + 3, skin)
    elif p.facial_hair == 2:
        _ellipse(img, cx + fx, p.mouth_y + 9 + fy, p.mouth_w * 0.55, 7, _shade(hair, 0.95))
    elif p.facial_hair == 4:
        stub = tuple(0.7 * s + 0.3 * h for s, h in zip(skin, hair))
        _poly(img, [(cx - fw * 0.9, cy + 14), (cx + fw * 0.9, cy + 14), (cx + jw, cy + fh * 0.9),
                    (cx - jw, cy + fh * 0.9)], stub)

    # Hair on top.
    hl = p.hairline + fy * 0.3
    v = p.hair_vol
    if p.hair_style != 0:
        _ellipse(img, cx, cy - 2, fw + v * 0.6, fh + v * 0.5, hair, a0=180, a1=360)
        # skin below the hairline: the forehead
        fore = hl + (8 if p.hair_style == 6 else 0)
        _ellipse(img, cx + fx * 0.3, cy + 2, fw * (0.9 if p.hair_style != 6 else 0.95),
                 max(cy + 2 - fore, 4), skin, a0=180, a1=360)
        if p.hair_style == 3:  # fringe
            _poly(img, [(cx - fw * 0.8, hl - 2), (cx + fw * 0.8, hl - 2),
                        (cx + fw * 0.7, hl + 10), (cx - fw * 0.7, hl + 13)], hair)
        elif p.hair_style == 4:  # side part sweep
            _poly(img, [(cx - fw * 0.9, hl - 4), (cx + fw * 0.2, hl - 6), (cx - fw * 0.75, hl + 12)],
                  hair)
        elif p.hair_style == 5:  # curls along the outline
            for a in np.linspace(np.pi * 1.05, np.pi * 1.95, 9):
                _ellipse(img, cx + (fw + v * 0.3) * np.cos(a), cy - 2 + (fh * 0.95) * np.sin(a),
                         4 + v * 0.3, 4 + v * 0.3, _shade(hair, 1.1))
    else:  # bald: a highlight
        _ellipse(img, cx - 8, top + 10, 10, 5, _shade(skin, 1.12))

    # Eyes.
    ey = p.eye_y + fy
    eh = p.eye_h * eye_open
    look = r.normal(0, 0.8)
    for side in (-1, 1):
        ex = cx + side * p.eye_dx + fx * (1.0 + 0.25 * side * np.sign(yaw))
        ew = p.eye_w * (1.0 - 0.25 * max(0.0, side * -yaw))
        _ellipse(img, ex, ey, ew, max(eh, 0.6), (245, 245, 240))
        if eye_open > 0.3:
            _ellipse(img, ex + look, ey, p.iris_r, min(p.iris_r, eh), p.iris)
            _ellipse(img, ex + look, ey, p.iris_r * 0.45, min(p.iris_r * 0.45, eh), (15, 15, 15))
        _ellipse(img, ex, ey, ew, max(eh, 0.6), _shade(skin, 0.55), a0=180, a1=360, thick=1)
        # brow: inner end near the nose, outer end tilted
        by = ey - p.brow_gap - brow_up
        inner, outer = ex - side * p.brow_len * 0.45, ex + side * p.brow_len * 0.6
        _line(img, inner, by, outer, by - p.brow_tilt, p.brow_col, p.brow_thick)

    # Nose.
    nx, ntop = cx + fx * 1.3, p.eye_y + 4 + fy
    nbot = ntop + p.nose_len * (1 - 0.15 * pitch)
    ncol = _shade(skin, 0.72)
    if p.nose_style == 1:
        _poly(img, [(nx, ntop), (nx + p.nose_w * 0.5, nbot), (nx - p.nose_w * 0.5, nbot)],
              _shade(skin, 0.88))
    else:
        _line(img, nx + 1.5, ntop, nx + 2.5, nbot - 2, ncol, 1)
    w = p.nose_w * (1.3 if p.nose_style == 2 else 1.0)
    _ellipse(img, nx - w * 0.35, nbot, w * 0.22, 1.4, _shade(skin, 0.5))
    _ellipse(img, nx + w * 0.35, nbot, w * 0.22, 1.4, _shade(skin, 0.5))

    # Mouth: smile bends the corners; an open mouth shows a dark gap.
    mx, my = cx + fx * 1.1, p.mouth_y + fy
    mw = p.mouth_w * (1 + 0.12 * smile)
    curve = 3.0 * smile
    xs = np.linspace(-mw, mw, 9)
    upper = np.stack([mx + xs, my - curve * (1 - (xs / mw) ** 2) + curve - p.lip * 0.5], 1)
    lower = np.stack([mx + xs, my - curve * (1 - (xs / mw) ** 2) + curve + p.lip * 0.6 + open_m
                      * (1 - (xs / mw) ** 2)], 1)
    _poly(img, np.concatenate([upper, lower[::-1]]), p.lip_col)
    if open_m > 0.5:
        mid = (upper + lower) / 2
        _ellipse(img, mx, mid[4, 1], mw * 0.6, open_m * 0.45, (40, 15, 20))
    _polyline(img, (upper + lower) / 2, _shade(p.lip_col, 0.6), 1)
    if p.facial_hair == 1:
        _poly(img, [(mx - mw - 2, my - p.lip * 0.5), (mx + mw + 2, my - p.lip * 0.5),
                    (mx + mw * 0.8, my - p.lip - 5), (mx - mw * 0.8, my - p.lip - 5)],
              _shade(hair, 0.9))

    if p.mole is not None:
        _ellipse(img, p.mole[0] + fx, p.mole[1] + fy, 1.3, 1.3, (70, 45, 35))

    # Glasses over the eyes.
    if p.glasses:
        fc = p.frame_col
        ex0, ex1 = cx - p.eye_dx + fx, cx + p.eye_dx + fx
        gw, gh = p.eye_w + 4, p.eye_h + 4.5
        for ex in (ex0, ex1):
            if p.glasses == 1:
                _ellipse(img, ex, ey, gw, gh, fc, thick=1.5)
            else:
                rect = [(ex - gw, ey - gh), (ex + gw, ey - gh), (ex + gw, ey + gh), (ex - gw, ey + gh)]
                if p.glasses == 3:
                    _poly(img, rect, (25, 25, 30))
                _polyline(img, rect, fc, 2, closed=True)
        _line(img, ex0 + gw, ey - 1, ex1 - gw, ey - 1, fc, 1.5)
    return img


def _nuisance(img: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Camera and scene variation on a drawn chip: pose warp, light, occlusion, blur, noise, JPEG."""
    ang = r.normal(0, 7)
    scale = r.uniform(0.88, 1.1)
    m = cv2.getRotationMatrix2D((56.0, 60.0), ang, scale)
    m[:, 2] += r.normal(0, 3, 2)
    img = cv2.warpAffine(img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT101)

    # Lighting: a linear gradient in a random direction, global gain and a colour cast.
    theta = r.uniform(0, 2 * np.pi)
    amp = r.uniform(0, 0.45)
    light = np.add.outer(np.float32(np.sin(theta) * amp) * _RAMP,
                         np.float32(np.cos(theta) * amp) * _RAMP)
    light += 1
    gain = (r.uniform(0.65, 1.25) * (1 + r.normal(0, 0.06, 3))).astype(np.float32)
    x = cv2.multiply(img, cv2.merge([light * gain[0], light * gain[1], light * gain[2]]),
                     dtype=cv2.CV_32F)

    # Occlusion: a bar, a hand-like blob or a mask over part of the face.
    u = r.random()
    if u < 0.25:
        col = tuple(float(v) for v in r.uniform(0, 255, 3))
        kind = r.integers(3)
        if kind == 0:  # horizontal bar (hat brim, scarf)
            y0 = r.uniform(0, 100)
            cv2.rectangle(x, (0, int(y0)), (SIZE, int(y0 + r.uniform(6, 18))), col, -1)
        elif kind == 1:  # blob from a side
            cv2.circle(x, (int(r.choice([0, SIZE])), int(r.uniform(30, 100))),
                       int(r.uniform(14, 30)), col, -1, cv2.LINE_AA)
        else:  # lower-face mask
            cv2.ellipse(x, (int(56 + r.normal(0, 3)), 100), (38, 22), 0, 180, 360, col, -1,
                        cv2.LINE_AA)
            cv2.rectangle(x, (18, 100), (94, SIZE), col, -1)

    sigma = r.uniform(0, 1.4)
    if sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    oy, ox = r.integers(0, _NOISE.shape[0] - SIZE, 2)
    x = cv2.scaleAdd(_NOISE[oy:oy + SIZE, ox:ox + SIZE], float(r.uniform(0, 9)), x)
    out = np.clip(x, 0, 255, out=x).astype(np.uint8)
    q = int(r.integers(35, 96))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
    if ok:  # JPEG works on whatever channel order it is given; round-trip keeps RGB
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def _check_ints(identities: Sequence[int], n_images: int, seed: int) -> list[int]:
    try:
        ids = [int(i) for i in identities]
    except (TypeError, ValueError):
        raise FacekdError("identities must be a sequence of non-negative integers") from None
    if any(i < 0 for i in ids):
        raise FacekdError("identity numbers must be >= 0")
    if len(set(ids)) != len(ids):
        raise FacekdError("identity numbers must be unique")
    if int(n_images) < 1:
        raise FacekdError(f"n_images must be >= 1, got {n_images}")
    if int(seed) < 0:
        raise FacekdError(f"seed must be >= 0, got {seed}")
    return ids


def render_identity(identity: int, n_images: int, *, seed: int = 0, image_offset: int = 0) -> np.ndarray:
    """Render images ``image_offset .. image_offset + n_images - 1`` of ``identity``.

    Returns ``(n_images, 112, 112, 3)`` uint8 RGB. Image ``j`` of an identity is the same whatever
    ``image_offset``/``n_images`` select it, so held-out images are ``image_offset >= n_train``.
    """
    (ident,) = _check_ints([identity], n_images, seed)
    if int(image_offset) < 0:
        raise FacekdError(f"image_offset must be >= 0, got {image_offset}")
    params = identity_params(ident, seed=seed)
    out = np.empty((int(n_images), SIZE, SIZE, 3), np.uint8)
    for j in range(int(n_images)):
        r = _rng(seed, ident, 0x1A, int(image_offset) + j)
        out[j] = _nuisance(_draw_face(params, r), r)
    return out


def render_dataset(identities: Sequence[int], n_images: int, *, seed: int = 0,
                   image_offset: int = 0, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_images`` chips of every identity.

    Returns ``(chips, labels)``: ``(len(identities) * n_images, 112, 112, 3)`` uint8 RGB, grouped by
    identity in the given order, and ``(len(identities) * n_images,)`` int64 identity numbers.
    """
    ids = _check_ints(identities, n_images, seed)
    n = int(n_images)
    chips = np.empty((len(ids) * n, SIZE, SIZE, 3), np.uint8)
    from facekd.progress import tqdm

    show = (len(chips) >= _PROGRESS_MIN_CHIPS) if progress is None else progress
    for i, ident in enumerate(tqdm(ids, desc="render synthetic faces", unit="id", disable=not show,
                                   leave=False)):
        chips[i * n:(i + 1) * n] = render_identity(ident, n, seed=seed, image_offset=image_offset)
    labels = np.repeat(np.asarray(ids, np.int64), n)
    return chips, labels


def write_tree(out_dir: str | os.PathLike, identities: Sequence[int], n_images: int, *,
               seed: int = 0, fmt: str = "png") -> Path:
    """Write a folder-per-identity tree ``out_dir/<identity>/<image:04d>.<fmt>`` and return its path.

    The tree is built in a temporary sibling directory and renamed into place, so ``out_dir`` is
    either absent/complete or left as it was. ``out_dir`` must not exist or be an empty directory.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise FacekdError(f"unsupported image format {fmt!r}; use png or jpg")
    ids = _check_ints(identities, n_images, seed)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FacekdError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the tree is ordinary data
        from facekd.progress import tqdm

        for ident in tqdm(ids, desc="write synthetic faces", unit="id",
                          disable=len(ids) * int(n_images) < _PROGRESS_MIN_CHIPS, leave=False):
            d = tmp / str(ident)
            d.mkdir()
            for j, chip in enumerate(render_identity(ident, n_images, seed=seed)):
                if not cv2.imwrite(str(d / f"{j:04d}.{fmt}"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR)):
                    raise FacekdError(f"could not write an image under {out}")
        os.replace(tmp, out)  # an empty target directory is replaced atomically on POSIX
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
