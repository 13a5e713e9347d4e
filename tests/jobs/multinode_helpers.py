"""A two-node Ray cluster on one machine for tests: a head and a second node, each started
with ``ray start`` as its own set of processes, so that one node can be killed hard
(SIGKILL) while the other keeps running; and a scan driver to run as a process of its own
(``python -m tests.jobs.multinode_helpers ADDRESS|local SCENE OUT WEIGHTS ACTORS CPUS``): a
test process may hold a Ray of its own, which ``run_scans`` would join instead, and a test
that starts one there changes what later tests of the package see.

Every process of a node is found through an environment variable that ``ray start`` gets and
that all the node's processes inherit (raylet, GCS, agents, workers): the workers rename
themselves (``ray::InferenceActor``), so their command lines cannot be matched. Nothing here
touches Ray processes started by anything else (no ``ray stop``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["LoopbackCluster", "RayNode", "driver_command", "driver_env", "free_port", "node_pids", "scan_config"]

TAG_VAR = "TEST_RAY_NODE_TAG"  # marks a node's processes (not IRSCAN_*: the runner forwards those)
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"

# The GCS declares a node dead after health_check_failure_threshold checks, every
# health_check_period_ms, have failed (defaults: 5 x 3 s plus a 5 s initial delay); a test
# wants to see the node gone in about a second.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "300",
    "RAY_health_check_timeout_ms": "300",
    "RAY_health_check_failure_threshold": "3",
}


# `ray start --head` turns token authentication on when ~/.ray/auth_token exists (any local
# ray.init() writes one), but `ray start --address` and ray.init(address=...) never turn it on
# by themselves: the nodes and drivers of this cluster all run with it off, whatever the
# machine's state.
AUTH_DISABLED = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_pids(tag: str) -> list[int]:
    """Pids of the live processes whose environment carries ``TAG_VAR=tag``."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    found.append(pid)
            except psutil.NoSuchProcess:
                pass
    return found


