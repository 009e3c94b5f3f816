"""Database hosts on one machine: each a Linux network namespace with its own address and host name,
on a private bridge with the shared services (Airflow's API server, Redis, the metadata database,
S3 over TLS, the Vault and ServiceNow simulators) on the bridge's address in the root namespace.

    HostNetwork (bridge rw<id>br, 10.201.S.1/24: the service address)
      ├── DatabaseHost "pg-ledger-01"  netns rw<id>a, veth rw<id>a0 <-> rw<id>a1, 10.201.S.2/24
      └── DatabaseHost "pg-crm-01"     netns rw<id>b, veth rw<id>b0 <-> rw<id>b1, 10.201.S.3/24

A host sees the bridge's subnet and nothing else (no default route, and a resolver that answers
from its own /etc/hosts only: `ip netns exec` mounts /etc/netns/<ns>/hosts and resolv.conf over
/etc's), so nothing in a host can reach past the machine. Processes started with `DatabaseHost.argv`
also get their own UTS namespace: `hostname` says the host's name, as on a real database host.

Names carry the creating process's pid (rw<pid hex>...), so two runs on one kernel (CI runs the
suite on two Debian releases at once, the chroot sharing this network namespace) never collide, and
`remove_stale()` deletes what a run that died left behind, never a live run's. The subnet is one of
10.201.1-254.0/24 that no interface uses yet. Everything is removed by `HostNetwork.remove()`,
also after a failed test; it never touches anything it did not create.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "rw"
NETNS_ETC = Path("/etc/netns")
_NAME_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(root: int) -> list[int]:
    """Every process below `root` (by parent pid), whatever its process group or session."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen | None, *, timeout: float = 10.0) -> list[int]:
    """SIGKILL a process started with start_new_session=True, its process group and every process
    below it in other groups or sessions (Airflow's task runner has its own group, Rewind's commands
    their own session): what a host crash, an OOM kill of the service or `systemctl kill` of its
    cgroup does. Returns the pids killed."""
    if proc is None or proc.poll() is not None:
        return []
    # Stop first, so nothing forks between the listing and the kill.
    victims = [proc.pid]
    for _ in range(3):
        for pid in victims:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        more = [pid for pid in _descendants(proc.pid) if pid not in victims]
        if not more:
            break
        victims += more
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    return victims


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def _used_subnets() -> set[int]:
    out = _ip("-4", "-o", "addr", "show").stdout
    return {int(m.group(1)) for m in re.finditer(r"inet 10\.201\.(\d+)\.", out)}


@dataclass
class DatabaseHost:
    """One database host: a network namespace with its own address and host name."""

    network: HostNetwork
    name: str  # the host name, e.g. pg-ledger-01
    letter: str  # one letter naming its namespace and veth pair
    address: str = ""

    @property
    def netns(self) -> str:
        return f"{self.network.tag}{self.letter}"

    @property
    def veth_root(self) -> str:
        return f"{self.network.tag}{self.letter}0"

    @property
    def veth_host(self) -> str:
        return f"{self.network.tag}{self.letter}1"

    def create(self, index: int) -> DatabaseHost:
        self.address = f"{self.network.prefix}.{index}"
        etc = NETNS_ETC / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        # The host resolves its own name and the services' from files: no DNS query leaves it.
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{self.address} {self.name}\n{self.network.address} {self.network.service_name}\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_host)
        _ip("link", "set", self.veth_host, "netns", self.netns)
        _ip("link", "set", self.veth_root, "master", self.network.bridge)
        _ip("link", "set", self.veth_root, "up")
        self.exec_ip("link", "set", "lo", "up")
        self.exec_ip("addr", "add", f"{self.address}/24", "dev", self.veth_host)
        self.exec_ip("link", "set", self.veth_host, "up")
        return self

    def exec_ip(self, *args: str) -> None:
        _ip("-n", self.netns, *args)

    def argv(self, argv: list[str], *, user: str | None = None) -> list[str]:
        """`argv` run on this host: in its network namespace (with its /etc/hosts), in a UTS namespace
        of its own whose host name is the host's, as `user` when given (the caller is root)."""
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            # the UTS namespace's host name, without the `hostname` tool (not in every minimal Debian)
            'echo "$0" > /proc/sys/kernel/hostname && exec "$@"',
            self.name,
            *as_user,
            *argv,
        ]

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(pid) for pid in out.split()]

    def remove(self) -> None:
        # Whatever still runs in the namespace is ours (started by this run): it must not outlive it.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self.veth_root, check=False)  # gone with the namespace; a leftover is deleted
        shutil.rmtree(NETNS_ETC / self.netns, ignore_errors=True)


@dataclass
class HostNetwork:
    """The bridge the database hosts hang off, and the service address the root namespace's
    services listen on."""

    service_name: str = "airflow-services"
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid():06x}"[:8])
    subnet: int = 0
    hosts: list[DatabaseHost] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def prefix(self) -> str:
        return f"10.201.{self.subnet}"

    @property
    def address(self) -> str:
        """The root namespace's address on the bridge: every shared service listens here."""
        return f"{self.prefix}.1"

    def create(self) -> HostNetwork:
        if os.geteuid() != 0:
            raise RuntimeError("database hosts in network namespaces need root")
        for tool in ("ip", "unshare", "setpriv"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} is not installed: run scripts/install.sh (iproute2, util-linux)")
        remove_stale()
        free = sorted(set(range(1, 255)) - _used_subnets())
        if not free:
            raise RuntimeError("no free 10.201.x.0/24 subnet for the database hosts")
        self.subnet = random.choice(free)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except Exception:
            self.remove()
            raise
        return self

    def add_host(self, name: str) -> DatabaseHost:
        letter = "abcdefghijklmnopqrstuvwxyz"[len(self.hosts)]
        host = DatabaseHost(self, name, letter)
        self.hosts.append(host)
        try:
            host.create(index=len(self.hosts) + 1)
        except Exception:
            self.remove()
            raise
        return host

    def remove(self) -> None:
        for host in self.hosts:
            host.remove()
        _ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """What of this network still exists (empty after remove())."""
        names = _ip("-o", "link", "show").stdout + _ip("netns", "list").stdout
        found = sorted(set(re.findall(rf"\b({self.tag}[a-z0-9]*)\b", names)))
        return found + [str(p) for p in NETNS_ETC.glob(f"{self.tag}*")]


def remove_stale() -> list[str]:
    """Delete namespaces, links and /etc/netns entries of runs whose process is gone."""
    removed = []
    netns = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show", check=False).stdout, re.MULTILINE)
    etc = [p.name for p in NETNS_ETC.glob(f"{PREFIX}*")] if NETNS_ETC.exists() else []
    for name in sorted(set(netns + links + etc)):
        match = _NAME_RE.match(name)
        if not match or _alive(int(match.group(1), 16)):
            continue
        if name in netns:
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", name, check=False)
        if name in links:
            _ip("link", "del", name, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        removed.append(name)
    return removed
