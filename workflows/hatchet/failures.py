"""A StepFailed across the engine boundary: encoded into the error text Hatchet stores, decoded by
the on-failure task."""

from __future__ import annotations

import json


from workflows.spec import StepFailed



# A StepFailed travels to the on-failure task inside the error text Hatchet stores.
FAILURE_MARKER = "[beads-runner-failure "
DETAIL_LIMIT = 4000


# --- failures across the engine boundary ------------------------------------------------------------
class StepFailedRetryable(Exception):
    """A retryable StepFailed, as Hatchet sees it: any exception but NonRetryableException is retried."""


def encode_failure(exc: StepFailed, attempt: int) -> str:
    """One line: the reason people read in the dashboard, then what `on_failure` needs."""
    detail = exc.detail or ""
    if len(detail) > DETAIL_LIMIT:
        detail = "…" + detail[-DETAIL_LIMIT:]
    payload = json.dumps({"reason": exc.reason, "detail": detail, "retryable": exc.retryable, "attempt": attempt},
                         ensure_ascii=True)
    return f"{' '.join(exc.reason.split())} {FAILURE_MARKER}{payload}]"


def to_hatchet_error(exc: StepFailed, attempt: int) -> Exception:
    from hatchet_sdk.exceptions import NonRetryableException

    text = encode_failure(exc, attempt)
    return StepFailedRetryable(text) if exc.retryable else NonRetryableException(text)


def decode_failure(text: str) -> tuple[StepFailed, int | None]:
    """The StepFailed (and its attempt) back from a stored error; any other error becomes its first line."""
    text = text or ""
    at = text.find(FAILURE_MARKER)
    if at >= 0:
        try:
            data, _ = json.JSONDecoder().raw_decode(text, at + len(FAILURE_MARKER))
            return (StepFailed(str(data.get("reason") or "failed"), retryable=bool(data.get("retryable")),
                               detail=str(data.get("detail") or "")),
                    int(data["attempt"]) if data.get("attempt") else None)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
    first = next((line.strip() for line in text.splitlines() if line.strip()), "failed (no error recorded)")
    return StepFailed(first, retryable=False, detail=text[-DETAIL_LIMIT:] if len(text) > len(first) else ""), None
