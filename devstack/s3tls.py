"""An S3 API over TLS on loopback, for tests and the local stack.

moto's server speaks plain HTTP; pgBackRest 2.45 only speaks HTTPS to S3 and moto's own ``--ssl``
mode breaks its TLS client ("unexpected eof"), so stunnel4 terminates TLS in front of moto with a
self-signed certificate. TLS verification stays ON: pgBackRest is given the certificate as its CA
file, exactly as a production repository with a private CA would be configured.

Authentication is ON, as in AWS: moto checks every request's SigV4 signature against its IAM
users and their policies. The stack bootstraps one admin IAM user (S3 and IAM rights) and uses its
generated key as the "static" credentials (S3, IAM and STS rights); Vault's AWS engine (the simulator) creates and deletes
further IAM users through it, so a leased key works exactly until its lease is revoked.

IAM policies are evaluated as AWS does, conditions included. moto 5.2.5 checks an identity
policy's Action and Resource but not its Condition (it never passes the request's condition keys,
and a failed condition on an Allow would count as an explicit Deny), and it authorizes a
multi-object delete against the bucket instead of each object. moto therefore runs here with
`_enforce_identity_policies`, which decides every S3 request of an IAM user or role the way AWS
documents: explicit Deny wins, else an Allow whose Action, Resource and Condition (s3:prefix,
s3:delimiter, s3:max-keys on ListBucket) all match, else denied; a multi-object delete needs
s3:DeleteObject on every key. Each decision is appended to <workdir>/iam-decisions.jsonl.

The bucket as code (``as_code=True``): the bucket is created with the settings terraform/
declares (Object Lock in GOVERNANCE mode, versioning, SSE-KMS with a bucket key, the lifecycle,
the public access block, ownership controls), read from the .tf files with python-hcl2, and the
repository policy Vault's AWS role gives its leased keys is the module's own policy document
(`terraform_repository_policy`).

Stopping only the TLS front (``stop_tls``) makes the repository unreachable while moto keeps every
object, which is how an S3 outage is simulated without losing the repository.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from devstack.net import free_port, wait_for_port
from rewind.runner import kill_process_group


def write_self_signed_cert(directory: Path, *, common_name: str = "127.0.0.1", addresses: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write cert.pem/key.pem valid for 127.0.0.1, localhost and `addresses` (where the clients
    reach the endpoint, e.g. the database hosts' bridge address); returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    # pgBackRest matches the host name against DNS SANs, boto3 an IP address against IP SANs
                    *(
                        san
                        for address in dict.fromkeys(("127.0.0.1", *addresses))
                        for san in (x509.DNSName(address), x509.IPAddress(ipaddress.ip_address(address)))
                    ),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "s3-cert.pem", directory / "s3-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.chmod(0o644)  # the CA file must be readable by the cluster's OS user
    key_path.chmod(0o600)
    return cert_path, key_path


def stunnel_binary() -> str:
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("stunnel4 is not installed: apt-get install -y stunnel4")


@dataclass
class S3OverTLS:
    """moto_server on plain HTTP on 127.0.0.1 behind stunnel4 on HTTPS on `host` (127.0.0.1, or an
    address the database hosts reach, devstack.netns; the certificate names it)."""

    workdir: Path
    host: str = "127.0.0.1"
    bucket: str = "rewind-repo"
    region: str = "us-east-1"
    as_code: bool = False  # create the bucket as terraform/ declares it (Object Lock, versioning, SSE-KMS, ...)
    tls_port: int = 0
    moto_port: int = 0
    access_key: str = field(default="", repr=False)  # the bootstrap admin user's key, generated by moto at start
    secret_key: str = field(default="", repr=False)
    kms_key_arn: str | None = None  # as_code: the key of the bucket's default encryption (a moto KMS key)
    _moto: subprocess.Popen | None = field(default=None, repr=False)
    _stunnel: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def ca_file(self) -> Path:
        return self.workdir / "s3-cert.pem"

    @property
    def endpoint(self) -> str:
        return self.host

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.tls_port}"

    def start(self) -> S3OverTLS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.moto_port = self.moto_port or free_port()
        self.tls_port = self.tls_port or free_port()
        write_self_signed_cert(self.workdir, addresses=(self.host,))
        self._start_moto()
        self.start_tls()
        self._bootstrap_admin()
        self.create_bucket()
        self._enforce_auth()
        return self

    ADMIN_USER = "rewind-stack-admin"
    ADMIN_POLICY = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*", "sts:*", "kms:*"], "Resource": "*"}],
    }

    def _bootstrap_admin(self) -> None:
        """Create the admin IAM user while moto still accepts unsigned requests."""
        import json

        iam = self.client("iam", access_key="bootstrap", secret_key="bootstrap")
        iam.create_user(UserName=self.ADMIN_USER)
        iam.put_user_policy(UserName=self.ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps(self.ADMIN_POLICY))
        key = iam.create_access_key(UserName=self.ADMIN_USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def _enforce_auth(self) -> None:
        """From now on moto authenticates and authorizes every request (its reset-auth API)."""
        import requests

        response = requests.post(f"http://127.0.0.1:{self.moto_port}/moto-api/reset-auth", data=b"0", timeout=10)
        response.raise_for_status()

    @property
    def iam_decisions_path(self) -> Path:
        return self.workdir / "iam-decisions.jsonl"

    def iam_decisions(self, principal_contains: str = "") -> list[dict]:
        """Every S3 authorization decision taken for an IAM user or role so far (see the module doc)."""
        if not self.iam_decisions_path.exists():
            return []
        lines = self.iam_decisions_path.read_text().splitlines()
        return [d for d in map(json.loads, lines) if principal_contains in d["principal"]]

    def _start_moto(self) -> None:
        log = open(self.workdir / "moto.log", "ab")
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "devstack.s3tls", "moto", "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "REWIND_S3_IAM_DECISIONS": str(self.iam_decisions_path)},
        )
        wait_for_port(self.moto_port, timeout=30, process=self._moto)

    def start_tls(self) -> None:
        """Start (or restart) the TLS front: the repository becomes reachable."""
        conf = self.workdir / "stunnel.conf"
        conf.write_text(
            "foreground = yes\n"
            f"output = {self.workdir / 'stunnel.log'}\n"
            "[s3]\n"
            f"accept = {self.host}:{self.tls_port}\n"
            f"connect = 127.0.0.1:{self.moto_port}\n"
            f"cert = {self.workdir / 's3-cert.pem'}\n"
            f"key = {self.workdir / 's3-key.pem'}\n"
        )
        self._stunnel = subprocess.Popen(
            [stunnel_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.tls_port, timeout=30, host=self.host, process=self._stunnel)

    def stop_tls(self) -> None:
        """Stop the TLS front only: S3 is unreachable, moto keeps every object."""
        kill_process_group(self._stunnel)
        self._stunnel = None

    def client(self, service: str = "s3", *, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 client over TLS, signed with the admin key unless another key is given."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            verify=str(self.ca_file),
        )

    def create_bucket(self) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket in existing:
            return
        if not self.as_code:
            client.create_bucket(Bucket=self.bucket)
            return
        self.kms_key_arn = self.client("kms").create_key(Description=f"SSE-KMS key of {self.bucket}")["KeyMetadata"]["Arn"]
        apply_bucket_posture(client, self.bucket, terraform_bucket_posture(kms_key_arn=self.kms_key_arn))

    def stop(self) -> None:
        self.stop_tls()
        kill_process_group(self._moto)
        self._moto = None

    def __enter__(self) -> S3OverTLS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the bucket as code: terraform/ read with python-hcl2 ----------------------------------------

TERRAFORM_DIR = Path(__file__).resolve().parent.parent / "terraform"


class TerraformModule:
    """The blocks of every .tf file of a module, as python-hcl2 parses them (strings unquoted,
    expressions kept as "${...}"). No Terraform here: `render` binds the few references the
    module's policy and bucket settings use to values given by the caller, and refuses any other."""

    def __init__(self, directory: Path = TERRAFORM_DIR):
        import hcl2

        options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
        self.directory = directory
        self.resources: dict[str, dict[str, dict]] = {}
        self.data: dict[str, dict[str, dict]] = {}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, Any] = {}
        self.outputs: dict[str, dict] = {}
        files = sorted(directory.glob("*.tf"))
        if not files:
            raise FileNotFoundError(f"no .tf file in {directory}")
        for path in files:
            with path.open() as handle:
                parsed = hcl2.load(handle, serialization_options=options)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for entry in parsed.get(kind, []):
                    for type_name, named in entry.items():
                        target.setdefault(type_name, {}).update(named)
            for entry in parsed.get("variable", []):
                self.variables.update(entry)
            for entry in parsed.get("locals", []):
                self.locals.update(entry)
            for entry in parsed.get("output", []):
                self.outputs.update(entry)

    def variable_bindings(self) -> dict[str, Any]:
        return {f"var.{name}": body["default"] for name, body in self.variables.items() if "default" in body}

    @staticmethod
    def render(value: Any, bindings: dict[str, Any]) -> Any:
        """Replace every ${reference} by its binding: a string that is one reference becomes the
        bound value itself (a number stays a number), references inside a string are spliced in."""
        if isinstance(value, list):
            return [TerraformModule.render(item, bindings) for item in value]
        if isinstance(value, dict):
            return {key: TerraformModule.render(item, bindings) for key, item in value.items()}
        if not isinstance(value, str):
            return value

        def bound(expression: str) -> Any:
            if expression not in bindings:
                raise KeyError(f"terraform/: no binding for ${{{expression}}} (bound: {', '.join(sorted(bindings))})")
            return bindings[expression]

        whole = re.fullmatch(r"\$\{([^{}]+)\}", value)
        if whole:
            return bound(whole.group(1).strip())
        return re.sub(r"\$\{([^{}]+)\}", lambda m: str(bound(m.group(1).strip())), value)


