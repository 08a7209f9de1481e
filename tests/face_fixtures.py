"""Frames with and without a face, for the face-detection tests.

Face photograph: scikit-image's bundled `astronaut.png` (NASA portrait of
Eileen Collins, public domain), whose face spans about x 180-270, y 75-175
of the 512 x 512 image (eyes near y 100, mouth near y 145; read off the image
by eye). Frames without a face are drawn: a sky gradient with soft clouds and
a title card of white text on black, what a "face" was reported on before.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The astronaut's face centre (x, y) in the 512 x 512 image, by eye.
FACE_CENTRE = (225, 125)


def astronaut(size: int = 512) -> np.ndarray:
    """The astronaut portrait, `[size, size, 3] uint8` RGB."""
    import skimage.data  # pylint: disable=g-import-not-at-top
    img = skimage.data.astronaut()
    if size != img.shape[0]:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img


def sky(h: int = 360, w: int = 640, seed: int = 0) -> np.ndarray:
    """Blue-to-pale vertical gradient with blurred random clouds."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, h)[:, None, None]
    top, bottom = np.array([40, 90, 200]), np.array([200, 220, 245])
    grad = top * (1 - t) + bottom * t + np.zeros((1, w, 1))
    clouds = Image.fromarray((rng.random((h // 16, w // 16)) * 255).astype(np.uint8))
    clouds = np.asarray(clouds.resize((w, h), Image.BICUBIC), np.float64)[..., None] / 255
    return np.clip(grad + 60 * clouds ** 3, 0, 255).astype(np.uint8)


def title_card(text: str = "A FILM BY\nSOMEONE", h: int = 360, w: int = 640) -> np.ndarray:
    """White text on black, `[h, w, 3] uint8`."""
    img = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.multiline_text((w // 2, h // 2), text, fill=(255, 255, 255), anchor="mm",
                        align="center", font=ImageFont.load_default(size=56))
    return np.asarray(img)


def write_mp4(path: str, frames) -> None:
    """Writes `[N, H, W, 3] uint8` frames (H, W even) as an MPEG-4 video at 10 fps."""
    import av  # pylint: disable=g-import-not-at-top
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
