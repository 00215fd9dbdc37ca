//! myelin-bench: load generator that can target any homeserver URL (Myelin or Synapse).
//!
//! Users are registered through the Synapse-compatible shared-secret admin API
//! (`/_synapse/admin/v1/register`), so the same code measures both servers. Each run prints one
//! JSON line on stdout: scenario, server label, sizes, medians, p95, rates, timestamps and, with
//! `--pid`, the server's resident memory before and after.

mod client;
mod inbound;
mod keys;
mod media;
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use client::{Server, User, metric_value, sync_has_event};
use stats::{round3, rss_kib, summarize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// (a) `--count` sequential shared-secret registrations (default 100).
    Register,
    /// (b) `--count` sequential sends by one user in one room (default 1000).
    SendSeq,
    /// (c) `--clients` users each sending `--count` messages to their own room at once (50 x 20).
    SendConcurrent,
    /// (d) initial `/sync` (no since) for a user in `--rooms` rooms, `--reps` times.
    SyncInitial,
    /// (e) from user A's send to user B's pending long-poll `/sync` returning it, `--count` rounds (100).
    Wakeup,
    /// (f) resident memory of `--pid` (VmRSS), no load.
    Memory,
    /// Untimed set-up of the large-room join: `--count` users (default 10,000) registered on
    /// the resident server, one creates a public room (`--room-version`), all the others join
    /// it; prints the room ID.
    JoinLargeSetup,
    /// One fresh user of the server under test joins `--room` through `--via` (a server in
    /// it): timed from sending `POST /join` until the user's long-poll `/sync` (from a token
    /// taken before the join) lists the room under `rooms.join`. With `--account-keys`, also
    /// the server's `/query/accounts` asking, read from its `/metrics`, until every remote
    /// member's key is verified.
    JoinRemote,
    /// `--users` users (10) with `--devices` devices each (10), all with device keys and
    /// one-time keys; `--reps` timed `POST /keys/claim` of a one-time key of every device.
    KeysClaim,
    /// One user with `--devices` devices (1,000), all with device keys; `--reps` timed
    /// `POST /keys/query` of that user by another.
    KeysQuery,
    /// `--clients` users each uploading `--count` files (8) of `--file-kib` KiB (1024) at once;
    /// MiB/s.
    MediaUpload,
    /// `--clients` users each downloading `--count` files (8) of `--file-kib` KiB at once
    /// through the authenticated download endpoint, every body compared; MiB/s.
    MediaDownload,
    /// One 4000×3000 JPEG, `--reps` thumbnails (scale) at sizes not made before.
    Thumbnail,
    /// Inbound federation: a fake peer server (this process, `--peer-*`) joins a fresh public
    /// room of a local user through make_join/send_join, then sends `--txns` transactions of
    /// `--pdus-per-txn` signed `m.room.message` PDUs (after `--warmup-txns`), one in flight at
    /// a time; PDUs per second until the last is answered and until it is visible to the local
    /// user; every PDU checked in the local user's `/messages`. `--runs` rooms. See inbound.rs.
    Inbound,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for Matrix homeservers (Myelin, Synapse, any base URL)")]
struct Args {
    /// Base URL of the client API, e.g. http://127.0.0.1:8008.
    #[arg(long)]
    url: String,
    /// Shared secret of `/_synapse/admin/v1/register`.
    #[arg(long, env = "BENCH_SHARED_SECRET", default_value = "")]
    shared_secret: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Label of the server in the output (e.g. myelin-sqlite, synapse-sqlite).
    #[arg(long, default_value = "server")]
    label: String,
    /// Free-form tag copied into the output (e.g. "idle", "after-load", a round number).
    #[arg(long, default_value = "")]
    tag: String,
    /// Operations per run (registrations, sends, sends per client, wake-up rounds); default per scenario.
    #[arg(long)]
    count: Option<usize>,
    /// Concurrent clients for send-concurrent.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rooms the syncing user is in for sync-initial.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Messages the syncing user sends into each of its rooms before sync-initial's syncs (0:
    /// rooms of state events only).
    #[arg(long, default_value_t = 0)]
    messages: usize,
    /// Timed repetitions of the initial sync.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Requests in flight while setting up (registering users, creating rooms); not timed.
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// Process ID of the server, to read VmRSS from /proc/<pid>/status.
    #[arg(long)]
    pid: Option<u32>,
    /// Prefix of the user names this run registers (default: derived from the clock).
    #[arg(long)]
    prefix: Option<String>,
    /// Stop timed loops after this many seconds (what finished is reported); the keys and
    /// thumbnail scenarios count them from the end of their set-up, the others from the start.
    #[arg(long, default_value_t = 600)]
    time_limit_secs: u64,
    /// Room version of the join-large-setup and inbound rooms.
    #[arg(long, default_value = "12")]
    room_version: String,
    /// Room that join-remote joins.
    #[arg(long)]
    room: Option<String>,
    /// Server name(s) join-remote joins through (`server_name` of `/join`).
    #[arg(long)]
    via: Vec<String>,
    /// join-remote's syncs ask for lazy-loaded members (as Element does) instead of the whole
    /// state.
    #[arg(long)]
    lazy_load_members: bool,
    /// Users whose devices keys-claim claims keys of.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Devices per user: keys-claim (default 10), keys-query (default 1000).
    #[arg(long)]
    devices: Option<usize>,
    /// Size of each media-upload and media-download file in KiB.
    #[arg(long, default_value_t = 1024)]
    file_kib: usize,
    /// Distinct files media-download uploads and then downloads (default: --clients).
    #[arg(long)]
    files: Option<usize>,
    /// The thumbnail box side of the first timed thumbnail (the i-th asks for this + i).
    #[arg(long, default_value_t = 400)]
    thumb_width: u32,
    /// join-remote follows the joining server's account-key verification (a Myelin joining an
    /// account-key room): its `/metrics` polled from just before the join (every 50 ms, every
    /// 20 ms once the room is in `/sync`) until its verified-keys counter covers every member
    /// of another server, or 120 s after the join returned.
    #[arg(long)]
    account_keys: bool,
    /// inbound: the port of the fake peer's TLS listener on 127.0.0.1; its server name is
    /// `localhost:<port>`.
    #[arg(long)]
    peer_port: Option<u16>,
    /// inbound: the peer's TLS certificate (PEM, for `localhost`) and key.
    #[arg(long)]
    peer_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    peer_key: Option<std::path::PathBuf>,
    /// inbound: the CA (PEM) the peer trusts for the server under test's certificate.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// inbound: the server name of the server under test.
    #[arg(long)]
    target_name: Option<String>,
    /// inbound: where the peer reaches that server (`ip:port`), instead of discovery.
    #[arg(long)]
    target_addr: Option<String>,
    /// inbound: timed transactions per run.
    #[arg(long, default_value_t = 40)]
    txns: usize,
    /// inbound: untimed transactions sent first in each run's room.
    #[arg(long, default_value_t = 2)]
    warmup_txns: usize,
    /// inbound: PDUs per transaction (at most 50).
    #[arg(long, default_value_t = 50)]
    pdus_per_txn: usize,
    /// inbound: when the next transaction goes (see `inbound::Pace`).
    #[arg(long, value_enum, default_value = "visible")]
    pace: inbound::Pace,
    /// inbound: runs (each in a fresh room).
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

const PASSWORD: &str = "bench-password-1";

struct Ctx {
    server: Server,
    secret: String,
    prefix: String,
    deadline: Instant,
}

impl Ctx {
    async fn user(&self, name: &str) -> Result<User> {
        let localpart = format!("{}{name}", self.prefix);
        let user = self
            .server
            .register(&self.secret, &localpart, PASSWORD)
            .await
            .with_context(|| format!("registering {localpart}"))?;
        if !user.user_id.starts_with(&format!("@{localpart}:")) {
            bail!("registered {localpart} but got user ID {}", user.user_id);
        }
        Ok(user)
    }

    async fn users(&self, tag: &str, n: usize, concurrency: usize) -> Result<Vec<User>> {
        stream::iter(0..n)
            .map(|i| async move { self.user(&format!("{tag}{i}")).await })
            .buffered(concurrency.max(1))
            .try_collect()
            .await
    }

    fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = SystemTime::now();
    let rss_before = args.pid.and_then(rss_kib);
    let load_before = stats::loadavg();
    let result = runtime.block_on(run(&args));
    let finished = SystemTime::now();
    let rss_after = args.pid.and_then(rss_kib);
    let load_after = stats::loadavg();
    let mut line = json!({
        "scenario": args.scenario.to_possible_value().map(|v| v.get_name().to_owned()),
        "server": args.label,
        "tag": args.tag,
        "url": args.url,
        "started_at": stats::rfc3339(started),
        "finished_at": stats::rfc3339(finished),
        "pid": args.pid,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    });
    let ok = match result {
        Ok(Value::Object(fields)) => {
            line.as_object_mut().expect("object").extend(fields);
            true
        }
        Ok(other) => {
            line["result"] = other;
            true
        }
        Err(e) => {
            line["error"] = json!(format!("{e:#}"));
            false
        }
    };
    println!("{line}");
    if !ok {
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<Value> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Server::new(&args.url)?;
    server.wait_ready(Duration::from_secs(30)).await?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let ctx = Ctx {
        server,
        secret: args.shared_secret.clone(),
        prefix: args.prefix.clone().unwrap_or_else(|| format!("b{now_ms}_")),
        deadline: Instant::now() + Duration::from_secs(args.time_limit_secs),
    };
    match args.scenario {
        Scenario::Register => register(&ctx, args.count.unwrap_or(100)).await,
        Scenario::SendSeq => send_seq(&ctx, args.count.unwrap_or(1000)).await,
        Scenario::SendConcurrent => send_concurrent(&ctx, args, args.count.unwrap_or(20)).await,
        Scenario::SyncInitial => sync_initial(&ctx, args).await,
        Scenario::Wakeup => wakeup(&ctx, args.count.unwrap_or(100)).await,
        Scenario::JoinLargeSetup => {
            join_large_setup(&ctx, args, args.count.unwrap_or(10_000)).await
        }
        Scenario::JoinRemote => join_remote(&ctx, args).await,
        Scenario::KeysClaim => keys::keys_claim(&ctx, args).await,
        Scenario::KeysQuery => keys::keys_query(&ctx, args).await,
        Scenario::MediaUpload => media::media_upload(&ctx, args).await,
        Scenario::MediaDownload => media::media_download(&ctx, args).await,
        Scenario::Thumbnail => media::thumbnail(&ctx, args).await,
        Scenario::Inbound => inbound::inbound(&ctx, args).await,
        Scenario::Memory => {
            let Some(pid) = args.pid else {
                bail!("memory needs --pid")
            };
            let kib = rss_kib(pid).with_context(|| format!("no VmRSS for pid {pid}"))?;
            Ok(json!({ "rss_kib": kib, "rss_mib": round3(kib as f64 / 1024.0) }))
        }
    }
}

/// (a) Sequential registrations: GET nonce + POST register, timed together.
async fn register(ctx: &Ctx, n: usize) -> Result<Value> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        if ctx.timed_out() {
            break;
        }
        let t = Instant::now();
        ctx.user(&format!("r{i}")).await?;
        lat.push(t.elapsed());
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(json!({
        "requested": n,
        "latency": summarize(&lat),
        "wall_s": round3(wall),
        "per_second": round3(lat.len() as f64 / wall),
    }))
}

/// (b) One user, one room, `n` sends one after the other.
async fn send_seq(ctx: &Ctx, n: usize) -> Result<Value> {
    let user = ctx.user("s").await?;
    let room = ctx.server.create_room(&user, "bench send-seq").await?;
    // Warm-up, not timed.
    for i in 0..5 {
        ctx.server
            .send(&user, &room, &format!("warm-up {i}"))
            .await?;
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        if ctx.timed_out() {
            break;
        }
        let t = Instant::now();
        ctx.server
            .send(&user, &room, &format!("message {i}"))
            .await?;
        lat.push(t.elapsed());
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(json!({
        "requested": n,
        "latency": summarize(&lat),
        "wall_s": round3(wall),
        "events_per_second": round3(lat.len() as f64 / wall),
    }))
}

/// (c) `clients` users, each in its own room, all sending `per_client` messages at once.
async fn send_concurrent(ctx: &Ctx, args: &Args, per_client: usize) -> Result<Value> {
    let users = ctx.users("c", args.clients, args.setup_concurrency).await?;
    let rooms: Vec<String> = stream::iter(users.iter())
        .map(|u| ctx.server.create_room(u, "bench send-concurrent"))
        .buffered(args.setup_concurrency.max(1))
        .try_collect()
        .await?;
    let start = Instant::now();
    let tasks = users.iter().zip(&rooms).map(|(user, room)| async move {
        let mut lat = Vec::with_capacity(per_client);
        for i in 0..per_client {
            if ctx.timed_out() {
                break;
            }
            let t = Instant::now();
            ctx.server.send(user, room, &format!("message {i}")).await?;
            lat.push(t.elapsed());
        }
        anyhow::Ok(lat)
    });
    let per_task = futures::future::try_join_all(tasks).await?;
    let wall = start.elapsed().as_secs_f64();
    let lat: Vec<Duration> = per_task.into_iter().flatten().collect();
    Ok(json!({
        "clients": args.clients,
        "rooms": rooms.len(),
        "per_client": per_client,
        "requested": args.clients * per_client,
        "latency": summarize(&lat),
        "wall_s": round3(wall),
        "events_per_second": round3(lat.len() as f64 / wall),
    }))
}

/// (d) A user who is a member of `--rooms` rooms (it created them, so it is joined), then
/// `GET /sync` with no `since` and no filter, one untimed warm-up and `--reps` timed runs.
async fn sync_initial(ctx: &Ctx, args: &Args) -> Result<Value> {
    let user = ctx.user("y").await?;
    let setup = Instant::now();
    let rooms: Vec<String> = stream::iter(0..args.rooms)
        .map(|i| {
            let user = &user;
            async move {
                ctx.server
                    .create_room(user, &format!("bench sync {i}"))
                    .await
            }
        })
        .buffered(args.setup_concurrency.max(1))
        .try_collect()
        .await?;
    stream::iter(rooms.iter())
        .map(|room| {
            let user = &user;
            async move {
                for i in 0..args.messages {
                    ctx.server.send(user, room, &format!("message {i}")).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.setup_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let t = Instant::now();
    let first = ctx.server.sync(&user, None, 0, None).await?;
    let first_ms = t.elapsed().as_secs_f64() * 1000.0;
    let joined = first["rooms"]["join"].as_object().map_or(0, |j| j.len());
    if joined < rooms.len() {
        bail!(
            "initial sync lists {joined} joined rooms, expected {}",
            rooms.len()
        );
    }
    let mut lat = Vec::with_capacity(args.reps);
    let mut bytes = 0;
    for _ in 0..args.reps {
        if ctx.timed_out() {
            break;
        }
        let t = Instant::now();
        let resp = ctx.server.sync(&user, None, 0, None).await?;
        lat.push(t.elapsed());
        bytes = resp.to_string().len();
    }
    Ok(json!({
        "rooms": rooms.len(),
        "messages_per_room": args.messages,
        "joined_in_response": joined,
        "reps": args.reps,
        "setup_s": round3(setup_s),
        "first_sync_ms": round3(first_ms),
        "latency": summarize(&lat),
        "response_bytes": bytes,
    }))
}

/// (e) User B keeps a long-poll `/sync?since=..&timeout=30000` pending; user A sends; the
/// latency runs from the start of A's send to B's sync response having arrived with the event.
async fn wakeup(ctx: &Ctx, rounds: usize) -> Result<Value> {
    let a = ctx.user("wa").await?;
    let b = Arc::new(ctx.user("wb").await?);
    let room = ctx.server.create_room(&a, "bench wakeup").await?;
    ctx.server.join(&b, &room).await?;
    // Only the timeline of this room matters; no presence, account data or ephemeral events.
    let filter = Arc::new(
        json!({
            "presence": { "types": [] },
            "account_data": { "types": [] },
            "room": {
                "rooms": [room],
                "timeline": { "limit": 10 },
                "ephemeral": { "types": [] },
                "account_data": { "types": [] },
            },
        })
        .to_string(),
    );
    let initial = ctx.server.sync(&b, None, 0, Some(&filter)).await?;
    let mut since = initial["next_batch"]
        .as_str()
        .context("no next_batch")?
        .to_owned();

    let mut wake = Vec::with_capacity(rounds);
    let mut send_lat = Vec::with_capacity(rounds);
    let mut early_returns = 0usize;
    let mut extra_syncs = 0usize;
    for i in 0..rounds {
        if ctx.timed_out() {
            break;
        }
        // Arm B's long-poll and give it time to park on the server.
        let pending = loop {
            let (server, b, f, s) = (ctx.server.clone(), b.clone(), filter.clone(), since.clone());
            let task = tokio::spawn(async move {
                let resp = server.sync(&b, Some(&s), 30_000, Some(&f)).await;
                (resp, Instant::now())
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !task.is_finished() {
                break task;
            }
            // It returned before anything was sent: take its token and arm again.
            early_returns += 1;
            if early_returns > rounds * 2 {
                bail!("long-poll keeps returning early");
            }
            let (resp, _) = task.await?;
            since = resp?["next_batch"]
                .as_str()
                .context("no next_batch")?
                .to_owned();
        };
        let t0 = Instant::now();
        let event_id = ctx.server.send(&a, &room, &format!("wake {i}")).await?;
        send_lat.push(t0.elapsed());
        let (resp, mut arrived) = pending.await?;
        let mut resp = resp?;
        let mut tries = 0;
        while !sync_has_event(&resp, &room, &event_id) {
            // Woken by something else first; keep syncing until the event shows up.
            tries += 1;
            extra_syncs += 1;
            if tries > 5 {
                bail!("event {event_id} not seen by B's sync after {tries} syncs");
            }
            let s = resp["next_batch"]
                .as_str()
                .context("no next_batch")?
                .to_owned();
            resp = ctx.server.sync(&b, Some(&s), 10_000, Some(&filter)).await?;
            arrived = Instant::now();
        }
        wake.push(arrived.saturating_duration_since(t0));
        since = resp["next_batch"]
            .as_str()
            .context("no next_batch")?
            .to_owned();
    }
    Ok(json!({
        "rounds": rounds,
        "latency": summarize(&wake),
        "send_latency": summarize(&send_lat),
        "early_returns": early_returns,
        "extra_syncs": extra_syncs,
    }))
}

/// The resident side of the large-room join: `n` users, one room they are all joined to.
async fn join_large_setup(ctx: &Ctx, args: &Args, n: usize) -> Result<Value> {
    if n == 0 {
        bail!("join-large-setup needs --count of at least 1");
    }
    let start = Instant::now();
    let users = ctx.users("m", n, args.setup_concurrency).await?;
    let register_s = start.elapsed().as_secs_f64();
    let room = ctx
        .server
        .create_room_version(&users[0], "bench join-large", Some(&args.room_version))
        .await?;
    let joins = Instant::now();
    let room_ref = &room;
    stream::iter(users[1..].iter())
        .map(|user| async move { ctx.server.join(user, room_ref).await })
        .buffer_unordered(args.setup_concurrency.max(1))
        .try_collect::<()>()
        .await?;
    let join_s = joins.elapsed().as_secs_f64();
    let members = ctx.server.joined_member_count(&users[0], &room).await?;
    if members != n {
        bail!("{room} has {members} joined members, expected {n}");
    }
    Ok(json!({
        "room_id": room,
        "room_version": args.room_version,
        "members": members,
        "register_s": round3(register_s),
        "joins_s": round3(join_s),
    }))
}

/// A fresh user of the server under test joins `--room` through `--via`; the clock runs from
/// sending `POST /join` until a long-poll `/sync` begun before the join lists the room.
async fn join_remote(ctx: &Ctx, args: &Args) -> Result<Value> {
    let room = args.room.clone().context("join-remote needs --room")?;
    if args.via.is_empty() {
        bail!("join-remote needs --via");
    }
    let user = Arc::new(ctx.user("j").await?);
    let filter = Arc::new(
        json!({
            "presence": { "types": [] },
            "room": {
                "timeline": { "limit": 10 },
                "state": { "lazy_load_members": args.lazy_load_members },
            },
        })
        .to_string(),
    );
    let initial = ctx.server.sync(&user, None, 0, Some(&filter)).await?;
    let since = initial["next_batch"]
        .as_str()
        .context("no next_batch")?
        .to_owned();

    // The client's long-poll, armed before the join and renewed until the room shows up.
    let (server, u, f, r, limit) = (
        ctx.server.clone(),
        user.clone(),
        filter.clone(),
        room.clone(),
        ctx.deadline,
    );
    let syncing = tokio::spawn(async move {
        let mut since = since;
        let mut syncs = 0usize;
        loop {
            let resp = server.sync(&u, Some(&since), 30_000, Some(&f)).await?;
            syncs += 1;
            if client::sync_has_joined_room(&resp, &r) {
                return anyhow::Ok((Instant::now(), resp, syncs));
            }
            if Instant::now() >= limit {
                bail!("the room was not in /sync after {syncs} syncs");
            }
            since = resp["next_batch"]
                .as_str()
                .context("no next_batch")?
                .to_owned();
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The account-key counters, read from just before the join.
    let keys_poll = args.account_keys.then(|| {
        let (target, wanted) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(poll_account_keys(ctx.server.clone(), wanted));
        (target, task)
    });
    if keys_poll.is_some() {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let via: Vec<&str> = args.via.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let joined = ctx.server.join_via(&user, &room, &via).await;
    let join_done = Instant::now();
    let join_s = join_done.saturating_duration_since(t0).as_secs_f64();
    if let Err(e) = joined {
        syncing.abort();
        return Err(e.context(format!("joining after {join_s:.3} s")));
    }
    let (arrived, resp, syncs) = syncing.await??;
    // Every member of another server: the room's joined members (the sync summary) but the
    // one joining user, the only member this server has. (Not `/joined_members`: in an
    // account-key room it lists only the members verified so far.)
    let account_keys = match keys_poll {
        Some((target, task)) => {
            let joined = resp["rooms"]["join"][&room]["summary"]["m.joined_member_count"]
                .as_u64()
                .context("no m.joined_member_count in the sync summary")?;
            let remote = joined.saturating_sub(1);
            let _ = target.send(Some(KeysWanted {
                verified: remote,
                give_up_at: join_done + Duration::from_secs(120),
            }));
            let samples = task.await??;
            keys_summary(&samples, remote, t0, join_done)
        }
        None => Value::Null,
    };
    let sync_s = arrived.saturating_duration_since(t0).as_secs_f64();
    let in_sync = &resp["rooms"]["join"][&room];
    let count = |v: &Value| v.as_array().map_or(0, Vec::len);
    let members_in_sync = in_sync["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            in_sync["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter(|e| e["type"] == "m.room.member")
        .count();
    Ok(json!({
        "room_id": room,
        "via": args.via,
        "lazy_load_members": args.lazy_load_members,
        "join_request_s": round3(join_s),
        "join_to_sync_s": round3(sync_s),
        "syncs": syncs,
        "sync_state_events": count(&in_sync["state"]["events"]),
        "sync_member_events": members_in_sync,
        "sync_joined_member_count": in_sync["summary"]["m.joined_member_count"],
        "sync_response_bytes": resp.to_string().len(),
        "account_keys": account_keys,
    }))
}

/// The account-key counters of one `/metrics` scrape (see `crates/api/src/metrics.rs`).
#[derive(Debug, Clone, Copy, Default)]
struct KeyCounters {
    requests_ok: u64,
    requests_error: u64,
    requests_timeout: u64,
    request_bytes: u64,
    response_bytes: u64,
    keys_asked: u64,
    keys_verified: u64,
    keys_unverified: u64,
}

impl KeyCounters {
    fn parse(text: &str) -> Self {
        let read = |name: &str| metric_value(text, name) as u64;
        KeyCounters {
            requests_ok: read(r#"myelin_account_queries_total{outcome="ok"}"#),
            requests_error: read(r#"myelin_account_queries_total{outcome="error"}"#),
            requests_timeout: read(r#"myelin_account_queries_total{outcome="timeout"}"#),
            request_bytes: read("myelin_account_query_request_bytes_total"),
            response_bytes: read("myelin_account_query_response_bytes_total"),
            keys_asked: read("myelin_account_keys_asked_total"),
            keys_verified: read("myelin_account_keys_verified_total"),
            keys_unverified: read("myelin_account_keys_unverified"),
        }
    }
}

/// What the poll waits for, known once the join has returned.
#[derive(Debug, Clone, Copy)]
struct KeysWanted {
    /// Keys verified (since the server started) that mean every remote member is verified.
    verified: u64,
    give_up_at: Instant,
}

/// Scrapes `/metrics` until the verified-keys counter reaches what `wanted` says (or its time
/// is up); every 50 ms until that is known, then every 20 ms. When the target was reached is
/// read from all the samples afterwards, so that a target reached before it was known counts
/// from the sample that first showed it.
async fn poll_account_keys(
    server: Server,
    wanted: tokio::sync::watch::Receiver<Option<KeysWanted>>,
) -> Result<Vec<(Instant, KeyCounters)>> {
    let mut samples = Vec::new();
    loop {
        let counters = KeyCounters::parse(&server.metrics().await?);
        let now = Instant::now();
        samples.push((now, counters));
        let want = *wanted.borrow();
        if let Some(want) = want
            && (counters.keys_verified >= want.verified || now >= want.give_up_at)
        {
            return Ok(samples);
        }
        let every = if want.is_some() { 20 } else { 50 };
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

/// The account-key part of join-remote's line: the counters' growth over the join (the server
/// is fresh, so all of it is this join's), and when every remote member was first seen
/// verified, after the join was sent and after it returned (0 when already at its return).
fn keys_summary(
    samples: &[(Instant, KeyCounters)],
    remote_members: u64,
    t0: Instant,
    join_done: Instant,
) -> Value {
    let first = samples.first().map(|s| s.1).unwrap_or_default();
    let last = samples.last().map(|s| s.1).unwrap_or_default();
    let at_return = samples
        .iter()
        .find(|(at, _)| *at >= join_done)
        .map(|s| s.1)
        .unwrap_or(last);
    let all_at = samples
        .iter()
        .find(|(_, c)| c.keys_verified - first.keys_verified >= remote_members)
        .map(|(at, _)| *at);
    let secs = |d: Duration| round3(d.as_secs_f64());
    json!({
        "remote_members": remote_members,
        "requests_ok": last.requests_ok - first.requests_ok,
        "requests_error": last.requests_error - first.requests_error,
        "requests_timeout": last.requests_timeout - first.requests_timeout,
        "request_bytes": last.request_bytes - first.request_bytes,
        "response_bytes": last.response_bytes - first.response_bytes,
        "keys_asked": last.keys_asked - first.keys_asked,
        "keys_verified": last.keys_verified - first.keys_verified,
        "keys_unverified_at_end": last.keys_unverified,
        "verified_at_join_return": at_return.keys_verified - first.keys_verified,
        "all_verified": all_at.is_some(),
        "all_verified_since_join_sent_s": all_at.map(|at| secs(at.saturating_duration_since(t0))),
        "all_verified_after_join_s": all_at.map(|at| secs(at.saturating_duration_since(join_done))),
        "scrapes": samples.len(),
    })
}
