"""Property-based API test: schemathesis generates requests from the OpenAPI schema and the
real server (uvicorn on loopback over the real S3 server) must never answer 5xx nor violate the
schema (status codes, content types, bodies). Examples are bounded per operation.

Generated requests are all refused before the pipeline (no such job, invalid content or keys),
so the light stack (no Prefect, no Ray) serves them; ``/readyz`` is left out because without
Prefect it rightly answers 503 (it is tested with the whole stack in test_api.py).
"""

from __future__ import annotations

import itertools
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.api_harness import ApiStack

EXAMPLES_PER_OPERATION = 20
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


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
    statuses: Counter[int] = Counter()
    for result, mode in itertools.product(api_schema.get_all_operations(), MODES):
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=60)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # nothing to get wrong (e.g. GET /healthz has no parameters)
            if mode is GenerationMode.POSITIVE:
                raise
            continue
        checked.append(f"{operation.label} ({mode.value})")
    assert len(checked) >= 20, checked
    print(
        f"schemathesis: {sum(statuses.values())} requests over {len(checked)} operations, "
        f"status codes {dict(sorted(statuses.items()))}"
    )
    assert statuses[200] and statuses[422], statuses  # both accepted and refused requests ran
