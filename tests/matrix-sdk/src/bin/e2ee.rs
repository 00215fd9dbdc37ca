//! End-to-end encryption through matrix-sdk 0.18 (its Olm/Megolm machine, in-memory stores):
//!
//! 1. alice and bob register and log in (bob on a second server when MYELIN_URL_B is set); their
//!    first syncs upload device, one-time and fallback keys, which a sync then counts;
//! 2. both bootstrap cross-signing (`/keys/device_signing/upload`, answering UIA with the password
//!    if the server asks, and `/keys/signatures/upload`); each sees the other's master key and
//!    cross-signed device through `/keys/query`;
//! 3. alice enables recovery: a key backup (`/room_keys/version`) and secret storage;
//! 4. alice creates an encrypted room, invites bob, bob joins;
//! 5. alice sends, bob decrypts; bob replies, alice decrypts; both events are `m.room.encrypted`
//!    as the server serves them (`GET /rooms/{room}/event/{event}`);
//! 6. alice's room keys reach the backup (`/room_keys/keys`, both Megolm sessions, `count`);
//! 7. a second device of alice logs in, cannot decrypt the history, recovers with the recovery
//!    key (secret storage: cross-signing keys and the backup key), downloads the room's keys from
//!    the backup and decrypts both earlier messages;
//! 8. to 10. dehydrated devices (MSC3814, `src/dehydration.rs`): alice puts one, logs out of both
//!    devices, bob sends, and a new device of alice's rehydrates it and decrypts bob's message.
//!
//!   MYELIN_URL=http://127.0.0.1:8008 [MYELIN_URL_B=http://127.0.0.1:8009] myelin-matrix-sdk-e2ee
//!
//! Every step is bounded by STEP_DEADLINE. Prints one line per step; exits non-zero with the
//! failing step and what was seen otherwise. matrix-sdk's own warnings (a failed key upload,
//! query or claim is only logged there) go to stderr; MYELIN_SDK_LOG sets the filter (default
//! `warn,matrix_sdk_crypto::backups=error`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{EncryptionInfo, TimelineEvent, TimelineEventKind};
use matrix_sdk::encryption::backups::BackupState;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::backup::{get_backup_keys_for_room, get_latest_backup_info};
use matrix_sdk::ruma::api::client::keys::get_keys;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::api::client::room::get_room_event;
use matrix_sdk::ruma::api::client::sync::sync_events;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::{MembershipState, OriginalSyncRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt};
use matrix_sdk::{Client, Room, RoomState};

#[path = "../common.rs"]
mod common;
use common::register;
#[path = "../dehydration.rs"]
mod dehydration;

/// How long any one step (a request, or "sync until X") may take. Generous: a two-server step
/// waits for federation, and the machine may be busy building.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// A message the sync handlers saw: decrypted (`session` is the Megolm session it came from) or
/// in clear (`session` None).
struct Message {
    event_id: OwnedEventId,
    sender: OwnedUserId,
    body: String,
    session: Option<String>,
}

/// What one device's sync handlers saw.
#[derive(Default)]
struct Seen {
    messages: Vec<Message>,
    /// `m.room.encrypted` events this device could not decrypt.
    undecryptable: Vec<(OwnedRoomId, OwnedEventId)>,
    members: Vec<(OwnedRoomId, String, MembershipState)>,
}

/// One logged-in device of a user, with its own client and stores.
struct Device {
    label: &'static str,
    client: Client,
    password: String,
    seen: Arc<Mutex<Seen>>,
    since: Option<String>,
}

fn step(what: &str) {
    println!("ok: {what}");
}

/// Runs `future` as the step `what`: its error or its running past STEP_DEADLINE fails the flow
/// with the step named.
async fn within<T>(what: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(STEP_DEADLINE, future).await {
        Ok(result) => result.with_context(|| format!("step failed: {what}")),
        Err(_) => bail!("step timed out after {STEP_DEADLINE:?}: {what}"),
    }
}

