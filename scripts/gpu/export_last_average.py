"""Export the last epoch's weight average of a training run, beside the val-chosen best.pt.

    python scripts/gpu/export_last_average.py RUN_DIR OUT.safetensors

``irscan train --export`` writes ``best.pt`` (the evaluation with the highest val IoU). For
comparisons on other data (land validation, the scan accuracy scene) this writes the
weight average held in ``RUN_DIR/last.pt`` (``--ema-decay``) with the threshold and val
metrics of the last evaluation (when the run stopped between evaluations, the average
has moved on since: the metadata's ``epoch`` is last.pt's), through the same
:func:`mim_model.training.train.export` (float16 safetensors, no card). It chooses nothing
on test data.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mim_model.training.train import export


def main() -> None:
    run_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    if ckpt.get("ema_model") is None:
        sys.exit(f"{run_dir / 'last.pt'}: expected a run trained with --ema-decay, got no weight average")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluated = [r for r in records if r.get("val")]
    if not evaluated:
        sys.exit(f"{run_dir / 'metrics.jsonl'}: expected at least one val evaluation, got none")
    last_val = evaluated[-1]["val"]
    with tempfile.TemporaryDirectory() as tmp:
        chosen = Path(tmp) / "best.pt"
        torch.save(
            {
                "format": ckpt["format"],
                "model": ckpt["ema_model"],
                "epoch": ckpt["epoch"],
                "threshold": last_val["threshold"],
                "val": {k: last_val[k] for k in ("iou", "niou", "pd", "fa")},
                "config": ckpt["config"],
            },
            chosen,
        )
        export(chosen, out_path, card=False)


if __name__ == "__main__":
    main()
