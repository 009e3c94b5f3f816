"""An OpenID Connect provider simulator (an identity provider like Okta or Entra ID) for tests and
the local stack, on loopback. The protocol is authlib's own authorization server (the same library
FAB's client side uses); this file holds only the people, the client and the keys.

    GET  /.well-known/openid-configuration   discovery: issuer = this simulator's URL
    GET  /authorize     authorization code flow: a login form (username, password); PKCE is required
                        (code_challenge_method S256 only, for every client, confidential ones too)
    POST /authorize     the form's answer: a wrong password shows the form again (401); a right one
                        redirects to the client's registered redirect_uri with a one-time code
    POST /token         code -> access_token + id_token (RS256, signed with a key generated at start,
                        `kid` in the header), client_secret_basic or client_secret_post; the code
                        verifier must match the challenge; a code works once and for 60 s
    GET  /jwks          the public key
    GET  /userinfo      Bearer access_token -> sub, email, email_verified, name, groups

The id_token carries iss, aud, exp, iat, auth_time, nonce, at_hash, sub, email, email_verified,
name, given_name, family_name, preferred_username, `groups` (the user's groups at the moment of
login) and `amr` (the user's authentication methods, e.g. ["pwd", "mfa", "otp"]). There is no IdP
session: every /authorize shows the form, so every sign-in is a new login (and a new group lookup).

For people and tests:
    GET  /sim/users                              every user: email, groups, amr (no password)
    POST /sim/users/<username>/groups  {"groups": [...]}   move a user between groups
    GET  /sim/logins                             every successful login (username, groups, amr, at)

    python -m devstack.oidc_sim serve --port 8095 --redirect-uri http://127.0.0.1:8080/auth/oauth-authorized/oidc
    python -m devstack.oidc_sim groups dba.oncall rewind-auditors     (the next sign-in shows it)
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import os
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from flask import Flask, Response, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

from devstack.net import wait_for_port

REPO = Path(__file__).resolve().parents[1]

SCOPES = ("openid", "email", "profile", "groups")


@dataclass
class OidcUser:
    password: str
    email: str
    groups: list[str] = field(default_factory=list)
    amr: list[str] = field(default_factory=lambda: ["pwd", "mfa", "otp"])
    name: str = ""
    sub: str = field(default_factory=lambda: uuid.uuid4().hex)

    def public(self) -> dict:
        return {"email": self.email, "groups": list(self.groups), "amr": list(self.amr), "name": self.name, "sub": self.sub}


@dataclass
class OidcState:
    """The identity provider's directory and its one registered client (Airflow)."""

    users: dict[str, OidcUser] = field(default_factory=dict)
    client_id: str = "rewind-airflow"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    redirect_uris: list[str] = field(default_factory=list)  # exact matches, as a real IdP registers them
    id_token_lifetime_s: int = 300
    logins: list[dict] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # issued and not yet redeemed: code -> AuthCode; access token -> (username, scope, expires_at)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def add_user(
        self, username: str, *, email: str, groups: list[str], amr: list[str] | None = None, password: str | None = None
    ) -> OidcUser:
        with self.lock:
            user = OidcUser(
                password=password or secrets.token_urlsafe(12), email=email, groups=list(groups), name=username.replace("-", " ").title()
            )
            if amr is not None:
                user.amr = list(amr)
            self.users[username] = user
            return user

    def set_groups(self, username: str, groups: list[str]) -> None:
        """Move a user between groups (as an IdP admin would): it shows at the user's next login."""
        with self.lock:
            self.users[username].groups = list(groups)


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret or "", self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


@dataclass
class AuthCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    amr: list[str]
    auth_time: int
    expires_at: float

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_amr(self):
        return list(self.amr)

    def is_expired(self):
        return time.time() > self.expires_at


