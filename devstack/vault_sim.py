"""A HashiCorp Vault simulator for tests and the local stack, on loopback.

Speaks the subset of Vault's HTTP API that Rewind (through hvac and the hashicorp provider's
VaultHook) uses, with Vault's shapes: `X-Vault-Token` header, errors as `{"errors": [...]}`,
403 "permission denied" for an unknown token or a path its policy does not grant, 503 while sealed.

    GET  /v1/sys/health                      200 active, 503 sealed
    GET  /v1/auth/token/lookup-self          the calling token
    POST /v1/auth/approle/login              {role_id, secret_id} -> auth.client_token
    GET  /v1/<kv mount>/data/<path>          KV v2 read: data.data, data.metadata
    GET  /v1/<aws mount>/creds/<role>        AWS secrets engine (iam_user): a new IAM user + access
                                             key in the S3 stack's IAM (moto), returned with a lease
    PUT  /v1/sys/leases/renew                {lease_id}: the lease runs for the role's duration again
    PUT  /v1/sys/leases/revoke               {lease_id}: the IAM user and its key are deleted

Leases also expire: after lease_duration the simulator revokes them itself, as Vault does, so a
leased key stops working against S3 at the same moment it would in production.

For tests and people:
    POST /sim/mode   {"mode": "ok" | "sealed" | "forbidden" | "error"}   (error = HTTP 500)
    GET  /sim/leases every lease issued, with revoked / expired flags (no secret values)

    python -m devstack.vault_sim serve --port 8200 --s3-url ... (see --help)
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlparse

from devstack.net import LoopbackHTTPService

MODES = ("ok", "sealed", "forbidden", "error")


@dataclass
class AwsRole:
    """An AWS secrets engine role. iam_user: every lease is a new IAM user with this policy,
    deleted on revocation. assumed_role: every lease is an STS session of one IAM role with this
    policy (a session token, not renewable; revocation cannot end it, its TTL does)."""

    policy_document: dict
    lease_duration_s: int = 900
    credential_type: str = "iam_user"
    role_arn: str | None = None


@dataclass
class Lease:
    lease_id: str
    role: str
    access_key: str
    user_name: str
    issued_at: float
    lease_duration_s: int
    revoked_at: float | None = None
    revoked_by: str = ""  # "request" or "expiry"
    renewals: int = 0
    renewable: bool = True

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.lease_duration_s

    def public(self) -> dict:
        return {
            "lease_id": self.lease_id,
            "role": self.role,
            "access_key": self.access_key,
            "user_name": self.user_name,
            "issued_at": self.issued_at,
            "lease_duration": self.lease_duration_s,
            "revoked": self.revoked_at is not None,
            "revoked_by": self.revoked_by,
            "renewals": self.renewals,
        }


@dataclass
class Token:
    policies: list[str]
    accessor: str = field(default_factory=lambda: uuid.uuid4().hex)
    ttl_s: int = 3600
    issued_at: float = field(default_factory=time.time)


@dataclass
class VaultState:
    """What the simulated Vault holds. `iam` is a boto3 IAM client of the S3 stack (admin rights)."""

    iam: Any = None
    sts: Any = None  # boto3 STS client of the S3 stack, for assumed_role roles
    root_token: str = field(default_factory=lambda: "hvs." + secrets.token_urlsafe(24))
    tokens: dict[str, Token] = field(default_factory=dict)
    # policy name -> path prefixes it may read (and for sys/leases/revoke: update)
    policies: dict[str, list[str]] = field(default_factory=dict)
    approles: dict[str, dict] = field(default_factory=dict)  # role_id -> {secret_id, policies}
    kv: dict[str, dict[str, dict]] = field(default_factory=dict)  # mount -> path -> {data, version}
    aws_mounts: dict[str, dict[str, AwsRole]] = field(default_factory=dict)  # mount -> role -> AwsRole
    leases: dict[str, Lease] = field(default_factory=dict)
    # Every secret value handed out (leased keys, KV values), so a test can search logs, argv and
    # files for them. Vault itself of course knows them too.
    issued_values: list[str] = field(default_factory=list)
    mode: str = "ok"
    requests: list[dict] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.tokens.setdefault(self.root_token, Token(policies=["root"]))

    # ---- configuration (what an operator would do with the vault CLI) -----------------------------
    def put_kv(self, mount: str, path: str, data: dict) -> None:
        with self.lock:
            entry = self.kv.setdefault(mount, {}).get(path)
            version = (entry["version"] + 1) if entry else 1
            self.kv[mount][path] = {"data": dict(data), "version": version, "created_time": _iso(time.time())}

    def add_aws_role(
        self, mount: str, role: str, policy_document: dict, lease_duration_s: int = 900, credential_type: str = "iam_user"
    ) -> None:
        role_arn = None
        if credential_type == "assumed_role":  # the IAM role an operator would have created for it
            trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
            created = self.iam.create_role(RoleName=f"vault-{role}", AssumeRolePolicyDocument=json.dumps(trust))
            self.iam.put_role_policy(RoleName=f"vault-{role}", PolicyName="vault", PolicyDocument=json.dumps(policy_document))
            role_arn = created["Role"]["Arn"]
        with self.lock:
            self.aws_mounts.setdefault(mount, {})[role] = AwsRole(policy_document, lease_duration_s, credential_type, role_arn)

    def add_policy(self, name: str, paths: list[str]) -> None:
        with self.lock:
            self.policies[name] = list(paths)

    def add_approle(self, policies: list[str]) -> tuple[str, str]:
        role_id, secret_id = str(uuid.uuid4()), str(uuid.uuid4())
        with self.lock:
            self.approles[role_id] = {"secret_id": secret_id, "policies": list(policies)}
        return role_id, secret_id

    def create_token(self, policies: list[str]) -> str:
        token = "hvs." + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = Token(policies=list(policies))
        return token

    # ---- engine behaviour --------------------------------------------------------------------------
    def allowed(self, token: str | None, path: str) -> bool:
        with self.lock:
            entry = self.tokens.get(token or "")
            if entry is None:
                return False
            if "root" in entry.policies:
                return True
            prefixes = [p for name in entry.policies for p in self.policies.get(name, [])]
        return any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in prefixes)

    def issue_aws_credentials(self, mount: str, role_name: str) -> dict:
        with self.lock:
            role = self.aws_mounts[mount][role_name]
        if role.credential_type == "assumed_role":
            return self._issue_sts_credentials(mount, role_name, role)
        user_name = f"vault-{role_name}-{int(time.time())}-{secrets.token_hex(4)}"
        self.iam.create_user(UserName=user_name)
        self.iam.put_user_policy(UserName=user_name, PolicyName="vault", PolicyDocument=json.dumps(role.policy_document))
        key = self.iam.create_access_key(UserName=user_name)["AccessKey"]
        lease = Lease(
            lease_id=f"{mount}/creds/{role_name}/{secrets.token_urlsafe(18)}",
            role=role_name,
            access_key=key["AccessKeyId"],
            user_name=user_name,
            issued_at=time.time(),
            lease_duration_s=role.lease_duration_s,
        )
        with self.lock:
            self.leases[lease.lease_id] = lease
            self.issued_values += [key["AccessKeyId"], key["SecretAccessKey"]]
        return {
            "lease_id": lease.lease_id,
            "renewable": True,
            "lease_duration": lease.lease_duration_s,
            "data": {"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"], "security_token": None},
        }

    def _issue_sts_credentials(self, mount: str, role_name: str, role: AwsRole) -> dict:
        session = self.sts.assume_role(
            RoleArn=role.role_arn,
            RoleSessionName=f"vault-{role_name}-{secrets.token_hex(4)}",
            DurationSeconds=max(900, role.lease_duration_s),
        )["Credentials"]
        lease = Lease(
            lease_id=f"{mount}/creds/{role_name}/{secrets.token_urlsafe(18)}",
            role=role_name,
            access_key=session["AccessKeyId"],
            user_name="",
            issued_at=time.time(),
            lease_duration_s=role.lease_duration_s,
            renewable=False,
        )
        with self.lock:
            self.leases[lease.lease_id] = lease
            self.issued_values += [session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]]
        return {
            "lease_id": lease.lease_id,
            "renewable": False,
            "lease_duration": lease.lease_duration_s,
            "data": {
                "access_key": session["AccessKeyId"],
                "secret_key": session["SecretAccessKey"],
                "security_token": session["SessionToken"],
            },
        }

    def renew(self, lease_id: str) -> Lease | None:
        """Vault's lease renewal: the lease runs for the role's lease duration from now."""
        with self.lock:
            lease = self.leases.get(lease_id)
            if lease is None or lease.revoked_at is not None or not lease.renewable:
                return None
            lease.lease_duration_s = (
                int(time.time() - lease.issued_at) + self.aws_mounts[lease_id.split("/")[0]][lease.role].lease_duration_s
            )
            lease.renewals += 1
            return lease

    def revoke(self, lease_id: str, *, by: str = "request") -> bool:
        with self.lock:
            lease = self.leases.get(lease_id)
            if lease is None or lease.revoked_at is not None:
                return lease is not None
            lease.revoked_at, lease.revoked_by = time.time(), by
        if not lease.user_name:  # an STS session: nothing Vault can delete, it ends at its TTL
            return True
        # What Vault's AWS engine does on revocation: delete the key, the inline policy, the user.
        self.iam.delete_access_key(UserName=lease.user_name, AccessKeyId=lease.access_key)
        self.iam.delete_user_policy(UserName=lease.user_name, PolicyName="vault")
        self.iam.delete_user(UserName=lease.user_name)
        return True

    def expire_leases(self) -> None:
        now = time.time()
        with self.lock:
            due = [lease.lease_id for lease in self.leases.values() if lease.revoked_at is None and now >= lease.expires_at]
        for lease_id in due:
            self.revoke(lease_id, by="expiry")


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(epoch))


def make_handler(state: VaultState):
    class Handler(BaseHTTPRequestHandler):
        server_version = "VaultSim/1.0"

        def log_message(self, *_args):  # quiet
            pass

        def _send(self, status: int, body: dict | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _errors(self, status: int, *messages: str) -> None:
            self._send(status, {"errors": list(messages)})

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}") if length else {}

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            path = url.path
            if path.startswith("/sim/"):
                return self._sim(method, path)
            if not path.startswith("/v1/"):
                return self._errors(404)
            api = path[len("/v1/") :]
            with state.lock:
                state.requests.append({"method": method, "path": api})
                mode = state.mode
            if api == "sys/health":
                if mode == "sealed":
                    return self._send(503, {"initialized": True, "sealed": True, "standby": True, "version": "1.17.0-sim"})
                return self._send(
                    200, {"initialized": True, "sealed": False, "standby": False, "version": "1.17.0-sim", "cluster_name": "vault-sim"}
                )
            if mode == "sealed":
                return self._errors(503, "Vault is sealed")
            if mode == "error":
                return self._errors(500, "internal error")
            if api == "auth/approle/login" and method in ("POST", "PUT"):
                return self._approle_login(self._body())
            token = self.headers.get("X-Vault-Token") or ""
            if mode == "forbidden" or token not in state.tokens:
                return self._errors(403, "permission denied")
            if api == "auth/token/lookup-self" and method == "GET":  # Vault's default policy allows it
                entry = state.tokens[token]
                return self._send(200, {"data": {"accessor": entry.accessor, "policies": entry.policies, "ttl": entry.ttl_s, "id": token}})
            if not state.allowed(token, api):
                return self._errors(403, "permission denied")
            if api == "sys/leases/renew" and method in ("PUT", "POST"):
                lease = state.renew(self._body().get("lease_id", ""))
                if lease is None:
                    return self._errors(400, "lease not found or lease is not renewable")
                remaining = int(lease.expires_at - time.time())
                return self._send(200, {"lease_id": lease.lease_id, "renewable": True, "lease_duration": remaining})
            if api == "sys/leases/revoke" and method in ("PUT", "POST"):
                lease_id = self._body().get("lease_id", "")
                if not state.revoke(lease_id):
                    return self._errors(400, f"invalid lease ID {lease_id!r}")
                return self._send(204)
            parts = api.split("/")
            if method == "GET" and len(parts) >= 3 and parts[1] == "data" and parts[0] in state.kv:
                entry = state.kv[parts[0]].get("/".join(parts[2:]))
                if entry is None:
                    return self._errors(404)
                with state.lock:
                    state.issued_values += [str(v) for v in entry["data"].values()]
                return self._send(
                    200,
                    {
                        "request_id": str(uuid.uuid4()),
                        "lease_id": "",
                        "renewable": False,
                        "lease_duration": 0,
                        "data": {
                            "data": entry["data"],
                            "metadata": {
                                "created_time": entry["created_time"],
                                "deletion_time": "",
                                "destroyed": False,
                                "version": entry["version"],
                            },
                        },
                    },
                )
            if method in ("GET", "POST", "PUT") and len(parts) == 3 and parts[1] == "creds" and parts[0] in state.aws_mounts:
                if parts[2] not in state.aws_mounts[parts[0]]:
                    return self._errors(400, f"unknown role: {parts[2]}")
                try:
                    issued = state.issue_aws_credentials(parts[0], parts[2])
                except Exception as exc:  # what Vault says when AWS refuses it
                    return self._errors(500, f"error creating IAM user: {exc}")
                return self._send(200, {"request_id": str(uuid.uuid4()), **issued})
            return self._errors(404, f"no handler for route {api!r}")

        def _approle_login(self, body: dict) -> None:
            role = state.approles.get(body.get("role_id", ""))
            if role is None or not secrets.compare_digest(role["secret_id"], str(body.get("secret_id", ""))):
                return self._errors(400, "invalid role or secret ID")
            token = state.create_token(role["policies"])
            entry = state.tokens[token]
            return self._send(
                200,
                {
                    "auth": {
                        "client_token": token,
                        "accessor": entry.accessor,
                        "policies": entry.policies,
                        "token_policies": entry.policies,
                        "lease_duration": entry.ttl_s,
                        "renewable": True,
                    }
                },
            )

        def _sim(self, method: str, path: str) -> None:
            if path == "/sim/mode" and method == "POST":
                mode = self._body().get("mode")
                if mode not in MODES:
                    return self._errors(400, f"mode must be one of {', '.join(MODES)}")
                with state.lock:
                    state.mode = mode
                return self._send(200, {"mode": mode})
            if path == "/sim/leases" and method == "GET":
                with state.lock:
                    return self._send(200, {"leases": [lease.public() for lease in state.leases.values()]})
            return self._errors(404)

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

    return Handler


class VaultSimulator(LoopbackHTTPService):
    """Runs the simulator in background threads of this process (server + lease reaper)."""

    def __init__(self, state: VaultState, port: int = 0, host: str = "127.0.0.1"):
        self.state = state
        super().__init__(make_handler(state), port, host)
        self.approle: tuple[str, str] | None = None  # (role_id, secret_id) the workers log in with
        self._stop = threading.Event()
        self._threads.append(threading.Thread(target=self._reap, daemon=True))

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.state.expire_leases()
            except Exception:  # the S3 stack may already be gone at shutdown
                pass

    def airflow_connection(self, *, token: str | None = None, approle: tuple[str, str] | None = None) -> str:
        return airflow_connection(self.port, token=token or (None if approle else self.state.root_token), approle=approle, host=self.host)

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        with self.state.lock:
            self.state.mode = mode

    def leases(self) -> list[Lease]:
        with self.state.lock:
            return list(self.state.leases.values())

    def stop(self) -> None:
        self._stop.set()
        super().stop()


def rewind_policy_paths(*, aws_mount: str, aws_role: str, kv_mount: str, kv_path: str) -> list[str]:
    """The least a Rewind worker needs: its cluster's creds and passphrase, and revoking its leases."""
    return [f"{aws_mount}/creds/{aws_role}", f"{kv_mount}/data/{kv_path}", "sys/leases/renew", "sys/leases/revoke"]


