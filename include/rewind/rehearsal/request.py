"""What a rehearsal run restores to, and why: the run's params over the inventory's defaults,
checked before anything is touched. Every error is one line naming the param or field to fix.

Targets:
  latest  a restore point the rehearsal makes on production when it starts (rewind.rehearsal.production):
          the copy must hold exactly production's rows at that moment, which are counted there too;
  1h      an age (m, h or d): that long before the run; production's rows then are unknown, so the
          copy's counts are reported, not compared;
  a time  with its time zone (2026-11-24 02:13:30+00), like the PITR form; reported, not compared.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.request import parse_target_time

AGE_RE = re.compile(r"([1-9][0-9]{0,4})([mhd])")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
TARGET_HELP = "use latest, an age like 1h, or a time with its time zone (2026-11-24 02:13:30+00)"


class RehearsalRefused(RewindError):
    """The run cannot start as asked (a typo in the form, no change template, a PITR under way):
    it ends with the reason before anything is touched; no incident, nothing is broken."""

    opens_incident = False


class RehearsalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["latest", "time"]
    target_text: str  # as asked: latest, 1h, or the time
    target_time: dt.datetime | None = None  # UTC, for a time target
    reason: str

    @property
    def exact(self) -> bool:
        """Row counts can be compared exactly: production was counted at the target itself."""
        return self.target == "latest"

    def describe(self) -> str:
        if self.target == "latest":
            return "latest (a restore point made on production when the rehearsal starts)"
        shown = f"{self.target_time:%Y-%m-%d %H:%M:%S} UTC"
        return shown if self.target_text == shown else f"{shown} ({self.target_text})"


def parse_target(text: str, *, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    if text == "latest":
        return "latest", None
    age = AGE_RE.fullmatch(text)
    if age:
        when = now - dt.timedelta(seconds=int(age.group(1)) * UNIT_SECONDS[age.group(2)])
    else:
        try:
            when = parse_target_time(text)
        except ValueError:
            raise RehearsalRefused(f"param target: {text!r} is neither latest, an age nor a time: {TARGET_HELP}") from None
        if when > now:
            raise RehearsalRefused(f"param target: {when:%Y-%m-%d %H:%M:%S} UTC is in the future (now {now:%Y-%m-%d %H:%M:%S} UTC)")
    return "time", when.astimezone(dt.timezone.utc)


def parse_request(params: dict, cluster: Cluster, *, now: dt.datetime | None = None) -> RehearsalRequest:
    """The run's params (target, reason) over the inventory's rehearsal section."""
    now = now or dt.datetime.now(dt.timezone.utc)
    raw = params.get("target")
    if raw is not None and not isinstance(raw, str):
        raise RehearsalRefused(f"param target: {raw!r} is not text: {TARGET_HELP}")
    text = (raw or "").strip() or cluster.rehearsal.target
    if len(text) > 64 or any(ord(ch) < 32 for ch in text):
        raise RehearsalRefused(f"param target: {text[:64]!r} is not a target: {TARGET_HELP}")
    reason = str(params.get("reason") or "").strip()
    if len(reason) < 10:
        raise RehearsalRefused("param reason: say why this rehearsal runs (at least 10 characters)")
    target, when = parse_target(text, now=now)
    return RehearsalRequest(target=target, target_text=text, target_time=when, reason=reason[:2000])
