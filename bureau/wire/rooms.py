"""Room layout and power levels (WIRE.md "Rooms"). Pure: builds request content only."""

from __future__ import annotations

from typing import Any

MACHINE_KEY = "m.bureau.machine_key"
MACHINE_STATUS = "m.bureau.machine_status"
MACHINE_INFO = "m.bureau.machine_info"
MACHINE_CONFIG = "m.bureau.machine_config"
CREDENTIALS = "m.bureau.credentials"
FLEET_CACHE = "m.bureau.fleet_cache"
FLEET_PROFILE = "m.bureau.fleet_profile"

# Pinned (OURS; upstream takes the server's default): from room version 12 on, a room's
# creator holds unlimited power and may not be listed in the power levels, which cannot
# express WIRE.md's table (operators at 100, machines at 50, as upstream's rooms have).
# Version 11 is served by every homeserver we target; its state-resolution weaknesses need
# federation to matter.
ROOM_VERSION = "11"

ADMIN_LEVEL = 100
MACHINE_LEVEL = 50

DEV_TEAM = "m.bureau.dev_team"

# The namespace's rooms beside its space, as upstream names them (upstream
# lib/ref/namespace.go): #<ns>/system, /template, /pipeline, /artifact, /dev.
NAMESPACE_ROOMS = ("system", "template", "pipeline", "artifact", "dev")


def namespace_room_localpart(fleet: str, role: str) -> str:
    return f"{fleet.split('/', 1)[0]}/{role}"


def dev_team_content(fleet: str, server_name: str) -> dict[str, str]:
    """``m.bureau.dev_team`` as upstream publishes it in every room it creates: the
    namespace's dev room (upstream lib/schema/rooms.go DevTeamRoomAlias)."""
    return {"room": f"#{namespace_room_localpart(fleet, 'dev')}:{server_name}"}


WEBRTC_OFFER = "m.bureau.webrtc_offer"
WEBRTC_ANSWER = "m.bureau.webrtc_answer"
SERVICE = "m.bureau.service"
LAYOUT = "m.bureau.layout"
TOKEN_SIGNING_KEY = "m.bureau.token_signing_key"  # noqa: S105 -- an event type
PIPELINE = "m.bureau.pipeline"
RESERVATION = "m.bureau.reservation"
MACHINE_DRAIN = "m.bureau.machine_drain"

# Every function below gives upstream's levels exactly (upstream lib/schema/events.go,
# events_fleet.go, events_artifact.go, cmd/bureau/matrix/setup.go adminOnlyPowerLevels):
# they are what `bureau matrix doctor` requires, so that a hub set up by either side
# passes it and --fix leaves it alone. Rooms we create get with_ours() of them.


def _admin_protected() -> dict[str, int]:
    """Room metadata and the dev team pointer, admins only in every room, even where
    state_default is low (upstream's AdminProtectedEvents)."""
    return dict.fromkeys(
        (
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.name",
            "m.room.power_levels",
            "m.room.server_acl",
            "m.room.tombstone",
            "m.room.topic",
            "m.space.child",
            DEV_TEAM,
        ),
        ADMIN_LEVEL,
    )


# OURS, where upstream sets nothing: the parent pointer we put in every room stays with
# admins too (it matters in the config room, whose state_default is 0).
OUR_EVENT_LEVELS = {"m.space.parent": ADMIN_LEVEL}


def with_ours(levels: dict[str, Any]) -> dict[str, Any]:
    """``levels`` plus our additions, never overriding a level upstream sets."""
    return {**levels, "events": {**OUR_EVENT_LEVELS, **levels["events"]}}


def _levels(
    users: dict[str, int],
    events: dict[str, int],
    *,
    events_default: int,
    state_default: int,
    invite: int,
    moderation: int,
) -> dict[str, Any]:
    """``moderation``: redact and room notifications; 100 in the rooms upstream builds
    with roomPowerLevels (events.go:382), 50 in the rest."""
    return {
        "users": dict(users),
        "users_default": 0,
        "events": events,
        "events_default": events_default,
        "state_default": state_default,
        "ban": ADMIN_LEVEL,
        "kick": ADMIN_LEVEL,
        "invite": invite,
        "redact": moderation,
        "notifications": {"room": moderation},
    }


def _admin_only(admin: str, member_settable: tuple[str, ...] = ()) -> dict[str, Any]:
    """setup.go adminOnlyPowerLevels: members talk, admins set state."""
    events = {**_admin_protected(), **dict.fromkeys(member_settable, 0)}
    return _levels(
        {admin: ADMIN_LEVEL},
        events,
        events_default=0,
        state_default=ADMIN_LEVEL,
        invite=ADMIN_LEVEL,
        moderation=MACHINE_LEVEL,
    )


def space_power_levels(admin: str) -> dict[str, Any]:
    return _admin_only(admin)


def template_room_power_levels(admin: str) -> dict[str, Any]:
    # Templates are state (100); members may talk, as upstream's.
    return _admin_only(admin)


