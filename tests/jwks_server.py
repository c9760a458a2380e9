"""A loopback JWKS server for tests: serves a JWK Set and records every request it receives.

A test can swap the served set (key rotation), make it fail (status), and assert how many requests arrived, or
that a server whose URL only appeared in a forged ``jku`` header received none at all::

    with JwksServer({"keys": [public_jwk]}) as server:
        client = TrustedClient(iss=..., jwks_url=server.url)
        ...
        assert server.request_paths == ["/.well-known/jwks.json"]
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from support import free_port, wait_for_port

JWKS_PATH = "/.well-known/jwks.json"


class JwksServer:
    """A threaded HTTP server on 127.0.0.1 and a free port, serving ``jwks`` at JWKS_PATH."""

    def __init__(self, jwks: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._jwks: dict[str, Any] = jwks if jwks is not None else {"keys": []}
        self._status = 200
        self._redirect_to: str | None = None
        self._delay = 0.0
        self._paths: list[str] = []
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval so that stop() (shutdown) returns quickly: tests start many of these servers.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"jwks-{self.port}", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The JWK Set URL."""
        return self.base_url + JWKS_PATH

    @property
    def request_paths(self) -> list[str]:
        """Every request path received so far, in order (any method, any path)."""
        with self._lock:
            return list(self._paths)

    def set_jwks(self, jwks: dict[str, Any]) -> None:
        """Serve another JWK Set from now on (key rotation)."""
        with self._lock:
            self._jwks = jwks

    def set_status(self, status: int) -> None:
        """Answer with this HTTP status (200 serves the JWK Set; anything else an empty error body)."""
        with self._lock:
            self._status = status

    def redirect_to(self, location: str | None) -> None:
        """Answer 302 with this Location (None: stop redirecting)."""
        with self._lock:
            self._redirect_to = location

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering (a slow JWKS host)."""
        with self._lock:
            self._delay = seconds

    def start(self) -> JwksServer:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner._paths.append(self.path)
                    status, jwks, redirect, delay = owner._status, owner._jwks, owner._redirect_to, owner._delay
                if delay:
                    time.sleep(delay)
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path != JWKS_PATH or status != 200:
                    self.send_response(404 if status == 200 else status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # record any method; the service must only ever GET

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep pytest output clean; requests are recorded in request_paths

        return Handler


class SigningKey:
    """A real key pair generated with ``cryptography``, playing a CDS client that signs its JWTs.

    ``kind`` is ``"EC-P384"``, ``"EC-P256"`` or ``"RSA"`` (2048 bits).
    """

    def __init__(self, kind: str, kid: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.kid = kid
        self.private_key: Any
        if kind == "EC-P384":
            self.private_key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "EC-P256":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "RSA":
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(kind)
        self.kind = kind

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK (kid, use sig, and any extra members such as alg)."""
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        algorithm = RSAAlgorithm if self.kind == "RSA" else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig"}, **extra)
        return jwk

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def sign(self, claims: dict[str, Any], algorithm: str, **headers: Any) -> str:
        """A compact JWS signed with PyJWT; ``kid`` and ``typ`` default to this key's kid and ``JWT``."""
        import jwt

        header: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        header.update(headers)
        for name in [name for name, value in header.items() if value is None]:
            del header[name]  # pass kid=None to leave the kid out
        return jwt.encode(claims, self.private_key, algorithm=algorithm, headers=header)


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    """A JWK Set with the public keys of ``keys``."""
    return {"keys": [key.public_jwk() for key in keys]}
