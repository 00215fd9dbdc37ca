//! Pushers and push gateway delivery: the pushers each user sets (`/pushers/set`, validated as
//! the spec asks: only `http` pushers, whose URL must be an absolute http(s) URL ending in
//! `/_matrix/push/v1/notify`), and sending each new event that notifies a user (its push
//! actions, computed in `rooms::push`) to that user's http pushers.
//!
//! Delivery never slows a send: [`Pushers::dispatch`] returns at once and a background task reads
//! the pushers and posts to the gateways, at most [`MAX_IN_FLIGHT`] requests at a time and at
//! most [`MAX_IN_FLIGHT_PER_USER`] of them for one user (whose gateways, of their choosing, may
//! be slow on purpose: they cannot hold every slot and starve everyone else's). A failed
//! post is logged and retried with exponential backoff (1 s, 2 s, 4 s, 8 s: five tries) when
//! the failure may pass; a pushkey the gateway rejects is deleted, as the spec requires. Deliveries
//! are not persisted: a restart drops the ones still being retried.

use std::{collections::HashMap, sync::Arc, time::Duration};

use myelin_federation::push_gateway::{
    Counts, Device, NOTIFY_PATH, Notification, PushGatewayClient, PushGatewayError,
};
use myelin_store::{PushAction, PusherRow, Store};
use ruma::{
    api::client::push::{Pusher, PusherIds, PusherInit, PusherKind},
    push::PushFormat,
};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// Gateway requests in flight at once, over every user and event.
pub const MAX_IN_FLIGHT: usize = 32;
/// Gateway requests in flight at once for one user's pushers.
pub const MAX_IN_FLIGHT_PER_USER: usize = 4;
/// Tries per notification and pusher, the first included.
const MAX_ATTEMPTS: u32 = 5;
/// The wait before the second try; each further try waits twice as long.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long one gateway request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The spec's limits on the identifiers of a pusher.
const MAX_APP_ID_LEN: usize = 64;
const MAX_PUSHKEY_LEN: usize = 512;

/// What a notification says about the event, taken from it before it is handed over.
#[derive(Debug, Clone)]
pub struct PushedEvent {
    pub event_id: String,
    pub room_id: String,
    pub room_nid: i64,
    pub event_type: String,
    pub sender: String,
    pub content: Value,
}

/// The pushers area.
#[derive(Debug)]
pub struct Pushers {
    store: Store,
    client: PushGatewayClient,
    in_flight: Arc<Semaphore>,
    /// Each user's share of the slots, while they have requests waiting or in flight.
    per_user: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Pushers {
    /// `allow_private_gateways`: whether gateways may be private addresses (config
    /// `push.allow_private_gateways`).
    pub fn new(
        store: Store,
        allow_private_gateways: bool,
    ) -> std::result::Result<Self, PushGatewayError> {
        Ok(Pushers {
            store,
            client: PushGatewayClient::new(REQUEST_TIMEOUT, allow_private_gateways)?,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            per_user: Default::default(),
        })
    }

    /// A user's pushers, as `GET /pushers` lists them.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Pusher>> {
        let rows = self.store.pushers(user_id).await?;
        rows.into_iter().map(|row| pusher_of_row(&row)).collect()
    }

    /// Creates or replaces one of `user_id`'s pushers (`POST /pushers/set` with a kind). Unless
    /// `append`, the same `(app_id, pushkey)` leaves every other user in the same write.
    pub async fn set(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        pusher: Pusher,
        append: bool,
        now: i64,
    ) -> Result<()> {
        check_ids(&pusher.ids)?;
        let data = match &pusher.kind {
            PusherKind::Http(http) => {
                check_gateway_url(&http.url)?;
                // The stored `data` is what the client sent: url, format and any other keys.
                match serde_json::to_value(&pusher.kind)
                    .map_err(|e| Error::Internal(format!("serialising a pusher: {e}")))?
                {
                    Value::Object(mut kind) => kind.remove("data").unwrap_or(Value::Null),
                    _ => Value::Null,
                }
            }
            PusherKind::Email(_) => {
                return Err(Error::InvalidParam(
                    "Email pushers are not supported by this server".to_owned(),
                ));
            }
            _ => {
                return Err(Error::InvalidParam(
                    "Unknown pusher kind: only \"http\" is supported".to_owned(),
                ));
            }
        };
        let row = PusherRow {
            user_id: user_id.to_owned(),
            app_id: pusher.ids.app_id,
            pushkey: pusher.ids.pushkey,
            kind: "http".to_owned(),
            app_display_name: pusher.app_display_name,
            device_display_name: pusher.device_display_name,
            profile_tag: pusher.profile_tag,
            lang: pusher.lang,
            data: data.to_string(),
            device_id: device_id.map(str::to_owned),
            created_ts: now,
        };
        // Each pusher is a gateway every notifying event is posted to: a user's count is capped
        // (a replaced pusher does not add one).
        let existing = self.store.pushers(user_id).await?;
        let replaces = existing
            .iter()
            .any(|p| p.app_id == row.app_id && p.pushkey == row.pushkey);
        if !replaces {
            crate::limits::at_most(
                "The number of your pushers",
                existing.len() + 1,
                crate::limits::MAX_PUSHERS_PER_USER,
            )?;
        }
        self.store.set_pusher(&row, append).await?;
        Ok(())
    }

