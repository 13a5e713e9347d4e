"""Fixtures of the job tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def local_ray() -> Iterator[None]:
    """One small local Ray (2 CPUs, no dashboard) shared by this package's Ray tests, shut
    down when the package is done (other packages start theirs with their own settings)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
