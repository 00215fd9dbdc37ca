//! Rate limits: token buckets per logged-in user and per client address, for the endpoints the
//! spec marks as rate-limited, and per requesting server for the federation requests limited on
//! their own (MSC4243's `/ban`). A refused request gets `M_LIMIT_EXCEEDED` with the time after
//! which a retry will pass.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    Error, Result,
    config::{Bucket as BucketConfig, RateLimitConfig},
};

/// Past this many tracked keys, buckets that have refilled completely are forgotten.
const PRUNE_ABOVE: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Who a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    User(String),
    Address(IpAddr),
    /// A pre-emptive ban another server asks this one to co-sign (`/ban`), by that server.
    FederatedBan(String),
}

impl RateKey {
    /// The key an address is counted under (see [`address_bucket`]).
    fn bucketed(self) -> Self {
        match self {
            RateKey::Address(address) => RateKey::Address(address_bucket(address)),
            other => other,
        }
    }
}

/// The address a client is counted under: an IPv6 client is its /64 (one subscriber's
/// allocation, from which it can pick any address it likes), an IPv4-mapped one its IPv4
/// address.
pub fn address_bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        other => other,
    }
}

/// The limiter shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<RateKey, Bucket>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, key: &RateKey) -> &BucketConfig {
        match key {
            RateKey::User(_) => &self.config.per_user,
            RateKey::Address(_) => &self.config.per_address,
            RateKey::FederatedBan(_) => &self.config.federated_bans,
        }
    }

    /// Takes one token for `key`, or says how long to wait for one.
    pub fn check(&self, key: RateKey) -> Result<()> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: RateKey, now: Instant) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let key = key.bucketed();
        let limits = self.limits(&key).clone();
        let burst = f64::from(limits.burst.max(1));
        let rate = limits.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|key, bucket| {
                let limits = self.limits(key);
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * limits.per_second
                    < f64::from(limits.burst)
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let refilled =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
        bucket.updated = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            let wait = Duration::from_secs_f64((1.0 - refilled) / rate);
            Err(Error::LimitExceeded {
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            enabled: true,
            per_user: BucketConfig { per_second, burst },
            per_address: BucketConfig { per_second, burst },
            federated_bans: BucketConfig { per_second, burst },
        })
    }

    #[test]
    fn burst_then_refuse_then_refill() {
        let limiter = limiter(2.0, 3);
        let start = Instant::now();
        let key = || RateKey::User("@a:x".to_owned());
        for _ in 0..3 {
            limiter.check_at(key(), start).unwrap();
        }
        match limiter.check_at(key(), start) {
            Err(Error::LimitExceeded { retry_after_ms }) => {
                assert!((400..=500).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        // Half a second at 2/s refills one token.
        limiter
            .check_at(key(), start + Duration::from_millis(500))
            .unwrap();
        // Other keys have their own bucket.
        limiter
            .check_at(RateKey::User("@b:x".to_owned()), start)
            .unwrap();
    }

    /// `/ban` from other servers: each server has its own small bucket, apart from users'.
    #[test]
    fn federated_bans_are_limited_per_server_by_their_own_bucket() {
        let limiter = RateLimiter::new(RateLimitConfig::default());
        let start = Instant::now();
        let from = |server: &str| RateKey::FederatedBan(server.to_owned());
        for _ in 0..5 {
            limiter.check_at(from("a.example"), start).unwrap();
        }
        match limiter.check_at(from("a.example"), start) {
            // 0.05 per second: a token every 20 s.
            Err(Error::LimitExceeded { retry_after_ms }) => {
                assert!(
                    (19_900..=20_000).contains(&retry_after_ms),
                    "{retry_after_ms}"
                )
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        limiter.check_at(from("b.example"), start).unwrap();
        // A user of the same name is another bucket.
        limiter
            .check_at(RateKey::User("a.example".to_owned()), start)
            .unwrap();
        limiter
            .check_at(from("a.example"), start + Duration::from_secs(20))
            .unwrap();
    }

    #[test]
    fn disabled_never_limits() {
        let limiter = RateLimiter::new(RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        });
        for _ in 0..10_000 {
            limiter
                .check(RateKey::Address("127.0.0.1".parse().unwrap()))
                .unwrap();
        }
    }
}
