"""`predict`'s face detector (dlib HOG) finds faces in photographs and none elsewhere.

Frames: `face_fixtures` (scikit-image's astronaut portrait; a drawn sky and
title card) and scikit-image's other bundled photographs.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from audfer_jax.inference import faces

skimage_data = pytest.importorskip("skimage.data")

from face_fixtures import FACE_CENTRE  # noqa: E402
from face_fixtures import astronaut as _astronaut  # noqa: E402
from face_fixtures import sky as _sky  # noqa: E402
from face_fixtures import title_card as _title_card  # noqa: E402

CENTRE_TOLERANCE = 35
SIDE_RANGE = (60, 170)


def _centre_and_side(box_xywh):
    x, y, w, h = box_xywh
    return (x + w / 2, y + h / 2), max(w, h)


@pytest.mark.parametrize("size", [512, 256])   # 256 < UPSAMPLE_BELOW: upsampled path
def test_finds_the_face_in_a_photograph(size):
    scale = size / 512
    box = faces.largest_face(_astronaut(size))
    assert box is not None
    (cx, cy), side = _centre_and_side(box)
    assert abs(cx - FACE_CENTRE[0] * scale) < CENTRE_TOLERANCE * scale
    assert abs(cy - FACE_CENTRE[1] * scale) < CENTRE_TOLERANCE * scale
    assert SIDE_RANGE[0] * scale <= side <= SIDE_RANGE[1] * scale
    # The mirrored photograph: the face is found at the mirrored place.
    mirrored = faces.largest_face(np.ascontiguousarray(_astronaut(size)[:, ::-1]))
    (mx, my), _ = _centre_and_side(mirrored)
    assert abs(mx - (size - cx)) < 10 * scale + 2 and abs(my - cy) < 10 * scale + 2


def test_no_face_in_sky_title_card_or_other_photographs():
    frames = [_sky(seed=s) for s in range(3)] + [_title_card(), _title_card("THE END")]
    for name in ("coffee", "text", "rocket", "chelsea"):   # a cup, text, a rocket, a cat
        img = getattr(skimage_data, name)()
        frames.append(np.asarray(Image.fromarray(img).convert("RGB").resize((640, 360))))
    clip = np.stack(frames)
    found = faces.detect_faces(clip, range(len(frames)))
    assert found.box is None and found.num_with_face == 0
    assert found.frames_without_face == list(range(len(frames)))
    # A small video (shorter side < UPSAMPLE_BELOW) is upsampled: still no face.
    small = np.stack([np.asarray(Image.fromarray(f).resize((320, 240))) for f in frames])
    assert faces.detect_faces(small, range(len(frames))).num_with_face == 0


@pytest.mark.parametrize("name", ["moon", "coins"])
def test_no_face_where_the_haar_cascade_saw_one(name):
    """The lunar surface and a tray of coins at their own size: OpenCV's
    frontal-face Haar cascade (as `predict` used it) reports a face in both."""
    frame = np.asarray(Image.fromarray(getattr(skimage_data, name)()).convert("RGB"))
    assert faces.largest_face(frame) is None


def test_mixed_clip_counts_frames_without_face():
    face = _astronaut()
    sky = np.asarray(Image.fromarray(_sky()).resize((512, 512)))
    card = np.asarray(Image.fromarray(_title_card()).resize((512, 512)))
    clip = np.stack([face, sky, face, card, face])
    found = faces.detect_faces(clip, range(5), margin=0.0)
    assert found.num_checked == 5 and found.num_with_face == 3
    assert found.frames_without_face == [1, 3]
    assert found.summary()["frames_without_face"] == [1, 3]
    # The clip crop is the (identical) face box of the three face frames, squared.
    (cx, cy), side = _centre_and_side(found.boxes[0])
    x0, y0, x1, y1 = found.box
    assert x1 - x0 == y1 - y0 == round(side)
    assert abs((x0 + x1) / 2 - cx) <= 1 and abs((y0 + y1) / 2 - cy) <= 1
