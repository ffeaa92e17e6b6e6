"""Schemathesis hooks for `make test`: keep generation short so a run stays quick.

Loaded by the CLI through SCHEMATHESIS_HOOKS=tests.e2e.st_config.hooks."""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_TOKENS = 4


@schemathesis.hook
def map_body(_ctx: Any, body: Any) -> Any:
    """Cap a valid max_tokens (max_completion_tokens, max_output_tokens) at 4 (still valid: only the run's length
    changes, never a case's validity)."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
    return body
