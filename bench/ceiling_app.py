"""The benchmark's ceiling: a bare Flask endpoint that only parses the JSON body and answers no cards.

``bench/run.py`` serves it under the same gunicorn settings as the service (worker count, worker
class, threads, keep-alive), so that "service throughput / ceiling throughput" isolates what the
service itself costs: parsing FHIR, the rules, cards, the audit record (bench/README.md, 'Budgets').

Run by hand: ``gunicorn --pythonpath bench 'ceiling_app:create_app()'``.
"""

from __future__ import annotations

from flask import Flask, abort, request


def create_app() -> Flask:
    """The ceiling WSGI app: ``POST /cds-services/<service_id>`` parses the body and returns ``{"cards": []}``."""
    app = Flask(__name__)

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str) -> dict[str, list[object]]:
        # Parse exactly as a Flask service would, so that the JSON cost is part of the ceiling.
        body = request.get_json()
        if not isinstance(body, dict):
            abort(400)
        return {"cards": []}

    @app.get("/healthz")
    @app.get("/readyz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
