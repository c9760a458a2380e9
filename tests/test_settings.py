"""Settings are read once from CDS_* variables and a bad value names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.errors import ConfigurationError
from cds_service.protocol.response import SystemActionsLocation
from cds_service.settings import settings_from_env


def test_defaults_are_embedded_and_open_mode() -> None:
    settings = settings_from_env({})
    assert settings.open_mode
    assert settings.fhir_servers == ()
    assert settings.fhir_timeout == 2.5
    assert settings.system_actions is SystemActionsLocation.BOTH
    assert settings.database_url is None
    assert settings.max_body_bytes == 5 * 1024 * 1024


def test_values_are_parsed(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text("[]")
    settings = settings_from_env(
        {
            "CDS_TRUSTED_CLIENTS": str(clients),
            "CDS_ALLOW_OPEN": "1",
            "CDS_FHIR_SERVERS": "https://a.example.org/fhir, http://127.0.0.1:9/fhir",
            "CDS_PUBLIC_URL": "https://cds.example.org/",
            "CDS_DATABASE_URL": "postgresql://db/cds",
            "CDS_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CDS_FHIR_TIMEOUT": "1.5",
            "CDS_SYSTEM_ACTIONS": "top",
        }
    )
    assert not settings.open_mode
    assert settings.allow_open
    assert settings.fhir_servers == ("https://a.example.org/fhir", "http://127.0.0.1:9/fhir")
    assert settings.public_url == "https://cds.example.org"
    assert settings.fhir_timeout == 1.5
    assert settings.system_actions is SystemActionsLocation.TOP


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CDS_TRUSTED_CLIENTS": "/nonexistent/clients.json"},
            "CDS_TRUSTED_CLIENTS='/nonexistent/clients.json': no such file",
        ),
        ({"CDS_ALLOW_OPEN": "maybe"}, "CDS_ALLOW_OPEN='maybe': expected 1 or 0"),
        ({"CDS_FHIR_SERVERS": "ftp://x"}, "CDS_FHIR_SERVERS: 'ftp://x' is not an http(s) URL"),
        ({"CDS_DATABASE_URL": "mysql://x"}, "CDS_DATABASE_URL: expected sqlite:///path or postgresql://"),
        ({"CDS_FHIR_TIMEOUT": "-1"}, "CDS_FHIR_TIMEOUT='-1': expected a positive number"),
        ({"CDS_FHIR_TIMEOUT": "soon"}, "CDS_FHIR_TIMEOUT='soon': expected a positive number"),
        ({"CDS_SYSTEM_ACTIONS": "sideways"}, "CDS_SYSTEM_ACTIONS='sideways': expected top, extension or both"),
        ({"CDS_REDIS_URL": "http://x"}, "CDS_REDIS_URL: expected redis://host:port/db"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings_from_env(env)
    assert message in str(caught.value)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "0", "0.0", "20.5", "1e3"])
def test_fhir_timeout_must_be_a_finite_positive_number_of_at_most_20_seconds(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"CDS_FHIR_TIMEOUT=.*: expected a positive number of at most 20"):
        settings_from_env({"CDS_FHIR_TIMEOUT": value})


@pytest.mark.parametrize(("value", "seconds"), [("20", 20.0), ("0.25", 0.25), ("2.5", 2.5)])
def test_fhir_timeout_within_bounds_is_accepted(value: str, seconds: float) -> None:
    assert settings_from_env({"CDS_FHIR_TIMEOUT": value}).fhir_timeout == seconds


@pytest.mark.parametrize(
    "value", ["https://cds.example.org/cds-services/lumbar-imaging-order-select", "urn:oid:2.16.840.1.113883", "x-g:1"]
)
def test_qcdsm_uri_accepts_absolute_uris(value: str) -> None:
    assert settings_from_env({"CDS_QCDSM_URI": value}).qcdsm_uri == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("G1011", "has no scheme"),
        ("/cds-services/x", "has no scheme"),
        ("https:///no-host", "has no host"),
        ("urn:", "has nothing after the scheme"),
        ("https://cds.example.org/a b", "contains white space"),
        ("1urn:x", "has no scheme"),
    ],
)
def test_qcdsm_uri_must_be_an_absolute_uri(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings_from_env({"CDS_QCDSM_URI": value})
    assert f"CDS_QCDSM_URI={value!r}: not an absolute URI: it {problem}" in str(caught.value)


def test_the_qcdsm_value_defaults_to_the_invoked_endpoint() -> None:
    default = settings_from_env({})
    assert default.qcdsm_uri_for("svc") == "http://127.0.0.1:8080/cds-services/svc"  # offline: the default server
    assert default.qcdsm_uri_for("svc", "https://ehr-proxy.example.org/") == (
        "https://ehr-proxy.example.org/cds-services/svc"
    )
    public = settings_from_env({"CDS_PUBLIC_URL": "https://cds.example.org/"})
    assert public.qcdsm_uri_for("svc", "http://10.0.0.5:8080/") == "https://cds.example.org/cds-services/svc"
    fixed = settings_from_env({"CDS_PUBLIC_URL": "https://cds.example.org", "CDS_QCDSM_URI": "urn:cms:G1011"})
    assert fixed.qcdsm_uri_for("svc", "http://10.0.0.5:8080/") == "urn:cms:G1011"
