"""PNG previews: windowing, colormaps, and the research-use footer on every image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.recon.errors import InputError
from services.recon.io import RESEARCH_USE_ONLY, png_bytes, write_png


def test_small_image_is_enlarged_and_gets_a_footer(tmp_path: Path, io_phantom: np.ndarray) -> None:
    path = write_png(tmp_path / "slice.png", io_phantom[0])
    with Image.open(path) as png:
        assert png.info["Disclaimer"] == RESEARCH_USE_ONLY
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[1] == 256  # 32 columns enlarged 8x
    image_part, footer = pixels[:256], pixels[256:]
    assert footer.shape[0] > 10
    assert footer.min() == 0 and footer.max() > 200  # light (antialiased) text on black
    assert 0.02 < (footer > 128).mean() < 0.5
    assert image_part.max() == 255 and image_part.min() == 0


def test_window_maps_low_to_black_and_high_to_white() -> None:
    ramp = np.tile(np.linspace(0, 10, 256), (4, 1))
    with Image.open(io.BytesIO(png_bytes(ramp, window=(2.0, 8.0)))) as png:
        row = np.asarray(png.convert("L"))[0]
    assert row[:51].max() == 0  # <= 2.0
    assert row[205:].min() == 255  # >= 8.0
    assert np.all(np.diff(row.astype(int)) >= 0)


def test_colormaps_and_custom_footer() -> None:
    ramp = np.tile(np.linspace(0, 1, 300), (8, 1))
    with Image.open(io.BytesIO(png_bytes(ramp, colormap="hot", footer="anomaly map"))) as png:
        text = png.info["Disclaimer"]
        rgb = np.asarray(png.convert("RGB"))[0]
    assert text == f"anomaly map | {RESEARCH_USE_ONLY}"
    assert tuple(rgb[0]) == (0, 0, 0) and tuple(rgb[-1]) == (255, 255, 255)
    assert rgb[150, 0] == 255 and rgb[150, 2] == 0  # red before yellow before white
    viridis = pytest.importorskip("matplotlib")
    assert viridis is not None
    with Image.open(io.BytesIO(png_bytes(ramp, colormap="viridis"))) as png:
        assert png.mode == "RGB"


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        (np.ones((2, 4, 4)), {}, "2-D"),
        (np.full((4, 4), np.nan), {}, "NaN"),
        (np.ones((4, 4), complex), {}, "real-valued"),
        (np.ones((4, 4)), {"window": (3.0, 1.0)}, "window"),
        (np.ones((4, 4)), {"colormap": "no-such-map"}, "colormap"),
    ],
)
def test_bad_png_inputs_leave_no_file(
    tmp_path: Path, image: np.ndarray, options: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        write_png(tmp_path / "out.png", image, **options)
    assert list(tmp_path.iterdir()) == []


def test_constant_image_and_overwrite(tmp_path: Path) -> None:
    path = write_png(tmp_path / "flat.png", np.zeros((300, 300)))
    with pytest.raises(InputError, match="already exists"):
        write_png(path, np.ones((300, 300)))
    write_png(path, np.ones((300, 300)), overwrite=True)
    with Image.open(path) as png:
        assert png.size[0] == 300
