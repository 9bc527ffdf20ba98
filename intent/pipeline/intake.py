"""Intake of an analysis: the per-client limit, the default deadline, and who owns a
request_id, so a resubmission does not run it twice."""

from __future__ import annotations

from intent import scripts
from intent.models import IntentRequest
from intent.pipeline.steps import with_deadline
from intent.ratelimit import INTAKE
from intent.runtime import Runtime


def admit(rt: Runtime, request: IntentRequest) -> IntentRequest:
    """Count the analysis against its client's intake limit (raises RateLimitExceeded with
    ``retry_after``) and give it its default deadline."""
    rt.rate_limits.hit(INTAKE, request.client_id)
    return with_deadline(request, rt.settings.analysis_deadline)


def claim_request(rt: Runtime, request_id: str, analysis_id: str) -> str | None:
    """Claim ``request_id`` for ``analysis_id``; None when claimed, else the current owner.

    The claim lives as long as results do (``result_expires``): within that time a
    resubmission gets the first analysis back instead of a second run.
    """
    key = rt.keys.request_claim(request_id)
    if rt.redis.set(key, analysis_id, nx=True, ex=rt.settings.result_expires):
        return None
    owner = rt.redis.get(key)
    if owner is None:  # expired between the two commands: try once more
        return claim_request(rt, request_id, analysis_id)
    return owner.decode() if isinstance(owner, bytes) else str(owner)


def release_request(rt: Runtime, request_id: str, analysis_id: str | None = None) -> bool:
    """Give a claim back: the analysis could not be enqueued, or it was refused (bad input)
    after the claim, so a corrected resubmission runs. With ``analysis_id``, only that
    analysis's claim is given back (never a later owner's). True if one was."""
    key = rt.keys.request_claim(request_id)
    if analysis_id is None:
        return bool(rt.redis.delete(key))
    release = scripts.register(rt.redis, "release_if_owner")
    return bool(release(keys=[key], args=[analysis_id]))
