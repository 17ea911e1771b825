"""Opt-in pixel cleaning by recipe coordinates (deid's %filter graylist ``coordinates``).

Only used when ``pixel_cleaning=True`` and a graylist item with coordinates matched: the pixel data is
decoded (numpy, and a decoder plugin for compressed syntaxes), the regions are set to the minimum value in
every frame and every sample, and the result is stored uncompressed (Explicit VR Little Endian): we do
not re-encode lossy data. Otherwise pixel data is never decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

if TYPE_CHECKING:
    from sendit.deid.recipe import FilterItem


def _boxes(
    ds: Dataset, items: list[FilterItem]
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    rows, cols = int(ds.Rows), int(ds.Columns)
    clean: list[tuple[int, int, int, int]] = []
    keep: list[tuple[int, int, int, int]] = []
    for item in items:
        for mask, spec in item.coordinates:
            if spec == "all":
                box = (0, 0, cols, rows)
            elif spec.startswith("from:"):
                continue  # coordinates taken from a header field: not supported (documented)
            else:
                x0, y0, x1, y1 = (int(float(v)) for v in spec.split(",")[:4])
                box = (max(0, x0), max(0, y0), min(cols, x1), min(rows, y1))
            (keep if mask == 1 else clean).append(box)
    return clean, keep


def clean_pixels(ds: Dataset, items: list[FilterItem]) -> str | None:
    """Blank the regions in place; return a FAILED reason, or None on success."""
    try:
        import numpy as np
    except ImportError:
        return "pixel cleaning unavailable (numpy missing)"
    try:
        pixels = ds.pixel_array.copy()
    except Exception as exc:
        return f"pixel data cannot be decoded for cleaning ({type(exc).__name__})"
    clean, keep = _boxes(ds, items)
    if not clean and not keep:
        return "no usable coordinates for pixel cleaning"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    # shape: (frames?, rows, cols, samples?) -> address rows/cols through a frame-first view
    view = pixels if frames > 1 else pixels[np.newaxis, ...]
    fill = view.min()
    mask = np.zeros(view.shape[1:3], dtype=bool)
    for x0, y0, x1, y1 in clean:
        mask[y0:y1, x0:x1] = True
    for x0, y0, x1, y1 in keep:
        mask[y0:y1, x0:x1] = False
    if samples > 1:
        view[:, mask, :] = fill
    else:
        view[:, mask] = fill
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if "PhotometricInterpretation" in ds and str(ds.PhotometricInterpretation).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom decodes YBR to RGB by default
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    if "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0  # numpy arrays are pixel-interleaved
    ds.BurnedInAnnotation = "NO"
    return None
