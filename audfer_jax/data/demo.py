"""The synthetic demo set: FACS-driven cartoon face clips in the DFEW layout.

Every clip is SYNTHETIC: a parametric face drawn with NumPy (skin ellipse, hair,
ears, brows, eyes with lids and irises, nose, mouth with lips and teeth,
cheeks, wrinkles), whose appearance is driven frame by frame by FACS Action
Unit (AU) intensities 0-5. Nothing is downloaded; it exists so that the whole
library (readers, AU labels, input pipeline, training, evaluation) runs end to
end on a laptop. Accuracy on it says nothing about DFEW.

Expressions are FACS prototypes in the EMFACS style (Friesen & Ekman, EMFACS-7,
1983, as tabulated in Lucey et al., "The Extended Cohn-Kanade Dataset (CK+)",
CVPR Workshops 2010, emotion criteria table): happy 6+12; sad 1+4+15; surprise
1+2+5+26; fear 1+2+4+5+7+20+26; angry 4+5+7+23; disgust 9 (or 10)+15+16;
neutral none. Each clip plays its prototype with an onset-apex-offset envelope;
prototype AUs are sometimes missing, intensities vary, extra AUs, blinks (AU45)
and speech-like mouth movement (AU25/26) are added, and the head rolls,
translates, scales and turns slightly, so the task is learnable but not
trivial.

The AU effects are deliberately exaggerated relative to real faces (brows move
by ~0.2 face half-widths, AU5 more than doubles the eye opening, AU26 opens the
mouth by ~0.3, AU12/AU15 lift/drop the mouth corners by ~0.3/0.2, AU10/AU16
raise/drop the upper/lower lip by ~0.18/0.14 and bare the teeth, AU20
stretches the mouth by ~0.7 of its width), prototype AUs are missing with
probability 0.05 at strength 0.8-1, the apex covers most of the clip, and
backgrounds (muted colours) and pose vary moderately: at 48 x 48 the face's
brows, lids and mouth span only a few pixels, and with subtler effects the tiny
demo model stayed at chance level within its few-minute budget
(configs/demo.py). Disgust and fear, which share AUs with sad and surprise,
got the largest effects (AU9/10/16, AU20) so that they are told apart with a
margin rather than by a few pixels (README "Two commands" gives the demo's
figures over seeds and XLA:CPU thread layouts).

Layout written (the DFEW release, ../shared/spec/datasets.md section 1):

    OUT/DFEW/Clip/clip_224x224/<id>/1.jpg .. <T>.jpg   frames (unpadded names, so
                                                       lexicographic order is wrong)
    OUT/DFEW/EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv
    OUT/DFEW/OpenFace/<id>.csv                         OpenFace-2.0-style AU CSVs
    OUT/DFEW/demo_info.json                            the summary

- Frames are `image_size` x `image_size` (default 112, not 224, although the
  folder keeps DFEW's name): the models resize anyway, and it keeps the set small.
- Clip lengths: mostly 16-40 frames, ~3 % of clips 11-15 (DFEW's minimum is 11).
- Classes: DFEW's whole-set class distribution (datasets.md section 1: happy
  20.9 %, sad 16.2 %, neutral 22.8 %, angry 18.6 %, surprise 12.6 %, disgust
  1.2 %, fear 7.7 %), but every class has at least 5 % of the clips (and at
  least 5, so that every test fold holds every class; `class_counts`): with
  1,500 clips disgust has 75 (15 per test fold) instead of 18.
- Splits: 5 folds, stratified per class; test sets are disjoint and cover all
  clips; train = the other four folds. CSV header `video_name,label`, ids
  written unpadded (`17`), official labels 1..7 (1 Happy, 2 Sad, 3 Neutral,
  4 Angry, 5 Surprise, 6 Disgust, 7 Fear).
- OpenFace CSVs: header names after a comma carry a leading space, columns
  `frame, face_id, timestamp, confidence, success, AUxx_r (17), AUxx_c (18)`;
  frame k is the k-th file in LEXICOGRAPHIC order (as OpenFace reads a folder,
  so with 1.jpg..T.jpg frame 2 is 10.jpg). `AUxx_c` is the true intensity plus
  noise thresholded at 1 (FACS trace level); ~3 % of rows have low confidence
  (< 0.8), ~1 % failed (`success` 0) and ~1 % of clips failed throughout.
  AU16 drives the drawing (disgust) but, as in OpenFace, is not written.

Deterministic given `seed` (each clip draws from its own
`numpy.random.SeedSequence([seed, index])`, so the worker count does not
matter). CLI: `audfer-jax demo --out DIR [--num_clips N --seed S --size 112]`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import re
import tempfile
import time
from typing import Optional

import cv2
import numpy as np

from audfer_jax import paths
from audfer_jax.au import AU_NAMES
from audfer_jax.classes import DFEW_CLASSES

# Whole-set DFEW class counts, canonical order (datasets.md section 1).
DFEW_CLASS_COUNTS = (2445, 1894, 2669, 2173, 1469, 145, 902)
NUM_FOLDS = 5
MIN_CLIPS_PER_CLASS = NUM_FOLDS
# Smallest share of any class (`class_counts`): DFEW's disgust (1.2 %) would
# leave the demo's test fold a handful of disgust clips.
MIN_CLASS_FRACTION = 0.05
# The 18 OpenFace AUs plus AU16, which the disgust prototype needs but OpenFace
# 2.0 does not output.
RENDER_AUS = AU_NAMES + ("AU16",)
_IDX = {name: i for i, name in enumerate(RENDER_AUS)}
# OpenFace 2.0 writes an intensity for every presence AU except AU28.
INTENSITY_AUS = tuple(a for a in AU_NAMES if a != "AU28")
# EMFACS-style prototypes (module doc). Disgust uses AU9 or AU10 (either).
PROTOTYPES = {
    "happy": ("AU06", "AU12"),
    "sad": ("AU01", "AU04", "AU15"),
    "neutral": (),
    "angry": ("AU04", "AU05", "AU07", "AU23"),
    "surprise": ("AU01", "AU02", "AU05", "AU26"),
    "disgust": ("AU09", "AU15", "AU16"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),
}
FPS = 30.0             # OpenFace's default timestamp rate for image sequences.
SHORT_FRACTION = 0.03  # clips with 11-15 frames.
MIN_FRAMES, MAX_FRAMES, MIN_SHORT = 16, 40, 11
PRESENCE_THRESHOLD = 1.0  # FACS intensity A (trace) = 1 on OpenFace's 0-5 scale.


# --------------------------------------------------------------------------
# Plans: what each clip shows (cheap, made in the parent process)
# --------------------------------------------------------------------------

def class_counts(num_clips: int) -> list[int]:
    """Clips per class: DFEW's proportions, with every class floored.

    Each class gets at least `max(5, ceil(MIN_CLASS_FRACTION * num_clips))`
    clips; the rest are shared among the other classes in DFEW's whole-set
    proportions (largest remainder). Floored classes are found by water
    filling: a class whose proportional share falls below the floor gets the
    floor and leaves the sharing, until every remaining share is above it.
    With 1,500 clips only disgust (DFEW 1.2 %) is floored, at 75 clips (5 %):
    the classes keep DFEW's order of frequency, but the rarest one has 15 clips
    in each test fold instead of 4, so that one clip moves UAR by ~1 point
    rather than ~3.6 and the model sees enough of it to learn it at all.

    Raises:
        ValueError: when `num_clips` < 35 (5 clips for each of 7 classes).
    """
    k = len(DFEW_CLASS_COUNTS)
    if num_clips < MIN_CLIPS_PER_CLASS * k:
        raise ValueError(f"num_clips must be >= {MIN_CLIPS_PER_CLASS * k} so that every "
                         f"test fold holds every class, got {num_clips}")
    floor = max(MIN_CLIPS_PER_CLASS, math.ceil(MIN_CLASS_FRACTION * num_clips))
    floored: set[int] = set()
    while True:
        free = [i for i in range(k) if i not in floored]
        rest = num_clips - floor * len(floored)
        total = sum(DFEW_CLASS_COUNTS[i] for i in free)
        exact = {i: rest * DFEW_CLASS_COUNTS[i] / total for i in free}
        low = [i for i in free if exact[i] < floor]
        if not low:
            break
        floored.update(low)
    counts = [floor] * k
    for i in free:
        counts[i] = int(exact[i])
    order = sorted(free, key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[:num_clips - sum(counts)]:
        counts[i] += 1
    return counts


def plan_dataset(num_clips: int, seed: int) -> dict:
    """Labels, folds and lengths of every clip.

    Returns:
        dict of `labels [N] int` (canonical), `folds [N] int` (1..5, the test
        fold of each clip), `lengths [N] int` (frames), `ids` (`%05d` str).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    counts = class_counts(num_clips)
    labels = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    labels = labels[rng.permutation(num_clips)]
    folds = np.zeros(num_clips, np.int64)
    for c in range(len(counts)):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        start = rng.integers(NUM_FOLDS)
        folds[members] = (np.arange(len(members)) + start) % NUM_FOLDS + 1
    lengths = rng.integers(MIN_FRAMES, MAX_FRAMES + 1, num_clips)
    short = rng.random(num_clips) < SHORT_FRACTION
    if not short.any() and num_clips >= 10:
        short[rng.integers(num_clips)] = True
    lengths[short] = rng.integers(MIN_SHORT, MIN_FRAMES, short.sum())
    ids = [f"{i + 1:05d}" for i in range(num_clips)]
    return {"labels": labels, "folds": folds, "lengths": lengths, "ids": ids}