@dataclass
class RayNode:
    """One ``ray start`` node: its temp dir and the tag its processes carry."""

    name: str
    temp_dir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    node_id: str | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith(TAG_VAR)}
        env.update(AUTH_DISABLED)
        env.update(extra or {})
        env[TAG_VAR] = self.tag
        return env

    def start(self, args: list[str], extra_env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # ports: the default agent port and worker port range are fixed, and the two nodes
        # (and any other Ray on this machine) would share them; 0 lets the OS pick
        cmd = [RAY, "start", *args, f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
               "--object-store-memory=100000000"]
        done = subprocess.run(cmd, check=False, env=self.env(extra_env), capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        self.node_id = self._raylet_node_id(timeout)

    def _raylet_node_id(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for pid in node_pids(self.tag):
                with contextlib.suppress(psutil.Error):
                    cmdline = psutil.Process(pid).cmdline()
                    if cmdline and Path(cmdline[0]).name == "raylet":
                        for arg in cmdline:
                            if arg.startswith("--node_id="):
                                return arg.split("=", 1)[1]
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no raylet found")

    def pids(self) -> list[int]:
        return node_pids(self.tag)

    def kill(self, sig: int = signal.SIGKILL, grace: float = 2.0, timeout: float = 20.0) -> int:
        """Send ``sig`` to every process of the node, then SIGKILL to those still alive after
        ``grace`` seconds, until none is left. Returns how many processes were signalled."""
        signalled: set[int] = set()
        start = time.monotonic()
        while True:
            pids = self.pids()
            if not pids:
                return len(signalled)
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                raise RuntimeError(f"{self.name}: processes {pids} survive SIGKILL")
            if elapsed > grace:
                sig = signal.SIGKILL
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    signalled.add(pid)
            time.sleep(0.1)


class LoopbackCluster:
    """A Ray head and a second node started with ``--node-ip-address=127.0.0.1`` (Ray
    registers both under the host's own address, as it does for any loopback address), in a
    short temp dir of their own (Ray's socket paths must stay under 108 characters)."""

    def __init__(self, head_cpus: int, worker_cpus: int, worker_resources: dict[str, float]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = RayNode("head", self.root / "h")
        self.worker = RayNode("worker", self.root / "w")
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.worker_resources = worker_resources

    def start(self) -> None:
        self.head.start(
            ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
             "--include-dashboard=false"],
            extra_env=FAST_FAILURE_DETECTION,
        )
        self.worker.start(
            [f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={self.worker_cpus}",
             f"--resources={json.dumps(self.worker_resources)}"],
            extra_env=FAST_FAILURE_DETECTION,
        )

    def start_in_background(self) -> None:
        """Start the nodes in a thread (``ray start`` mostly waits); :meth:`wait_started`
        joins it."""
        self._starter = _Thread(self.start)

    def wait_started(self, timeout: float = 180) -> None:
        self._starter.result(timeout)

    def stop(self) -> None:
        """Stop both nodes' processes (TERM, then KILL) and remove the temp dir."""
        starter = getattr(self, "_starter", None)
        if starter is not None:
            starter.thread.join(180)  # a `ray start` still running would start processes after the kill
        errors = []
        for node in (self.worker, self.head):
            try:
                node.kill(signal.SIGTERM)
            except RuntimeError as exc:
                errors.append(str(exc))
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


class _Thread:
    """Runs ``func`` in a daemon thread; :meth:`result` re-raises its exception."""

    def __init__(self, func) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func) -> None:
        try:
            func()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc

    def result(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"still running after {timeout} s")
        if self.error is not None:
            raise self.error


TILE_PX, HALO_PX = 256, 32


def scan_config(weights: str | os.PathLike[str], *, address: str | None = None, num_actors: int = 1,
                cpus_per_actor: float = 1.0):
    """The scan of the multi-node test. Batches of one tile and one torch thread per actor:
    CPU inference is deterministic, but its last bits change with the batch size and with
    the thread count (a CPU actor otherwise takes one thread per core it sees), so this way
    a tile's probabilities do not depend on which actor ran it, with which other tiles.
    256 px tiles: their read payloads (~320 kB) go to the object store of the node that read
    them, so losing a node loses some of them (smaller ones travel inline to the driver)."""
    from pipeline.config import RayOptions, ScanConfig
    from pipeline.infer import InferenceSpec
    from pipeline.tiling import TilingSpec

    return ScanConfig(
        tiling=TilingSpec(tile_px=TILE_PX, halo_px=HALO_PX),
        inference=InferenceSpec(weights_path=str(weights), device="cpu", torch_threads=1),
        ray=RayOptions(address=address, num_actors=num_actors, cpus_per_actor=cpus_per_actor),
        batch_size=1,
        progress=False,
    )


def driver_command(address: str | None, scene: Path, out: Path, weights: Path, *, num_actors: int,
                   cpus_per_actor: float) -> list[str]:
    """``python -m`` this module: a scan driver joining ``address`` (None: its own local Ray)."""
    return [sys.executable, "-m", "tests.jobs.multinode_helpers", address or "local", str(scene), str(out),
            str(weights), str(num_actors), str(cpus_per_actor)]


def driver_env(repo: Path) -> dict[str, str]:
    """Environment of a driver process: no RAY_ADDRESS (the runner would join it), token
    authentication off as on the cluster's nodes, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith(TAG_VAR)}
    env.update(AUTH_DISABLED)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _main(argv: list[str]) -> int:
    import logging

    from pipeline.runner import run_scans

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address, scene, out, weights, num_actors, cpus_per_actor = argv
    config = scan_config(weights, address=None if address == "local" else address, num_actors=int(num_actors),
                         cpus_per_actor=float(cpus_per_actor))
    results = run_scans([scene], out, config)
    print(json.dumps([{"scene": r.scene, "tiles": r.tiles, "failed": r.failed_tiles} for r in results]))
    return 1 if any(r.failed_tiles for r in results) else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
