//! Which WebRTC peer a datagram on the shared media socket belongs to.
//!
//! Every peer uses the same UDP socket (one host candidate for all), so the proxy routes each
//! datagram before handing it to a [`WebRtcPeer`](crate::WebRtcPeer):
//!
//! - a STUN message whose USERNAME attribute is `ours:theirs` goes to the peer whose local ufrag
//!   is `ours` (RFC 8445 7.2.2); this is how the first packets of a new client find their peer,
//!   before its address is known;
//! - anything else (DTLS, SRTP, SRTCP, and STUN without a known ufrag) goes to the peer that
//!   owns the source address, learned by [`PeerDemux::learn`] once that peer accepted a STUN
//!   binding request from it ([`PeerEvent::RemoteAddress`](crate::PeerEvent::RemoteAddress)).
//!
//! An address is learned only after the peer checked the request's MESSAGE-INTEGRITY with its
//! password, so a third party who saw the ufrag in transit still cannot claim an address. A
//! routed STUN request is only a candidate: the peer decides whether it is valid.
//!
//! [`PeerDemux::route`] reads at most the STUN header and attribute headers, allocates nothing
//! and never panics, whatever the bytes.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

/// STUN magic cookie (RFC 5389 6).
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN header length.
const STUN_HEADER_LEN: usize = 20;
/// USERNAME attribute type (RFC 5389 15.3).
const ATTR_USERNAME: u16 = 0x0006;

/// Why [`PeerDemux::insert`] refused a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DemuxError {
    /// Another live peer already uses this local ufrag (the ufrag is the routing key, so it
    /// must be unique; a random 16-character ufrag makes this a bug, not bad luck).
    #[error("local ICE ufrag {0:?} is already in use")]
    DuplicateUfrag(String),
}

/// Routes datagrams of the shared socket to peers identified by `K` (a session id, a slab index).
#[derive(Debug, Clone)]
pub struct PeerDemux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    /// Per peer: its ufrag and every address learned for it, so that `remove` forgets them all.
    peers: HashMap<K, PeerRoutes>,
}

#[derive(Debug, Clone)]
struct PeerRoutes {
    ufrag: String,
    addrs: Vec<SocketAddr>,
}

impl<K: Copy + Eq + Hash> PeerDemux<K> {
    /// An empty demultiplexer.
    pub fn new() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Registers peer `key` with its local ICE ufrag ([`WebRtcPeer::local_ufrag`]).
    ///
    /// Registering a key again replaces its ufrag and forgets its addresses.
    ///
    /// [`WebRtcPeer::local_ufrag`]: crate::WebRtcPeer::local_ufrag
    pub fn insert(&mut self, key: K, local_ufrag: &str) -> Result<(), DemuxError> {
        if let Some(owner) = self.by_ufrag.get(local_ufrag)
            && *owner != key
        {
            return Err(DemuxError::DuplicateUfrag(local_ufrag.to_owned()));
        }
        self.remove(key);
        self.by_ufrag.insert(local_ufrag.to_owned(), key);
        self.peers.insert(
            key,
            PeerRoutes {
                ufrag: local_ufrag.to_owned(),
                addrs: Vec::new(),
            },
        );
        Ok(())
    }

    /// Routes `addr` to peer `key` from now on: call it when the peer accepted a STUN binding
    /// request from `addr` ([`PeerEvent::RemoteAddress`](crate::PeerEvent::RemoteAddress)).
    ///
    /// If another peer owned `addr` (a client reusing a port after its old session ended but
    /// before that session was removed), the address moves to `key`. Unknown keys are ignored.
    pub fn learn(&mut self, key: K, addr: SocketAddr) {
        if !self.peers.contains_key(&key) {
            return;
        }
        if let Some(previous) = self.by_addr.insert(addr, key)
            && previous != key
            && let Some(routes) = self.peers.get_mut(&previous)
        {
            routes.addrs.retain(|a| *a != addr);
        }
        if let Some(routes) = self.peers.get_mut(&key)
            && !routes.addrs.contains(&addr)
        {
            routes.addrs.push(addr);
        }
    }

    /// Forgets peer `key`: its ufrag and every address learned for it. Returns whether it was known.
    pub fn remove(&mut self, key: K) -> bool {
        let Some(routes) = self.peers.remove(&key) else {
            return false;
        };
        self.by_ufrag.remove(&routes.ufrag);
        for addr in routes.addrs {
            if self.by_addr.get(&addr) == Some(&key) {
                self.by_addr.remove(&addr);
            }
        }
        true
    }

    /// The peer a datagram from `from` belongs to, or `None` (drop it).
    ///
    /// STUN with a USERNAME whose first part is a registered ufrag routes by ufrag; everything
    /// else routes by source address.
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Option<K> {
        if let Some(ours) = stun_local_ufrag(datagram)
            && let Ok(ours) = std::str::from_utf8(ours)
            && let Some(key) = self.by_ufrag.get(ours)
        {
            return Some(*key);
        }
        self.by_addr.get(&from).copied()
    }

