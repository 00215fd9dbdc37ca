"""Account-key rooms across two Myelin servers, driven by matrix-nio (a real client library).

Alice (server A) creates an `org.matrix.12.4243` room and invites bob (server B) by his
account-name id; bob sees the invite from alice by name, joins, and both chat. Every event
either client reads names users by account name, never by account key, and carries
`unsigned.sender_account` with the sender's key; then alice kicks bob and both servers agree.
Prints one line per step and "N passed, 0 failed"; exits non-zero at the first failure.

    flow.py URL_A URL_B
"""

import asyncio
import json
import re
import sys
import time
import uuid

import nio

URL_A, URL_B = sys.argv[1], sys.argv[2]
ROOM_VERSION = "org.matrix.12.4243"
# An account key as a user id localpart: 43 characters of unpadded URL-safe base64.
KEY = re.compile(r"@[A-Za-z0-9_-]{43}:")
PASSED = 0


def check(condition, what):
    global PASSED
    if not condition:
        print(f"FAIL: {what}", flush=True)
        print(f"{PASSED} passed, 1 failed")
        sys.exit(1)
    PASSED += 1
    print(f"ok: {what}", flush=True)


def ok(response, what):
    failed = isinstance(response, nio.responses.ErrorResponse)
    check(not failed, f"{what} ({response})" if failed else what)
    return response


async def eventually(what, probe, seconds=20):
    """Polls `probe` (an async function returning a truthy value when done) until it holds."""
    deadline = time.monotonic() + seconds
    while True:
        result = await probe()
        if result:
            check(True, what)
            return result
        if time.monotonic() > deadline:
            check(False, f"{what} (timed out after {seconds} s)")
        await asyncio.sleep(0.2)


def without_sender_account(value):
    """The JSON with every `sender_account` taken out: the one place keys may appear."""
    if isinstance(value, dict):
        return {k: without_sender_account(v) for k, v in value.items() if k != "sender_account"}
    if isinstance(value, list):
        return [without_sender_account(v) for v in value]
    return value


async def raw_sync(client, room):
    """The room's joined section of a full /sync, as JSON (nio drops `unsigned` fields)."""
    response = await client.send(
        "GET", "/_matrix/client/v3/sync?full_state=true", headers={"Authorization": f"Bearer {client.access_token}"}
    )
    body = await response.json()
    return body.get("rooms", {}).get("join", {}).get(room)


async def main():
    suffix = uuid.uuid4().hex[:8]
    alice = nio.AsyncClient(URL_A, f"alice{suffix}")
    bob = nio.AsyncClient(URL_B, f"bob{suffix}")
    try:
        ok(await alice.register(f"alice{suffix}", "alice-pw", "nio"), "alice registers on A")
        ok(await bob.register(f"bob{suffix}", "bob-pw", "nio"), "bob registers on B")
        created = ok(
            await alice.room_create(preset=nio.RoomPreset.private_chat, room_version=ROOM_VERSION, name="keys"),
            f"alice creates a {ROOM_VERSION} room",
        )
        room = created.room_id
        ok(await alice.room_invite(room, bob.user_id), "alice invites bob by his account name")

        async def invited():
            sync = ok(await bob.sync(timeout=1000), "bob syncs")
            invite = sync.rooms.invite.get(room)
            if invite is None:
                return None
            return invite
        invite = await eventually("bob sees the invite", invited)
        senders = {e.sender for e in invite.invite_state if hasattr(e, "sender")}
        check(alice.user_id in senders, f"the invite comes from alice by name ({senders})")
        check(not any(KEY.match(s) for s in senders), "no account key among the invite's senders")

        ok(await bob.join(room), "bob joins")
        ok(await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello from B"}), "bob says hello")
        ok(await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "welcome from A"}), "alice answers")

        for client, server in ((alice, "A"), (bob, "B")):
            async def both_messages(client=client):
                section = await raw_sync(client, room)
                if not section:
                    return None
                bodies = {e.get("content", {}).get("body") for e in section["timeline"]["events"]}
                return section if {"hello from B", "welcome from A"} <= bodies else None
            section = await eventually(f"{server}'s client sees both messages", both_messages)
            events = section["timeline"]["events"] + section["state"]["events"]
            senders = {e["sender"] for e in events}
            check(senders == {alice.user_id, bob.user_id}, f"{server}: senders are account names ({senders})")
            check(
                all("key" in e.get("unsigned", {}).get("sender_account", {}) for e in events),
                f"{server}: every event carries unsigned.sender_account",
            )
            shown = json.dumps(without_sender_account(section))
            check(not KEY.search(shown), f"{server}: no account key outside sender_account")
            members = ok(await client.joined_members(room), f"{server}: joined members")
            check(
                {m.user_id for m in members.members} == {alice.user_id, bob.user_id},
                f"{server}: both members by name",
            )

        ok(await alice.room_kick(room, bob.user_id, reason="interop"), "alice kicks bob")

        async def bob_left():
            state = await alice.room_get_state_event(room, "m.room.member", bob.user_id)
            return getattr(state, "content", {}).get("membership") == "leave"
        await eventually("A shows bob as left", bob_left)

        async def bob_told():
            sync = ok(await bob.sync(timeout=1000), "bob syncs")
            return room in sync.rooms.leave
        await eventually("bob's client hears of the kick", bob_told)
    finally:
        await alice.close()
        await bob.close()
    print(f"{PASSED} passed, 0 failed")


asyncio.run(main())
