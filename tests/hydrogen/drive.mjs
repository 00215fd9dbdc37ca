// Hydrogen (the Matrix web client, from hydrogen-view-sdk 0.3.1) in Debian's Chromium, driven by
// playwright-core against a running Myelin server:
//
//   set-up through the client-server API: hydra (the Hydrogen user) and bob register; bob
//   creates a room, sends a first message and invites hydra; hydra joins.
//   in the browser: hydra types the homeserver, username and password into Hydrogen's login
//   screen and logs in, opens the room from the room list, sees bob's message, sends a message
//   through the composer and sees it in the timeline (no longer "unsent").
//   checks: the server has hydra's message (GET /messages as bob), and a reply bob sends
//   afterwards reaches Hydrogen's timeline through its /sync.
//   media: bob uploads a PNG (POST /_matrix/media/v3/upload) and sends it as an m.image; Hydrogen
//   shows it in the timeline, its <img> loading the thumbnail through the authenticated
//   /_matrix/client/v1/media endpoint (Hydrogen picks it because the server advertises v1.11;
//   its service worker adds the access token); the test waits until the image has loaded with a
//   non-zero natural size and saves a screenshot to $HYDROGEN_MEDIA_SCREENSHOT (default
//   <temp dir>/myelin-hydrogen-image-<suffix>.png). Then hydra sends a picture through
//   Hydrogen's composer (attachment menu, "Send picture", a file chooser; Hydrogen uploads it to
//   /_matrix/media/r0/upload), it shows in hydra's timeline as sent and loaded, and bob
//   downloads the event's content through /_matrix/client/v1/media/download: the same bytes.
//
//   node drive.mjs http://127.0.0.1:8008      (bundle first: node build.mjs)
//
// CHROMIUM (default: `chromium` on PATH) names the browser binary. On failure it prints the
// failing step, the browser's console errors and the server requests that failed, and saves a
// screenshot to $HYDROGEN_SCREENSHOT (default /tmp/myelin-hydrogen-failure.png).
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.argv[2] ?? process.env.MYELIN_URL ?? "").replace(/\/$/, "");
if (!BASE) {
    console.error("usage: node drive.mjs <server URL>");
    process.exit(2);
}
const STEP_MS = 30_000;
const SCREENSHOT = process.env.HYDROGEN_SCREENSHOT ?? "/tmp/myelin-hydrogen-failure.png";
const started = Date.now();

function step(what) {
    console.log(`ok: ${what}`);
}