def _envelope(t: np.ndarray, start: float, onset: float, apex: float,
              offset: float) -> np.ndarray:
    """Onset-apex-offset envelope in [0, 1] over frame times `t` (smoothstep ramps)."""
    up = np.clip((t - start) / max(onset, 1e-3), 0, 1)
    down = np.clip((t - (start + onset + apex)) / max(offset, 1e-3), 0, 1)
    e = up * (1 - down)
    return e * e * (3 - 2 * e)


def au_intensities(rng: np.random.Generator, label: int, num_frames: int) -> np.ndarray:
    """Per-frame FACS intensities of one clip.

    Returns:
        `[num_frames, 19] float32` in [0, 5], columns `RENDER_AUS`.
    """
    t = np.arange(num_frames, dtype=np.float32)
    T = float(num_frames)
    out = np.zeros((num_frames, len(RENDER_AUS)), np.float32)
    proto = list(PROTOTYPES[DFEW_CLASSES[label]])
    if DFEW_CLASSES[label] == "disgust" and rng.random() < 0.5:
        proto[0] = "AU10"
    # Missing prototype AUs (never all of them).
    kept = [a for a in proto if rng.random() > 0.05]
    if proto and not kept:
        kept = [proto[rng.integers(len(proto))]]
    strength = rng.uniform(0.8, 1.0)
    start = rng.uniform(-0.3, 0.1) * T
    onset, apex, offset = (rng.uniform(0.1, 0.25) * T, rng.uniform(0.5, 0.9) * T,
                           rng.uniform(0.1, 0.3) * T)
    for a in kept:
        jitter = rng.normal(0, 1.5, 2)
        env = _envelope(t, start + jitter[0], onset, apex + jitter[1], offset)
        out[:, _IDX[a]] = np.maximum(out[:, _IDX[a]],
                                     5 * strength * rng.uniform(0.75, 1.0) * env)
    # Extra, unrelated AUs at low intensity.
    extras = [a for a in RENDER_AUS if a not in ("AU45",)]
    for _ in range(rng.binomial(2, 0.2)):
        a = extras[rng.integers(len(extras))]
        env = _envelope(t, rng.uniform(-0.2, 0.7) * T, rng.uniform(0.1, 0.3) * T,
                        rng.uniform(0.1, 0.5) * T, rng.uniform(0.1, 0.3) * T)
        out[:, _IDX[a]] = np.maximum(out[:, _IDX[a]], rng.uniform(1.0, 3.0) * env)
    # Speech-like lip parting and jaw movement in some clips.
    if rng.random() < 0.25:
        phase = np.sin(2 * np.pi * (t / rng.uniform(5, 12)) + rng.uniform(0, 6.3))
        talk = np.clip(phase, 0, None) * rng.uniform(1.0, 2.5)
        out[:, _IDX["AU25"]] = np.maximum(out[:, _IDX["AU25"]], talk * 1.5)
        out[:, _IDX["AU26"]] = np.maximum(out[:, _IDX["AU26"]], talk * 0.6)
    # Blinks: 2-4 frames each, at any time.
    for _ in range(rng.poisson(0.04 * num_frames)):
        c = rng.uniform(0, T)
        out[:, _IDX["AU45"]] = np.maximum(out[:, _IDX["AU45"]],
                                          5 * np.clip(1 - np.abs(t - c) / 1.6, 0, 1))
    return np.clip(out, 0, 5)


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------

