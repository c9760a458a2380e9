"""The shipped ICD-10-CM snapshot against its source, the ``simple-icd-10-cm`` package, and its generator.

The service reads ICD-10-CM only from ``cds_service/knowledge/icd10cm_snapshot.json``; these tests
check that file code by code against the installed package (by generating it afresh) and that the
generator rejects what the package does not know. That the service never imports the package is
checked in test_knowledge_lookups.py (a fresh process); a value set the snapshot does not cover is
checked in test_knowledge_validation.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.knowledge import icd10cm
from cds_service.knowledge.loader import KNOWLEDGE_DIR, knowledge_problems

REGENERATE = "regenerate it with `python -m cds_service.knowledge.icd10cm --write`"


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return icd10cm.generate()


@pytest.fixture
def knowledge_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped knowledge files to break."""
    target = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


@pytest.fixture
def snapshot_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point the module at a snapshot file in tmp_path (not yet written); the real one is read again afterwards."""
    path = tmp_path / icd10cm.SNAPSHOT_FILE
    monkeypatch.setattr(icd10cm, "SNAPSHOT_PATH", path)
    icd10cm._snapshot.cache_clear()
    yield path
    monkeypatch.undo()
    icd10cm._snapshot.cache_clear()


def test_shipped_snapshot_equals_a_fresh_generation_from_the_package(fresh: dict[str, Any]) -> None:
    shipped = json.loads(icd10cm.SNAPSHOT_PATH.read_text(encoding="utf-8"))
    hint = f"the snapshot is stale: {REGENERATE}"
    assert shipped["data_version"] == fresh["data_version"], hint
    assert shipped["filters"] == fresh["filters"], hint
    wrong = sorted(
        code
        for code in shipped["descriptions"].keys() | fresh["descriptions"].keys()
        if shipped["descriptions"].get(code) != fresh["descriptions"].get(code)
    )
    assert not wrong, f"{hint}; codes that differ: {wrong[:20]}"
    # Byte for byte too: the file is what `--write` renders (sorted keys, stable order).
    assert icd10cm.SNAPSHOT_PATH.read_text(encoding="utf-8") == icd10cm.render(fresh), hint
    assert icd10cm.main(["--check"]) == 0


def test_snapshot_covers_the_value_sets(fresh: dict[str, Any]) -> None:
    assert icd10cm.snapshot_problem() is None
    filter_items, _listed = icd10cm._valueset_items(KNOWLEDGE_DIR)
    assert fresh["filters"].keys() == {value for _where, value in filter_items}  # 25 today
    expanded = {code for codes in fresh["filters"].values() for code in codes}
    assert len(expanded) > 5000
    assert expanded <= fresh["descriptions"].keys()
    for value, codes in fresh["filters"].items():
        assert codes, f"{value} expands to nothing"
        assert icd10cm.is_valid_filter(value)
        assert [code for code, _text in icd10cm.expand(value)] == codes
    # Tabular order, not alphabetical: C7A sits inside C00-C96, O9A closes the pregnancy chapter.
    assert "C7A.00" in fresh["filters"]["C00-C96"]
    assert fresh["filters"]["O00-O9A"][-1].startswith("O9A")


def test_run_time_lookups_match_the_package(fresh: dict[str, Any]) -> None:
    assert icd10cm.is_code("M54.50") and icd10cm.is_code("M5450")
    assert icd10cm.description("M5450") == icd10cm.description("M54.50") == "Low back pain, unspecified"
    assert icd10cm.is_code("D49") and icd10cm.is_code("C7A")  # both a block and a category
    assert not icd10cm.is_code("M50-M54") and not icd10cm.is_code("C99.9") and not icd10cm.is_code("m54.50")
    with pytest.raises(ValueError, match=r"not in icd10cm_snapshot\.json"):
        icd10cm.description("C99.9")
    assert not icd10cm.is_valid_filter("C80")
    with pytest.raises(ValueError, match=r"not in icd10cm_snapshot\.json"):
        icd10cm.expand("C80")
    # The snapshot's expansion of an item filter is what the package's expansion gives.
    assert [code for code, _text in icd10cm.expand("M46.2")] == icd10cm.package_expand("M46.2")
    assert icd10cm.expand("M46.2")[0] == ("M46.2", fresh["descriptions"]["M46.2"])


def test_generator_rejects_what_the_package_does_not_know(knowledge_dir: Path) -> None:
    path = knowledge_dir / "valuesets" / "malignancy.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["compose"]["include"][1]["filter"][0]["value"] = "C96-C00"
    data["compose"]["include"].append(
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "concept": [{"code": "C99.9", "display": "Cancer"}]}
    )
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(icd10cm.SnapshotError) as raised:
        icd10cm.generate(knowledge_dir)
    assert raised.value.problems == [
        "valuesets/malignancy.json: compose.include[1]: 'C96-C00' is neither an ICD-10-CM code nor a category "
        "range (range C96-C00: the first category comes after the last in the tabular list)",
        "valuesets/malignancy.json: compose.include[6]: C99.9 is not an ICD-10-CM code",
    ]


def test_generator_covers_a_new_filter(knowledge_dir: Path) -> None:
    path = knowledge_dir / "valuesets" / "malignancy.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["compose"]["include"][1]["filter"].append({"property": "concept", "op": "is-a", "value": "C80"})
    path.write_text(json.dumps(data), encoding="utf-8")
    snapshot = icd10cm.generate(knowledge_dir)
    assert snapshot["filters"]["C80"] == ["C80", "C80.0", "C80.1", "C80.2"]


def test_check_fails_on_a_stale_snapshot(snapshot_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = icd10cm.render(icd10cm.generate())
    snapshot_path.write_text(text.replace('"Low back pain, unspecified"', '"Low back pain"'), encoding="utf-8")
    assert icd10cm.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert icd10cm.main(["--write"]) == 0
    assert snapshot_path.read_text(encoding="utf-8") == text
    assert icd10cm.main(["--check"]) == 0


def test_missing_snapshot_is_one_problem_naming_the_file(snapshot_path: Path) -> None:
    problems = knowledge_problems()
    assert problems[0] == f"icd10cm_snapshot.json: file not found; generate it with `{icd10cm.REGENERATE}`"
    # Not one more message per ICD-10-CM filter or code of the value sets.
    assert not [problem for problem in problems[1:] if icd10cm.SNAPSHOT_FILE in problem]


def test_malformed_snapshot_is_a_problem(snapshot_path: Path) -> None:
    snapshot_path.write_text(json.dumps({"filters": {"Z85": ["Z85.0"]}, "descriptions": {}}), encoding="utf-8")
    assert knowledge_problems()[0].startswith("icd10cm_snapshot.json: malformed")