def airflow_connection(port: int, *, token: str | None = None, approle: tuple[str, str] | None = None, host: str = "127.0.0.1") -> str:
    """The Airflow connection (JSON, for AIRFLOW_CONN_<ID>) the hashicorp provider's VaultHook reads."""
    conn: dict[str, Any] = {"conn_type": "vault", "host": host, "port": port}
    if approle:
        conn.update(login=approle[0], password=approle[1], extra={"auth_type": "approle"})
    else:
        conn.update(password=token, extra={"auth_type": "token"})
    return json.dumps(conn)


def configure_cluster(
    state: VaultState,
    *,
    cluster: str,
    bucket: str,
    cipher_pass: str,
    lease_duration_s: int = 900,
    repo_path: str | None = None,
    kms_key_arn: str | None = None,
) -> str:
    """What a Vault admin sets up for one Rewind cluster: KV v2 secret/rewind/<cluster> {cipher_pass},
    AWS role rewind-<cluster> whose keys get terraform/'s repository policy for <bucket><repo_path>
    (default /rewind/<cluster>, the demo stack's layout), and a least-privilege Vault policy of the
    same name, which it returns. `inventory_credentials` is the matching inventory section."""
    name, kv_path = f"rewind-{cluster}", f"rewind/{cluster}"
    policy_document = s3_bucket_policy(bucket, repo_path or f"/rewind/{cluster}", kms_key_arn=kms_key_arn)
    state.put_kv("secret", kv_path, {"cipher_pass": cipher_pass})
    state.add_aws_role("aws", name, policy_document, lease_duration_s=lease_duration_s)
    state.add_policy(name, rewind_policy_paths(aws_mount="aws", aws_role=name, kv_mount="secret", kv_path=kv_path))
    return name


