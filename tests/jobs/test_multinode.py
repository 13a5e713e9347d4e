"""Multi-node on one machine: a Ray head and a second node (``ray start``, each its own
processes), a scan run across both, the second node killed hard (SIGKILL to every one of its
processes) mid-scan; the scan must still finish, with the outputs of an uninterrupted run.

Layout: the head has 4 CPUs, the second node 2 CPUs and a ``worker_node`` resource; the scan
asks for 3 inference actors of 1 CPU (the runner has no option for custom resources, so
placement comes from sizes). Ray's default (hybrid) scheduling keeps work on the driver's
node (the head) while that node is under half used, then spreads it: 2 actors land on the
head, the third on the second node (checked from report.json), and the read tasks run on
both. After the kill the head has room for the replacement actor and for the reads; the
reads' payloads that were in the dead node's object store are rebuilt by Ray from lineage.
The GCS is told to declare a node dead after about a second instead of ~15 s (the runner
copes either way: with Ray's defaults it sees ActorUnavailableError first).

The scans run in driver processes (multinode_helpers): the reference on a plain local Ray,
the other joining the cluster. Batches of one tile and one torch thread per actor make
every tile's probabilities independent of how tiles were batched and of which actor ran
them, so the outputs must be bit-identical.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import zarr
from geopandas.testing import assert_geodataframe_equal

from .multinode_helpers import LoopbackCluster, driver_command, driver_env

REPO = Path(__file__).resolve().parents[2]
SHAPE = (640, 640)
N_TILES = 4 * 4  # core = 256 - 2 * 32 = 192 px (multinode_helpers.scan_config); 640 = 3 * 192 + 64
KILL_AFTER = N_TILES // 4  # tiles finished (ledger lines) before the second node is killed
TIMEOUT_S = 240  # a scan that takes longer than this is hung


@pytest.fixture
def cluster() -> Iterator[LoopbackCluster]:
    """Head: 4 CPUs; second node: 2 CPUs and the resource ``worker_node``. Started in the
    background (the test runs its reference scan meanwhile); both nodes' processes are
    killed, by pid, when the test ends."""
    cluster = LoopbackCluster(head_cpus=4, worker_cpus=2, worker_resources={"worker_node": 2})
    try:
        cluster.start_in_background()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    import torch

    from mim_model import MiM
    from mim_model.weights import save_safetensors

    torch.manual_seed(0)
    # this random network gives every pixel of the test scene a probability of about 0.58 to 0.70;
    # at 0.69 it flags about 0.1 % of them, in some hundred blobs: detections to compare
    return save_safetensors(MiM(layout="spatial"), tmp_path / "w.safetensors", metadata={"threshold": "0.69"})


def _ledger_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _tail(log_path: Path, lines: int = 60) -> str:
    """The end of the driver's log, without Ray's raylet state dumps."""
    text = [line for line in log_path.read_text(errors="replace").splitlines() if "[state-dump]" not in line]
    return "\n".join(text[-lines:])


def _actor_nodes(driver: subprocess.Popen, log_path: Path) -> str:
    """The driver's log line naming its inference actors and their nodes, once it is there."""
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT_S:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if "inference actor(s):" in line]
        if lines:
            return lines[0]
        assert driver.poll() is None, f"driver ended before its actors started:\n{_tail(log_path)}"
        time.sleep(0.05)
    pytest.fail(f"the driver's actors did not start:\n{_tail(log_path)}")


def _outputs(scene_dir: Path) -> tuple[np.ndarray, np.ndarray, gpd.GeoDataFrame, dict]:
    group = zarr.open_group(str(scene_dir / "mask.zarr"), mode="r")
    report = json.loads((scene_dir / "report.json").read_text())
    return group["mask"][...], group["probability"][...], gpd.read_parquet(scene_dir / "detections.parquet"), report


