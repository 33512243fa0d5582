"""The printed report: the machine, every figure, and the targets.

Tables are Markdown, so that a run's output can go into
``docs/BENCHMARKS.md`` unchanged.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench.contenders import CONTENDERS, environment_note
from bench.results import Results
from bench.targets import evaluate

REPOSITORY = Path(__file__).resolve().parent.parent


def machine_summary(scratch: Path, *, quick: bool) -> str:
    """Describe the machine, the file system under test and the versions."""
    lines = [
        f"# quantd benchmark ({'quick' if quick else 'full'} mode)",
        "",
        f"- cores: {os.cpu_count()} ({_cpu_model()})",
        f"- file system under test: {_filesystem(scratch)}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()}",
        f"- quantd: {_git_revision()}",
        f"- peers: {environment_note()}",
        f"- load average at start: {_load()}",
        "",
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _filesystem(path: Path) -> str:
    result = _command(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", str(path)])
    return f"{path} on {result}" if result else str(path)


def _git_revision() -> str:
    commit = _command(["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"])
    if not commit:
        return f"{REPOSITORY} (not a git checkout)"
    changed = _command(
        ["git", "-C", str(REPOSITORY), "status", "--porcelain", "quantd"]
    )
    return f"commit {commit}" + (
        " with uncommitted changes in quantd/" if changed else ""
    )


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(results: Results, elapsed_s: float) -> str:
    """Return the report of a finished run."""
    sections = [_figures(results), _contenders(), _targets(results), _failures(results)]
    sections.append(f"Load average at end: {_load()}; run took {elapsed_s:.0f} s.")
    return "\n\n".join(section for section in sections if section)


def _figures(results: Results) -> str:
    lines = [
        "## Figures (median, min and max over the repeats)",
        "",
        "| group | metric | what | median | min | max | unit |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for figure in results.figures.values():
        lines.append(
            f"| {figure.group} | `{figure.name}` | {figure.label} | "
            f"{_number(figure.median)} | {_number(figure.minimum)} | "
            f"{_number(figure.maximum)} | {figure.unit} |"
        )
    for name, reason in results.missing.items():
        lines.append(f"| | `{name}` | {reason} | - | - | - | |")
    return "\n".join(lines)


def _contenders() -> str:
    lines = ["## Contenders", "", "| contender | mode and durability |", "|---|---|"]
    for contender in CONTENDERS.values():
        mode = contender.mode
        if contender.multi_process_unsupported:
            mode += (
                "; measured with 1 worker only, several worker processes are "
                f"not supported: {contender.multi_process_unsupported}"
            )
        lines.append(f"| {contender.label} | {mode} |")
    return "\n".join(lines)


def _targets(results: Results) -> str:
    lines = [
        "## Targets (ratios and bounds from this run)",
        "",
        "| target | measured | required | met | shortfall |",
        "|---|---:|---:|---|---|",
    ]
    for verdict in evaluate(results):
        met = {True: "yes", False: "NO", None: "not measured"}[verdict.met]
        lines.append(
            f"| {verdict.target} | {verdict.measured} | {verdict.required} | "
            f"{met} | {verdict.shortfall} |"
        )
    return "\n".join(lines)


def _failures(results: Results) -> str:
    if not results.failures:
        return "Correctness: every item was consumed exactly once in every run."
    lines = [f"## CORRECTNESS FAILURES ({len(results.failures)})", ""]
    lines += [f"- {failure}" for failure in results.failures]
    return "\n".join(lines)
