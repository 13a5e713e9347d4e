"""``irscan plan JOB.yaml [--json]``: the scenes, tiles and work of a job; no GPU, no Ray.

Opens every scene's metadata (no pixel read) and, when the output folder exists, counts the
tiles its ledgers record as finished, so the table shows what ``irscan run JOB.yaml`` would
still do. An output that ``run`` would refuse to continue (another configuration or weights,
another version of the scene file) counts 0 finished, with a line saying why. The checks
``run`` makes before it starts Ray (weights, tile size after the input scale, the form of
the Ray address: not contacted) are made too.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


@click.command("plan")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(job_file: Path, as_json: bool) -> None:
    """Show the scenes, tiles and remaining work of JOB_FILE (a YAML job)."""
    from pipeline.jobspec import load_job, plan_job
    from pipeline.lock import read_lock

    spec = load_job(job_file)
    plan = plan_job(spec)
    holder = read_lock(spec.output)
    if as_json:
        data = plan.to_dict()
        data["lock"] = holder.to_json() if holder else None
        click.echo(json.dumps(data, indent=1))
        return
    tiling = spec.config.tiling
    click.echo(
        f"job {spec.name}: {len(plan.scenes)} scene(s) -> {spec.output}"
        f"  (tile {tiling.tile_px} px, halo {tiling.halo_px} px, core {tiling.core_px} px"
        f"{', overwrite' if spec.config.overwrite else ''})"
    )
    header = ["scene", "size (HxW)", "dtype", "CRS", "tiles", "finished", "to do", "Mpx"]
    rows = [header]
    for s in plan.scenes:
        rows.append([
            s.name, f"{s.height_px}x{s.width_px}", s.dtype, s.crs, str(s.tiles_total),
            str(s.tiles_finished), str(s.tiles_todo), f"{s.mpx:.2f}",
        ])
    rows.append([
        "total", "", "", "", str(plan.tiles_total), str(plan.tiles_finished),
        str(plan.tiles_todo), f"{plan.mpx:.2f}",
    ])
    for line in _table(rows, right={4, 5, 6, 7}):
        click.echo(line)
    for s in plan.scenes:
        if s.run_refuses:
            click.echo(f"{s.name}: 0 finished: irscan run refuses its existing output without --overwrite: "
                       f"{s.run_refuses}")
    if holder is not None:
        click.echo(f"output is locked by a running job: {holder.describe()}")


__all__ = ["command"]
