"""An S3 API over TLS on loopback, for tests and the local stack.

moto's server speaks plain HTTP; pgBackRest 2.45 only speaks HTTPS to S3 and moto's own ``--ssl``
mode breaks its TLS client ("unexpected eof"), so stunnel4 terminates TLS in front of moto with a
self-signed certificate. TLS verification stays ON: pgBackRest is given the certificate as its CA
file, exactly as a production repository with a private CA would be configured.

Stopping only the TLS front (``stop_tls``) makes the repository unreachable while moto keeps every
object, which is how an S3 outage is simulated without losing the repository.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rewind.runner import kill_process_group
from rewind.stack.net import free_port, wait_for_port


def write_self_signed_cert(directory: Path, *, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write cert.pem/key.pem valid for 127.0.0.1 and localhost; returns (cert, key)."""
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
                    x509.DNSName("127.0.0.1"),  # pgBackRest matches the host name against DNS SANs
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
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
    """moto_server on plain HTTP behind stunnel4 on HTTPS, both on 127.0.0.1."""

    workdir: Path
    bucket: str = "rewind-repo"
    region: str = "us-east-1"
    tls_port: int = 0
    moto_port: int = 0
    access_key: str = "rewind-test-key"
    secret_key: str = "rewind-test-secret"
    _moto: subprocess.Popen | None = field(default=None, repr=False)
    _stunnel: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def ca_file(self) -> Path:
        return self.workdir / "s3-cert.pem"

    @property
    def endpoint(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start(self) -> "S3OverTLS":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.moto_port = self.moto_port or free_port()
        self.tls_port = self.tls_port or free_port()
        write_self_signed_cert(self.workdir)
        self._start_moto()
        self.start_tls()
        self.create_bucket()
        return self

    def _start_moto(self) -> None:
        log = open(self.workdir / "moto.log", "ab")
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.moto_port, timeout=30, process=self._moto)

    def start_tls(self) -> None:
        """Start (or restart) the TLS front: the repository becomes reachable."""
        conf = self.workdir / "stunnel.conf"
        conf.write_text(
            "foreground = yes\n"
            f"output = {self.workdir / 'stunnel.log'}\n"
            "[s3]\n"
            f"accept = 127.0.0.1:{self.tls_port}\n"
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
        wait_for_port(self.tls_port, timeout=30, process=self._stunnel)

    def stop_tls(self) -> None:
        """Stop the TLS front only: S3 is unreachable, moto keeps every object."""
        kill_process_group(self._stunnel)
        self._stunnel = None

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=str(self.ca_file),
        )

    def create_bucket(self) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            client.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        self.stop_tls()
        kill_process_group(self._moto)
        self._moto = None

    def __enter__(self) -> "S3OverTLS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

