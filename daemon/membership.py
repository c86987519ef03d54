"""This node's membership in a cluster: init, join, leave, and resume.

State lives in `<data dir>/cluster/`: `state.json` (cluster id, node id,
role, raft id, addresses, known managers) and `certs/` (CA certificate,
node key and certificate; the key is 0600). On start the daemon resumes
what the state says: the agent session always, the manager while the node
is a manager.

- init: a new cluster CA, this node's certificate (OU=manager), a
  single-member Raft group, then the Cluster object (CA, join secrets) and
  this Node in the store (`manager.bootstrap`).
- join: fetch the manager's CA without trusting it, check it against the
  digest in the token (pinning), then send a CSR with the token over TLS
  verified against that CA; the answer is our certificate, node id and
  role. A joining manager starts an empty Raft member that the leader adds
  as a learner and promotes once caught up.
- leave: a worker just goes (the managers see it DOWN); a manager must be
  demoted first unless forced, because leaving could cost quorum.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import platform
import shutil
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from agent.session import AgentSession
from api import codec
from api.session import Frame
from api.arch import oci_arch
from api.objects import AddressPoolSpec
from api.probe import NULL_PROBE, Probe
from api.fsutil import write_atomic
from pki import RootCA, TokenError, make_key_and_csr, parse_token, renewal_delay
from pki.secretbox import load_key, new_key, save_key
from pki.tls import NodeTLS, client_ssl

from .settings import ManagerSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 4242


class ClusterError(Exception):
    """A membership operation failed; the message says why and what to do."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ClusterState:
    cluster_id: str
    node_id: str
    role: str  # manager | worker (as of the last certificate)
    listen_addr: str
    advertise_addr: str
    raft_id: int = 0
    managers: list[str] = field(default_factory=list)
    joined_at: float = 0.0


def describe_host(hostname: str | None = None) -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    arch = oci_arch(platform.machine())
    return {"hostname": hostname or socket.gethostname(), "os": "linux", "arch": arch,
            "nano_cpus": (os.cpu_count() or 1) * 1_000_000_000, "memory_bytes": mem}


def _with_port(addr: str, port: int = DEFAULT_PORT) -> str:
    return addr if ":" in addr.rsplit("]", 1)[-1] else f"{addr}:{port}"


