"""Job files: a YAML description of a batch scan, validated, and its plan (no GPU, no Ray).

A job file (``irscan run JOB.yaml``, ``irscan plan JOB.yaml``)::

    name: nightly-ir            # optional; default: the job file's stem
    inputs:                     # required, non-empty list
      - scenes/*.tif            # a path or a glob (``**`` recurses); relative to this file
      - /data/extra/T18SVG.tif
      - https://example.com/cog.tif    # http(s) -> /vsicurl/..., s3:// -> /vsis3/...
      - stac: items.json        # a STAC ItemCollection (GeoJSON FeatureCollection) ...
        asset: B12              # ... and the asset of each item to scan
    output: out/nightly         # required: the output folder (relative to this file)
    scan:                       # optional: every ``irscan scan`` option, '-' -> '_'
      tile_px: 512
      halo_px: 64
      gpus_per_actor: 0.5
    postprocess:                # optional, both default true (pipeline.postprocess)
      overviews: true           # max-pooled overview levels in mask.zarr
      statistics: true          # pixel counts and a histogram in report.json

The file is read with ``yaml.safe_load`` only (no tags, no code), and nothing in it is ever
executed or imported. Unknown keys, wrong types, missing required keys, a glob matching no
file, a missing file, a STAC file that is not an ItemCollection or an item without the asset
raise :class:`pipeline.errors.JobSpecError` with one line naming the job file, the key path
(``scan.tile_px``, ``inputs[2].asset``), the expected and the actual value.

Relative paths (inputs, STAC files, ``output``, ``scan.weights``) resolve against the job
file's folder, so a job runs the same from any working directory. STAC asset hrefs resolve
against the STAC file's folder when relative.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from pipeline.errors import InputError, JobSpecError, SettingError, shown

__all__ = [
    "JOB_KEYS",
    "POSTPROCESS_KEYS",
    "JobPlan",
    "JobSpec",
    "SceneWork",
    "StacInput",
    "expand_inputs",
    "gdal_path",
    "job_key_message",
    "load_job",
    "parse_job",
    "plan_job",
]

log = logging.getLogger(__name__)

JOB_KEYS = ("name", "inputs", "output", "scan", "postprocess")
POSTPROCESS_KEYS = ("overviews", "statistics")
_REQUIRED_KEYS = ("inputs", "output")
_GLOB_MAGIC = re.compile(r"[*?\[]")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# scan option -> (accepted python types, description for messages, allowed values or None)
_NUMBER = (int, float)
_SCAN_TYPES: dict[str, tuple[tuple[type, ...], str, tuple[Any, ...] | None]] = {
    "tile_px": ((int,), "an integer", None),
    "halo_px": ((int,), "an integer", None),
    "batch_size": ((int,), "an integer", None),
    "band": ((int,), "an integer", None),
    "norm_mode": ((str,), "one of percentile, fixed, none", ("percentile", "fixed", "none")),
    "norm_low": (_NUMBER, "a number or null", None),
    "norm_high": (_NUMBER, "a number or null", None),
    "device": ((str,), "one of auto, cpu, cuda", ("auto", "cpu", "cuda")),
    "gpus_per_actor": (_NUMBER, "a number", None),
    "num_actors": ((int,), "an integer or null", None),
    "weights": ((str,), "a path or null", None),
    "threshold": (_NUMBER, "a number or null", None),
    "no_amp": ((bool,), "true or false", None),
    "tta_flips": ((bool,), "true or false", None),
    "input_scale": (_NUMBER, "a number or null", None),
    "window_px": ((int,), "an integer (0: whole tiles) or null", None),
    "window_halo_px": ((int,), "an integer or null", None),
    "ray_address": ((str,), "a string or null", None),
    "max_tiles_in_flight": ((int,), "an integer or null", None),
    "overwrite": ((bool,), "true or false", None),
    "progress": ((bool,), "true, false or null", None),
}
_NULLABLE = {
    "norm_low", "norm_high", "num_actors", "weights", "threshold", "input_scale", "window_px", "window_halo_px",
    "ray_address",
    "max_tiles_in_flight", "progress",
}
# words in the messages of the config classes -> the scan key they are about
_MESSAGE_ALIASES = {
    "low_pct": "norm_low",
    "min_value": "norm_low",
    "high_pct": "norm_high",
    "max_value": "norm_high",
    "core_px": "halo_px",
}


@dataclass(frozen=True, slots=True)
class StacInput:
    """A STAC ItemCollection input: scan asset ``asset`` of every item in ``path``.

    Attributes
    ----------
    path : str
        Absolute path of the ItemCollection JSON file.
    asset : str
        Asset key, e.g. ``"B12"`` or ``"lwir11"``.
    """

    path: str
    asset: str


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job file.

    Attributes
    ----------
    source : str
        Absolute path of the job file.
    name : str
        Job name (``name:``, default the file stem); letters, digits, ``.``, ``_``, ``-``.
    inputs : tuple of (str or StacInput)
        The ``inputs:`` entries, with local paths and globs made absolute and URLs turned
        into GDAL ``/vsi...`` paths; expanded by :func:`expand_inputs`.
    output : str
        Absolute output folder.
    scan : tuple of (str, value) pairs
        The ``scan:`` mapping as given, with ``weights`` made absolute (sorted by key).
    config : pipeline.config.ScanConfig
        ``scan`` converted by :func:`pipeline.cli.options.config_from_options`.
    overviews, statistics : bool
        ``postprocess:`` switches (default true): after the scan, write overview levels into
        each ``mask.zarr`` and add statistics to each ``report.json``
        (:mod:`pipeline.postprocess`).
    """

    source: str
    name: str
    inputs: tuple[str | StacInput, ...]
    output: str
    scan: tuple[tuple[str, Any], ...]
    config: Any  # pipeline.config.ScanConfig (not imported at module level: it pulls in torch)
    overviews: bool = True
    statistics: bool = True

    @property
    def scan_options(self) -> dict[str, Any]:
        """The ``scan:`` mapping as a dict (option name -> value)."""
        return dict(self.scan)

    def with_overwrite(self, overwrite: bool = True) -> JobSpec:
        """This job with ``scan.overwrite`` set (the ``--overwrite`` flag of ``irscan run``)."""
        from pipeline.cli.options import config_from_options

        options = {**self.scan_options, "overwrite": overwrite}
        return dataclasses.replace(
            self, scan=tuple(sorted(options.items())), config=config_from_options(options)
        )