    /// Deletes one of `user_id`'s pushers (`POST /pushers/set` with `kind: null`); deleting
    /// one that does not exist changes nothing.
    pub async fn delete(&self, user_id: &str, ids: &PusherIds) -> Result<()> {
        self.store
            .delete_pusher(user_id, &ids.app_id, &ids.pushkey)
            .await?;
        Ok(())
    }

    /// Sends `event` to the http pushers of every user its push actions notify, in the
    /// background: returns at once.
    pub fn dispatch(self: &Arc<Self>, event: PushedEvent, actions: &[PushAction]) {
        let notified: Vec<PushAction> = actions.iter().filter(|a| a.notify).cloned().collect();
        let users: Vec<&str> = notified.iter().map(|a| a.user_id.as_str()).collect();
        // Nobody to push to (most users have no pushers): no task, no query.
        if notified.is_empty() || self.store.known_without_pushers(&users) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.deliver(event, notified).await {
                tracing::warn!(%err, "could not prepare push notifications");
            }
        });
    }

    async fn deliver(self: Arc<Self>, event: PushedEvent, notified: Vec<PushAction>) -> Result<()> {
        let users: Vec<&str> = notified.iter().map(|a| a.user_id.as_str()).collect();
        let pushers = self.store.http_pushers_of(&users).await?;
        if pushers.is_empty() {
            return Ok(());
        }
        let actions: HashMap<&str, &PushAction> =
            notified.iter().map(|a| (a.user_id.as_str(), a)).collect();
        let sender_display_name = self.sender_display_name(&event).await;
        let mut unread: HashMap<String, u64> = HashMap::new();
        for pusher in pushers {
            let Some(action) = actions.get(pusher.user_id.as_str()) else {
                continue;
            };
            let count = match unread.get(&pusher.user_id) {
                Some(count) => *count,
                None => {
                    let count = self
                        .store
                        .unread_notifications_total(&pusher.user_id)
                        .await?;
                    let count = u64::try_from(count).unwrap_or(0);
                    unread.insert(pusher.user_id.clone(), count);
                    count
                }
            };
            let Some((url, notification)) = notification_for(
                &event,
                sender_display_name.as_deref(),
                &pusher,
                action,
                count,
            ) else {
                tracing::warn!(user_id = %pusher.user_id, app_id = %pusher.app_id, "stored pusher has no usable data.url");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.send_with_retries(pusher, url, notification).await;
            });
        }
        Ok(())
    }

    /// The sender's display name in the room, when their member event has one.
    async fn sender_display_name(&self, event: &PushedEvent) -> Option<String> {
        let keys = [("m.room.member".to_owned(), event.sender.clone())];
        let state = self
            .store
            .current_state(event.room_nid, Some(&keys))
            .await
            .ok()?;
        let member: Value = serde_json::from_str(&state.first()?.json).ok()?;
        member["content"]["displayname"].as_str().map(str::to_owned)
    }

    /// The semaphore of `user_id`'s share of the gateway slots.
    fn user_slots(&self, user_id: &str) -> Arc<Semaphore> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        per_user
            .entry(user_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_USER)))
            .clone()
    }

    /// Forgets a user's semaphore once nobody else holds it, so the map holds only users with
    /// deliveries under way.
    fn release_user_slots(&self, user_id: &str, slots: Arc<Semaphore>) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting on it or holding it.
        if Arc::strong_count(&slots) == 2 {
            per_user.remove(user_id);
        }
    }

    async fn send_with_retries(&self, pusher: PusherRow, url: String, notification: Notification) {
        let mut delay = FIRST_RETRY_DELAY;
        for attempt in 1..=MAX_ATTEMPTS {
            let result = {
                // The user's slot first: waiting for it holds none of everyone's.
                let users_slots = self.user_slots(&pusher.user_id);
                let Ok(_user_permit) = users_slots.acquire().await else {
                    return;
                };
                let Ok(_permit) = self.in_flight.acquire().await else {
                    return;
                };
                let result = self.client.notify(&url, &notification).await;
                drop(_permit);
                drop(_user_permit);
                self.release_user_slots(&pusher.user_id, users_slots);
                result
            };
            match result {
                Ok(rejected) => {
                    if rejected.contains(&pusher.pushkey) {
                        tracing::info!(user_id = %pusher.user_id, app_id = %pusher.app_id, "push gateway rejected a pushkey; deleting the pusher");
                        if let Err(err) = self
                            .store
                            .delete_pusher(&pusher.user_id, &pusher.app_id, &pusher.pushkey)
                            .await
                        {
                            tracing::warn!(%err, "could not delete a rejected pusher");
                        }
                    }
                    return;
                }
                Err(err) if err.is_transient() && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(%err, %url, attempt, retry_in = ?delay, event_id = %notification.event_id, "push notification failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(err) => {
                    tracing::warn!(%err, %url, attempt, event_id = %notification.event_id, "push notification failed; giving up");
                    return;
                }
            }
        }
    }
}

