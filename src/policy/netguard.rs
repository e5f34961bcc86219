//! Which destination addresses egressd refuses to dial.
//!
//! Functions must not reach the platform's own network: loopback, RFC 1918, link-local (the
//! cloud metadata service at 169.254.169.254), CGNAT, multicast and the other special ranges.
//! IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo) are refused as a class,
//! because a NAT64 gateway or dual stack host would carry them to the embedded IPv4 address.
//! An operator can open specific ranges with `allow_private_cidrs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is special, for logs and denial bodies.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let name = match (a, b) {
        (0, _) => "this-network 0.0.0.0/8",
        (10, _) => "private 10.0.0.0/8",
        (100, 64..=127) => "CGNAT 100.64.0.0/10",
        (127, _) => "loopback 127.0.0.0/8",
        (169, 254) => "link-local 169.254.0.0/16",
        (172, 16..=31) => "private 172.16.0.0/12",
        (192, 168) => "private 192.168.0.0/16",
        (192, 0) if c == 0 => "IETF protocol assignments 192.0.0.0/24",
        (198, 18..=19) => "benchmarking 198.18.0.0/15",
        (224..=239, _) => "multicast 224.0.0.0/4",
        (240..=255, _) if ip == Ipv4Addr::BROADCAST => "broadcast 255.255.255.255",
        (240..=255, _) => "reserved 240.0.0.0/4",
        _ => return None,
    };
    Some(name)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let name = if ip.is_loopback() {
        "loopback ::1"
    } else if ip.is_unspecified() {
        "unspecified ::"
    } else if ip.to_ipv4_mapped().is_some() {
        "IPv4-mapped ::ffff:0:0/96"
    } else if seg[..6] == [0; 6] {
        "IPv4-compatible ::/96"
    } else if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        "IPv4-translated ::ffff:0:0:0/96"
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        "NAT64 64:ff9b::/96"
    } else if seg[0] == 0x2002 {
        "6to4 2002::/16"
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        "Teredo 2001::/32"
    } else if seg[0] & 0xfe00 == 0xfc00 {
        "unique-local fc00::/7"
    } else if seg[0] & 0xffc0 == 0xfe80 {
        "link-local fe80::/10"
    } else if seg[0] & 0xffc0 == 0xfec0 {
        "site-local fec0::/10"
    } else if seg[0] & 0xff00 == 0xff00 {
        "multicast ff00::/8"
    } else {
        return None;
    };
    Some(name)
}

/// Addresses an operator explicitly opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrivateAllow(Vec<IpNet>);

impl PrivateAllow {
    pub fn new(nets: Vec<IpNet>) -> Self {
        PrivateAllow(nets)
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// `Some(range)` when `ip` is special and no configured CIDR opens it.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let range = special_range(ip)?;
        (!self.0.iter().any(|net| net.contains(&ip))).then_some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(addr: &str) -> bool {
        PrivateAllow::default()
            .refuses(addr.parse().unwrap())
            .is_some()
    }

    #[test]
    fn special_ranges_are_refused() {
        for addr in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "::ffff:0:7f00:1",
            "::127.0.0.1",
        ] {
            assert!(refused(addr), "{addr} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "203.0.113.7",
            "2606:4700::1111",
            "2001:db8::1",
        ] {
            assert!(!refused(addr), "{addr} should pass");
        }
    }

    #[test]
    fn configured_cidrs_open_a_range() {
        let allow = PrivateAllow::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(allow.refuses("127.0.0.1".parse().unwrap()).is_none());
        assert!(allow.refuses("10.0.0.1".parse().unwrap()).is_some());
        // The mapped form of an opened IPv4 range stays closed: it is a different path.
        assert!(allow.refuses("::ffff:127.0.0.1".parse().unwrap()).is_some());
    }
}
