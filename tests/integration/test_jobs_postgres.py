"""The service with ``jobs: {store: postgres}``: a job submitted through the real server survives a
restart of the service (a fresh database per run on 127.0.0.1:5432, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from helpers import running_app, small_fleet
from psycopg import sql

from turnout.v1 import jobs_pb2

pytestmark = pytest.mark.postgres

ADMIN_DSN = os.environ.get("TURNOUT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def database_dsn() -> AsyncIterator[str]:
    name = f"turnout_app_{uuid.uuid4().hex[:12]}"
    admin = await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True)
    try:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
        await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        await admin.close()


async def test_jobs_persist_across_service_restarts(database_dsn: str) -> None:
    data = small_fleet()
    data["jobs"] = {"store": "postgres", "dsn": database_dsn}
    spec = jobs_pb2.TrainingJobSpec(model="llama-3.1-70b", tenant="acme", chips=32, training_tokens=5 * 10**9)
    async with running_app(data) as running:
        job = await running.jobs.Submit(jobs_pb2.SubmitJobRequest(idempotency_key="nightly-1", spec=spec))
        assert job.state == jobs_pb2.JOB_STATE_PENDING
    async with running_app(data) as running:
        again = await running.jobs.Get(jobs_pb2.GetJobRequest(job_id=job.job_id))
        assert again == job
        replay = await running.jobs.Submit(jobs_pb2.SubmitJobRequest(idempotency_key="nightly-1", spec=spec))
        assert replay.job_id == job.job_id
