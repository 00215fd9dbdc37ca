"""Myelin and Synapse federating, driven through both client APIs (stdlib HTTP only).

For room versions 1 to 12 (see VERSIONS), four scenarios, each on one room:

- a room on Myelin that a Synapse user is invited to and joins, and one on Synapse that a Myelin
  user is invited to and joins: messages and a topic change both ways, the two servers' /messages
  compared, a kick, a ban (the banned user's join refused), an unban, a rejoin, a leave;
- backfill both ways: a user of the other server joins a room late, after 20 messages, and its
  server's /messages shows the earlier ones, in the same order as the room's server.

Every step prints one line (ok / FAIL / skip) with its time. A failed step ends its scenario
(the steps after it are reported as skipped), except an invite, which the join after it does
not need (the rooms are public). Waiting is polling with a deadline (MYELIN_SYNAPSE_WAIT
seconds, default 15), never a fixed sleep. Exits non-zero when any step failed.

    flow.py --myelin URL --myelin-name NAME --synapse URL --synapse-name NAME
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

WAIT = float(os.environ.get("MYELIN_SYNAPSE_WAIT", "15"))
VERSIONS = tuple(str(v) for v in range(1, 13))
BACKFILL_MESSAGES = 20


class Failed(Exception):
    """A check that did not hold; the message says what was expected and what was seen."""


class HttpError(Failed):
    def __init__(self, method, url, status, body):
        self.status = status
        self.body = body
        super().__init__(f"{method} {url} answered {status}: {body[:400]}")

    def errcode(self):
        try:
            return json.loads(self.body).get("errcode")
        except ValueError:
            return None


class Server:
    """One homeserver's client API."""

    def __init__(self, label, base, name):
        self.label = label
        self.base = base.rstrip("/")
        self.name = name

    def request(self, method, path, body=None, query=None, token=None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=WAIT + 10) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise HttpError(method, f"{self.label} {path}", err.code, err.read().decode(errors="replace")) from None

    def register(self, localpart):
        body = {"username": localpart, "password": f"{localpart}-password", "initial_device_display_name": "interop"}
        try:
            answer = self.request("POST", "/_matrix/client/v3/register", body)
        except HttpError as err:
            if err.status != 401:
                raise
            session = json.loads(err.body).get("session")
            body["auth"] = {"type": "m.login.dummy", "session": session}
            answer = self.request("POST", "/_matrix/client/v3/register", body)
        return User(self, answer["user_id"], answer["access_token"])


def q(value):
    return urllib.parse.quote(value, safe="")