def _one(blocks: list[dict] | dict) -> dict:
    """A nested block that must appear once (python-hcl2 gives every nested block as a list)."""
    if isinstance(blocks, dict):
        return blocks
    if len(blocks) != 1:
        raise ValueError(f"terraform/: expected one block, found {len(blocks)}")
    return blocks[0]


def _known(block: dict, keys: set[str], where: str) -> dict:
    unknown = set(block) - keys
    if unknown:  # a setting this reader does not apply would silently not be tested: refuse
        raise ValueError(f"terraform/: {where} has {', '.join(sorted(unknown))}, which the test stack does not apply")
    return block


def terraform_repository_policy(
    bucket: str,
    repo_path: str,
    *,
    kms_key_arn: str | None = None,
    region: str = "us-east-1",
    partition: str = "aws",
    module: TerraformModule | None = None,
) -> dict:
    """The IAM policy (JSON, as aws_iam_policy_document renders it) of one repository: terraform/'s
    data "aws_iam_policy_document" "repository" with the bucket, the repository path and the key
    bound. Without a key (a bucket that has no SSE-KMS) the statement granting the key is left out:
    it would have nothing to grant."""
    module = module or TerraformModule()
    document = module.data["aws_iam_policy_document"]["repository"]
    bucket_arn = f"arn:{partition}:s3:::{bucket}"
    bindings = {
        **module.variable_bindings(),
        "aws_s3_bucket.repository.arn": bucket_arn,
        "local.repo_prefixes[each.key]": repo_path.strip("/"),  # locals.repo_prefixes: trim(repo.path, "/")
        "data.aws_region.current.region": region,
    }
    if kms_key_arn is not None:
        bindings["local.kms_key_arn"] = kms_key_arn
    statements = []
    for statement in document["statement"]:
        _known(statement, {"sid", "effect", "actions", "not_actions", "resources", "not_resources", "condition"}, "a policy statement")
        if kms_key_arn is None and "${local.kms_key_arn}" in statement.get("resources", []):
            continue
        statement = TerraformModule.render(statement, bindings)
        rendered: dict[str, Any] = {"Sid": statement["sid"]} if "sid" in statement else {}
        rendered["Effect"] = statement.get("effect", "Allow")
        for hcl_key, iam_key in (
            ("actions", "Action"),
            ("not_actions", "NotAction"),
            ("resources", "Resource"),
            ("not_resources", "NotResource"),
        ):
            if hcl_key in statement:
                rendered[iam_key] = list(statement[hcl_key])
        conditions: dict[str, dict[str, list[str]]] = {}
        for condition in statement.get("condition", []):
            _known(condition, {"test", "variable", "values"}, "a policy condition")
            keys = conditions.setdefault(condition["test"], {})
            if condition["variable"] in keys:
                raise ValueError(f"terraform/: condition {condition['test']} {condition['variable']} appears twice in one statement")
            keys[condition["variable"]] = list(condition["values"])
        if conditions:
            rendered["Condition"] = conditions
        statements.append(rendered)
    return {"Version": "2012-10-17", "Statement": statements}


