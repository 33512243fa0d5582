"""Configuration: validation errors, the lookup order of config and root,
and the annotated example config."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import run_quantd

import quantd
from quantd import ConfigError
from quantd.config import _reference_document, parse_config

EXAMPLE = Path(__file__).parent.parent / "config" / "quantd.toml"
Mutation = Callable[[dict[str, Any]], None]


def _set(section: str, key: str, value: object) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc[section][key] = value

    return mutate


def _stage(stage: str, key: str, value: object) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["stages"][stage][key] = value

    return mutate


def _top(key: str, value: object) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc[key] = value

    return mutate


def _drop(section: str, key: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        del doc[section][key]

    return mutate


# (mutation, key named in the message, words of the rule)
BAD_CONFIGS: dict[str, tuple[Mutation, str, str]] = {
    "unknown queue in a stage": (
        _stage("converter", "consumes", ["nope"]),
        "stages.converter.consumes",
        "unknown queue 'nope'",
    ),
    "unknown output in a stage": (
        _stage("optimizer", "produces", ["great"]),
        "stages.optimizer.produces",
        "unknown queue or output 'great'",
    ),
    "unknown stage key": (
        _stage("converter", "consume", []),
        "stages.converter.consume",
        "unknown key",
    ),
    "workers not a list": (
        _stage("converter", "workers", "converter-*"),
        "stages.converter.workers",
        "must be a list of strings",
    ),
    "queue path not a string": (
        _set("queues", "hypotheses", 5),
        "queues.hypotheses",
        "must be a non-empty path string",
    ),
    "durable not a boolean": (
        _set("tree", "durable", "yes"),
        "tree.durable",
        "must be true or false",
    ),
    "lease not a number": (
        _set("daemon", "lease_s", "300"),
        "daemon.lease_s",
        "must be a number",
    ),
    "lease negative": (
        _set("daemon", "lease_s", -1),
        "daemon.lease_s",
        "must be a finite number greater than 0",
    ),
    "attempts not an integer": (
        _set("daemon", "max_attempts", 2.5),
        "daemon.max_attempts",
        "must be an integer",
    ),
    "unknown daemon key": (
        _set("daemon", "lease", 5),
        "daemon.lease",
        "unknown key",
    ),
    "duplicate path": (
        _set("outputs", "good", "queues/hypotheses"),
        "outputs.good",
        "already used by 'queues.hypotheses'",
    ),
    "duplicate path after normalising": (
        _set("archives", "failed", "queues/./completed/"),
        "archives.failed",
        "already used by 'archives.completed'",
    ),
    "nested paths": (
        _set("queues", "extra", "queues/hypotheses/extra"),
        "queues.extra",
        "nested",
    ),
    "quarantine inside a queue": (
        _set("tree", "quarantine", "queues/hypotheses/q"),
        "tree.quarantine",
        "nested",
    ),
    "absolute path": (
        _set("queues", "extra", "/srv/queue"),
        "queues.extra",
        "must be relative to the tree root",
    ),
    "path leaving the tree": (
        _set("tree", "quarantine", "../quarantine"),
        "tree.quarantine",
        "must be relative to the tree root and stay inside it",
    ),
    "tree root as a queue": (
        _set("queues", "extra", "."),
        "queues.extra",
        "must name a subdirectory",
    ),
    "queue inside .quantd": (
        _set("queues", "extra", ".quantd/extra"),
        "queues.extra",
        "outside .quantd",
    ),
    "bad queue name": (
        _set("queues", "Hypo Theses", "queues/x"),
        "queues.Hypo Theses",
        "lowercase letters",
    ),
    "name shared by queue and archive": (
        _set("queues", "completed", "queues/c2"),
        "queues.completed",
        "names must be unique",
    ),
    "missing archive": (
        _drop("archives", "failed"),
        "archives.failed",
        "is required",
    ),
    "no queues": (_top("queues", {}), "queues", "at least one queue"),
    "no stages": (_top("stages", {}), "stages", "at least one stage"),
    "unknown section": (_top("queus", {}), "queus", "unknown key"),
    "unknown tree key": (_set("tree", "durabel", False), "tree.durabel", "unknown"),
    "section not a table": (_top("queues", "x"), "queues", "must be a table"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_names_file_key_and_rule(tmp_path: Path, case: str) -> None:
    mutate, key, rule = BAD_CONFIGS[case]
    document = _reference_document()
    mutate(document)
    path = tmp_path / "quantd.toml"
    path.write_text(tomli_w.dumps(document))
    with pytest.raises(ConfigError) as raised:
        quantd.load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: key '{key}': ")
    assert rule in message


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "quantd.toml"
    path.write_text("[queues\nhypotheses = 1\n")
    with pytest.raises(ConfigError, match=f"^{path}: invalid TOML: "):
        quantd.load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        quantd.load_config(tmp_path / "absent.toml")


def test_built_in_errors_name_the_built_in() -> None:
    document = _reference_document()
    document["queues"] = {}
    with pytest.raises(ConfigError, match=r"^built-in configuration: key 'queues'"):
        parse_config(document, source=None)


def test_example_config_parses_to_reference() -> None:
    example = quantd.load_config(EXAMPLE)
    reference = quantd.reference_config()
    assert example.queues == reference.queues
    assert example.stages == reference.stages
    assert example.outputs == reference.outputs
    assert example.archives == reference.archives
    assert example.quarantine == reference.quarantine
    assert example.durable == reference.durable
    assert example.root is None


def test_example_config_sets_every_daemon_setting() -> None:
    """config/quantd.toml documents every daemon setting with its default."""
    text = EXAMPLE.read_text()
    for name, value in vars(quantd.reference_config().daemon).items():
        assert f"\n{name} = " in text, f"config/quantd.toml lacks daemon.{name}"
        assert getattr(quantd.load_config(EXAMPLE).daemon, name) == value


def test_stage_workers_default_and_first_match(tmp_path: Path) -> None:
    document = _reference_document()
    del document["stages"]["converter"]["workers"]
    document["stages"]["backtester"]["workers"] = ["converter-special", "bt-*"]
    config = parse_config(document, source=None)
    assert config.stages["converter"].workers == ("converter-*",)
    assert config.stage_for_worker("converter-special") == config.stages["converter"]
    assert config.stage_for_worker("bt-1") == config.stages["backtester"]
    assert config.stage_for_worker("nobody") is None


# -- lookup order ----------------------------------------------------------


def _config_with_queue(path: Path, queue: str) -> Path:
    document = _reference_document()
    document["queues"][queue] = f"queues/{queue}"
    path.write_text(tomli_w.dumps(document))
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No QUANTD_* variables, and a current directory with no config."""
    for name in list(os.environ):
        if name.startswith("QUANTD_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_config_lookup_order(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    _config_with_queue(root / "quantd.toml", "from-root")
    explicit = _config_with_queue(tmp_path / "explicit.toml", "from-flag")
    from_env = _config_with_queue(tmp_path / "env.toml", "from-env")
    for config in (None, explicit, from_env):
        quantd.init_tree(root, config)

    def queues(config: Path | None) -> set[str]:
        return set(quantd.open_tree(root, config).config.queues)

    monkeypatch.setenv("QUANTD_CONFIG", str(from_env))
    assert "from-flag" in queues(explicit)
    assert "from-env" in queues(None)
    monkeypatch.delenv("QUANTD_CONFIG")
    assert "from-root" in queues(None)
    (root / "quantd.toml").unlink()
    assert queues(None) == set(quantd.reference_config().queues)
    assert quantd.open_tree(root).config.source is None


def test_root_lookup_order(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag_root = tmp_path / "flag"
    env_root = tmp_path / "env"
    quantd.init_tree(flag_root)
    quantd.init_tree(env_root)
    monkeypatch.setenv("QUANTD_ROOT", str(env_root))
    assert quantd.open_tree(flag_root).root == flag_root
    assert quantd.open_tree().root == env_root
    monkeypatch.delenv("QUANTD_ROOT")
    with pytest.raises(quantd.TreeError, match="missing"):
        quantd.open_tree()
    monkeypatch.chdir(env_root)
    assert quantd.open_tree().root == env_root


def test_root_from_config_tree_root(tmp_path: Path, clean_env: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    document = _reference_document()
    document["tree"]["root"] = "tree"
    config = tmp_path / "elsewhere.toml"
    config.write_text(tomli_w.dumps(document))
    assert quantd.open_tree(config=config).root == root


# -- command line ----------------------------------------------------------


def test_push_with_bad_config_exits_with_message(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    document = _reference_document()
    document["stages"]["converter"]["consumes"] = ["nope"]
    (root / "quantd.toml").write_text(tomli_w.dumps(document))
    result = run_quantd(
        "push", "hypotheses", "--root", root, "--worker", "researcher-1", input="{}"
    )
    assert result.returncode == 1
    assert f"{root / 'quantd.toml'}: key 'stages.converter.consumes'" in result.stderr
    assert "unknown queue 'nope'" in result.stderr
    assert result.stdout == ""


def test_push_with_invalid_toml_from_env(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    bad = tmp_path / "bad.toml"
    bad.write_text("queues = [\n")
    result = run_quantd(
        "push",
        "hypotheses",
        "--root",
        root,
        "--worker",
        "researcher-1",
        input="{}",
        env={"QUANTD_CONFIG": str(bad)},
    )
    assert result.returncode == 1
    assert f"{bad}: invalid TOML" in result.stderr


def test_init_never_overwrites_config(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    custom = _config_with_queue(root / "quantd.toml", "mine")
    before = custom.read_bytes()
    result = run_quantd("init", "--root", root)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout
    assert custom.read_bytes() == before
    assert (root / "queues" / "mine").is_dir()


def test_init_writes_reference_config(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    first = run_quantd("init", "--root", root)
    assert first.returncode == 0, first.stderr
    assert "written" in first.stdout
    written = quantd.load_config(root / "quantd.toml")
    assert written.stages == quantd.reference_config().stages
    again = run_quantd("init", "--root", root)
    assert again.returncode == 0
    assert "kept" in again.stdout


def test_init_uses_config_tree_root(tmp_path: Path) -> None:
    """init creates the tree where the config's tree.root points, the same
    place that later commands open."""
    document = _reference_document()
    document["tree"]["root"] = "data"
    config = tmp_path / "pipeline.toml"
    config.write_text(tomli_w.dumps(document))
    work = tmp_path / "work"
    work.mkdir()
    init = run_quantd("init", "--config", config, cwd=work)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "data" / "queues" / "hypotheses").is_dir()
    assert not (work / "queues").exists()
    push = run_quantd(
        "push",
        "hypotheses",
        "--config",
        config,
        "--worker",
        "researcher-1",
        input="{}",
        cwd=work,
    )
    assert push.returncode == 0, push.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1.5"])
def test_daemon_interval_must_be_finite_and_positive(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "quantd.toml"
    reference = (Path(__file__).parent.parent / "config" / "quantd.toml").read_text()
    path.write_text(
        reference.replace(
            "reconcile_interval_s = 30.0", f"reconcile_interval_s = {value}"
        )
    )
    with pytest.raises(ConfigError, match=r"daemon\.reconcile_interval_s") as error:
        quantd.load_config(path)
    assert "finite number greater than 0" in str(error.value)
