//! The end-to-end-encryption key scenarios (issue 17): `POST /keys/claim` over many users'
//! devices, and `POST /keys/query` of one user with many devices.
//!
//! The keys are key-shaped (unpadded base64 of 32-byte keys and 64-byte signatures) but not
//! real: neither server checks the signatures of device keys or one-time keys (Synapse checks
//! only that `device_keys` names the uploading user and device, Myelin the same plus the
//! shape), and the bench does no crypto.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Map, Value, json};

use crate::client::User;
use crate::stats::{Filler, round3, summarize};
use crate::{Args, Ctx, PASSWORD};

/// One-time keys per `/keys/upload` (Myelin takes at most 200).
const KEYS_PER_UPLOAD: usize = 100;
/// The algorithm claimed.
const ALGORITHM: &str = "signed_curve25519";

/// A logged-in device of a user.
pub struct Device {
    pub user: User,
    pub device_id: String,
}

/// When the timed requests stop: `--time-limit-secs` from now. The set-up (a thousand logins
/// take Synapse minutes under load) does not eat into it.
pub fn timed_deadline(args: &Args) -> Instant {
    Instant::now() + Duration::from_secs(args.time_limit_secs)
}

fn b64(fill: &mut Filler, n: usize) -> String {
    STANDARD_NO_PAD.encode(fill.bytes(n))
}

/// Device keys of the shape clients upload: curve25519 and ed25519 keys, self-signed.
pub fn device_keys(user_id: &str, device_id: &str, fill: &mut Filler) -> Value {
    json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): b64(fill, 32),
            format!("ed25519:{device_id}"): b64(fill, 32),
        },
        "signatures": { user_id: { format!("ed25519:{device_id}"): b64(fill, 64) } },
    })
}

/// `n` signed one-time keys numbered from `first`, as `/keys/upload`'s `one_time_keys`.
pub fn one_time_keys(
    user_id: &str,
    device_id: &str,
    first: usize,
    n: usize,
    fill: &mut Filler,
) -> Value {
    let keys: Map<String, Value> = (first..first + n)
        .map(|i| {
            let key = json!({
                "key": b64(fill, 32),
                "signatures": { user_id: { format!("ed25519:{device_id}"): b64(fill, 64) } },
            });
            (format!("{ALGORITHM}:k{i:06}"), key)
        })
        .collect();
    Value::Object(keys)
}

/// The `(user, device, key id)` of each one-time key in a `/keys/claim` answer.
pub fn claimed_keys(resp: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (user, devices) in resp["one_time_keys"].as_object().into_iter().flatten() {
        for (device, keys) in devices.as_object().into_iter().flatten() {
            for key_id in keys.as_object().into_iter().flatten().map(|(k, _)| k) {
                if key_id.starts_with(&format!("{ALGORITHM}:")) {
                    out.push((user.clone(), device.clone(), key_id.clone()));
                }
            }
        }
    }
    out
}

/// How many devices of `user_id` a `/keys/query` answer lists.
pub fn queried_devices(resp: &Value, user_id: &str) -> usize {
    resp["device_keys"][user_id].as_object().map_or(0, Map::len)
}

