"""schemathesis against the service's own OpenAPI: no 5xx, every response matches its schema.

The app runs in-process against a real database (no worker: deployments stay queued, and
?wait=true waits at most CITRUS_WAIT_MAX_SECONDS=0.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from citrus_deploy.web.app import create_app
from tests.service.conftest import AUTH, make_settings


@pytest.fixture
def api_app(service_db: str, tmp_path: Path) -> Iterator[FastAPI]:
    app = create_app(make_settings(service_db, tmp_path, CITRUS_WAIT_MAX_SECONDS="0.2"))
    with TestClient(app):  # runs the lifespan: the pool is open while schemathesis calls
        yield app


def test_api_conforms_to_its_schema(api_app: FastAPI) -> None:
    api = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 7  # the admin API, /healthz and POST /boot-reports/{agent_id}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH)

        check()
