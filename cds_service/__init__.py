"""CDS Hooks 2.0 service: ACR Low Back Pain imaging appropriateness and the non-contrast lumbar MRI suggestion.

The public surface is small on purpose: the application factory and the version. Everything
else is reached through the ``cds-service`` command or the HTTP API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_app"]

if TYPE_CHECKING:
    from cds_service.app import create_app


def __getattr__(name: str) -> Any:
    # Imported lazily: ``cds-service serve`` must choose Prometheus' multi-process mode before
    # anything imports prometheus_client, and importing the app would do that.
    if name == "create_app":
        from cds_service.app import create_app

        return create_app
    raise AttributeError(f"module 'cds_service' has no attribute {name!r}")