def terraform_bucket_posture(*, kms_key_arn: str | None, module: TerraformModule | None = None) -> dict:
    """The bucket's settings as terraform/ declares them, as the S3 API's request bodies (boto3
    keyword arguments of create_bucket and the put_bucket_* calls). The bucket policy (TLS only) is
    not part of it: moto does not evaluate aws:SecureTransport, and stunnel4 is the only way in."""
    module = module or TerraformModule()
    bindings = {**module.variable_bindings(), "aws_s3_bucket.repository.id": "(the bucket)", "local.kms_key_arn": kms_key_arn}

    def resource(type_name: str) -> dict:
        body = {key: value for key, value in module.resources[type_name]["repository"].items() if key != "depends_on"}
        return TerraformModule.render(body, bindings)

    bucket = module.resources["aws_s3_bucket"]["repository"]
    versioning = _one(resource("aws_s3_bucket_versioning")["versioning_configuration"])
    retention = _one(_one(resource("aws_s3_bucket_object_lock_configuration")["rule"])["default_retention"])
    sse_rule = _one(resource("aws_s3_bucket_server_side_encryption_configuration")["rule"])
    sse_default = _one(sse_rule["apply_server_side_encryption_by_default"])
    if sse_default["sse_algorithm"] == "aws:kms" and kms_key_arn is None:
        raise ValueError("terraform/ encrypts with SSE-KMS: give the key (kms_key_arn)")
    lifecycle_rules = []
    for rule in resource("aws_s3_bucket_lifecycle_configuration")["rule"]:
        _known(
            rule,
            {"id", "status", "filter", "noncurrent_version_expiration", "abort_incomplete_multipart_upload", "expiration"},
            "a lifecycle rule",
        )
        rendered: dict[str, Any] = {"ID": rule["id"], "Status": rule["status"]}
        rule_filter = _known(_one(rule.get("filter", [{}])), {"prefix"}, "a lifecycle filter")
        rendered["Filter"] = {"Prefix": rule_filter["prefix"]} if "prefix" in rule_filter else {}
        if "noncurrent_version_expiration" in rule:
            rendered["NoncurrentVersionExpiration"] = {"NoncurrentDays": _one(rule["noncurrent_version_expiration"])["noncurrent_days"]}
        if "abort_incomplete_multipart_upload" in rule:
            days = _one(rule["abort_incomplete_multipart_upload"])["days_after_initiation"]
            rendered["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
        if "expiration" in rule:
            expiration = _known(_one(rule["expiration"]), {"expired_object_delete_marker"}, "a lifecycle expiration")
            rendered["Expiration"] = {"ExpiredObjectDeleteMarker": expiration["expired_object_delete_marker"]}
        lifecycle_rules.append(rendered)
    public = resource("aws_s3_bucket_public_access_block")
    ownership = _one(resource("aws_s3_bucket_ownership_controls")["rule"])
    encryption_default: dict[str, Any] = {"SSEAlgorithm": sse_default["sse_algorithm"]}
    if "kms_master_key_id" in sse_default:
        encryption_default["KMSMasterKeyID"] = sse_default["kms_master_key_id"]
    return {
        "ObjectLockEnabledForBucket": bucket["object_lock_enabled"] is True,
        "VersioningConfiguration": {"Status": versioning["status"]},
        "ObjectLockConfiguration": {
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": retention["mode"], "Days": retention["days"]}},
        },
        "ServerSideEncryptionConfiguration": {
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": encryption_default, "BucketKeyEnabled": sse_rule.get("bucket_key_enabled") is True}
            ]
        },
        "LifecycleConfiguration": {"Rules": lifecycle_rules},
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": public["block_public_acls"],
            "IgnorePublicAcls": public["ignore_public_acls"],
            "BlockPublicPolicy": public["block_public_policy"],
            "RestrictPublicBuckets": public["restrict_public_buckets"],
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": ownership["object_ownership"]}]},
    }


