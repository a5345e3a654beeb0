"""Property-based API test: schemathesis generates requests from the OpenAPI schema and the
real server (uvicorn on loopback over the real S3 server) must never answer 5xx nor violate the
schema (status codes, content types, bodies). Examples are bounded per operation.

Generated requests are all refused before the pipeline (no such job, invalid content or keys),
so the light stack (no Prefect, no Ray) serves them; ``/readyz`` is left out because without
Prefect it rightly answers 503 (it is tested with the whole stack in test_api.py).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration import api_harness
from tests.integration.api_harness import ApiStack

# Fixture of the API over the real S3 server (see api_harness.py).
light_stack = api_harness.light_stack

EXAMPLES_PER_OPERATION = 25
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


@pytest.fixture(scope="module")
def api_key(light_stack: ApiStack) -> str:
    return light_stack.key_for("schemathesis")


@pytest.fixture(scope="module")
def api_schema(light_stack: ApiStack) -> schemathesis.BaseSchema:
    raw = httpx.get(f"{light_stack.base_url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=light_stack.base_url)
    return schema.exclude(path="/readyz")


def test_no_server_errors_and_no_schema_violations(
    api_schema: schemathesis.BaseSchema, api_key: str
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=60)
            case.validate_response(response, checks=CHECKS)

        check()
        checked.append(operation.label)
    assert len(checked) >= 10, checked