def _b(v) -> np.ndarray:
    """[T] -> [T, 1, 1] float32 for broadcasting over frames."""
    return np.asarray(v, np.float32).reshape(-1, 1, 1)


class _Canvas:
    """Frames `[3, T, S, S] float32` (channel-first) and face coordinates.

    Face coordinates: x right, y down, unit = half the face width; frame t maps
    them to pixels by scale `px[t]` and centre `(cx[t], cy[t])`. The transform
    is axis-aligned, so the coordinate grids are separable (`X [T, 1, S]`,
    `Y [T, S, 1]`) and every shape costs one broadcast per pixel; head roll is
    applied afterwards to whole frames (`_roll`).
    """

    def __init__(self, size: int, cx, cy, px, background: np.ndarray):
        self.size = size
        self.cx, self.cy, self.px = (np.asarray(v, np.float32) for v in (cx, cy, px))
        grid = np.arange(size, dtype=np.float32) + 0.5
        self.X = (grid[None, None, :] - _b(self.cx)) / _b(self.px)
        self.Y = (grid[None, :, None] - _b(self.cy)) / _b(self.px)
        # Channel-first: NumPy's inner loops then run along image rows instead
        # of over 3 channels, about 4x faster for the blends.
        bg = np.moveaxis(np.asarray(background, np.float32), -1, 0)
        self.img = np.repeat(bg[:, None], len(self.cx), axis=1)

    def window(self, x0, y0, x1, y1):
        """Pixel (rows, cols) slices covering face-unit box [x0,x1]x[y0,y1] in all frames."""
        cols = (self.cx + self.px * np.minimum(x0, x1), self.cx + self.px * np.maximum(x0, x1))
        rows = (self.cy + self.px * np.minimum(y0, y1), self.cy + self.px * np.maximum(y0, y1))
        c0, c1 = int(np.floor(np.min(cols[0]))) - 1, int(np.ceil(np.max(cols[1]))) + 2
        r0, r1 = int(np.floor(np.min(rows[0]))) - 1, int(np.ceil(np.max(rows[1]))) + 2
        clamp = lambda v: min(max(v, 0), self.size)  # noqa: E731
        return slice(clamp(r0), clamp(r1)), slice(clamp(c0), clamp(c1))

    def coords(self, win):
        """`X [T, 1, w]`, `Y [T, h, 1]` face coordinates and `px [T, 1, 1]` of a window."""
        return self.X[:, :, win[1]], self.Y[:, win[0], :], _b(self.px)

    def paint(self, win, alpha: np.ndarray, color) -> None:
        """Blends `color` ([3] or [T, 3], 0-255) with coverage `alpha` [T, h, w]."""
        if win[0].start >= win[0].stop or win[1].start >= win[1].stop:
            return
        col = np.asarray(color, np.float32)
        for c in range(3):
            sub = self.img[c, :, win[0], win[1]]
            value = col[:, c].reshape(-1, 1, 1) if col.ndim == 2 else col[c]
            sub += alpha * (value - sub)

    def frames(self) -> np.ndarray:
        """`[T, S, S, 3] float32` RGB frames."""
        return np.moveaxis(self.img, 0, -1)


def _active(weight: np.ndarray) -> bool:
    """Whether an AU-driven detail is visible in any frame (else it is skipped)."""
    return float(np.max(weight)) > 0.02


