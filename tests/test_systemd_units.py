"""The shipped systemd units: required keys, and ``systemd-analyze
verify`` where the tool is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = UNITS_DIR / "quantd.service"
USER_UNIT = UNITS_DIR / "quantd-user.service"

COMMON_SERVICE_KEYS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "2",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "30",
    "NoNewPrivileges": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
}
SYSTEM_SERVICE_KEYS = {
    "ExecStart": "/usr/bin/env quantd run --root /var/lib/quantd",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/quantd",
    "PrivateTmp": "yes",
    "ProtectHome": "read-only",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "User": "quantd",
    "Group": "quantd",
}
USER_SERVICE_KEYS = {
    "ExecStart": "/usr/bin/env quantd run --root %h/quantd",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into sections of keys, each with every value
    assigned to it in order, as systemd.syntax(7) describes."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: assignment outside a section: {line}"
        key, equals, value = line.partition("=")
        assert equals, f"{path}: line is not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (SYSTEM_UNIT, {**COMMON_SERVICE_KEYS, **SYSTEM_SERVICE_KEYS}),
        (USER_UNIT, {**COMMON_SERVICE_KEYS, **USER_SERVICE_KEYS}),
    ],
    ids=["system", "user"],
)
def test_unit_has_required_service_keys(unit: Path, expected: dict[str, str]) -> None:
    service = parse_unit(unit)["Service"]
    for key, value in expected.items():
        assert key in service, f"{unit.name}: [Service] lacks {key}="
        assert service[key][-1] == value, f"{unit.name}: {key}={service[key][-1]}"


def test_units_are_installable() -> None:
    assert parse_unit(SYSTEM_UNIT)["Install"]["WantedBy"] == ["multi-user.target"]
    assert parse_unit(USER_UNIT)["Install"]["WantedBy"] == ["default.target"]


def test_system_unit_writes_only_its_tree() -> None:
    service = parse_unit(SYSTEM_UNIT)["Service"]
    root = service["ExecStart"][-1].split("--root", 1)[1].split()[0]

    assert service["ReadWritePaths"] == [root]


def test_units_exec_quantd_run() -> None:
    for unit in (SYSTEM_UNIT, USER_UNIT):
        command = parse_unit(unit)["Service"]["ExecStart"][-1]
        assert command.startswith("/usr/bin/env quantd run "), unit.name


def verify(unit: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    """Run ``systemd-analyze verify`` and fail on any complaint about the
    unit: the tool exits 0 on settings it ignores, so its output counts
    too."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed, so the units are not verified")
    result = subprocess.run(
        ["systemd-analyze", *extra, "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit.name in line or "ignoring" in line.lower()
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@pytest.mark.timeout(90)
def test_system_unit_passes_systemd_analyze() -> None:
    verify(SYSTEM_UNIT)


@pytest.mark.timeout(90)
def test_user_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    # The user manager needs a runtime directory, which a login session
    # would provide.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)}
    verify(USER_UNIT, "--user", env=env)


def test_verify_rejects_broken_unit(tmp_path: Path) -> None:
    """The verify helper notices a setting that systemd ignores."""
    broken = tmp_path / "broken.service"
    broken.write_text(SYSTEM_UNIT.read_text().replace("Type=notify", "Type=bogus"))

    with pytest.raises(AssertionError):
        verify(broken)
