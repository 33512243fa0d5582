"""The ``quantd`` command, driven from a real bash script and as a
subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import quantd_env, run_quantd, wait_until, write_reference_item

import quantd
from quantd.cli import EXIT_CLAIM_LOST, EXIT_NOTHING_TO_CLAIM
from quantd.holder import HolderKey
from quantd.liveness import Verdict, check_process

# A shell worker's whole life. $OUT collects what the test checks.
ROUND_TRIP = r"""
set -u
Q="$PYTHON -m quantd"
cd "$OUT"
$Q init --root "$ROOT" > init.txt || exit 10
for priority in low high medium; do
    echo "{\"priority_was\": \"$priority\"}" \
        | $Q push hypotheses --root "$ROOT" --worker researcher-1 \
            --priority "$priority" >> pushed.txt || exit 11
done

$Q claim --root "$ROOT" --worker backtester-1 --json > claim1.json || exit 12
first=$($Q claim --root "$ROOT" --worker backtester-1 --json < /dev/null \
    | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["item"]["id"])')
echo "$first" > first_id.txt
id1=$("$PYTHON" -c 'import json; print(json.load(open("claim1.json"))["item"]["id"])')
echo '{"stage2": true}' | $Q route "$id1" to-optimize --root "$ROOT" \
    --worker backtester-1 --json > route.json || exit 13
$Q complete "$first" --root "$ROOT" --worker backtester-1 --json \
    > complete.json || exit 14

third=$($Q claim --root "$ROOT" --worker backtester-1) || exit 15
$Q fail "$third" --reason "no data for ES" --root "$ROOT" \
    --worker backtester-1 --json > fail.json || exit 16

$Q claim --root "$ROOT" --worker backtester-1 2> empty.err
echo $? > empty_code.txt
$Q complete no-such-item --root "$ROOT" --worker backtester-1 2> lost.err
echo $? > lost_code.txt
$Q complete "$first" --root "$ROOT" --worker backtester-1 2> again.err
echo $? > again_code.txt