def dev_room_power_levels(admin: str) -> dict[str, Any]:
    return _admin_only(admin)


def system_room_power_levels(admin: str) -> dict[str, Any]:
    """events.go:516: services publish their token signing keys; machines (50, granted
    at provisioning) invite services."""
    return {**_admin_only(admin, (TOKEN_SIGNING_KEY,)), "invite": MACHINE_LEVEL}


def pipeline_room_power_levels(admin: str) -> dict[str, Any]:
    """events.go:495: admins publish pipelines; machines (50) invite their executors."""
    return _levels(
        {admin: ADMIN_LEVEL},
        {**_admin_protected(), PIPELINE: ADMIN_LEVEL},
        events_default=ADMIN_LEVEL,
        state_default=ADMIN_LEVEL,
        invite=MACHINE_LEVEL,
        moderation=ADMIN_LEVEL,
    )


def artifact_room_power_levels(admin: str) -> dict[str, Any]:
    """events_artifact.go:16."""
    return _levels(
        {admin: ADMIN_LEVEL},
        _admin_protected(),
        events_default=ADMIN_LEVEL,
        state_default=ADMIN_LEVEL,
        invite=ADMIN_LEVEL,
        moderation=ADMIN_LEVEL,
    )


def fleet_power_levels(admin: str) -> dict[str, Any]:
    """events_fleet.go:210: members write runtime state (leases, service status, alerts);
    the fleet's configuration, the binary cache included, is admins'."""
    events = _admin_protected()
    events.update(
        dict.fromkeys(("m.bureau.ha_lease", "m.bureau.service_status", "m.bureau.fleet_alert"), 0)
    )
    events.update(
        dict.fromkeys(
            (
                "m.bureau.fleet_service",
                "m.bureau.machine_definition",
                "m.bureau.fleet_config",
                FLEET_CACHE,
                "m.bureau.environment_build",
                "m.bureau.provenance_roots",
                "m.bureau.provenance_policy",
            ),
            ADMIN_LEVEL,
        )
    )
    return _levels(
        {admin: ADMIN_LEVEL},
        events,
        events_default=0,
        state_default=ADMIN_LEVEL,
        invite=ADMIN_LEVEL,
        moderation=MACHINE_LEVEL,
    )


def machine_room_power_levels(admin: str) -> dict[str, Any]:
    """events_fleet.go:148: machines publish their own key, info, status and WebRTC
    signalling; consumers check the sender."""
    events = {
        **_admin_protected(),
        **dict.fromkeys(
            (MACHINE_KEY, MACHINE_INFO, MACHINE_STATUS, WEBRTC_OFFER, WEBRTC_ANSWER), 0
        ),
    }
    return _levels(
        {admin: ADMIN_LEVEL},
        events,
        events_default=0,
        state_default=ADMIN_LEVEL,
        invite=ADMIN_LEVEL,
        moderation=MACHINE_LEVEL,
    )


def service_room_power_levels(admin: str) -> dict[str, Any]:
    """events_fleet.go:182: members register services; machines (50) invite them."""
    return _levels(
        {admin: ADMIN_LEVEL},
        {**_admin_protected(), SERVICE: 0},
        events_default=0,
        state_default=ADMIN_LEVEL,
        invite=MACHINE_LEVEL,
        moderation=MACHINE_LEVEL,
    )


def config_room_power_levels(admin: str, machine: str) -> dict[str, Any]:
    """events.go:468: only operators (100) publish credentials; the machine (50) writes
    its config and invites; its daemon posts messages and layouts (0)."""
    events = {
        **_admin_protected(),
        MACHINE_CONFIG: MACHINE_LEVEL,
        CREDENTIALS: ADMIN_LEVEL,
        LAYOUT: 0,
        "m.room.message": 0,
    }
    return _levels(
        {admin: ADMIN_LEVEL, machine: MACHINE_LEVEL},
        events,
        events_default=ADMIN_LEVEL,
        state_default=0,
        invite=MACHINE_LEVEL,
        moderation=ADMIN_LEVEL,
    )


def power_level_drift(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """How a room's power levels differ from what the design gives it, one phrase per
    difference (``events.m.bureau.credentials is 50, not 100``). Extra users and event
    types are allowed (more operators, more state); what the design sets must hold."""
    drift = []
    for key, want in expected.items():
        have = actual.get(key)
        if isinstance(want, dict):
            have_map = have if isinstance(have, dict) else {}
            for sub, sub_want in want.items():
                if have_map.get(sub) != sub_want:
                    drift.append(f"{key}.{sub} is {have_map.get(sub)}, not {sub_want}")
        elif have != want:
            drift.append(f"{key} is {have}, not {want}")
    return drift


def with_power_levels(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """``actual`` with everything the design sets put back; the rest kept."""
    merged = dict(actual)
    for key, want in expected.items():
        if isinstance(want, dict):
            have = actual.get(key)
            merged[key] = {**(have if isinstance(have, dict) else {}), **want}
        else:
            merged[key] = want
    return merged