class Membership:
    """Owned by the node daemon; drives its manager and agent session."""

    def __init__(self, data_dir: str, *, hostname: str | None = None,
                 settings: ManagerSettings | None = None) -> None:
        self.dir = os.path.join(data_dir, "cluster")
        self.data_dir = data_dir
        self.hostname = hostname
        self.settings = settings or ManagerSettings()  # for a manager made by init/join/promotion
        self.state: ClusterState | None = None
        self.manager: Any = None  # ManagerProcess
        self.session: AgentSession | None = None
        self._lock = asyncio.Lock()
        self.worker: Any = None  # agent.worker.Worker, set by the daemon
        self.resolve_image: Any = None  # the daemon's ImageService.resolve
        self.probe: Probe = NULL_PROBE  # the daemon's metrics, for the manager and the session it starts
        self._role_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None

    # -- files -----------------------------------------------------------------

    @property
    def certs(self) -> str:
        return os.path.join(self.dir, "certs")

    @property
    def key_path(self) -> str:
        return os.path.join(self.dir, "secrets.key")

    def _save_secrets_key(self, resp: dict[str, Any]) -> None:
        if resp.get("secrets_key"):
            os.makedirs(self.dir, exist_ok=True)
            save_key(self.key_path, base64.b64decode(resp["secrets_key"]))

    def load(self) -> ClusterState | None:
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                self.state = ClusterState(**json.load(f))
        except FileNotFoundError:
            self.state = None
        except (ValueError, TypeError) as e:
            raise ClusterError(f"{self.dir}/state.json is damaged ({e}); `orch leave --force` resets it") from None
        return self.state

    def _save_state(self) -> None:
        assert self.state is not None
        os.makedirs(self.dir, exist_ok=True)
        write_atomic(os.path.join(self.dir, "state.json"), json.dumps(asdict(self.state), indent=1))

    def _save_certs(self, ca: str, cert: str, key: str) -> None:
        os.makedirs(self.certs, mode=0o700, exist_ok=True)
        write_atomic(os.path.join(self.certs, "ca.crt"), ca)
        write_atomic(os.path.join(self.certs, "node.crt"), cert)
        write_atomic(os.path.join(self.certs, "node.key"), key, 0o600)

    def tls(self) -> NodeTLS:
        def rd(n: str) -> str:
            with open(os.path.join(self.certs, n)) as f:
                return f.read()

        return NodeTLS(cert=rd("node.crt"), key=rd("node.key"), ca=rd("ca.crt"))

    # -- lifecycle ---------------------------------------------------------------

    async def resume(self) -> None:
        if self.load() is None:
            return
        st = self.state
        assert st is not None
        if st.role == "manager" and os.path.isdir(os.path.join(self.data_dir, "manager", "raft")):
            await self._start_manager({})
        self._start_session()

    async def stop(self) -> None:
        for t in (self._role_task, self._renew_task):
            if t is not None and t is not asyncio.current_task():
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        self._role_task = self._renew_task = None
        if self.session is not None:
            await self.session.stop()
            self.session = None
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None

    async def _start_manager(self, initial: dict[int, str], force_new_cluster: bool = False) -> None:
        # Imported here, not at the top: a node that stays a worker never loads the manager.
        from manager.process import ManagerOptions, ManagerProcess

        st = self.state
        assert st is not None
        self.manager = ManagerProcess(ManagerOptions(
            node_id=st.raft_id, data_dir=os.path.join(self.data_dir, "manager"),
            listen_addr=st.listen_addr, advertise_addr=st.advertise_addr, initial_cluster=initial,
            settings=self.settings.raft_settings(), tls=self.tls(), force_new_cluster=force_new_cluster,
            secrets_key=load_key(self.key_path), resolve_image=self.resolve_image,
            dispatcher=self.settings.dispatcher_settings(), probe=self.probe,
        ))
        await self.manager.start()

    async def _await_leadership(self, what: str, timeout: float = 15.0) -> Any:
        """This node's raft once it leads (a single-member group elects itself)."""
        try:
            await asyncio.wait_for(self.manager.leadership.wait_elected(), timeout)
        except asyncio.TimeoutError:
            raise ClusterError(f"{what} did not elect this node in {timeout:.0f} s", 500) from None
        return self.manager.raft

    def _start_session(self, renewals: bool = True) -> None:
        st = self.state
        assert st is not None

        def on_managers(ms: list[str]) -> None:
            if self.state is not None and ms != self.state.managers:
                self.state.managers = ms
                self._save_state()

        def on_role(role: str) -> None:
            if self.state is not None and role != self.state.role and (
                    self._role_task is None or self._role_task.done()):
                self._role_task = asyncio.create_task(self._change_role(role))

        self.session = AgentSession(
            st.managers or [st.advertise_addr], client_ssl(self.tls()),
            lambda: describe_host(self.hostname), addr=st.advertise_addr.rpartition(":")[0],
            on_managers=on_managers, on_role=on_role,
            on_message=self.worker.on_message if self.worker is not None else None,
            probe=self.probe,
        )
        self.session.start()
        if renewals and (self._renew_task is None or self._renew_task.done()):
            self._renew_task = asyncio.create_task(self._renew_loop())

    # -- certificate renewal and role changes ------------------------------------

    async def _renew(self) -> dict[str, Any]:
        """A fresh certificate for the role the cluster wants; tries each manager."""
        st = self.state
        assert st is not None
        ctx = client_ssl(self.tls())
        key, csr = make_key_and_csr(st.node_id)
        last: Exception | None = None
        for m in list(dict.fromkeys((self.session.state.manager if self.session else "",) + tuple(st.managers))):
            if not m:
                continue
            try:
                resp = await _call(ctx, "POST", f"https://{m}/v1/certs/renew",
                                   {"csr": csr, "advertise_addr": st.advertise_addr})
            except ClusterError as e:
                last = e
                continue
            self._save_certs(resp["ca_cert"], resp["cert"], key)
            return resp
        raise ClusterError(f"certificate renewal failed on every manager: {last}", 502)

    async def _renew_loop(self) -> None:
        while True:
            try:
                with open(os.path.join(self.certs, "node.crt")) as f:
                    delay = renewal_delay(f.read())
            except (OSError, ValueError):
                return
            await asyncio.sleep(max(delay, 1.0))
            try:
                async with self._lock:
                    resp = await self._renew()
                    await self._apply_role(resp)
                log.info("node certificate renewed")
            except ClusterError as e:
                log.warning("%s; retrying in a minute", e)
                await asyncio.sleep(60)

    async def _change_role(self, want: str) -> None:
        try:
            async with self._lock:
                if self.state is None or self.state.role == want:
                    return
                if want == "worker" and self.manager is not None:
                    # Leave Raft only once the leader has removed us (it checks quorum first).
                    deadline = time.monotonic() + 60
                    while not self.manager.raft.removed and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                resp = await self._renew()
                await self._apply_role(resp)
        except ClusterError as e:
            log.warning("role change to %s: %s", want, e)

    async def _apply_role(self, resp: dict[str, Any]) -> None:
        st = self.state
        assert st is not None
        role = resp["role"]
        st.managers = list(resp.get("managers") or st.managers)
        if role == "manager" and self.manager is None:
            self._save_secrets_key(resp)
            st.role, st.raft_id = "manager", int(resp.get("raft_id") or 0)
            self._save_state()
            shutil.rmtree(os.path.join(self.data_dir, "manager"), ignore_errors=True)
            await self._start_manager({})  # an empty member: the leader adds it as a learner
            log.info("this node is now a manager (raft id %d)", st.raft_id)
        elif role == "worker" and self.manager is not None:
            await self.manager.stop()
            self.manager = None
            shutil.rmtree(os.path.join(self.data_dir, "manager"), ignore_errors=True)
            try:
                os.unlink(self.key_path)  # workers never hold the secrets key
            except FileNotFoundError:
                pass
            st.role, st.raft_id = "worker", 0
            self._save_state()
            log.info("this node is now a worker")
        else:
            st.role = role
            self._save_state()
        # The session continues with the new certificate.
        if self.session is not None:
            await self.session.stop()
        self._start_session(renewals=False)

    async def send(self, frame: Frame) -> bool:
        """To the leader over the current session (False when there is none)."""
        return await self.session.send(frame) if self.session is not None else False

    def info(self) -> dict[str, Any]:
        if self.state is None:
            return {"cluster": None}
        out: dict[str, Any] = {"cluster": asdict(self.state)}
        if self.session is not None:
            out["session"] = asdict(self.session.state)
        if self.manager is not None:
            out["raft"] = self.manager.raft.status()
        return out

    # -- init ------------------------------------------------------------------

    async def init(self, listen_addr: str, advertise_addr: str | None,
                   addr_pool: AddressPoolSpec | None = None) -> dict[str, Any]:
        # The manager is imported only by nodes that become one (as in _start_manager).
        from manager.bootstrap import create_cluster
        from manager.clusterinfo import new_raft_id

        async with self._lock:
            if self.load() is not None:
                raise ClusterError("this node is already part of a cluster; `orch leave` first", 409)
            listen_addr = _with_port(listen_addr)
            advertise = _with_port(advertise_addr) if advertise_addr else _default_advertise(listen_addr)
            cluster_id, node_id, raft_id = codec.new_id(), codec.new_id(), new_raft_id()
            root = RootCA.create(cluster_id)
            key, csr = make_key_and_csr(node_id)
            cert = root.issue(csr, node_id, "manager")
            self._wipe()
            self._save_certs(root.cert_pem, cert, key)
            save_key(self.key_path, new_key())
            self.state = ClusterState(cluster_id, node_id, "manager", listen_addr, advertise, raft_id,
                                      [advertise], time.time())
            try:
                await self._start_manager({raft_id: advertise})
                raft = await self._await_leadership("the new manager")
                tokens = await create_cluster(raft, self.manager.store, cluster_id=cluster_id, node_id=node_id,
                                              raft_id=raft_id, root=root, advertise_addr=advertise,
                                              description=describe_host(self.hostname),
                                              default_addr_pool=addr_pool)
            except BaseException:
                await self.stop()
                self.state = None
                self._wipe()
                raise
            self._save_state()
            self._start_session()
            return {"node_id": node_id, "cluster_id": cluster_id, "advertise_addr": advertise,
                    "join_tokens": tokens}

    async def force_new_cluster(self) -> dict[str, Any]:
        """Recover from lost quorum on a surviving manager: keep the state,
        become the only manager; the other managers are demoted in the store
        (they rejoin with a token, or are promoted again once back)."""
        from manager import bootstrap  # only on a manager (see init)

        async with self._lock:
            if self.load() is None or self.state is None or self.state.role != "manager":
                raise ClusterError("--force-new-cluster needs this node to be a manager of a cluster", 409)
            await self.stop()
            await self._start_manager({}, force_new_cluster=True)
            raft = await self._await_leadership("the forced single-member cluster")
            tokens = await bootstrap.force_new_cluster(raft, self.manager.store, node_id=self.state.node_id)
            self.state.managers = [self.state.advertise_addr]
            self._save_state()
            self._start_session()
            return {"node_id": self.state.node_id, "cluster_id": self.state.cluster_id,
                    "advertise_addr": self.state.advertise_addr,
                    "join_tokens": tokens, "forced": True}

    # -- join ------------------------------------------------------------------

    async def join(self, token: str, remote: str, listen_addr: str, advertise_addr: str | None) -> dict[str, Any]:
        async with self._lock:
            if self.load() is not None:
                raise ClusterError("this node is already part of a cluster; `orch leave` first", 409)
            try:
                tok = parse_token(token)
            except TokenError as e:
                raise ClusterError(f"--token: {e}") from None
            remote = _with_port(remote)
            listen_addr = _with_port(listen_addr)
            # 1. The manager's CA, untrusted until it matches the token's digest.
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            ca_pem = (await _call(insecure, "GET", f"https://{remote}/v1/ca"))["ca_cert"]
            if not tok.matches_ca(ca_pem):
                raise ClusterError(
                    f"the CA of {remote} does not match the join token: wrong token or cluster, "
                    "or someone is intercepting the connection", 403)
            # 2. Everything else only over TLS verified against that CA.
            verified = ssl.create_default_context(cadata=ca_pem)
            verified.check_hostname = False
            advertise = _with_port(advertise_addr) if advertise_addr else _local_addr_towards(remote, listen_addr)
            key, csr = make_key_and_csr("joining")
            resp = await _call(verified, "POST", f"https://{remote}/v1/join", {
                "token": token, "csr": csr, "advertise_addr": advertise,
                "description": describe_host(self.hostname),
            })
            self._wipe()
            self._save_certs(resp["ca_cert"], resp["cert"], key)
            self._save_secrets_key(resp)
            self.state = ClusterState(resp["cluster_id"], resp["node_id"], resp["role"], listen_addr, advertise,
                                      int(resp.get("raft_id") or 0), list(resp.get("managers") or [remote]),
                                      time.time())
            self._save_state()
            if self.state.role == "manager":
                await self._start_manager({})
            self._start_session()
            return {"node_id": self.state.node_id, "role": self.state.role, "cluster_id": self.state.cluster_id}

    # -- leave -------------------------------------------------------------------

    async def leave(self, force: bool) -> dict[str, Any]:
        async with self._lock:
            if self.load() is None:
                raise ClusterError("this node is not part of a cluster", 409)
            if self.state is not None and self.state.role == "manager" and not force:
                raise ClusterError(
                    "this node is a manager: leaving can cost the cluster its quorum. "
                    "Demote it first (orch node demote), or use --force", 409)
            node_id = self.state.node_id if self.state else ""
            if self.manager is not None and self.state is not None:
                raft = self.manager.raft
                if raft.is_leader and len(raft.conf_state.voters) > 1:
                    try:
                        await raft.remove_member(self.state.raft_id)
                    except Exception as e:  # best effort: --force leaves regardless
                        log.warning("could not remove this manager from raft before leaving: %s", e)
            await self.stop()
            if self.worker is not None:
                # As Swarm: the node's tasks go with it, and so do their networks.
                await self.worker.leave()
            self._wipe()
            self.state = None
            return {"node_id": node_id, "left": True}

    def _wipe(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(os.path.join(self.data_dir, "manager"), ignore_errors=True)


async def _call(ctx: ssl.SSLContext, method: str, url: str, body: Any = None) -> Any:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                         timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.request(method, url, json=body) as r:
                data = await r.json(content_type=None)
                if r.status >= 400:
                    err = data.get("error", {}) if isinstance(data, dict) else {}
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise ClusterError(f"{url.split('/v1')[0]}: {msg or r.reason}", r.status)
                return data
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot reach the manager at {url.split('/v1')[0]}: {e}", 502) from None


def _default_advertise(listen_addr: str) -> str:
    host, _, port = listen_addr.rpartition(":")
    if host not in ("0.0.0.0", "", "::", "[::]"):
        return listen_addr
    # The address of the interface that carries the default route; never sends a packet.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return f"{s.getsockname()[0]}:{port}"
    except OSError:
        raise ClusterError("cannot work out an address to advertise: pass --advertise-addr") from None


def _local_addr_towards(remote: str, listen_addr: str) -> str:
    host, _, port = remote.rpartition(":")
    lhost, _, lport = listen_addr.rpartition(":")
    if lhost not in ("0.0.0.0", "", "::", "[::]"):
        return listen_addr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host.strip("[]"), int(port)))  # UDP connect: picks the route, sends nothing
        return f"{s.getsockname()[0]}:{lport}"
