"""Two processes of `python -m madad_jax.main` (jax.distributed on localhost, gloo CPU
collectives) train one run; one is killed mid-run. The survivor ends within the documented
bound (`distributed.heartbeat_timeout_s` + `peers.VERDICT_SLACK_S`) with one line naming
the lost process, and restarting both resumes the run bit-equal to an unbroken one.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import fault_helpers as fh
import jax
import numpy as np
import portpicker
import pytest

from madad_jax.core import checkpoint, peers
from madad_jax.core.errors import LOST_PEER_EXIT, PREEMPTED_EXIT

STEPS, EVERY, KILL_AFTER, HEARTBEAT_S = 30, 5, 12, 10
BOUND_S = HEARTBEAT_S + peers.VERDICT_SLACK_S


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    data, vae = fh.train_inputs(root / "in")
    env = fh.env(fh.shared_cache(tmp_path_factory))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # x 2 processes
    env["TMPDIR"] = str(root)  # the supervisors' runtime logs
    return {"root": root, "env": env, "data": data, "vae": vae}


class Pair:
    """The two processes of one run, their stderr read as it comes."""

    def __init__(self, ctx, workdir: Path) -> None:
        port = portpicker.pick_unused_port()
        self.lines: list[list[str]] = [[], []]
        # Set when process 0 (only it logs steps) logs step KILL_AFTER, or ends before it.
        self.seen = threading.Event()
        self.reached = False
        self.procs = []
        for i in range(2):
            cmd = fh.main_cmd(
                workdir, ctx["data"], ctx["vae"], f"--config.train.num_steps={STEPS}",
                f"--config.train.checkpoint_every_steps={EVERY}",
                "--config.train.log_every_steps=1", "--config.distributed.initialize=on",
                f"--config.distributed.coordinator_address=localhost:{port}",
                "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}")
            self.procs.append(fh.start(cmd, ctx["env"]))
        self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                        for i in range(2)]
        for r in self.readers:
            r.start()

    def _read(self, i: int) -> None:
        for text in self.procs[i].stderr:
            self.lines[i].append(text)
            if i == 0 and text.startswith(f"[train] step {KILL_AFTER}:"):
                self.reached = True
                self.seen.set()
        if i == 0:  # a run that fails early ends the wait at once, not after its timeout
            self.seen.set()

    def reach_kill_step(self) -> None:
        """Wait until process 0 logged step KILL_AFTER; fail with its output if it ended."""
        self.seen.wait(600)
        assert self.reached, "".join(self.lines[0])[-3000:] + "".join(self.lines[1])[-2000:]

    def wait(self, i: int, timeout: float = 600) -> subprocess.CompletedProcess:
        p = self.procs[i]
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        self.readers[i].join(timeout=10)
        return subprocess.CompletedProcess(p.args, p.returncode, "", "".join(self.lines[i]))

    def finish(self) -> subprocess.CompletedProcess:
        """Both processes to their end, each with exit 0; process 0's output."""
        try:
            for i in (1, 0):
                r = self.wait(i)
                assert r.returncode == 0, r.stderr[-3000:]
        finally:
            self.close()
        return r

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _assert_same_params(straight: Path, workdir: Path) -> None:
    """Saved by 2 processes, read here by 1: bit-equal."""
    a, b = (jax.tree.leaves(checkpoint.load_params(str(w / "checkpoints"))[0])
            for w in (straight, workdir))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), "the resumed run differs"


@pytest.fixture(scope="module")
def straight(ctx) -> Path:
    workdir = ctx["root"] / "straight"
    Pair(ctx, workdir).finish()
    return workdir


def _kill_one(ctx, workdir: Path, victim: int) -> tuple[subprocess.CompletedProcess, float]:
    """Kill process `victim` (its supervisor, and so its child) after step KILL_AFTER;
    the survivor's end and the seconds from the kill to it."""
    pair = Pair(ctx, workdir)
    try:
        pair.reach_kill_step()
        pair.procs[victim].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        survivor = pair.wait(1 - victim, timeout=BOUND_S + 60)
        return survivor, time.monotonic() - t0
    finally:
        pair.close()