# ------------------------------------------------------------------------------- helpers
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _err(source: str, key: str, expected: str, value: Any) -> JobSpecError:
    return JobSpecError(f"{source}: {key}: expected {expected}, got {shown(value)} ({_type_name(value)})")


def gdal_path(href: str) -> str:
    """A GDAL-readable path for a URL: ``http(s)://`` -> ``/vsicurl/``, ``s3://`` -> ``/vsis3/``.

    ``gs://`` -> ``/vsigs/``, ``az://`` -> ``/vsiaz/``, ``file://`` -> the local path; other
    strings (local paths, ``/vsi...`` paths) are returned unchanged.
    """
    lower = href.lower()
    if lower.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if lower.startswith(scheme):
            return prefix + href[len(scheme) :]
    if lower.startswith("file://"):
        return href[len("file://") :]
    return href


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def _resolve_local(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return os.path.normpath(p if p.is_absolute() else base / p)


# ------------------------------------------------------------------------------- parsing
def _parse_inputs(value: Any, source: str, base: Path) -> tuple[str | StacInput, ...]:
    expected = "a non-empty list of paths, globs or {stac: FILE, asset: KEY} mappings"
    if not isinstance(value, list) or not value:
        raise _err(source, "inputs", expected, value)
    entries: list[str | StacInput] = []
    for i, item in enumerate(value):
        key = f"inputs[{i}]"
        if isinstance(item, str) and item.strip():
            text = item.strip()
            entries.append(gdal_path(text) if _is_remote(text) else _resolve_local(text, base))
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"stac", "asset"})
            if unknown:
                raise JobSpecError(
                    f"{source}: {key}.{unknown[0]}: unknown key; expected only stac and asset"
                )
            for sub in ("stac", "asset"):
                if sub not in item:
                    raise JobSpecError(f"{source}: {key}.{sub}: required key is missing")
                if not isinstance(item[sub], str) or not item[sub].strip():
                    raise _err(source, f"{key}.{sub}", "a non-empty string", item[sub])
            stac = str(item["stac"]).strip()
            if _is_remote(stac):
                raise _err(source, f"{key}.stac", "a local ItemCollection JSON file", stac)
            entries.append(StacInput(_resolve_local(stac, base), str(item["asset"]).strip()))
        else:
            raise _err(source, key, "a path/glob string or a {stac, asset} mapping", item)
    return tuple(entries)


