"""``irscan scan SCENE... --out OUT_DIR``: detect targets in georeferenced scenes.

Writes ``OUT_DIR/<scene stem>/``: ``mask.zarr``, ``detections.{parquet,gpkg,geojson}``,
``quicklook.png`` and ``report.json``; prints a one-line summary.
"""

from __future__ import annotations

import time

import click

from pipeline.cli.options import config_from_options, scan_options


@click.command("scan")
@click.argument("scenes", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@scan_options
def command(scenes: tuple[str, ...], out_dir: str, **options) -> None:
    """Scan SCENE... (any raster GDAL opens: GeoTIFF/COG, VRT, JP2, /vsi paths)."""
    from pipeline.runner import run_scans

    config = config_from_options(options)
    start = time.time()
    results = run_scans(list(scenes), out_dir, config)
    wall = time.time() - start
    tiles = {k: sum(r.tiles[k] for r in results) for k in ("total", "done", "skipped", "failed")}
    mpx = sum(r.report["mpx"] for r in results)
    detections = sum(r.detections for r in results)
    click.echo(
        f"irscan: {len(results)} scene(s), {mpx:.1f} Mpx, {tiles['total']} tiles "
        f"({tiles['skipped']} skipped, {tiles['failed']} failed), {detections} detections "
        f"in {wall:.1f} s ({mpx / wall:.2f} Mpx/s) -> {out_dir}"
    )
    failed = [f"{r.scene}/{t['tile']}" for r in results for t in r.failed_tiles]
    if failed:
        raise click.ClickException(f"{len(failed)} tile(s) failed: {', '.join(failed[:10])}")
