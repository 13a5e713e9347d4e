"""End-to-end scan throughput against model-only throughput, and host memory.

    python bench/bench_pipeline.py --side-px 4096 --tile-px 512 --halo-px 64 --batch-size 8
    python bench/bench_pipeline.py --side-px 16384 --device cuda --batch-size 16 --scene /data/big.tif
    python bench/bench_pipeline.py --side-px 16384 --device cuda --batch-size 16 --window-px 0  # whole tiles
    # multi-GPU scaling: the same run with --num-actors 1 and 2 (one GPU each); --copies N
    # scans the scene N times in one run, as a job of N scenes sharing the actor pool
    python bench/bench_pipeline.py --side-px 16384 --device cuda --batch-size 16 --num-actors 2 \
        --skip-model-only --copies 3

Builds (or reuses, ``--scene``) a uint16 GeoTIFF of ``side_px``^2 from the real Sentinel-2
B12 sample (mirrored) with SIRST targets, then

1. model-only: a :class:`pipeline.infer.TilePredictor` on random tiles of the same tile
   size and batch, median Mpx/s counted on tile *cores* (the pixels a scan keeps);
2. end to end: ``run_scans`` on a local Ray (read tasks, actor pool, Zarr writes,
   vectorising, vector files), Mpx/s of the scene over the scan's wall time (Ray start-up
   excluded: it is timed from the first tile read to the last tile written);
3. host memory: peak summed PSS (and RSS, which counts Ray's shared object store once per
   worker) of this process and all its children (Ray's daemons and workers), sampled every
   0.5 s during the scan.

Prints one JSON object (with ``job_*`` figures over all scenes when ``--copies`` > 1; the
per-scene figures are the first scene's). Run it twice with different ``--side-px`` to see
memory stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402


class _PeakMemory(threading.Thread):
    """Samples the host memory of this process tree (the driver, Ray's daemons and workers).

    Two sums: RSS, which counts a shared page (Ray's object store is shared memory mapped
    into every worker that touched it) once per process, and PSS (proportional set size),
    which splits each shared page between the processes that map it and so adds up to the
    memory really used.
    """

    def __init__(self, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self._done = threading.Event()

    def run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._done.is_set():
            rss = pss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            time.sleep(self.period_s)

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self.join()
        return self.peak_rss_bytes, self.peak_pss_bytes


def scan_config(args: argparse.Namespace):
    """The scan's configuration from the options, as ``irscan scan`` builds it."""
    from pipeline.cli.options import config_from_options

    return config_from_options({
        "tile_px": args.tile_px, "halo_px": args.halo_px, "batch_size": args.batch_size,
        "device": args.device, "no_amp": args.no_amp, "overwrite": True,
        "gpus_per_actor": args.gpus_per_actor, "num_actors": args.num_actors, "progress": False,
        "window_px": args.window_px, "window_halo_px": args.window_halo_px,
    })


def model_only(args: argparse.Namespace) -> dict:
    from pipeline.infer import TilePredictor

    config = scan_config(args)
    predictor = TilePredictor(config.inference, config.tiling.halo_px)
    tiles = np.random.default_rng(0).random((args.batch_size, args.tile_px, args.tile_px), dtype=np.float32)
    for _ in range(2):
        predictor.predict(tiles)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.predict(tiles)
        times.append(time.perf_counter() - start)
    core = args.tile_px - 2 * args.halo_px
    median = statistics.median(times)
    return {
        "device": predictor.device_name,
        "median_batch_s": round(median, 4),
        "core_mpx_per_s": round(args.batch_size * core * core / median / 1e6, 3),
        "tile_mpx_per_s": round(args.batch_size * args.tile_px**2 / median / 1e6, 3),
    }


def end_to_end(args: argparse.Namespace, scene: Path, out_dir: Path) -> dict:
    import ray

    from pipeline.runner import run_scans

    config = scan_config(args)
    scenes = [scene]
    if args.copies > 1:  # one job of several scenes: links to the same file, named apart
        links = out_dir.parent / "copies"
        links.mkdir(parents=True, exist_ok=True)
        scenes = []
        for k in range(args.copies):
            link = links / f"{scene.stem}_copy{k}{scene.suffix}"
            if not link.exists():
                link.symlink_to(scene.resolve())
            scenes.append(link)
    ray.init(include_dashboard=False, configure_logging=False)
    sampler = _PeakMemory()
    sampler.start()
    try:
        start = time.perf_counter()
        results = run_scans([str(s) for s in scenes], out_dir, config, overviews=False, statistics=False)
        wall = time.perf_counter() - start
    finally:
        peak_rss, peak_pss = sampler.stop()
        ray.shutdown()
    result = results[0]
    report = result.report
    job = {}
    if len(results) > 1:
        reports = [r.report for r in results]
        job_wall = max(r["tiles_finished_unix"] for r in reports) - min(r["tiles_started_unix"] for r in reports)
        done = sum(r["tiles"]["done"] for r in reports)
        job = {
            "scenes": len(reports),
            "job_tiles_wall_s": round(job_wall, 3),
            "job_tiles_per_s": round(done / job_wall, 2),
            "job_mpx_per_s": round(sum(r["mpx"] for r in reports) / job_wall, 3),
        }
    return {**job,
        "scene_mpx": report["mpx"],
        "tiles": report["tiles"],
        "detections": result.detections,
        "scene_wall_s": report["seconds"]["scene_wall"],
        "mpx_per_s": report["mpx_per_s"],
        "tiles_per_s": round(report["tiles"]["done"] / report["seconds"]["scene_wall"], 2),
        "num_actors": len(report["devices"]),
        "run_wall_s_incl_ray_start": round(wall, 2),
        "stage_seconds": report["seconds"],
        "devices": [d["device"] for d in report["devices"]],
        "peak_host_pss_mib": round(peak_pss / 2**20, 1),
        "peak_host_rss_sum_mib": round(peak_rss / 2**20, 1),
        "actor_start_s": report["seconds"].get("actor_start"),
        "device_busy": report.get("device_busy"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side-px", type=int, default=4096)
    parser.add_argument("--scene", type=Path, help="Reuse this GeoTIFF instead of building one.")
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--halo-px", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window-px", type=int, default=None, help="irscan scan --window-px [the scan's default]")
    parser.add_argument("--window-halo-px", type=int, default=None, help="irscan scan --window-halo-px")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--gpus-per-actor", type=float, default=1.0)
    parser.add_argument("--num-actors", type=int, default=None,
                        help="Inference actors (default: one per GPU, or one on CPU); scaling runs set 1, 2, ...")
    parser.add_argument("--skip-model-only", action="store_true", help="Only the end-to-end scan (scaling runs).")
    parser.add_argument("--model-only", action="store_true", help="Only the model-only figure (no scene, no Ray).")
    parser.add_argument("--copies", type=int, default=1,
                        help="Scan the scene this many times in one run (a job of scenes sharing the actor pool).")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    if args.model_only:
        print(json.dumps({"tile_px": args.tile_px, "halo_px": args.halo_px, "batch_size": args.batch_size,
                          "window_px": args.window_px, "window_halo_px": args.window_halo_px,
                          "model_only": model_only(args)}))
        return 0

    from tests.scene_builder import build_scene, load_target_chips, shared_data_dir

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="irscan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = args.scene
    build_s = None
    if scene is None:
        scene = work / f"bench_{args.side_px}.tif"
        if not scene.exists():
            start = time.perf_counter()
            data = shared_data_dir()
            chips = load_target_chips(data / "sirst", "test") if data and (data / "sirst").is_dir() else []
            build_scene(scene, args.side_px, args.side_px, chips, count=200 if chips else 0,
                        core_px=args.tile_px - 2 * args.halo_px, straddle=50 if chips else 0)
            build_s = round(time.perf_counter() - start, 1)
    result = {
        "host": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))},
        "scene": str(scene), "build_s": build_s,
        "tile_px": args.tile_px, "halo_px": args.halo_px, "batch_size": args.batch_size,
        "window_px": args.window_px, "window_halo_px": args.window_halo_px,
    }
    if not args.skip_model_only:
        result["model_only"] = model_only(args)
    result["end_to_end"] = end_to_end(args, scene, work / "out")
    if not args.skip_model_only:
        e2e, model = result["end_to_end"], result["model_only"]
        result["pipeline_over_model"] = round(e2e["mpx_per_s"] / model["core_mpx_per_s"], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