class S256Required(CodeChallenge):
    """PKCE for every client, S256 only: no challenge, or `plain`, is refused at /authorize."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required with code_challenge_method=S256")
        return super().validate_code_challenge(grant, redirect_uri)


def _user_claims(user: OidcUser, username: str, scope: str) -> dict:
    claims = {"sub": user.sub}
    scopes = scope.split()
    if "email" in scopes:
        claims.update(email=user.email, email_verified=True)
    if "profile" in scopes:
        given, _, family = user.name.partition(" ")
        claims.update(name=user.name, given_name=given, family_name=family, preferred_username=username)
    if "groups" in scopes:
        claims["groups"] = list(user.groups)
    return claims


def create_app(state: OidcState, issuer: str, key: RSAKey) -> Flask:
    app = Flask(__name__)
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 600}

    def query_client(client_id):
        if client_id == state.client_id:
            return Client(state.client_id, state.client_secret, list(state.redirect_uris))
        return None

    def save_token(token, req):
        with state.lock:
            state.tokens[token["access_token"]] = (req.user[0], token.get("scope", ""), time.time() + token.get("expires_in", 600))

    class CodeGrant(AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def save_authorization_code(self, code, req):
            username, user = req.user
            data = req.payload.data
            with state.lock:
                state.codes[code] = AuthCode(
                    code=code,
                    client_id=req.client.get_client_id(),
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.scope,
                    username=username,
                    nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    amr=list(user.amr),
                    auth_time=int(time.time()),
                    expires_at=time.time() + 60,
                )

        def query_authorization_code(self, code, client):
            with state.lock:
                found = state.codes.get(code)
            if found and found.client_id == client.get_client_id() and not found.is_expired():
                return found
            return None

        def delete_authorization_code(self, authorization_code):
            with state.lock:
                state.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code):
            with state.lock:
                user = state.users.get(authorization_code.username)
            return (authorization_code.username, user) if user else None

    class IdToken(OpenIDCode):
        def resolve_client_private_key(self, client):
            return key

        def get_client_algorithm(self, client):
            return "RS256"

        def get_encode_header(self, client):
            return {"alg": "RS256", "kid": key.kid}

        def get_client_claims(self, client):
            return {"iss": issuer, "aud": [client.get_client_id()], "exp": int(time.time()) + state.id_token_lifetime_s}

        def exists_nonce(self, nonce, req):
            with state.lock:
                return any(code.nonce == nonce for code in state.codes.values())

        def generate_user_info(self, user, scope):
            username, person = user
            with state.lock:  # the groups at the moment of this login
                return UserInfo(_user_claims(person, username, scope))

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(CodeGrant, [S256Required(required=True), IdToken(require_nonce=True)])

    @app.get("/.well-known/openid-configuration")
    def discovery():
        return jsonify(
            issuer=issuer,
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            jwks_uri=f"{issuer}/jwks",
            userinfo_endpoint=f"{issuer}/userinfo",
            response_types_supported=["code"],
            grant_types_supported=["authorization_code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            scopes_supported=list(SCOPES),
            token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
            code_challenge_methods_supported=["S256"],
            claims_supported=["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "email", "email_verified", "name", "groups"],
        )

    @app.get("/jwks")
    def jwks():
        return jsonify(KeySet([key]).as_dict(private=False))

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        # The OAuth parameters travel in the query string in both cases (the form posts back to
        # the same URL); authlib validates them: client, redirect_uri, scope, nonce, PKCE.
        try:
            grant = server.get_consent_grant(end_user=None)
        except Exception as error:  # an invalid request is never redirected to an unverified URI
            return Response(f"invalid authorization request: {error}\n", 400, content_type="text/plain")
        if request.method == "GET":
            return _login_form(grant.client.get_client_id(), "")
        username = request.form.get("username", "")
        with state.lock:
            user = state.users.get(username)
            if user and secrets.compare_digest(request.form.get("password", ""), user.password):
                state.logins.append({"username": username, "groups": list(user.groups), "amr": list(user.amr), "at": time.time()})
            else:
                user = None
        if user is None:
            return _login_form(grant.client.get_client_id(), "Wrong username or password."), 401
        return server.create_authorization_response(grant_user=(username, user), grant=grant)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo():
        header = request.headers.get("Authorization", "")
        with state.lock:
            found = state.tokens.get(header[7:]) if header.startswith("Bearer ") else None
            if not found or found[2] < time.time() or found[0] not in state.users:
                return Response(
                    '{"error": "invalid_token"}', 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, content_type="application/json"
                )
            username, scope, _ = found
            return jsonify(_user_claims(state.users[username], username, scope))

    @app.get("/sim/users")
    def sim_users():
        with state.lock:
            return jsonify({name: user.public() for name, user in state.users.items()})

    @app.post("/sim/users/<username>/groups")
    def sim_groups(username):
        if username not in state.users:
            return jsonify(error=f"no user {username}"), 404
        state.set_groups(username, list((request.get_json(silent=True) or {}).get("groups", [])))
        return jsonify(state.users[username].public())

    @app.get("/sim/logins")
    def sim_logins():
        with state.lock:
            return jsonify(copy.deepcopy(state.logins))

    return app


def _login_form(client_id: str, error: str) -> str:
    action = html.escape(f"/authorize?{urlencode(request.args)}")
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        "<!doctype html><html><head><title>Sign in - OIDC simulator</title>"
        "<style>body{font-family:sans-serif;max-width:24em;margin:4em auto}label,input,button{display:block;margin:.4em 0}"
        ".error{color:#b00}</style></head><body>"
        f"<h1>Sign in</h1><p>to <b>{html.escape(client_id)}</b> (Rewind's OIDC simulator)</p>{message}"
        f'<form method="post" action="{action}">'
        '<label for="username">Username</label><input id="username" name="username" autocomplete="username" autofocus>'
        '<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">'
        '<button id="sign-in" type="submit">Sign in</button></form></body></html>'
    )


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *_args, **_kwargs):
        pass


class OidcSimulator:
    """Runs the identity provider in a background thread of this process; its issuer is its URL."""

    def __init__(self, port: int = 0, state: OidcState | None = None):
        self.state = state or OidcState()
        self.key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "RS256"}, private=True)
        # the issuer is the URL, known once the port is bound: the server dispatches to the app made then
        self.server = make_server("127.0.0.1", port, self._dispatch, threaded=True, request_handler=_QuietHandler)
        self.app = create_app(self.state, self.url, self.key)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _dispatch(self, environ, start_response):
        return self.app(environ, start_response)

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    issuer = url

    def start(self) -> OidcSimulator:
        self._thread.start()
        wait_for_port(self.port, timeout=10)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_user(self, username: str, **kwargs) -> OidcUser:
        return self.state.add_user(username, **kwargs)

    def set_groups(self, username: str, groups: list[str]) -> None:
        self.state.set_groups(username, groups)

    def airflow_env(self, *, provider: str = "oidc", api_users: tuple[str, ...] = ("admin", "airflow_api")) -> dict[str, str]:
        return airflow_env(self.issuer, self.state.client_id, self.state.client_secret, provider=provider, api_users=api_users)


def airflow_env(
    issuer: str, client_id: str, client_secret: str, *, provider: str = "oidc", api_users: tuple[str, ...] = ("admin", "airflow_api")
) -> dict:
    """The unchanged config/webserver_config.py with the simulator as the identity provider: what
    every Airflow component (and `airflow` command) of the deployment gets. `api_users` keep a
    password for REST tokens (the airflow_api connection's user)."""
    return {
        "AIRFLOW__FAB__CONFIG_FILE": str(REPO / "config" / "webserver_config.py"),
        "REWIND_SSO_API_USERS": ",".join(api_users),
        "REWIND_OIDC_ISSUER": issuer,
        "REWIND_OIDC_CLIENT_ID": client_id,
        "REWIND_OIDC_CLIENT_SECRET": client_secret,
        "REWIND_OIDC_PROVIDER": provider,
        "REWIND_OIDC_SCOPE": "openid email profile groups",
    }


# The local stack's people: the ServiceNow simulator's seeded users (README "Who asked, who
# approved") as the IdP knows them, plus a platform owner.
DEMO_USERS = {
    "dba.oncall": {"email": "dba.oncall@example.com", "groups": ["rewind-dba"], "amr": ["pwd", "mfa", "otp"]},
    "cab.approver": {"email": "cab.approver@example.com", "groups": ["rewind-auditors"], "amr": ["pwd", "mfa", "otp"]},
    "ops.outsider": {"email": "ops.outsider@example.com", "groups": ["rewind-auditors"], "amr": ["pwd"]},
    "platform.admin": {"email": "platform.admin@example.com", "groups": ["rewind-airflow-admins"], "amr": ["pwd", "mfa", "otp"]},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oidc-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve with the demo users; secrets from the environment: OIDC_SIM_CLIENT_SECRET, "
        "OIDC_SIM_PASSWORDS ({username: password}; generated and printed when unset)",
    )
    serve.add_argument("--port", type=int, default=8095)
    serve.add_argument("--redirect-uri", action="append", required=True, help="Airflow's http://HOST:PORT/auth/oauth-authorized/<provider>")
    move = sub.add_parser("groups", help="set a user's groups: oidc-sim groups dba.oncall rewind-auditors")
    move.add_argument("username")
    move.add_argument("groups", nargs="*")
    move.add_argument("--url", default="http://127.0.0.1:8095")
    args = parser.parse_args(argv)
    if args.command == "serve":
        state = OidcState(redirect_uris=args.redirect_uri)
        state.client_secret = os.environ.get("OIDC_SIM_CLIENT_SECRET") or state.client_secret
        passwords = json.loads(os.environ.get("OIDC_SIM_PASSWORDS") or "{}")
        for name, user in DEMO_USERS.items():
            state.add_user(name, password=passwords.get(name), **user)
        sim = OidcSimulator(args.port, state)
        print(f"OIDC simulator on {sim.url} (client {state.client_id})", flush=True)
        for name, user in state.users.items():
            shown = "as given" if name in passwords else user.password
            print(f"  {name}: password {shown}, groups {user.groups}, amr {user.amr}", flush=True)
        try:
            sim.server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    import requests

    response = requests.post(f"{args.url}/sim/users/{args.username}/groups", json={"groups": args.groups}, timeout=10)
    print(json.dumps(response.json()))
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
