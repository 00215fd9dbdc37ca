//! Dehydrated devices (MSC3814), the way matrix-rust-sdk 0.18 does them. matrix-sdk has no
//! high-level API for them (Element X drives matrix-sdk-crypto's directly), so this part runs
//! matrix-sdk-crypto's `OlmMachine` itself, with the HTTP calls made through alice's matrix-sdk
//! clients:
//!
//! 8. a machine holding alice's private cross-signing keys (from secret storage, with the
//!    recovery key) creates a dehydrated device, signed by her self-signing key, and puts it
//!    (`PUT /dehydrated_device`: device, one-time and fallback keys, the pickle encrypted with
//!    a key of our own); `GET /dehydrated_device` gives it back;
//! 9. alice logs out of both her devices: the dehydrated device is all she has; bob's client
//!    learns that (device lists, `/keys/query`, with `dehydrated: true`) and sends a message,
//!    its room key going to the dehydrated device (`/keys/claim`, to-device);
//! 10. alice logs in on a new device, fetches the dehydrated device, rehydrates it with the
//!     pickle key, reads its to-device messages page by page
//!     (`POST /dehydrated_device/{device_id}/events` until an empty page), takes the room key
//!     from them and decrypts bob's message.

use anyhow::{Context, Result, ensure};
use matrix_sdk::ruma::api::client::dehydrated_device::{get_dehydrated_device, get_events};
use matrix_sdk::ruma::api::client::keys::get_keys;
use matrix_sdk::ruma::api::client::room::get_room_event;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::events::secret::request::SecretName;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedEventId, RoomId, device_id};
use matrix_sdk_crypto::store::types::{CrossSigningKeyExport, DehydratedDeviceKey};
use matrix_sdk_crypto::{DecryptionSettings, OlmMachine, TrustRequirement};

use super::{Device, STEP_DEADLINE, step, within};

/// A machine of alice's that can sign her devices: it learns her public identity through
/// `/keys/query` and takes the private keys from secret storage.
async fn signing_machine(alice: &Device, recovery_key: &str) -> Result<OlmMachine> {
    let user_id = alice.user_id();
    let machine = OlmMachine::new(&user_id, device_id!("MYELINDEHYDRATOR")).await;
    let (request_id, wanted) = machine.query_keys_for_users([user_id.as_ref()]);
    let mut query = get_keys::v3::Request::new();
    query.device_keys = wanted.device_keys;
    let response = alice.client.send(query).await.context("POST /keys/query")?;
    machine.mark_request_as_sent(&request_id, &response).await.context("reading the /keys/query answer")?;

    let secrets = alice
        .client
        .encryption()
        .secret_storage()
        .open_secret_store(recovery_key)
        .await
        .context("opening secret storage with the recovery key")?;
    let export = CrossSigningKeyExport {
        master_key: secrets.get_secret(SecretName::CrossSigningMasterKey).await?,
        self_signing_key: secrets.get_secret(SecretName::CrossSigningSelfSigningKey).await?,
        user_signing_key: secrets.get_secret(SecretName::CrossSigningUserSigningKey).await?,
    };
    let status = machine.import_cross_signing_keys(export).await.context("importing the cross-signing keys")?;
    ensure!(status.has_self_signing, "the private self-signing key did not import: {status:?}");
    Ok(machine)
}

/// Reads every to-device message of the dehydrated device, a page at a time, until a page
/// comes back empty (the MSC's end). Returns them and the number of requests.
async fn all_events(device: &Device, device_id: &OwnedDeviceId) -> Result<(Vec<matrix_sdk::ruma::serde::Raw<matrix_sdk::ruma::events::AnyToDeviceEvent>>, u32)> {
    let mut events = Vec::new();
    let mut next_batch: Option<String> = None;
    let mut requests = 0;
    loop {
        let mut request = get_events::unstable::Request::new(device_id.clone());
        request.next_batch = next_batch.clone();
        let page = device
            .client
            .send(request)
            .await
            .with_context(|| format!("POST /dehydrated_device/{device_id}/events (next_batch {next_batch:?})"))?;
        requests += 1;
        if page.events.is_empty() {
            return Ok((events, requests));
        }
        events.extend(page.events);
        ensure!(page.next_batch.is_some(), "a page of events without a next_batch");
        next_batch = page.next_batch;
    }
}

