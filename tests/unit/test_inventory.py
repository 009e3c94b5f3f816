from pathlib import Path

import pytest

from rewind.errors import InventoryError, UnknownClusterError
from rewind.inventory import inventory_path, load_inventory
from tests.factories import CLUSTER_DOC as GOOD
from tests.factories import inventory as inv


def test_defaults_are_the_guides_rotation():
    cluster = inv({"ledger": GOOD}).get("ledger")
    assert cluster.stanza == "ledger"
    assert (cluster.schedules.full, cluster.schedules.diff, cluster.schedules.incr) == ("0 2 * * 0", "0 2 * * 1-6", "0 * * * *")
    assert (cluster.repo.compress_type, cluster.repo.compress_level, cluster.repo.bundle) == ("zst", 3, True)
    assert (cluster.repo.retention_full, cluster.repo.retention_diff, cluster.repo.cipher_type) == (4, 6, "aes-256-cbc")
    assert cluster.postgres.control == "systemd" and cluster.postgres.unit_name() == "postgresql@15-main"
    assert cluster.config_path == "/etc/pgbackrest/rewind/ledger.conf"
    assert cluster.pool == "rewind_ledger"


def test_defaults_merge_under_cluster_and_cluster_wins():
    defaults = {"repo": {"bucket": "shared", "endpoint": "s3.example.com", "region": "eu-west-1", "retention_full": 2}}
    clusters = {
        "a": {"postgres": GOOD["postgres"], "repo": {"path": "/a"}},
        "b": {"postgres": GOOD["postgres"], "repo": {"path": "/b", "retention_full": 8}, "schedules": {"incr": "30 * * * *"}},
    }
    loaded = inv(clusters, defaults=defaults)
    assert loaded.get("a").repo.retention_full == 2 and loaded.get("a").repo.bucket == "shared"
    assert loaded.get("b").repo.retention_full == 8 and loaded.get("b").schedules.incr == "30 * * * *"


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"schedules": {"full": "0 2 * *"}}, "schedules.full", "cron"),
        ({"schedules": {"incr": "61 * * * *"}}, "schedules.incr", "cron"),
        ({"repo": {"endpoint": "s3.example.com", "region": "r", "path": "/p"}}, "repo.bucket", "required"),
        ({"repo": {**GOOD["repo"], "endpoint": "https://s3.example.com/"}}, "repo.endpoint", "host name"),
        ({"repo": {**GOOD["repo"], "path": "relative/path"}}, "repo.path", "absolute"),
        ({"repo": {**GOOD["repo"], "cipher_type": "rot13"}}, "repo.cipher_type", "aes-256-cbc"),
        ({"stanza": "--delete"}, "stanza", "not a valid name"),
        ({"stanza": "x;rm -rf /"}, "stanza", "not a valid name"),
        ({"stanza": "ledger\n"}, "stanza", "not a valid name"),  # "$" matches before a trailing newline
        ({"postgres": {"data_dir": "/d", "systemd_unit": "pg\n"}}, "postgres.systemd_unit", "systemd unit"),
        ({"postgres": {"data_dir": "/data\nrepo1-path=/evil"}}, "postgres.data_dir", "control characters"),
        (
            {"postgres": {"data_dir": "/data\x85repo1-path=/evil"}},
            "postgres.data_dir",
            "control characters",
        ),  # NEL: a line break to splitlines
        ({"postgres": {"data_dir": "/data\u2028x"}}, "postgres.data_dir", "control characters"),
        ({"postgres": {"data_dir": "/d", "port": 70000}}, "postgres.port", "less than"),
        ({"postgres": {"data_dir": "/d", "systemd_unit": "x; reboot"}}, "postgres.systemd_unit", "systemd unit"),
        ({"credentials": {"env_prefix": "lower_"}}, "credentials.env_prefix", "upper-case"),
        ({"unknown_key": 1}, "unknown_key", "Extra inputs"),
    ],
)
def test_bad_cluster_is_reported_with_file_cluster_field_and_others_still_load(change, field, words):
    bad = {**GOOD, **change}
    loaded = inv({"good": GOOD, "bad": bad})
    assert list(loaded.clusters) == ["good"]
    message = loaded.errors["bad"]
    assert message.startswith(f"inventory /etc/rewind/inventory.yaml: cluster 'bad': field {field}:"), message
    assert words in message
    assert "\n" not in message
    with pytest.raises(InventoryError, match="cluster 'bad'"):
        loaded.get("bad")


