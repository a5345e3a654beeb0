"""FastAPI dependencies, each with an ``Annotated`` alias routers use as a parameter type.

Everything a request needs lives on ``app.state.services`` (one :class:`ApiServices`, built by
:func:`services.api.app.create_app`), so tests build an app around their own servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.auth import ApiKeyStore
from services.api.concurrency import SubmissionGate
from services.api.metrics import ApiMetrics
from services.api.model_catalog import ModelCatalog
from services.api.result_files import ResultCache
from services.settings import Settings
from services.storage import Storage


@dataclass
class ApiServices:
    """The long-lived objects one API process shares between requests."""

    settings: Settings
    storage: Storage
    keys: ApiKeyStore
    metrics: ApiMetrics
    models: ModelCatalog
    results: ResultCache
    submissions: SubmissionGate


def get_services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


ServicesDep = Annotated[ApiServices, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


def get_storage(services: ServicesDep) -> Storage:
    return services.storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from `mrdiff api-key create --tenant NAME`.",
)


def get_current_tenant(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """The tenant of the caller's API key; 401 when it is missing or not a valid key."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge
        )
    record = services.keys.authenticate(credentials.credentials)
    if record is None:
        raise HTTPException(401, "invalid or revoked API key", headers=challenge)
    return record.tenant


TenantDep = Annotated[str, Depends(get_current_tenant)]
