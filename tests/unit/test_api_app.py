"""The app without servers: OpenAPI contract, CORS, the viewer page and its static files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.settings import load_settings
from services.storage import Storage

VIEWER_ORIGIN = "https://viewer.example.org"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        environment="development",
        data_dir=tmp_path,
        s3_endpoint="127.0.0.1:9",  # never contacted by these tests
        cors_origins=VIEWER_ORIGIN,
    )
    with TestClient(create_app(settings, Storage.from_settings(settings))) as test_client:
        yield test_client


def test_openapi_documents_both_bodies_and_one_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/JobCreate"
    assert "JobOptions" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")) and code != "503":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorPublic"), (path, method, code)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_cors_allows_only_configured_viewer_origins(client: TestClient) -> None:
    preflight = client.options(
        "/v1/jobs",
        headers={
            "Origin": VIEWER_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    other = client.options(
        "/v1/jobs",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers
    assert (
        client.get("/healthz", headers={"Origin": VIEWER_ORIGIN}).headers[
            "access-control-allow-origin"
        ]
        == VIEWER_ORIGIN
    )


def test_viewer_page_and_assets_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/viewer/20250101T000000Z-0123456789ab")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for marker in (
        'id="panel-reconstruction"',
        'id="panel-uncertainty"',
        'id="panel-anomaly"',
        'id="slice"',
        'id="window"',
        'id="level"',
        "Research use only",
    ):
        assert marker in page.text
    script = client.get("/static/viewer.js")
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert "Authorization: `Bearer ${apiKey()}`" in script.text
    assert client.get("/static/viewer.css").status_code == 200
    bad = client.get("/viewer/..%2Fsecrets")
    assert bad.status_code in {404, 422} and "detail" in bad.json()


def test_requests_without_a_key_are_401_before_touching_storage(client: TestClient) -> None:
    for method, path in (
        ("GET", "/v1/jobs"),
        ("GET", "/v1/models"),
        ("POST", "/v1/uploads"),
        ("DELETE", "/v1/jobs/x"),
        ("GET", "/v1/jobs/x/results"),
    ):
        answer = client.request(method, path)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["detail"].startswith("missing API key")


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.get("/v1/jobs/abc")
    client.get("/v1/jobs/def")
    text = client.get("/metrics").text
    line = 'mrdiff_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="401"} 2.0'
    assert line in text
