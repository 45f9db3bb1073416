"""A real two-node Ray cluster on 127.0.0.1, for the cluster tests and benchmarks/cluster.py.

``ray start --head`` (with the dashboard and its job server) and a second ``ray start --address``
each run with ``--block`` in their own process group, their own temp dir and free ports, so
there are two raylets as on two machines, told apart by node ID. ``stop()`` sends SIGTERM to
each ``ray start``, which stops what it started; nothing else on the machine is touched (no
``ray stop``, which would stop every Ray of every user here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers() -> dict[str, str]:
    """Ray >= 2.5x enables token authentication by default: ``ray start --head`` uses (or writes)
    ``~/.ray/auth_token`` unless $RAY_AUTH_TOKEN is set, and every client sends it."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _children(pid: int) -> list[tuple[int, str]]:
    """``(pid, command name)`` of every descendant, from /proc."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append((int(entry.name), comm))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


class LoopbackCluster:
    def __init__(self, head_cpus: int = 2, node_cpus: int = 1, env: dict | None = None,
                 system_config: dict | None = None):
        self.head_cpus, self.node_cpus, self.system_config = head_cpus, node_cpus, system_config
        # Token authentication (on for a head that has a token: _ensure_token) must be switched on for a
        # node that joins; both use the token in ~/.ray/auth_token (or $RAY_AUTH_TOKEN).
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # stop() stops, no 30 s drain
        self.tmp = Path(tempfile.mkdtemp(prefix="vkc-"))  # short: Ray's socket paths must fit 107 chars
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.head: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None
        self.head_id = self.node_id = None

    def _ray_start(self, args: list[str], name: str) -> subprocess.Popen:
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(self.tmp / name), "--min-worker-port", "0", "--max-worker-port", "0",
               "--object-store-memory", str(100 * 1024**2), *args]
        for flag in ports:
            cmd += [flag, str(free_port())]
        log = open(self.tmp / f"{name}.log", "ab")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def nodes(self) -> list[dict]:
        """The cluster's nodes from the dashboard's state API (this process joins no cluster)."""
        request = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?limit=100&detail=false",
                                         headers=auth_headers())
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())["data"]["result"]["result"]

    def _wait(self, what: str, ok, proc: subprocess.Popen, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                log = Path(proc.args[proc.args.index("--temp-dir") + 1] + ".log")
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                raise RuntimeError(f"ray start for the {what} exited ({log}):\n{tail}")
            try:
                if ok():
                    return
            except (OSError, KeyError, ValueError):
                pass  # the GCS or the dashboard is still starting
            time.sleep(0.5)
        raise TimeoutError(f"the {what} did not come up in {timeout:.0f}s: see {self.tmp}/*.log")

    def alive(self) -> list[dict]:
        return [n for n in self.nodes() if n["state"] == "ALIVE"]

    def _ensure_token(self) -> None:
        """``ray start --head`` with RAY_AUTH_MODE=token refuses to start without a token (Ray 2.60
        makes one by itself only for a local ``ray.init()``), so a fresh machine gets one the way
        Ray's own message says: ``ray get-auth-token --generate`` (a no-op when one exists)."""
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> "LoopbackCluster":
        self._ensure_token()
        self.head = self._ray_start(
            ["--head", "--port", str(self.gcs_port), "--num-cpus", str(self.head_cpus), "--resources", '{"head": 1}',
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
             "--ray-client-server-port", str(free_port()),
             *(["--system-config", json.dumps(self.system_config)] if self.system_config else [])], "head")
        # The second node joins once the head's `ray start` has started its node (it then writes
        # ray_current_cluster), while the head's dashboard is still coming up.
        self._wait("head", (self.tmp / "head" / "ray_current_cluster").exists, self.head)
        self._join_node()
        try:
            self._wait("cluster", lambda: len(self.alive()) == 2, self.node)
        except RuntimeError as exc:  # seen once on a machine at load 13: join again, say why
            print(f"loopback cluster: the second node's first join failed, joining again: {exc}", file=sys.stderr)
            self._join_node("node-again")
            self._wait("cluster", lambda: len(self.alive()) == 2, self.node)
        self.head_id = next(n["node_id"] for n in self.alive() if n["is_head_node"])
        self.node_id = next(n["node_id"] for n in self.alive() if not n["is_head_node"])
        return self

    def _join_node(self, name: str = "node") -> None:
        self.node = self._ray_start(["--address", self.address, "--num-cpus", str(self.node_cpus),
                                     "--resources", '{"second": 1}'], name)

    def start_node(self) -> None:
        """(Re)joins the second node; a no-op while it is up."""
        if self.node is not None and self.node.poll() is None:
            return
        self._join_node()
        self._wait("second node", lambda: len(self.alive()) == 2, self.node)
        self.node_id = next(n["node_id"] for n in self.alive() if not n["is_head_node"])

    def raylet_pid(self) -> int:
        return next(pid for pid, comm in _children(self.node.pid) if comm == "raylet")

    def kill_node(self) -> float:
        """SIGKILLs the second node's raylet, as when its machine dies; returns the time."""
        os.kill(self.raylet_pid(), signal.SIGKILL)
        return time.time()

    def wait_node_dead(self, timeout: float = 120) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not any(n["node_id"] == self.node_id for n in self.alive()):
                return time.time()
            time.sleep(0.5)
        raise TimeoutError("the second node was not marked dead")

    def stop(self) -> None:
        for proc in (self.node, self.head):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Anything left that names our temp dir (a worker orphaned by a killed raylet) is ours.
        mark = str(self.tmp).encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass
