"""Response objects: spec invariants enforced at construction, and no null or empty member in the JSON."""

from __future__ import annotations

import pytest

from cds_service.protocol.response import (
    Action,
    Card,
    CdsResponse,
    Coding,
    Source,
    Suggestion,
    SystemActionsLocation,
    response_to_json,
)
from cds_service.protocol.validation import validate_against

UUID = "00000000-0000-4000-8000-000000000001"
SOURCE = Source(label="ACR Appropriateness Criteria", url="https://acsearch.acr.org/docs/69483/Narrative/")


def _rating_action() -> Action:
    resource = {"resourceType": "ServiceRequest", "id": "sr1", "note": [], "extension": [{"url": "x", "valueUri": ""}]}
    return Action(type="update", description="Attach the rating", resource=resource)


def test_empty_response_is_exactly_cards_empty() -> None:
    assert response_to_json(CdsResponse()) == {"cards": []}


def test_empty_members_are_dropped_recursively_also_inside_resources() -> None:
    card = Card(uuid=UUID, summary="Summary", indicator="info", source=SOURCE, detail="")
    body = response_to_json(CdsResponse(cards=(card,), system_actions=(_rating_action(),)), SystemActionsLocation.TOP)
    assert body == {
        "cards": [{"uuid": UUID, "summary": "Summary", "indicator": "info", "source": SOURCE.to_json()}],
        "systemActions": [
            {
                "type": "update",
                "description": "Attach the rating",
                "resource": {"resourceType": "ServiceRequest", "id": "sr1", "extension": [{"url": "x"}]},
            }
        ],
    }
    validate_against("response", body)


@pytest.mark.parametrize(
    ("location", "top", "legacy"),
    [
        (SystemActionsLocation.TOP, True, False),
        (SystemActionsLocation.EXTENSION, False, True),
        (SystemActionsLocation.BOTH, True, True),
    ],
)
def test_system_actions_location(location: SystemActionsLocation, top: bool, legacy: bool) -> None:
    body = response_to_json(CdsResponse(system_actions=(_rating_action(),)), location)
    assert ("systemActions" in body) is top
    assert ("systemActions" in body.get("extension", {})) is legacy


def test_card_invariants() -> None:
    with pytest.raises(ValueError, match="under 140"):
        Card(uuid=UUID, summary="x" * 140, indicator="info", source=SOURCE)
    suggestion = Suggestion(label="Do it", uuid=UUID, actions=(_rating_action(),))
    with pytest.raises(ValueError, match="selectionBehavior"):
        Card(uuid=UUID, summary="s", indicator="info", source=SOURCE, suggestions=(suggestion,))
    with pytest.raises(ValueError, match="display"):
        Card(uuid=UUID, summary="s", indicator="info", source=SOURCE, override_reasons=(Coding("sys", "c"),))
    with pytest.raises(ValueError, match="resourceId"):
        Action(type="delete", description="Remove")
    with pytest.raises(ValueError, match="needs a resource"):
        Action(type="create", description="Create")


def test_delete_action_serialises_resource_id_only() -> None:
    action = Action(type="delete", description="Remove the order", resource_id="ServiceRequest/1")
    assert action.to_json() == {"type": "delete", "description": "Remove the order", "resourceId": "ServiceRequest/1"}


def test_is_recommended_false_is_serialised_and_actions_have_no_uuid() -> None:
    suggestion = Suggestion(label="Do it", uuid=UUID, actions=(_rating_action(),))
    assert suggestion.to_json()["isRecommended"] is False  # compaction drops None and empties, never False
    assert Suggestion(label="Do it", uuid=UUID, is_recommended=True).to_json()["isRecommended"] is True
    card = Card(uuid=UUID, summary="s", indicator="info", source=SOURCE, suggestions=(suggestion,),
                selection_behavior="at-most-one")  # fmt: skip
    body = response_to_json(CdsResponse(cards=(card,), system_actions=(_rating_action(),)))
    assert body["cards"][0]["suggestions"][0]["isRecommended"] is False
    assert "uuid" not in body["systemActions"][0] and "uuid" not in body["cards"][0]["suggestions"][0]["actions"][0]
    validate_against("response", body)
    validate_against("cds-hooks-2.0-response", body)