// --- the client-server API, for set-up and the server-side check ---------------------------
async function api(method, urlPath, { token, body } = {}) {
    const response = await fetch(`${BASE}${urlPath}`, {
        method,
        headers: {
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            ...(body ? { "content-type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    let json;
    try {
        json = JSON.parse(text);
    } catch {
        json = undefined;
    }
    return { status: response.status, json, text };
}

async function expectOk(what, method, urlPath, options) {
    const response = await api(method, urlPath, options);
    if (response.status !== 200) {
        throw new Error(`${what}: ${method} ${urlPath} ${JSON.stringify(options?.body ?? null)} -> ${response.status} ${response.text}`);
    }
    return response.json;
}

async function register(localpart, password) {
    const body = { username: localpart, password, auth: { type: "m.login.dummy" } };
    let response = await api("POST", "/_matrix/client/v3/register", { body });
    if (response.status === 401 && response.json?.session) {
        body.auth.session = response.json.session;
        response = await api("POST", "/_matrix/client/v3/register", { body });
    }
    if (response.status !== 200) throw new Error(`POST /register ${localpart} -> ${response.status} ${response.text}`);
    return response.json;
}

let txn = 0;
async function sendText(token, roomId, text) {
    const sent = await expectOk(
        "send a message",
        "PUT",
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/hydrogen-drive-${Date.now()}-${txn++}`,
        { token, body: { msgtype: "m.text", body: text } },
    );
    return sent.event_id;
}

// A width x height RGB PNG with a gradient (so the screenshot shows real pixels).
function gradientPng(width, height) {
    const raw = Buffer.alloc((width * 3 + 1) * height);
    for (let y = 0; y < height; y++) {
        const row = y * (width * 3 + 1);
        raw[row] = 0; // filter None
        for (let x = 0; x < width; x++) {
            raw.set([Math.floor((x * 255) / width), Math.floor((y * 255) / height), 0x80], row + 1 + x * 3);
        }
    }
    const chunk = (type, data) => {
        const length = Buffer.alloc(4);
        length.writeUInt32BE(data.length);
        const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
        const crc = Buffer.alloc(4);
        crc.writeUInt32BE(zlib.crc32(body));
        return Buffer.concat([length, body, crc]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(width, 0);
    ihdr.writeUInt32BE(height, 4);
    ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit truecolour
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", ihdr),
        chunk("IDAT", zlib.deflateSync(raw)),
        chunk("IEND", Buffer.alloc(0)),
    ]);
}

// The pixel size a PNG's IHDR declares.
function pngSize(bytes) {
    if (bytes.length < 24 || bytes.toString("ascii", 12, 16) !== "IHDR") throw new Error("not a PNG");
    return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

async function upload(token, fileName, contentType, bytes) {
    const response = await fetch(`${BASE}/_matrix/media/v3/upload?filename=${encodeURIComponent(fileName)}`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": contentType },
        body: bytes,
    });
    const text = await response.text();
    if (response.status !== 200) throw new Error(`POST /_matrix/media/v3/upload -> ${response.status} ${text}`);
    return JSON.parse(text).content_uri;
}

// --- a static server for the page, the bundle and Hydrogen's assets -------------------------
const ASSETS = path.join(here, "node_modules/hydrogen-view-sdk/asset-build/assets");
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".woff": "font/woff", ".woff2": "font/woff2", ".json": "application/json" };

function serveStatic() {
    const server = http.createServer((request, response) => {
        const url = new URL(request.url, "http://x");
        let file;
        if (url.pathname === "/" || url.pathname === "/index.html") file = path.join(here, "index.html");
        else if (url.pathname === "/dist/page.js") file = path.join(here, "dist/page.js");
        else if (url.pathname === "/sw.js") file = path.join(here, "node_modules/hydrogen-view-sdk/lib-build/sw.js");
        else if (url.pathname.startsWith("/assets/")) file = path.join(ASSETS, path.basename(url.pathname));
        if (!file || !fs.existsSync(file)) {
            response.writeHead(404).end();
            return;
        }
        response.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
        fs.createReadStream(file).pipe(response);
    });
    return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function chromiumPath() {
    if (process.env.CHROMIUM) return process.env.CHROMIUM;
    try {
        return execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
    } catch {
        throw new Error("no chromium on PATH (apt-get install chromium, or set CHROMIUM)");
    }
}

// --- the scenario ----------------------------------------------------------------------------
async function main() {
    if (!fs.existsSync(path.join(here, "dist/page.js"))) throw new Error("dist/page.js is missing: run node build.mjs");
    const suffix = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
    const hydraName = `hydra${suffix}`;
    const hydraPassword = "hydra-password";
    const hydra = await register(hydraName, hydraPassword);
    const bob = await register(`hbob${suffix}`, "bob-password");
    const roomName = `Hydrogen room ${suffix}`;
    const { room_id: roomId } = await expectOk("bob creates the room", "POST", "/_matrix/client/v3/createRoom", {
        token: bob.access_token,
        body: { name: roomName, preset: "private_chat" },
    });
    const before = `bob says hello before Hydrogen starts ${suffix}`;
    await sendText(bob.access_token, roomId, before);
    await expectOk("bob invites hydra", "POST", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/invite`, {
        token: bob.access_token,
        body: { user_id: hydra.user_id },
    });
    await expectOk("hydra joins", "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, { token: hydra.access_token, body: {} });
    step(`set-up through the API: ${hydra.user_id} and ${bob.user_id} in ${roomId}`);

    const pageServer = await serveStatic();
    const pageUrl = `http://127.0.0.1:${pageServer.address().port}/?hs=${encodeURIComponent(BASE)}`;
    const browser = await chromium.launch({
        executablePath: chromiumPath(),
        headless: true,
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const consoleErrors = [];
    const failedRequests = [];
    let page;
    try {
        page = await browser.newPage();
        page.setDefaultTimeout(STEP_MS);
        page.on("console", (message) => {
            if (message.type() === "error") consoleErrors.push(message.text());
        });
        page.on("pageerror", (error) => consoleErrors.push(`page error: ${error.message}`));
        page.on("response", async (response) => {
            if (response.url().startsWith(BASE) && response.status() >= 400) {
                const request = response.request();
                const body = await response.text().catch(() => "");
                // Allowed to 404: the client well-known lookup and the unstable dehydrated-device
                // endpoint (MSC2697), which Hydrogen probes after login.
                const { pathname } = new URL(response.url());
                const optional = pathname === "/.well-known/matrix/client" || pathname.includes("/org.matrix.msc2697.v2/dehydrated_device");
                if (!(optional && response.status() === 404)) {
                    failedRequests.push(`${request.method()} ${response.url()} ${request.postData() ?? ""} -> ${response.status()} ${body}`);
                }
            }
        });
        page.on("requestfailed", (request) => {
            if (request.url().startsWith(BASE)) failedRequests.push(`${request.method()} ${request.url()} -> ${request.failure()?.errorText}`);
        });

        await run(page, { pageUrl, hydraName, hydraPassword, hydra, bob, roomId, roomName, before, suffix });
        if (failedRequests.length) throw new Error(`Hydrogen's requests failed along the way:\n  ${failedRequests.join("\n  ")}`);
        step("no request from Hydrogen to the server failed");
    } catch (error) {
        if (page) await page.screenshot({ path: SCREENSHOT, fullPage: true }).catch(() => {});
        const details = [
            error.stack ?? String(error),
            failedRequests.length ? `requests to the server that failed:\n  ${failedRequests.join("\n  ")}` : "no request to the server failed",
            consoleErrors.length ? `browser console errors:\n  ${consoleErrors.slice(-20).join("\n  ")}` : "no browser console errors",
            page ? `screenshot: ${SCREENSHOT}` : "",
        ];
        throw new Error(details.join("\n"));
    } finally {
        await browser.close().catch(() => {});
        pageServer.close();
    }
}

async function run(page, { pageUrl, hydraName, hydraPassword, hydra, bob, roomId, roomName, before, suffix }) {
    await page.goto(pageUrl);
    await page.waitForSelector("#homeserver");
    await page.fill("#homeserver", BASE);
    await page.press("#homeserver", "Tab"); // change -> Hydrogen queries the server's login flows
    await page.waitForSelector("#username:not([disabled])");
    step("Hydrogen's login screen offers a password login for the server");

    await page.fill("#username", hydraName);
    await page.fill("#password", hydraPassword);
    await page.click(".PasswordLoginView button[type=submit]");
    const roomTile = page.locator(".RoomList li", { hasText: roomName });
    await roomTile.waitFor();
    step("logs in through the login form; the session loads and lists the room");

    await roomTile.locator("a").click();
    await page.locator(".Timeline_message", { hasText: before }).waitFor();
    step("opens the room: bob's earlier message is in the timeline");

    const text = `hydrogen says hi ${suffix}`;
    const composer = page.locator(".MessageComposer textarea");
    await composer.fill(text);
    await composer.press("Enter");
    await page.locator(".Timeline_message.own:not(.unsent)", { hasText: text }).waitFor();
    step("sends through the composer: the message shows in the timeline as sent");

    // The server has it, from hydra, as the room's latest message.
    const until = Date.now() + STEP_MS;
    for (;;) {
        const messages = await expectOk(
            "bob reads the room",
            "GET",
            `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=10`,
            { token: bob.access_token },
        );
        const found = messages.chunk?.find((e) => e.type === "m.room.message" && e.content?.body === text);
        if (found) {
            if (found.sender !== hydra.user_id) throw new Error(`the server has the message from ${found.sender}, not ${hydra.user_id}`);
            if (found.content.msgtype !== "m.text") throw new Error(`the server has msgtype ${found.content.msgtype}`);
            break;
        }
        if (Date.now() > until) throw new Error(`GET /messages as bob never showed "${text}": ${JSON.stringify(messages).slice(0, 2000)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
    step("the server has the message, sent by hydra (GET /messages as bob)");

    const reply = `bob answers hydrogen ${suffix}`;
    await sendText(bob.access_token, roomId, reply);
    await page.locator(".Timeline_message:not(.own)", { hasText: reply }).waitFor();
    step("bob's reply (sent through the API) reaches Hydrogen's timeline through /sync");

    await showsImage(page, { bob, roomId, suffix });
    await sendsPicture(page, { hydra, bob, roomId, suffix });
}

// hydra sends a picture through Hydrogen's composer; bob downloads it from the server.
async function sendsPicture(page, { hydra, bob, roomId, suffix }) {
    const [width, height] = [200, 100];
    const png = gradientPng(width, height);
    const fileName = `hydrogen-picture-${suffix}.png`;
    const chooser = page.waitForEvent("filechooser");
    await page.click(".MessageComposer button.sendFile");
    await page.locator(".menu button, .menu li", { hasText: "Send picture" }).first().click();
    await (await chooser).setFiles({ name: fileName, mimeType: "image/png", buffer: png });
    const image = page.locator(`.Timeline_message.own:not(.unsent) .media img[alt="${fileName}"]`);
    await image.waitFor();
    await page.waitForFunction((img) => img.complete && img.naturalWidth > 0 && !img.src.startsWith("blob:"), await image.elementHandle(), { timeout: STEP_MS });
    step(`hydra sends a ${width}x${height} picture through Hydrogen's composer; it shows as sent, loaded from the server`);

    const until = Date.now() + STEP_MS;
    let event;
    for (;;) {
        const messages = await expectOk("bob reads the room", "GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=10`, { token: bob.access_token });
        event = messages.chunk?.find((e) => e.type === "m.room.message" && e.content?.msgtype === "m.image" && e.content?.body === fileName);
        if (event) break;
        if (Date.now() > until) throw new Error(`GET /messages as bob never showed hydra's picture: ${JSON.stringify(messages).slice(0, 2000)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
    if (event.sender !== hydra.user_id) throw new Error(`the picture is from ${event.sender}, not ${hydra.user_id}`);
    const match = /^mxc:\/\/([^/]+)\/([^/]+)$/.exec(event.content.url ?? "");
    if (!match) throw new Error(`the picture's event has url ${JSON.stringify(event.content.url)}`);
    const response = await fetch(`${BASE}/_matrix/client/v1/media/download/${match[1]}/${match[2]}`, { headers: { authorization: `Bearer ${bob.access_token}` } });
    const bytes = Buffer.from(await response.arrayBuffer());
    if (response.status !== 200) throw new Error(`bob: GET /_matrix/client/v1/media/download for ${event.content.url} -> ${response.status} ${bytes.toString()}`);
    if (!bytes.equals(png)) throw new Error(`bob downloads ${bytes.length} bytes for hydra's picture, not the ${png.length} chosen`);
    const type = response.headers.get("content-type");
    if (type !== "image/png") throw new Error(`bob: hydra's picture is served as ${type}`);
    step(`bob downloads hydra's picture (${event.content.url}): the same bytes, served as image/png`);
}

// bob uploads a PNG and sends it as an m.image; Hydrogen's timeline shows it, loaded.
async function showsImage(page, { bob, roomId, suffix }) {
    const [width, height] = [320, 240];
    const png = gradientPng(width, height);
    const fileName = `gradient-${suffix}.png`;
    const mxc = await upload(bob.access_token, fileName, "image/png", png);
    const mediaRequests = [];
    page.on("request", (request) => {
        if (request.url().startsWith(BASE) && request.url().includes("/media/")) mediaRequests.push(request.url());
    });
    await expectOk(
        "bob sends the image",
        "PUT",
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/hydrogen-drive-image-${suffix}`,
        { token: bob.access_token, body: { msgtype: "m.image", body: fileName, url: mxc, info: { mimetype: "image/png", w: width, h: height, size: png.length } } },
    );
    step(`bob uploads a ${width}x${height} PNG as ${mxc} and sends it as an m.image`);

    const image = page.locator(`.Timeline_message:not(.own) .media img[alt="${fileName}"]`);
    await image.waitFor();
    const handle = await image.elementHandle();
    await page.waitForFunction((img) => img.complete && img.naturalWidth > 0, handle, { timeout: STEP_MS }).catch(async (error) => {
        const state = await handle.evaluate((img) => ({ src: img.src, complete: img.complete, naturalWidth: img.naturalWidth }));
        throw new Error(`the image never loaded: ${JSON.stringify(state)}; media requests: ${mediaRequests.join(", ") || "none"} (${error.message})`);
    });
    const loaded = await handle.evaluate((img) => ({ src: img.src, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight }));
    if (!(loaded.complete && loaded.naturalWidth > 0 && loaded.naturalHeight > 0)) throw new Error(`the image is not loaded: ${JSON.stringify(loaded)}`);
    const { pathname } = new URL(loaded.src);
    if (!pathname.startsWith("/_matrix/client/v1/media/")) throw new Error(`Hydrogen loads the image from ${loaded.src}, not the authenticated media endpoints`);
    // The thumbnail keeps the picture's 4:3 and is no larger than the original.
    if (loaded.naturalWidth > width || Math.abs(loaded.naturalWidth * height - loaded.naturalHeight * width) > width) {
        throw new Error(`the timeline's image is ${loaded.naturalWidth}x${loaded.naturalHeight}, not a scaled ${width}x${height}`);
    }
    step(`Hydrogen's timeline shows the image, loaded at ${loaded.naturalWidth}x${loaded.naturalHeight} from ${pathname}`);

    const shot = process.env.HYDROGEN_MEDIA_SCREENSHOT ?? path.join(os.tmpdir(), `myelin-hydrogen-image-${suffix}.png`);
    await image.scrollIntoViewIfNeeded();
    await page.screenshot({ path: shot });
    const element = await image.screenshot();
    const box = pngSize(element);
    if (box.width === 0 || box.height === 0) throw new Error(`the image's own screenshot is ${box.width}x${box.height}`);
    step(`screenshot of the timeline with the image: ${shot} (the image itself renders ${box.width}x${box.height})`);
}

try {
    await main();
    console.log(`Hydrogen flow passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (error) {
    console.error(`FAIL: ${error.message}`);
    process.exit(1);
}