class User:
    """A logged-in user of one server, with the few client calls the flow needs."""

    def __init__(self, server, user_id, token):
        self.server = server
        self.user_id = user_id
        self.token = token
        self.txn = 0

    def __str__(self):
        return f"{self.user_id} ({self.server.label})"

    def call(self, method, path, body=None, query=None):
        return self.server.request(method, "/_matrix/client/v3" + path, body, query, self.token)

    def create_room(self, version):
        body = {
            "preset": "public_chat",
            "room_version": version,
            # Anyone joined may change the topic, so that the other server's user can too.
            "power_level_content_override": {
                "events": {
                    "m.room.topic": 0,
                    "m.room.name": 50,
                    "m.room.avatar": 50,
                    "m.room.canonical_alias": 50,
                    "m.room.power_levels": 100,
                    "m.room.history_visibility": 100,
                    "m.room.server_acl": 100,
                    "m.room.tombstone": 100,
                    "m.room.encryption": 100,
                }
            },
        }
        return self.call("POST", "/createRoom", body)["room_id"]

    def send(self, room, text):
        self.txn += 1
        path = f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}{self.txn}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def put_state(self, room, event_type, state_key, content):
        return self.call("PUT", f"/rooms/{q(room)}/state/{event_type}/{q(state_key)}", content)["event_id"]

    def state(self, room, event_type, state_key=""):
        """The content of one state event as this user's server has it, or None (404)."""
        try:
            return self.call("GET", f"/rooms/{q(room)}/state/{event_type}/{q(state_key)}")
        except HttpError as err:
            if err.status == 404:
                return None
            raise

    def event(self, room, event_id):
        """One event as this user's server shows it, or None while it does not have it."""
        try:
            return self.call("GET", f"/rooms/{q(room)}/event/{q(event_id)}")
        except HttpError as err:
            if err.status == 404:
                return None
            raise

    def join(self, room, via):
        return self.call("POST", f"/join/{q(room)}", {}, {"server_name": via, "via": via})

    def left_member_event(self, room, target):
        """The newest m.room.member event of `target` in the room's entry under /sync's
        `leave` (rooms this user left, was kicked or banned from), or None."""
        sync_filter = json.dumps({"room": {"include_leave": True, "timeline": {"limit": 20}}, "presence": {"types": []}})
        rooms = self.call("GET", "/sync", query={"filter": sync_filter, "timeout": "0"}).get("rooms", {})
        left = rooms.get("leave", {}).get(room)
        if not left:
            return None
        events = left.get("state", {}).get("events", []) + left.get("timeline", {}).get("events", [])
        members = [e for e in events if e.get("type") == "m.room.member" and e.get("state_key") == target]
        return members[-1] if members else None

    def invited_rooms(self):
        sync_filter = json.dumps({"room": {"timeline": {"limit": 1}}, "presence": {"types": []}})
        rooms = self.call("GET", "/sync", query={"filter": sync_filter, "timeout": "0"}).get("rooms", {})
        return set(rooms.get("invite", {}))

    def timeline(self, room):
        """Every event /messages shows this user, oldest first (paging back to the start)."""
        events = []
        query = {"dir": "b", "limit": "100"}
        for _ in range(20):
            page = self.call("GET", f"/rooms/{q(room)}/messages", query=query)
            events.extend(page.get("chunk", []))
            if not page.get("chunk") or not page.get("end"):
                break
            query["from"] = page["end"]
        return list(reversed(events))

    def membership_event(self, room, user_id, membership):
        """The id of the newest m.room.member event of user_id with this membership in this
        user's view of the room (client calls that change memberships do not return it)."""
        for event in reversed(self.timeline(room)):
            if (
                event.get("type") == "m.room.member"
                and event.get("state_key") == user_id
                and event.get("content", {}).get("membership") == membership
            ):
                return event["event_id"]
        raise Failed(f"{self}'s /messages shows no {membership} of {user_id}")


def wait_for(what, probe, timeout=None):
    """Polls probe() until it returns something truthy; fails naming what and the last value."""
    deadline = time.monotonic() + (timeout or WAIT)
    delay = 0.02
    last = None
    while True:
        try:
            last = probe()
        except HttpError as err:
            last = err
        if last and not isinstance(last, HttpError):
            return last
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout or WAIT:.0f} s (last seen: {last})")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def membership_is(user, room, target, membership, **content):
    """The membership of `target` as `user`'s server shows it: the room's state; for a user who
    may no longer read it (Synapse refuses banned users the state), the room under /sync's
    `leave`."""

    def probe():
        try:
            state = user.state(room, "m.room.member", target)
        except HttpError as err:
            if err.status != 403 or target != user.user_id:
                raise
            event = user.left_member_event(room, target)
            state = event.get("content") if event else None
        if state and state.get("membership") == membership and all(state.get(k) == v for k, v in content.items()):
            return state
        return None

    return probe


def arrives(user, room, event_id, body=None):
    def probe():
        event = user.event(room, event_id)
        if event is None:
            return None
        if body is not None and event.get("content", {}).get("body") != body:
            raise Failed(f"{event_id} arrived with body {event.get('content', {}).get('body')!r}, not {body!r}")
        return event

    return probe


