"""Values the fleet-profile tests share: endpoints and a JWT-shaped token."""

from __future__ import annotations

import base64

CACHE = "grpcs://bazel-cache.example.internal:9092"


EXECUTOR = "grpcs://executor.example.internal:8980"


JWT = (
    "eyJhbGciOiJIUzI1NiJ9."
    + base64.urlsafe_b64encode(b'{"exp": 4102444800}').decode().rstrip("=")
    + ".c2lnbmF0dXJl"
)
