// matrix-js-sdk (the library under Element Web) against a running Myelin server: two users
// register (m.login.dummy) and log in with their passwords, start their clients (long-polling
// /sync), alice creates a room and invites bob, bob sees the invite and joins, alice sees the
// join; each sends a message, confirms delivery by the local echo's status becoming null (the
// remote echo came back through /sync) and sees the other's message in its live timeline.
//
//   node flow.mjs http://127.0.0.1:8008
//
// Prints one line per step; exits non-zero with the failing step otherwise.

// matrix-js-sdk 37 calls Promise.withResolvers, which Node 20 lacks.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve, reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

const sdk = await import("matrix-js-sdk");
// The SDK logs every sync at info level and warns about each push rule it adds; keep errors.
(await import("matrix-js-sdk/lib/logger.js")).logger.setLevel("error");

const BASE = process.argv[2] ?? process.env.MYELIN_URL;
if (!BASE) {
    console.error("usage: node flow.mjs <server URL>");
    process.exit(2);
}
const DEADLINE_MS = 20_000;
const started = Date.now();
const clients = [];

function step(what) {
    console.log(`ok: ${what}`);
}

function fail(what) {
    throw new Error(what);
}

function describe(error) {
    if (error?.httpStatus) {
        return `${error.httpStatus} ${error.errcode ?? ""} ${JSON.stringify(error.data ?? {})} (${error.url ?? ""})`;
    }
    return String(error?.stack ?? error);
}

async function attempt(what, promise) {
    try {
        return await promise;
    } catch (error) {
        fail(`${what}: ${describe(error)}`);
    }
}

