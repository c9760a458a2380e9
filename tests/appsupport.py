"""Building the app for tests: real components, a temporary data directory, no network."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask

from cds_service.app import create_app
from cds_service.settings import Settings


def make_app(tmp_path: Path, **settings: Any) -> Flask:
    """An app with its SQLite store under ``tmp_path``; ``settings`` override Settings fields."""
    settings.setdefault("data_dir", str(tmp_path / "data"))
    return create_app(Settings(**settings), {"TESTING": True})


class ClientKey:
    """A CDS client's EC P-384 key pair, its inline JWKS and a token factory (ES384, as the Sandbox signs)."""

    def __init__(self, iss: str = "https://ehr.example.org", kid: str = "key-1") -> None:
        self.iss = iss
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP384R1())
        public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        public_jwk.update(kid=kid, use="sig", alg="ES384")
        self.jwks = {"keys": [public_jwk]}

    def trusted_clients_file(self, directory: Path, fhir_servers: list[str] | None = None) -> Path:
        path = directory / "trusted-clients.json"
        path.write_text(json.dumps([{"iss": self.iss, "jwks": self.jwks, "fhir_servers": fhir_servers or []}]))
        return path

    def token(self, audience: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.iss, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        payload.update(claims)
        return jwt.encode(payload, self.private_key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})