def _cover(d_px: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Coverage from a signed distance in pixels (negative inside), AA over `soft` px."""
    return np.clip(0.5 - d_px / soft, 0.0, 1.0)


def _ellipse(cv: _Canvas, cx, cy, a, b, soft: float = 1.0, margin: float = 0.0):
    """(window, coverage [T,h,w]) of an axis-aligned ellipse in face units."""
    cx, cy, a, b = (np.asarray(v, np.float32) for v in (cx, cy, a, b))
    b = np.maximum(b, 1e-3)
    a = np.maximum(a, 1e-3)
    win = cv.window(cx - a - margin, cy - b - margin, cx + a + margin, cy + b + margin)
    X, Y, p = cv.coords(win)
    r = np.sqrt(((X - _b(cx)) / _b(a)) ** 2 + ((Y - _b(cy)) / _b(b)) ** 2)
    d = (r - 1) * _b(np.minimum(a, b)) * p
    return win, _cover(d, soft)


def _capsule(cv: _Canvas, x0, y0, x1, y1, radius, soft: float = 1.0):
    """(window, coverage) of a thick line segment (face units)."""
    x0, y0, x1, y1, radius = (np.asarray(v, np.float32) for v in (x0, y0, x1, y1, radius))
    win = cv.window(np.minimum(x0, x1) - radius, np.minimum(y0, y1) - radius,
                    np.maximum(x0, x1) + radius, np.maximum(y0, y1) + radius)
    X, Y, p = cv.coords(win)
    ax, ay = _b(x0), _b(y0)
    bx, by = _b(x1) - ax, _b(y1) - ay
    h = np.clip(((X - ax) * bx + (Y - ay) * by) / np.maximum(bx * bx + by * by, 1e-8), 0, 1)
    d = (np.sqrt((X - ax - h * bx) ** 2 + (Y - ay - h * by) ** 2) - _b(radius)) * p
    return win, _cover(d, soft)


def _identity(rng: np.random.Generator) -> dict:
    """Per-clip face geometry and colours (identity variation)."""
    tone = rng.uniform()
    skin = (1 - tone) * np.array([236, 201, 178]) + tone * np.array([112, 76, 56])
    skin = skin * rng.uniform(0.93, 1.07, 3)
    hair = np.array([[30, 22, 18], [70, 45, 25], [120, 85, 50], [180, 150, 100],
                     [90, 90, 95]])[rng.integers(5)] * rng.uniform(0.8, 1.2)
    iris = np.array([[70, 45, 25], [60, 90, 140], [70, 100, 60], [35, 25, 20]])[
        rng.integers(4)]
    ar = rng.uniform(1.2, 1.42)
    return {
        "skin": skin, "hair": hair, "iris": iris,
        "lips": skin * np.array([0.82, 0.52, 0.52]) * rng.uniform(0.9, 1.1),
        "brow": hair * 0.8,
        "shirt": rng.uniform(20, 230, 3),
        "bg0": rng.uniform(80, 180, 3), "bg1": rng.uniform(80, 180, 3),
        "ar": ar, "hairline": -ar * rng.uniform(0.58, 0.74),
        "hair_volume": rng.uniform(0.05, 0.25),
        "ex": rng.uniform(0.36, 0.45), "ey": rng.uniform(-0.3, -0.18),
        "ew": rng.uniform(0.14, 0.19), "eh": rng.uniform(0.06, 0.085),
        "brow_gap": rng.uniform(0.16, 0.2), "brow_r": rng.uniform(0.04, 0.055),
        "ny": rng.uniform(0.2, 0.32), "nw": rng.uniform(0.09, 0.14),
        "my": rng.uniform(0.52, 0.64), "mw": rng.uniform(0.26, 0.36),
        "ul": rng.uniform(0.035, 0.055), "ll": rng.uniform(0.045, 0.07),
        "light": rng.uniform(-0.2, 0.2), "gaze": rng.uniform(-0.025, 0.025, 2),
    }


def render_clip(rng: np.random.Generator, intensities: np.ndarray,
                image_size: int) -> tuple[np.ndarray, tuple]:
    """Draws one clip.

    Args:
        rng: the clip's generator (identity and pose are drawn from it).
        intensities: `[T, 19] float32` FACS intensities 0-5 (`RENDER_AUS`).
        image_size: frame side S in pixels.

    Returns:
        `[T, S, S, 3] float32` RGB frames, values 0-255, before head roll and
        sensor noise; and the pose `(cx, cy, degrees)` for `_roll`.
    """
    a = {name: intensities[:, i] / 5.0 for i, name in enumerate(RENDER_AUS)}
    idn = _identity(rng)
    pose = _draw_pose(rng, intensities.shape[0], image_size)
    cv = _draw_head(idn, pose, a, image_size)
    # Features shift with pseudo-yaw (parallax): nose most, eyes and mouth less.
    _draw_brows(cv, a, idn, pose.yaw)
    _draw_eyes(cv, a, idn, pose.yaw)
    _draw_nose(cv, a, idn, pose.yaw)
    _draw_mouth(cv, a, idn, pose.yaw)
    return cv.frames(), (pose.cx, pose.cy, np.rad2deg(pose.roll))


@dataclasses.dataclass
class _Pose:
    """Per-frame head pose of a clip, each `[T] float32`.

    Attributes:
        cx, cy: face centre in pixels.
        px: pixels per face unit (half the face width).
        roll: head roll in radians (applied to whole frames by `_roll`).
        yaw: pseudo-yaw (features shift sideways by parallax).
    """
    cx: np.ndarray
    cy: np.ndarray
    px: np.ndarray
    roll: np.ndarray
    yaw: np.ndarray


def _draw_pose(rng: np.random.Generator, num_frames: int, image_size: int) -> _Pose:
    """Draws the clip's slowly varying pose (scale, centre, roll, yaw) from `rng`."""
    S = float(image_size)
    t = np.arange(num_frames, dtype=np.float32)

    def wave(amp, period_lo=15, period_hi=60):
        return amp * np.sin(2 * np.pi * t / rng.uniform(period_lo, period_hi)
                            + rng.uniform(0, 6.3)).astype(np.float32)

    # The order of the draws is the demo set's identity: do not reorder.
    px = S * 0.34 * rng.uniform(0.94, 1.04) * (1 + wave(0.03))
    cx = S * (0.5 + rng.uniform(-0.025, 0.025)) + wave(0.01 * S)
    cy = S * (0.5 + rng.uniform(-0.025, 0.025)) + wave(0.01 * S)
    roll = np.deg2rad(rng.uniform(-4, 4) + wave(2.0))
    yaw = rng.uniform(-0.2, 0.2) + wave(0.12)
    return _Pose(cx=cx, cy=cy, px=px, roll=roll, yaw=yaw)


def _draw_head(idn: dict, pose: _Pose, a: dict, image_size: int) -> _Canvas:
    """The clip's canvas with background, shirt, neck, hair, ears, face and fringe.

    Args:
        idn: `_identity` of the clip.
        pose: `_draw_pose` of the clip.
        a: AU name -> `[T]` intensity / 5 (0-1).
        image_size: frame side S in pixels.
    """
    cx, cy, px, yaw = pose.cx, pose.cy, pose.px, pose.yaw
    T = len(cx)
    S = float(image_size)
    # Static layers (gradient, shirt, neck), drawn once at the mean pose.
    v = (np.arange(image_size, dtype=np.float32) / S)[:, None, None]
    bg = idn["bg0"] * (1 - v) + idn["bg1"] * v
    bg = np.broadcast_to(bg, (image_size, image_size, 3)).copy()
    ar = idn["ar"]
    still = _Canvas(image_size, [cx.mean()], [cy.mean()], [px.mean()], bg)
    skin = idn["skin"]
    still.paint(*_ellipse(still, 0, ar + 1.25, 1.9, 0.75), idn["shirt"])
    still.paint(*_capsule(still, 0, ar * 0.4, 0, ar + 0.5, 0.42), skin * 0.85)
    cv = _Canvas(image_size, cx, cy, px, still.frames()[0])
    jaw = 0.1 * a["AU26"]

    # Hair behind the head, ears.
    cv.paint(*_ellipse(cv, 0, -0.2, 1.08 + idn["hair_volume"], ar * 0.9 + idn["hair_volume"]),
             idn["hair"])
    for s in (-1, 1):
        cv.paint(*_ellipse(cv, s * 0.98 + yaw * 0.05, -0.08, 0.13, 0.22), skin * 0.88)
    # Face with a left-right light gradient.
    win, al = _ellipse(cv, 0, jaw * 0.5, np.ones(T), ar + jaw * 0.5)
    X, Y, _ = cv.coords(win)
    shade = 1 + idn["light"] * X - 0.08 * (X * X)
    for c in range(3):
        sub = cv.img[c, :, win[0], win[1]]
        sub += al * (np.float32(skin[c]) * shade - sub)
    # Fringe: hair over the forehead above the hairline.
    p = _b(cv.px)
    fringe = al * np.clip((idn["hairline"] + 0.04 * np.cos(6 * X) - Y) * p + 0.5, 0, 1)
    cv.paint(win, fringe, idn["hair"])
    return cv


def _draw_brows(cv: _Canvas, a: dict, idn: dict, yaw: np.ndarray) -> None:
    """Forehead wrinkles, brows, glabella furrows and cheeks (AU1, AU2, AU4, AU6)."""
    T = len(cv.cx)
    dark = idn["skin"] * 0.72
    fx = 0.07 * yaw
    ex, ey, ew = idn["ex"], idn["ey"], idn["ew"]
    # Forehead wrinkles (AU1/AU2).
    wr = np.maximum(a["AU01"], a["AU02"])
    for k in range(2 if _active(wr) else 0):
        yy = ey - idn["brow_gap"] - 0.12 - 0.07 * k
        win, al = _capsule(cv, fx - 0.3, yy + np.zeros(T), fx + 0.3, yy + np.zeros(T), 0.01)
        cv.paint(win, al * _b(0.7 * wr), dark)
    # Brows (AU1 inner raise, AU2 outer raise, AU4 lower and knit).
    by = ey - idn["brow_gap"]
    for s in (-1, 1):
        ix = fx + s * (ex - ew * 0.9 - 0.1 * a["AU04"])
        iy = by - 0.2 * a["AU01"] + 0.16 * a["AU04"]
        ox = fx + s * (ex + ew * 1.15)
        oy = by + 0.02 - 0.2 * a["AU02"] + 0.04 * a["AU04"]
        mx, my = (ix + ox) / 2, (iy + oy) / 2 - 0.03 - 0.03 * a["AU02"]
        for p0, p1 in (((ix, iy), (mx, my)), ((mx, my), (ox, oy))):
            cv.paint(*_capsule(cv, *p0, *p1, idn["brow_r"]), idn["brow"])
    # Glabella furrows (AU4).
    for s in (-1, 1) if _active(a["AU04"]) else ():
        win, al = _capsule(cv, fx + s * 0.045, by + 0.02 + np.zeros(T), fx + s * 0.035,
                           by + 0.12 + np.zeros(T), 0.009)
        cv.paint(win, al * _b(0.8 * a["AU04"]), dark)
    # Cheeks (AU6): raised, reddened.
    for s in (-1, 1):
        win, al = _ellipse(cv, fx + s * (ex + 0.03), ey + 0.28 - 0.07 * a["AU06"],
                           0.17 + np.zeros(T), 0.11 + np.zeros(T), soft=4.0, margin=0.05)
        cv.paint(win, al * _b(0.08 + 0.4 * a["AU06"]),
                 np.array([215, 110, 110]) * 0.5 + idn["skin"] * 0.5)


def _draw_eyes(cv: _Canvas, a: dict, idn: dict, yaw: np.ndarray) -> None:
    """Eyes: AU5 widens, AU6 and AU7 narrow (lower lid up), AU45 closes; crow's feet."""
    T = len(cv.cx)
    dark = idn["skin"] * 0.72
    fx = 0.07 * yaw
    ex, ey, ew = idn["ex"], idn["ey"], idn["ew"]
    eh = idn["eh"] * (1 + 1.6 * a["AU05"]) * (1 - 0.45 * a["AU06"]) * (1 - 0.6 * a["AU07"])
    eh = eh * np.clip(1 - a["AU45"] * 1.1, 0, 1)
    eyc = ey - 0.015 * a["AU07"] + 0.01 * a["AU06"]
    for s in (-1, 1):
        exc = fx + s * ex
        cv.paint(*_ellipse(cv, exc, eyc, ew + 0.018 + np.zeros(T), eh + 0.016), (40, 28, 25))
        win, sclera = _ellipse(cv, exc, eyc, ew + np.zeros(T), eh)
        cv.paint(win, sclera, (236, 232, 226))
        X, Y, p = cv.coords(win)
        gx, gy = _b(exc + idn["gaze"][0] + 0.02 * yaw), _b(eyc + idn["gaze"][1])
        r = np.sqrt((X - gx) ** 2 + (Y - gy) ** 2)
        cv.paint(win, sclera * _cover((r - 0.06) * p), idn["iris"])
        cv.paint(win, sclera * _cover((r - 0.025) * p), (12, 10, 10))
        # Crow's feet (AU6).
        for k in (-1, 1) if _active(a["AU06"]) else ():
            x0 = exc + s * (ew + 0.04)
            win, al = _capsule(cv, x0, eyc + 0.01 * k, x0 + s * 0.08, eyc + 0.045 * k, 0.008)
            cv.paint(win, al * _b(0.7 * a["AU06"]), dark)


def _draw_nose(cv: _Canvas, a: dict, idn: dict, yaw: np.ndarray) -> None:
    """Nose: bridge, tip, nostrils; AU9 wrinkles and lifts, AU10 flares."""
    T = len(cv.cx)
    dark = idn["skin"] * 0.72
    nx = 0.13 * yaw
    ey = idn["ey"]
    ny, nw = idn["ny"], idn["nw"]
    z = np.zeros(T)
    win, al = _capsule(cv, nx * 0.6 + z, ey + 0.06 + z, nx + z, ny - 0.05 + z, 0.022, soft=2.0)
    cv.paint(win, al * 0.3, dark)
    lift = 0.09 * a["AU09"] + 0.03 * a["AU10"]
    win, al = _ellipse(cv, nx + z, ny - lift, nw + z, 0.055 + z, soft=2.0)
    cv.paint(win, al * 0.25, dark)
    for s in (-1, 1):
        cv.paint(*_ellipse(cv, nx + s * nw * 0.55, ny + 0.025 - lift,
                           0.032 * (1 + 0.5 * a["AU10"]), 0.017 + z), (55, 35, 35))
    for k in range(3 if _active(a["AU09"]) else 0):
        yy = ey + 0.09 + 0.04 * k + z
        win, al = _capsule(cv, nx * 0.8 - 0.11, yy, nx * 0.8 + 0.11, yy, 0.022)
        cv.paint(win, al * _b(a["AU09"]), dark * 0.7)


def _draw_mouth(cv: _Canvas, a: dict, idn: dict, yaw: np.ndarray) -> None:
    """Mouth (corners, lips, teeth, opening), nasolabial folds, dimples, chin boss."""
    z = np.zeros(len(cv.cx))
    dark = idn["skin"] * 0.72
    jaw = 0.1 * a["AU26"]
    fx = 0.07 * yaw
    nx = 0.13 * yaw
    nw = idn["nw"]
    cw = idn["mw"] * (1 + 0.25 * a["AU12"] + 0.7 * a["AU20"] - 0.3 * a["AU23"]
                      - 0.05 * a["AU14"])
    mcy = idn["my"] + jaw * 0.4 - 0.3 * a["AU12"] + 0.22 * a["AU15"] + 0.05 * a["AU20"]
    opening = 0.05 * a["AU25"] + 0.3 * a["AU26"] + 0.06 * a["AU16"]
    yum = idn["my"] + jaw * 0.2 - 0.18 * a["AU10"] - 0.08 * a["AU09"]
    ylm = idn["my"] + jaw * 0.2 + opening + 0.14 * a["AU16"] - 0.03 * a["AU17"]
    thin = np.clip(1 - 0.5 * a["AU23"] - 0.6 * a["AU28"] - 0.15 * a["AU20"], 0.15, 1)
    # Nasolabial folds (AU12, AU10, AU9) and dimples (AU14).
    fold = 0.12 + 0.6 * np.maximum.reduce([a["AU12"], a["AU10"], a["AU09"]])
    for s in (-1, 1):
        win, al = _capsule(cv, nx + s * nw * 1.05 + z, idn["ny"] + 0.03 + z,
                           fx + s * (cw + 0.03), mcy + 0.02, 0.009, soft=1.5)
        cv.paint(win, al * _b(fold), dark)
        if _active(a["AU14"]):
            win, al = _ellipse(cv, fx + s * (cw + 0.045), mcy + z, 0.018 + z, 0.026 + z)
            cv.paint(win, al * _b(0.8 * a["AU14"]), dark)
    _draw_lips(cv, idn, fx, cw, mcy, yum, ylm, thin)
    # Chin boss (AU17).
    if _active(a["AU17"]):
        win, al = _capsule(cv, fx - 0.12, ylm + idn["ll"] + 0.09, fx + 0.12,
                           ylm + idn["ll"] + 0.09, 0.012, soft=2.0)
        cv.paint(win, al * _b(0.6 * a["AU17"]), dark)


def _draw_lips(cv: _Canvas, idn: dict, fx, cw, mcy, yum, ylm, thin) -> None:
    """Lips, lip line, mouth interior and teeth between the corners.

    Args:
        cv: the canvas.
        idn: `_identity` of the clip.
        fx: `[T]` horizontal shift of the face's features (yaw parallax).
        cw: `[T]` half-width of the mouth; mcy: `[T]` height of its corners.
        yum, ylm: `[T]` heights of the upper and lower lip at the centre.
        thin: `[T]` lip thickness factor (AU23, AU28, AU20 thin the lips).
    """
    win = cv.window(fx - idn["mw"] * 1.5, idn["my"] - 0.3, fx + idn["mw"] * 1.5,
                    idn["my"] + 0.45)
    X, Y, p = cv.coords(win)
    Xm = X - _b(fx)
    cwb = _b(cw)
    u = np.clip(1 - (Xm / cwb) ** 2, 0, 1)
    su = np.sqrt(u)
    inside = np.clip((cwb - np.abs(Xm)) * p + 0.5, 0, 1)
    yui = _b(mcy) + (_b(yum) - _b(mcy)) * u
    yli = _b(mcy) + (_b(ylm) - _b(mcy)) * u
    band = lambda lo, hi: inside * np.clip((Y - lo) * p + 0.5, 0, 1) * np.clip(  # noqa: E731
        (hi - Y) * p + 0.5, 0, 1)
    cv.paint(win, band(yui - _b(idn["ul"] * thin) * su - 0.008, yui), idn["lips"])
    cv.paint(win, band(yli, yli + _b(idn["ll"] * thin) * su + 0.008), idn["lips"] * 1.05)
    mid = (yui + yli) / 2
    cv.paint(win, inside * _cover((np.abs(Y - mid) - 0.006) * p), (70, 35, 35))
    interior = band(yui, yli)
    cv.paint(win, interior, (55, 18, 22))
    cv.paint(win, interior * np.clip((yui + 0.035 - Y) * p + 0.5, 0, 1), (235, 230, 215))


def _to_bgr_uint8(frames: np.ndarray) -> np.ndarray:
    """`[T, S, S, 3]` float RGB frames (a channel-first view) -> contiguous BGR uint8.

    Clips and converts in the canvas' own channel-first memory, then interleaves
    each frame's planes in OpenCV's BGR order (what `cv2.imencode` expects).
    """
    planes = np.moveaxis(frames, -1, 0)
    planes = np.clip(planes, 0, 255, out=planes).astype(np.uint8)
    out = np.empty(frames.shape, np.uint8)
    for t in range(frames.shape[0]):
        out[t] = cv2.merge([planes[2, t], planes[1, t], planes[0, t]])
    return out


def _roll(frames: np.ndarray, pose) -> np.ndarray:
    """Rotates each frame `[T, S, S, 3] uint8` about its face centre (head roll).

    Args:
        frames: the clip.
        pose: `(cx [T], cy [T], degrees [T])` from `render_clip`.
    """
    cx, cy, degrees = pose
    out = np.empty_like(frames)
    size = frames.shape[2:0:-1]
    for t in range(frames.shape[0]):
        m = cv2.getRotationMatrix2D((float(cx[t]), float(cy[t])), float(degrees[t]), 1.0)
        out[t] = cv2.warpAffine(frames[t], m, size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    return out


NOISE_SIGMAS = (2.0, 3.5, 5.0, 6.5)  # sensor noise levels, 0-255 scale


def _noise_bank(seed: int, size: int, count: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian sensor noise shared by all clips, split into uint8 parts.

    Returns:
        `(positive, negative)`, each `[len(NOISE_SIGMAS), count, S, S, 3] uint8`,
        so that noise is added with saturating uint8 arithmetic (cheap).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0B]))
    unit = rng.standard_normal((count, size, size, 3), dtype=np.float32)
    noise = np.stack([np.rint(unit * s) for s in NOISE_SIGMAS])
    return (np.clip(noise, 0, 255).astype(np.uint8),
            np.clip(-noise, 0, 255).astype(np.uint8))


