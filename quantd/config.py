"""Configuration: the tree's queues and outputs, the stages and their
routing graph, and the daemon's settings.

Configuration is TOML, read with :mod:`tomllib`. :func:`reference_config`
is the built-in reference pipeline, the same one ``config/quantd.toml``
ships with comments.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from quantd.errors import ConfigError

CONFIG_ENV = "QUANTD_CONFIG"
ROOT_ENV = "QUANTD_ROOT"
CONFIG_FILE_NAME = "quantd.toml"
_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TOP_LEVEL_KEYS = {"tree", "queues", "outputs", "archives", "stages", "daemon"}
_TREE_KEYS = {"durable", "quarantine", "root"}


@dataclass(frozen=True)
class Stage:
    """A kind of worker and its edges in the routing graph."""

    name: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    workers: tuple[str, ...]


@dataclass(frozen=True)
class DaemonSettings:
    """Settings of ``quantd run``."""

    reconcile_interval_s: float = 30.0
    lease_s: float = 300.0
    max_attempts: int = 3
    max_item_bytes: int = 1_048_576
    max_json_depth: int = 64
    status_interval_s: float = 5.0
    status_debounce_s: float = 0.1
    status_group: str = ""
    write_grace_s: float = 5.0
    event_burst_limit: int = 10_000


@dataclass(frozen=True)
class Config:
    """A validated configuration."""

    queues: Mapping[str, str]
    outputs: Mapping[str, str]
    archives: Mapping[str, str]
    stages: Mapping[str, Stage]
    quarantine: str = "quarantine"
    durable: bool = True
    root: str | None = None
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    source: Path | None = None

    def targets(self) -> dict[str, str]:
        """Return every queue and output that an item can be pushed into."""
        return {**self.queues, **self.outputs}

    def stage_for_worker(self, worker: str) -> Stage | None:
        """Return the stage whose worker patterns match ``worker``, if any.

        Stages are tried in configuration order; the first match wins.
        """
        for stage in self.stages.values():
            if any(fnmatch.fnmatchcase(worker, p) for p in stage.workers):
                return stage
        return None


def _reference_document() -> dict[str, Any]:
    return {
        "tree": {"durable": True, "quarantine": "quarantine"},
        "queues": {
            "hypotheses": "queues/hypotheses",
            "to-convert": "queues/to-convert",
            "to-backtest": "queues/to-backtest",
            "to-optimize": "queues/to-optimize",
        },
        "archives": {
            "completed": "queues/completed",
            "failed": "queues/failed",
        },
        "outputs": {
            "good": "output/strategies/good",
            "prop_firm_ready": "output/strategies/prop_firm_ready",
            "rejected": "output/strategies/rejected",
        },
        "stages": {
            "researcher": {
                "consumes": [],
                "produces": ["hypotheses", "to-convert"],
                "workers": ["researcher-*"],
            },
            "converter": {
                "consumes": ["to-convert"],
                "produces": ["to-backtest"],
                "workers": ["converter-*"],
            },
            "backtester": {
                "consumes": ["hypotheses", "to-backtest"],
                "produces": ["to-optimize"],
                "workers": ["backtester-*"],
            },
            "optimizer": {
                "consumes": ["to-optimize"],
                "produces": ["good", "prop_firm_ready", "rejected"],
                "workers": ["optimizer-*"],
            },
        },
        "daemon": {
            "reconcile_interval_s": 30.0,
            "lease_s": 300.0,
            "max_attempts": 3,
            "max_item_bytes": 1_048_576,
            "max_json_depth": 64,
            "status_interval_s": 5.0,
            "status_debounce_s": 0.1,
            "status_group": "",
            "write_grace_s": 5.0,
            "event_burst_limit": 10_000,
        },
    }


def reference_config() -> Config:
    """Return the built-in reference pipeline configuration."""
    return parse_config(_reference_document(), source=None)


def write_reference_config(path: Path) -> bool:
    """Write the reference configuration to ``path`` unless a file exists.

    Returns whether a file was written; an existing file is never touched.
    """
    data = tomli_w.dumps(_reference_document()).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return True


def load_config(path: Path) -> Config:
    """Read and validate a configuration file, raising ConfigError."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: create it with 'quantd init' "
            f"or pass --config"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(document, source=path)