impl Device {
    async fn log_in(url: &str, label: &'static str, localpart: &str, password: &str) -> Result<Device> {
        // The default encryption settings: no automatic cross-signing, backups or downloads
        // from the backup, so that each of those is a step of its own here.
        let client = Client::builder().homeserver_url(url).build().await.context("building the client")?;
        client
            .matrix_auth()
            .login_username(localpart, password)
            .initial_device_display_name(&format!("matrix-sdk e2ee {label}"))
            .send()
            .await
            .with_context(|| format!("{label}: POST /login"))?;
        ensure!(client.encryption().ed25519_key().await.is_some(), "{label}: logged in but matrix-sdk set up no Olm machine");

        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        client.add_event_handler(
            move |event: OriginalSyncRoomMessageEvent, encryption: Option<EncryptionInfo>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().messages.push(Message {
                        event_id: event.event_id,
                        sender: event.sender,
                        body: event.content.body().to_owned(),
                        session: encryption.map(|info| info.session_id().unwrap_or("(no session id)").to_owned()),
                    });
                }
            },
        );
        let sink = seen.clone();
        client.add_event_handler(move |event: OriginalSyncRoomEncryptedEvent, room: Room| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().undecryptable.push((room.room_id().to_owned(), event.event_id));
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
        Ok(Device { label, client, password: password.to_owned(), seen, since: None })
    }

    fn user_id(&self) -> OwnedUserId {
        self.client.user_id().expect("a logged-in client has a user id").to_owned()
    }

    /// One `/sync` with the previous token; matrix-sdk then sends the E2EE requests its Olm
    /// machine queued (keys upload, query, claim, to-device).
    async fn sync(&mut self) -> Result<()> {
        let mut settings = SyncSettings::default().timeout(Duration::from_millis(300));
        if let Some(token) = &self.since {
            settings = settings.token(token.clone());
        }
        let response = self
            .client
            .sync_once(settings)
            .await
            .with_context(|| format!("{}: /sync (since {:?})", self.label, self.since))?;
        self.since = Some(response.next_batch);
        Ok(())
    }

    /// Syncs until `done` holds, for at most STEP_DEADLINE; the failure says `what` was never
    /// seen and what `explain` makes of the device's state then.
    async fn sync_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Device) -> bool,
        explain: impl Fn(&Device) -> String,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            self.sync().await?;
            if done(self) {
                step(&format!("{}: sync shows {what}", self.label));
                return Ok(());
            }
            if started.elapsed() > STEP_DEADLINE {
                bail!("{}: synced for {STEP_DEADLINE:?} and never saw {what}; {}", self.label, explain(self));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn message(&self, event_id: &OwnedEventId) -> Option<(OwnedUserId, String, Option<String>)> {
        let seen = self.seen.lock().unwrap();
        seen.messages
            .iter()
            .find(|m| &m.event_id == event_id)
            .map(|m| (m.sender.clone(), m.body.clone(), m.session.clone()))
    }

    /// Fetches the event again (`GET /rooms/{room}/event/{event}`, decrypted by the client with
    /// the keys it has now) and records it as seen if it decrypts to a message.
    async fn refetch_decrypted(&self, room_id: &RoomId, event_id: &OwnedEventId) -> Result<bool> {
        let room = self.client.get_room(room_id).context("the device lost the room")?;
        let event = room.event(event_id, None).await.with_context(|| format!("{}: GET /rooms/{room_id}/event/{event_id}", self.label))?;
        let TimelineEventKind::Decrypted(decrypted) = &event.kind else { return Ok(false) };
        let message = decrypted
            .event
            .deserialize_as_unchecked::<OriginalSyncRoomMessageEvent>()
            .context("the decrypted event is no m.room.message")?;
        let session = decrypted.encryption_info.session_id().unwrap_or("(no session id)").to_owned();
        self.seen.lock().unwrap().messages.push(Message {
            event_id: message.event_id,
            sender: message.sender,
            body: message.content.body().to_owned(),
            session: Some(session),
        });
        Ok(true)
    }

    fn could_not_decrypt(&self, event_id: &OwnedEventId) -> bool {
        self.seen.lock().unwrap().undecryptable.iter().any(|(_, e)| e == event_id)
    }

    fn saw_membership(&self, room_id: &RoomId, who: &OwnedUserId, membership: MembershipState) -> bool {
        self.seen
            .lock()
            .unwrap()
            .members
            .iter()
            .any(|(r, s, m)| r == room_id && s == who.as_str() && *m == membership)
    }

    fn room_state(&self, room_id: &RoomId) -> Option<RoomState> {
        self.client.get_room(room_id).map(|room| room.state())
    }

    /// Bootstraps cross-signing: without UIA first (the spec lets a server take the first
    /// upload so, MSC3967), with the password if the server asks. Says which it was.
    async fn bootstrap_cross_signing(&self) -> Result<&'static str> {
        let encryption = self.client.encryption();
        let error = match encryption.bootstrap_cross_signing(None).await {
            Ok(()) => return Ok("without UIA"),
            Err(error) => error,
        };
        let Some(uiaa) = error.as_uiaa_response() else {
            return Err(error).context("POST /keys/device_signing/upload (or the keys or signatures upload around it)");
        };
        let mut password = Password::new(
            UserIdentifier::Matrix(MatrixUserIdentifier::new(self.user_id().to_string())),
            self.password.clone(),
        );
        password.session = uiaa.session.clone();
        encryption
            .bootstrap_cross_signing(Some(AuthData::Password(password)))
            .await
            .context("POST /keys/device_signing/upload with m.login.password UIA")?;
        Ok("with m.login.password UIA")
    }
}

