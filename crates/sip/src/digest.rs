//! Digest authentication of SIP requests (RFC 3261 section 22 on RFC 2617, with RFC 8760's
//! SHA-256 beside MD5), sans-I/O. As a server: challenges out, `Authorization` values checked.
//! As a client ([`Challenge`], [`Challenge::answer`]): a carrier's 401 or 407 answered with our
//! trunk credentials.
//!
//! Nonces are stateless until used: each is the time it was issued (milliseconds since the
//! verifier's `epoch`), a random salt and an HMAC-SHA-256 over both and the realm under a key
//! only this verifier knows, so a challenge costs no memory (a scanner collecting challenges
//! fills nothing). A nonce is good for `nonce_ttl`. Replay is refused by a bounded ledger of the
//! nonces used so far with the highest `nc` seen on each (a request without `qop` may use its
//! nonce once); when the ledger is full, the oldest-issued nonce is forgotten and every nonce
//! issued up to it becomes stale, so forgetting never reopens a replay. A stale or replayed
//! nonce with a correct response gets a new challenge with `stale=true` (RFC 2617 3.2.1): the
//! client retries without asking its user. The `-sess` algorithms are not offered.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A digest hash algorithm (RFC 8760 section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `MD5`, RFC 2617; what most SIP equipment still speaks.
    Md5,
    /// `SHA-256`, RFC 8760; offered first.
    Sha256,
}

impl Algorithm {
    /// Its token in `algorithm=`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// The algorithm named `name` (case-insensitive); `None` for others, `-sess` ones included.
    pub fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// The lower-case hex hash of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Self::Md5 => to_hex(&Md5::digest(data)),
            Self::Sha256 => to_hex(&Sha256::digest(data)),
        }
    }
}

/// The `response` a client computes (RFC 2617 3.2.2.1, RFC 8760 2): `qop` is `Some((nc,
/// cnonce))` for `qop=auth`, `None` for the RFC 2069 form.
#[allow(clippy::too_many_arguments)]
pub fn response(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = algorithm.hex(format!("{username}:{realm}:{password}").as_bytes());
    let ha2 = algorithm.hex(format!("{method}:{uri}").as_bytes());
    let data = match qop {
        Some((nc, cnonce)) => format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
        None => format!("{ha1}:{nonce}:{ha2}"),
    };
    algorithm.hex(data.as_bytes())
}

/// The parameters of an `Authorization` (or `Proxy-Authorization`) header with the `Digest`
/// scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (the Request-URI the client signed).
    pub uri: String,
    /// `response`.
    pub response: String,
    /// `algorithm` (absent means MD5).
    pub algorithm: Option<String>,
    /// `qop`.
    pub qop: Option<String>,
    /// `nc`, eight hex digits.
    pub nc: Option<String>,
    /// `cnonce`.
    pub cnonce: Option<String>,
}

impl Credentials {
    /// Parses a header value `Digest username="...", ...`; `None` for another scheme or when a
    /// mandatory parameter is missing.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut credentials = Self::default();
        let (mut username, mut realm, mut nonce, mut uri, mut response) =
            (false, false, false, false, false);
        for (name, value) in params(rest) {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => {
                    username = true;
                    &mut credentials.username
                }
                "realm" => {
                    realm = true;
                    &mut credentials.realm
                }
                "nonce" => {
                    nonce = true;
                    &mut credentials.nonce
                }
                "uri" => {
                    uri = true;
                    &mut credentials.uri
                }
                "response" => {
                    response = true;
                    &mut credentials.response
                }
                "algorithm" => credentials.algorithm.insert(String::new()),
                "qop" => credentials.qop.insert(String::new()),
                "nc" => credentials.nc.insert(String::new()),
                "cnonce" => credentials.cnonce.insert(String::new()),
                _ => continue,
            };
            *slot = value;
        }
        (username && realm && nonce && uri && response).then_some(credentials)
    }
}

/// A challenge of a `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) header, as a client
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `algorithm` (absent means MD5).
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (then `nc` and `cnonce` are sent).
    pub qop_auth: bool,
    /// `opaque`, returned as it came.
    pub opaque: Option<String>,
}