def describe(events, ids):
    by_id = {e["event_id"]: e for e in events}

    def one(event_id):
        e = by_id.get(event_id, {})
        what = e.get("type", "?")
        if what == "m.room.member":
            what += f"({e.get('content', {}).get('membership')} {e.get('state_key')})"
        elif what == "m.room.message":
            what += f"({e.get('content', {}).get('body')!r})"
        return f"{event_id[:12]}… {what}"

    return [one(i) for i in ids]


def compare_timelines(resident, guest, room, start, shared, optional):
    """Both servers' /messages from `start` on: the same events in the same order. `shared` are
    the ids the flow sent while both servers were in the room (each must be in both views);
    `optional` ones were sent while the guest's server was out (it may have fetched them since:
    then they must sit in the same place)."""
    r_events, g_events = resident.timeline(room), guest.timeline(room)
    r_ids, g_ids = [e["event_id"] for e in r_events], [e["event_id"] for e in g_events]
    for label, ids in ((resident, r_ids), (guest, g_ids)):
        if start not in ids:
            raise Failed(f"{label}'s /messages does not show the guest's first join {start}")
        missing = [i for i in shared if i not in ids]
        if missing:
            raise Failed(f"{label}'s /messages lacks {describe(r_events + g_events, missing)}")
    r_window, g_window = r_ids[r_ids.index(start):], g_ids[g_ids.index(start):]
    g_set = set(g_window)
    expected = [i for i in r_window if i not in optional or i in g_set]
    if g_window != expected:
        both = r_events + g_events
        raise Failed(
            f"the two views differ from the join on:\n      {resident.server.label}: "
            f"{describe(both, r_window)}\n      {guest.server.label}: {describe(both, g_window)}"
        )
    return f"{len(g_window)} events alike"


class Scenario:
    """A named sequence of steps; the first failure ends it."""

    def __init__(self, report, name):
        self.report = report
        self.name = name
        self.stopped = False

    def step(self, what, action, fatal=True):
        if self.stopped:
            self.report.record("skip", self.name, what, 0.0, "")
            return None
        started = time.monotonic()
        try:
            result = action()
        except (Failed, OSError, KeyError, ValueError) as err:
            self.report.record("FAIL", self.name, what, time.monotonic() - started, f"{type(err).__name__}: {err}")
            if fatal:
                self.stopped = True
            return None
        note = result if isinstance(result, str) else ""
        self.report.record("ok", self.name, what, time.monotonic() - started, note)
        return result


class Report:
    def __init__(self):
        self.lines = []

    def record(self, outcome, scenario, what, seconds, detail):
        self.lines.append((outcome, scenario, what, detail))
        timing = f" ({seconds:.2f} s)" if outcome != "skip" else ""
        extra = f": {detail}" if detail else ""
        print(f"{outcome:4} [{scenario}] {what}{timing}{extra}", flush=True)

    def count(self, outcome):
        return sum(1 for line in self.lines if line[0] == outcome)