// Polls `check` until it returns something truthy; fails after DEADLINE_MS naming `what`.
async function waitFor(what, check) {
    const until = Date.now() + DEADLINE_MS;
    for (;;) {
        const value = check();
        if (value) return value;
        if (Date.now() > until) fail(`waited ${DEADLINE_MS} ms and never saw: ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
}

async function register(localpart, password) {
    const client = sdk.createClient({ baseUrl: BASE });
    const body = (session) => ({
        username: localpart,
        password,
        inhibit_login: true,
        auth: session ? { type: "m.login.dummy", session } : { type: "m.login.dummy" },
    });
    try {
        await client.registerRequest(body());
    } catch (error) {
        const session = error?.httpStatus === 401 ? error.data?.session : undefined;
        if (!session) fail(`POST /register for ${localpart}: ${describe(error)}`);
        await attempt(`POST /register for ${localpart} with its UIA session`, client.registerRequest(body(session)));
    }
}

async function logIn(name, localpart, password) {
    const bare = sdk.createClient({ baseUrl: BASE });
    const login = await attempt(
        `${name}: POST /login`,
        bare.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: localpart },
            password,
            initial_device_display_name: `matrix-js-sdk ${name}`,
        }),
    );
    if (!login.user_id?.startsWith(`@${localpart}:`)) fail(`${name}: /login answered for ${login.user_id}`);
    const client = sdk.createClient({
        baseUrl: BASE,
        userId: login.user_id,
        accessToken: login.access_token,
        deviceId: login.device_id,
    });
    clients.push(client);
    const who = await attempt(`${name}: GET /account/whoami`, client.whoami());
    if (who.user_id !== login.user_id) fail(`${name}: whoami says ${who.user_id}, /login said ${login.user_id}`);

    const syncErrors = [];
    client.on(sdk.ClientEvent.Sync, (state, _previous, data) => {
        if (state === "ERROR") syncErrors.push(describe(data?.error));
    });
    const prepared = new Promise((resolve) => {
        client.once(sdk.ClientEvent.Sync, (state) => resolve(state));
    });
    await client.startClient({ initialSyncLimit: 20 });
    const state = await Promise.race([
        prepared,
        new Promise((resolve) => setTimeout(() => resolve("timeout"), DEADLINE_MS)),
    ]);
    if (state !== "PREPARED") fail(`${name}: the first /sync ended in ${state}; errors: ${syncErrors.join("; ")}`);
    return { name, client, userId: login.user_id, syncErrors };
}

function membership(user, roomId, who) {
    return user.client.getRoom(roomId)?.getMember(who)?.membership;
}

function liveMessage(user, roomId, eventId) {
    return user.client
        .getRoom(roomId)
        ?.getLiveTimeline()
        .getEvents()
        .find((event) => event.getId() === eventId);
}

// Sends a text and waits for its remote echo: the local echo's status becomes null once the
// event came back through /sync (the Timeline event alone does not prove that).
async function sendAndConfirm(user, roomId, body) {
    const room = user.client.getRoom(roomId) ?? fail(`${user.name}: no room ${roomId}`);
    const response = await attempt(
        `${user.name}: PUT /rooms/${roomId}/send/m.room.message`,
        user.client.sendTextMessage(roomId, body),
    );
    const eventId = response.event_id ?? fail(`${user.name}: /send returned no event_id`);
    const echo = await waitFor(`${user.name}'s own message ${eventId} in the room`, () => room.findEventById(eventId));
    await waitFor(`the remote echo of ${eventId} (status is ${echo.status})`, () => echo.status === null);
    if (echo.getContent().body !== body) fail(`${user.name}: the remote echo carries ${JSON.stringify(echo.getContent())}`);
    return eventId;
}

async function main() {
    const suffix = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
    const aliceName = `jsalice${suffix}`;
    const bobName = `jsbob${suffix}`;
    await register(aliceName, "alice-password");
    await register(bobName, "bob-password");
    step("alice and bob register (m.login.dummy)");

    const alice = await logIn("alice", aliceName, "alice-password");
    const bob = await logIn("bob", bobName, "bob-password");
    step("both log in with their passwords; whoami agrees; both clients finish their first /sync");

    const created = await attempt(
        "alice: POST /createRoom",
        alice.client.createRoom({ name: "matrix-js-sdk room", topic: "driven by matrix-js-sdk", preset: "private_chat" }),
    );
    const roomId = created.room_id ?? fail("alice: /createRoom returned no room_id");
    step(`alice creates ${roomId}`);

    await waitFor("alice's room through sync, with her joined", () => membership(alice, roomId, alice.userId) === "join");
    step("alice's sync shows the room and her join");

    await attempt("alice: POST /rooms/{room}/invite", alice.client.invite(roomId, bob.userId));
    step("alice invites bob");

    await waitFor("the invite in bob's sync", () => bob.client.getRoom(roomId)?.getMyMembership() === "invite");
    step("bob's sync shows the invite");

    await attempt("bob: POST /join", bob.client.joinRoom(roomId));
    await waitFor("bob joined in his own sync", () => bob.client.getRoom(roomId)?.getMyMembership() === "join");
    step("bob joins; his sync shows the room as joined");

    await waitFor("bob's join in alice's sync", () => membership(alice, roomId, bob.userId) === "join");
    step("alice's sync shows bob's join");

    const bobRoom = bob.client.getRoom(roomId);
    if (bobRoom.name !== "matrix-js-sdk room") fail(`bob: the room's name through sync is ${JSON.stringify(bobRoom.name)}`);
    step("bob's sync gave the room's name");

    const hello = "hello bob, from alice (js-sdk)";
    const aliceEvent = await sendAndConfirm(alice, roomId, hello);
    step(`alice sends ${aliceEvent}; its remote echo came back (status null)`);

    const atBob = await waitFor(`alice's message ${aliceEvent} in bob's live timeline`, () => liveMessage(bob, roomId, aliceEvent));
    if (atBob.getSender() !== alice.userId || atBob.getContent().body !== hello) {
        fail(`bob sees ${atBob.getSender()}: ${JSON.stringify(atBob.getContent())}`);
    }
    step("bob's timeline shows alice's message");

    const reply = "hello alice, from bob (js-sdk)";
    const bobEvent = await sendAndConfirm(bob, roomId, reply);
    step(`bob sends ${bobEvent}; its remote echo came back (status null)`);

    const atAlice = await waitFor(`bob's message ${bobEvent} in alice's live timeline`, () => liveMessage(alice, roomId, bobEvent));
    if (atAlice.getSender() !== bob.userId || atAlice.getContent().body !== reply) {
        fail(`alice sees ${atAlice.getSender()}: ${JSON.stringify(atAlice.getContent())}`);
    }
    step("alice's timeline shows bob's message");

    for (const user of [alice, bob]) {
        if (user.syncErrors.length) fail(`${user.name}: /sync errors during the flow: ${user.syncErrors.join("; ")}`);
    }
    step("no /sync errors on either client");
}

let status = 0;
try {
    await main();
    console.log(`matrix-js-sdk flow passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (error) {
    console.error(`FAIL: ${error.message}`);
    status = 1;
} finally {
    for (const client of clients) client.stopClient();
}
process.exit(status);