def test_two_clusters_with_one_stanza_in_one_repo_are_refused():
    loaded = inv({"a": {**GOOD, "stanza": "main"}, "b": {**GOOD, "stanza": "main"}})
    assert list(loaded.clusters) == ["a"]
    assert "already used by cluster 'a'" in loaded.errors["b"]


def test_unknown_cluster_names_the_known_ones():
    with pytest.raises(UnknownClusterError, match=r"no cluster named 'nope' \(known: ledger\)"):
        inv({"ledger": GOOD}).get("nope")


def test_file_level_errors(tmp_path):
    with pytest.raises(InventoryError, match="file not found: set \\$REWIND_INVENTORY"):
        load_inventory(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("clusters:\n  a: [unclosed\n")
    with pytest.raises(InventoryError, match=r"broken.yaml: line \d+: not valid YAML"):
        load_inventory(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- just\n- a list\n")
    with pytest.raises(InventoryError, match="'clusters' mapping"):
        load_inventory(wrong)


def test_inventory_path_from_env_then_airflow_variable_then_default(monkeypatch):
    monkeypatch.delenv("REWIND_INVENTORY", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_REWIND_INVENTORY", raising=False)
    assert inventory_path() == Path("/etc/rewind/inventory.yaml")
    monkeypatch.setenv("AIRFLOW_VAR_REWIND_INVENTORY", "/srv/var.yaml")
    assert inventory_path() == Path("/srv/var.yaml")
    monkeypatch.setenv("REWIND_INVENTORY", "/srv/env.yaml")
    assert inventory_path() == Path("/srv/env.yaml")


def test_example_inventory_is_valid():
    example = Path(__file__).resolve().parents[2] / "config" / "inventory.example.yaml"
    loaded = load_inventory(example)
    assert loaded.errors == {}
    assert loaded.clusters


# ---- alerts.pagers -------------------------------------------------------------------------------
PAGERDUTY = {"type": "pagerduty", "conn_id": "pagerduty_dba"}
SLACK = {"type": "slack", "conn_id": "slack_dba", "channel": "#dba-oncall"}
MAIL = {"type": "smtp", "conn_id": "smtp_oncall", "to": "oncall@example.com"}


def pagers_of(cluster) -> list[dict]:
    return [pager.model_dump(exclude_none=True) for pager in cluster.alerts.pagers]


def test_pagers_come_from_defaults_and_a_clusters_own_list_replaces_them():
    clusters = {
        "ledger": GOOD,
        "crm": {**GOOD, "alerts": {"pagers": [SLACK, {"type": "slack_webhook", "conn_id": "slack_crm"}]}},
        "quiet": {**GOOD, "alerts": {"pagers": []}},
    }
    loaded = inv(clusters, defaults={"alerts": {"impact": 1, "pagers": [PAGERDUTY, MAIL]}})
    assert loaded.errors == {}
    assert pagers_of(loaded.get("ledger")) == [PAGERDUTY, {**MAIL, "to": ["oncall@example.com"]}]
    assert pagers_of(loaded.get("crm")) == [SLACK, {"type": "slack_webhook", "conn_id": "slack_crm"}]
    assert loaded.get("crm").alerts.impact == 1  # the rest of the section still merges
    assert pagers_of(loaded.get("quiet")) == []
    assert inv({"ledger": GOOD}).get("ledger").alerts.pagers == []  # nobody is paged unless configured


@pytest.mark.parametrize(
    "pager, field, words",
    [
        ({"type": "opsgenie", "conn_id": "x"}, "alerts.pagers.0.type", "'pagerduty', 'slack', 'slack_webhook' or 'smtp'"),
        ({"conn_id": "x"}, "alerts.pagers.0.type", "required"),
        ({"type": "pagerduty"}, "alerts.pagers.0.conn_id", "required"),
        ({"type": "pagerduty", "conn_id": "pd;rm -rf /"}, "alerts.pagers.0.conn_id", "not a valid name"),
        ({"type": "pagerduty", "conn_id": "pd\n"}, "alerts.pagers.0.conn_id", "not a valid name"),
        (
            {"type": "pagerduty", "conn_id": "pd", "severity": "urgent"},
            "alerts.pagers.0.severity",
            "'critical', 'error', 'warning' or 'info'",
        ),
        ({"type": "pagerduty", "conn_id": "pd", "to": "a@example.com"}, "alerts.pagers.0.to", "only for type smtp, not pagerduty"),
        ({"type": "slack", "conn_id": "s"}, "alerts.pagers.0.channel", "required for type slack"),
        ({"type": "slack", "conn_id": "s", "channel": "dba-oncall"}, "alerts.pagers.0.channel", "not a Slack channel"),
        ({"type": "slack", "conn_id": "s", "channel": "#dba\n"}, "alerts.pagers.0.channel", "not a Slack channel"),
        ({"type": "slack_webhook", "conn_id": "s", "channel": "#dba"}, "alerts.pagers.0.channel", "only for type slack, not slack_webhook"),
        ({"type": "smtp", "conn_id": "m"}, "alerts.pagers.0.to", "required for type smtp"),
        ({"type": "smtp", "conn_id": "m", "to": []}, "alerts.pagers.0.to", "at least one address"),
        ({"type": "smtp", "conn_id": "m", "to": "oncall"}, "alerts.pagers.0.to.0", "not an e-mail address"),
        ({"type": "smtp", "conn_id": "m", "to": ["a@example.com", "b@example"]}, "alerts.pagers.0.to.1", "not an e-mail address"),
        ({"type": "smtp", "conn_id": "m", "to": "a@example.com\nBcc: x@evil.example"}, "alerts.pagers.0.to.0", "not an e-mail address"),
        ({"type": "smtp", "conn_id": "m", "to": "a@example.com, b@example.com"}, "alerts.pagers.0.to.0", "not an e-mail address"),
        ({"type": "smtp", "conn_id": "m", "to": "a@example.com", "cc": "b@example.com"}, "alerts.pagers.0.cc", "Extra inputs"),
    ],
)
def test_a_bad_pager_is_one_line_naming_its_field(pager, field, words):
    loaded = inv({"good": GOOD, "bad": {**GOOD, "alerts": {"pagers": [pager]}}})
    assert list(loaded.clusters) == ["good"]
    message = loaded.errors["bad"]
    assert message.startswith(f"inventory /etc/rewind/inventory.yaml: cluster 'bad': field {field}: "), message
    assert words in message and "\n" not in message


def test_a_bad_pager_in_defaults_is_reported_for_every_cluster_that_inherits_it():
    loaded = inv(
        {"a": GOOD, "b": {**GOOD, "alerts": {"pagers": [PAGERDUTY]}}}, defaults={"alerts": {"pagers": [{"type": "slack", "conn_id": "s"}]}}
    )
    assert list(loaded.clusters) == ["b"]
    assert "field alerts.pagers.0.channel: required for type slack" in loaded.errors["a"]


def test_a_rewind_goes_onto_a_clone_first_unless_the_inventory_or_the_params_say_in_place():
    from rewind.pitr.request import PitrParamError, parse_request

    cluster = inv({"ledger": GOOD}).clusters["ledger"]
    assert cluster.pitr.mode == "clone"
    reason = {"reason": "the runaway migration at 02:14"}
    timed = parse_request({"target_type": "time", "target": "2026-11-24 02:13:30+00", **reason})
    assert timed.mode_for(cluster.pitr.mode) == "clone"
    assert parse_request({**timed.model_dump(mode="json"), "mode": "in_place"}).mode_for(cluster.pitr.mode) == "in_place"
    in_place = inv({"ledger": {**GOOD, "pitr": {"mode": "in_place"}}}).clusters["ledger"]
    assert timed.mode_for(in_place.pitr.mode) == "in_place"
    # latest has nothing to pause a clone at: refused in one line naming the way on, never switched silently
    latest = parse_request({"target_type": "latest", **reason})
    with pytest.raises(
        PitrParamError, match=r"^param mode: clone needs a target .* for latest use in_place \(pitr.mode is clone in the inventory\)$"
    ):
        latest.refuse_in_clone_mode()