    /// Number of registered peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is registered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

impl<K: Copy + Eq + Hash> Default for PeerDemux<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `datagram` looks like STUN (RFC 7983 demultiplexing: first byte 0..=3, plus the magic
/// cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= STUN_HEADER_LEN
        && datagram[0] < 4
        && datagram.get(4..8) == Some(&STUN_MAGIC_COOKIE[..])
}

/// The part of a STUN message's USERNAME before the colon (the receiver's ufrag, RFC 8445
/// 7.2.2), or `None` when `datagram` is not STUN or has no USERNAME.
fn stun_local_ufrag(datagram: &[u8]) -> Option<&[u8]> {
    if !is_stun(datagram) {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = STUN_HEADER_LEN.checked_add(declared)?.min(datagram.len());
    let mut at = STUN_HEADER_LEN;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value = datagram.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let ours = value.split(|b| *b == b':').next().unwrap_or(value);
            return Some(ours);
        }
        // Attributes are padded to 4 bytes (RFC 5389 15).
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A STUN binding request carrying only a USERNAME attribute.
    fn binding_request(username: &str) -> Vec<u8> {
        let name = username.as_bytes();
        let padded = name.len().div_ceil(4) * 4;
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&u16::try_from(4 + padded).unwrap().to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        msg.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        msg.extend_from_slice(name);
        msg.resize(STUN_HEADER_LEN + 4 + padded, 0);
        msg
    }

    #[test]
    fn stun_routes_by_ufrag_then_data_by_learned_address() {
        let mut demux = PeerDemux::new();
        demux.insert(1u32, "ufragA").unwrap();
        demux.insert(2u32, "ufragB").unwrap();
        let client = addr("192.0.2.1:5000");

        assert_eq!(
            demux.route(client, &binding_request("ufragB:theirs")),
            Some(2)
        );
        // DTLS from an unlearned address: nobody's.
        assert_eq!(demux.route(client, &[22, 254, 253, 0, 0]), None);
        demux.learn(2, client);
        assert_eq!(demux.route(client, &[22, 254, 253, 0, 0]), Some(2));
        // STUN naming another ufrag wins over the address.
        assert_eq!(demux.route(client, &binding_request("ufragA:x")), Some(1));
        // Unknown ufrag falls back to the address.
        assert_eq!(demux.route(client, &binding_request("nobody:x")), Some(2));
    }

    #[test]
    fn remove_forgets_ufrag_and_addresses() {
        let mut demux = PeerDemux::new();
        demux.insert(1u32, "ufragA").unwrap();
        demux.learn(1, addr("192.0.2.1:5000"));
        demux.learn(1, addr("192.0.2.1:5001"));
        assert!(demux.remove(1));
        assert!(!demux.remove(1));
        assert!(demux.is_empty());
        assert_eq!(demux.route(addr("192.0.2.1:5000"), b"\x80\x00"), None);
        assert_eq!(
            demux.route(addr("192.0.2.9:1"), &binding_request("ufragA:x")),
            None
        );
        // The ufrag is free again.
        demux.insert(3, "ufragA").unwrap();
    }

    #[test]
    fn an_address_moves_to_the_peer_that_learned_it_last() {
        let mut demux = PeerDemux::new();
        demux.insert(1u32, "a").unwrap();
        demux.insert(2u32, "b").unwrap();
        let shared = addr("192.0.2.1:5000");
        demux.learn(1, shared);
        demux.learn(2, shared);
        assert_eq!(demux.route(shared, b"\x80"), Some(2));
        // Removing the old owner must not drop the new owner's route.
        demux.remove(1);
        assert_eq!(demux.route(shared, b"\x80"), Some(2));
    }

    #[test]
    fn duplicate_ufrag_is_refused_and_learn_of_unknown_key_is_ignored() {
        let mut demux = PeerDemux::new();
        demux.insert(1u32, "same").unwrap();
        assert_eq!(
            demux.insert(2, "same"),
            Err(DemuxError::DuplicateUfrag("same".into()))
        );
        demux.learn(9, addr("192.0.2.1:1"));
        assert_eq!(demux.route(addr("192.0.2.1:1"), b"\x80"), None);
        assert_eq!(demux.len(), 1);
    }

    #[test]
    fn truncated_and_overlong_stun_is_harmless() {
        let mut demux = PeerDemux::new();
        demux.insert(1u32, "ufragA").unwrap();
        let full = binding_request("ufragA:theirs");
        for cut in 0..full.len() {
            let _ = demux.route(addr("192.0.2.1:1"), &full[..cut]);
        }
        let mut lying = full.clone();
        lying[2] = 0xFF;
        lying[3] = 0xFF;
        assert_eq!(demux.route(addr("192.0.2.1:1"), &lying), Some(1));
    }

    proptest! {
        #[test]
        fn route_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut demux = PeerDemux::new();
            demux.insert(1u32, "ufragA").unwrap();
            demux.learn(1, addr("192.0.2.1:1"));
            let _ = demux.route(addr("192.0.2.1:1"), &bytes);
            let _ = demux.route(addr("192.0.2.2:1"), &bytes);
        }

        #[test]
        fn route_never_panics_on_stun_shaped_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            declared in any::<u16>(),
        ) {
            let mut msg = vec![0x00, 0x01];
            msg.extend_from_slice(&declared.to_be_bytes());
            msg.extend_from_slice(&STUN_MAGIC_COOKIE);
            msg.extend_from_slice(&[0; 12]);
            msg.extend_from_slice(&body);
            let mut demux = PeerDemux::new();
            demux.insert(1u32, "ufragA").unwrap();
            let _ = demux.route(addr("192.0.2.1:1"), &msg);
        }
    }
}
