//! Which addresses a request made on a user's behalf (a page to preview, later a pusher's
//! gateway) may reach: public ones only, unless the operator allows one. Checked where the
//! connection is made (the client's resolver, and the URL's own address), so that a name
//! cannot answer a public address to a check and a private one to the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Not a public unicast address: loopback, private, shared (CGNAT), link-local, unspecified
/// (all of `0.0.0.0/8`), broadcast, multicast, reserved, and the IPv6 forms that carry such an
/// IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => is_internal_v4(v),
        IpAddr::V6(v) => is_internal_v6(v),
    }
}

fn is_internal_v4(v: Ipv4Addr) -> bool {
    let [a, b, c, _] = v.octets();
    v.is_loopback()
        || v.is_private()
        || v.is_link_local()
        || v.is_broadcast()
        || v.is_multicast()
        || a == 0 // "this network", 0.0.0.0/8: 0.x.y.z reaches the host itself on Linux
        || (a == 100 && (b & 0xc0) == 64) // shared address space, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || a >= 240 // reserved, 240.0.0.0/4
}

fn is_internal_v6(v: Ipv6Addr) -> bool {
    let s = v.segments();
    if let Some(v4) = v.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    // IPv4-compatible (deprecated, still routed to the IPv4 address by some stacks).
    if s[..6] == [0; 6] && !v.is_loopback() && !v.is_unspecified() {
        return is_internal_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_internal_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    v.is_loopback()
        || v.is_unspecified()
        || v.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
}

/// Which addresses a client may connect to.
#[derive(Clone, Debug)]
pub enum Reach {
    /// Any: destinations the operator configured (application services, CAS, SMS gateways).
    Any,
    /// Public addresses, and these otherwise internal ones.
    Public { allowed: Vec<IpAddr> },
}

impl Reach {
    pub fn permits(&self, ip: IpAddr) -> bool {
        match self {
            Reach::Any => true,
            Reach::Public { allowed } => !is_internal(ip) || allowed.contains(&ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2002:c0a8:1::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "223.255.255.255",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn reach_allows_named_internal_addresses_only() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let reach = Reach::Public {
            allowed: vec![loopback],
        };
        assert!(reach.permits(loopback));
        assert!(!reach.permits(other));
        assert!(reach.permits(public));
        assert!(Reach::Any.permits(other));
    }
}
