"""ServiceNowHook: the Table API client on an Airflow connection.

Connection (type http): host, port, schema (https by default), login/password for basic auth.
Extra (JSON): {"auth_type": "basic" | "oauth", "client_id": ..., "client_secret": ...,
"timeout": 30, "retries": 4}. With OAuth, Rewind uses the client-credentials grant.
"""

from __future__ import annotations

from airflow.sdk import BaseHook

from rewind.servicenow import Auth, ServiceNowClient


class ServiceNowHook(BaseHook):
    conn_name_attr = "servicenow_conn_id"
    default_conn_name = "servicenow_default"
    conn_type = "http"
    hook_name = "ServiceNow"

    def __init__(self, *, servicenow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.servicenow_conn_id = servicenow_conn_id
        self._client: ServiceNowClient | None = None

    @staticmethod
    def client_from_connection(conn, *, retries: int | None = None) -> ServiceNowClient:
        extra = conn.extra_dejson or {}
        if not conn.host:
            raise ValueError(f"connection {conn.conn_id!r}: host is empty: set the ServiceNow instance host")
        scheme = conn.schema or "https"
        port = f":{conn.port}" if conn.port else ""
        if extra.get("auth_type", "basic") == "oauth":
            auth = Auth("oauth", client_id=extra.get("client_id"), client_secret=extra.get("client_secret"))
        else:
            auth = Auth("basic", username=conn.login, password=conn.password)
        return ServiceNowClient(
            f"{scheme}://{conn.host}{port}",
            auth,
            timeout=float(extra.get("timeout", 30)),
            retries=int(retries if retries is not None else extra.get("retries", 4)),
        )

    def get_conn(self) -> ServiceNowClient:
        if self._client is None:
            self._client = self.client_from_connection(self.get_connection(self.servicenow_conn_id))
        return self._client