/// Checks that this device holds all three private cross-signing keys, and that the server
/// serves its device signed by its self-signing key: first as a sync would bring it (the
/// signature upload is a change to the user's device list, which sync announces in
/// `device_lists.changed` and the client follows with `/keys/query`), else by asking
/// `/keys/query` directly, to tell the two failures apart.
/// Returns how many syncs that took.
async fn check_own_cross_signing(device: &mut Device) -> Result<u32> {
    let status = device.client.encryption().cross_signing_status().await.context("no Olm machine")?;
    ensure!(status.is_complete(), "{}: the cross-signing private keys held are {status:?}", device.label);
    let started = Instant::now();
    let mut syncs = 0;
    while started.elapsed() < STEP_DEADLINE / 3 {
        if own_device_cross_signed(device).await? {
            return Ok(syncs);
        }
        device.sync().await?;
        syncs += 1;
    }
    let own_id = device.user_id();
    device
        .client
        .encryption()
        .request_user_identity(&own_id)
        .await
        .with_context(|| format!("{}: POST /keys/query for itself", device.label))?;
    if own_device_cross_signed(device).await? {
        bail!(
            "{}: after the signature upload, sync never listed its own user in device_lists.changed \
             (an explicit /keys/query does show the device signed)",
            device.label
        );
    }
    bail!("{}: /keys/query does not serve its device signed by its self-signing key", device.label)
}

async fn own_device_cross_signed(device: &Device) -> Result<bool> {
    let own = device.client.encryption().get_own_device().await?.context("the device does not know itself")?;
    Ok(own.is_cross_signed_by_owner())
}

/// `viewer` asks the server for `owner`'s keys (`/keys/query`) and checks that it gets the master
/// key and `owner`'s device signed by `owner`'s self-signing key.
async fn check_sees_cross_signing(viewer: &Device, owner: &Device) -> Result<()> {
    let owner_id = owner.user_id();
    let identity = viewer
        .client
        .encryption()
        .request_user_identity(&owner_id)
        .await
        .with_context(|| format!("{}: POST /keys/query for {owner_id}", viewer.label))?;
    if identity.is_none() {
        bail!(
            "{}: /keys/query gave no cross-signing identity (master key) for {owner_id}; {}",
            viewer.label,
            raw_key_query(viewer, &owner_id).await
        );
    }
    let owner_device = owner.client.device_id().context("no device id")?;
    let device = viewer
        .client
        .encryption()
        .get_device(&owner_id, owner_device)
        .await
        .context("no Olm machine")?;
    let Some(device) = device else {
        bail!(
            "{}: /keys/query did not list {owner_id}'s device {owner_device}; {}",
            viewer.label,
            raw_key_query(viewer, &owner_id).await
        );
    };
    ensure!(
        device.is_cross_signed_by_owner(),
        "{}: {owner_id}'s device {owner_device} is not signed by {owner_id}'s self-signing key in /keys/query",
        viewer.label
    );
    Ok(())
}