/// The spec's limits on `app_id` (64 characters) and `pushkey` (512 bytes).
fn check_ids(ids: &PusherIds) -> Result<()> {
    if ids.app_id.is_empty() || ids.app_id.chars().count() > MAX_APP_ID_LEN {
        return Err(Error::InvalidParam(format!(
            "app_id must be 1 to {MAX_APP_ID_LEN} characters"
        )));
    }
    if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY_LEN {
        return Err(Error::InvalidParam(format!(
            "pushkey must be 1 to {MAX_PUSHKEY_LEN} bytes"
        )));
    }
    Ok(())
}

/// A gateway URL is absolute, http or https, and has the spec's notify path.
fn check_gateway_url(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::InvalidParam(format!("data.url is not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::InvalidParam(
            "data.url must be an http or https URL".to_owned(),
        ));
    }
    if parsed.path() != NOTIFY_PATH {
        return Err(Error::InvalidParam(format!(
            "data.url must have the path {NOTIFY_PATH}"
        )));
    }
    Ok(())
}

/// A stored pusher as the client API shows it.
fn pusher_of_row(row: &PusherRow) -> Result<Pusher> {
    let data: Value = serde_json::from_str(&row.data)
        .map_err(|e| Error::Internal(format!("stored pusher data is not JSON: {e}")))?;
    let kind: PusherKind = serde_json::from_value(serde_json::json!({
        "kind": row.kind,
        "data": data,
    }))
    .map_err(|e| Error::Internal(format!("stored pusher does not parse: {e}")))?;
    Ok(PusherInit {
        ids: PusherIds::new(row.pushkey.clone(), row.app_id.clone()),
        kind,
        app_display_name: row.app_display_name.clone(),
        device_display_name: row.device_display_name.clone(),
        profile_tag: row.profile_tag.clone(),
        lang: row.lang.clone(),
    }
    .into())
}

/// The tweaks of a push action list (`set_tweak` actions; `highlight` without a value is
/// `true`).
fn tweaks_of(actions: &[Value]) -> Map<String, Value> {
    let mut tweaks = Map::new();
    for action in actions {
        let Some(name) = action.get("set_tweak").and_then(Value::as_str) else {
            continue;
        };
        match action.get("value") {
            Some(value) => {
                tweaks.insert(name.to_owned(), value.clone());
            }
            None if name == "highlight" => {
                tweaks.insert(name.to_owned(), Value::Bool(true));
            }
            None => {}
        }
    }
    tweaks
}

