"""Talking to the homeserver: the blocking client, the daemon's nio sync, retries, fleet rooms
and the homeserver-admin interface."""