/// What the server answers `viewer`'s own `POST /keys/query` for `user` (matrix-sdk keeps the
/// answer's `failures` to itself), for a failure message.
async fn raw_key_query(viewer: &Device, user: &OwnedUserId) -> String {
    let mut request = get_keys::v3::Request::new();
    request.device_keys.insert(user.clone(), Vec::new());
    request.timeout = Some(Duration::from_secs(10));
    match viewer.client.send(request).await {
        Ok(response) => format!(
            "the server's answer to POST /keys/query {{\"device_keys\":{{\"{user}\":[]}}}}: devices {:?}, \
             master key {}, failures {:?}",
            response.device_keys.get(user).map(|devices| devices.keys().collect::<Vec<_>>()),
            if response.master_keys.contains_key(user) { "present" } else { "absent" },
            response.failures
        ),
        Err(error) => format!("POST /keys/query itself failed: {error}"),
    }
}

/// The event's `type` as `viewer`'s server serves it (`GET /rooms/{room}/event/{event}`): what
/// went over the wire, before any decryption.
async fn wire_type(viewer: &Device, room_id: &RoomId, event_id: &OwnedEventId) -> Result<String> {
    let response = viewer
        .client
        .send(get_room_event::v3::Request::new(room_id.to_owned(), event_id.clone()))
        .await
        .with_context(|| format!("{}: GET /rooms/{room_id}/event/{event_id}", viewer.label))?;
    response.event.get_field::<String>("type")?.context("the event has no type")
}

/// Why `receiver` saw no decrypted `event_id`, for a failure message.
fn explain_missing(receiver: &Device, event_id: &OwnedEventId) -> String {
    if receiver.could_not_decrypt(event_id) {
        format!(
            "the event arrived but could not be decrypted: no Megolm key reached {} (the sender's \
             /keys/query, /keys/claim or /sendToDevice for this device failed; see matrix-sdk's \
             warnings above)",
            receiver.label
        )
    } else if let Some((_, body, None)) = receiver.message(event_id) {
        format!("the event arrived in clear text ({body:?}), not encrypted")
    } else {
        "the event never arrived through sync".to_owned()
    }
}

