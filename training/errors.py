"""The error every data problem is reported with."""

from __future__ import annotations


class DataError(ValueError):
    """A user-facing problem with the input data; the message is one line and names the culprit."""