/// `n` devices of `user`: the one its registration made (when the server made one) and
/// logins for the rest, `concurrency` at a time.
async fn devices_of(ctx: &Ctx, user: User, n: usize, concurrency: usize) -> Result<Vec<Device>> {
    let user_id = user.user_id.clone();
    let mut devices = Vec::with_capacity(n);
    if n > 0
        && let Ok(device_id) = ctx.server.device_id(&user).await
    {
        devices.push(Device { user, device_id });
    }
    let logins = n - devices.len();
    let more: Vec<Device> = stream::iter(0..logins)
        .map(|i| {
            let user_id = &user_id;
            async move {
                let user = ctx
                    .server
                    .login(user_id, PASSWORD, &format!("bench device {i}"))
                    .await
                    .with_context(|| format!("login {i} of {user_id}"))?;
                let device_id = ctx.server.device_id(&user).await?;
                anyhow::Ok(Device { user, device_id })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    devices.extend(more);
    Ok(devices)
}

/// Uploads `device`'s device keys and `one_time` one-time keys (in batches), checking the
/// count the server answers.
async fn upload_device(ctx: &Ctx, device: &Device, one_time: usize, seed: u64) -> Result<()> {
    let (user_id, device_id) = (device.user.user_id.as_str(), device.device_id.as_str());
    let mut fill = Filler::new(seed);
    let mut body = json!({ "device_keys": device_keys(user_id, device_id, &mut fill) });
    let mut uploaded = 0;
    loop {
        let batch = KEYS_PER_UPLOAD.min(one_time - uploaded);
        if batch > 0 {
            body["one_time_keys"] = one_time_keys(user_id, device_id, uploaded, batch, &mut fill);
        }
        let resp = ctx.server.upload_keys(&device.user, &body).await?;
        uploaded += batch;
        let count = resp["one_time_key_counts"][ALGORITHM].as_u64().unwrap_or(0);
        if count != uploaded as u64 {
            bail!("{device_id} of {user_id} has {count} one-time keys, uploaded {uploaded}");
        }
        if uploaded == one_time {
            return Ok(());
        }
        body = json!({});
    }
}

/// Devices of several users, each with device keys and `one_time` one-time keys.
async fn devices_with_keys(
    ctx: &Ctx,
    args: &Args,
    tag: &str,
    users: usize,
    per_user: usize,
    one_time: usize,
) -> Result<(Vec<Device>, f64, f64)> {
    let start = Instant::now();
    let owners = ctx.users(tag, users, args.setup_concurrency).await?;
    let mut devices = Vec::with_capacity(users * per_user);
    for owner in owners {
        let user_id = owner.user_id.clone();
        let mine = devices_of(ctx, owner, per_user, args.setup_concurrency).await?;
        if mine.len() != per_user {
            bail!("{user_id} has {} devices, wanted {per_user}", mine.len());
        }
        devices.extend(mine);
    }
    let login_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    stream::iter(devices.iter().enumerate())
        .map(|(i, device)| upload_device(ctx, device, one_time, i as u64))
        .buffer_unordered(args.setup_concurrency.max(1))
        .try_collect::<()>()
        .await?;
    Ok((devices, login_s, start.elapsed().as_secs_f64()))
}

/// `keys-claim`: `--users` users with `--devices` devices each (default 10 × 10), every device
/// with device keys and `--reps` + 1 one-time keys; one claimer's `POST /keys/claim` of a
/// `signed_curve25519` key of every device, one untimed and `--reps` timed. Each claim must
/// return a new key of every device.
pub async fn keys_claim(ctx: &Ctx, args: &Args) -> Result<Value> {
    let per_user = args.devices.unwrap_or(10);
    let one_time = args.reps + 1;
    let (devices, login_s, upload_s) =
        devices_with_keys(ctx, args, "k", args.users, per_user, one_time).await?;
    let claimer = ctx.user("kc").await?;
    let mut wanted: Map<String, Value> = Map::new();
    for device in &devices {
        let entry = wanted
            .entry(device.user.user_id.clone())
            .or_insert_with(|| json!({}));
        entry[&device.device_id] = json!(ALGORITHM);
    }
    let body = json!({ "one_time_keys": wanted, "timeout": 10_000 });

    let mut seen = HashSet::new();
    let mut check = |resp: &Value| -> Result<()> {
        let keys = claimed_keys(resp);
        if keys.len() != devices.len() {
            bail!(
                "/keys/claim returned {} one-time keys for {} devices",
                keys.len(),
                devices.len()
            );
        }
        for key in keys {
            if !seen.insert(key.clone()) {
                bail!("/keys/claim returned {key:?} twice");
            }
        }
        Ok(())
    };
    let (warm, _) = ctx.server.claim_keys(&claimer, &body).await?;
    check(&warm)?;
    let deadline = timed_deadline(args);
    let mut lat = Vec::with_capacity(args.reps);
    let mut bytes = 0;
    for _ in 0..args.reps {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        let (resp, size) = ctx.server.claim_keys(&claimer, &body).await?;
        lat.push(t.elapsed());
        bytes = size;
        check(&resp)?;
    }
    if lat.is_empty() {
        bail!("no timed request within --time-limit-secs");
    }
    Ok(json!({
        "users": args.users,
        "devices_per_user": per_user,
        "devices": devices.len(),
        "one_time_keys_per_device": one_time,
        "reps": args.reps,
        "login_s": round3(login_s),
        "key_upload_s": round3(upload_s),
        "latency": summarize(&lat),
        "response_bytes": bytes,
    }))
}

/// `keys-query`: one user with `--devices` devices (default 1,000; logins `--setup-concurrency`
/// at a time), each with device keys; another user's `POST /keys/query` of all of them, one
/// untimed and `--reps` timed. Every answer must list all the devices.
pub async fn keys_query(ctx: &Ctx, args: &Args) -> Result<Value> {
    let n = args.devices.unwrap_or(1000);
    let (devices, login_s, upload_s) = devices_with_keys(ctx, args, "q", 1, n, 0).await?;
    let owner = devices
        .first()
        .context("keys-query needs --devices of at least 1")?
        .user
        .user_id
        .clone();
    let querier = ctx.user("qq").await?;
    let body = json!({ "device_keys": { &owner: [] }, "timeout": 10_000 });
    let check = |resp: &Value| -> Result<()> {
        let listed = queried_devices(resp, &owner);
        if listed != n {
            bail!("/keys/query lists {listed} devices of {owner}, expected {n}");
        }
        Ok(())
    };
    let (warm, _) = ctx.server.query_keys(&querier, &body).await?;
    check(&warm)?;
    let deadline = timed_deadline(args);
    let mut lat: Vec<Duration> = Vec::with_capacity(args.reps);
    let mut bytes = 0;
    for _ in 0..args.reps {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        let (resp, size) = ctx.server.query_keys(&querier, &body).await?;
        lat.push(t.elapsed());
        bytes = size;
        check(&resp)?;
    }
    if lat.is_empty() {
        bail!("no timed request within --time-limit-secs");
    }
    Ok(json!({
        "devices": n,
        "devices_in_response": queried_devices(&warm, &owner),
        "reps": args.reps,
        "login_s": round3(login_s),
        "key_upload_s": round3(upload_s),
        "latency": summarize(&lat),
        "response_bytes": bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_are_key_shaped() {
        let keys = device_keys("@a:x", "DEV", &mut Filler::new(1));
        assert_eq!(keys["user_id"], "@a:x");
        assert_eq!(keys["device_id"], "DEV");
        // 32 bytes: 43 characters of unpadded base64; a 64-byte signature: 86.
        assert_eq!(keys["keys"]["curve25519:DEV"].as_str().unwrap().len(), 43);
        assert_eq!(keys["keys"]["ed25519:DEV"].as_str().unwrap().len(), 43);
        assert_eq!(
            keys["signatures"]["@a:x"]["ed25519:DEV"]
                .as_str()
                .unwrap()
                .len(),
            86
        );
    }

    #[test]
    fn one_time_keys_are_numbered_and_distinct() {
        let keys = one_time_keys("@a:x", "DEV", 5, 3, &mut Filler::new(1));
        let keys = keys.as_object().unwrap();
        let ids: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "signed_curve25519:k000005",
                "signed_curve25519:k000006",
                "signed_curve25519:k000007"
            ]
        );
        let values: HashSet<&str> = keys.values().map(|k| k["key"].as_str().unwrap()).collect();
        assert_eq!(values.len(), 3);
    }

    #[test]
    fn claims_and_queries_are_counted() {
        let claim = json!({"one_time_keys": {
            "@a:x": {"D1": {"signed_curve25519:k1": {}}, "D2": {}},
            "@b:x": {"D3": {"signed_curve25519:k9": {}, "curve25519:k2": "x"}},
        }});
        assert_eq!(
            claimed_keys(&claim),
            [
                ("@a:x".into(), "D1".into(), "signed_curve25519:k1".into()),
                ("@b:x".into(), "D3".into(), "signed_curve25519:k9".into()),
            ]
        );
        let query = json!({"device_keys": {"@a:x": {"D1": {}, "D2": {}}, "@b:x": {}}});
        assert_eq!(queried_devices(&query, "@a:x"), 2);
        assert_eq!(queried_devices(&query, "@b:x"), 0);
        assert_eq!(queried_devices(&query, "@c:x"), 0);
    }
}