held=$($Q claim to-optimize --root "$ROOT" --worker optimizer-1) || exit 17
echo "$held" > held_id.txt
echo $$ > shell_pid.txt
"""


def _run_script(
    tmp_path: Path, script: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "worker.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        env=quantd_env({"PYTHON": sys.executable, **env}),
        timeout=120,
        check=False,
    )


def _json(path: Path) -> dict[str, object]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


@pytest.mark.timeout(150)
def test_shell_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    out = tmp_path / "out"
    out.mkdir()
    result = _run_script(tmp_path, ROUND_TRIP, {"ROOT": str(root), "OUT": str(out)})
    assert result.returncode == 0, result.stderr
    tree = quantd.open_tree(root)

    assert "written" in (out / "init.txt").read_text()
    low, high, medium = (out / "pushed.txt").read_text().split()

    claim1 = _json(out / "claim1.json")
    item = claim1["item"]
    assert isinstance(item, dict)
    assert item["id"] == high
    assert item["payload"] == {"priority_was": "high"}
    assert claim1["queue"] == "hypotheses"
    assert (out / "first_id.txt").read_text().strip() == medium

    route = _json(out / "route.json")
    assert route["parent_id"] == high
    assert route["queue"] == "to-optimize"
    assert _json(out / "complete.json") == {"id": medium, "status": "completed"}
    assert _json(out / "fail.json") == {"id": low, "status": "failed"}
    failed = _json(tree.archive_dir("failed") / f"{low}.json")
    assert failed["last_error"] == "no data for ES"
    routed = _json(tree.archive_dir("completed") / f"{high}.json")
    assert routed["successor_id"] == route["id"]

    assert int((out / "empty_code.txt").read_text()) == EXIT_NOTHING_TO_CLAIM
    assert "nothing to claim" in (out / "empty.err").read_text()
    assert int((out / "lost_code.txt").read_text()) == EXIT_CLAIM_LOST
    assert "no-such-item" in (out / "lost.err").read_text()
    assert int((out / "again_code.txt").read_text()) == EXIT_CLAIM_LOST

    held = (out / "held_id.txt").read_text().strip()
    assert held == route["id"]
    shell_pid = int((out / "shell_pid.txt").read_text())
    (holder_dir,) = tree.claims_dir("to-optimize").iterdir()
    assert [p.name.endswith(f"~{held}.json") for p in holder_dir.iterdir()] == [True]
    key = HolderKey.parse(holder_dir.name)
    assert key is not None
    assert key.pid == shell_pid
    record = _json(tree.holders / f"{holder_dir.name}.json")
    assert record["pid"] == shell_pid
    assert record["worker"] == "optimizer-1"
    assert record["stage"] == "optimizer"
    assert check_process(key).verdict is Verdict.DEAD


@pytest.mark.timeout(60)
def test_claim_held_for_pid_option(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    run_quantd(
        "push", "hypotheses", "--root", root, "--worker", "researcher-1", input="{}"
    )
    result = run_quantd(
        "claim", "--root", root, "--worker", "backtester-1", "--pid", str(os.getpid())
    )
    assert result.returncode == 0, result.stderr
    tree = quantd.open_tree(root)
    (holder_dir,) = tree.claims_dir("hypotheses").iterdir()
    key = HolderKey.parse(holder_dir.name)
    assert key == HolderKey.for_pid(os.getpid())
    assert check_process(key).verdict is Verdict.ALIVE


@pytest.mark.timeout(60)
def test_worker_and_stage_from_environment(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    env = {"QUANTD_ROOT": str(root), "QUANTD_WORKER": "anyone"}
    refused = run_quantd("push", "to-convert", input="{}", env=env)
    assert refused.returncode == 1
    assert "has no stage" in refused.stderr
    pushed = run_quantd(
        "push", "to-convert", input="{}", env={**env, "QUANTD_STAGE": "researcher"}
    )
    assert pushed.returncode == 0, pushed.stderr
    claimed = run_quantd("claim", "--json", env={**env, "QUANTD_STAGE": "converter"})
    assert claimed.returncode == 0, claimed.stderr
    assert json.loads(claimed.stdout)["item"]["id"] == pushed.stdout.strip()


@pytest.mark.timeout(60)
def test_exact_id_complete_from_cli(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    tree, _ = quantd.init_tree(root)
    write_reference_item(tree.queue_dir("hypotheses"), "hyp-1", priority="high")
    write_reference_item(tree.queue_dir("hypotheses"), "hyp-10", priority="high")
    common = ["--root", root, "--worker", "backtester-1"]
    for _ in range(2):
        assert run_quantd("claim", *common).returncode == 0
    done = run_quantd("complete", "hyp-1", *common)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tree.archive_dir("completed")) == ["hyp-1.json"]
    (holder_dir,) = tree.claims_dir("hypotheses").iterdir()
    assert os.listdir(holder_dir) == ["hyp-10.json"]
    prefix = run_quantd("complete", "hyp", *common)
    assert prefix.returncode == EXIT_CLAIM_LOST
    assert os.listdir(holder_dir) == ["hyp-10.json"]


@pytest.mark.timeout(60)
def test_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    common = ["--root", root, "--worker", "researcher-1"]
    bad_json = run_quantd("push", "hypotheses", *common, input="{not json")
    assert bad_json.returncode == 1
    assert "invalid JSON payload in stdin" in bad_json.stderr
    not_object = run_quantd("push", "hypotheses", *common, input="[1]")
    assert not_object.returncode == 1
    assert "must be a JSON object" in not_object.stderr
    unknown = run_quantd("push", "nowhere", *common, input="{}")
    assert unknown.returncode == 1
    assert "no queue or output named 'nowhere'" in unknown.stderr
    no_worker = run_quantd("push", "hypotheses", "--root", root, input="{}")
    assert no_worker.returncode == 1
    assert "no worker id" in no_worker.stderr
    bad_priority = run_quantd(
        "push", "hypotheses", *common, "--priority", "urgent", input="{}"
    )
    assert bad_priority.returncode == 2
    no_tree = run_quantd("claim", "--root", tmp_path / "absent", "--worker", "w")
    assert no_tree.returncode == 1
    assert "not found" in no_tree.stderr


@pytest.mark.timeout(60)
def test_claim_wait_from_cli(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    waited = run_quantd(
        "claim", "--root", root, "--worker", "backtester-1", "--wait", "0.3"
    )
    assert waited.returncode == EXIT_NOTHING_TO_CLAIM


@pytest.mark.timeout(60)
def test_heartbeat_from_cli(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    common = ["--root", root, "--worker", "backtester-1"]
    run_quantd(
        "push", "hypotheses", "--root", root, "--worker", "researcher-1", input="{}"
    )
    item_id = run_quantd("claim", *common).stdout.strip()
    assert run_quantd("heartbeat", item_id, *common).returncode == 0
    lost = run_quantd("heartbeat", "gone", *common)
    assert lost.returncode == EXIT_CLAIM_LOST


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pid_option", ["", "--pid $$"])
def test_claim_in_subshell_held_for_shell(tmp_path: Path, pid_option: str) -> None:
    """In ``$(quantd claim | ...)`` the command's parent is a subshell that
    exits at once; the claim is held for the script's shell instead."""
    root = tmp_path / "tree"
    quantd.init_tree(root)
    script = f"""
    Q="$PYTHON -m quantd"
    R={shlex.quote(str(root))}
    echo '{{}}' | $Q push hypotheses --root "$R" --worker researcher-1 > /dev/null
    id=$($Q claim --root "$R" --worker backtester-1 {pid_option} --json | cat)
    echo $$
    sleep 30
    """
    path = tmp_path / "pid.sh"
    path.write_text(script)
    process = subprocess.Popen(
        ["bash", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=quantd_env({"PYTHON": sys.executable}),
    )
    try:
        assert process.stdout is not None
        shell_pid = int(process.stdout.readline())
        tree = quantd.open_tree(root)
        (holder_dir,) = tree.claims_dir("hypotheses").iterdir()
        key = HolderKey.parse(holder_dir.name)
        assert key is not None
        assert key.pid == shell_pid
        assert check_process(key).verdict is Verdict.ALIVE
    finally:
        process.kill()
        process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("pid", "message"),
    [("999999999", "no process with pid"), ("-5", "invalid pid"), ("0", "invalid pid")],
)
def test_claim_pid_invalid(tmp_path: Path, pid: str, message: str) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    result = run_quantd(
        "claim", "--root", root, "--worker", "backtester-1", "--pid", pid
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", ".hidden", "x\x01y"])
def test_finish_hostile_id_rejected(tmp_path: Path, bad_id: str) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    result = run_quantd("complete", bad_id, "--root", root, "--worker", "backtester-1")
    assert result.returncode == 1
    assert "invalid item id" in result.stderr


# Address-space cap for commands fed an endless source, so a command that
# reads without limit fails on its own instead of exhausting the machine.
ENDLESS_SOURCE_LIMIT_KB = 2_000_000


def _run_bash(
    script: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"ulimit -v {ENDLESS_SOURCE_LIMIT_KB}\n{script}"],
        capture_output=True,
        text=True,
        env=quantd_env({"PYTHON": sys.executable, **env}),
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "where"),
    [
        ('"$PYTHON" -m quantd push hypotheses /dev/zero $COMMON', "/dev/zero"),
        ('yes | "$PYTHON" -m quantd push hypotheses $COMMON', "stdin"),
    ],
)
def test_push_endless_payload_rejected(
    tmp_path: Path, command: str, where: str
) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    common = f"--root {shlex.quote(str(root))} --worker researcher-1"
    result = _run_bash(command, {"COMMON": common})
    assert result.returncode == 1, result.stderr
    assert f"payload in {where} is larger than the limit" in result.stderr
    assert "daemon.max_item_bytes (1048576 bytes)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(quantd.open_tree(root).queue_dir("hypotheses").iterdir())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"sharpe": NaN}', "NaN: NaN and Infinity are not JSON"),
        ('{"sharpe": -Infinity}', "-Infinity: NaN and Infinity are not JSON"),
        ("[" * 100_000, "nested too deeply to parse"),
        ('{"a":' * 100 + "1" + "}" * 100, "limit daemon.max_json_depth (64"),
    ],
    ids=["nan", "infinity", "unparsable-depth", "too-deep"],
)
def test_push_invalid_payload_one_line(
    tmp_path: Path, payload: str, message: str
) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    result = run_quantd(
        "push", "hypotheses", "--root", root, "--worker", "researcher-1", input=payload
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not list(quantd.open_tree(root).queue_dir("hypotheses").iterdir())


@pytest.mark.timeout(60)
def test_positionals_after_options(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    payload = tmp_path / "idea.json"
    payload.write_text('{"title": "RSI divergence"}')
    pushed = run_quantd(
        "push", "to-convert", "--worker", "researcher-0", payload, "--root", root
    )
    assert pushed.returncode == 0, pushed.stderr
    claimed = run_quantd(
        "claim", "--root", root, "--worker", "converter-0", "to-convert", "--json"
    )
    assert claimed.returncode == 0, claimed.stderr
    item_id = json.loads(claimed.stdout)["item"]["id"]
    assert json.loads(claimed.stdout)["item"]["payload"] == {"title": "RSI divergence"}
    routed = run_quantd(
        "route", item_id, "to-backtest", "--worker", "converter-0", payload,
        "--root", root, "--pid", str(os.getpid()),
    )  # fmt: skip
    assert routed.returncode == 0, routed.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["push", "hypotheses", "a.json", "extra"], "usage: quantd push "),
        (["claim", "--bogus"], "usage: quantd claim "),
        (["complete", "a", "b"], "usage: quantd complete "),
    ],
)
def test_usage_error_shows_command_usage(
    tmp_path: Path, args: list[str], usage: str
) -> None:
    result = run_quantd(*args, "--root", tmp_path, "--worker", "researcher-1")
    assert result.returncode == 2
    assert result.stderr.startswith(usage)
    assert "unrecognized arguments" in result.stderr


