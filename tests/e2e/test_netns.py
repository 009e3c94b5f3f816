"""devstack.netns leaves nothing behind: HostNetwork.remove() kills what runs on its hosts and deletes
their namespaces, links and /etc/netns files; a run killed outright (SIGKILL: no teardown ran) has
its leftovers removed by the next run's remove_stale(), which never touches a live run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from devstack.netns import HostNetwork, remove_stale

# Network namespaces need the host's own mount namespace: an e2e test (the other release's chroot in CI
# cannot create them), outside the Celery e2e's package, whose live network has this process's tag.
pytestmark = pytest.mark.integration

# A run that dies: creates a network with one host running a process, prints its tag and that
# process's pid, then waits to be SIGKILLed.
DYING_RUN = """
import subprocess, sys, time
from devstack.netns import HostNetwork
network = HostNetwork().create()
host = network.add_host("pg-dying-01")
sleeper = subprocess.Popen(host.argv(["sleep", "600"]), start_new_session=True)
while not host.pids():
    time.sleep(0.05)
print(network.tag, host.pids()[0], flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_remove_and_remove_stale_leave_nothing_of_a_run():
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root: run scripts/test.sh as root")
    live = HostNetwork().create()
    try:
        host = live.add_host("pg-live-01")
        assert host.address.startswith(live.prefix)
        sleeper = subprocess.Popen(host.argv(["sleep", "600"]), start_new_session=True)
        deadline = time.monotonic() + 10
        while not host.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        [in_host] = host.pids()
        assert live.leftovers()  # it exists

        # a run killed outright: its namespace, link, files and process stay until the next run
        dying = subprocess.Popen([sys.executable, "-c", DYING_RUN], stdout=subprocess.PIPE, text=True, start_new_session=True)
        tag, dead_runs_process = dying.stdout.readline().split()
        os.killpg(dying.pid, signal.SIGKILL)
        dying.wait(timeout=10)
        dead = HostNetwork(tag=tag)
        assert dead.leftovers() and alive(int(dead_runs_process))
        removed = remove_stale()
        assert any(name.startswith(tag) for name in removed), removed
        assert dead.leftovers() == [] and wait_gone(int(dead_runs_process))
        assert live.leftovers() and alive(in_host)  # a live run's are never touched

        live.remove()
        assert live.leftovers() == [] and wait_gone(in_host)
        sleeper.wait(timeout=10)
    finally:
        live.remove()
