"""The published JSON Schemas: equal to the models, and true of what the code produces."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError as PydanticError

from intent import schemas
from intent.errors import (
    CircuitOpenError,
    RateLimitExceeded,
    ServiceRequestError,
    ValidationError,
)
from intent.models import ErrorInfo, IntentRequest, IntentResult
from tasks.backend import error_object

PUBLISHED = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", schemas.NAMES)
def test_the_published_schema_is_the_models(name: str) -> None:
    published = PUBLISHED / f"{name}.json"
    assert published.read_text() == schemas.text(name), f"run `make schemas`: {published}"
    jsonschema.Draft202012Validator.check_schema(json.loads(published.read_text()))


def test_no_schema_is_published_that_the_models_do_not_make() -> None:
    assert sorted(p.stem for p in PUBLISHED.glob("*.json")) == sorted(schemas.NAMES)


def validate(name: str, instance: object) -> None:
    jsonschema.validate(instance, schemas.schema(name), cls=jsonschema.Draft202012Validator)


def test_a_request_the_schema_admits_is_one_the_model_admits() -> None:
    good = {"client_id": "web", "pattern_id": "checkout", "context_id": "ctx-1"}
    validate("request", good)
    IntentRequest.model_validate(good)
    validate("request", {**good, "context_id": None, "data": {"cart": 1}})
    bad_ones = (
        {**good, "client_id": "has spaces"},
        {**good, "extra": 1},
        {"client_id": "web"},
        {**good, "data": {"cart": 1}},  # two context sources
        {**good, "context_id": None},  # none
        {**good, "context_id": None, "data": {}},  # an empty one
    )
    for bad in bad_ones:
        with pytest.raises(jsonschema.ValidationError):
            validate("request", bad)
        with pytest.raises(PydanticError):
            IntentRequest.model_validate(bad)


def test_results_and_duplicates_match_the_result_schema() -> None:
    request = IntentRequest(client_id="web", pattern_id="checkout", context_id="ctx-1")
    validate("result", IntentResult(request=request).model_dump(mode="json"))
    duplicate = IntentResult(request=request, status="duplicate", duplicate_of="first-id")
    validate("result", duplicate.model_dump(mode="json"))
    with pytest.raises(jsonschema.ValidationError):
        validate("result", {**duplicate.model_dump(mode="json"), "status": "sideways"})


@pytest.mark.parametrize(
    ("exc", "fields"),
    [
        (ValidationError("client_id", "bad"), {"field": "client_id"}),
        (ServiceRequestError("context-service", 404, "gone"), {"status": 404}),
        (RateLimitExceeded("intake", 2.5), {"retry_after": 2.5}),
        (CircuitOpenError("context-service", until=12.0), {"until": 12.0}),
    ],
)
def test_every_error_object_matches_the_error_schema(exc: Exception, fields: dict) -> None:
    stored = error_object(exc)
    validate("error", stored)
    assert stored["type"] == type(exc).__name__
    assert fields.items() <= stored.items()
    assert ErrorInfo.model_validate(stored).message == str(exc)
