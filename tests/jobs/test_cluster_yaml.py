"""cluster.yaml against Ray's own cluster-config schema (ray/autoscaler/ray-schema.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_valid_against_ray_schema(config: dict[str, Any]) -> None:
    jsonschema.validate(config, SCHEMA)


def test_valid_after_ray_fills_the_aws_defaults(config: dict[str, Any]) -> None:
    # what `ray up` does before launching: merge aws/defaults.yaml, then validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == config["available_node_types"]["gpu_worker"]["max_workers"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(setup_command=c.pop("setup_commands")),  # misspelt top-level key
        lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),  # misspelt node key
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),  # not an int
        lambda c: c["available_node_types"]["head_cpu"].pop("node_config"),  # required
        lambda c: c.update(idle_timeout_minutes="ten"),
    ],
    ids=["top-level-key", "node-type-key", "fractional-resource", "missing-node-config", "wrong-type"],
)
def test_schema_catches_a_wrong_key(config: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_cpu_head_autoscaling_gpu_workers_localhost_dashboard(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    gpu_types = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types)
    assert config["idle_timeout_minutes"] > 0
    assert config["provider"]["type"] in ("aws", "gcp")
    setup = " ".join(config.get("setup_commands", []) + config.get("worker_setup_commands", []))
    assert "irscan[gpu]" in setup and "--no-build-isolation" in setup and "torch==" in setup
    assert "." in config["file_mounts"].values()
