"""Intake of an analysis: the per-client limit, the default deadline, and who owns a
request_id, so a resubmission does not run it twice."""

from __future__ import annotations

from dataclasses import dataclass

from intent import scripts
from intent.connections import redis_errors
from intent.models import IntentRequest
from intent.pipeline.steps import with_deadline
from intent.ratelimit import INTAKE
from intent.runtime import Runtime


def admit(rt: Runtime, request: IntentRequest) -> IntentRequest:
    """Count the analysis against its client's intake limit (raises RateLimitExceeded with
    ``retry_after``) and give it its default deadline."""
    rt.rate_limits.hit(INTAKE, request.client_id)
    return with_deadline(request, rt.settings.analysis_deadline)


GIVEN_BACK = "given-back:"


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: ``owner`` is None when ``request_id`` is now ours, else the
    analysis that holds it; ``replaces`` names an earlier analysis of the id, refused and
    given back, whose stored results the caller must forget before running anew."""

    owner: str | None
    replaces: str | None = None


def claim_request(rt: Runtime, request_id: str, analysis_id: str) -> Claim:
    """Claim ``request_id`` for ``analysis_id``, in one script.

    The claim lives as long as results do (``result_expires``): within that time a
    resubmission gets the first analysis back instead of a second run, unless that first
    one was refused after its claim (:func:`give_back`).
    """
    claim = scripts.register(rt.redis, "claim_request")
    with redis_errors(f"claiming request_id {request_id}"):
        owner = claim(
            keys=[rt.keys.request_claim(request_id)],
            args=[analysis_id, rt.settings.result_expires],
        )
    if owner is None:
        return Claim(None)
    text = owner.decode() if isinstance(owner, bytes) else str(owner)
    if text.startswith(GIVEN_BACK):
        return Claim(None, replaces=text[len(GIVEN_BACK) :])
    return Claim(text)


def release_request(rt: Runtime, request_id: str) -> None:
    """Give a claim back: the analysis could not be enqueued at all."""
    with redis_errors(f"giving back request_id {request_id}"):
        rt.redis.delete(rt.keys.request_claim(request_id))


def give_back(rt: Runtime, request_id: str, analysis_id: str) -> bool:
    """Give back ``analysis_id``'s claim (never a later owner's): it was refused after the
    claim (bad input), so a corrected resubmission runs. True if it was."""
    script = scripts.register(rt.redis, "give_back")
    with redis_errors(f"giving back request_id {request_id}"):
        return bool(script(keys=[rt.keys.request_claim(request_id)], args=[analysis_id]))