def find_config_path(explicit: str | Path | None, root: Path | None) -> Path | None:
    """Locate the configuration file.

    Order: ``explicit`` (``--config``), then ``$QUANTD_CONFIG``, then
    ``quantd.toml`` in the tree root. None means the built-in reference
    configuration applies.
    """
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    if root is not None and (root / CONFIG_FILE_NAME).is_file():
        return root / CONFIG_FILE_NAME
    return None


class _Reader:
    """Reads typed values from a TOML document, naming file and key in
    every error."""

    def __init__(self, source: Path | None) -> None:
        self.where = str(source) if source else "built-in configuration"

    def fail(self, key: str, rule: str) -> ConfigError:
        return ConfigError(f"{self.where}: key '{key}': {rule}")

    def table(self, document: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = document.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def names(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def paths(self, table: Mapping[str, Any], key: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for name, path in table.items():
            self.check_name(name, f"{key}.{name}")
            if not isinstance(path, str) or not path:
                raise self.fail(f"{key}.{name}", "must be a non-empty path string")
            self.check_path(path, f"{key}.{name}")
            result[name] = path
        return result

    def check_path(self, path: str, key: str) -> None:
        parts = Path(os.path.normpath(path)).parts
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise self.fail(
                key,
                f"path {path!r} must be relative to the tree root and stay inside it",
            )
        # normpath(".") has no parts.
        if not parts or parts[0] == ".quantd":
            raise self.fail(
                key,
                f"path {path!r} must name a subdirectory of the tree root "
                "outside .quantd",
            )

    def check_name(self, name: str, key: str) -> None:
        if not _NAME_PATTERN.fullmatch(name):
            raise self.fail(
                key,
                f"name {name!r} must be 1-64 lowercase letters, digits, "
                "'_' or '-', starting with a letter or digit",
            )


def parse_config(document: Mapping[str, Any], source: Path | None) -> Config:
    """Validate a parsed TOML document and build a Config."""
    reader = _Reader(source)
    _reject_unknown_keys(reader, document, _TOP_LEVEL_KEYS, "")
    tree = reader.table(document, "tree")
    _reject_unknown_keys(reader, tree, _TREE_KEYS, "tree.")
    queues = reader.paths(reader.table(document, "queues"), "queues")
    outputs = reader.paths(reader.table(document, "outputs"), "outputs")
    archives = reader.paths(reader.table(document, "archives"), "archives")
    if not queues:
        raise reader.fail("queues", "must name at least one queue")
    for required in ("completed", "failed"):
        if required not in archives:
            raise reader.fail(f"archives.{required}", "is required")
    quarantine = _string(reader, tree, "tree.quarantine", "quarantine")
    reader.check_path(quarantine, "tree.quarantine")
    _check_unique_targets(reader, queues, outputs, archives)
    _check_separate_paths(reader, queues, outputs, archives, quarantine)
    stages = _parse_stages(reader, document, queues, outputs)
    return Config(
        queues=queues,
        outputs=outputs,
        archives=archives,
        stages=stages,
        quarantine=quarantine,
        durable=_boolean(reader, tree, "tree.durable", True),
        root=_optional_string(reader, tree, "tree.root"),
        daemon=_parse_daemon(reader, reader.table(document, "daemon")),
        source=source,
    )


def _check_unique_targets(
    reader: _Reader,
    queues: Mapping[str, str],
    outputs: Mapping[str, str],
    archives: Mapping[str, str],
) -> None:
    seen: dict[str, str] = {}
    for section, table in (("queues", queues), ("outputs", outputs)):
        for name in table:
            if name in seen or name in archives:
                raise reader.fail(
                    f"{section}.{name}",
                    "names must be unique across queues, outputs and archives",
                )
            seen[name] = section


def _check_separate_paths(
    reader: _Reader,
    queues: Mapping[str, str],
    outputs: Mapping[str, str],
    archives: Mapping[str, str],
    quarantine: str,
) -> None:
    """Reject two directories that are the same or nested: a claimer would
    take the inner directory's entries, or a directory itself, for items."""
    keyed = [
        *((f"queues.{n}", p) for n, p in queues.items()),
        *((f"outputs.{n}", p) for n, p in outputs.items()),
        *((f"archives.{n}", p) for n, p in archives.items()),
        ("tree.quarantine", quarantine),
    ]
    seen: list[tuple[str, tuple[str, ...]]] = []
    for key, path in keyed:
        parts = Path(os.path.normpath(path)).parts
        for other_key, other in seen:
            if parts == other:
                raise reader.fail(
                    key, f"path {path!r} is already used by '{other_key}'"
                )
            shorter = min(len(parts), len(other))
            if parts[:shorter] == other[:shorter]:
                raise reader.fail(
                    key,
                    f"path {path!r} and the path of '{other_key}' are nested; "
                    "give every queue, output, archive and the quarantine a "
                    "directory of its own",
                )
        seen.append((key, parts))


def _reject_unknown_keys(
    reader: _Reader, table: Mapping[str, Any], known: set[str], prefix: str
) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        allowed = ", ".join(sorted(known))
        raise reader.fail(f"{prefix}{unknown[0]}", f"unknown key; known: {allowed}")


def _parse_stages(
    reader: _Reader,
    document: Mapping[str, Any],
    queues: Mapping[str, str],
    outputs: Mapping[str, str],
) -> dict[str, Stage]:
    table = reader.table(document, "stages")
    if not table:
        raise reader.fail("stages", "must define at least one stage")
    stages: dict[str, Stage] = {}
    for name, body in table.items():
        key = f"stages.{name}"
        reader.check_name(name, key)
        if not isinstance(body, dict):
            raise reader.fail(key, "must be a table")
        unknown = set(body) - {"consumes", "produces", "workers"}
        if unknown:
            raise reader.fail(f"{key}.{sorted(unknown)[0]}", "unknown key")
        consumes = reader.names(body.get("consumes", []), f"{key}.consumes")
        produces = reader.names(body.get("produces", []), f"{key}.produces")
        workers = reader.names(body.get("workers", [f"{name}-*"]), f"{key}.workers")
        for queue in consumes:
            if queue not in queues:
                raise reader.fail(
                    f"{key}.consumes",
                    f"unknown queue {queue!r}; known queues: {', '.join(queues)}",
                )
        for target in produces:
            if target not in queues and target not in outputs:
                known = ", ".join([*queues, *outputs])
                raise reader.fail(
                    f"{key}.produces",
                    f"unknown queue or output {target!r}; known: {known}",
                )
        stages[name] = Stage(name, consumes, produces, workers)
    return stages


def _parse_daemon(reader: _Reader, table: Mapping[str, Any]) -> DaemonSettings:
    defaults = DaemonSettings()
    unknown = set(table) - set(DaemonSettings.__dataclass_fields__)
    if unknown:
        raise reader.fail(f"daemon.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for name in DaemonSettings.__dataclass_fields__:
        default = getattr(defaults, name)
        value = table.get(name, default)
        key = f"daemon.{name}"
        if isinstance(default, str):
            if not isinstance(value, str):
                raise reader.fail(key, f"must be a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise reader.fail(key, f"must be a number, got {value!r}")
        elif not math.isfinite(value) or value <= 0:
            raise reader.fail(
                key, f"must be a finite number greater than 0, got {value!r}"
            )
        elif isinstance(default, int) and not isinstance(value, int):
            raise reader.fail(key, f"must be an integer, got {value!r}")
        values[name] = value
    return DaemonSettings(**values)


def _string(reader: _Reader, table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key.rsplit(".", 1)[-1], default)
    if not isinstance(value, str) or not value:
        raise reader.fail(key, f"must be a non-empty string, got {value!r}")
    return value


def _optional_string(reader: _Reader, table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key.rsplit(".", 1)[-1])
    if value is None:
        return None
    return _string(reader, table, key, "")


def _boolean(
    reader: _Reader, table: Mapping[str, Any], key: str, default: bool
) -> bool:
    value = table.get(key.rsplit(".", 1)[-1], default)
    if not isinstance(value, bool):
        raise reader.fail(key, f"must be true or false, got {value!r}")
    return value
