//! Which addresses outbound requests may reach. A URL that a user chose (a push gateway today,
//! more later) must not make the server talk to itself or to the private network it sits in
//! (server-side request forgery): such requests only go to publicly routable addresses unless
//! the operator allows private ones.
//!
//! Enforced where the connection is made, not where the URL is checked: the resolver handed to
//! reqwest drops private addresses from every DNS answer (so a name cannot resolve to a public
//! address when checked and a private one when connecting), and IP-literal hosts, which reqwest
//! does not resolve, are checked before each request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is publicly routable: not loopback, private, link-local, shared (CGNAT),
/// multicast, documentation, benchmarking, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // Shared address space (RFC 6598).
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments (RFC 6890).
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking (RFC 2544).
        || (a == 198 && (18..20).contains(&b))
        // Reserved (RFC 1112).
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    let v4_at =
        |i: usize| Ipv4Addr::from((u32::from(segments[i]) << 16) | u32::from(segments[i + 1]));
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local (fc00::/7), link-local (fe80::/10) and the deprecated site-local
        // (fec0::/10, still routed inside some networks).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // Documentation (2001:db8::/32).
        || (first == 0x2001 && segments[1] == 0x0db8)
        // IPv4-compatible addresses (::a.b.c.d, deprecated): some stacks still send them to
        // the IPv4 address inside, so none is trusted to be public.
        || segments[..6] == [0, 0, 0, 0, 0, 0]
        // NAT64: the local-use prefix 64:ff9b:1::/48 leads into the operator's own network;
        // through the well-known prefix 64:ff9b::/96 the IPv4 address inside is what is
        // reached, so it is judged by the IPv4 rules.
        || segments[..3] == [0x64, 0xff9b, 1]
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && !is_public_v4(v4_at(6)))
        // 6to4 (2002::/16): a relay delivers to the IPv4 address in bits 16-48.
        || (first == 0x2002 && !is_public_v4(v4_at(1))))
}

/// A DNS resolver for reqwest that answers with the public addresses of a name only, and fails
/// when it has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no publicly routable address").into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            // IPv4-compatible, whatever the IPv4 address inside.
            "::127.0.0.1",
            "::10.0.0.1",
            "::1.1.1.1",
            // 6to4 around private IPv4 addresses.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            // Local-use NAT64, and site-local.
            "64:ff9b:1::1.1.1.1",
            "64:ff9b:1:ffff::1",
            "fec0::1",
            "feff::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            // The same prefixes around public IPv4 addresses reach those.
            "64:ff9b::101:101",
            "2002:101:101::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_with_only_private_addresses() {
        let resolved = PublicOnlyResolver
            .resolve("localhost".parse().unwrap())
            .await;
        assert!(resolved.is_err(), "localhost resolves to loopback only");
    }
}