/// Steps 8 to 10 (see the module's comment), after the flow's step 7: `alice` and `second` are
/// alice's two devices, `bob` is in the encrypted room `room_id` with her.
pub async fn run(
    alice: Device,
    second: Device,
    bob: &mut Device,
    room_id: &RoomId,
    recovery_key: &str,
    url_a: &str,
    alice_name: &str,
    suffix: u128,
) -> Result<()> {
    let alice_id = alice.user_id();
    let pickle_key = DehydratedDeviceKey::new();
    let dehydrated_id = within("alice puts a dehydrated device", async {
        let machine = signing_machine(&alice, recovery_key).await?;
        let device = machine.dehydrated_devices().create().await.context("creating the dehydrated device")?;
        let request = device
            .keys_for_upload("matrix-sdk dehydrated device".to_owned(), &pickle_key)
            .await
            .context("the dehydrated device's keys")?;
        let put = alice.client.send(request).await.context("PUT /dehydrated_device")?;
        let got = alice.client.send(get_dehydrated_device::unstable::Request::new()).await.context("GET /dehydrated_device")?;
        ensure!(got.device_id == put.device_id, "GET /dehydrated_device gives {}, PUT made {}", got.device_id, put.device_id);
        Ok(put.device_id)
    })
    .await?;
    step(&format!("alice puts a dehydrated device {dehydrated_id}, signed by her self-signing key; GET /dehydrated_device gives it back"));

    for device in [alice, second] {
        let label = device.label;
        within(&format!("{label} logs out"), async { device.client.logout().await.context("POST /logout") }).await?;
    }
    step("alice logs out of both devices: her dehydrated device is all she has");

    // Bob's client follows alice's device list (sync's device_lists, then /keys/query).
    let started = std::time::Instant::now();
    loop {
        bob.sync().await?;
        let devices = bob.client.encryption().get_user_devices(&alice_id).await.context("bob's view of alice's devices")?;
        let ids: Vec<OwnedDeviceId> = devices.devices().map(|d| d.device_id().to_owned()).collect();
        if ids == [dehydrated_id.clone()] {
            let device = devices.get(&dehydrated_id).expect("listed above");
            ensure!(device.is_dehydrated(), "bob: alice's device {dehydrated_id} is not marked dehydrated in her keys");
            break;
        }
        ensure!(started.elapsed() < STEP_DEADLINE, "bob: after {STEP_DEADLINE:?} alice's devices are {ids:?}, not just {dehydrated_id}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    step("bob sees that alice has only her dehydrated device (marked dehydrated)");

    let body = format!("secret while alice is away, from bob {suffix}");
    let room = bob.client.get_room(room_id).context("bob lost the room")?;
    let sent = within("bob sends while alice is offline", async {
        room.send(RoomMessageEventContent::text_plain(&body)).await.context("room.send (keys claim, room key to-device, PUT /send)")
    })
    .await?;
    let event_id: OwnedEventId = sent.response.event_id;
    step(&format!("bob sends {event_id} while alice is offline; its room key goes to the dehydrated device"));

    let third = within("alice logs in on a new device", Device::log_in(url_a, "alice's third device", alice_name, "alice-password")).await?;
    let settings = DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let decrypted = within("alice's new device rehydrates the dehydrated device and decrypts", async {
        let found = third.client.send(get_dehydrated_device::unstable::Request::new()).await.context("GET /dehydrated_device")?;
        ensure!(found.device_id == dehydrated_id, "GET /dehydrated_device gives {}, not {dehydrated_id}", found.device_id);
        let device_id = third.client.device_id().context("the new device has no id")?.to_owned();
        let machine = OlmMachine::new(&alice_id, &device_id).await;
        let rehydrated = machine
            .dehydrated_devices()
            .rehydrate(&pickle_key, &found.device_id, found.device_data)
            .await
            .context("rehydrating with the pickle key")?;
        // Across servers bob's to-device message reaches alice's server on its own time: read
        // again from the start (the pages are kept until the device goes) until it is there.
        let (events, requests) = loop {
            let (events, requests) = all_events(&third, &found.device_id).await?;
            if !events.is_empty() {
                break (events, requests);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        step(&format!("alice's new device reads {} to-device message(s) of the dehydrated device in {requests} request(s)", events.len()));
        let keys = rehydrated.receive_events(events, &settings).await.context("decrypting the to-device messages")?;
        ensure!(keys.iter().any(|k| k.room_id == room_id), "the dehydrated device's messages hold no room key for {room_id}: {keys:?}");

        let event = third
            .client
            .send(get_room_event::v3::Request::new(room_id.to_owned(), event_id.clone()))
            .await
            .context("GET /rooms/{room}/event/{event}")?;
        let decrypted = machine
            .decrypt_room_event(&event.event.cast_unchecked(), room_id, &settings)
            .await
            .context("decrypting bob's message with the rehydrated room key")?;
        let message = decrypted
            .event
            .deserialize_as_unchecked::<OriginalSyncRoomMessageEvent>()
            .context("the decrypted event is no m.room.message")?;
        Ok(message.content.body().to_owned())
    })
    .await?;
    ensure!(decrypted == body, "alice's new device decrypted {decrypted:?}, bob sent {body:?}");
    step(&format!("alice's new device decrypts bob's message from the dehydrated device's room key: {decrypted:?}"));
    Ok(())
}
