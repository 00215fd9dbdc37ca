//! Two users drive a Myelin server through matrix-sdk 0.18, a real Rust client: both register
//! (`m.login.dummy`) and log in with their passwords, sync, alice creates a room and invites bob,
//! bob sees the invite through sync and joins, alice sees the join through sync, then each sends
//! a message and sees the other's arrive through sync. Then media: alice uploads an avatar, her
//! profile names it and bob downloads the same bytes; alice sends a PNG into the room, bob finds
//! it in his sync and downloads it and thumbnails of it (authenticated `/_matrix/client/v1/media`
//! endpoints, which the SDK picks because the server advertises v1.11).
//!
//!   MYELIN_URL=http://127.0.0.1:8008 myelin-matrix-sdk-flow
//!
//! Prints one line per step; exits non-zero with the failing step and its error otherwise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::MatrixVersion;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::member::{MembershipState, OriginalSyncRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{
    ImageMessageEventContent, MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use matrix_sdk::{Client, Room, RoomState};

mod common;
mod media;
mod png;
use common::register;

/// How long any one "wait until sync shows X" step may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the event handlers saw arrive through sync, per client.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) messages: Vec<(OwnedRoomId, OwnedEventId, OwnedUserId, String)>,
    pub(crate) images: Vec<(OwnedRoomId, OwnedEventId, ImageMessageEventContent)>,
    members: Vec<(OwnedRoomId, String, MembershipState)>,
}

pub(crate) struct User {
    name: &'static str,
    pub(crate) client: Client,
    pub(crate) seen: Arc<Mutex<Seen>>,
    since: Option<String>,
}

impl User {
    /// One `/sync` with the token of the previous one.
    async fn sync(&mut self) -> Result<()> {
        let mut settings = SyncSettings::default().timeout(Duration::from_millis(500));
        if let Some(token) = &self.since {
            settings = settings.token(token.clone());
        }
        let response = self
            .client
            .sync_once(settings)
            .await
            .with_context(|| format!("{}: /sync (since {:?}) failed", self.name, self.since))?;
        self.since = Some(response.next_batch);
        Ok(())
    }

    /// Syncs until `done` holds, failing after DEADLINE with `what` in the message.
    pub(crate) async fn sync_until(&mut self, what: &str, mut done: impl FnMut(&User) -> bool) -> Result<()> {
        let started = Instant::now();
        loop {
            self.sync().await?;
            if done(self) {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                bail!("{}: waited {:?} and sync never showed: {what}", self.name, DEADLINE);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) fn step(what: &str) {
    println!("ok: {what}");
}

fn client_builder(url: &str) -> matrix_sdk::ClientBuilder {
    // No sqlite feature: the client keeps its state in memory.
    Client::builder().homeserver_url(url)
}

async fn log_in(url: &str, name: &'static str, localpart: &str, password: &str) -> Result<User> {
    let client = client_builder(url).build().await.context("building the client")?;
    let response = client
        .matrix_auth()
        .login_username(localpart, password)
        .initial_device_display_name(&format!("matrix-sdk {name}"))
        .send()
        .await
        .with_context(|| format!("{name}: POST /login"))?;
    ensure!(
        response.user_id.localpart() == localpart,
        "{name}: /login answered for {} rather than {localpart}",
        response.user_id
    );
    ensure!(client.user_id() == Some(&*response.user_id), "{name}: the client is not logged in after /login");
    let whoami = client.whoami().await.with_context(|| format!("{name}: GET /account/whoami"))?;
    ensure!(whoami.user_id == response.user_id, "{name}: whoami says {} after logging in as {}", whoami.user_id, response.user_id);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = seen.clone();
    client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
        let sink = sink.clone();
        async move {
            let body = match &event.content.msgtype {
                MessageType::Text(text) => text.body.clone(),
                other => other.body().to_owned(),
            };
            let mut seen = sink.lock().unwrap();
            if let MessageType::Image(image) = &event.content.msgtype {
                seen.images.push((room.room_id().to_owned(), event.event_id.clone(), image.clone()));
            }
            seen.messages.push((room.room_id().to_owned(), event.event_id, event.sender, body));
        }
    });
    let sink = seen.clone();
    client.add_event_handler(move |event: OriginalSyncRoomMemberEvent, room: Room| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().members.push((
                room.room_id().to_owned(),
                event.state_key.to_string(),
                event.content.membership.clone(),
            ));
        }
    });
    Ok(User { name, client, seen, since: None })
}

fn room_state(user: &User, room_id: &RoomId) -> Option<RoomState> {
    user.client.get_room(room_id).map(|room| room.state())
}

fn saw_message(user: &User, room_id: &RoomId, event_id: &OwnedEventId, sender: &OwnedUserId, body: &str) -> bool {
    user.seen
        .lock()
        .unwrap()
        .messages
        .iter()
        .any(|(r, e, s, b)| r == room_id && e == event_id && s == sender && b == body)
}

fn saw_membership(user: &User, room_id: &RoomId, who: &OwnedUserId, membership: MembershipState) -> bool {
    user.seen
        .lock()
        .unwrap()
        .members
        .iter()
        .any(|(r, s, m)| r == room_id && s == who.as_str() && *m == membership)
}

