//! The client's address: the socket peer, unless the peer is a trusted proxy, in which
//! case the forwarding header is read from the right, skipping trusted hops, and the
//! first untrusted address is the client. A header from an untrusted peer is ignored
//! (anyone can write `X-Forwarded-For`). A malformed entry stops the walk at the last
//! address warden can vouch for.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use warden_config::model::{ClientIp, ForwardedHeader};

/// Resolves the client address.
#[must_use]
pub fn resolve(peer: IpAddr, headers: &HeaderMap, cfg: &ClientIp) -> IpAddr {
    let trusted = |ip: IpAddr| cfg.trusted_proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    // The hops are walked from the right without collecting them: the values in reverse
    // order, the entries of each value in reverse order (no allocation per request).
    let mut client = peer;
    // `false` when the walk stops: an untrusted hop (the client) or an unreadable one.
    let mut step = |hop: Option<IpAddr>| match hop {
        Some(ip) => {
            client = ip;
            trusted(ip)
        }
        None => false,
    };
    match cfg.header {
        ForwardedHeader::XForwardedFor => {
            'values: for v in headers.get_all("x-forwarded-for").iter().rev() {
                let Ok(s) = v.to_str() else {
                    break;
                };
                for h in s.rsplit(',') {
                    if !step(parse_addr(h.trim())) {
                        break 'values;
                    }
                }
            }
        }
        ForwardedHeader::Forwarded => {
            'values: for v in headers.get_all("forwarded").iter().rev() {
                let Ok(s) = v.to_str() else {
                    break;
                };
                for element in s.rsplit(',') {
                    let for_value = element.split(';').find_map(|pair| {
                        let (k, v) = pair.trim().split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
                    });
                    if !step(for_value.and_then(|v| parse_addr(v.trim_matches('"')))) {
                        break 'values;
                    }
                }
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
/// The address as an `X-Forwarded-For` value. IPv4 is written by hand: `Display` goes
/// through the formatting machinery, about 1 300 instructions a request on the proxy path
/// (callgrind, benches/RESULTS.md "Performance"), against a few dozen here.
#[must_use]
pub fn header_value(ip: IpAddr) -> http::HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (k, &o) in v4.octets().iter().enumerate() {
                if k > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            http::HeaderValue::from_bytes(&buf[..n])
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
        }
        IpAddr::V6(_) => http::HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
    }
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

#[cfg(test)]
mod tests {

    #[test]
    fn header_values_are_the_addresses_as_display_writes_them() {
        // Every octet value in every position, and a few IPv6 forms.
        for o in 0..=255u8 {
            for ip in [
                [o, 0, 0, 1],
                [10, o, 7, 255],
                [192, 168, o, 9],
                [1, 22, 233, o],
                [o, o, o, o],
            ] {
                let ip = IpAddr::from(ip);
                assert_eq!(
                    super::header_value(ip).to_str().ok(),
                    Some(&*ip.to_string())
                );
            }
        }
        for s in ["::1", "2001:db8::7", "::ffff:10.0.0.1", "fe80::1:2:3:4"] {
            let ip: IpAddr = s.parse().expect("literal");
            assert_eq!(
                super::header_value(ip).to_str().ok(),
                Some(&*ip.to_string())
            );
        }
    }
    use warden_config::model::Cidr;

    use super::*;

    fn cfg(header: ForwardedHeader) -> ClientIp {
        ClientIp {
            trusted_proxies: vec![Cidr::parse("10.0.0.0/8").expect("cidr")],
            header,
        }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().expect("header value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let h = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &h, &cfg(ForwardedHeader::XForwardedFor)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &cfg(ForwardedHeader::XForwardedFor)),
            ip("198.51.100.7")
        );
        let h = headers("x-forwarded-for", &["198.51.100.7:5555"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &cfg(ForwardedHeader::XForwardedFor)),
            ip("198.51.100.7")
        );
        let h = headers("x-forwarded-for", &["garbage, 10.0.0.3"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &cfg(ForwardedHeader::XForwardedFor)),
            ip("10.0.0.3")
        );
        assert_eq!(
            resolve(
                ip("10.0.0.1"),
                &HeaderMap::new(),
                &cfg(ForwardedHeader::XForwardedFor)
            ),
            ip("10.0.0.1")
        );
    }

    /// The walk as it was written first: every hop collected, then walked from the right.
    fn resolve_collected(peer: IpAddr, headers: &HeaderMap, cfg: &ClientIp) -> IpAddr {
        let trusted = |ip: IpAddr| cfg.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(s) = v.to_str() else {
                hops.push(None);
                continue;
            };
            hops.extend(s.split(',').map(|h| parse_addr(h.trim())));
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }

    #[test]
    fn the_walk_from_the_right_agrees_with_collecting_the_hops() {
        // Every header of up to three lines of up to three entries drawn from trusted,
        // untrusted and unreadable hops (and a line that is not text), from a trusted peer.
        let entries = [
            "10.0.0.2",
            "198.51.100.7",
            "garbage",
            "10.1.2.3:80",
            "",
            "6.6.6.6",
        ];
        let mut lines: Vec<Vec<u8>> = vec![b"\xff10.0.0.4".to_vec()];
        for a in entries {
            lines.push(a.as_bytes().to_vec());
            for b in entries {
                lines.push(format!("{a}, {b}").into_bytes());
                for c in entries {
                    lines.push(format!("{a},{b} , {c}").into_bytes());
                }
            }
        }
        let cfg = cfg(ForwardedHeader::XForwardedFor);
        let mut n = 0;
        for (i, first) in lines.iter().enumerate() {
            for second in lines.iter().skip(i % 7).step_by(5).take(12) {
                for third in [None, Some(&lines[(i * 13) % lines.len()])] {
                    let mut h = HeaderMap::new();
                    for l in [Some(first), Some(second), third].into_iter().flatten() {
                        h.append(
                            "x-forwarded-for",
                            http::HeaderValue::from_bytes(l).expect("value"),
                        );
                    }
                    for peer in [ip("10.0.0.1"), ip("203.0.113.9")] {
                        assert_eq!(
                            resolve(peer, &h, &cfg),
                            resolve_collected(peer, &h, &cfg),
                            "{h:?}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 10_000, "{n} cases");
    }

    #[test]
    fn forwarded_header() {
        let h = headers(
            "forwarded",
            &["for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.9"],
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &cfg(ForwardedHeader::Forwarded)),
            ip("2001:db8::1")
        );
        let h = headers("forwarded", &["for=unknown, for=10.0.0.9"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &cfg(ForwardedHeader::Forwarded)),
            ip("10.0.0.9")
        );
    }
}
