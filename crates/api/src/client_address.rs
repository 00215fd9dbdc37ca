//! Who the client of a request is, for rate limits: the connection's peer, unless the peer is a
//! trusted reverse proxy (`http.trusted_proxies`), in which case the address the proxy says it
//! forwarded for. Behind a proxy every client would otherwise share the proxy's bucket.
//!
//! The forwarding headers are lists that anyone may start: a client can send its own
//! `X-Forwarded-For: 1.2.3.4` and the proxy appends the address it saw. So the list is read from
//! the right, skipping trusted proxies, and the first address that is not one is the client.

use std::net::IpAddr;

use myelin_service::client_address::{IpNet, canonical};

/// The trusted proxies of `http.trusted_proxies` (entries that do not parse were refused when
/// the configuration was loaded).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub(crate) fn new(entries: &[String]) -> Self {
        TrustedProxies(entries.iter().filter_map(|e| IpNet::parse(e)).collect())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client behind `peer`: `peer` itself unless it is trusted, else the rightmost
    /// address of the forwarding headers that is not a trusted proxy (`Forwarded` first, then
    /// `X-Forwarded-For`). A trusted peer that names nobody usable is the client itself.
    pub(crate) fn client(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        let forwarded: Vec<&str> = headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if forwarded.is_empty() {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(value) = value.to_str() else { continue };
                hops.extend(value.split(',').filter_map(|hop| parse_hop(hop.trim())));
            }
        } else {
            for value in forwarded {
                for element in value.split(',') {
                    let hop = element.split(';').find_map(|pair| {
                        let (name, value) = pair.trim().split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("for")
                            .then_some(value.trim())
                    });
                    hops.extend(hop.and_then(|hop| parse_hop(hop.trim_matches('"'))));
                }
            }
        }
        hops.into_iter()
            .rev()
            .map(canonical)
            .find(|hop| !self.trusts(*hop))
            .unwrap_or(peer)
    }
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]` or `[2001:db8::1]:5678`, bare IPv6.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarding_headers_are_believed_from_trusted_proxies_only() {
        let proxies = TrustedProxies::new(&["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()]);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.1.1")]);
        // The client's own claim (6.6.6.6) is left of what the proxies saw.
        assert_eq!(
            proxies.client(local, &xff),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            proxies.client(stranger, &xff),
            stranger,
            "not a trusted peer"
        );
        let forwarded = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#,
        )]);
        assert_eq!(
            proxies.client(local, &forwarded),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(proxies.client(local, &headers(&[])), local, "nobody named");
        assert_eq!(
            proxies.client(local, &headers(&[("x-forwarded-for", "garbage")])),
            local
        );
        assert_eq!(
            TrustedProxies::default().client(local, &xff),
            local,
            "no trusted proxies: headers ignored"
        );
    }
}