def _watches_inotify(pid: int) -> bool:
    """Return whether process ``pid`` has an inotify instance open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        return False
    for name in names:
        try:
            if os.readlink(fd_dir / name) == "anon_inode:inotify":
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.timeout(120)
def test_claim_wait_stops_when_holder_dies(tmp_path: Path) -> None:
    """``quantd claim --wait`` holds its claim for the calling shell; once
    that shell is SIGKILLed, the waiting command must not claim for it."""
    root = tmp_path / "tree"
    quantd.init_tree(root)
    script = f"""
    R={shlex.quote(str(root))}
    O={shlex.quote(str(tmp_path))}
    ( "$PYTHON" -m quantd claim --wait 120 --root "$R" --worker backtester-1 \\
        > "$O/claim.out" 2> "$O/claim.err"
      echo $? > "$O/claim.rc" ) &
    echo $!
    wait
    """
    shell = subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=quantd_env({"PYTHON": sys.executable}),
    )
    subshell_pid = 0
    try:
        assert shell.stdout is not None
        subshell_pid = int(shell.stdout.readline())
        wait_until(lambda: _claim_pid(subshell_pid) is not None, timeout_s=60)
        claim_pid = _claim_pid(subshell_pid)
        assert claim_pid is not None
        wait_until(lambda: _watches_inotify(claim_pid), timeout_s=60)

        shell.kill()
        shell.wait(timeout=30)
        quantd.Worker(quantd.open_tree(root), "researcher-1").push("hypotheses", {})

        rc_file = tmp_path / "claim.rc"
        wait_until(rc_file.exists, timeout_s=60)
        wait_until(lambda: rc_file.read_text().strip() != "", timeout_s=10)
    finally:
        shell.kill()
        shell.wait(timeout=30)
        assert shell.stdout is not None
        shell.stdout.close()
        claim_pid = _claim_pid(subshell_pid) if subshell_pid else None
        if claim_pid is not None:
            os.kill(claim_pid, signal.SIGKILL)

    assert rc_file.read_text().strip() == "1"
    error = (tmp_path / "claim.err").read_text()
    assert "has exited" in error
    assert "Traceback" not in error
    assert (tmp_path / "claim.out").read_text() == ""
    tree = quantd.open_tree(root)
    queue = tree.queue_dir("hypotheses")
    (pending,) = [p for p in queue.iterdir() if p.name.endswith(".json")]
    assert json.loads(pending.read_bytes())["attempts"] == 0
    claims = tree.claims_dir("hypotheses")
    assert not claims.exists() or not any(
        held for holder in claims.iterdir() for held in holder.iterdir()
    )


def _claim_pid(subshell_pid: int) -> int | None:
    """Return the pid of the quantd command that the subshell runs."""
    try:
        children = psutil.Process(subshell_pid).children()
    except psutil.NoSuchProcess:
        return None
    return children[0].pid if children else None


@pytest.mark.timeout(60)
def test_messages_name_what_was_checked(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    common = ["--root", root]

    empty = run_quantd("claim", *common, "--worker", "backtester-1")
    assert empty.returncode == EXIT_NOTHING_TO_CLAIM
    assert "nothing to claim in hypotheses, to-backtest" in empty.stderr

    lost = run_quantd("complete", "nope", *common, "--worker", "backtester-1")
    assert lost.returncode == EXIT_CLAIM_LOST
    assert f"under holder pid {os.getpid()}" in lost.stderr
    assert "recovered because the process that claimed it died" in lost.stderr
    assert "--pid $$" in lost.stderr
    assert "timeout" in lost.stderr

    for args in (
        ["push", "hypotheses", "--worker", "researcher-1"],
        ["route", "some-id", "to-optimize", "--worker", "backtester-1"],
    ):
        blank = run_quantd(*args, *common, input="")
        assert blank.returncode == 1
        assert "the payload on stdin is empty; pass a JSON object" in blank.stderr

    patterns = "researcher: researcher-*; converter: converter-*"
    unmatched_push = run_quantd("push", "hypotheses", *common, "--worker", "x-1")
    assert unmatched_push.returncode == 1
    assert f"matches no stage's 'workers' pattern ({patterns}" in (
        unmatched_push.stderr
    )
    unmatched_claim = run_quantd("claim", *common, "--worker", "x-1")
    assert unmatched_claim.returncode == 1
    assert f"matches no stage's 'workers' pattern ({patterns}" in (
        unmatched_claim.stderr
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seconds", ["-1", "nan", "NaN", "soon"])
def test_claim_wait_invalid_is_usage_error(tmp_path: Path, seconds: str) -> None:
    result = run_quantd(
        "claim", "--root", tmp_path, "--worker", "backtester-1", "--wait", seconds
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: quantd claim ")
    assert f"invalid number of seconds: {seconds!r}" in result.stderr