def _parse_scan(value: Any, source: str, base: Path) -> dict[str, Any]:
    from pipeline.cli.options import SCAN_OPTION_NAMES

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _err(source, "scan", "a mapping of scan options", value)
    options: dict[str, Any] = {}
    given_as: dict[str, Any] = {}  # option -> the key it was given as ('tile-px' and 'tile_px' are one option)
    for raw_key, option in value.items():
        key = str(raw_key).replace("-", "_")
        if key not in SCAN_OPTION_NAMES or key not in _SCAN_TYPES:
            raise JobSpecError(
                f"{source}: scan.{raw_key}: unknown scan option; expected one of "
                + ", ".join(SCAN_OPTION_NAMES)
            )
        if key in given_as:
            raise JobSpecError(
                f"{source}: scan.{raw_key}: expected each option once, got it also as"
                f" scan.{given_as[key]} ({shown(value[given_as[key]])} and {shown(option)})"
            )
        given_as[key] = raw_key
        types, expected, choices = _SCAN_TYPES[key]
        ok = option is None and key in _NULLABLE
        if not ok and isinstance(option, types):
            ok = isinstance(option, bool) == (bool in types)  # YAML true is not 1
        if ok and choices is not None and option not in choices:
            ok = False
        if ok and isinstance(option, float) and not math.isfinite(option):
            ok = False
        if not ok:
            raise _err(source, f"scan.{raw_key}", expected, option)
        if key == "weights" and option is not None:
            option = _resolve_local(option, base)
        if key in ("norm_low", "norm_high", "gpus_per_actor", "threshold", "input_scale") and option is not None:
            option = float(option)
        options[key] = option
    if options.get("norm_mode") == "fixed":
        for key in ("norm_low", "norm_high"):
            if options.get(key) is None:
                raise JobSpecError(
                    f"{source}: scan.{key}: norm_mode fixed needs norm_low and norm_high"
                    f" (source values mapped to 0 and 1), got norm_low={options.get('norm_low')},"
                    f" norm_high={options.get('norm_high')}"
                )
    return options


def _parse_postprocess(value: Any, source: str) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _err(source, "postprocess", "a mapping with overviews/statistics", value)
    out: dict[str, bool] = {}
    for key, flag in value.items():
        if key not in POSTPROCESS_KEYS:
            raise JobSpecError(
                f"{source}: postprocess.{key}: unknown key; expected only {', '.join(POSTPROCESS_KEYS)}"
            )
        if not isinstance(flag, bool):
            raise _err(source, f"postprocess.{key}", "true or false", flag)
        out[str(key)] = flag
    return out


def _config_key(message: str) -> str:
    """The scan key that a config class's error message is about (first one mentioned)."""
    from pipeline.cli.options import SCAN_OPTION_NAMES

    best: tuple[int, str] | None = None
    for word in (*SCAN_OPTION_NAMES, *_MESSAGE_ALIASES):
        m = re.search(rf"\b{re.escape(word)}\b", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), _MESSAGE_ALIASES.get(word, word))
    return f"scan.{best[1]}" if best else "scan"


