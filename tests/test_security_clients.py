"""load_trusted_clients: every bad file gets a message naming the file and the problem; the shipped files load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jwks_server import SigningKey, jwks_of

from cds_service.errors import ConfigurationError
from cds_service.security import (
    InProcessReplayCache,
    TrustedClient,
    build_authenticator,
    is_loopback_url,
    load_trusted_clients,
)
from cds_service.security.keys import parse_jwks

REPO_ROOT = Path(__file__).resolve().parent.parent
ISS = "https://ehr.example.org/fhir"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"


@pytest.fixture(scope="module")
def public_jwks() -> dict[str, Any]:
    return jwks_of(SigningKey("EC-P384", kid="k1"))


def write(tmp_path: Path, content: Any) -> str:
    path = tmp_path / "trusted-clients.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def error_for(path: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_trusted_clients(path)
    return str(caught.value)


def test_loads_a_valid_file(tmp_path: Path, public_jwks: dict[str, Any]) -> None:
    path = write(tmp_path, [
        {"iss": ISS, "jwks_url": JWKS_URL, "fhir_servers": [ISS + "/R4"], "tenant": "t1", "_comment": "ignored"},
        {"iss": "https://local.test", "jwks": public_jwks},
        {"iss": "http://127.0.0.1:9000", "jwks_url": "http://127.0.0.1:9000/jwks.json",
         "fhir_servers": ["http://localhost:8080/fhir"]},
    ])
    first, second, third = load_trusted_clients(path)
    assert first == TrustedClient(iss=ISS, fhir_servers=(ISS + "/R4",), tenant="t1", jwks_url=JWKS_URL, jwks=None)
    assert second.iss == "https://local.test" and second.jwks_url is None and second.fhir_servers == ()
    assert second.jwks is not None and second.jwks["keys"][0]["kid"] == "k1"
    assert third.jwks_url == "http://127.0.0.1:9000/jwks.json"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    assert error_for(path) == f"{path}: cannot read the trusted clients file (No such file or directory)"


def test_bad_json(tmp_path: Path) -> None:
    path = write(tmp_path, '[{"iss": "https://a",}]')
    assert error_for(path) == (
        f"{path}: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 22)"
    )


def test_not_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, {"iss": ISS, "jwks_url": JWKS_URL})
    assert error_for(path) == f"{path}: expected a JSON list of trusted clients, found an object"


def test_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    assert error_for(path) == f"{path}: the list of trusted clients is empty, so no client could call the service"


def test_entry_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": JWKS_URL}, "https://b"])
    assert error_for(path) == f"{path}: client #2: expected an object, found a string"


@pytest.mark.parametrize("entry", [{"jwks_url": JWKS_URL}, {"iss": "", "jwks_url": JWKS_URL}, {"iss": 7}])
def test_missing_iss(tmp_path: Path, entry: dict[str, Any]) -> None:
    path = write(tmp_path, [entry])
    assert error_for(path) == f"{path}: client #1: missing \"iss\" (the issuer the client puts in its JWTs)"


def test_iss_with_white_space(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS + " ", "jwks_url": JWKS_URL}])
    assert error_for(path) == f"{path}: client #1: \"iss\" '{ISS} ' has surrounding white space"


def test_neither_jwks_url_nor_jwks(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "fhir_servers": []}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): needs \"jwks_url\" or \"jwks\" (where its public keys are)"


def test_duplicate_iss(tmp_path: Path) -> None:
    path = write(tmp_path, [
        {"iss": ISS, "jwks_url": JWKS_URL},
        {"iss": "https://other", "jwks_url": JWKS_URL},
        {"iss": ISS, "jwks_url": JWKS_URL},
    ])
    assert error_for(path) == f"{path}: duplicate iss '{ISS}' (clients #1 and #3)"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://ehr.example.org/jwks.json", "must use https (plain http only for loopback hosts)"),
        ("http://10.0.0.8/jwks.json", "must use https (plain http only for loopback hosts)"),
        ("http://localhost.evil.example/jwks.json", "must use https (plain http only for loopback hosts)"),
        ("ftp://ehr.example.org/jwks.json", "is not an absolute http(s) URL"),
        ("/jwks.json", "is not an absolute http(s) URL"),
        ("https://user:secret@ehr.example.org/jwks.json", "must not carry credentials"),
    ],
)
def test_jwks_url_must_be_https_unless_loopback(tmp_path: Path, url: str, problem: str) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": url}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): jwks_url {url!r} {problem}"


def test_jwks_url_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": ["https://a"]}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): \"jwks_url\" must be a string"


def test_fhir_server_must_be_https_unless_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": JWKS_URL, "fhir_servers": ["http://fhir.example.org/r4"]}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): fhir_servers 'http://fhir.example.org/r4' must use https "
        "(plain http only for loopback hosts)"
    )


def test_fhir_servers_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": JWKS_URL, "fhir_servers": "https://fhir.example.org/r4"}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): \"fhir_servers\" must be a list of FHIR base URLs"


def test_unknown_key_catches_typos(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_uri": JWKS_URL}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): unknown key 'jwks_uri' (expected fhir_servers, iss, jwks, jwks_url, tenant; "
        "prefix comments with _)"
    )


def test_empty_tenant(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks_url": JWKS_URL, "tenant": ""}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): \"tenant\" must be a non-empty string when present"


def test_inline_jwks_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks": [{"kty": "EC"}]}])
    assert error_for(path) == f"{path}: client #1 ({ISS}): \"jwks\" must be a JWK Set object ({{\"keys\": [...]}})"


def test_inline_jwks_without_keys(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks": {"key": []}}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): \"jwks\": not a JWK Set (expected an object with a \"keys\" list)"
    )


def test_inline_jwks_with_a_symmetric_key(tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks": {"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]}}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): \"jwks\" key 'hmac' contains private key material; configure public keys only"
    )


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "RSA", "kid": "small", "n": "xjlCRBqkQRhb4RxRl6tEbJ9rW7c", "e": "AQAB"},  # 160-bit RSA
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},  # no kid, bad point
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    ],
)
def test_inline_jwks_without_a_usable_key(tmp_path: Path, jwk: dict[str, Any]) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks": {"keys": [jwk]}}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): \"jwks\": no usable signing key "
        "(each needs a kid and an RSA >= 2048-bit or EC P-256/384/521 key)"
    )


def test_inline_jwks_with_private_key_material(tmp_path: Path) -> None:
    key = SigningKey("EC-P384", kid="pair")
    from jwt.algorithms import ECAlgorithm

    private_jwk = json.loads(ECAlgorithm.to_jwk(key.private_key))
    private_jwk["kid"] = "pair"
    path = write(tmp_path, [{"iss": ISS, "jwks": {"keys": [private_jwk]}}])
    assert error_for(path) == (
        f"{path}: client #1 ({ISS}): \"jwks\" key 'pair' contains private key material; configure public keys only"
    )


# ---------------------------------------------------------------------------------------------------- shipped files


def test_sandbox_file_pins_the_published_es384_key() -> None:
    (sandbox,) = load_trusted_clients(str(REPO_ROOT / "deploy" / "trusted-clients.sandbox.json"))
    assert sandbox.iss == "https://sandbox.cds-hooks.org"
    assert sandbox.jwks_url == "https://sandbox.cds-hooks.org/.well-known/jwks.json"
    assert sandbox.fhir_servers == (
        "https://launch.smarthealthit.org/v/r4/fhir",
        "https://launch.smarthealthit.org/v/r2/fhir",
    )
    assert sandbox.tenant is None
    assert sandbox.jwks is not None
    keys = parse_jwks(sandbox.jwks, source="test")
    assert set(keys) == {"44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"}
    assert keys["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"].algorithms == {"ES384"}
    assert keys["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"].public_key.curve.name == "secp384r1"  # type: ignore[union-attr]


def test_example_file_loads() -> None:
    clients = load_trusted_clients(str(REPO_ROOT / "deploy" / "trusted-clients.example.json"))
    assert len(clients) == 2
    assert all(client.tenant and client.jwks_url and client.fhir_servers for client in clients)


# ---------------------------------------------------------------------------------------------------- helpers


def test_build_authenticator_is_none_in_open_mode() -> None:
    assert build_authenticator(None) is None
    assert build_authenticator("") is None


def test_build_authenticator_uses_the_file(tmp_path: Path, public_jwks: dict[str, Any]) -> None:
    path = write(tmp_path, [{"iss": ISS, "jwks": public_jwks}])
    authenticator = build_authenticator(path)
    assert authenticator is not None
    assert [client.iss for client in authenticator.clients] == [ISS]
    assert isinstance(authenticator._replay_cache, InProcessReplayCache)


def test_build_authenticator_reports_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        build_authenticator(path)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://127.8.9.10/x", True),
        ("http://localhost/x", True),
        ("http://[::1]:9000/x", True),
        ("http://localhost.example.org/x", False),
        ("http://10.0.0.1/x", False),
        ("https://ehr.example.org/x", False),
        ("not a url", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_allows_fhir_server_tolerates_one_trailing_slash() -> None:
    client = TrustedClient(iss=ISS, fhir_servers=("https://fhir.example.org/r4",), tenant=None,
                           jwks_url=JWKS_URL, jwks=None)
    assert client.allows_fhir_server("https://fhir.example.org/r4")
    assert client.allows_fhir_server("https://fhir.example.org/r4/")
    assert not client.allows_fhir_server("https://fhir.example.org/r4/Patient")
    assert not client.allows_fhir_server("https://fhir.example.org/r4//")
    assert not client.allows_fhir_server("https://fhir.example.org.evil.net/r4")
