"""Shared fixtures. Builders and the in-process service runner live in ``tests/helpers.py``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ``import helpers`` from any test folder

if TYPE_CHECKING:
    from helpers import Running


@pytest.fixture
async def served() -> AsyncIterator[Running]:
    """The real service on the small test fleet (``helpers.small_fleet``) on 127.0.0.1 port 0, with a
    gRPC channel and an HTTP session to it; stopped after the test."""
    from helpers import running_app  # imported here so unit tests never load the service

    async with running_app() as running:
        yield running
