"""``python -m services.api``: serve the API with uvicorn on MRDIFF_API_HOST:MRDIFF_API_PORT."""

from __future__ import annotations

import uvicorn

from services.settings import get_settings


def main() -> None:
    """Run the API (127.0.0.1:8000 unless the settings say otherwise)."""
    settings = get_settings()
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=False,
        log_level="info",
    )


if __name__ == "__main__":
    main()