impl Challenge {
    /// Parses a header value `Digest realm="...", nonce="...", ...`; `None` for another scheme,
    /// a missing realm or nonce, an algorithm not supported (`-sess` ones included), or a `qop`
    /// list without `auth`.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let (mut realm, mut nonce, mut algorithm, mut qop, mut opaque) =
            (None, None, Algorithm::Md5, None, None);
        for (name, value) in params(rest) {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "algorithm" => algorithm = Algorithm::parse(&value)?,
                "qop" => qop = Some(value),
                "opaque" => opaque = Some(value),
                _ => {}
            }
        }
        let qop_auth = match qop {
            None => false,
            Some(list) => {
                let auth = list
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"));
                // Only auth-int offered: nothing we can answer.
                if !auth {
                    return None;
                }
                true
            }
        };
        Some(Self {
            realm: realm?,
            nonce: nonce?,
            algorithm,
            qop_auth,
            opaque,
        })
    }

    /// The `Authorization` (or `Proxy-Authorization`) value answering this challenge for a
    /// request `method` to `uri`, as `username` with `password`; `cnonce` is the client's
    /// random nonce, `nc` the count of requests sent with this nonce (1 for the first).
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let nc = format!("{nc:08x}");
        let qop = self.qop_auth.then_some((nc.as_str(), cnonce));
        let response = response(
            self.algorithm,
            username,
            &self.realm,
            password,
            method,
            uri,
            &self.nonce,
            qop,
        );
        let mut value = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.name()
        );
        if self.qop_auth {
            let _ = write!(value, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(value, ", opaque=\"{opaque}\"");
        }
        value
    }
}

/// `name=value` pairs separated by commas, values optionally quoted (with `\` escapes).
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// No such user in this realm.
    #[error("unknown user")]
    UnknownUser,
    /// The credentials are for another realm.
    #[error("wrong realm")]
    WrongRealm,
    /// An algorithm this verifier does not offer.
    #[error("algorithm not offered")]
    Algorithm,
    /// A `qop` other than `auth`, or `qop=auth` without `nc` and `cnonce`.
    #[error("bad qop")]
    Qop,
    /// The `uri` signed is not the request's Request-URI.
    #[error("uri does not match the Request-URI")]
    Uri,
    /// The response does not match the password, or the nonce is not one of ours.
    #[error("wrong response")]
    Response,
    /// The response is right but the nonce expired, was forgotten or was already used with this
    /// `nc`: challenge again with `stale=true`.
    #[error("stale or reused nonce")]
    Stale,
}

/// How a [`DigestAuth`] challenges and verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestConfig {
    /// `realm`.
    pub realm: String,
    /// Offered in this order (RFC 8760: the preferred first).
    pub algorithms: Vec<Algorithm>,
    /// How long a nonce may be used after it was issued.
    pub nonce_ttl: Duration,
    /// Used nonces remembered at most (the replay ledger's bound).
    pub max_nonces: usize,
}

