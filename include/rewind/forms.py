"""Typed values from what people send: a trigger form, a question's form, a REST body.

A REST client sends JSON of any type where the UI's form sends a boolean; Python's truthiness would
read the string "false" as true (and decommission a repository, or exclude a target). Every yes/no
a person gives goes through form_bool.
"""

from __future__ import annotations

from typing import Any

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}


class FormValueError(ValueError):
    """A form value of the wrong type: the message names the field."""


def form_bool(value: Any, field: str) -> bool:
    """A boolean as JSON, or its spelling as text ("false" is false); missing is false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FormValueError(f"{field}: {value!r} is not true or false")
