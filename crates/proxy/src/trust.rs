//! Which trunk a new request belongs to, judged before it costs a slot or a Backend: by source
//! address (the trunk's `sources`, most specific prefix), and for trunks with `users` by digest
//! credentials (RFC 3261 22 over `voxgate_sip::digest`). A trunk with sources and users wants
//! both; a trunk with users and no sources admits its users from any address. Backends are
//! judged before this (their calls go out through a trunk).
//!
//! No I/O here: the time and the challenge's salt are passed in. The digest verifiers (one per
//! trunk with users, each with its replay ledger) sit behind a mutex taken only for an INVITE
//! that carries credentials or needs a challenge.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use rsip::Header;
use voxgate_cluster::{Trunk, TrunkTable};
use voxgate_sip::dialog::header_value;
use voxgate_sip::digest::{Algorithm, Credentials, DigestAuth, DigestConfig, DigestError};

use crate::config::Config;

/// The verdict on a new request.
#[derive(Debug)]
pub enum Decision<'a> {
    /// It belongs to this trunk.
    Admit(&'a Trunk),
    /// Answer 401 with these `WWW-Authenticate` values.
    Challenge(Vec<String>),
    /// Answer 403 (`reason` labels the refusal metric).
    Refuse(&'static str),
}

/// Trunks and their digest users.
#[derive(Debug)]
pub struct Trust {
    trunks: TrunkTable,
    /// By trunk name: trunks with users.
    auth: HashMap<String, Mutex<DigestAuth>>,
    /// Trunks with users and no sources, in configuration order.
    anywhere: Vec<String>,
}

impl Trust {
    /// The trust `config` describes, digest users' passwords read with `env` (for
    /// `password_env`); nonces are signed with `key` and timed from `epoch`.
    pub fn new(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        key: [u8; 32],
        epoch: Instant,
    ) -> Result<Self, crate::config::ConfigError> {
        let mut auth = HashMap::new();
        let mut anywhere = Vec::new();
        for (i, trunk) in config.trunks.iter().enumerate() {
            if !trunk.authenticates() {
                continue;
            }
            let mut users = Vec::new();
            for (j, user) in trunk.users.iter().enumerate() {
                let password =
                    user.resolve_password(env)
                        .map_err(|reason| crate::config::ConfigError {
                            key: format!("trunks[{i}].users[{j}]"),
                            reason,
                        })?;
                users.push((user.name.clone(), password));
            }
            let digest = DigestConfig {
                realm: trunk
                    .realm
                    .clone()
                    .unwrap_or_else(|| config.sip.realm.clone()),
                algorithms: trunk
                    .algorithms
                    .iter()
                    .filter_map(|a| Algorithm::parse(a))
                    .collect(),
                nonce_ttl: config.sip.nonce_ttl,
                ..DigestConfig::default()
            };
            auth.insert(
                trunk.name.clone(),
                Mutex::new(DigestAuth::new(digest, users, key, epoch)),
            );
            if trunk.sources.is_empty() {
                anywhere.push(trunk.name.clone());
            }
        }
        Ok(Self {
            trunks: config.trunk_table(),
            auth,
            anywhere,
        })
    }

    /// The trunks.
    pub fn trunks(&self) -> &TrunkTable {
        &self.trunks
    }

    /// The trunk whose `sources` hold `source` (no credentials asked).
    pub fn by_source(&self, source: IpAddr) -> Option<&Trunk> {
        self.trunks.inbound(source)
    }

    /// Judges a new INVITE from `source` at `now`; `salt` makes a challenge's nonce unique.
    pub fn invite(
        &self,
        now: Instant,
        salt: u64,
        source: SocketAddr,
        request: &rsip::Request,
    ) -> Decision<'_> {
        let credentials = header_value(&request.headers, "Authorization")
            .or_else(|| header_value(&request.headers, "Proxy-Authorization"))
            .and_then(|value| Credentials::parse(&value));
        if let Some(trunk) = self.by_source(source.ip()) {
            let Some(auth) = self.auth.get(&trunk.name) else {
                return Decision::Admit(trunk);
            };
            return self.verify(now, salt, trunk, auth, credentials.as_ref(), request);
        }
        if self.anywhere.is_empty() {
            return Decision::Refuse("unknown_source");
        }
        let Some(credentials) = credentials else {
            // One challenge per realm: the caller answers the one it has a password for.
            let mut realms = Vec::new();
            let mut values = Vec::new();
            for name in &self.anywhere {
                let auth = lock(&self.auth[name]);
                if !realms.contains(&auth.realm().to_owned()) {
                    realms.push(auth.realm().to_owned());
                    values.extend(auth.challenge(now, salt, false));
                }
            }
            return Decision::Challenge(values);
        };
        let found = self.anywhere.iter().find(|name| {
            let auth = lock(&self.auth[*name]);
            auth.realm() == credentials.realm && auth.has_user(&credentials.username)
        });
        let trunk = found.and_then(|name| self.trunks.trunks().iter().find(|t| &t.name == name));
        match trunk {
            Some(trunk) => {
                let auth = &self.auth[&trunk.name];
                self.verify(now, salt, trunk, auth, Some(&credentials), request)
            }
            None => Decision::Refuse("bad_credentials"),
        }
    }

    fn verify<'a>(
        &self,
        now: Instant,
        salt: u64,
        trunk: &'a Trunk,
        auth: &Mutex<DigestAuth>,
        credentials: Option<&Credentials>,
        request: &rsip::Request,
    ) -> Decision<'a> {
        let mut auth = lock(auth);
        let Some(credentials) = credentials else {
            return Decision::Challenge(auth.challenge(now, salt, false));
        };
        let method = voxgate_sip::message::method_name(&request.method);
        match auth.verify(now, method, &request.uri.to_string(), credentials) {
            Ok(()) => Decision::Admit(trunk),
            Err(DigestError::Stale) => Decision::Challenge(auth.challenge(now, salt, true)),
            Err(err) => {
                tracing::info!(trunk = %trunk.name, user = %credentials.username, %err, "digest credentials refused");
                Decision::Refuse("bad_credentials")
            }
        }
    }
}

