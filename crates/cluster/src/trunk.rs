//! SIP trunks: source CIDRs -> region for inbound calls; outbound target for calls from Backends.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use voxgate_core::RegionId;

/// A SIP trunk: a carrier or PBX that sends calls in from known addresses and takes calls out.
#[derive(Debug, Clone, PartialEq)]
pub struct Trunk {
    /// Operator's name; Backends pick an outbound trunk by it.
    pub name: String,
    /// Region whose Backends serve the trunk's inbound calls.
    pub region: RegionId,
    /// Source networks of the trunk's inbound calls.
    pub sources: Vec<IpNet>,
    /// Where outbound calls through this trunk go; `None` for an inbound-only trunk.
    pub outbound: Option<SocketAddr>,
    /// Request-URI hosts routed out through this trunk.
    pub hosts: Vec<String>,
    /// How a Backend's transfer (REFER) of this trunk's caller is carried out.
    pub transfer: TrunkTransfer,
    /// How the session API's DTMF reaches this trunk's callers.
    pub dtmf: TrunkDtmf,
    /// Header names (globs) passed between the trunk's side and the Backend's, both ways.
    pub pass_headers: Vec<String>,
}

/// How DTMF asked for through the session API reaches a trunk's callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkDtmf {
    /// RFC 4733 telephone-events in the media.
    #[default]
    Rfc4733,
    /// SIP INFO, `application/dtmf-relay` (one per digit).
    Info,
}

/// How a trunk's callers are transferred when their Backend asks (REFER).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransfer {
    /// The proxy dials the target and bridges the caller to it.
    #[default]
    Bridge,
    /// The REFER goes to the trunk (a carrier that takes transfers, e.g. Twilio).
    Refer,
}

/// The configured trunks, looked up by source address (inbound) or by name / Request-URI host
/// (outbound).
#[derive(Debug, Clone, Default)]
pub struct TrunkTable {
    trunks: Vec<Trunk>,
}

impl TrunkTable {
    /// A table over `trunks`. Where two trunks claim the same network or host, the earlier wins.
    pub fn new(trunks: Vec<Trunk>) -> Self {
        Self { trunks }
    }

    /// The trunks, in configuration order.
    pub fn trunks(&self) -> &[Trunk] {
        &self.trunks
    }

    /// The trunk whose CIDRs contain `source` (most specific prefix wins).
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
    /// is matched as the IPv4 address.
    pub fn inbound(&self, source: IpAddr) -> Option<&Trunk> {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            IpAddr::V4(_) => source,
        };
        let mut best: Option<(&Trunk, u8)> = None;
        for trunk in &self.trunks {
            for net in &trunk.sources {
                if net.contains(&source) && best.is_none_or(|(_, len)| net.prefix_len() > len) {
                    best = Some((trunk, net.prefix_len()));
                }
            }
        }
        best.map(|(trunk, _)| trunk)
    }

    /// The trunk an outbound call goes to: by trunk name (a header the Backend sets) first, else
    /// by Request-URI host (case-insensitive).
    ///
    /// Only trunks with an `outbound` address are candidates. A name that matches no such trunk
    /// falls back to the host. Hosts compare without a trailing dot or IPv6 brackets.
    pub fn outbound(&self, trunk_name: Option<&str>, uri_host: &str) -> Option<&Trunk> {
        let mut outbound = self.trunks.iter().filter(|trunk| trunk.outbound.is_some());
        let by_name = trunk_name.and_then(|name| outbound.clone().find(|trunk| trunk.name == name));
        by_name.or_else(|| {
            let wanted = normalize_host(uri_host);
            outbound.find(|trunk| {
                trunk
                    .hosts
                    .iter()
                    .any(|host| normalize_host(host).eq_ignore_ascii_case(wanted))
            })
        })
    }
}

fn normalize_host(host: &str) -> &str {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(
        name: &str,
        region: &str,
        sources: &[&str],
        outbound: Option<u16>,
        hosts: &[&str],
    ) -> Trunk {
        Trunk {
            name: name.to_owned(),
            region: RegionId::new(region).expect("valid region"),
            sources: sources
                .iter()
                .map(|s| s.parse().expect("valid CIDR"))
                .collect(),
            outbound: outbound.map(|port| SocketAddr::from(([192, 0, 2, 1], port))),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            transfer: TrunkTransfer::Bridge,
            dtmf: TrunkDtmf::Rfc4733,
            pass_headers: Vec::new(),
        }
    }

    fn table() -> TrunkTable {
        TrunkTable::new(vec![
            trunk(
                "carrier",
                "US-EAST",
                &["203.0.113.0/24", "2001:db8::/32"],
                Some(5060),
                &["sip.carrier.example"],
            ),
            trunk(
                "pbx",
                "DE-FRA",
                &["203.0.113.128/25"],
                Some(5070),
                &["pbx.example", "[2001:db8::5]"],
            ),
            trunk(
                "inbound-only",
                "GB-LON",
                &["198.51.100.0/24"],
                None,
                &["only-in.example"],
            ),
        ])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    fn name(t: Option<&Trunk>) -> Option<&str> {
        t.map(|t| t.name.as_str())
    }

    #[test]
    fn inbound_most_specific_prefix_wins() {
        let table = table();
        assert_eq!(name(table.inbound(ip("203.0.113.5"))), Some("carrier"));
        assert_eq!(name(table.inbound(ip("203.0.113.200"))), Some("pbx"));
        assert_eq!(name(table.inbound(ip("2001:db8::1"))), Some("carrier"));
        assert_eq!(
            name(table.inbound(ip("198.51.100.9"))),
            Some("inbound-only")
        );
        assert_eq!(table.inbound(ip("192.0.2.1")), None);
        assert_eq!(TrunkTable::default().inbound(ip("203.0.113.5")), None);
    }

    #[test]
    fn inbound_matches_ipv4_mapped_addresses() {
        assert_eq!(
            name(table().inbound(ip("::ffff:203.0.113.200"))),
            Some("pbx")
        );
    }

    #[test]
    fn inbound_equal_prefixes_keep_configuration_order() {
        let table = TrunkTable::new(vec![
            trunk("first", "US-EAST", &["10.0.0.0/8"], None, &[]),
            trunk("second", "US-WEST", &["10.0.0.0/8"], None, &[]),
        ]);
        assert_eq!(name(table.inbound(ip("10.1.2.3"))), Some("first"));
    }

    #[test]
    fn outbound_by_name_then_host() {
        let table = table();
        assert_eq!(
            name(table.outbound(Some("pbx"), "sip.carrier.example")),
            Some("pbx")
        );
        assert_eq!(
            name(table.outbound(None, "SIP.Carrier.Example")),
            Some("carrier")
        );
        assert_eq!(
            name(table.outbound(None, "sip.carrier.example.")),
            Some("carrier")
        );
        assert_eq!(name(table.outbound(None, "2001:db8::5")), Some("pbx"));
        // Unknown name falls back to the host.
        assert_eq!(
            name(table.outbound(Some("nope"), "pbx.example")),
            Some("pbx")
        );
        assert_eq!(table.outbound(Some("nope"), "unknown.example"), None);
    }

    #[test]
    fn outbound_skips_trunks_without_an_outbound_address() {
        let table = table();
        assert_eq!(table.outbound(Some("inbound-only"), "x.example"), None);
        assert_eq!(table.outbound(None, "only-in.example"), None);
    }
}
