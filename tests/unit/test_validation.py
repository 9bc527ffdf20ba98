"""Bad input: every malformed payload is refused with an error naming the field."""

from __future__ import annotations

import json

import pytest

from intent.errors import ValidationError
from intent.models import IntentRequest
from intent.settings import Settings
from intent.validation import parse_request
from tests.helpers import CAP, GOOD, MALFORMED, without

SETTINGS = Settings(max_payload_bytes=CAP, max_json_depth=32)


@pytest.mark.parametrize(("payload", "field"), MALFORMED)
def test_malformed_payload_names_the_field(payload: object, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_request(payload, SETTINGS)
    assert info.value.field == field
    assert field in str(info.value)
    assert not info.value.transient


def test_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


def test_good_payload_as_dict_or_json_text() -> None:
    assert parse_request(GOOD, SETTINGS).context_id == "ctx-1"
    assert parse_request(json.dumps(GOOD), SETTINGS).client_id == "web"


def test_request_id_is_generated_when_absent() -> None:
    a, b = (
        parse_request(without("request_id"), SETTINGS),
        parse_request(without("request_id"), SETTINGS),
    )
    assert a.request_id != b.request_id
    assert IntentRequest.model_validate({**without("request_id")}).request_id


def test_validation_error_survives_a_json_round_trip_of_its_args() -> None:
    # Celery's JSON backend stores exc.args and rebuilds the error as cls(*args).
    with pytest.raises(ValidationError) as info:
        parse_request(without("client_id"), SETTINGS)
    rebuilt = ValidationError(*json.loads(json.dumps(info.value.args)))
    assert rebuilt.field == "client_id"
    assert str(rebuilt) == str(info.value)


@pytest.mark.parametrize("number", [10**32 - 1, -(10**32 - 1), 9 * 10**31, 2**106])
def test_an_integer_of_32_digits_is_valid_as_a_dict_and_as_text(number: int) -> None:
    # The bound is digits, not bits: 2**106 < 10**32 - 1 < 2**107.
    payload = {**without("context_id"), "data": {"n": number}}
    assert parse_request(payload, SETTINGS).data == {"n": number}
    assert parse_request(json.dumps(payload), SETTINGS).data == {"n": number}


@pytest.mark.parametrize("number", [10**32, -(10**32)])
def test_an_integer_of_33_digits_is_refused_as_a_dict_and_as_text(number: int) -> None:
    payload = {**without("context_id"), "data": {"n": number}}
    for given in (payload, json.dumps(payload)):
        with pytest.raises(ValidationError) as info:
            parse_request(given, SETTINGS)
        assert info.value.field == "data.n", info.value


def test_a_key_with_a_lone_surrogate_is_named_escaped_so_the_refusal_crosses_json() -> None:
    from intent import codec

    payload = {**GOOD, "signals": {"k\udc80x": 1}}
    for given in (payload, json.dumps(payload)):
        with pytest.raises(ValidationError) as info:
            parse_request(given, SETTINGS)
        assert info.value.field == "signals.k\\udc80x"
        # As a result backend stores it, and as a client reads it back (the strict codec).
        stored = codec.dumps(list(info.value.args))
        assert codec.loads(stored, codec.Limits(), "result")[0] == "signals.k\\udc80x"