def membership_flow(report, version, resident, guest):
    """A room on the resident's server; the guest, on the other server, through every
    membership change and some traffic both ways."""
    s = Scenario(report, f"v{version} room on {resident.server.label}")
    via = resident.server.name
    ctx = {"shared": [], "optional": set()}

    def create():
        ctx["room"] = resident.create_room(version)
        got = resident.state(ctx["room"], "m.room.create").get("room_version")
        if got != version:
            raise Failed(f"m.room.create says room_version {got!r}")
        return ctx["room"]

    s.step(f"{resident} creates a v{version} room", create)
    room = ctx.get("room")

    def invite():
        resident.call("POST", f"/rooms/{q(room)}/invite", {"user_id": guest.user_id})
        wait_for(f"{guest}'s /sync shows the invite", lambda: room in guest.invited_rooms())

    s.step(f"{resident} invites {guest}; the invite reaches {guest.server.label}", invite, fatal=False)

    def join():
        guest.join(room, via)
        wait_for(f"{resident.server.label} shows {guest} joined", membership_is(resident, room, guest.user_id, "join"))
        got = guest.state(room, "m.room.create")
        if not got or got.get("room_version") != version:
            raise Failed(f"{guest.server.label}'s m.room.create of the room: {got}")
        ctx["start"] = resident.membership_event(room, guest.user_id, "join")
        ctx["shared"].append(ctx["start"])

    s.step(f"{guest} joins through {via}", join)

    def talk(sender, receiver, text):
        def action():
            event_id = sender.send(room, text)
            wait_for(f"{text!r} on {receiver.server.label}", arrives(receiver, room, event_id, text))
            ctx["shared"].append(event_id)

        return action

    for i in range(2):
        s.step(f"message {i} from {resident.server.label} arrives", talk(resident, guest, f"from the resident {i}"))
        s.step(f"message {i} from {guest.server.label} arrives", talk(guest, resident, f"from the guest {i}"))

    def topic(sender, receiver, text):
        def action():
            event_id = sender.put_state(room, "m.room.topic", "", {"topic": text})
            wait_for(
                f"{receiver.server.label}'s topic {text!r}",
                lambda: (receiver.state(room, "m.room.topic") or {}).get("topic") == text,
            )
            ctx["shared"].append(event_id)

        return action

    s.step(f"topic set on {resident.server.label} reaches {guest.server.label}", topic(resident, guest, "resident's topic"))
    s.step(f"topic set on {guest.server.label} reaches {resident.server.label}", topic(guest, resident, "guest's topic"))
    s.step(
        "both servers' /messages agree",
        lambda: compare_timelines(resident, guest, room, ctx["start"], ctx["shared"], ctx["optional"]),
    )

    def kick():
        resident.call("POST", f"/rooms/{q(room)}/kick", {"user_id": guest.user_id, "reason": "interop kick"})
        wait_for(
            f"{guest.server.label} shows {guest} kicked",
            membership_is(guest, room, guest.user_id, "leave", reason="interop kick"),
        )
        ctx["shared"].append(resident.membership_event(room, guest.user_id, "leave"))

    s.step(f"{resident} kicks {guest}; {guest.server.label} sees it", kick)

    def rejoin():
        guest.join(room, via)
        wait_for(f"{resident.server.label} shows {guest} joined again", membership_is(resident, room, guest.user_id, "join"))
        ctx["shared"].append(resident.membership_event(room, guest.user_id, "join"))

    s.step(f"{guest} joins again after the kick", rejoin)

    def ban():
        resident.call("POST", f"/rooms/{q(room)}/ban", {"user_id": guest.user_id, "reason": "interop ban"})
        wait_for(
            f"{guest.server.label} shows {guest} banned",
            membership_is(guest, room, guest.user_id, "ban", reason="interop ban"),
        )
        ctx["shared"].append(resident.membership_event(room, guest.user_id, "ban"))

    s.step(f"{resident} bans {guest}; {guest.server.label} sees it", ban)

    def banned_join():
        try:
            guest.join(room, via)
        except HttpError as err:
            if err.status == 403 and err.errcode() == "M_FORBIDDEN":
                return f"403 M_FORBIDDEN"
            raise Failed(f"expected 403 M_FORBIDDEN, got {err}") from None
        raise Failed("the banned user's join succeeded")

    s.step(f"{guest}'s join while banned is refused", banned_join)

    def unban():
        resident.call("POST", f"/rooms/{q(room)}/unban", {"user_id": guest.user_id})
        wait_for(f"{resident.server.label} shows {guest} unbanned", membership_is(resident, room, guest.user_id, "leave"))
        ctx["optional"].add(resident.membership_event(room, guest.user_id, "leave"))

    s.step(f"{resident} unbans {guest}", unban)
    s.step(f"{guest} joins again after the unban", rejoin)
    s.step(f"message from {guest.server.label} after the rejoin arrives", talk(guest, resident, "back again"))
    s.step(f"message from {resident.server.label} after the rejoin arrives", talk(resident, guest, "welcome back"))
    s.step(
        "both servers' /messages agree after kick, ban and unban",
        lambda: compare_timelines(resident, guest, room, ctx["start"], ctx["shared"], ctx["optional"]),
    )

    def leave():
        guest.call("POST", f"/rooms/{q(room)}/leave", {})
        wait_for(f"{resident.server.label} shows {guest} left", membership_is(resident, room, guest.user_id, "leave"))

    s.step(f"{guest} leaves; {resident.server.label} sees it", leave)