def _add_noise(frames: np.ndarray, bank, level: int, picks: np.ndarray) -> np.ndarray:
    """Adds bank noise to `[T, S, S, 3] uint8` frames in place (saturating)."""
    T, S = frames.shape[0], frames.shape[1]
    flat = frames.reshape(T * S, S, 3)
    cv2.add(flat, bank[0][level][picks].reshape(T * S, S, 3), dst=flat)
    cv2.subtract(flat, bank[1][level][picks].reshape(T * S, S, 3), dst=flat)
    return frames


# --------------------------------------------------------------------------
# OpenFace-style CSV
# --------------------------------------------------------------------------

def openface_rows(rng: np.random.Generator, intensities: np.ndarray,
                  all_failed: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Simulated OpenFace 2.0 output of one clip, in OpenFace's frame order.

    Row k (1-based) describes the k-th file in lexicographic order of
    `1.jpg..T.jpg`, i.e. temporal frame `int(stem) - 1`.

    Args:
        rng: the clip's generator.
        intensities: `[T, 19]` true intensities (`RENDER_AUS`).
        all_failed: write a clip where tracking failed on every frame.

    Returns:
        (CSV lines with header, `presence [T, 18] uint8` in temporal order,
        `valid [T] bool` in temporal order: confidence >= 0.8 and success).
    """
    T = intensities.shape[0]
    true = intensities[:, [_IDX[n] for n in AU_NAMES]]
    noisy = true + rng.normal(0, 0.45, true.shape)
    presence = (noisy >= PRESENCE_THRESHOLD).astype(np.uint8)
    r_values = np.clip(intensities[:, [_IDX[n] for n in INTENSITY_AUS]]
                       + rng.normal(0, 0.25, (T, len(INTENSITY_AUS))), 0, 5)
    conf = rng.uniform(0.86, 0.98, T)
    success = np.ones(T, np.int64)
    low = rng.random(T) < 0.03
    conf[low] = rng.uniform(0.3, 0.75, low.sum())
    failed = (rng.random(T) < 0.01) | all_failed
    conf[failed], success[failed] = 0.0, 0
    presence[failed] = 0
    r_values[failed] = 0
    valid = (success == 1) & (conf >= 0.8)
    header = (["frame", "face_id", "timestamp", "confidence", "success"]
              + [f"{n}_r" for n in INTENSITY_AUS] + [f"{n}_c" for n in AU_NAMES])
    lines = [", ".join(header)]
    lex = sorted(range(1, T + 1), key=lambda k: f"{k}.jpg")
    for k, stem in enumerate(lex, start=1):
        i = stem - 1
        fields = [str(k), "0", f"{(k - 1) / FPS:.3f}", f"{conf[i]:.2f}", str(success[i])]
        fields += [f"{v:.2f}" for v in r_values[i]]
        fields += [f"{v:.2f}" for v in presence[i]]
        lines.append(", ".join(fields))
    return lines, presence, valid


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _write_clips(job: tuple) -> tuple[int, int]:
    """Worker: renders and writes clips `indices`; returns (clips, frames)."""
    dfew_dir, seed, image_size, quality, indices, labels, lengths, ids = job
    cv2.setNumThreads(1)  # one process per core already; avoid oversubscription
    bank = _noise_bank(seed, image_size)
    frames = 0
    for i, label, n, cid in zip(indices, labels, lengths, ids):
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(i)]))
        inten = au_intensities(rng, int(label), int(n))
        img, pose = render_clip(rng, inten, image_size)
        img = _to_bgr_uint8(img)
        level = int(rng.integers(len(NOISE_SIGMAS)))
        picks = rng.integers(0, bank[0].shape[1], int(n))
        img = _roll(_add_noise(img, bank, level, picks), pose)
        folder = os.path.join(dfew_dir, "Clip", "clip_224x224", cid)
        os.makedirs(folder, exist_ok=True)
        q = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality + rng.integers(-8, 1))]
        for k in range(int(n)):
            ok, buf = cv2.imencode(".jpg", img[k], q)
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for clip {cid} frame {k + 1}")
            buf.tofile(os.path.join(folder, f"{k + 1}.jpg"))
        lines, _, _ = openface_rows(rng, inten, all_failed=rng.random() < 0.01)
        with open(os.path.join(dfew_dir, "OpenFace", f"{cid}.csv"), "w",
                  encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        frames += int(n)
    return len(indices), frames


def write_demo_dataset(out_dir: str, num_clips: int = 2000, seed: int = 0,
                       image_size: int = 112, *, num_workers: Optional[int] = None,
                       jpeg_quality: int = 92) -> dict:
    """Writes the synthetic demo set under `out_dir/DFEW` (module doc for layout).

    Args:
        out_dir: output folder (created; an existing `DFEW/` inside is
            overwritten clip by clip, not deleted).
        num_clips: clips to write (>= 35).
        seed: everything is a function of it.
        image_size: frame side in pixels (>= 32).
        num_workers: processes; None = CPU count, <= 1 = in this process.
        jpeg_quality: upper JPEG quality (each clip draws from q-8..q).

    Returns:
        summary dict: paths, counts per class and fold, frames, clips under 16
        frames, seconds; also written to `DFEW/demo_info.json`.

    Raises:
        ValueError: bad sizes or counts.
    """
    if paths.is_remote(out_dir):
        raise ValueError(f"{out_dir}: the demo set is a raw release, written and read with "
                         "local file APIs; give a local folder (see raw_dir_for)")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    start = time.perf_counter()
    plan = plan_dataset(num_clips, seed)
    dfew_dir = os.path.join(out_dir, "DFEW")
    os.makedirs(os.path.join(dfew_dir, "OpenFace"), exist_ok=True)
    workers = (os.cpu_count() or 1) if num_workers is None else max(1, num_workers)
    workers = min(workers, max(1, num_clips // 50))
    order = np.argsort(-plan["lengths"], kind="stable")  # long clips first: balance
    chunks = [order[w::workers * 4] for w in range(workers * 4)]
    jobs = [(dfew_dir, seed, image_size, jpeg_quality, c.tolist(),
             plan["labels"][c].tolist(), plan["lengths"][c].tolist(),
             [plan["ids"][i] for i in c]) for c in chunks if len(c)]
    if workers <= 1:
        results = [_write_clips(j) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_write_clips, jobs))
    _write_splits(dfew_dir, plan)
    labels, folds, lengths = plan["labels"], plan["folds"], plan["lengths"]
    summary = {
        "synthetic": True,
        "out_dir": out_dir, "dfew_dir": dfew_dir, "seed": seed,
        "image_size": image_size, "num_clips": num_clips,
        "num_frames": int(sum(r[1] for r in results)),
        "class_counts": {n: int((labels == i).sum()) for i, n in enumerate(DFEW_CLASSES)},
        "test_clips_per_fold": [int((folds == f).sum()) for f in range(1, NUM_FOLDS + 1)],
        "clips_under_16": int((lengths < 16).sum()),
        "frames_min_max": [int(lengths.min()), int(lengths.max())],
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(os.path.join(dfew_dir, "demo_info.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def raw_dir_for(data_dir: str) -> str:
    """Where the demo release for prepared data under `data_dir` goes.

    `<data_dir>/demo_raw` for a local `data_dir`. For a URL (`gs://...`) a
    local folder instead, `<tmp>/audfer_jax_demo_raw/<data_dir as a name>`:
    the demo writer and the release readers work on local files only, and only
    the prepared records need to live in the bucket.
    """
    if paths.is_remote(data_dir):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", paths.resolve(data_dir))
        return os.path.join(tempfile.gettempdir(), "audfer_jax_demo_raw", name)
    return paths.join(paths.resolve(data_dir), "demo_raw")


def example_clip(raw_dir: str, fold: int = 1) -> Optional[tuple[str, str]]:
    """The first test clip of `fold` in a written demo set, for `predict`.

    Args:
        raw_dir: the folder given to `write_demo_dataset` (holds `DFEW/`).
        fold: the test fold (1..5) the run evaluated on; 0 is read as 1.

    Returns:
        `(frame folder, class name)`, or None when the split file or the
        clip's folder is missing (no demo set there).
    """
    dfew_dir = os.path.join(raw_dir, "DFEW")
    split = os.path.join(dfew_dir, "EmoLabel_DataSplit", "test(single-labeled)",
                         f"set_{max(1, int(fold))}.csv")
    try:
        with open(split, encoding="utf-8") as f:
            first = f.read().splitlines()[1]
        clip_id, label = (int(v) for v in first.split(","))
    except (OSError, IndexError, ValueError):
        return None
    folder = os.path.join(dfew_dir, "Clip", "clip_224x224", f"{clip_id:05d}")
    if not os.path.isdir(folder):
        return None
    return folder, DFEW_CLASSES[label - 1]


def _write_splits(dfew_dir: str, plan: dict) -> None:
    """The 5-fold split CSVs (`video_name,label`, unpadded ids, labels 1..7)."""
    for split in ("train", "test"):
        folder = os.path.join(dfew_dir, "EmoLabel_DataSplit", f"{split}(single-labeled)")
        os.makedirs(folder, exist_ok=True)
        for fold in range(1, NUM_FOLDS + 1):
            chosen = (plan["folds"] == fold) if split == "test" else (plan["folds"] != fold)
            rows = ["video_name,label"] + [
                f"{int(plan['ids'][i])},{int(plan['labels'][i]) + 1}"
                for i in np.flatnonzero(chosen)]
            with open(os.path.join(folder, f"set_{fold}.csv"), "w", encoding="utf-8") as f:
                f.write("\n".join(rows) + "\n")
