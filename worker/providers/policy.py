"""Our deny statement in a permission set's inline policy: the policy JSON, written once.

The statement denies everything to one Identity Center user id; its Sid carries the
id, so the statement is ours and can be found again and taken off after the countdown.
"""

from __future__ import annotations

import json
from typing import Any

from worker.errors import PermanentError

#: AWS's limit on one permission set's inline policy
INLINE_POLICY_LIMIT = 32_768


def deny_sid(user_id: str) -> str:
    # Sids are alphanumeric; the user id makes the statement ours and findable.
    return "OffboardDeny" + "".join(c for c in user_id if c.isalnum())


def deny_statement(user_id: str) -> dict[str, Any]:
    # identitystore:userId is stable; aws:userid changes when the user name changes.
    return {
        "Sid": deny_sid(user_id),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {"StringEquals": {"identitystore:userId": user_id}},
    }


def _policy(text: str, arn: str) -> dict[str, Any]:
    if not text.strip():
        return {"Version": "2012-10-17", "Statement": []}
    try:
        policy = json.loads(text)
    except ValueError:
        raise PermanentError("sso-admin", f"inline policy of {arn} is not JSON") from None
    statements = policy.get("Statement", [])
    policy["Statement"] = [statements] if isinstance(statements, dict) else list(statements)
    return dict(policy)


def has_deny(text: str, user_id: str, arn: str) -> bool:
    """True if the inline policy carries our deny statement for this user."""
    return any(s.get("Sid") == deny_sid(user_id) for s in _policy(text, arn)["Statement"])


def merge_deny(text: str, user_id: str, arn: str) -> str | None:
    """The inline policy with our deny statement added, or None if it is already there."""
    policy = _policy(text, arn)
    if any(s.get("Sid") == deny_sid(user_id) for s in policy["Statement"]):
        return None
    policy["Statement"].append(deny_statement(user_id))
    merged = json.dumps(policy, separators=(",", ":"))
    if len(merged.encode()) > INLINE_POLICY_LIMIT:
        raise PermanentError(
            "sso-admin",
            f"adding the deny statement to {arn} would make its inline policy "
            f"{len(merged.encode())} bytes, over AWS's {INLINE_POLICY_LIMIT}: shorten the policy "
            "or cut role sessions with an SCP instead",
        )
    return merged


def remove_deny(text: str, user_id: str, arn: str) -> str | None:
    """The inline policy without our statement ("" if nothing is left), None if absent."""
    policy = _policy(text, arn)
    kept = [s for s in policy["Statement"] if s.get("Sid") != deny_sid(user_id)]
    if len(kept) == len(policy["Statement"]):
        return None
    if not kept:
        return ""
    policy["Statement"] = kept
    return json.dumps(policy, separators=(",", ":"))