async fn run(url: &str) -> Result<()> {
    let suffix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() % 1_000_000_000_000;
    let (alice_name, bob_name) = (format!("sdkalice{suffix}"), format!("sdkbob{suffix}"));

    // The SDK picks each endpoint's path from the spec versions GET /_matrix/client/versions
    // advertises, and refuses an endpoint no advertised version has.
    let probe = client_builder(url).build().await.context("building the probing client")?;
    let versions = probe.fetch_server_versions(None).await.context("GET /_matrix/client/versions")?;
    let known = probe.server_versions().await.context("GET /_matrix/client/versions")?;
    ensure!(
        known.iter().any(|v| *v >= MatrixVersion::V1_1),
        "GET /_matrix/client/versions advertises {:?} (matrix-sdk reads that as {known:?}): no spec \
         version from v1.1 on, so the SDK refuses the /v3 endpoints (\"endpoint was not supported \
         by server-reported versions\")",
        versions.versions
    );
    step(&format!("the server advertises spec versions {:?}", versions.versions));

    register(url, &alice_name, "alice-password").await?;
    register(url, &bob_name, "bob-password").await?;
    step("alice and bob register (m.login.dummy)");

    let mut alice = log_in(url, "alice", &alice_name, "alice-password").await?;
    let mut bob = log_in(url, "bob", &bob_name, "bob-password").await?;
    step("both log in with their passwords; whoami agrees");
    let alice_id = alice.client.user_id().context("alice has no user id")?.to_owned();
    let bob_id = bob.client.user_id().context("bob has no user id")?.to_owned();

    alice.sync().await?;
    bob.sync().await?;
    step("both run an initial /sync");

    let mut create = CreateRoomRequest::new();
    create.name = Some("matrix-sdk room".to_owned());
    create.topic = Some("driven by matrix-sdk 0.18".to_owned());
    create.preset = Some(RoomPreset::PrivateChat);
    let room = alice.client.create_room(create).await.context("alice: POST /createRoom")?;
    let room_id = room.room_id().to_owned();
    step(&format!("alice creates {room_id}"));

    room.invite_user_by_id(&bob_id).await.context("alice: POST /rooms/{room}/invite for bob")?;
    step("alice invites bob");

    alice
        .sync_until("alice's own room as joined, with her join", |u| {
            room_state(u, &room_id) == Some(RoomState::Joined)
                && saw_membership(u, &room_id, &alice_id, MembershipState::Join)
        })
        .await?;
    step("alice's sync shows the room, joined");

    bob.sync_until("the invite to the room", |u| room_state(u, &room_id) == Some(RoomState::Invited)).await?;
    step("bob's sync shows the invite");

    let invited = bob.client.get_room(&room_id).context("bob: the invited room vanished")?;
    let details = invited.invite_details().await.context("bob: reading the invite details")?;
    // The sender of bob's invite membership event, from the invite's stripped state.
    ensure!(
        details.inviter_id == alice_id,
        "bob: the invite was sent by {}, not {alice_id}",
        details.inviter_id
    );
    step("the invite names alice as the inviter");

    bob.client.join_room_by_id(&room_id).await.context("bob: POST /join/{room}")?;
    bob.sync_until("the room as joined", |u| room_state(u, &room_id) == Some(RoomState::Joined)).await?;
    step("bob joins and his sync shows the room as joined");

    alice
        .sync_until("bob's join", |u| saw_membership(u, &room_id, &bob_id, MembershipState::Join))
        .await?;
    step("alice's sync shows bob's join");

    let bob_room = bob.client.get_room(&room_id).context("bob: the joined room vanished")?;
    let name = bob_room.name();
    ensure!(name.as_deref() == Some("matrix-sdk room"), "bob: the room name through sync is {name:?}");
    let topic = bob_room.topic();
    ensure!(topic.as_deref() == Some("driven by matrix-sdk 0.18"), "bob: the room topic through sync is {topic:?}");
    step("bob's sync gave the room's name and topic");

    let hello = "hello bob, from alice";
    let sent = room
        .send(RoomMessageEventContent::text_plain(hello))
        .await
        .context("alice: PUT /rooms/{room}/send/m.room.message/{txn}")?;
    let alice_event = sent.response.event_id;
    step(&format!("alice sends {alice_event}"));

    bob.sync_until("alice's message", |u| saw_message(u, &room_id, &alice_event, &alice_id, hello)).await?;
    step("bob's sync delivers alice's message");

    let reply = "hello alice, from bob";
    let sent = bob_room
        .send(RoomMessageEventContent::text_plain(reply))
        .await
        .context("bob: PUT /rooms/{room}/send/m.room.message/{txn}")?;
    let bob_event = sent.response.event_id;
    step(&format!("bob sends {bob_event}"));

    alice.sync_until("bob's message", |u| saw_message(u, &room_id, &bob_event, &bob_id, reply)).await?;
    step("alice's sync delivers bob's message");

    // Each also sees its own message come back through sync, after the other's on the other side.
    alice.sync_until("her own message", |u| saw_message(u, &room_id, &alice_event, &alice_id, hello)).await?;
    bob.sync_until("his own message", |u| saw_message(u, &room_id, &bob_event, &bob_id, reply)).await?;
    step("each sees its own message through sync too");

    let members = room.members(matrix_sdk::RoomMemberships::JOIN).await.context("alice: GET /members")?;
    let mut joined: Vec<_> = members.iter().map(|m| m.user_id().to_owned()).collect();
    joined.sort();
    let mut expected = vec![alice_id.clone(), bob_id.clone()];
    expected.sort();
    ensure!(joined == expected, "alice: joined members are {joined:?}, expected {expected:?}");
    step("the room's joined members are alice and bob");

    media::run(&mut alice, &mut bob, &room, &alice_id).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = match std::env::var("MYELIN_URL") {
        Ok(url) => url,
        Err(_) => {
            eprintln!("set MYELIN_URL to the server's client API, e.g. http://127.0.0.1:8008");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    match run(&url).await {
        Ok(()) => println!("matrix-sdk flow passed in {:.1} s", started.elapsed().as_secs_f64()),
        Err(error) => {
            eprintln!("FAIL: {error:#}");
            std::process::exit(1);
        }
    }
}
