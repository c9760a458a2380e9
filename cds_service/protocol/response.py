"""Typed CDS Hooks 2.0 response objects and their JSON serialisation.

The decision core builds these objects; only :func:`response_to_json` turns them into JSON.
CDS Hooks 2.0 forbids ``null`` and empty strings, arrays and objects anywhere in a response
(``{"cards": []}`` is the one exception), so serialisation drops every empty member, also
inside the FHIR resources that actions carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Indicator = Literal["info", "warning", "critical"]
SelectionBehavior = Literal["at-most-one", "any"]
ActionType = Literal["create", "update", "delete"]
LinkType = Literal["absolute", "smart"]


class SystemActionsLocation(StrEnum):
    """Where rating actions go (``CDS_SYSTEM_ACTIONS``)."""

    TOP = "top"  # CDS Hooks 2.0 top-level ``systemActions``
    EXTENSION = "extension"  # legacy ``extension.systemActions``, read by the public Sandbox
    BOTH = "both"


class _JsonObject:
    """Serialisation shared by the response types: members are built raw and compacted once, at the top."""

    def _members(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without null or empty members."""
        return _compact_object(self._members())


@dataclass(frozen=True)
class Coding(_JsonObject):
    system: str
    code: str
    display: str | None = None

    def _members(self) -> dict[str, Any]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Source(_JsonObject):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None

    def _members(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "url": self.url,
            "icon": self.icon,
            "topic": self.topic._members() if self.topic else None,
        }


@dataclass(frozen=True)
class Action(_JsonObject):
    type: ActionType
    description: str
    resource: Mapping[str, Any] | None = None
    resource_id: str | None = None  # relative reference, e.g. "ServiceRequest/123"; used for delete
    # No uuid: the CDS Hooks 2.0 Action has no identifier (the spec's STU note on system-action feedback says so),
    # and a strict client rejects a response with a member the spec does not define.

    def __post_init__(self) -> None:
        if self.type in ("create", "update") and self.resource is None:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.type == "delete" and not self.resource_id:
            raise ValueError("a delete action needs a resourceId")

    def _members(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "description": self.description,
            "resource": self.resource,
            "resourceId": self.resource_id,
        }


@dataclass(frozen=True)
class Suggestion(_JsonObject):
    label: str
    uuid: str
    actions: tuple[Action, ...] = ()
    # Always sent, true or false: the member is optional in CDS Hooks 2.0, but some client SDKs (HealthChain's
    # response model among them) refuse a suggestion without it. Serialisation keeps False (only None and empty
    # strings, arrays and objects are dropped).
    is_recommended: bool = False

    def _members(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "uuid": self.uuid,
            "isRecommended": self.is_recommended,
            "actions": [a._members() for a in self.actions],
        }


@dataclass(frozen=True)
class Link(_JsonObject):
    label: str
    url: str
    type: LinkType = "absolute"
    app_context: str | None = None
    autolaunchable: bool | None = None

    def _members(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "url": self.url,
            "type": self.type,
            "appContext": self.app_context,
            "autolaunchable": self.autolaunchable,
        }


@dataclass(frozen=True)
class Card(_JsonObject):
    uuid: str
    summary: str
    indicator: Indicator
    source: Source
    detail: str | None = None
    suggestions: tuple[Suggestion, ...] = ()
    selection_behavior: SelectionBehavior | None = None
    override_reasons: tuple[Coding, ...] = ()
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        if len(self.summary) >= 140:
            raise ValueError(f"card summary must be under 140 characters: {self.summary!r}")
        if self.suggestions and self.selection_behavior is None:
            raise ValueError("a card with suggestions needs a selectionBehavior")
        if any(not reason.display for reason in self.override_reasons):
            raise ValueError("every override reason needs a display")
        if self.selection_behavior == "at-most-one" and sum(bool(s.is_recommended) for s in self.suggestions) > 1:
            raise ValueError("at-most-one allows at most one recommended suggestion")

    def _members(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "summary": self.summary,
            "detail": self.detail,
            "indicator": self.indicator,
            "source": self.source._members(),
            "suggestions": [s._members() for s in self.suggestions],
            "selectionBehavior": self.selection_behavior if self.suggestions else None,
            "overrideReasons": [r._members() for r in self.override_reasons],
            "links": [link._members() for link in self.links],
        }


@dataclass(frozen=True)
class CdsResponse:
    cards: tuple[Card, ...] = ()
    system_actions: tuple[Action, ...] = ()
    # Response-level extension members other than systemActions (for example data-quality warnings).
    extension: Mapping[str, Any] = field(default_factory=dict)


def response_to_json(
    response: CdsResponse, location: SystemActionsLocation = SystemActionsLocation.BOTH
) -> dict[str, Any]:
    """Serialise a response, placing system actions where the deployment asks for them."""
    # Compacted once here: compacting at every level would walk each resource once per level.
    body: dict[str, Any] = {"cards": [_compact_object(card._members()) for card in response.cards]}
    actions = [_compact_object(action._members()) for action in response.system_actions]
    extension = _compact_object(response.extension)
    if actions and location in (SystemActionsLocation.TOP, SystemActionsLocation.BOTH):
        body["systemActions"] = actions
    if actions and location in (SystemActionsLocation.EXTENSION, SystemActionsLocation.BOTH):
        extension["systemActions"] = actions
    if extension:
        body["extension"] = extension
    return body


def _compact_object(value: Mapping[str, Any]) -> dict[str, Any]:
    compacted: dict[str, Any] = _compact(value)
    return compacted


# Leaves by exact type: most nodes are strings, and an exact-type test skips the (slow) ABC check of Mapping.
_SCALARS = frozenset({str, int, float, bool})


def _compact(value: Any) -> Any:
    """Drop None and empty members recursively (CDS Hooks 2.0 §Use of JSON).

    Runs over every resource a response carries, so leaves (most of the nodes) are handled
    inline rather than by a call per leaf.
    """
    if isinstance(value, dict) or (not isinstance(value, list | tuple) and isinstance(value, Mapping)):
        out = {}
        for key, item in value.items():
            if item is None or item == "":
                continue
            if type(item) not in _SCALARS and isinstance(item, dict | list | tuple | Mapping):
                item = _compact(item)
                if not item:
                    continue
            out[key] = item
        return out
    if isinstance(value, list | tuple):
        items = []
        for item in value:
            if item is None or item == "":
                continue
            if type(item) not in _SCALARS and isinstance(item, dict | list | tuple | Mapping):
                item = _compact(item)
                if not item:
                    continue
            items.append(item)
        return items
    return value