@contextlib.contextmanager
def _driver(address: str | None, scene: Path, out: Path, weights: Path, log_path: Path,
            **actors: float) -> Iterator[subprocess.Popen]:
    """A scan driver process (see multinode_helpers), killed on the way out if still running."""
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(driver_command(address, scene, out, weights, **actors), stdout=log,
                                  stderr=subprocess.STDOUT, env=driver_env(REPO), cwd=REPO)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def _wait(driver: subprocess.Popen, log_path: Path, what: str) -> int:
    try:
        return driver.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} hangs:\n{_tail(log_path)}")


@pytest.mark.slow
def test_scan_survives_losing_a_node(tmp_path: Path, make_scene, weights: Path, cluster: LoopbackCluster) -> None:
    rng = np.random.default_rng(7)
    data = rng.normal(1000.0, 30.0, SHAPE)
    for r, c in rng.integers(8, SHAPE[0] - 8, (40, 2)):
        data[r - 1 : r + 2, c - 1 : c + 2] = 4000.0
    scene = make_scene(SHAPE, data=data, name="big.tif")

    # reference: uninterrupted, on a plain local Ray that the driver starts (2 CPUs: 2 actors
    # of 0.5 CPU leave room for the read tasks); while the cluster starts
    ref_log = tmp_path / "reference.log"
    with _driver(None, scene, tmp_path / "ref", weights, ref_log, num_actors=2, cpus_per_actor=0.5) as ref:
        assert _wait(ref, ref_log, "the reference scan") == 0, _tail(ref_log)

    # the same scan, by a driver that joins the two-node cluster: 3 actors of 1 CPU, mostly 2 on
    # the head and 1 on the second node; Ray's hybrid policy sometimes keeps all 3 on the head
    # (the read tasks' load decides), and a kill could then not hit an actor: that start is
    # abandoned and the scan started afresh, up to 3 times
    cluster.wait_started()
    for attempt in range(3):
        out = tmp_path / f"multi{attempt}"
        ledger = out / "big" / "_irscan" / "tiles.jsonl"
        log_path = tmp_path / f"driver{attempt}.log"
        with _driver(cluster.address, scene, out, weights, log_path, num_actors=3, cpus_per_actor=1.0) as driver:
            placed = _actor_nodes(driver, log_path)
            if cluster.worker.node_id[:8] not in placed:
                continue  # leaving the block kills this driver; Ray ends its actors
            start = time.monotonic()
            while _ledger_lines(ledger) < KILL_AFTER:
                assert driver.poll() is None, f"driver ended before the kill:\n{_tail(log_path)}"
                assert time.monotonic() - start < TIMEOUT_S, f"no progress:\n{_tail(log_path)}"
                time.sleep(0.05)
            done_at_kill = _ledger_lines(ledger)
            killed = cluster.worker.kill()  # SIGKILL to all its processes: raylet, agents, workers
            code = _wait(driver, log_path, "the scan, after the node was killed,")
        break
    else:
        pytest.fail(f"no actor was placed on the second node in 3 starts: {placed}")
    assert killed >= 2
    assert done_at_kill < N_TILES, "the scan finished before the node was killed"
    assert code == 0, _tail(log_path)
    assert "inference actor died" in log_path.read_text(), _tail(log_path)  # the kill hit a working actor

    mask, prob, frame, report = _outputs(out / "big")
    assert report["tiles"] == {"total": N_TILES, "done": N_TILES, "skipped": 0, "failed": 0, "resumed": 0}
    assert report["failed_tiles"] == []
    # the first actors ran on both nodes
    assert {d["node"] for d in report["devices"]} == {cluster.head.node_id, cluster.worker.node_id}, report["devices"]

    ref_mask, ref_prob, ref_frame, ref_report = _outputs(tmp_path / "ref" / "big")
    assert np.array_equal(mask, ref_mask)
    assert np.array_equal(prob, ref_prob, equal_nan=True)
    assert len(ref_frame) > 0
    assert report["detections"] == ref_report["detections"] == len(ref_frame)
    assert_geodataframe_equal(frame, ref_frame)