/// The notification one pusher receives for `event`, with the URL to post it to; `None` when
/// the pusher's data has no URL.
fn notification_for(
    event: &PushedEvent,
    sender_display_name: Option<&str>,
    pusher: &PusherRow,
    action: &PushAction,
    unread: u64,
) -> Option<(String, Notification)> {
    let mut data: Map<String, Value> = match serde_json::from_str(&pusher.data) {
        Ok(Value::Object(data)) => data,
        _ => return None,
    };
    let url = match data.remove("url") {
        Some(Value::String(url)) => url,
        _ => return None,
    };
    let event_id_only =
        data.get("format").and_then(Value::as_str) == Some(PushFormat::EventIdOnly.as_str());
    let actions: Vec<Value> = serde_json::from_str(&action.actions).unwrap_or_default();
    let tweaks = tweaks_of(&actions);
    let loud = action.highlight
        || tweaks.contains_key("sound")
        || tweaks.get("highlight") == Some(&Value::Bool(true));
    let notification = Notification {
        event_id: event.event_id.clone(),
        room_id: event.room_id.clone(),
        // With `event_id_only`, the gateway gets the ids, counts and devices only.
        event_type: (!event_id_only).then(|| event.event_type.clone()),
        sender: (!event_id_only).then(|| event.sender.clone()),
        sender_display_name: sender_display_name
            .filter(|_| !event_id_only)
            .map(str::to_owned),
        content: (!event_id_only).then(|| event.content.clone()),
        counts: Counts { unread },
        prio: if loud { "high" } else { "low" },
        devices: vec![Device {
            app_id: pusher.app_id.clone(),
            pushkey: pusher.pushkey.clone(),
            pushkey_ts: pusher.created_ts / 1000,
            data,
            tweaks,
        }],
    };
    Some((url, notification))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gateway_urls_must_be_absolute_http_with_the_notify_path() {
        assert!(check_gateway_url("https://push.example.org/_matrix/push/v1/notify").is_ok());
        assert!(check_gateway_url("http://127.0.0.1:8080/_matrix/push/v1/notify").is_ok());
        for bad in [
            "/_matrix/push/v1/notify",
            "ftp://push.example.org/_matrix/push/v1/notify",
            "https://push.example.org/notify",
            "https://push.example.org/_matrix/push/v1/notify/extra",
            "not a url",
        ] {
            assert!(
                matches!(check_gateway_url(bad), Err(Error::InvalidParam(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tweaks_and_priority_come_from_the_actions() {
        let event = PushedEvent {
            event_id: "$e".to_owned(),
            room_id: "!r:x".to_owned(),
            room_nid: 1,
            event_type: "m.room.message".to_owned(),
            sender: "@s:x".to_owned(),
            content: json!({"body": "hi"}),
        };
        let pusher = PusherRow {
            user_id: "@u:x".to_owned(),
            app_id: "app".to_owned(),
            pushkey: "key".to_owned(),
            kind: "http".to_owned(),
            app_display_name: "App".to_owned(),
            device_display_name: "Phone".to_owned(),
            profile_tag: None,
            lang: "en".to_owned(),
            data: r#"{"url":"http://gw/_matrix/push/v1/notify","extra":1}"#.to_owned(),
            device_id: None,
            created_ts: 5_000,
        };
        let action = |actions: Value, highlight| PushAction {
            user_id: "@u:x".to_owned(),
            notify: true,
            highlight,
            actions: actions.to_string(),
        };
        let loud = action(
            json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]),
            true,
        );
        let (url, n) = notification_for(&event, Some("Sam"), &pusher, &loud, 3).unwrap();
        assert_eq!(url, "http://gw/_matrix/push/v1/notify");
        assert_eq!(n.prio, "high");
        assert_eq!(n.devices[0].tweaks["sound"], "default");
        assert_eq!(n.devices[0].tweaks["highlight"], true);
        assert_eq!(
            n.devices[0].data,
            json!({"extra": 1}).as_object().unwrap().clone()
        );
        assert_eq!(n.devices[0].pushkey_ts, 5);
        assert_eq!(n.sender_display_name.as_deref(), Some("Sam"));
        assert_eq!(n.content, Some(json!({"body": "hi"})));

        let quiet = action(json!(["notify"]), false);
        let (_, n) = notification_for(&event, None, &pusher, &quiet, 3).unwrap();
        assert_eq!(n.prio, "low");
        assert!(n.devices[0].tweaks.is_empty());
    }
}
