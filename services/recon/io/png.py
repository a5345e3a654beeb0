"""8-bit PNG previews with a footer strip that says "research use only, not for diagnosis".

Small images are enlarged (nearest neighbour) to at least :data:`MIN_WIDTH` pixels so the
footer stays legible; the notice is also stored in the PNG ``Disclaimer`` text chunk.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from services.recon.errors import InputError
from services.recon.io.atomic import atomic_output
from services.recon.io.notice import RESEARCH_USE_ONLY

MIN_WIDTH = 256
FOOTER_MARGIN = 4
BUILTIN_COLORMAPS = ("gray", "hot")


def png_bytes(
    image: np.ndarray,
    window: tuple[float, float] | None = None,
    footer: str = RESEARCH_USE_ONLY,
    colormap: str | None = None,
) -> bytes:
    """The PNG file content of :func:`write_png`, for HTTP responses."""
    rendered, info = _render(image, window, footer, colormap)
    buffer = io.BytesIO()
    rendered.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    window: tuple[float, float] | None = None,
    footer: str = RESEARCH_USE_ONLY,
    colormap: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` (H, W) as an 8-bit PNG with the footer strip (atomic).

    ``window`` (low, high) maps to black..white; by default the 0.5-99.5 percentile range.
    ``colormap`` is None/"gray", "hot", or any matplotlib colormap name when matplotlib is
    installed. A footer without the research-use notice gets it appended.
    """
    rendered, info = _render(image, window, footer, colormap)
    target = Path(path)
    with atomic_output(target, overwrite) as temp:
        rendered.save(temp, format="PNG", pnginfo=info)
    return target


def _render(
    image: np.ndarray, window: tuple[float, float] | None, footer: str, colormap: str | None
) -> tuple[Image.Image, PngInfo]:
    plane = np.asarray(image)
    if plane.ndim != 2 or plane.size == 0:
        raise InputError(f"PNG image must be 2-D (H, W); got shape {plane.shape}")
    if np.iscomplexobj(plane) or plane.dtype.kind not in "biuf":
        raise InputError(f"PNG image must be real-valued; got dtype {plane.dtype}")
    plane = plane.astype(np.float64)
    if not np.isfinite(plane).all():
        raise InputError("PNG image contains NaN or inf")
    low, high = _window(plane, window)
    scaled = np.clip((plane - low) / (high - low), 0.0, 1.0)
    picture = _colorize(scaled, colormap)
    factor = max(1, math.ceil(MIN_WIDTH / plane.shape[1]))
    if factor > 1:
        picture = picture.resize(
            (plane.shape[1] * factor, plane.shape[0] * factor), Image.Resampling.NEAREST
        )
    text = footer if RESEARCH_USE_ONLY in footer.lower() else f"{footer} | {RESEARCH_USE_ONLY}"
    info = PngInfo()
    info.add_text("Disclaimer", text)
    info.add_text("Software", "mrdiff")
    return _with_footer(picture, text), info


def _window(plane: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        low, high = float(window[0]), float(window[1])
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise InputError(f"window must be (low, high) with high > low; got {window}")
        return low, high
    low, high = (float(value) for value in np.percentile(plane, [0.5, 99.5]))
    if high <= low:
        low, high = float(plane.min()), float(plane.max())
    return (low, high) if high > low else (low, low + 1.0)


def _colorize(scaled: np.ndarray, colormap: str | None) -> Image.Image:
    if colormap in (None, "gray", "grey"):
        return Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L").convert("RGB")
    if colormap == "hot":
        rgb = np.stack([np.clip(3 * scaled - shift, 0, 1) for shift in (0, 1, 2)], axis=-1)
    else:
        rgb = _matplotlib_colormap(scaled, colormap)
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8), mode="RGB")


def _matplotlib_colormap(scaled: np.ndarray, name: str) -> np.ndarray:
    try:
        from matplotlib import colormaps
    except ImportError as error:
        builtin = ", ".join(BUILTIN_COLORMAPS)
        raise InputError(f"colormap {name!r} needs matplotlib; built-in: {builtin}") from error
    if name not in colormaps:
        raise InputError(f"unknown colormap {name!r}")
    return np.asarray(colormaps[name](scaled))[..., :3]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def _with_footer(picture: Image.Image, text: str) -> Image.Image:
    """``picture`` above a black strip carrying ``text`` in white, wrapped to the width."""
    size = max(10, min(16, picture.width // 24))
    font = _font(size)
    lines = _wrap(text, font, picture.width - 2 * FOOTER_MARGIN)
    line_height = size + 4
    strip = len(lines) * line_height + 2 * FOOTER_MARGIN
    canvas = Image.new("RGB", (picture.width, picture.height + strip), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        top = picture.height + FOOTER_MARGIN + number * line_height
        draw.text((FOOTER_MARGIN, top), line, fill=(255, 255, 255), font=font)
    return canvas
