"""The client-server flow driven by matrix-nio, a real client library.

Two users register and log in; rooms are created with each preset; invite, join, kick, ban,
unban and leave; fifty messages paged through backwards and forwards exactly once; state put and
get; a redaction; display names. Prints one line per step and "N passed, 0 failed" at the end;
exits non-zero at the first failure.
"""

import asyncio
import sys
import uuid

import nio

BASE = sys.argv[1]
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
    check(not isinstance(response, nio.responses.ErrorResponse), f"{what} ({response})")
    return response


async def main():
    suffix = uuid.uuid4().hex[:8]
    alice = nio.AsyncClient(BASE, f"alice{suffix}")
    bob = nio.AsyncClient(BASE, f"bob{suffix}")
    try:
        ok(await alice.register(f"alice{suffix}", "alice-pw", "nio"), "alice registers")
        ok(await bob.register(f"bob{suffix}", "bob-pw", "nio"), "bob registers")
        ok(await alice.logout(), "alice logs out")
        ok(await alice.login("alice-pw", device_name="nio-again"), "alice logs in with her password")
        who = ok(await alice.whoami(), "whoami")
        check(who.user_id == alice.user_id, "whoami names alice")

        for preset in (nio.RoomPreset.private_chat, nio.RoomPreset.public_chat, nio.RoomPreset.trusted_private_chat):
            created = ok(await alice.room_create(preset=preset, name=f"{preset.value} room"), f"create a {preset.value} room")
            name = ok(await alice.room_get_state_event(created.room_id, "m.room.name"), "read its name")
            check(name.content.get("name") == f"{preset.value} room", "the name is the one given")

        room = ok(await alice.room_create(preset=nio.RoomPreset.private_chat, topic="interop"), "create the main room").room_id
        ok(await alice.room_invite(room, bob.user_id), "alice invites bob")
        ok(await bob.join(room), "bob joins")
        members = ok(await alice.joined_members(room), "joined members")
        check({m.user_id for m in members.members} == {alice.user_id, bob.user_id}, "both are joined")

        sent = []
        for i in range(50):
            response = ok(
                await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"}),
                f"send message {i}",
            )
            sent.append(response.event_id)

        seen, start = [], ""
        for _ in range(30):
            page = ok(await bob.room_messages(room, start=start, limit=8, direction=nio.MessageDirection.back), "page backwards")
            seen += [e.event_id for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if not page.end or not page.chunk:
                break
            start = page.end
        check(list(reversed(seen)) == sent, "backwards pagination saw every message once, in order")

        seen, start = [], "s0"
        for _ in range(30):
            page = ok(await bob.room_messages(room, start=start, limit=8, direction=nio.MessageDirection.front), "page forwards")
            seen += [e.event_id for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if not page.end or not page.chunk:
                break
            start = page.end
        check(seen == sent, "forwards pagination saw every message once, in order")

        ok(await alice.room_put_state(room, "m.room.topic", {"topic": "changed"}), "alice changes the topic")
        topic = ok(await bob.room_get_state_event(room, "m.room.topic"), "bob reads the topic")
        check(topic.content.get("topic") == "changed", "the topic changed")

        ok(await alice.room_redact(room, sent[0], reason="interop"), "alice redacts her first message")
        event = ok(await bob.room_get_event(room, sent[0]), "bob fetches the redacted event")
        check(isinstance(event.event, nio.RedactedEvent), "it arrives redacted")

        ok(await bob.set_displayname("Bob B."), "bob sets a display name")
        profile = ok(await alice.get_displayname(bob.user_id), "alice reads bob's display name")
        check(profile.displayname == "Bob B.", "the display name is the new one")

        ok(await alice.room_kick(room, bob.user_id, reason="interop"), "alice kicks bob")
        ok(await alice.room_ban(room, bob.user_id), "alice bans bob")
        check(isinstance(await bob.join(room), nio.JoinError), "a banned user cannot join")
        ok(await alice.room_unban(room, bob.user_id), "alice unbans bob")
        ok(await alice.room_leave(room), "alice leaves")
        rooms = ok(await alice.joined_rooms(), "alice's joined rooms")
        check(room not in rooms.rooms, "the room she left is not among them")
    finally:
        await alice.close()
        await bob.close()
    print(f"{PASSED} passed, 0 failed")


asyncio.run(main())
