"""Run scans on Ray: read tiles in CPU tasks, infer in an actor pool, write chunks, vectorise.

With :mod:`pipeline.tasks` (the Ray tasks, kept free of torch so that read workers start
fast), the only module of :mod:`pipeline` that imports ``ray``.

Flow (all scenes of a run share one actor pool, so the GPUs do not idle between scenes)::

    driver: validate scenes, normalisation stats (tasks), create mask.zarr, plan tiles,
            start the actors (model load, GPU warm-up) and meanwhile read the first tiles
      -> read task per tile (CPU, ``read_cpus``): window + halo, normalise, nodata mask
      -> all-nodata tiles stop here (recorded "skipped"; their chunk keeps the nodata fill)
      -> InferenceActor.process(batch): MiM on the batch (GPU, bf16 autocast, scan in fp32),
         crop each core, threshold, write exactly its chunk of probability and mask
      -> when a scene's tiles are all finished: vectorise tasks over chunk groups
      -> driver writes detections.{parquet,gpkg,geojson}, quicklook.png, report.json

Host memory is bounded by ``max_tiles_in_flight`` (tiles read but not yet written), never by
scene size. Each finished tile is appended to the scene's ledger, which makes runs resumable.
A failing tile is retried alone up to ``tile_retries`` times, then recorded as failed: its
chunk is written as nodata and the run reports it (never a silent hole). An actor that dies
(node lost) is replaced and its tiles are requeued.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError
from tqdm import tqdm

from pipeline.config import ScanConfig
from pipeline.errors import InputError, OutputExistsError, SettingError, shown
from mim_model.output_paths import make_output_dir
from mim_model.weights import weights_sha256
from pipeline.infer import (
    InferenceSpec,
    TilePredictor,
    check_tile_scale,
    check_weights,
    pad_batch,
    resolve_threshold,
    resolve_weights_path,
)
from pipeline.ledger import STATE_DIR, TileLedger
from pipeline.normalize import NormalizationStats, check_scene
from pipeline.scene import SceneInfo, open_scene
from pipeline.stitch import MASK_TARGET, nodata_core, stitch_core
from pipeline.tasks import read_tile_task as _read_tile
from pipeline.tasks import scene_stats_task as _scene_stats
from pipeline.tasks import vectorize_task as _vectorize
from pipeline.tiling import Tile, plan_tiles
from pipeline.vectorize import Detection, sort_detections
from pipeline.write_vectors import detections_frame, write_detections
from pipeline.write_zarr import MASK_ZARR, create_mask_store, open_mask_store, write_core

__all__ = ["run_scans", "SceneResult", "check_ray_address", "check_ray_address_form", "check_resumable",
           "check_settings", "has_output", "connect_ray", "prepare_scene_dirs"]

log = logging.getLogger(__name__)

ACTOR_CALLS_IN_FLIGHT = 3  # per actor: one computing, the previous one writing, the next one queued
VECTORIZE_CHUNKS_PER_TASK = 64


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TileJob:
    """A tile of one scene, as sent to tasks and actors (small and picklable)."""

    scene_idx: int
    tile: Tile
    store_path: str
    threshold: float
    attempt: int = 0


@dataclass
class SceneRun:
    """Driver-side state of one scene during a run."""

    info: SceneInfo
    out_dir: Path
    tiles: list[Tile]
    ledger: TileLedger
    replace: bool = False  # --overwrite of an existing output: removed once the run can start
    stats: NormalizationStats | None = None
    store_path: str = ""
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed_tiles: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    vectorize_s: float = 0.0
    first_start: float | None = None
    first_batch_done: float | None = None
    last_finish: float | None = None
    vectorize_refs: list[Any] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    done: bool = False

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.tiles)

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.tiles), "done": 0, "skipped": 0, "failed": 0}
        for record in self.finished.values():
            out[record["status"]] += 1
        out["resumed"] = self.resumed_tiles
        return out


@dataclass(frozen=True)
class SceneResult:
    """What a finished scene reports back to the caller (and into report.json)."""

    scene: str
    out_dir: Path
    detections: int
    tiles: dict[str, int]
    failed_tiles: list[dict[str, Any]]
    report: dict[str, Any]


class InferenceActor:
    """Holds one MiM replica; runs batches and writes each tile's core chunk.

    Runs with ``max_concurrency=ACTOR_CALLS_IN_FLIGHT``: while one call writes its chunks,
    the next one computes and a third waits its turn, so the device never waits for the
    driver. One device thread runs the batches, one at a time.

    On a GPU, ``batch_shape`` (batch, tile side) fixes the shape the network sees: the actor
    runs one such batch at start (cuDNN's algorithm search and the kernels' first launches
    happen before the first scene's clock starts) and pads every smaller batch (a group with
    all-nodata tiles, a scene's last group, a retried tile) with empty tiles to that size,
    because cuDNN searches again, for seconds, for each new input shape.
    """

    def __init__(
        self, spec: InferenceSpec, fail_tiles: frozenset[str] = frozenset(), log_level: int = logging.WARNING,
        batch_shape: tuple[int, int] | None = None, margin_px: int = 0,
    ) -> None:
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        self.predictor = TilePredictor(spec, margin_px)
        # every forward pass runs on this one thread: cuDNN's algorithm search (cudnn.benchmark)
        # is paid again, ~2 s, by each new thread and each new input shape (measured on H200)
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="irscan-device")
        self.warmup_s = 0.0
        self.fixed_batch: int | None = None
        if batch_shape is not None and self.predictor.device.type == "cuda":
            self.fixed_batch, side = batch_shape
            warm = np.zeros((self.fixed_batch, side, side), np.float32)
            _, self.warmup_s = self._device_thread.submit(self.predictor.timed_predict, warm).result()
        self.fail_tiles = fail_tiles  # drill hook: "scene/tile_id" that must fail (IRSCAN_FAIL_TILES)
        self._stores_lock = threading.Lock()
        self._stores: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.predictor.device_name,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "threshold": self.predictor.threshold,
            "weights_sha256": self.predictor.weights_sha256,
            "warmup_s": round(self.warmup_s, 3),
        }

    def _store(self, path: str):
        with self._stores_lock:
            if path not in self._stores:
                self._stores[path] = open_mask_store(path, mode="r+")
            return self._stores[path]

    def process(self, jobs: list[TileJob], *payloads: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        hit = [j.tile.tile_id for j in jobs if f"{Path(j.store_path).parent.name}/{j.tile.tile_id}" in self.fail_tiles]
        if hit:
            raise RuntimeError(f"injected failure (IRSCAN_FAIL_TILES) for tiles {hit}")
        tiles01 = np.stack([p[0] for p in payloads])
        count = len(tiles01)
        if self.fixed_batch is not None:
            tiles01 = pad_batch(tiles01, self.fixed_batch)
        probs, infer_s = self._device_thread.submit(self.predictor.timed_predict, tiles01).result()
        probs = probs[:count]
        start = time.perf_counter()
        results = []
        for job, prob, (_, valid) in zip(jobs, probs, payloads, strict=True):
            prob_core, mask_core = stitch_core(job.tile, prob, valid, threshold=job.threshold)
            write_core(self._store(job.store_path), job.tile, prob_core, mask_core)
            results.append({"target_px": int(np.count_nonzero(mask_core == MASK_TARGET))})
        return {"results": results, "infer_s": infer_s, "write_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------- ray set-up
def _ray_address(config: ScanConfig) -> str | None:
    """``--ray-address``, else ``RAY_ADDRESS``, else None (a local Ray is started)."""
    return config.ray.address or os.environ.get("RAY_ADDRESS") or None


def check_ray_address_form(config: ScanConfig) -> tuple[str, int] | None:
    """The form of the Ray address (:func:`check_ray_address` without connecting; what
    ``irscan plan`` checks): (host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``, None for
    no address, ``auto`` or ``local``.

    Raises
    ------
    SettingError
        The address is not ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (key ``ray_address``).
    """
    address = _ray_address(config)
    if address is None or address in ("auto", "local"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        raise SettingError(f"ray address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}",
                           "ray_address")
    return host, int(port)


def check_settings(config: ScanConfig) -> float:
    """The checks of the settings alone (no scene read, no output made, Ray not contacted), in
    the order ``irscan run`` and ``irscan plan`` both make them: the weights load as MiM
    weights, the tile scaled by their input scale suits the network, the Ray address has a
    valid form. Returns the weights' input scale.

    Raises
    ------
    mim_model.errors.WeightsError, SettingError
        The first check that fails (a SettingError names its setting in ``key``).
    """
    check_weights(config.inference)
    input_scale = check_tile_scale(config.inference, config.tiling.tile_px)
    check_ray_address_form(config)
    return input_scale


def check_ray_address(config: ScanConfig, timeout_s: float = 10.0) -> None:
    """Refuse a Ray head that is not there before any work, with one line: Ray itself retries
    an unreachable ``HOST:PORT`` for minutes. ``auto`` (a cluster on this machine) is checked
    when Ray is joined (:func:`connect_ray`).

    Raises
    ------
    SettingError
        The address is not ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``, or nothing
        answers there within ``timeout_s`` (key ``ray_address``).
    """
    head = check_ray_address_form(config)
    if head is None:
        return
    address, (host, port) = _ray_address(config), head
    if ray.is_initialized():  # connect_ray keeps the connection there is
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise SettingError(f"ray address {address}: expected a running Ray head there, got "
                           f"{exc.strerror or type(exc).__name__} connecting to {host}:{port}",
                           "ray_address") from None


def connect_ray(config: ScanConfig) -> bool:
    """Join ``--ray-address``/``RAY_ADDRESS``, or start a local Ray. True if we started it.

    :func:`run_scans` has checked the address with :func:`check_ray_address` before any
    output was made; here Ray's own refusal (``auto`` with no cluster) becomes one line.

    Raises
    ------
    SettingError
        The address names no running Ray cluster (key ``ray_address``).
    """
    if ray.is_initialized():
        return False
    address = _ray_address(config)
    runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("IRSCAN_")}}
    if address:
        log.info("joining the Ray cluster at %s", address)
        try:
            if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
                # inside `ray job submit`: the job's own runtime_env applies; Ray refuses a second
                # one that sets the same variables
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except ConnectionError as exc:
            raise SettingError(f"ray address {address}: expected a running Ray cluster, got: {exc}",
                               "ray_address") from None
        return False
    log.info("starting a local Ray (dashboard %s)", "on 127.0.0.1" if config.ray.dashboard else "off")
    ray.init(
        num_cpus=config.ray.num_cpus,
        include_dashboard=config.ray.dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


def _actor_layout(config: ScanConfig) -> tuple[int, float, float]:
    """(number of actors, GPUs each, CPUs each) from the cluster's resources."""
    resources = ray.cluster_resources()
    total_gpus = float(resources.get("GPU", 0.0))
    wants_cpu = config.inference.device == "cpu"
    if config.inference.device == "cuda" and total_gpus == 0:
        if config.ray.num_actors is None:
            raise SettingError(
                "device: cuda but the Ray cluster has no GPU (yet); on an autoscaling cluster set "
                "num_actors so that GPU actors are requested and GPU nodes are added", "device"
            )
        return config.ray.num_actors, config.ray.gpus_per_actor, config.ray.cpus_per_actor
    if total_gpus > 0 and not wants_cpu:
        per = config.ray.gpus_per_actor
        count = config.ray.num_actors or max(1, int(total_gpus / per + 1e-9))
        return count, per, config.ray.cpus_per_actor
    count = config.ray.num_actors or 1
    return count, 0.0, config.ray.cpus_per_actor


# ---------------------------------------------------------------------------- preparation
def prepare_scene_dirs(
    scene_paths: list[str], out_dir: Path, config: ScanConfig, *, resume: bool
) -> list[SceneRun]:
    """Validate every scene first (fail before any work), then lay out each output folder.

    ``resume`` False: an existing output folder is an error unless ``overwrite`` (then it is
    marked to be replaced, and removed only once Ray and the device are known to work).
    ``resume`` True: a folder from the same configuration is continued.
    """
    infos = [open_scene(p, band=config.band) for p in scene_paths]
    for info in infos:
        check_scene(info, config.normalization)
    names = [i.name for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"scenes: two inputs share the file stem {dupes[0]!r}; outputs are named by stem")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for info in infos:
        scene_dir = out_dir / info.name
        replace = scene_dir.exists() and not resume
        if replace and not config.overwrite:
            raise OutputExistsError(f"{scene_dir}: output exists; pass --overwrite to replace it")
        tiles = plan_tiles(info.grid.height_px, info.grid.width_px, config.tiling)
        runs.append(SceneRun(info=info, out_dir=scene_dir, tiles=tiles, ledger=TileLedger(scene_dir), replace=replace))
    return runs


def _fingerprint_file(scene_dir: Path) -> Path:
    return scene_dir / STATE_DIR / "fingerprint.json"


def _scene_identity(info: SceneInfo) -> dict[str, Any]:
    """What tells one scene file from another of the same stem: grid, dtype, nodata and, for
    a local file, its size and modification time in ns (a file replaced by a new one of the
    same grid; a copy that does not keep the time counts as another file)."""
    identity: dict[str, Any] = {
        "shape": [info.grid.height_px, info.grid.width_px],
        "transform": [float(v) for v in tuple(info.grid.transform)[:6]],
        "crs_wkt": info.grid.crs_wkt,
        "dtype": info.dtype,
        "nodata": info.nodata,
    }
    if os.path.isfile(info.path):
        stat = os.stat(info.path)
        identity["file_size"] = stat.st_size
        identity["file_mtime_ns"] = stat.st_mtime_ns
    return identity


def has_output(scene_dir: Path) -> bool:
    """True when ``scene_dir`` holds an output a run can continue (its store and fingerprint)."""
    return (scene_dir / MASK_ZARR).exists() and _fingerprint_file(scene_dir).exists()


def _resumes(run: SceneRun) -> bool:
    """True when the run continues an existing output (its store and fingerprint are there)."""
    return not run.replace and has_output(run.out_dir)


def check_resumable(scene_dir: Path, info: SceneInfo, fingerprint: str) -> None:
    """Refuse to continue the output in ``scene_dir`` (of the scene ``info``) when it was made
    with another configuration (``fingerprint``: :meth:`ScanConfig.output_fingerprint`) or from
    another version of the scene file (:class:`OutputExistsError`); nothing is written. Outputs
    of versions that did not record the scene are checked by configuration only; a folder
    without an output to continue passes. ``irscan plan`` asks the same question."""
    if not has_output(scene_dir):
        return
    previous = json.loads(_fingerprint_file(scene_dir).read_text())
    if previous.get("fingerprint") != fingerprint:
        raise OutputExistsError(
            f"{scene_dir}: output exists from another configuration "
            f"(fingerprint {previous.get('fingerprint')} != {fingerprint}); pass --overwrite"
        )
    before, scene = previous.get("scene"), _scene_identity(info)
    changed = [k for k in scene if before is not None and json.dumps(before.get(k)) != json.dumps(scene[k])]
    if changed:
        key = changed[0]
        raise OutputExistsError(
            f"{scene_dir}: output exists from another version of the scene {info.path}"
            f" ({key}: expected {shown(before.get(key))}, got {shown(scene[key])}); pass --overwrite"
        )


def _open_or_create_store(run: SceneRun, config: ScanConfig, threshold: float, fingerprint: str) -> None:
    """Continue the output that :func:`check_resumable` accepted, or make it afresh."""
    store_path = run.out_dir / MASK_ZARR
    fp_file = _fingerprint_file(run.out_dir)
    if _resumes(run):
        open_mask_store(store_path, mode="r+")
        run.finished = {
            tid: rec for tid, rec in run.ledger.load().items() if rec.get("status") in ("done", "skipped")
        }
        run.resumed_tiles = len(run.finished)
        log.info("%s: resuming, %d of %d tiles already finished", run.info.name, len(run.finished), len(run.tiles))
    else:
        if run.out_dir.exists():
            shutil.rmtree(run.out_dir)  # --overwrite, or a half-created folder from a run that died early
        create_mask_store(store_path, run.info.grid, config.tiling, scene_name=run.info.name, threshold=threshold)
        fp_file.parent.mkdir(parents=True, exist_ok=True)
        fp_file.write_text(json.dumps({"fingerprint": fingerprint, "config": config.to_dict(),
                                       "scene": _scene_identity(run.info)}, indent=1, default=str))
    run.store_path = str(store_path)


# ---------------------------------------------------------------------------- the run
class _Group:
    """``batch_size`` consecutive tiles of one scene's plan: always run together, so a tile's
    result never depends on how a run was interrupted (batch composition is fixed)."""

    def __init__(self, jobs: list[TileJob]) -> None:
        self.jobs = jobs
        self.payloads: dict[str, Any] = {}  # tile id -> payload ref, for tiles with data
        self.skipped: list[TileJob] = []
        self.reads_left = len(jobs)


class _Scheduler:
    """Driver loop: bounded reads, batched actor calls, retries, per-scene completion.

    Tiles are grouped ``batch_size`` at a time in plan order; a group's tiles with data form
    one actor call, and its tiles are recorded in the ledger in one append once all of them
    are written. On resume a group that is not fully recorded is run again whole, with the
    same composition, so the outputs are the same bytes as an uninterrupted run's.
    """

    def __init__(self, runs: list[SceneRun], config: ScanConfig, threshold: float) -> None:
        self.runs = runs
        self.config = config
        self.threshold = threshold
        count, gpus, cpus = _actor_layout(config)
        self.actor_options = {"num_gpus": gpus, "num_cpus": cpus, "max_concurrency": ACTOR_CALLS_IN_FLIGHT}
        # CPU actors use the node's cores unless torch_threads says otherwise (pipeline.infer)
        self.inference_spec = config.inference
        self._actors_asked = time.perf_counter()
        self.actors = [self._new_actor() for _ in range(count)]
        self._describe_refs = [a.describe.remote() for a in self.actors]  # ready once they answer
        self.devices: list[dict[str, Any]] = []
        self.actor_start_s = 0.0
        self.actor_load = {a: 0 for a in self.actors}
        batch = config.batch_size
        self.max_in_flight = config.ray.max_tiles_in_flight or max(2 * batch, 8 * batch * count)
        self.tiles_in_flight = 0  # read or being read, not yet finished
        self.pending: deque[_Group] = deque()
        self.solo: deque[tuple[TileJob, Any]] = deque()  # retried tiles, run one per call
        self.ready: deque[tuple[list[TileJob], list[Any]]] = deque()  # batches ready to run
        self.reads: dict[Any, tuple[_Group, TileJob, Any]] = {}
        self.batches: dict[Any, tuple[Any, list[TileJob], list[Any]]] = {}

    def _new_actor(self):
        # IRSCAN_FAIL_TILES=scene/r0_c1,...: failure drill (retries, nodata, report), read here
        fail_tiles = frozenset(filter(None, os.environ.get("IRSCAN_FAIL_TILES", "").split(",")))
        return ray.remote(InferenceActor).options(**self.actor_options).remote(
            self.inference_spec, fail_tiles, logging.getLogger().getEffectiveLevel(),
            (self.config.batch_size, self.config.tiling.tile_px), self.config.tiling.halo_px,
        )

    # -- bookkeeping
    def _finish(self, jobs: list[TileJob], status: str, extras: list[dict[str, Any]] | None = None) -> None:
        """Record finished tiles of one scene in its ledger, in one fsynced append."""
        if not jobs:
            return
        run = self.runs[jobs[0].scene_idx]
        records = []
        for k, job in enumerate(jobs):
            record = {"tile": job.tile.tile_id, "status": status, "attempts": job.attempt + 1}
            record.update(extras[k] if extras else {})
            run.finished[job.tile.tile_id] = record
            records.append(record)
        run.ledger.append(records)
        run.last_finish = time.time()
        self.tiles_in_flight -= len(jobs)
        self.progress.update(len(jobs))

    def _fail_or_retry(self, job: TileJob, payload_ref: Any, error: str, group: _Group | None = None) -> None:
        name = self.runs[job.scene_idx].info.name
        if job.attempt < self.config.tile_retries:
            log.warning("tile %s/%s failed (attempt %d): %s; retrying alone", name, job.tile.tile_id,
                        job.attempt + 1, error)
            retry = TileJob(job.scene_idx, job.tile, job.store_path, job.threshold, job.attempt + 1)
            if payload_ref is None:  # no usable input (read failed, or lost with a node): read again
                self._submit_read(group or _Group([retry]), retry)
            else:
                self.solo.append((retry, payload_ref))
            return
        log.error("tile %s/%s failed after %d attempts: %s", name, job.tile.tile_id, job.attempt + 1, error)
        prob, mask = nodata_core(job.tile)
        write_core(open_mask_store(job.store_path, mode="r+"), job.tile, prob, mask)
        if group is not None:
            group.reads_left -= 1
            self._group_read_done(group)
        self._finish([job], "failed", [{"error": error[:500]}])

    # -- submission
    def _submit_read(self, group: _Group, job: TileJob) -> None:
        run = self.runs[job.scene_idx]
        if run.first_start is None:
            run.first_start = time.time()
        meta_ref, payload_ref = _read_tile.options(num_cpus=self.config.ray.read_cpus).remote(
            run.info, job.tile, run.stats
        )
        self.reads[meta_ref] = (group, job, payload_ref)

    def _submit_reads(self) -> None:
        while self.pending and self.tiles_in_flight + len(self.pending[0].jobs) <= max(
            self.max_in_flight, len(self.pending[0].jobs)
        ):
            group = self.pending.popleft()
            self.tiles_in_flight += len(group.jobs)
            for job in group.jobs:
                self._submit_read(group, job)

    def _free_actor(self):
        actor = min(self.actor_load, key=self.actor_load.get)
        return actor if self.actor_load[actor] < ACTOR_CALLS_IN_FLIGHT else None

    def _submit_batches(self) -> None:
        while self.solo or self.ready:
            actor = self._free_actor()
            if actor is None:
                return
            if self.solo:
                job, ref = self.solo.popleft()
                jobs, refs = [job], [ref]
            else:
                jobs, refs = self.ready.popleft()
            result_ref = actor.process.remote(jobs, *refs)
            self.batches[result_ref] = (actor, jobs, refs)
            self.actor_load[actor] += 1

    # -- completion
    def _group_read_done(self, group: _Group) -> None:
        if group.reads_left:
            return
        self._finish(group.skipped, "skipped", [{"reason": "core all nodata"}] * len(group.skipped))
        jobs = [j for j in group.jobs if j.tile.tile_id in group.payloads]  # plan order
        if jobs:
            self.ready.append((jobs, [group.payloads[j.tile.tile_id] for j in jobs]))

    def _on_read(self, meta_ref: Any) -> None:
        group, job, payload_ref = self.reads.pop(meta_ref)
        try:
            meta = ray.get(meta_ref)
        except RayError as exc:
            self._fail_or_retry(job, None, f"read failed: {_short(exc)}", group)
            return
        self.runs[job.scene_idx].read_s += meta["read_s"]
        group.reads_left -= 1
        if meta["all_nodata"]:
            group.skipped.append(job)
        else:
            group.payloads[job.tile.tile_id] = payload_ref
        self._group_read_done(group)

    def _on_batch(self, result_ref: Any) -> None:
        actor, jobs, refs = self.batches.pop(result_ref)
        try:
            out = ray.get(result_ref)
        except RayActorError as exc:
            log.error("inference actor died (%s); replacing it and requeueing %d tiles", _short(exc), len(jobs))
            self._replace_actor(actor)
            if len(jobs) == 1 and jobs[0].attempt:
                self.solo.appendleft((jobs[0], refs[0]))
            else:
                self.ready.appendleft((jobs, refs))
            return
        except RayTaskError as exc:
            self.actor_load[actor] -= 1
            lost = isinstance(exc, ObjectLostError)  # an input lost with its node: read it again
            for job, ref in zip(jobs, refs, strict=True):
                self._fail_or_retry(job, None if lost else ref, _short(exc))
            return
        self.actor_load[actor] -= 1
        run = self.runs[jobs[0].scene_idx]
        if run.first_batch_done is None:
            run.first_batch_done = time.time()
        run.infer_s += out["infer_s"]
        run.write_s += out["write_s"]
        self._finish(jobs, "done", [{"target_px": r["target_px"]} for r in out["results"]])

    def _replace_actor(self, dead: Any) -> None:
        if dead not in self.actor_load:
            return  # already replaced (it had several calls in flight)
        self.actor_load.pop(dead)
        self.actors = [a for a in self.actors if a is not dead]
        try:
            ray.kill(dead)
        except RayError:
            pass
        fresh = self._new_actor()
        self.actors.append(fresh)
        self.actor_load[fresh] = 0

    def _start_vectorize(self, run: SceneRun) -> None:
        n_rows = -(-run.info.grid.height_px // self.config.tiling.core_px)
        n_cols = -(-run.info.grid.width_px // self.config.tiling.core_px)
        chunks = [(i, j) for i in range(n_rows) for j in range(n_cols)]
        for k in range(0, len(chunks), VECTORIZE_CHUNKS_PER_TASK):
            run.vectorize_refs.append(_vectorize.remote(run.store_path, chunks[k : k + VECTORIZE_CHUNKS_PER_TASK]))

    def run(self) -> None:
        batch = self.config.batch_size
        for idx, run in enumerate(self.runs):
            for start in range(0, len(run.tiles), batch):
                tiles = run.tiles[start : start + batch]
                records = [run.finished.get(t.tile_id) for t in tiles]
                if all(records):
                    continue  # the whole group is on record
                # a group interrupted part-way is run again whole (same composition, same bytes)
                todo = [t for t, rec in zip(tiles, records, strict=True) if not rec or rec["status"] != "skipped"]
                for t in todo:
                    run.finished.pop(t.tile_id, None)
                self.pending.append(_Group([TileJob(idx, t, run.store_path, self.threshold) for t in todo]))
            run.resumed_tiles = len(run.finished)
        total = sum(len(r.tiles) for r in self.runs)
        already = sum(len(r.finished) for r in self.runs)
        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        self.progress = tqdm(total=total, initial=already, unit="tile", disable=not show, file=sys.stderr)
        try:
            # The first tiles are read while the actors load the network (and warm up on a
            # GPU): read workers start (seconds each) and the first batches wait in Ray's
            # object store, bounded by max_in_flight, instead of the GPU waiting for them.
            self._submit_reads()
            self._await_actors()
            self._loop()
        finally:
            self.progress.close()

    def _await_actors(self) -> None:
        """Wait for every actor's first answer; scene clocks start no earlier than this."""
        self.devices = ray.get(self._describe_refs)
        ready = time.time()
        self.actor_start_s = time.perf_counter() - self._actors_asked  # model load (+ GPU warm-up)
        log.info("%d inference actor(s): %s", len(self.devices),
                 ", ".join(f"{d['device']} on node {d['node'][:8]}" for d in self.devices))
        for run in self.runs:
            if run.first_start is not None:  # reads began during the actors' start
                run.first_start = max(run.first_start, ready)

    def _loop(self) -> None:
        while True:
            for run in self.runs:
                if run.complete and not run.vectorize_refs and not run.done:
                    self._start_vectorize(run)
            self._submit_reads()
            self._submit_batches()
            vec_refs = [ref for r in self.runs for ref in r.vectorize_refs if not r.done]
            waiting = list(self.reads) + list(self.batches) + vec_refs
            if not waiting:
                if all(r.done for r in self.runs):
                    return
                if not (self.pending or self.ready or self.solo):
                    raise RuntimeError("scheduler stalled: nothing in flight and scenes not finished")
                continue
            done_refs, _ = ray.wait(waiting, num_returns=1, timeout=5.0, fetch_local=False)
            for ref in done_refs:
                if ref in self.reads:
                    self._on_read(ref)
                elif ref in self.batches:
                    self._on_batch(ref)
            self._collect_vectorized()

    def _collect_vectorized(self) -> None:
        for run in self.runs:
            if run.done or not run.vectorize_refs:
                continue
            ready, _ = ray.wait(run.vectorize_refs, num_returns=len(run.vectorize_refs), timeout=0)
            if len(ready) < len(run.vectorize_refs):
                continue
            for found, seconds in ray.get(run.vectorize_refs):
                run.detections.extend(found)
                run.vectorize_s += seconds
            run.detections = sort_detections(run.detections)
            run.vectorize_refs = []
            run.done = True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------------------- outputs
def _write_scene_outputs(
    run: SceneRun, config: ScanConfig, devices: list[dict], wall_s: float, weights: dict, actor_start_s: float
) -> SceneResult:
    from pipeline.quicklook import write_quicklook

    start = time.perf_counter()
    frame = detections_frame(run.detections, run.info.grid, run.info.name)
    paths = write_detections(frame, run.out_dir)
    write_quicklook(run.info, run.detections, run.out_dir / "quicklook.png")
    output_s = time.perf_counter() - start
    counts = run.counts()
    failed = [
        {"tile": tid, "error": rec.get("error", "")} for tid, rec in sorted(run.finished.items())
        if rec["status"] == "failed"
    ]
    grid = run.info.grid
    scene_wall = (run.last_finish or time.time()) - (run.first_start or time.time())
    mpx = grid.height_px * grid.width_px / 1e6
    report = {
        "scene": run.info.name,
        "path": run.info.path,
        "band": run.info.band,
        "dtype": run.info.dtype,
        "height_px": grid.height_px,
        "width_px": grid.width_px,
        "crs_wkt": grid.crs_wkt,
        "epsg": grid.epsg,
        "transform": list(grid.transform)[:6],
        "tiles": counts,
        "failed_tiles": failed,
        "detections": len(run.detections),
        "normalization": run.stats.to_dict() if run.stats else None,
        "seconds": {
            "read_total": round(run.read_s, 3),
            "infer_total": round(run.infer_s, 3),
            "write_total": round(run.write_s, 3),
            "vectorize_total": round(run.vectorize_s, 3),
            "outputs": round(output_s, 3),
            "scene_wall": round(scene_wall, 3),
            "to_first_batch": round(run.first_batch_done - run.first_start, 3)
            if run.first_batch_done and run.first_start else None,
            "actor_start": round(actor_start_s, 3),
            "run_wall": round(wall_s, 3),
        },
        # when the scene's tiles started (its first read, or the actors' readiness if that
        # came later) and its last tile finished, Unix time: scenes of a run overlap in the pool
        "tiles_started_unix": run.first_start,
        "tiles_finished_unix": run.last_finish,
        "mpx": round(mpx, 3),
        "mpx_per_s": round(mpx / scene_wall, 3) if scene_wall > 0 else None,
        # the inference actors' share of the scene's wall time spent in forward passes
        "device_busy": round(run.infer_s / (scene_wall * len(devices)), 3) if scene_wall > 0 and devices else None,
        "devices": devices,
        # the weights and decision settings in effect (the config holds None for "the default")
        **weights,
        "config": config.to_dict(),
        "outputs": {k: str(v) for k, v in paths.items()} | {"mask": str(run.store_path)},
        "versions": _versions(),
    }
    tmp = run.out_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, run.out_dir / "report.json")
    return SceneResult(run.info.name, run.out_dir, len(run.detections), counts, failed, report)


def _versions() -> dict[str, str]:
    import rasterio
    import torch
    import zarr

    from importlib.metadata import PackageNotFoundError, version

    try:
        irscan = version("irscan")
    except PackageNotFoundError:
        irscan = "unknown"
    return {"irscan": irscan, "ray": ray.__version__, "torch": torch.__version__,
            "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__, "zarr": zarr.__version__}


def run_scans(
    scene_paths: list[str],
    out_dir: str | os.PathLike[str],
    config: ScanConfig,
    *,
    resume: bool = False,
    run_id: str | None = None,
    overviews: bool = True,
    statistics: bool = True,
) -> list[SceneResult]:
    """Scan scenes into ``out_dir/<scene stem>/``; see the module docstring.

    ``resume`` continues outputs of an earlier run with the same configuration (finished
    tiles are skipped). The output folder is locked for the run (:mod:`pipeline.lock`).
    ``overviews``/``statistics`` run :func:`pipeline.postprocess.postprocess_scene` (dask, on
    Ray) on each finished scene. Raises :class:`pipeline.errors.IrscanError` subclasses for
    user mistakes, before any work is started.
    """
    from pipeline.lock import output_lock
    from pipeline.postprocess import postprocess_scene

    wall_start = time.time()
    input_scale = check_settings(config)  # before anything is made, and not first inside a Ray actor
    check_ray_address(config)
    out = make_output_dir(out_dir, "output folder", InputError)
    with output_lock(out, run_id):  # before prepare_scene_dirs, which may remove folders
        runs = prepare_scene_dirs(scene_paths, out, config, resume=resume)
        threshold = resolve_threshold(config.inference)
        weights_path = resolve_weights_path(config.inference)
        weights_sha = weights_sha256(weights_path)
        weights = {"weights_path": str(weights_path), "weights_sha256": weights_sha, "threshold": threshold,
                   "input_scale": input_scale}
        fingerprint = config.output_fingerprint(weights_sha)
        for run in runs:
            if not run.replace:  # an output --overwrite replaces is not continued
                check_resumable(run.out_dir, run.info, fingerprint)
        started = connect_ray(config)
        try:
            _actor_layout(config)  # a device the cluster lacks fails here, before any output is made or removed
            for run in runs:
                _open_or_create_store(run, config, threshold, fingerprint)
            stats = ray.get([_scene_stats.remote(r.info, config.normalization) for r in runs])
            for run, scene_stats in zip(runs, stats, strict=True):
                run.stats = scene_stats
            scheduler = _Scheduler(runs, config, threshold)
            scheduler.run()
            wall_s = time.time() - wall_start
            results = [
                _write_scene_outputs(r, config, scheduler.devices, wall_s, weights, scheduler.actor_start_s)
                for r in runs
            ]
            if overviews or statistics:
                for result in results:
                    postprocess_scene(result.out_dir, overviews=overviews, statistics=statistics)
            return results
        finally:
            if started:
                ray.shutdown()
