"""What the tests build the way production builds it: one cluster document parsed as an inventory,
and pgBackRest's `info --output=json` and `repo-ls --output=json` shapes. Imports no Airflow.

Every test that needs a cluster starts from CLUSTER_DOC, so a new required inventory field is
added here once, not in every test module.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

import yaml

from rewind.inventory import Cluster, Inventory, parse_inventory
from rewind.pgbackrest.info import StanzaInfo, parse_info
from rewind.wal import segment_name

INVENTORY_PATH = Path("/etc/rewind/inventory.yaml")

# The smallest valid cluster: everything else is the inventory's defaults.
CLUSTER_DOC = {
    "postgres": {"data_dir": "/var/lib/postgresql/15/main"},
    "repo": {"bucket": "backups", "endpoint": "s3.example.com", "region": "eu-west-1", "path": "/pg/ledger"},
}


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def cluster_doc(**sections) -> dict:
    """CLUSTER_DOC with `sections` merged over it: a mapping merges into its section, anything else replaces it."""
    return deep_merge(copy.deepcopy(CLUSTER_DOC), sections)


def inventory(clusters: dict[str, dict], *, defaults: dict | None = None, path: Path | str = INVENTORY_PATH) -> Inventory:
    """Parse an inventory holding `clusters` exactly as the product parses the file."""
    doc: dict = {"clusters": clusters}
    if defaults is not None:
        doc["defaults"] = defaults
    return parse_inventory(yaml.safe_dump(doc), Path(path))


def cluster(name: str = "ledger", **sections) -> Cluster:
    """One valid cluster (InventoryError with the inventory's message if `sections` make it invalid)."""
    return inventory({name: cluster_doc(**sections)}).get(name)


def worker_user() -> str:
    """The OS user running the tests: a cluster whose os_user it is needs neither root nor a postgres user."""
    return pwd.getpwuid(os.geteuid()).pw_name


def local_cluster_doc(tmp_path: Path, **sections) -> dict:
    """The document of a cluster whose durable state, data directory and pgBackRest directories live
    under tmp_path and whose OS user is the one running the tests (as root, state_dir() chowns to it:
    root again)."""
    local = {
        "state_path": str(tmp_path / "state"),
        "postgres": {"data_dir": str(tmp_path / "pgdata"), "os_user": worker_user()},
        "pgbackrest": {option: str(tmp_path / "pgbackrest" / option.split("_")[0]) for option in ("log_path", "lock_path", "spool_path")},
    }
    return cluster_doc(**deep_merge(local, sections))


def local_cluster(tmp_path: Path, name: str = "ledger", **sections) -> Cluster:
    return inventory({name: local_cluster_doc(tmp_path, **sections)}).get(name)


def write_inventory(path: Path, clusters: dict[str, dict]) -> Path:
    path.write_text(yaml.safe_dump({"clusters": clusters}))
    return path


# ---- pgBackRest info --output=json ---------------------------------------------------------------
def backup_json(
    label: str,
    *,
    stop: int,
    wal_start: str,
    lsn_stop: str,
    start: int | None = None,
    wal_stop: str | None = None,
    lsn_start: str | None = None,
    annotations: dict[str, str] | None = None,
    error: bool = False,
    size: int = 23_000_000,
) -> dict:
    """One entry of `backup` as pgBackRest 2.45/2.55 print it; type, prior and reference follow the label."""
    kind = {"F": "full", "D": "diff", "I": "incr"}[label[-1]]
    full = label.split("_")[0]
    return {
        "label": label,
        "type": kind,
        "prior": None if kind == "full" else full,
        "reference": None if kind == "full" else [full],
        "timestamp": {"start": stop - 10 if start is None else start, "stop": stop},
        "lsn": {"start": lsn_start or lsn_stop, "stop": lsn_stop},
        "archive": {"start": wal_start, "stop": wal_stop or wal_start},
        "annotation": annotations,
        "backrest": {"format": 5, "version": "2.55.0"},
        "database": {"id": 1, "repo-key": 1},
        "error": error,
        "info": {"size": size, "delta": size, "repository": {"size": size // 8, "delta": size // 8}},
    }


def info_json(
    backups: list[dict], *, stanza: str = "ledger", archive_min: str | None = None, archive_max: str | None = None, lock_held: bool = False
) -> list[dict]:
    """The whole `info --output=json` answer (a list of stanzas) holding one stanza."""
    starts = sorted(b["archive"]["start"] for b in backups)
    return [
        {
            "name": stanza,
            "cipher": "aes-256-cbc",
            "status": {
                "code": 0 if backups else 2,
                "message": "ok" if backups else "no valid backups",
                "lock": {"backup": {"held": lock_held}},
            },
            "backup": backups,
            "archive": [
                {
                    "id": "15-1",
                    "database": {"id": 1, "repo-key": 1},
                    "min": archive_min or (starts[0] if starts else None),
                    "max": archive_max or (starts[-1] if starts else None),
                }
            ],
            "db": [{"id": 1, "repo-key": 1, "system-id": 7711808815810146018, "version": "15"}],
        }
    ]


def stanza_info(backups: list[dict], *, stanza: str = "ledger", **kwargs) -> StanzaInfo:
    return parse_info(json.dumps(info_json(backups, stanza=stanza, **kwargs)), stanza)


# ---- pgBackRest repo-ls --output=json --recurse archive/<stanza>/<archive id> ------------------------
def repo_ls(segments: Iterable[tuple[int, int]], *, histories: Iterable[int] = (), uploaded_at: int = 1795545400) -> dict[str, dict]:
    """The archive id's listing: (timeline, segment number) pairs stored as compressed segments with
    their checksum, `0000000N.history` files, and the directories repo-ls lists too."""
    listing: dict[str, dict] = {".": {"type": "path"}}
    for index, (timeline, segno) in enumerate(sorted(segments, key=lambda pair: (pair[1], pair[0]))):
        name = segment_name(timeline, segno)
        checksum = hashlib.sha1(name.encode()).hexdigest()
        listing[name[:16]] = {"type": "path"}
        listing[f"{name[:16]}/{name}-{checksum}.zst"] = {"type": "file", "size": 4_100_000, "time": uploaded_at + index}
    for timeline in histories:
        listing[f"{timeline:08X}.history"] = {"type": "file", "size": 42, "time": uploaded_at}
    return listing


# ---- a branched history: two rewinds ----------------------------------------------------------------
# Timeline 1 left for 2 at 0/3000000 (exactly a segment boundary) and went on to segment 6 before
# that rewind; timeline 2 left for 3 at 0/5000100 (inside segment 5) and went on to segment 7.
HISTORY_2 = "1\t0/3000000\tno recovery target specified\n"
HISTORY_3 = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000100\tbefore 2026-11-24 02:13:30.000000+00\n"
BRANCHED_SEGMENTS = [(1, s) for s in range(1, 7)] + [(2, s) for s in range(3, 8)] + [(3, s) for s in range(5, 10)]