def inventory_credentials(cluster: str, env_prefix: str, *, aws_role: str | None = None) -> dict:
    """The inventory's credentials section for a cluster set up by `configure_cluster`. PostgreSQL's
    own archive-push/archive-get keep the stack's static key from the environment (no instance role
    on these machines)."""
    return {
        "source": "vault",
        "env_prefix": env_prefix,
        "vault": {
            "conn_id": "vault_default",
            "aws_mount": "aws",
            "aws_role": aws_role or f"rewind-{cluster}",
            "kv_mount": "secret",
            "kv_path": f"rewind/{cluster}",
        },
        "postmaster_s3_keys": "env",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vault-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a Vault holding one cluster's repository secrets")
    serve.add_argument("--port", type=int, default=8200)
    serve.add_argument("--s3-url", required=True, help="the S3 stack's URL (IAM API of moto), e.g. https://127.0.0.1:9000")
    serve.add_argument("--ca-file", required=True)
    serve.add_argument("--cluster", default="demo")
    serve.add_argument("--bucket", required=True)
    serve.add_argument("--repo-path", default=None, help="the cluster's repo.path (default /rewind/<cluster>)")
    args = parser.parse_args(argv)
    import os

    import boto3

    # The S3 admin key, the passphrase and the AppRole come from the environment, never argv.
    iam = boto3.client(
        "iam",
        endpoint_url=args.s3_url,
        region_name="us-east-1",
        verify=args.ca_file,
        aws_access_key_id=os.environ["VAULT_SIM_AWS_KEY"],
        aws_secret_access_key=os.environ["VAULT_SIM_AWS_SECRET"],
    )
    state = VaultState(iam=iam)
    state.root_token = os.environ.get("VAULT_SIM_ROOT_TOKEN") or state.root_token
    state.tokens = {state.root_token: Token(policies=["root"])}
    policy = configure_cluster(
        state, cluster=args.cluster, bucket=args.bucket, cipher_pass=os.environ["VAULT_SIM_CIPHER_PASS"], repo_path=args.repo_path
    )
    if os.environ.get("VAULT_SIM_ROLE_ID"):
        state.approles[os.environ["VAULT_SIM_ROLE_ID"]] = {"secret_id": os.environ["VAULT_SIM_SECRET_ID"], "policies": [policy]}
    sim = VaultSimulator(state, args.port).start()
    print(f"Vault simulator on {sim.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.stop()
    return 0


def s3_bucket_policy(bucket: str, repo_path: str = "/rewind/demo", *, kms_key_arn: str | None = None) -> dict:
    """The IAM policy of a Rewind repository role: terraform/'s repository policy document (the one
    the module gives Vault's AWS role) for <bucket><repo_path>, parsed from the .tf files. Listing,
    reading, writing and deleting are limited to the repository prefix; nothing else in the bucket,
    no other bucket. `kms_key_arn`: the bucket's SSE-KMS key, when it has one."""
    from devstack.s3tls import terraform_repository_policy

    return terraform_repository_policy(bucket, repo_path, kms_key_arn=kms_key_arn)


if __name__ == "__main__":
    sys.exit(main())
