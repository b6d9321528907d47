//! Answering a carrier's digest challenge (RFC 3261 22.2: a 401 or 407 to our INVITE) on the leg
//! that faces a trunk, with the trunk's credentials: the INVITE is sent again once, in the same
//! dialog with the next CSeq, carrying `Authorization` or `Proxy-Authorization`.

use std::time::Instant;

use rand::Rng as _;
use rsip::{Header, Method};
use voxgate_sip::dialog;
use voxgate_sip::digest::{Algorithm, Challenge};

use crate::attempt::Attempt;
use crate::io::Output;
use crate::session::Session;

impl<L> Session<L> {
    /// Sends `attempt`'s INVITE again answering the challenge of `response` with the trunk's
    /// credentials, and makes `attempt` that new INVITE; `false` when there is nothing to
    /// answer: not a 401 or 407, no credentials, a Backend's challenge, one answered already, or
    /// no challenge this node can compute (SHA-256 is preferred when several are offered).
    pub(crate) fn answer_challenge(
        &mut self,
        now: Instant,
        attempt: &mut Attempt<L>,
        response: &rsip::Response,
    ) -> bool {
        let (asked, answer) = match response.status_code.code() {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => return false,
        };
        let Some(credentials) = self.config.trunk_credentials.clone() else {
            return false;
        };
        if attempt.authenticated || attempt.backend.is_some() {
            return false;
        }
        let challenge = dialog::header_values(&response.headers, asked)
            .iter()
            .filter_map(|value| Challenge::parse(value))
            .max_by_key(|challenge| challenge.algorithm == Algorithm::Sha256);
        let Some(challenge) = challenge else {
            return false;
        };
        // The same INVITE in the same dialog: a new branch and the next CSeq (RFC 3261 22.2).
        let fresh = attempt
            .leg
            .dialog
            .request(&mut self.rng, Method::Invite, None);
        let mut invite = attempt.invite.clone();
        let mut headers: Vec<Header> = fresh
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .cloned()
            .collect();
        headers.extend(
            invite
                .headers
                .iter()
                .filter(|h| !matches!(h, Header::Via(_) | Header::CSeq(_)))
                .cloned(),
        );
        headers.extend(
            fresh
                .headers
                .iter()
                .filter(|h| matches!(h, Header::CSeq(_)))
                .cloned(),
        );
        let cnonce = format!("{:016x}", self.rng.random::<u64>());
        let uri = invite.uri.to_string();
        let value = challenge.answer(
            &credentials.username,
            &credentials.password,
            "INVITE",
            &uri,
            &cnonce,
            1,
        );
        headers.push(Header::Other(answer.into(), value));
        invite.headers = headers.into();
        self.outputs.push_back(Output::Request {
            to: attempt.leg.address,
            request: invite.clone(),
        });
        attempt.restart(invite, now);
        attempt.authenticated = true;
        true
    }
}
