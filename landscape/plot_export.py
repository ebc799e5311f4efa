"""Exporting a loss surface for other tools: `export_vtp` writes VTK XML PolyData for ParaView,
as the loss-landscape code offers (exported by `landscape.plot`)."""

from __future__ import annotations

import os

import numpy as np

from .errors import LandscapeError
from .surface import Surface


def export_vtp(surface: Surface, path: str | os.PathLike, *, log: bool = False,
               zmax: float | None = None) -> None:
    """Write the surface as VTK XML PolyData (`.vtp`) for ParaView.

    Points are (xs[i], ys[j], z) with z the loss (log10 with `log=True`, clipped at `zmax`);
    NaN heights become the largest finite height (VTK has no holes in a mesh), and the point data
    array "loss" keeps the true values with NaN. Cells are the grid's quads.
    """
    z = surface_values(surface, log)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise LandscapeError("the surface has no finite point to export.")
    top = float(finite.max()) if zmax is None else float(zmax)
    height = np.where(np.isfinite(z), np.minimum(z, top), top)
    nx, ny = z.shape
    x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), height.ravel()], axis=1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], axis=-1)
    quads = quads.reshape(-1, 4)

    def fmt(a: np.ndarray) -> str:
        return " ".join(repr(float(v)) if np.isfinite(v) else "NaN" for v in a.ravel())

    conn = " ".join(str(int(v)) for v in quads.ravel())
    offsets = " ".join(str(4 * (k + 1)) for k in range(len(quads)))
    xml = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="0" '
        f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">\n'
        '<PointData Scalars="loss">\n'
        f'<DataArray type="Float64" Name="loss" format="ascii">{fmt(surface.loss)}</DataArray>\n'
        '</PointData>\n<Points>\n'
        f'<DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}'
        '</DataArray>\n</Points>\n<Polys>\n'
        f'<DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>\n'
        f'<DataArray type="Int64" Name="offsets" format="ascii">{offsets}</DataArray>\n'
        '</Polys>\n</Piece>\n</PolyData>\n</VTKFile>\n'
    )
    with open(path, "w", encoding="ascii") as f:
        f.write(xml)


# ---------------------------------------------------------------------- helpers


def surface_values(surface: Surface, log: bool) -> np.ndarray:
    """The surface's loss, or its log10 (NaN where the loss is not positive) with `log`."""
    z = np.asarray(surface.loss, dtype=float)
    if not log:
        return z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
