"""The chaos driver: runs the daemon and light workers over a tree, breaks
them on purpose, drains the pipeline, then hands the tree to the checker.

Every chaos decision (which process, when, which fault point, which bad
file) comes from one ``random.Random(seed)``. The operating system still
schedules the processes, so a rerun with the same seed repeats the same
decisions, not the same interleaving.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from quantd import Tree
from soak_lib import badfiles, plan
from soak_lib.checker import Report, Violation, check
from soak_lib.observe import claims_of, finished_count, is_empty, listdir, pending_count
from soak_lib.procs import Proc, spawn, wait_until_stopped
from soak_lib.rundir import RunDirectory, read_logs
from soak_lib.worker import BUG_FAULT_POINT

WORKER_FAULT_STEPS = (
    "claim.after_rename",
    "route.after_draft",
    "route.after_commit",
    "route.after_push",
    "completed.after_record",
    "completed.after_rename",
    "failed.after_record",
    "failed.after_rename",
)
RESEARCHER_FAULT_STEPS = ("push.after_write", "push.after_rename")
DAEMON_FAULT_STEPS = ("recover.after_take", "recover.after_record")
# Mean seconds between two chaos events of each kind; the first event of
# each kind comes early, so a one-minute run has every kind.
CHAOS_MEAN_INTERVAL_S = {
    "worker_kill": 1.0,
    "daemon_kill": 7.0,
    "stop": 15.0,
    "bad_file": 1.5,
    "burst": 30.0,
    "second_daemon": 20.0,
}
CHAOS_FIRST_AT_S = {
    "worker_kill": 1.0,
    "daemon_kill": 3.0,
    "stop": 4.0,
    "bad_file": 1.0,
    "burst": 8.0,
    "second_daemon": 6.0,
}
# A daemon that has not finished its first sweep this long after its
# start hangs: sweeps of the soak's trees take a few seconds at most.
DAEMON_READY_TIMEOUT_S = 60.0
MAX_HUNG_REPORTS = 3
# A second daemon on a tree whose lock is held must exit within this
# time; it is generous because a loaded machine can take seconds to start
# Python.
SECOND_DAEMON_EXIT_S = 60.0
WORKER_FAULT_PROBABILITY = 0.4
DAEMON_FAULT_PROBABILITY = 0.5
BUG_FAULT_PROBABILITY = 0.8
TICK_S = 0.02
STATUS_WRITE_WAIT_S = 3.0
PROGRESS_EVERY_S = 15.0
# How often the driver lists the tree to see whether the chaos is over.
LOOK_EVERY_S = 1.0
# A run whose archives and outputs do not grow for this long is stalled.
STALL_LIMIT_S = 120.0
INOTIFY_LIMIT_PATH = Path("/proc/sys/fs/inotify/max_queued_events")


@dataclass
class Options:
    """Settings of one soak run; see ``scripts/soak --help``."""

    items: int | None
    minutes: float | None
    workers_per_stage: int
    seed: int
    root: Path
    keep: bool
    json_path: Path | None
    inject_bug: str | None
    work_ms: float
    drain_timeout_s: float


@dataclass
class StoppedWorker:
    proc: Proc
    until: float
    claims: list[Path]
    daemon_up: bool


class Soak:
    """One soak run over a fresh tree in ``options.root``."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.run_id = f"soak-{options.seed}-{os.getpid()}-{int(time.time())}"
        self.run_dir = RunDirectory(options.root)
        self.counts: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self.dropped: list[badfiles.Dropped] = []
        self.workers: dict[tuple[str, int], Proc] = {}
        self.daemon: Proc | None = None
        self.daemon_restart_at = 0.0
        self.researchers_done: set[int] = set()
        self.stopped: list[StoppedWorker] = []
        self.generation = itertools.count()
        self.fault_cycles: dict[str, list[str]] = {}
        self.bad_kind_index = 0
        self.kill_daemon_at: float | None = None
        self.kill_in_first_sweep = False
        self.kill_daemon_after_start = False
        self.daemon_log_offset = 0
        self.daemon_spawned_at = 0.0
        self.daemon_ready = False
        self.second_daemon: tuple[Proc, float] | None = None
        self.started = 0.0
        self.next_at: dict[str, float] = {}
        self.tree: Tree

    # -- set-up ---------------------------------------------------------------

    def setup(self) -> None:
        self.tree = self.run_dir.create(self.run_id, self.options.seed)

    # -- the run --------------------------------------------------------------

    def run(self) -> Report:
        """Run chaos, drain, stop everything and check; return the report."""
        self.setup()
        self.started = time.monotonic()
        self.next_at = {
            kind: self.started + first for kind, first in CHAOS_FIRST_AT_S.items()
        }
        try:
            self._chaos_phase()
            self._drain_phase()
            self._shutdown()
        finally:
            self._kill_all()
        self.counts["duration_s"] = round(time.monotonic() - self.started)
        report = check(self.tree, self.run_id, self.run_dir.ledger_ids(), self.dropped)
        self._read_logs(report)
        report.violations[:0] = self.violations
        report.counts.update(self._driver_counts())
        report.counts["lost"] = sum(1 for v in report.violations if v.kind == "lost")
        report.counts["duplicated"] = sum(
            1 for v in report.violations if v.kind == "duplicated"
        )
        return report

    def _chaos_phase(self) -> None:
        last_progress = (self.started, -1)
        last_print = last_look = self.started
        while True:
            now = time.monotonic()
            self._reap(now)
            self._maintain(now, chaos=True)
            self._chaos(now)
            if now - last_look < LOOK_EVERY_S:
                time.sleep(TICK_S)
                continue
            last_look = now
            if self._chaos_over(now):
                return
            if now - last_print >= PROGRESS_EVERY_S:
                last_print = now
                self._print_progress(now)
            finished = finished_count(self.tree)
            if finished != last_progress[1]:
                last_progress = (now, finished)
            elif now - last_progress[0] > STALL_LIMIT_S:
                self._violate(
                    "stalled",
                    [],
                    f"no item finished for {STALL_LIMIT_S:.0f} s during the chaos",
                )
                return
            time.sleep(TICK_S)

    def _chaos_over(self, now: float) -> bool:
        elapsed = now - self.started
        if self.options.minutes is not None:
            return elapsed >= self.options.minutes * 60
        researchers_done = len(self.researchers_done) >= self.options.workers_per_stage
        return researchers_done and pending_count(self.tree) == 0

    def _drain_phase(self) -> None:
        for stopped in list(self.stopped):
            self._judge_stop(stopped)
        self.kill_daemon_at = None
        self.kill_in_first_sweep = False
        self.kill_daemon_after_start = False
        while self.second_daemon is not None:
            self._reap(time.monotonic())
            self._check_second_daemon(time.monotonic())
            time.sleep(TICK_S)
        drain_started = time.monotonic()
        deadline = drain_started + self.options.drain_timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            self._reap(now)
            self._maintain(now, chaos=False)
            self._watch_daemon(now)
            done = len(self.researchers_done) >= self.options.workers_per_stage
            if done and is_empty(self.tree):
                self.counts["drain_s"] = round(now - drain_started)
                return
            time.sleep(0.1)
        self._violate(
            "drain_timeout",
            [],
            f"the pipeline did not drain within {self.options.drain_timeout_s:.0f} s "
            "after the chaos stopped",
        )

    def _shutdown(self) -> None:
        workers = list(self.workers.values())
        for proc in workers:
            proc.terminate()
        for proc in workers:
            code = proc.wait_stopped()
            # A worker started just before the SIGTERM may not have its
            # handler yet, and dies of the signal: that loses nothing.
            clean = code in (0, -signal.SIGTERM) or (code == -9 and proc.killed)
            if not clean:
                self._violate(
                    "worker_stop",
                    [proc.name],
                    f"worker exited with {code} on SIGTERM: {proc.stderr_tail()}",
                )
        self.workers.clear()
        if self.daemon is not None and self.daemon.alive():
            self.daemon.terminate()
            code = self.daemon.wait_stopped()
            if code != 0:
                self._violate(
                    "daemon_stop",
                    [self.daemon.name],
                    f"daemon exited with {code} on SIGTERM: "
                    f"{self.daemon.stderr_tail()}",
                )
            self.daemon = None

    def _kill_all(self) -> None:
        procs = list(self.workers.values())
        if self.daemon is not None:
            procs.append(self.daemon)
        if self.second_daemon is not None:
            procs.append(self.second_daemon[0])
        for proc in procs:
            if proc.alive():
                proc.kill()
                proc.popen.wait()

    # -- processes ------------------------------------------------------------

    def _reap(self, now: float) -> None:
        for key, proc in list(self.workers.items()):
            code = proc.popen.poll()
            if code is None:
                continue
            del self.workers[key]
            self._classify_exit(proc, code)
        if self.daemon is not None:
            code = self.daemon.popen.poll()
            if code is not None:
                self._classify_exit(self.daemon, code)
                self.daemon = None
                self.daemon_restart_at = now + self._daemon_down_s()
                self._drop_second_daemon()

    def _drop_second_daemon(self) -> None:
        """Kill a pending second daemon once the first died, because it
        may have taken the free lock: it is no longer a second one."""
        if self.second_daemon is not None:
            proc, _ = self.second_daemon
            self.second_daemon = None
            proc.kill()
            proc.popen.wait()
            self.counts["second_daemons_unjudged"] += 1

    def _classify_exit(self, proc: Proc, code: int) -> None:
        if proc.killed:
            return
        if code == -9 and (self.run_dir.poison / str(proc.pid)).exists():
            self.counts["poison_kills"] += 1
            return
        if code == -9 and proc.faults:
            step = proc.faults.partition("@")[0]
            self.counts[f"fault_kills_{proc.role}"] += 1
            self.counts[f"fault_kill:{step}"] += 1
            return
        if code == 0 and proc.role == plan.RESEARCHER:
            self.researchers_done.add(proc.slot)
            return
        if code == 0 and proc.terminated:
            return
        kind = "daemon_crashed" if proc.role == "daemon" else "worker_crashed"
        self._violate(
            kind,
            [proc.name],
            f"{proc.role} pid {proc.pid} exited with {code} unprompted; "
            f"stderr tail:\n{proc.stderr_tail()}",
        )

    def _daemon_down_s(self) -> float:
        if self.rng.random() < 0.7:
            return self.rng.uniform(0.0, 0.3)
        return self.rng.uniform(0.5, 3.0)

    def _maintain(self, now: float, *, chaos: bool) -> None:
        slots = range(self.options.workers_per_stage)
        for slot in slots:
            if slot not in self.researchers_done and (
                (plan.RESEARCHER, slot) not in self.workers
            ):
                self._start_worker(plan.RESEARCHER, slot, chaos)
            for stage in plan.CONSUMER_STAGES:
                if (stage, slot) not in self.workers:
                    self._start_worker(stage, slot, chaos)
        if self.daemon is None and now >= self.daemon_restart_at:
            self._start_daemon(chaos)

    def _start_worker(self, stage: str, slot: int, chaos: bool) -> None:
        name = f"{stage}-soak{slot}-g{next(self.generation)}"
        argv = [
            "-m",
            "soak_lib.worker",
            "--root",
            str(self.run_dir.tree_root),
            "--worker",
            name,
            "--log",
            str(self.run_dir.logs / f"{stage}.events"),
            "--run",
            self.run_id,
            "--work-ms",
            str(self.options.work_ms),
        ]
        if stage == plan.RESEARCHER:
            argv += self._researcher_args(slot)
        else:
            argv += ["--poison-dir", str(self.run_dir.poison)]
        if stage != plan.RESEARCHER and self.options.inject_bug:
            argv += ["--bug", self.options.inject_bug]
        faults = self._worker_faults(stage) if chaos else None
        self.workers[(stage, slot)] = spawn(
            name,
            stage,
            slot,
            argv,
            faults=faults,
            stderr_path=self.run_dir.logs / f"{stage}-{slot}.stderr",
        )
        self.counts[f"starts_{stage}"] += 1

    def _researcher_args(self, slot: int) -> list[str]:
        argv = [
            "--ledger",
            str(self.run_dir.ledgers / f"researcher-{slot}.ledger"),
            "--first-seq",
            str(slot),
            "--seq-step",
            str(self.options.workers_per_stage),
            "--backlog",
            str(20 * self.options.workers_per_stage),
        ]
        if self.options.items is not None:
            argv += ["--items", str(self.options.items)]
        if self.options.minutes is not None:
            wall_end = time.time() + (
                self.started + self.options.minutes * 60 - time.monotonic()
            )
            argv += ["--until", f"{wall_end:.3f}"]
        return argv

    def _worker_faults(self, stage: str) -> str | None:
        bug = self.options.inject_bug and stage != plan.RESEARCHER
        if bug and self.rng.random() < BUG_FAULT_PROBABILITY:
            return f"{BUG_FAULT_POINT}@{self.rng.randint(1, 3)}"
        if self.rng.random() >= WORKER_FAULT_PROBABILITY:
            return None
        steps = (
            RESEARCHER_FAULT_STEPS if stage == plan.RESEARCHER else WORKER_FAULT_STEPS
        )
        step = self._next_step(
            "researcher" if stage == plan.RESEARCHER else "worker", steps
        )
        return f"{step}@{self.rng.randint(1, 6)}"

    def _next_step(self, cycle: str, steps: tuple[str, ...]) -> str:
        """Cycle through ``steps`` in a shuffled order, so every step comes
        up before any comes twice."""
        queue = self.fault_cycles.setdefault(cycle, [])
        if not queue:
            queue.extend(steps)
            self.rng.shuffle(queue)
        return queue.pop()

    def _start_daemon(self, chaos: bool) -> None:
        faults = None
        if chaos and self.rng.random() < DAEMON_FAULT_PROBABILITY:
            step = self._next_step("daemon", DAEMON_FAULT_STEPS)
            faults = f"{step}@{self.rng.randint(1, 3)}"
            self.counts[f"daemon_fault_armed:{step}"] += 1
        name = f"daemon-g{next(self.generation)}"
        argv = ["-m", "quantd", "run", "--root", str(self.run_dir.tree_root)]
        log_path = self.run_dir.logs / "daemon.log"
        self.daemon_log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.daemon_spawned_at = time.monotonic()
        self.daemon_ready = False
        self.daemon = spawn(
            name, "daemon", 0, argv, faults=faults, stderr_path=log_path
        )
        self.counts["starts_daemon"] += 1
        if chaos and self.kill_daemon_after_start:
            self.kill_daemon_after_start = False
            self.kill_in_first_sweep = True

    # -- chaos ----------------------------------------------------------------

    def _chaos(self, now: float) -> None:
        self._watch_daemon(now)
        self._check_stops(now)
        self._check_second_daemon(now)
        self._armed_daemon_kills(now)
        for kind, due in self.next_at.items():
            if now < due:
                continue
            done = getattr(self, f"_chaos_{kind}")(now)
            delay = self.rng.expovariate(1 / CHAOS_MEAN_INTERVAL_S[kind])
            self.next_at[kind] = now + (delay if done else 0.25)

    def _chaos_worker_kill(self, now: float) -> bool:
        victims = [p for p in self.workers.values() if not p.stopped and p.alive()]
        if not victims:
            return False
        victim = self.rng.choice(sorted(victims, key=lambda p: p.name))
        victim.kill()
        self.counts["worker_kills_timing"] += 1
        return True

    def _chaos_daemon_kill(self, now: float) -> bool:
        if self.daemon is None or not self.daemon.alive() or self.daemon.stopped:
            return False
        if self.second_daemon is not None:
            return False
        mode = self.rng.choice(["now", "startup", "status"])
        if mode == "now":
            self._kill_daemon("daemon_kills_timing")
        elif mode == "startup":
            # Kill now, and kill the replacement again during the sweep
            # it starts with.
            self._kill_daemon("daemon_kills_timing")
            self.kill_daemon_after_start = True
        elif self._wait_for_status_write():
            self._kill_daemon("daemon_kills_status_write")
        else:
            self._kill_daemon("daemon_kills_timing")
        return True

    def _wait_for_status_write(self) -> bool:
        """Spin until the daemon's temp file of a status.json rewrite
        exists, so that a kill lands in the middle of the write."""
        deadline = time.monotonic() + STATUS_WRITE_WAIT_S
        while time.monotonic() < deadline:
            if any(n.startswith("status-") for n in listdir(self.tree.tmp)):
                return True
        return False

    def _armed_daemon_kills(self, now: float) -> None:
        if self.daemon is None or self.daemon.stopped:
            return
        if self.kill_in_first_sweep and self._daemon_logged("daemon_started"):
            self.kill_in_first_sweep = False
            self.kill_daemon_at = now + self.rng.uniform(0.0, 0.3)
        if self.kill_daemon_at is not None and now >= self.kill_daemon_at:
            self.kill_daemon_at = None
            self._kill_daemon("daemon_kills_startup_sweep")

    def _daemon_logged(self, event: str) -> bool:
        """Return whether the current daemon logged ``event``.
        ``daemon_started`` comes just before its first sweep of the tree,
        ``daemon_ready`` right after it."""
        assert self.daemon is not None
        with open(self.daemon.stderr_path, "rb") as log:
            log.seek(self.daemon_log_offset)
            return f'"{event}"'.encode() in log.read()

    def _watch_daemon(self, now: float) -> None:
        """Report and kill a daemon that does not finish its first sweep:
        it supervises nothing while it hangs."""
        daemon = self.daemon
        if daemon is None or self.daemon_ready or not daemon.alive():
            return
        if self._daemon_logged("daemon_ready"):
            self.daemon_ready = True
            return
        if now - self.daemon_spawned_at < DAEMON_READY_TIMEOUT_S or daemon.stopped:
            return
        self.counts["daemons_hung"] += 1
        if self.counts["daemons_hung"] <= MAX_HUNG_REPORTS:
            self._violate(
                "daemon_hung",
                [daemon.name],
                f"daemon pid {daemon.pid} did not log daemon_ready within "
                f"{DAEMON_READY_TIMEOUT_S:.0f} s of its start; log tail:\n"
                f"{daemon.stderr_tail(5)}",
            )
        self._kill_daemon("daemon_kills_hung")

    def _kill_daemon(self, counter: str) -> None:
        if self.daemon is not None and self.daemon.alive():
            self.daemon.kill()
            self.counts[counter] += 1

    def _chaos_stop(self, now: float) -> bool:
        candidates = [
            proc
            for proc in sorted(self.workers.values(), key=lambda p: p.name)
            if proc.role != plan.RESEARCHER
            and not proc.stopped
            and proc.alive()
            and claims_of(self.tree, proc.pid)
        ]
        if not candidates:
            return False
        proc = self.rng.choice(candidates)
        proc.stop()
        # The claims are listed once the process is frozen: a worker that
        # committed a route just before the stop no longer has the claim.
        claims = claims_of(self.tree, proc.pid) if wait_until_stopped(proc.pid) else []
        if not claims:
            proc.resume()
            return False
        settings = self.tree.config.daemon
        hold_s = settings.lease_s + 2 * settings.reconcile_interval_s + 1.0
        up = self.daemon is not None and self.daemon.alive()
        self.stopped.append(StoppedWorker(proc, now + hold_s, claims, up))
        self.counts["stops"] += 1
        return True

    def _check_stops(self, now: float) -> None:
        for stopped in list(self.stopped):
            if now >= stopped.until:
                self._judge_stop(stopped)

    def _judge_stop(self, stopped: StoppedWorker) -> None:
        """Resume a stopped worker; its claims must all still be there,
        because a stopped process on this host is alive."""
        self.stopped.remove(stopped)
        missing = [c for c in stopped.claims if not os.path.lexists(c)]
        daemon_up = self.daemon is not None and self.daemon.alive()
        if stopped.daemon_up and daemon_up:
            self.counts["stops_judged_with_daemon"] += 1
        if missing:
            ids = [c.name.removesuffix(".json").rpartition("~")[2] for c in missing]
            self._violate(
                "stopped_holder_recovered",
                ids,
                f"worker {stopped.proc.name} (pid {stopped.proc.pid}) was stopped, "
                "not dead, but its claims were taken: "
                + ", ".join(str(c) for c in missing),
            )
        stopped.proc.resume()

    def _chaos_bad_file(self, now: float) -> bool:
        kind = badfiles.KINDS[self.bad_kind_index % len(badfiles.KINDS)]
        self.bad_kind_index += 1
        self._drop_bad_file(kind)
        return True

    def _drop_bad_file(self, kind: str) -> None:
        queue = self.rng.choice(sorted(self.tree.config.queues))
        settings = self.tree.config.daemon
        dropped = badfiles.drop(
            kind,
            queue,
            self.tree.queue_dir(queue),
            self.run_dir.staging,
            len(self.dropped),
            max_item_bytes=settings.max_item_bytes,
            max_json_depth=settings.max_json_depth,
        )
        self.dropped.append(dropped)
        self.run_dir.record_dropped(dropped)
        self.counts[f"bad_file:{kind}"] += 1

    def _chaos_second_daemon(self, now: float) -> bool:
        """Start a second daemon on the tree while the first holds the
        daemon lock: it must exit with an error and change nothing."""
        daemon = self.daemon
        if daemon is None or not daemon.alive() or daemon.stopped:
            return False
        # A daemon that may die any moment could hand its lock over.
        if daemon.faults or self.kill_daemon_at or self.kill_in_first_sweep:
            return False
        # Before its start is logged, the daemon may not hold the lock yet.
        if not self.daemon_ready:
            return False
        argv = ["-m", "quantd", "run", "--root", str(self.run_dir.tree_root)]
        proc = spawn(
            f"daemon-second-g{next(self.generation)}",
            "second_daemon",
            0,
            argv,
            faults=None,
            stderr_path=self.run_dir.logs
            / f"second-daemon-{self.counts['second_daemons']}.log",
        )
        self.second_daemon = (proc, now + SECOND_DAEMON_EXIT_S)
        self.counts["second_daemons"] += 1
        return True

    def _check_second_daemon(self, now: float) -> None:
        if self.second_daemon is None:
            return
        proc, deadline = self.second_daemon
        code = proc.popen.poll()
        # Past the lock, a daemon logs daemon_started.
        started = b'"daemon_started"' in proc.stderr_path.read_bytes()
        if code is None and now < deadline and not started:
            return
        first_alive = self.daemon is not None and self.daemon.alive()
        if started and not first_alive:
            # The first daemon died just now and freed the lock.
            self._drop_second_daemon()
            return
        self.second_daemon = None
        if code is None or started:
            proc.kill()
            proc.popen.wait()
            self._violate(
                "two_daemons",
                [proc.name],
                "a second daemon started on a tree whose daemon lock was "
                f"held, or ran for {SECOND_DAEMON_EXIT_S:.0f} s: "
                f"{proc.stderr_tail()}",
            )
        elif code != 1 or "already supervises" not in proc.stderr_tail():
            self._violate(
                "second_daemon_exit",
                [proc.name],
                f"a second daemon exited with {code}, not with 1 and the lock "
                f"holder's pid: {proc.stderr_tail()}",
            )

    def _chaos_burst(self, now: float) -> bool:
        """Overflow the daemon's inotify queue: stop the daemon, make more
        events than ``fs.inotify.max_queued_events`` in one queue, drop
        bad files only the daemon handles, then resume it."""
        limit = int(INOTIFY_LIMIT_PATH.read_text())
        daemon = (
            self.daemon if self.daemon is not None and self.daemon.alive() else None
        )
        if daemon is not None:
            daemon.stop()
        try:
            queue_dir = self.tree.queue_dir(
                self.rng.choice(sorted(self.tree.config.queues))
            )
            for index in range(limit + 1024):
                noise = queue_dir / f".soak-noise-{index}"
                os.close(os.open(noise, os.O_CREAT | os.O_WRONLY, 0o600))
                os.unlink(noise)
            self._drop_bad_file("non_utf8_name")
            self._drop_bad_file("control_char_name")
        finally:
            if daemon is not None:
                daemon.resume()
        self.counts["overflows_attempted"] += 1
        self.counts["overflow_events"] += 2 * (limit + 1024)
        return True

    # -- observing the tree ---------------------------------------------------

    def _print_progress(self, now: float) -> None:
        kills = self.counts["worker_kills_timing"] + sum(
            v for k, v in self.counts.items() if k.startswith("fault_kills_")
        )
        pushed = len(self.run_dir.ledger_ids())
        finished = finished_count(self.tree)
        pending = pending_count(self.tree)
        print(
            f"soak: {now - self.started:6.0f} s  pushed {pushed}  "
            f"finished {finished}  pending {pending}  "
            f"kills {kills}  daemon starts {self.counts['starts_daemon']}",
            flush=True,
        )

    def _read_logs(self, report: Report) -> None:
        """Count what the daemons logged, and report claims that live
        workers lost: only a dead holder's claim may be taken."""
        summary = read_logs(self.run_dir)
        self.counts.update(summary.events)
        self.counts["daemon_errors"] = len(summary.daemon_errors)
        report.warnings += [
            f"daemon logged an error: {e}" for e in summary.daemon_errors
        ]
        for item_id, error in summary.claims_lost:
            self._violate(
                "claim_lost", [item_id], f"a live worker lost its claim: {error}"
            )

    def _violate(self, kind: str, ids: list[str], detail: str) -> None:
        self.violations.append(Violation(kind, tuple(ids), detail))

    def _driver_counts(self) -> dict[str, int]:
        counts = dict(self.counts)
        fault_kills = sum(v for k, v in counts.items() if k.startswith("fault_kills_"))
        daemon_fault_kills = counts.get("fault_kills_daemon", 0)
        counts["worker_kills"] = (
            counts.get("worker_kills_timing", 0) + fault_kills - daemon_fault_kills
        )
        counts["daemon_kills"] = daemon_fault_kills + sum(
            v for k, v in counts.items() if k.startswith("daemon_kills_")
        )
        counts["bad_files_dropped"] = len(self.dropped)
        return counts
