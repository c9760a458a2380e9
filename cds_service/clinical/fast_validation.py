"""A quick yes for the common, plain resource shapes; fhir.resources decides everything else.

Validating one resource with fhir.resources costs 40-100 µs, almost all of it in the Python
validators each nested model runs. For a patient seen for the first time that is most of a
request's cost. Most validated parts, though, are plain: codings, codeable concepts, references,
periods, quantities and primitives. :class:`QuickAcceptor` checks those against rules read once
from the fhir.resources models themselves (element names, which are required, which are lists,
which choice elements exclude each other), and validates every primitive value with the very
pydantic type fhir.resources uses for that element (remembered per value: systems, codes and
displays repeat across every chart).

It only ever says "valid". Anything it does not model (an extension, a null, an unknown element,
a backbone element, a value of an unexpected JSON type) and anything invalid goes to
fhir.resources, which alone names what is wrong. So a resource is never refused here, and the
test suite checks that whatever this accepts, fhir.resources accepts too.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

# The data types checked here; an element of any other complex type sends the resource to fhir.resources.
QUICK_DATATYPES: Final = frozenset(
    {
        "Coding", "CodeableConcept", "Reference", "Period", "Quantity", "Duration", "Range", "Ratio",
        "Dosage", "DosageDoseAndRate", "Timing", "TimingRepeat", "MedicationRequestDispenseRequest",
    }
)  # fmt: skip
# Bound of the per-value memo of primitive verdicts (codes, systems and displays repeat; ids and dates do not).
_MEMO_ENTRIES: Final = 100_000
_MEMO_VALUE_LENGTH: Final = 200  # characters; longer strings are validated every time, never kept
_SCALAR_TYPES: Final = (str, bool, int, float)


@dataclass(frozen=True)
class _Element:
    primitive: TypeAdapter[Any] | None  # the element's own pydantic type, for a primitive
    shape: _Shape | None  # for a complex element of a quick data type
    is_list: bool


@dataclass(frozen=True)
class _Shape:
    """What a resource or data type may hold, as far as the quick check goes."""

    name: str
    elements: Mapping[str, _Element]  # by JSON name
    required: frozenset[str]
    choices: Mapping[str, frozenset[str]]  # choice group ("onset") -> its JSON names ("onsetDateTime" ...)
    required_choices: frozenset[str]


_NOT_QUICK: Final = object()  # an element type the quick check does not model


class QuickAcceptor:
    """Built once per process (reading the models costs a few milliseconds); thread-safe."""

    def __init__(self, models: Mapping[str, Any]) -> None:
        self._datatypes: dict[str, _Shape] = {}
        self._adapters: dict[Any, TypeAdapter[Any]] = {}
        self._shapes = {name: self._shape_of(model, name) for name, model in models.items()}
        self._primitive_verdicts: dict[tuple[int, type, Any], bool] = {}

    def accepts(self, resource_type: str, part: Mapping[str, Any]) -> bool:
        """True when ``part`` is certainly valid for ``resource_type``; False means "ask fhir.resources"."""
        shape = self._shapes.get(resource_type)
        if shape is None or part.get("resourceType") != resource_type:
            return False
        return self._fits(shape, part, top_level=True)

    # -- checking ------------------------------------------------------------------------------------
    def _fits(self, shape: _Shape, value: Any, *, top_level: bool = False) -> bool:
        if type(value) is not dict:
            return False
        elements = shape.elements
        for key, member in value.items():
            if top_level and key == "resourceType":
                continue
            element = elements.get(key)
            if element is None or member is None:
                return False
            if element.is_list:
                if type(member) is not list or not member:
                    return False
                if not all(self._fits_one(element, item) for item in member):
                    return False
            elif not self._fits_one(element, member):
                return False
        if not shape.required <= value.keys():
            return False
        for group, names in shape.choices.items():
            present = len(names & value.keys())
            if present > 1 or (present == 0 and group in shape.required_choices):
                return False
        return True

    def _fits_one(self, element: _Element, value: Any) -> bool:
        if element.shape is not None:
            return self._fits(element.shape, value)
        if type(value) not in _SCALAR_TYPES or element.primitive is None:
            return False
        key = (id(element.primitive), type(value), value)
        verdict = self._primitive_verdicts.get(key)
        if verdict is None:
            try:
                element.primitive.validate_python(value)
                verdict = True
            except (ValidationError, ValueError, TypeError):
                verdict = False
            # Bounded in entries and in size: a full memo starts again rather than grow (a lost entry is only
            # recomputed), and a long string (a narrative, or junk) is checked every time rather than kept.
            if type(value) is not str or len(value) <= _MEMO_VALUE_LENGTH:
                if len(self._primitive_verdicts) >= _MEMO_ENTRIES:
                    self._primitive_verdicts.clear()
                self._primitive_verdicts[key] = verdict
        return verdict

    # -- reading the models --------------------------------------------------------------------------
    def _shape_of(self, model: Any, name: str) -> _Shape:
        elements: dict[str, _Element] = {}
        required: set[str] = set()
        choices: dict[str, set[str]] = {}
        required_choices: set[str] = set()
        for field_name, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            json_name = field.alias or field_name
            if not extra.get("element_property"):
                if field.is_required() and json_name != "resourceType":
                    required.add(json_name)  # a required member this check cannot fill: never quick
                continue
            element = self._element_of(field.annotation)
            if field.is_required() or extra.get("element_required"):
                required.add(json_name)
            group = extra.get("one_of_many")
            if isinstance(group, str):
                choices.setdefault(group, set()).add(json_name)
                if extra.get("one_of_many_required"):
                    required_choices.add(group)
            if element is not _NOT_QUICK:
                assert isinstance(element, _Element)
                elements[json_name] = element
        return _Shape(
            name=name,
            elements=elements,
            required=frozenset(required),
            choices={group: frozenset(names) for group, names in choices.items()},
            required_choices=frozenset(required_choices),
        )

    def _element_of(self, annotation: Any) -> _Element | object:
        inner, is_list = _unwrap(annotation)
        if inner is None:
            return _NOT_QUICK
        if typing.get_origin(inner) is typing.Annotated or inner in (bool, int, float, str):
            adapter = self._adapters.get(inner)
            if adapter is None:
                adapter = self._adapters[inner] = TypeAdapter(inner)
            return _Element(primitive=adapter, shape=None, is_list=is_list)
        type_name = getattr(inner, "__name__", "")
        datatype = type_name.removesuffix("Type")
        if not type_name.endswith("Type") or datatype not in QUICK_DATATYPES:
            return _NOT_QUICK
        shape = self._datatypes.get(datatype)
        if shape is None:
            from fhir.resources.R4B import get_fhir_model_class

            shape = self._shape_of(get_fhir_model_class(datatype), datatype)
            self._datatypes[datatype] = shape
        return _Element(primitive=None, shape=shape, is_list=is_list)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element type inside ``Optional[...]`` and ``List[...]``, and whether it is a list; None if neither."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            return None, False
        annotation = members[0]
        origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return item, True
    return annotation, False
