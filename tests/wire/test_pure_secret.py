"""bureau.secret.Secret: what wraps every secret a wire format carries never renders it."""

from __future__ import annotations

import pickle

import pytest
import structlog

from bureau.secret import Secret


def test_secret_never_renders() -> None:
    s = Secret("canary-value-xyz")
    percent = "%s" % s  # noqa: UP031 -- %-formatting is one more way to render it
    rendered = [repr(s), str(s), f"{s}", f"{s!r}", percent, repr([s]), repr({"k": s})]
    assert all("canary-value-xyz" not in r for r in rendered)
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger().warning("event", token=s)
    rendered_log = structlog.processors.JSONRenderer()(None, "info", dict(logs[0]))
    assert "canary-value-xyz" not in str(rendered_log)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        hash(s)
    assert s == Secret("canary-value-xyz")
    assert s != Secret("other")
    assert s.reveal() == "canary-value-xyz"