def test_a_lost_peer_ends_the_survivor_in_one_line_and_both_resume_exactly(ctx, straight):
    workdir = ctx["root"] / "broken"
    survivor, seconds = _kill_one(ctx, workdir, victim=1)
    assert survivor.returncode == LOST_PEER_EXIT, survivor.stderr[-3000:]
    line = fh.error_line(survivor, "lost peer: process 1 stopped sending heartbeats",
                         "process 0 ended", "Restart every process")
    assert seconds < BOUND_S, (seconds, line)
    log = re.search(r"The runtime's log: (\S+)", line).group(1)
    assert Path(log).read_text(), "the runtime's log was not kept"
    at = int(re.search(r"resumes from step (\d+)", line).group(1))
    assert at == checkpoint.latest_step(str(workdir / "checkpoints")) and at >= EVERY, line
    assert at < STEPS, "the kill came after the run's end"

    r = Pair(ctx, workdir).finish()  # both again, the same command
    assert f"at step {at}" in r.stderr, r.stderr[-3000:]
    _assert_same_params(straight, workdir)


def test_sigterm_to_every_process_saves_one_step_and_resumes_exactly(ctx, straight):
    """The preemption notice of a pod: JAX's sync point makes both processes stop after the
    same step and save it together."""
    workdir = ctx["root"] / "preempted"
    pair = Pair(ctx, workdir)
    try:
        pair.reach_kill_step()
        for p in pair.procs:
            p.send_signal(signal.SIGTERM)
        ends = [pair.wait(i, timeout=300) for i in (0, 1)]
    finally:
        pair.close()
    steps = set()
    for r in ends:
        assert r.returncode == PREEMPTED_EXIT, r.stderr[-3000:]
        line = fh.error_line(r, "stopped by SIGTERM after step", str(workdir / "checkpoints"))
        steps.add(int(re.search(r"after step (\d+)", line).group(1)))
    (at,) = steps
    assert at == checkpoint.latest_step(str(workdir / "checkpoints")) and at < STEPS
    r = Pair(ctx, workdir).finish()
    assert f"at step {at}" in r.stderr, r.stderr[-3000:]
    _assert_same_params(straight, workdir)


def test_a_checkpoint_of_two_processes_reads_in_one_for_inference(straight):
    restored = checkpoint.restore_inference(straight)
    assert restored.step == STEPS
    ref = jax.tree.leaves(restored.params["denoiser"])
    assert ref and all(isinstance(x, np.ndarray) for x in ref)


def test_a_lost_coordinator_is_named(ctx, straight):
    survivor, seconds = _kill_one(ctx, ctx["root"] / "no_coordinator", victim=0)
    assert survivor.returncode == LOST_PEER_EXIT, survivor.stderr[-3000:]
    fh.error_line(survivor, "lost peer: process 0 (the coordinator) is unreachable",
                  "process 1 ended")
    assert seconds < BOUND_S, seconds


def test_the_runtime_log_names_the_lost_process():
    heartbeat = ("E1207 coordination_service.cc:1549] Use error polling to propagate the "
                 "following error to all tasks: UNAVAILABLE: The following tasks are "
                 "unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed.\n")
    assert peers.lost_peer(heartbeat) == "process 1 stopped sending heartbeats"
    assert peers.lost_peer("UNAVAILABLE: Task 3 heartbeat timeout. This indicates") == (
        "process 3 stopped sending heartbeats")
    leader = "UNAVAILABLE: Failed to send RPC to coordination service. Either the leader"
    assert peers.lost_peer(leader) == "process 0 (the coordinator) is unreachable"
    assert peers.lost_peer("nothing known") == "a peer failed (the runtime named none)"