def apply_bucket_posture(client, bucket: str, posture: dict) -> None:
    """Create `bucket` with `posture` (terraform_bucket_posture) through the S3 API."""
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=posture["ObjectLockEnabledForBucket"])
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=posture["VersioningConfiguration"])
    client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=posture["ObjectLockConfiguration"])
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=posture["ServerSideEncryptionConfiguration"])
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=posture["LifecycleConfiguration"])
    client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=posture["PublicAccessBlockConfiguration"])
    client.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=posture["OwnershipControls"])


# ---- IAM identity policies evaluated as AWS does (inside the moto server process) ------------------


def _iam_match(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    """IAM's wildcards: * any run of characters, ? one character; nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _condition_holds(operator: str, key: str, expected: list[str] | str, context: dict[str, str]) -> bool | None:
    """One condition key under one operator; None for an operator this evaluator does not know."""
    expected = [expected] if isinstance(expected, str) else [str(v) for v in expected]
    if_exists = operator.endswith("IfExists")
    base = operator[: -len("IfExists")] if if_exists else operator
    if base == "Null":
        return (key not in context) == (expected[0].lower() == "true")
    compare = {
        "StringEquals": lambda e, a: e == a,
        "StringNotEquals": lambda e, a: e == a,
        "StringEqualsIgnoreCase": lambda e, a: e.lower() == a.lower(),
        "StringNotEqualsIgnoreCase": lambda e, a: e.lower() == a.lower(),
        "StringLike": lambda e, a: _iam_match(e, a, case_sensitive=True),
        "StringNotLike": lambda e, a: _iam_match(e, a, case_sensitive=True),
        "Bool": lambda e, a: e.lower() == a.lower(),
    }.get(base)
    if compare is None:
        return None
    negated = "Not" in base
    if key not in context:  # AWS: an absent key matches nothing; a negated operator is then true
        return True if (if_exists or negated) else False
    matched = any(compare(e, context[key]) for e in expected)
    return not matched if negated else matched


def _statement_applies(statement: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    def listed(name: str) -> list[str]:
        value = statement.get(name, [])
        return [value] if isinstance(value, str) else list(value)

    if "Action" in statement:
        if not any(_iam_match(p, action, case_sensitive=False) for p in listed("Action")):
            return False
    elif any(_iam_match(p, action, case_sensitive=False) for p in listed("NotAction")):
        return False
    if "Resource" in statement:
        if not any(_iam_match(p, resource, case_sensitive=True) for p in listed("Resource")):
            return False
    elif "NotResource" in statement and any(_iam_match(p, resource, case_sensitive=True) for p in listed("NotResource")):
        return False
    for operator, keys in statement.get("Condition", {}).items():
        for key, expected in keys.items():
            holds = _condition_holds(operator, key, expected, context)
            if holds is None:  # unknown operator: fail closed (an Allow does not apply, a Deny does)
                return statement.get("Effect") == "Deny"
            if not holds:
                return False
    return True


def evaluate_identity_policies(policies: list[dict], action: str, resource: str, context: dict[str, str]) -> tuple[str, str]:
    """AWS's evaluation of identity policies: ("Deny"|"Allow"|"ImplicitDeny", the deciding Sid)."""
    allowed_by = None
    for policy in policies:
        statements = policy["Statement"] if isinstance(policy["Statement"], list) else [policy["Statement"]]
        for number, statement in enumerate(statements):
            if _statement_applies(statement, action, resource, context):
                sid = statement.get("Sid", f"#{number}")
                if statement.get("Effect") == "Deny":
                    return "Deny", sid
                allowed_by = allowed_by or sid
    return ("Allow", allowed_by) if allowed_by else ("ImplicitDeny", "")


_LIST_ACTIONS = {"s3:ListBucket", "s3:ListBucketVersions"}


def _enforce_identity_policies(decisions_path: str | None) -> None:
    """Replace moto's S3 authorization by `evaluate_identity_policies` (see the module doc)."""
    from xml.etree import ElementTree

    from moto.iam import access_control

    lock = threading.Lock()

    def record(entry: dict) -> None:
        if decisions_path:
            with lock, open(decisions_path, "a") as out:
                out.write(json.dumps(entry) + "\n")

    def check_action_permitted(self, resource: str) -> None:
        policies = [access_control.IAMPolicy(p)._policy_json for p in self._access_key.collect_policies()]
        url = urlparse(self._path)
        query = parse_qs(url.query, keep_blank_values=True)
        requests = [(self._action, resource)]
        if self._action == "s3:DeleteObject" and self._method == "POST" and "delete" in query:
            # DeleteObjects: AWS authorizes s3:DeleteObject on each key, not on the bucket.
            bucket = self._data.get("BucketName", "")
            keys = [node.text or "" for node in ElementTree.fromstring(self._body).iter() if node.tag.split("}")[-1] == "Key"]
            requests = [("s3:DeleteObject", f"{resource.split(':::')[0]}:::{bucket}/{key}") for key in keys]
        context: dict[str, str] = {}
        if self._action in _LIST_ACTIONS:
            for name in ("prefix", "delimiter", "max-keys"):
                if name in query:
                    context[f"s3:{name}"] = query[name][0]
        for action, target in requests:
            decision, sid = evaluate_identity_policies(policies, action, target, context)
            record(
                {
                    "principal": self._access_key.arn,
                    "action": action,
                    "resource": target,
                    "context": context,
                    "decision": decision,
                    "sid": sid,
                }
            )
            if decision != "Allow":
                self._raise_access_denied()

    access_control.S3IAMRequest.check_action_permitted = check_action_permitted


def _serve_moto(argv: list[str]) -> None:
    from moto import server

    _enforce_identity_policies(os.environ.get("REWIND_S3_IAM_DECISIONS"))
    server.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] != ["moto"]:
        sys.exit("usage: python -m devstack.s3tls moto [moto_server arguments]")
    _serve_moto(sys.argv[2:])