/// The headers of a 401 carrying `challenge`.
pub fn challenge_headers(challenge: Vec<String>) -> Vec<Header> {
    challenge
        .into_iter()
        .map(|value| Header::WwwAuthenticate(value.into()))
        .collect()
}

fn lock(auth: &Mutex<DigestAuth>) -> std::sync::MutexGuard<'_, DigestAuth> {
    auth.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use voxgate_sip::digest;

    use super::*;

    #[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
    fn origin() -> Instant {
        Instant::now()
    }

    const TOML: &str = "\
        [[trunks]]\nname = \"ip-carrier\"\nsources = [\"192.0.2.0/24\"]\n\
        [[trunks]]\nname = \"pbx\"\nsources = [\"198.51.100.0/24\"]\nrealm = \"pbx.example\"\n\
        [[trunks.users]]\nname = \"pbx1\"\npassword = \"s3cret\"\n\
        [[trunks]]\nname = \"roaming\"\nalgorithms = [\"MD5\"]\n\
        [[trunks.users]]\nname = \"alice\"\npassword_env = \"ALICE_PW\"\n";

    fn trust(t0: Instant) -> Trust {
        let config = crate::config::parse_str("test", TOML, []).expect("config");
        config.validate().expect("valid");
        let env = |name: &str| (name == "ALICE_PW").then(|| "wonderland".to_owned());
        Trust::new(&config, &env, [1; 32], t0).expect("trust")
    }

    fn invite(authorization: Option<String>) -> rsip::Request {
        let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let text = format!(
            "INVITE sip:100@voxgate.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@h>;tag=1\r\nTo: <sip:100@voxgate.example>\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        match voxgate_sip::parse(text.as_bytes()).expect("parses") {
            rsip::SipMessage::Request(request) => request,
            rsip::SipMessage::Response(_) => unreachable!(),
        }
    }

    /// The Authorization a client sends for the first challenge value.
    fn answer(challenge: &str, realm: &str, user: &str, password: &str) -> String {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("nonce");
        let algorithm = if challenge.contains("SHA-256") {
            Algorithm::Sha256
        } else {
            Algorithm::Md5
        };
        let uri = "sip:100@voxgate.example";
        let response = digest::response(
            algorithm,
            user,
            realm,
            password,
            "INVITE",
            uri,
            nonce,
            Some(("00000001", "abc")),
        );
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"abc\"",
            algorithm.name()
        )
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn ip_trunks_admit_by_source_and_strangers_are_refused() {
        let t0 = origin();
        let trust = trust(t0);
        match trust.invite(t0, 1, addr("192.0.2.9:5060"), &invite(None)) {
            Decision::Admit(trunk) => assert_eq!(trunk.name, "ip-carrier"),
            other => panic!("{other:?}"),
        }
        // With a trunk that admits from anywhere, a stranger is challenged for its realm.
        match trust.invite(t0, 1, addr("203.0.113.1:5060"), &invite(None)) {
            Decision::Challenge(values) => {
                assert_eq!(values.len(), 1);
                assert!(values[0].contains("realm=\"voxgate\""), "{values:?}");
                assert!(values[0].contains("algorithm=MD5"), "{values:?}");
            }
            other => panic!("{other:?}"),
        }
        let config = crate::config::parse_str(
            "test",
            "[[trunks]]\nname = \"c\"\nsources = [\"192.0.2.0/24\"]\n",
            [],
        )
        .expect("config");
        let strict = Trust::new(&config, &|_| None, [1; 32], t0).expect("trust");
        assert!(matches!(
            strict.invite(t0, 1, addr("203.0.113.1:5060"), &invite(None)),
            Decision::Refuse("unknown_source")
        ));
    }

    #[test]
    fn digest_trunks_challenge_then_admit_the_right_password_only() {
        let t0 = origin();
        let trust = trust(t0);
        let pbx = addr("198.51.100.5:5060");
        let Decision::Challenge(challenge) = trust.invite(t0, 1, pbx, &invite(None)) else {
            panic!("no challenge");
        };
        assert_eq!(challenge.len(), 2, "SHA-256 and MD5: {challenge:?}");
        let at = t0 + Duration::from_secs(1);
        let good = answer(&challenge[0], "pbx.example", "pbx1", "s3cret");
        match trust.invite(at, 2, pbx, &invite(Some(good.clone()))) {
            Decision::Admit(trunk) => assert_eq!(trunk.name, "pbx"),
            other => panic!("{other:?}"),
        }
        // The same credentials again: a replay, challenged afresh with stale=true.
        match trust.invite(at, 3, pbx, &invite(Some(good))) {
            Decision::Challenge(values) => assert!(values[0].contains("stale=true")),
            other => panic!("{other:?}"),
        }
        let bad = answer(&challenge[1], "pbx.example", "pbx1", "guess");
        assert!(matches!(
            trust.invite(at, 4, pbx, &invite(Some(bad))),
            Decision::Refuse("bad_credentials")
        ));
        // The PBX's password from another address: not the PBX trunk (it wants its sources).
        let elsewhere = addr("203.0.113.1:5060");
        let creds = answer(&challenge[0], "pbx.example", "pbx1", "s3cret");
        assert!(matches!(
            trust.invite(at, 5, elsewhere, &invite(Some(creds))),
            Decision::Refuse("bad_credentials")
        ));
        // A roaming user from anywhere, its password from the environment.
        let Decision::Challenge(challenge) = trust.invite(at, 6, elsewhere, &invite(None)) else {
            panic!("no challenge");
        };
        let alice = answer(&challenge[0], "voxgate", "alice", "wonderland");
        match trust.invite(at, 7, elsewhere, &invite(Some(alice))) {
            Decision::Admit(trunk) => assert_eq!(trunk.name, "roaming"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_password_variable_names_the_user() {
        let config = crate::config::parse_str("test", TOML, []).expect("config");
        let err = Trust::new(&config, &|_| None, [1; 32], origin()).expect_err("no env");
        assert_eq!(err.key, "trunks[2].users[0]");
        assert!(err.reason.contains("ALICE_PW"), "{err}");
    }
}