impl Default for DigestConfig {
    fn default() -> Self {
        Self {
            realm: "voxgate".to_owned(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_ttl: Duration::from_secs(300),
            max_nonces: 4096,
        }
    }
}

/// One realm's verifier: its users, its nonce key and its replay ledger.
pub struct DigestAuth {
    config: DigestConfig,
    users: HashMap<String, String>,
    key: [u8; 32],
    epoch: Instant,
    /// nonce -> (issued, highest nc used; 0 for a use without qop).
    used: HashMap<String, (u64, u32)>,
    /// Nonces issued at or before this (ms since `epoch`) are stale: some were forgotten.
    floor: Option<u64>,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Passwords and the key stay out of logs.
        f.debug_struct("DigestAuth")
            .field("config", &self.config)
            .field("users", &self.users.len())
            .field("used", &self.used.len())
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Hex digits of a nonce's MAC (128 bits).
const MAC_HEX: usize = 32;

impl DigestAuth {
    /// A verifier for `users` (name, password) whose nonces are signed with `key` (random per
    /// process) and timed from `epoch`.
    pub fn new(
        config: DigestConfig,
        users: impl IntoIterator<Item = (String, String)>,
        key: [u8; 32],
        epoch: Instant,
    ) -> Self {
        Self {
            config,
            users: users.into_iter().collect(),
            key,
            epoch,
            used: HashMap::new(),
            floor: None,
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// Whether `username` is one of the users.
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The `WWW-Authenticate` values of a challenge at `now`, one per algorithm, preferred
    /// first; `salt` is random per challenge; `stale` tells the client its password was right.
    pub fn challenge(&self, now: Instant, salt: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(self.millis(now), salt);
        let realm = &self.config.realm;
        self.config
            .algorithms
            .iter()
            .map(|algorithm| {
                let mut value = format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    algorithm.name()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    /// Checks `credentials` of a `method` request to `request_uri` at `now`; on success the
    /// nonce's use is recorded (a second use with the same `nc` is then [`DigestError::Stale`]).
    pub fn verify(
        &mut self,
        now: Instant,
        method: &str,
        request_uri: &str,
        credentials: &Credentials,
    ) -> Result<(), DigestError> {
        let password = self
            .users
            .get(&credentials.username)
            .ok_or(DigestError::UnknownUser)?;
        if credentials.realm != self.config.realm {
            return Err(DigestError::WrongRealm);
        }
        let algorithm = match &credentials.algorithm {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name).ok_or(DigestError::Algorithm)?,
        };
        if !self.config.algorithms.contains(&algorithm) {
            return Err(DigestError::Algorithm);
        }
        let qop = match (&credentials.qop, &credentials.nc, &credentials.cnonce) {
            (None, _, _) => None,
            (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
                let count = u32::from_str_radix(nc, 16).map_err(|_| DigestError::Qop)?;
                Some((nc.as_str(), cnonce.as_str(), count))
            }
            _ => return Err(DigestError::Qop),
        };
        if !same_uri(&credentials.uri, request_uri) {
            return Err(DigestError::Uri);
        }
        let expected = response(
            algorithm,
            &credentials.username,
            &self.config.realm,
            password,
            method,
            &credentials.uri,
            &credentials.nonce,
            qop.map(|(nc, cnonce, _)| (nc, cnonce)),
        );
        let given = credentials.response.to_ascii_lowercase();
        let right: bool = expected.as_bytes().ct_eq(given.as_bytes()).into();
        let issued = self.issued(&credentials.nonce);
        let Some(issued) = issued.filter(|_| right) else {
            // A nonce that is not ours (forged, or from before a restart) with an otherwise
            // right response is stale: the client can retry on a fresh one.
            return Err(if right {
                DigestError::Stale
            } else {
                DigestError::Response
            });
        };
        let now_ms = self.millis(now);
        let ttl = u64::try_from(self.config.nonce_ttl.as_millis()).unwrap_or(u64::MAX);
        let expired = issued > now_ms || now_ms - issued >= ttl;
        if expired || self.floor.is_some_and(|floor| issued <= floor) {
            return Err(DigestError::Stale);
        }
        let count = qop.map_or(0, |(_, _, count)| count);
        match self.used.get_mut(&credentials.nonce) {
            Some((_, last)) if count <= *last => return Err(DigestError::Stale),
            Some((_, last)) => *last = count,
            None => {
                self.make_room(now_ms, ttl);
                self.used.insert(credentials.nonce.clone(), (issued, count));
            }
        }
        Ok(())
    }

    /// Used nonces remembered now.
    pub fn remembered(&self) -> usize {
        self.used.len()
    }

    /// Frees a place in the ledger: expired nonces go first, then the oldest-issued one (and
    /// every nonce up to it turns stale).
    fn make_room(&mut self, now_ms: u64, ttl: u64) {
        if self.used.len() < self.config.max_nonces.max(1) {
            return;
        }
        self.used
            .retain(|_, (issued, _)| now_ms.saturating_sub(*issued) < ttl);
        if self.used.len() < self.config.max_nonces.max(1) {
            return;
        }
        let oldest = self
            .used
            .iter()
            .min_by_key(|(_, (issued, _))| *issued)
            .map(|(nonce, (issued, _))| (nonce.clone(), *issued));
        if let Some((nonce, issued)) = oldest {
            self.used.remove(&nonce);
            self.floor = Some(self.floor.map_or(issued, |floor| floor.max(issued)));
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn nonce(&self, issued: u64, salt: u64) -> String {
        let mut nonce = format!("{issued:016x}{salt:016x}");
        let mac = self.mac(&nonce);
        nonce.push_str(&mac);
        nonce
    }

    fn mac(&self, stamp: &str) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(self.config.realm.as_bytes());
        mac.update(b":");
        mac.update(stamp.as_bytes());
        let mut hex = to_hex(&mac.finalize().into_bytes());
        hex.truncate(MAC_HEX);
        hex
    }

    /// When `nonce` was issued, if it is one of ours.
    fn issued(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != 32 + MAC_HEX || !nonce.is_ascii() {
            return None;
        }
        let (stamp, mac) = nonce.split_at(32);
        let expected = self.mac(stamp);
        let ours: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        if !ours {
            return None;
        }
        u64::from_str_radix(&stamp[..16], 16).ok()
    }
}

/// Whether the `uri` a client signed names the Request-URI (RFC 2617 3.2.2.5): the same URI
/// (ignoring case), or one with the same host and port, which is what much equipment signs
/// (sipp signs `sip:host:port` for `sip:user@host:port`). The response covers the signed uri and
/// a nonce cannot be replayed, so the looser form opens nothing.
fn same_uri(signed: &str, request_uri: &str) -> bool {
    let (signed, request_uri) = (signed.trim(), request_uri.trim());
    if signed.eq_ignore_ascii_case(request_uri) {
        return true;
    }
    let host_port = |uri: &str| -> Option<String> {
        let rest = uri.split_once(':')?.1;
        let rest = rest.rsplit('@').next()?;
        let host_port = rest.split([';', '?']).next()?;
        Some(host_port.to_ascii_lowercase())
    };
    matches!((host_port(signed), host_port(request_uri)), (Some(a), Some(b)) if a == b)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
    fn origin() -> Instant {
        Instant::now()
    }

    /// RFC 2617 3.5 (MD5, qop=auth).
    #[test]
    fn rfc2617_md5_vector() {
        let got = response(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    }

    /// RFC 7616 3.9.1, the SHA-256 algorithm RFC 8760 brings to SIP (and its MD5 twin).
    #[test]
    fn rfc7616_sha256_and_md5_vectors() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let compute = |algorithm| {
            response(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                nonce,
                Some(("00000001", cnonce)),
            )
        };
        assert_eq!(
            compute(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(compute(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn parses_authorization_headers() {
        let value = "Digest username=\"alice\",realm=\"voxgate\", nonce=\"abc\", \
                     uri=\"sip:1@h\", response=\"0f\", algorithm=MD5, qop=auth, nc=00000001, \
                     cnonce=\"x\\\"y\", opaque=\"\"";
        let credentials = Credentials::parse(value).expect("parses");
        assert_eq!(credentials.username, "alice");
        assert_eq!(credentials.uri, "sip:1@h");
        assert_eq!(credentials.algorithm.as_deref(), Some("MD5"));
        assert_eq!(credentials.qop.as_deref(), Some("auth"));
        assert_eq!(credentials.nc.as_deref(), Some("00000001"));
        assert_eq!(credentials.cnonce.as_deref(), Some("x\"y"));
        assert_eq!(Credentials::parse("Basic dXNlcjpwYXNz"), None);
        assert_eq!(Credentials::parse("Digest username=\"a\""), None);
        assert_eq!(Credentials::parse("Digest"), None);
    }

    const URI: &str = "sip:+15551234567@voxgate.example";

    fn auth(t0: Instant, max_nonces: usize) -> DigestAuth {
        let config = DigestConfig {
            realm: "carrier".into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_ttl: Duration::from_secs(30),
            max_nonces,
        };
        DigestAuth::new(
            config,
            [("alice".to_owned(), "secret".to_owned())],
            [7; 32],
            t0,
        )
    }

    /// What a client answers to the first challenge value `challenge` with `algorithm`.
    fn answer(
        challenge: &str,
        algorithm: Algorithm,
        password: &str,
        nc: Option<u32>,
    ) -> Credentials {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("nonce")
            .to_owned();
        let nc = nc.map(|n| format!("{n:08x}"));
        let qop = nc.as_deref().map(|nc| (nc, "c0ffee"));
        Credentials {
            username: "alice".into(),
            realm: "carrier".into(),
            response: response(
                algorithm, "alice", "carrier", password, "INVITE", URI, &nonce, qop,
            ),
            nonce,
            uri: URI.into(),
            algorithm: Some(algorithm.name().into()),
            qop: nc.as_ref().map(|_| "auth".into()),
            cnonce: nc.as_ref().map(|_| "c0ffee".into()),
            nc,
        }
    }

    #[test]
    fn challenges_offer_sha256_first_then_md5() {
        let t0 = origin();
        let challenge = auth(t0, 8).challenge(t0, 1, false);
        assert_eq!(challenge.len(), 2);
        assert!(challenge[0].contains("algorithm=SHA-256"), "{challenge:?}");
        assert!(challenge[1].contains("algorithm=MD5"), "{challenge:?}");
        assert!(challenge[0].contains("realm=\"carrier\""));
        assert!(challenge[0].contains("qop=\"auth\""));
        assert!(!challenge[0].contains("stale"));
        assert!(auth(t0, 8).challenge(t0, 1, true)[0].ends_with("stale=true"));
        // Another salt, another nonce.
        assert_ne!(
            auth(t0, 8).challenge(t0, 1, false),
            auth(t0, 8).challenge(t0, 2, false)
        );
    }

    #[test]
    fn right_password_passes_with_either_algorithm() {
        let t0 = origin();
        let mut auth = auth(t0, 8);
        for (i, algorithm) in [Algorithm::Sha256, Algorithm::Md5].into_iter().enumerate() {
            let challenge = &auth.challenge(t0, i as u64, false)[i];
            let credentials = answer(challenge, algorithm, "secret", Some(1));
            let later = t0 + Duration::from_secs(1);
            assert_eq!(auth.verify(later, "INVITE", URI, &credentials), Ok(()));
        }
    }

    #[test]
    fn wrong_password_user_realm_uri_and_method_fail() {
        let t0 = origin();
        let mut auth = auth(t0, 8);
        let challenge = auth.challenge(t0, 1, false)[0].clone();
        let wrong = answer(&challenge, Algorithm::Sha256, "guess", Some(1));
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &wrong),
            Err(DigestError::Response)
        );
        let good = answer(&challenge, Algorithm::Sha256, "secret", Some(1));
        assert_eq!(
            auth.verify(t0, "BYE", URI, &good),
            Err(DigestError::Response)
        );
        assert_eq!(
            auth.verify(t0, "INVITE", "sip:other@elsewhere.example", &good),
            Err(DigestError::Uri)
        );
        assert!(same_uri("sip:127.0.0.1:5060", "sip:service@127.0.0.1:5060"));
        assert!(same_uri("SIP:1@H", "sip:1@h"));
        assert!(!same_uri(
            "sip:127.0.0.1:5061",
            "sip:service@127.0.0.1:5060"
        ));
        let mut user = good.clone();
        user.username = "mallory".into();
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &user),
            Err(DigestError::UnknownUser)
        );
        let mut realm = good.clone();
        realm.realm = "elsewhere".into();
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &realm),
            Err(DigestError::WrongRealm)
        );
        let mut sess = good.clone();
        sess.algorithm = Some("MD5-sess".into());
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &sess),
            Err(DigestError::Algorithm)
        );
        let mut qop = good;
        qop.qop = Some("auth-int".into());
        assert_eq!(auth.verify(t0, "INVITE", URI, &qop), Err(DigestError::Qop));
    }

    #[test]
    fn nonces_expire() {
        let t0 = origin();
        let mut auth = auth(t0, 8);
        let challenge = auth.challenge(t0, 1, false)[0].clone();
        let credentials = answer(&challenge, Algorithm::Sha256, "secret", Some(1));
        let late = t0 + Duration::from_secs(30);
        assert_eq!(
            auth.verify(late, "INVITE", URI, &credentials),
            Err(DigestError::Stale)
        );
        // A fresh challenge at that time works.
        let fresh = auth.challenge(late, 2, false)[0].clone();
        let credentials = answer(&fresh, Algorithm::Sha256, "secret", Some(1));
        assert_eq!(auth.verify(late, "INVITE", URI, &credentials), Ok(()));
    }

    #[test]
    fn replays_are_stale_and_nc_must_grow() {
        let t0 = origin();
        let mut auth = auth(t0, 8);
        let challenge = auth.challenge(t0, 1, false)[0].clone();
        let first = answer(&challenge, Algorithm::Sha256, "secret", Some(1));
        assert_eq!(auth.verify(t0, "INVITE", URI, &first), Ok(()));
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &first),
            Err(DigestError::Stale)
        );
        let second = answer(&challenge, Algorithm::Sha256, "secret", Some(2));
        assert_eq!(auth.verify(t0, "INVITE", URI, &second), Ok(()));
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &first),
            Err(DigestError::Stale)
        );
        // Without qop a nonce is good once.
        let plain = auth.challenge(t0, 2, false)[0].clone();
        let once = answer(&plain, Algorithm::Sha256, "secret", None);
        assert_eq!(auth.verify(t0, "INVITE", URI, &once), Ok(()));
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &once),
            Err(DigestError::Stale)
        );
    }

    #[test]
    fn forged_and_foreign_nonces_are_refused() {
        let t0 = origin();
        let mut auth = auth(t0, 8);
        // A nonce signed by another key (another process, or forged) with a right response:
        // stale, so that a client across a restart retries.
        let other = DigestAuth::new(
            DigestConfig {
                realm: "carrier".into(),
                ..DigestConfig::default()
            },
            [],
            [9; 32],
            t0,
        );
        let foreign = other.challenge(t0, 1, false)[0].clone();
        let credentials = answer(&foreign, Algorithm::Sha256, "secret", Some(1));
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &credentials),
            Err(DigestError::Stale)
        );
        let mut forged = credentials.clone();
        forged.nonce = "0".repeat(64);
        forged.response = response(
            Algorithm::Sha256,
            "alice",
            "carrier",
            "guess",
            "INVITE",
            URI,
            &forged.nonce,
            Some(("00000001", "c0ffee")),
        );
        assert_eq!(
            auth.verify(t0, "INVITE", URI, &forged),
            Err(DigestError::Response)
        );
    }

    #[test]
    fn a_full_ledger_forgets_the_oldest_and_makes_it_stale() {
        let t0 = origin();
        let mut auth = auth(t0, 2);
        let mut used = Vec::new();
        for i in 0..3u64 {
            let at = t0 + Duration::from_millis(i * 10);
            let challenge = auth.challenge(at, i, false)[0].clone();
            let credentials = answer(&challenge, Algorithm::Sha256, "secret", Some(1));
            assert_eq!(auth.verify(at, "INVITE", URI, &credentials), Ok(()));
            used.push(credentials);
            assert!(auth.remembered() <= 2);
        }
        // The first was forgotten: replaying it is stale, not accepted.
        let now = t0 + Duration::from_millis(50);
        assert_eq!(
            auth.verify(now, "INVITE", URI, &used[0]),
            Err(DigestError::Stale)
        );
        assert_eq!(
            auth.verify(now, "INVITE", URI, &used[2]),
            Err(DigestError::Stale)
        );
        let next = answer(
            &auth.challenge(now, 9, false)[0],
            Algorithm::Sha256,
            "secret",
            Some(2),
        );
        assert_eq!(auth.verify(now, "INVITE", URI, &next), Ok(()));
    }

    #[test]
    fn a_client_answers_a_challenge_as_rfc_2617_computes_it() {
        // RFC 2617 3.5's exchange, put in a challenge.
        let challenge = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        assert!(challenge.qop_auth);
        let value = challenge.answer(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(
            value.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{value}"
        );
        assert!(value.contains("nc=00000001"), "{value}");
        assert!(
            value.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{value}"
        );
        // What we send, a server of ours accepts.
        let parsed = Credentials::parse(&value).unwrap();
        assert_eq!(parsed.username, "Mufasa");
        assert_eq!(parsed.qop.as_deref(), Some("auth"));
    }

    #[test]
    fn challenges_a_client_cannot_answer_are_refused() {
        assert!(Challenge::parse("Basic realm=\"x\"").is_none());
        assert!(Challenge::parse("Digest nonce=\"n\"").is_none());
        assert!(Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess").is_none());
        assert!(Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"").is_none());
        let sha = Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256").unwrap();
        assert_eq!(sha.algorithm, Algorithm::Sha256);
        assert!(!sha.qop_auth);
        let value = sha.answer("u", "p", "INVITE", "sip:+1555@carrier", "c", 1);
        assert!(!value.contains("qop"), "{value}");
        assert!(value.contains("algorithm=SHA-256"), "{value}");
    }
}
