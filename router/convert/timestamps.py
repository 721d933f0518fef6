"""``google.protobuf.Timestamp`` <-> unix seconds (float), with the range checks the wire needs."""

from __future__ import annotations

import math

from google.protobuf import timestamp_pb2

from router.validation import violation

# The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799


def seconds_from_timestamp(ts: timestamp_pb2.Timestamp, field: str) -> float:
    """Unix seconds of a timestamp; INVALID_ARGUMENT naming ``field`` if it is outside the valid range."""
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS or not 0 <= ts.nanos <= 999_999_999:
        raise violation(field, "must be a valid timestamp (years 1 to 9999, nanos in [0, 999999999])")
    return ts.seconds + ts.nanos / 1e9


def timestamp_from_seconds(seconds: float) -> timestamp_pb2.Timestamp:
    """A timestamp for finite unix seconds (rounded to the nanosecond)."""
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {seconds!r}")
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return timestamp_pb2.Timestamp(seconds=int(whole), nanos=int(nanos))
