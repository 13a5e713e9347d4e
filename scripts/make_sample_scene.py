"""Build the bundled sample scene ``data/sample/sample_scene.tif`` and its truth.

A 768 x 768 crop-mosaic of the real Sentinel-2 B12 (SWIR, 20 m, EPSG:32618) sample with 8
real SIRST test-split targets pasted in (3 of them on chunk borders of the default 512/64
tiling), plus ``truth.csv`` (pixel centroid and map position of each target).

    python scripts/make_sample_scene.py [--out data/sample]

Needs the project's shared data (../shared/data). Research use only (see data/sample/README.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.scene_builder import build_scene, load_target_chips, shared_data_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        parser.error("shared data not found (../shared/data or IRSCAN_SHARED_DATA)")
    chips = load_target_chips(data / "sirst", "test")
    truth = build_scene(args.out / "sample_scene.tif", 768, 768, chips, count=8, core_px=384, straddle=3, seed=7)
    with (args.out / "truth.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "col", "x", "y", "area_px", "sirst_image"])
        for t in truth:
            writer.writerow([f"{t.row:.3f}", f"{t.col:.3f}", f"{t.x:.3f}", f"{t.y:.3f}", t.area_px, t.source])
    print(f"wrote {args.out / 'sample_scene.tif'} with {len(truth)} targets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