/// Sends `body` from `sender` into the room and checks that `receiver` decrypts it through sync
/// and that both servers hold it as `m.room.encrypted`. Returns the event id and the Megolm
/// session it was encrypted with.
async fn exchange(sender: &mut Device, receiver: &mut Device, room_id: &RoomId, body: &str) -> Result<(OwnedEventId, String)> {
    let room = sender.client.get_room(room_id).context("the sender lost the room")?;
    let what = format!("{} sends {body:?} into the encrypted room", sender.label);
    let sent = within(&what, async {
        room.send(RoomMessageEventContent::text_plain(body)).await.context("room.send (keys query and claim, room key to-device, PUT /send)")
    })
    .await?;
    let event_id = sent.response.event_id;
    step(&format!("{what}: {event_id}"));

    let sender_id = sender.user_id();
    let started = Instant::now();
    loop {
        receiver.sync().await?;
        if matches!(receiver.message(&event_id), Some((_, _, Some(_)))) {
            step(&format!("{}: sync shows {}'s message, decrypted", receiver.label, sender.label));
            break;
        }
        // The event may come in a sync before its room key does (across servers the key's
        // to-device message and the event travel apart), and matrix-sdk does not retry a
        // synced event it could not decrypt: fetch it again, now that the key may be there.
        if receiver.could_not_decrypt(&event_id) && receiver.refetch_decrypted(room_id, &event_id).await? {
            step(&format!("{}: {}'s message decrypts when fetched again (its key came after it)", receiver.label, sender.label));
            break;
        }
        if started.elapsed() > STEP_DEADLINE {
            bail!(
                "{}: synced for {STEP_DEADLINE:?} and never decrypted {}'s message {event_id}; {}",
                receiver.label,
                sender.label,
                explain_missing(receiver, &event_id)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (from, got, session) = receiver.message(&event_id).expect("seen above");
    let session = session.expect("decrypted above");
    ensure!(from == sender_id, "{}: the decrypted event's sender is {from}, not {sender_id}", receiver.label);
    ensure!(got == body, "{}: decrypted {got:?}, sent {body:?}", receiver.label);
    step(&format!("{} decrypts it: {got:?} (Megolm session {session})", receiver.label));

    for viewer in [&*sender, &*receiver] {
        let kind = within("read the event back from the server", wire_type(viewer, room_id, &event_id)).await?;
        ensure!(kind == "m.room.encrypted", "{}'s server serves {event_id} as {kind:?}, not m.room.encrypted", viewer.label);
    }
    step("both servers hold it as m.room.encrypted");
    Ok((event_id, session))
}

/// The messages of the room's history as `device` reads it through `/messages`, each either
/// decrypted (Some body) or not (None).
async fn history(device: &Device, room_id: &RoomId) -> Result<Vec<(OwnedEventId, Option<String>)>> {
    let room = device.client.get_room(room_id).context("the device does not know the room")?;
    let mut options = MessagesOptions::backward();
    options.limit = UInt::from(50u32);
    let page = room.messages(options).await.context("GET /rooms/{room}/messages")?;
    let mut out = Vec::new();
    for event in page.chunk {
        let TimelineEvent { kind, .. } = event;
        let Some(event_id) = kind.event_id() else { continue };
        match &kind {
            TimelineEventKind::Decrypted(decrypted) => {
                let message = decrypted.event.deserialize_as_unchecked::<OriginalSyncRoomMessageEvent>();
                if let Ok(message) = message {
                    out.push((event_id, Some(message.content.body().to_owned())));
                }
            }
            TimelineEventKind::UnableToDecrypt { .. } => out.push((event_id, None)),
            TimelineEventKind::PlainText { .. } => {}
        }
    }
    Ok(out)
}

async fn run(url_a: &str, url_b: &str) -> Result<()> {
    let suffix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() % 1_000_000_000_000;
    let (alice_name, bob_name) = (format!("e2eealice{suffix}"), format!("e2eebob{suffix}"));

    within("register alice", register(url_a, &alice_name, "alice-password")).await?;
    within("register bob", register(url_b, &bob_name, "bob-password")).await?;
    step("alice and bob register");

    let mut alice = within("alice logs in", Device::log_in(url_a, "alice", &alice_name, "alice-password")).await?;
    let mut bob = within("bob logs in", Device::log_in(url_b, "bob", &bob_name, "bob-password")).await?;
    let (alice_id, bob_id) = (alice.user_id(), bob.user_id());
    step(&format!("both log in: {alice_id}, {bob_id}"));

    for device in [&mut alice, &mut bob] {
        // The first sync's E2EE requests upload the device, one-time and fallback keys; a sync
        // after that reports them (device_one_time_keys_count, device_unused_fallback_key_types),
        // read here from a /sync of our own, since matrix-sdk keeps the count to itself.
        device.sync().await?;
        let label = device.label;
        let (count, fallback) = within(&format!("{label}: keys uploaded and counted by sync"), async {
            loop {
                let mut request = sync_events::v3::Request::new();
                request.timeout = Some(Duration::ZERO);
                let response = device.client.send(request).await.context("GET /sync")?;
                let count = response
                    .device_one_time_keys_count
                    .iter()
                    .find(|(algorithm, _)| algorithm.as_str() == "signed_curve25519")
                    .map_or(0, |(_, count)| u64::from(*count));
                let fallback = response.device_unused_fallback_key_types.unwrap_or_default();
                if count > 0 {
                    return Ok((count, fallback));
                }
                device.sync().await?;
            }
        })
        .await?;
        step(&format!(
            "{label}: device keys uploaded; sync counts {count} signed_curve25519 one-time keys, unused fallback keys {fallback:?}"
        ));
    }

    for device in [&mut alice, &mut bob] {
        let how = within(&format!("{} bootstraps cross-signing", device.label), device.bootstrap_cross_signing()).await?;
        let what = format!("{}'s device is signed by its self-signing key", device.label);
        let syncs = within(&what, check_own_cross_signing(device)).await?;
        step(&format!("{} bootstraps cross-signing ({how}); its device shows as signed after {syncs} sync(s)", device.label));
    }
    within("alice sees bob's cross-signing keys", check_sees_cross_signing(&alice, &bob)).await?;
    within("bob sees alice's cross-signing keys", check_sees_cross_signing(&bob, &alice)).await?;
    step("each sees the other's master key and cross-signed device through /keys/query");

    let recovery_key = within("alice enables recovery (key backup and secret storage)", async {
        alice.client.encryption().recovery().enable().await.context("recovery().enable()")
    })
    .await?;
    let backup_state = alice.client.encryption().backups().state();
    ensure!(backup_state == BackupState::Enabled, "alice: after enabling recovery the backup state is {backup_state:?}");
    step("alice enables recovery: a backup version and secret storage, recovery key in hand");

    let mut create = CreateRoomRequest::new();
    create.name = Some("matrix-sdk e2ee room".to_owned());
    create.preset = Some(RoomPreset::PrivateChat);
    create.initial_state =
        vec![InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any()];
    let room = within("alice creates an encrypted room", async {
        alice.client.create_room(create).await.context("POST /createRoom with m.room.encryption")
    })
    .await?;
    let room_id = room.room_id().to_owned();
    let encrypted = within("alice reads the room's encryption state", async {
        Ok(room.latest_encryption_state().await?.is_encrypted())
    })
    .await?;
    ensure!(encrypted, "alice: the room {room_id} is not encrypted after createRoom with m.room.encryption");
    step(&format!("alice creates the encrypted room {room_id}"));

    within("alice invites bob", async { room.invite_user_by_id(&bob_id).await.context("POST /invite") }).await?;
    bob.sync_until(
        "the invite",
        |d| d.room_state(&room_id) == Some(RoomState::Invited),
        |d| format!("the room's state there is {:?}", d.room_state(&room_id)),
    )
    .await?;
    within("bob joins", async { bob.client.join_room_by_id(&room_id).await.context("POST /join") }).await?;
    bob.sync_until(
        "the room as joined",
        |d| d.room_state(&room_id) == Some(RoomState::Joined),
        |d| format!("the room's state there is {:?}", d.room_state(&room_id)),
    )
    .await?;
    alice
        .sync_until(
            "bob's join",
            |d| d.saw_membership(&room_id, &bob_id, MembershipState::Join),
            |_| "no m.room.member join for bob".to_owned(),
        )
        .await?;

    let hello = format!("secret hello from alice {suffix}");
    let (hello_id, alice_session) = exchange(&mut alice, &mut bob, &room_id, &hello).await?;
    let reply = format!("secret reply from bob {suffix}");
    let (reply_id, bob_session) = exchange(&mut bob, &mut alice, &room_id, &reply).await?;

    // Alice's room keys (her own outbound session, and bob's she received) reach the backup.
    within("alice's room keys reach the backup", async {
        alice.client.encryption().backups().wait_for_steady_state().await.context("backups().wait_for_steady_state()")
    })
    .await?;
    let info = within("GET /room_keys/version", async {
        alice.client.send(get_latest_backup_info::v3::Request::new()).await.context("GET /room_keys/version")
    })
    .await?;
    let keys = within("GET /room_keys/keys/{room}", async {
        let request = get_backup_keys_for_room::v3::Request::new(info.version.clone(), room_id.clone());
        alice.client.send(request).await.context("GET /room_keys/keys/{room}")
    })
    .await?;
    for (whose, session) in [("alice's", &alice_session), ("bob's", &bob_session)] {
        ensure!(
            keys.sessions.contains_key(session.as_str()),
            "the backup (version {}) has no key for {whose} session {session}; it has {:?}",
            info.version,
            keys.sessions.keys().collect::<Vec<_>>()
        );
    }
    ensure!(u64::from(info.count) >= 2, "GET /room_keys/version counts {} keys, the room alone has 2", info.count);
    step(&format!("the backup (version {}, count {}, etag {}) holds both sessions' keys", info.version, info.count, info.etag));

    // A second device of alice: the history is there but unreadable until it recovers.
    let mut second = within("alice's second device logs in", Device::log_in(url_a, "alice's second device", &alice_name, "alice-password")).await?;
    second
        .sync_until(
            "the encrypted room, joined",
            |d| d.room_state(&room_id) == Some(RoomState::Joined),
            |d| format!("the room's state there is {:?}", d.room_state(&room_id)),
        )
        .await?;
    let before = within("the second device reads the history", history(&second, &room_id)).await?;
    for event_id in [&hello_id, &reply_id] {
        let entry = before.iter().find(|(e, _)| e == event_id);
        ensure!(
            matches!(entry, Some((_, None))),
            "alice's second device: before recovery, {event_id} in /messages should be undecryptable, got {entry:?}"
        );
    }
    step("alice's second device: before recovery both messages are in the history, undecryptable");

    within("the second device recovers with the recovery key", async {
        second.client.encryption().recovery().recover(&recovery_key).await.context("recovery().recover()")
    })
    .await?;
    within("the second device holds alice's cross-signing keys", check_own_cross_signing(&mut second)).await?;
    ensure!(second.client.encryption().backups().are_enabled().await, "alice's second device: no backup key after recovery");
    step("alice's second device recovers: cross-signing keys and the backup key from secret storage");

    within("the second device downloads the room's keys from the backup", async {
        second
            .client
            .encryption()
            .backups()
            .download_room_keys_for_room(&room_id)
            .await
            .context("GET /room_keys/keys/{room}")
    })
    .await?;
    let after = within("the second device reads the history again", history(&second, &room_id)).await?;
    for (event_id, body) in [(&hello_id, &hello), (&reply_id, &reply)] {
        let entry = after.iter().find(|(e, _)| e == event_id);
        ensure!(
            matches!(entry, Some((_, Some(b))) if b == body),
            "alice's second device: after restoring the backup, {event_id} should decrypt to {body:?}, got {entry:?}"
        );
    }
    step("alice's second device decrypts the history from the backup: both messages");

    dehydration::run(alice, second, &mut bob, &room_id, &recovery_key, url_a, &alice_name, suffix).await
}

fn init_logging() {
    // Left out by default: "Trying to backup room keys but no backup key was found", which
    // matrix-sdk logs on every sync of a device without a backup (bob's).
    let filter = std::env::var("MYELIN_SDK_LOG").unwrap_or_else(|_| "warn,matrix_sdk_crypto::backups=error".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() {
    let Ok(url_a) = std::env::var("MYELIN_URL") else {
        eprintln!("set MYELIN_URL to alice's server's client API (and MYELIN_URL_B to bob's, if another)");
        std::process::exit(2);
    };
    let url_b = std::env::var("MYELIN_URL_B").unwrap_or_else(|_| url_a.clone());
    init_logging();
    let servers = if url_a == url_b { "one server" } else { "two servers" };
    let started = Instant::now();
    match run(&url_a, &url_b).await {
        Ok(()) => println!("matrix-sdk e2ee flow ({servers}) passed in {:.1} s", started.elapsed().as_secs_f64()),
        Err(error) => {
            eprintln!("FAIL ({servers}): {error:#}");
            std::process::exit(1);
        }
    }
}
