"""PagerDuty Events API v2 and Slack simulators for tests and the local stack, on loopback.

PagerDuty: the provider's PagerdutyEventsHook always sends to https://events.pagerduty.com (it
builds `pagerduty.EventsApiV2Client(routing_key)` with no base URL, the connection's host is not
used, and the library refuses a base URL that is not https://). What it does honour, through
httpx2, is the environment: a proxy (HTTPS_PROXY, or ALL_PROXY) and the CA bundle (SSL_CERT_FILE).
So this simulator is also a forward proxy: it answers `CONNECT events.pagerduty.com:443`, ends the
tunnel itself with TLS under a certificate for events.pagerduty.com signed by its own CA, and
serves the Events API behind it. The provider, the pagerduty library and TLS verification run
unchanged; `client_env()` is what a process sets to reach it (CONNECT to any other host is
refused: nothing leaves the machine). The Events API subset: POST /v2/enqueue with routing_key,
event_action trigger/acknowledge/resolve, dedup_key (generated for a trigger without one, required
otherwise), payload summary/source/severity for a trigger; 202 {"status": "success", "dedup_key"}
or 400 {"status": "invalid event", "errors": [...]}; alerts deduplicated by dedup_key as
PagerDuty does (a trigger for an open alert adds nothing, a resolve closes it).

Slack, plain HTTP (the providers take the address from the connection): the Web API's
chat.postMessage under /api/ (SlackHook: connection extra `base_url`; bot token as Bearer; Slack's
HTTP 200 {"ok": false, "error": ...} for a bad token or an unknown channel) and incoming webhooks
under /services/... (SlackWebhookHook: the webhook URL in the connection's password; "ok" or
Slack's 400 invalid_payload / 404 no_service).

Both keep what they received and can be told to fail the next N requests (`fail_next`):
    GET  /sim/events      /sim/messages      what arrived
    POST /sim/faults      {"status": 503, "count": 2}

    python -m devstack.pager_sims serve --dir /tmp/pagers [--pagerduty-port 8093 --slack-port 8094]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from devstack.net import LoopbackHTTPService

PAGERDUTY_EVENTS_HOST = "events.pagerduty.com"
SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Fault:
    status: int = 503
    count: int = 1


class _FaultQueue:
    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.lock = threading.RLock()

    def add(self, status: int, count: int) -> None:
        with self.lock:
            self.faults.append(Fault(status, count))

    def take(self) -> int | None:
        """The status the next request must fail with, if any."""
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.count -= 1
            if fault.count <= 0:
                self.faults.pop(0)
            return fault.status


class _Handler(BaseHTTPRequestHandler):
    """Shared plumbing: HTTP/1.1 keep-alive, JSON in and out, quiet."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_args):  # quiet
        pass

    def _send(self, status: int, body: dict | list | str, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


# ---- PagerDuty ---------------------------------------------------------------------------------
def write_ca_and_server_cert(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `host` signed by it; returns (ca, cert, key).
    Proper CA and leaf extensions, so that strict verification (Python 3.13's default) accepts them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rewind pager simulator CA")])
    usage = dict(content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_encipherment=False, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "pager-sim-ca.pem", directory / "pager-sim-cert.pem", directory / "pager-sim-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@dataclass
class PagerDutyState:
    routing_keys: set[str] = field(default_factory=set)
    events: list[dict] = field(default_factory=list)  # every accepted event, as received
    alerts: dict[str, str] = field(default_factory=dict)  # dedup_key -> triggered | acknowledged | resolved
    requests: list[dict] = field(default_factory=list)  # every request: method, host, path, status
    faults: _FaultQueue = field(default_factory=_FaultQueue)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_routing_key(self) -> str:
        key = secrets.token_hex(16)  # 32 characters, like a PagerDuty integration key
        with self.lock:
            self.routing_keys.add(key)
        return key

    def enqueue(self, event: object) -> tuple[int, dict]:
        errors = self._invalid(event)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        assert isinstance(event, dict)
        action = event["event_action"]
        with self.lock:
            key = event.get("dedup_key") or secrets.token_hex(16)
            state = self.alerts.get(key)
            if action == "trigger" and state in (None, "resolved"):
                self.alerts[key] = "triggered"
            elif action == "acknowledge" and state == "triggered":
                self.alerts[key] = "acknowledged"
            elif action == "resolve" and state in ("triggered", "acknowledged"):
                self.alerts[key] = "resolved"
            self.events.append({**event, "dedup_key": key})
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def _invalid(self, event: object) -> list[str]:
        if not isinstance(event, dict):
            return ["Event must be a JSON object"]
        errors = []
        if event.get("routing_key") not in self.routing_keys:
            errors.append("Invalid routing key")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
        key = event.get("dedup_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
            errors.append("'dedup_key' must be a string of 1 to 255 characters")
        if action in ("acknowledge", "resolve") and not key:
            errors.append(f"'dedup_key' is required for event_action {action}")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or not an object")
            else:
                for name in ("summary", "source"):
                    if not isinstance(payload.get(name), str) or not payload[name]:
                        errors.append(f"'payload.{name}' is missing or blank")
                if payload.get("severity") not in SEVERITIES:
                    errors.append("'payload.severity' is invalid (must be one of: critical, error, warning, info)")
                if isinstance(payload.get("summary"), str) and len(payload["summary"]) > 1024:
                    errors.append("'payload.summary' is longer than 1024 characters")
        return errors

    def events_for(self, dedup_key: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["dedup_key"] == dedup_key]


def make_pagerduty_handler(state: PagerDutyState, tls: ssl.SSLContext):
    class Handler(_Handler):
        server_version = "PagerDutySim/1.0"
        tunnel_host: str | None = None  # set once CONNECT made this connection a TLS tunnel

        def do_CONNECT(self):
            host, _, port = self.path.rpartition(":")
            if (host, port) != (PAGERDUTY_EVENTS_HOST, "443"):
                with state.lock:
                    state.requests.append({"method": "CONNECT", "host": self.path, "path": "", "status": 403})
                self.send_response(403, "Only events.pagerduty.com:443 is simulated")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.close_connection = True
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            try:
                self.connection.settimeout(10)
                self.connection = tls.wrap_socket(self.connection, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate: nothing more to serve
                self.close_connection = True
                return
            self.tunnel_host = host
            self.rfile = self.connection.makefile("rb")
            self.wfile = self.connection.makefile("wb", buffering=0)
            self.close_connection = False

        def do_POST(self):
            url = urlparse(self.path)
            host = self.tunnel_host or self.headers.get("Host", "")
            if url.path == "/sim/faults":
                body = json.loads(self._raw_body() or b"{}")
                state.faults.add(int(body.get("status", 503)), int(body.get("count", 1)))
                return self._send(200, {"result": "ok"})
            raw = self._raw_body()
            status = state.faults.take()
            if status is not None:
                body: dict = {"status": "error", "message": f"HTTP {status} injected by the simulator"}
            elif url.path != "/v2/enqueue":
                status, body = 404, {"status": "error", "message": f"not found: {url.path}"}
            else:
                try:
                    event = json.loads(raw)
                except ValueError:
                    status, body = 400, {"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid JSON"]}
                else:
                    status, body = state.enqueue(event)
            with state.lock:
                state.requests.append({"method": "POST", "host": host, "path": url.path, "status": status})
            self._send(status, body)

        def do_GET(self):
            if self.path == "/sim/events":
                with state.lock:
                    return self._send(200, {"events": list(state.events), "alerts": dict(state.alerts)})
            self._send(404, {"status": "error", "message": "not found"})

        def finish(self):
            super().finish()
            if self.tunnel_host:  # socketserver closes the plain socket the TLS one replaced, not this one
                try:
                    self.connection.close()
                except OSError:
                    pass

    return Handler


class PagerDutySimulator(LoopbackHTTPService):
    """The Events API v2 behind a CONNECT proxy on 127.0.0.1 (see the module docstring)."""

    def __init__(self, directory: Path, port: int = 0, state: PagerDutyState | None = None):
        self.state = state or PagerDutyState()
        self.ca_file, cert, key = write_ca_and_server_cert(Path(directory), PAGERDUTY_EVENTS_HOST)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        super().__init__(make_pagerduty_handler(self.state, tls), port)

    def client_env(self) -> dict[str, str]:
        """What a process sets so that the PagerDuty provider reaches this simulator: the proxy and
        the CA. ALL_PROXY rather than HTTPS_PROXY, which slack_sdk also takes (for every URL,
        ignoring NO_PROXY) and would send the Slack simulator's requests here; NO_PROXY keeps the
        other loopback services (ServiceNow, Slack) direct for the clients that honour it."""
        return {"ALL_PROXY": self.url, "NO_PROXY": "127.0.0.1,localhost", "SSL_CERT_FILE": str(self.ca_file)}

    def airflow_connection(self, routing_key: str) -> str:
        """The Airflow connection (JSON, for AIRFLOW_CONN_<ID>): the routing key is its password."""
        return json.dumps({"conn_type": "pagerduty_events", "password": routing_key})

    def fail_next(self, count: int, status: int = 503) -> None:
        self.state.faults.add(status, count)


# ---- Slack -------------------------------------------------------------------------------------
@dataclass
class SlackState:
    bot_token: str = field(default_factory=lambda: "xoxb-" + secrets.token_hex(12))
    channels: dict[str, str] = field(default_factory=dict)  # "#name" -> channel ID
    webhooks: dict[str, str] = field(default_factory=dict)  # /services/... path -> channel ID
    messages: list[dict] = field(default_factory=list)  # every message posted: via, channel, text, body
    requests: list[dict] = field(default_factory=list)
    faults: _FaultQueue = field(default_factory=_FaultQueue)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_channel(self, name: str) -> str:
        with self.lock:
            return self.channels.setdefault(name, f"C{len(self.channels) + 1:08d}SIM")

    def add_webhook(self, channel: str) -> str:
        """A new incoming webhook posting to `channel`; returns its path."""
        path = f"/services/T00000SIM/B{secrets.token_hex(4).upper()}/{secrets.token_urlsafe(18)}"
        with self.lock:
            self.webhooks[path] = self.add_channel(channel)
        return path

    def channel_id(self, channel: str) -> str | None:
        with self.lock:
            if channel in self.channels.values():
                return channel
            return self.channels.get(channel if channel.startswith("#") else f"#{channel}")

    def texts(self, channel: str) -> list[str]:
        channel_id = self.channel_id(channel)
        with self.lock:
            return [m["text"] for m in self.messages if m["channel"] == channel_id]


def make_slack_handler(state: SlackState):
    class Handler(_Handler):
        server_version = "SlackSim/1.0"

        def do_POST(self):
            url = urlparse(self.path)
            raw = self._raw_body()
            if url.path == "/sim/faults":
                body = json.loads(raw or b"{}")
                state.faults.add(int(body.get("status", 503)), int(body.get("count", 1)))
                return self._send(200, {"result": "ok"})
            status = state.faults.take()
            if status is not None:
                self._record(url.path, status)
                return self._send(status, "simulated failure", "text/plain")
            if url.path == "/api/chat.postMessage":
                return self._post_message(raw)
            if url.path.startswith("/services/"):
                return self._webhook(url.path, raw)
            self._record(url.path, 404)
            self._send(404, {"ok": False, "error": "unknown_method"})

        def do_GET(self):
            if self.path == "/sim/messages":
                with state.lock:
                    return self._send(200, {"messages": list(state.messages)})
            self._send(404, {"ok": False, "error": "unknown_method"})

        def _record(self, path: str, status: int, error: str | None = None) -> None:
            with state.lock:
                state.requests.append({"method": "POST", "path": path, "status": status, "error": error})

        def _post_message(self, raw: bytes) -> None:
            # Slack answers a Web API call with HTTP 200 and "ok": false for what is wrong in it.
            def refuse(error: str) -> None:
                self._record("/api/chat.postMessage", 200, error)
                self._send(200, {"ok": False, "error": error})

            if self.headers.get("Authorization") != f"Bearer {state.bot_token}":
                return refuse("invalid_auth")
            if self.headers.get("Content-Type", "").startswith("application/json"):
                try:
                    body = json.loads(raw)
                except ValueError:
                    return refuse("invalid_json")
            else:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if not body.get("channel"):
                return refuse("channel_not_found")
            channel_id = state.channel_id(str(body["channel"]))
            if channel_id is None:
                return refuse("channel_not_found")
            if not body.get("text") and body.get("blocks") in (None, "", "[]", []):
                return refuse("no_text")
            ts = f"{time.time():.6f}"
            message = {"via": "api", "channel": channel_id, "text": body.get("text", ""), "ts": ts, "body": body}
            with state.lock:
                state.messages.append(message)
            self._record("/api/chat.postMessage", 200)
            self._send(
                200, {"ok": True, "channel": channel_id, "ts": ts, "message": {"type": "message", "text": message["text"], "ts": ts}}
            )

        def _webhook(self, path: str, raw: bytes) -> None:
            channel_id = state.webhooks.get(path)
            if channel_id is None:
                self._record(path, 404, "no_service")
                return self._send(404, "no_service", "text/plain")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._record(path, 400, "invalid_payload")
                return self._send(400, "invalid_payload", "text/plain")
            if not body.get("text") and not body.get("blocks"):
                self._record(path, 400, "no_text")
                return self._send(400, "no_text", "text/plain")
            with state.lock:
                state.messages.append({"via": "webhook", "channel": channel_id, "text": body.get("text", ""), "body": body})
            self._record(path, 200)
            self._send(200, "ok", "text/plain")

    return Handler


class SlackSimulator(LoopbackHTTPService):
    """Slack's Web API (chat.postMessage) and incoming webhooks on 127.0.0.1."""

    def __init__(self, port: int = 0, state: SlackState | None = None):
        self.state = state or SlackState()
        super().__init__(make_slack_handler(self.state), port)

    def api_connection(self) -> str:
        """The Airflow connection (JSON) for SlackHook / SlackNotifier: bot token and base_url."""
        return json.dumps({"conn_type": "slack", "password": self.state.bot_token, "extra": {"base_url": f"{self.url}/api/"}})

    def webhook_connection(self, channel: str) -> str:
        """The Airflow connection (JSON) for SlackWebhookHook: a new webhook's URL as its password."""
        return json.dumps({"conn_type": "slackwebhook", "password": self.url + self.state.add_webhook(channel)})

    def fail_next(self, count: int, status: int = 503) -> None:
        self.state.faults.add(status, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pager-sims", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--dir", type=Path, required=True, help="where the simulator CA and certificate are written")
    serve.add_argument("--pagerduty-port", type=int, default=8093)
    serve.add_argument("--slack-port", type=int, default=8094)
    serve.add_argument("--channel", default="#dba-oncall")
    args = parser.parse_args(argv)
    pagerduty = PagerDutySimulator(args.dir, args.pagerduty_port).start()
    slack = SlackSimulator(args.slack_port).start()
    slack.state.add_channel(args.channel)
    print(f"PagerDuty Events API v2 simulator (a CONNECT proxy) on {pagerduty.url}; worker environment:")
    for name, value in pagerduty.client_env().items():
        print(f"  {name}={value}")
    print(f"  AIRFLOW_CONN_PAGERDUTY_DBA='{pagerduty.airflow_connection(pagerduty.state.add_routing_key())}'")
    print(f"Slack simulator on {slack.url}:")
    print(f"  AIRFLOW_CONN_SLACK_DBA='{slack.api_connection()}'")
    print(f"  AIRFLOW_CONN_SLACK_DBA_WEBHOOK='{slack.webhook_connection(args.channel)}'", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        pagerduty.stop()
        slack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