def backfill_flow(report, version, resident, guest):
    """A user of the other server joins after 20 messages; its server's /messages pages back
    through them (backfill) and shows what the room's server shows, in the same order."""
    s = Scenario(report, f"v{version} backfill from {resident.server.label} to {guest.server.label}")
    ctx = {}

    def setup():
        ctx["room"] = resident.create_room(version)
        ctx["sent"] = [resident.send(ctx["room"], f"early {i}") for i in range(BACKFILL_MESSAGES)]

    s.step(f"{resident} creates a v{version} room and sends {BACKFILL_MESSAGES} messages", setup)

    def join():
        guest.join(ctx["room"], resident.server.name)
        wait_for(f"{resident.server.label} shows {guest} joined", membership_is(resident, ctx["room"], guest.user_id, "join"))

    s.step(f"{guest} joins late", join)

    def earlier():
        timeline = guest.timeline(ctx["room"])
        seen = [e["event_id"] for e in timeline if e["event_id"] in set(ctx["sent"])]
        if seen != ctx["sent"]:
            missing = [i for i in ctx["sent"] if i not in seen]
            raise Failed(
                f"{len(seen)} of the {BACKFILL_MESSAGES} earlier messages in {guest.server.label}'s /messages "
                f"({len(timeline)} events in all); missing: {missing[:3]}…; in order: {seen == sorted(seen, key=ctx['sent'].index)}"
            )
        return f"{len(timeline)} events"

    s.step(f"{guest.server.label}'s /messages shows the {BACKFILL_MESSAGES} earlier messages in order", earlier)

    def alike():
        r_events, g_events = resident.timeline(ctx["room"]), guest.timeline(ctx["room"])
        r_ids, g_ids = [e["event_id"] for e in r_events], [e["event_id"] for e in g_events]
        if r_ids != g_ids:
            both = r_events + g_events
            raise Failed(
                f"\n      {resident.server.label}: {describe(both, r_ids)}\n      {guest.server.label}: {describe(both, g_ids)}"
            )
        return f"{len(r_ids)} events alike"

    s.step("both servers' /messages show the same events in the same order", alike)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--myelin", required=True)
    parser.add_argument("--myelin-name", required=True)
    parser.add_argument("--synapse", required=True)
    parser.add_argument("--synapse-name", required=True)
    parser.add_argument("--versions", default=",".join(VERSIONS))
    args = parser.parse_args()

    started = time.monotonic()
    myelin = Server("Myelin", args.myelin, args.myelin_name)
    synapse = Server("Synapse", args.synapse, args.synapse_name)
    report = Report()
    users = {}
    setup = Scenario(report, "setup")
    setup.step("register alice on Myelin", lambda: users.setdefault("alice", myelin.register("alice")) and None)
    setup.step("register bob on Synapse", lambda: users.setdefault("bob", synapse.register("bob")) and None)
    if not setup.stopped:
        alice, bob = users["alice"], users["bob"]
        for version in args.versions.split(","):
            membership_flow(report, version, alice, bob)
            membership_flow(report, version, bob, alice)
            backfill_flow(report, version, bob, alice)
            backfill_flow(report, version, alice, bob)

    failed = report.count("FAIL")
    print(
        f"{report.count('ok')} passed, {failed} failed, {report.count('skip')} skipped "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    if failed:
        print("failed steps:")
        for outcome, scenario, what, detail in report.lines:
            if outcome == "FAIL":
                print(f"  [{scenario}] {what}: {detail.splitlines()[0] if detail else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