def parse_job(data: Any, source: str | os.PathLike[str]) -> JobSpec:
    """Validate a job mapping (as loaded from YAML) that came from the file ``source``.

    Parameters
    ----------
    data : any
        The loaded YAML document.
    source : path-like
        The job file; relative paths resolve against its folder.

    Returns
    -------
    JobSpec

    Raises
    ------
    JobSpecError
        See the module docstring.
    """
    src_path = Path(os.path.abspath(source))
    src = str(src_path)
    base = src_path.parent
    if not isinstance(data, Mapping):
        raise _err(src, "(top level)", "a mapping with keys inputs, output[, name, scan]", data)
    unknown = [str(k) for k in data if k not in JOB_KEYS]
    if unknown:
        raise JobSpecError(
            f"{src}: {unknown[0]}: unknown key; expected only {', '.join(JOB_KEYS)}"
            " (scan options go under scan:)"
        )
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise JobSpecError(f"{src}: {key}: required key is missing")
    name = data.get("name")
    if name is None:
        name = src_path.stem
    elif not isinstance(name, str) or not _NAME.match(name):
        raise _err(src, "name", "a string of letters, digits, '.', '_' or '-'", name)
    output = data["output"]
    if not isinstance(output, str) or not output.strip():
        raise _err(src, "output", "a folder path", output)
    if _is_remote(output.strip()):
        raise _err(src, "output", "a local or mounted folder (not a URL)", output)
    inputs = _parse_inputs(data["inputs"], src, base)
    options = _parse_scan(data.get("scan"), src, base)
    post = _parse_postprocess(data.get("postprocess"), src)

    from pipeline.cli.options import config_from_options

    try:
        config = config_from_options(options)
    except InputError as err:
        raise JobSpecError(f"{src}: {_config_key(str(err))}: {err}") from err
    spec = JobSpec(
        source=src,
        name=name,
        inputs=inputs,
        output=_resolve_local(output.strip(), base),
        scan=tuple(sorted(options.items())),
        config=config,
        **post,
    )
    expand_inputs(spec)  # a glob matching nothing or a broken STAC file fails now
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (PyYAML keeps
    the last one silently; YAML requires unique keys)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *anchor' keys may be overridden
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first_line.get(key)
        except TypeError:  # unhashable: SafeLoader refuses it below
            continue
        if earlier is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first at line {earlier + 1})", key_node.start_mark
            )
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job file (``yaml.safe_load``'s loader, refusing a key given twice).

    Parameters
    ----------
    path : path-like
        The YAML job file.

    Returns
    -------
    JobSpec

    Raises
    ------
    JobSpecError
        The file is missing or unreadable, is not YAML, or does not validate (see the module
        docstring). The message names the file and the key.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError(f"{p}: job file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise JobSpecError(f"{p}: cannot read the job file ({err})") from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise JobSpecError(f"{p}: not valid YAML{where}: {problem}") from err
    return parse_job(data, p)


# ------------------------------------------------------------------------------- inputs
def _stac_hrefs(stac: StacInput, source: str, key: str) -> list[str]:
    path = Path(stac.path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobSpecError(f"{source}: {key}.stac: file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JobSpecError(f"{source}: {key}.stac: {path} is not readable JSON ({err})") from err
    if (
        not isinstance(doc, dict)
        or doc.get("type") != "FeatureCollection"
        or not isinstance(doc.get("features"), list)
    ):
        got = doc.get("type") if isinstance(doc, dict) else _type_name(doc)
        raise JobSpecError(
            f"{source}: {key}.stac: {path}: expected a STAC ItemCollection"
            f" (type FeatureCollection with a features list), got type {got!r}"
        )
    if not doc["features"]:
        raise JobSpecError(f"{source}: {key}.stac: {path}: the ItemCollection has no items")
    hrefs = []
    for n, item in enumerate(doc["features"]):
        item_id = item.get("id", f"#{n}") if isinstance(item, dict) else f"#{n}"
        assets = item.get("assets") if isinstance(item, dict) else None
        if not isinstance(assets, dict):
            raise JobSpecError(
                f"{source}: {key}.stac: {path}: item {item_id!r} (features[{n}]) has no assets mapping"
            )
        asset = assets.get(stac.asset)
        if asset is None:
            have = ", ".join(sorted(map(str, assets))) or "none"
            raise JobSpecError(
                f"{source}: {key}.asset: item {item_id!r} (features[{n}]) of {path} has no asset"
                f" {stac.asset!r}; it has: {have}"
            )
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href:
            raise JobSpecError(
                f"{source}: {key}.asset: item {item_id!r} (features[{n}]) of {path}:"
                f" asset {stac.asset!r} has no href"
            )
        if _is_remote(href):
            hrefs.append(gdal_path(href))
        else:
            local = _resolve_local(href, path.parent)
            if not os.path.exists(local):
                raise JobSpecError(
                    f"{source}: {key}.asset: item {item_id!r} (features[{n}]) of {path}:"
                    f" asset {stac.asset!r} href {href!r} -> {local} does not exist"
                )
            hrefs.append(local)
    return hrefs


def expand_inputs(spec: JobSpec) -> list[str]:
    """The job's scene paths: globs expanded, STAC hrefs resolved; sorted, de-duplicated.

    Returns
    -------
    list of str
        Absolute local paths and GDAL ``/vsi...`` paths.

    Raises
    ------
    JobSpecError
        A glob matches no file, a plain path does not exist, or a STAC input is broken.
    """
    found: set[str] = set()
    for i, entry in enumerate(spec.inputs):
        key = f"inputs[{i}]"
        if isinstance(entry, StacInput):
            found.update(_stac_hrefs(entry, spec.source, key))
        elif _is_remote(entry):
            found.add(entry)
        elif _GLOB_MAGIC.search(entry):
            matches = [m for m in glob.glob(entry, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise JobSpecError(f"{spec.source}: {key}: glob {entry} matches no file")
            found.update(os.path.normpath(m) for m in matches)
        else:
            if not os.path.isfile(entry):
                raise JobSpecError(f"{spec.source}: {key}: file {entry} does not exist")
            found.add(entry)
    return sorted(found)


# ------------------------------------------------------------------------------- plan
@dataclass(frozen=True, slots=True)
class SceneWork:
    """One scene of a plan.

    Attributes
    ----------
    path, name : str
        Scene path and file stem (= output subfolder).
    height_px, width_px : int
    dtype : str
    crs : str
        ``EPSG:n``, ``custom`` (a CRS without an EPSG code) or ``none``.
    tiles_total, tiles_finished : int
        Tiles of the plan, and those the ledger of ``OUTPUT/<name>`` records as finished
        (0 when the job overwrites, when ``run_refuses``, or when the folder holds no output
        ``irscan run`` continues, no mask store or fingerprint: run starts it over).
    run_refuses : str or None
        Why ``irscan run`` would refuse the existing output of the scene without
        ``--overwrite`` (made with another configuration or weights, or from another version
        of the scene file: :func:`pipeline.runner.check_resumable`); None when it would not.
    """

    path: str
    name: str
    height_px: int
    width_px: int
    dtype: str
    crs: str
    tiles_total: int
    tiles_finished: int
    run_refuses: str | None = None

    @property
    def tiles_todo(self) -> int:
        """Tiles a run still has to process."""
        return self.tiles_total - self.tiles_finished

    @property
    def mpx(self) -> float:
        """Scene size in megapixels."""
        return self.height_px * self.width_px / 1e6

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with ``tiles_todo`` and ``mpx``)."""
        return {
            "path": self.path,
            "name": self.name,
            "height_px": self.height_px,
            "width_px": self.width_px,
            "dtype": self.dtype,
            "crs": self.crs,
            "tiles_total": self.tiles_total,
            "tiles_finished": self.tiles_finished,
            "tiles_todo": self.tiles_todo,
            "mpx": round(self.mpx, 3),
            "run_refuses": self.run_refuses,
        }


@dataclass(frozen=True, slots=True)
class JobPlan:
    """The work of a job: its scenes with tile counts."""

    spec: JobSpec
    scenes: tuple[SceneWork, ...]

    @property
    def tiles_total(self) -> int:
        return sum(s.tiles_total for s in self.scenes)

    @property
    def tiles_finished(self) -> int:
        return sum(s.tiles_finished for s in self.scenes)

    @property
    def tiles_todo(self) -> int:
        return sum(s.tiles_todo for s in self.scenes)

    @property
    def mpx(self) -> float:
        return sum(s.mpx for s in self.scenes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: job, output, tiling, scenes and totals."""
        tiling = self.spec.config.tiling
        return {
            "job": self.spec.name,
            "source": self.spec.source,
            "output": self.spec.output,
            "tile_px": tiling.tile_px,
            "halo_px": tiling.halo_px,
            "core_px": tiling.core_px,
            "overwrite": bool(self.spec.config.overwrite),
            "scenes": [s.to_dict() for s in self.scenes],
            "totals": {
                "scenes": len(self.scenes),
                "tiles_total": self.tiles_total,
                "tiles_finished": self.tiles_finished,
                "tiles_todo": self.tiles_todo,
                "mpx": round(self.mpx, 3),
            },
        }


def _crs_label(epsg: int | None, crs_wkt: str | None) -> str:
    if epsg is not None:
        return f"EPSG:{epsg}"
    return "custom" if crs_wkt else "none"


def _finished_tiles(scene_out: Path, n_rows: int, n_cols: int) -> int:
    from pipeline.ledger import TileLedger
    from pipeline.tiling import parse_tile_id

    count = 0
    for tile_id in TileLedger(scene_out).finished_ids():
        try:
            i, j = parse_tile_id(tile_id)
        except InputError:
            continue
        count += 0 <= i < n_rows and 0 <= j < n_cols
    return count


def job_key_message(source: str, err: Exception) -> str:
    """``SOURCE: scan.KEY: error`` for an error about one scan setting, named by the job
    file's key: a :class:`pipeline.errors.SettingError` (its ``key``) or a weights file
    that does not load (:class:`mim_model.errors.WeightsError`, ``scan.weights``); any other
    error's own message (it names its file or field)."""
    from mim_model.errors import WeightsError  # here: importing mim_model imports torch

    if isinstance(err, SettingError):
        key = err.key
    elif isinstance(err, WeightsError):
        key = "weights"
    else:
        return str(err)
    return f"{source}: scan.{key}: {err}"


def _check_before_ray(spec: JobSpec) -> str:
    """The checks ``irscan run`` makes before it starts Ray (:func:`pipeline.runner.run_scans`),
    without Ray or a connection: the weights load, the scaled tile suits the network, the Ray
    address has a valid form (it is not contacted). Returns the output fingerprint.

    Raises
    ------
    JobSpecError
        One of them fails; the message names the job file and the scan key.
    """
    from mim_model.errors import WeightsError
    from mim_model.weights import weights_sha256
    from pipeline.infer import resolve_weights_path
    from pipeline.runner import check_settings

    config = spec.config
    try:
        check_settings(config)
    except (SettingError, WeightsError) as err:
        raise JobSpecError(job_key_message(spec.source, err)) from err
    return config.output_fingerprint(weights_sha256(resolve_weights_path(config.inference)))


def plan_job(spec: JobSpec) -> JobPlan:
    """Open every scene (metadata only) and count its tiles and the finished ones.

    No GPU, no Ray, no pixel read. Finished tiles come from
    ``TileLedger(OUTPUT/<scene stem>).finished_ids()`` when an output ``irscan run`` would
    continue exists (its mask store and fingerprint; 0 when the job overwrites, or when
    ``irscan run`` would refuse to continue the output: see :attr:`SceneWork.run_refuses`).
    The checks ``irscan run`` makes before Ray are made too (weights, tile size after the
    input scale, the form of the Ray address).

    Returns
    -------
    JobPlan

    Raises
    ------
    JobSpecError
        Inputs cannot be expanded (see :func:`expand_inputs`), two scenes share a file
        stem (they would write the same output folder), a check ``irscan run`` makes
        before Ray fails, or a scene cannot be scanned with the job's normalisation (an
        integer scene with norm none).
    SceneError
        A scene cannot be opened or validated.
    """
    from mim_model.output_paths import file_in_the_way
    from pipeline.errors import OutputExistsError
    from pipeline.normalize import check_scene
    from pipeline.runner import check_resumable, has_output
    from pipeline.scene import open_scene
    from pipeline.tiling import tile_grid_shape

    config = spec.config
    paths = expand_inputs(spec)
    fingerprint = _check_before_ray(spec)
    scenes: list[SceneWork] = []
    seen: dict[str, str] = {}
    out = Path(spec.output)
    blocker = file_in_the_way(out)  # what `irscan run` refuses (it makes the folder)
    if blocker is not None:
        raise JobSpecError(f"{spec.source}: output: expected a folder (or a place to make one), got a file at {blocker}")
    for path in paths:
        info = open_scene(path, band=config.band)
        try:
            check_scene(info, config.normalization)
        except SettingError as err:
            raise JobSpecError(job_key_message(spec.source, err)) from err
        if info.name in seen:
            raise JobSpecError(
                f"{spec.source}: inputs: {seen[info.name]} and {path} share the file stem"
                f" {info.name!r}; outputs are named by stem, so rename one"
            )
        seen[info.name] = path
        n_rows, n_cols = tile_grid_shape(info.grid.height_px, info.grid.width_px, config.tiling)
        refuses = None
        if not config.overwrite:
            try:
                check_resumable(out / info.name, info, fingerprint)
            except OutputExistsError as err:
                refuses = str(err)
        continues = not config.overwrite and refuses is None and has_output(out / info.name)  # else run starts over
        finished = _finished_tiles(out / info.name, n_rows, n_cols) if continues else 0
        scenes.append(
            SceneWork(
                path=path,
                name=info.name,
                height_px=info.grid.height_px,
                width_px=info.grid.width_px,
                dtype=info.dtype,
                crs=_crs_label(info.grid.epsg, info.grid.crs_wkt),
                tiles_total=n_rows * n_cols,
                tiles_finished=finished,
                run_refuses=refuses,
            )
        )
        log.debug("%s: %d tiles, %d finished", info.name, n_rows * n_cols, finished)
    return JobPlan(spec, tuple(scenes))
