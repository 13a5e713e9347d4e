"""How long a scan's first batch of tile reads takes on fresh Ray workers, and after.

    python bench/bench_first_reads.py [--side-px 4096] [--batch 16] [--idle-s 0 2]

Builds a uint16 GeoTIFF (the real Sentinel-2 B12 sample mirrored), starts a local Ray, and
times ``batch`` read tasks (:func:`pipeline.tasks.read_tile_task`) three ways: on fresh
workers; right after the same number of reads warmed the workers; and after those workers
sat idle ``idle_s`` seconds (Ray ends idle workers beyond one per core after ~1 s). This is
why the runner reads the first tiles while the actors are still loading the network.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time_reads(info, tiles, stats, read_cpus: float) -> float:  # noqa: ANN001
    from pipeline.tasks import read_tile_task
    import ray

    start = time.perf_counter()
    ray.get([read_tile_task.options(num_cpus=read_cpus).remote(info, t, stats)[0] for t in tiles])
    return round(time.perf_counter() - start, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side-px", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--read-cpus", type=float, default=0.5)
    parser.add_argument("--idle-s", type=float, nargs="+", default=[0.0, 2.0])
    args = parser.parse_args()

    import ray

    from pipeline.normalize import NormalizationSpec, compute_stats
    from pipeline.scene import open_scene
    from pipeline.tiling import TilingSpec, plan_tiles
    from tests.scene_builder import build_scene

    scene = Path(tempfile.mkdtemp(prefix="irscan-reads-")) / "scene.tif"
    build_scene(scene, args.side_px, args.side_px, [], count=0)
    info = open_scene(str(scene), 1)
    tiles = plan_tiles(info.grid.height_px, info.grid.width_px, TilingSpec(tile_px=512, halo_px=64))
    stats = compute_stats(info, NormalizationSpec())
    need = args.batch * (2 + 2 * len(args.idle_s))
    if len(tiles) < need:
        raise SystemExit(f"--side-px: expected a scene of at least {need} tiles, got {len(tiles)}")
    result: dict[str, object] = {"batch": args.batch, "read_cpus": args.read_cpus}
    ray.init(include_dashboard=False, configure_logging=False)
    try:
        k = 0

        def next_tiles():  # noqa: ANN202
            nonlocal k
            k += args.batch
            return tiles[k - args.batch : k]

        result["fresh_workers_s"] = _time_reads(info, next_tiles(), stats, args.read_cpus)
        for idle in args.idle_s:
            _time_reads(info, next_tiles(), stats, args.read_cpus)  # the workers have read
            time.sleep(idle)
            result[f"after_reads_idle_{idle:g}s_s"] = _time_reads(info, next_tiles(), stats, args.read_cpus)
    finally:
        ray.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
