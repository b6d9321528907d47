//! What the far side learns of who called and why: the caller's identity headers and the
//! headers a trunk's `pass_headers` allow, copied from the caller's INVITE into the far INVITE.
//!
//! The mapping (also in the README, "Caller identity"):
//!
//! | caller's INVITE | far INVITE |
//! |---|---|
//! | From display name and user | From display name and user (host: this node; tag: ours) |
//! | P-Asserted-Identity, P-Preferred-Identity, Privacy, Diversion, History-Info | the same, every value, in order |
//! | Request-URI | `X-Voxgate-Request-URI` (toward a Backend only) |
//! | (the trunk it came from) | `X-Voxgate-Trunk` (toward a Backend only) |
//! | headers named by `pass_headers` globs (`X-*`) | the same |
//!
//! Never copied, whatever the globs say: the headers each leg owns (Via, From, To, Call-ID,
//! CSeq, Contact, Route, Max-Forwards, Content-*, Allow, Supported, Require, session timers,
//! credentials and challenges, User-Agent, ...), compact one-letter forms, and `X-Voxgate-*`,
//! which only this node writes (a caller cannot pose as another trunk). Privacy is carried, not
//! applied: the Backend is inside the trust domain (RFC 3325) and must honour `Privacy: id`.

use rsip::Header;

/// Which headers cross from the caller's INVITE to the far INVITE; `Default` passes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Pass the From display name and the identity headers ([`IDENTITY_HEADERS`]).
    pub identity: bool,
    /// Name the trunk (`X-Voxgate-Trunk`) and the caller's Request-URI
    /// (`X-Voxgate-Request-URI`): set toward a Backend, not toward a carrier.
    pub trunk: Option<String>,
    /// Header-name globs (`*` matches any run of characters; case-insensitive) passed as well.
    pub pass_headers: Vec<String>,
}

/// The caller's identity headers, passed when [`IdentityPolicy::identity`] is set.
pub const IDENTITY_HEADERS: &[&str] = &[
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Diversion",
    "History-Info",
];

/// Headers a leg owns: never copied from the other side.
const OWNED: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Route",
    "Record-Route",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Content-Language",
    "Allow",
    "Allow-Events",
    "Supported",
    "Require",
    "Proxy-Require",
    "Unsupported",
    "Session-Expires",
    "Min-SE",
    "RSeq",
    "RAck",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authentication-Info",
    "Expires",
    "Event",
    "Subscription-State",
    "Refer-To",
    "Referred-By",
    "Replaces",
    "Join",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "User-Agent",
    "Server",
    "Retry-After",
];

/// Prefix of the headers only this node writes.
const OURS: &str = "X-Voxgate-";

impl IdentityPolicy {
    /// Copies into `far` (our INVITE) what the policy passes of `caller` (the caller's INVITE).
    pub fn apply(&self, caller: &rsip::Request, far: &mut rsip::Request) {
        if self.identity
            && let Some(display) = display_name(caller)
        {
            for header in far.headers.iter_mut() {
                if let Header::From(from) = header {
                    let ours = from.to_string();
                    let value = ours.split_once(':').map_or("", |(_, v)| v.trim());
                    *header = Header::From(format!("\"{display}\" {value}").into());
                }
            }
        }
        for header in caller.headers.iter() {
            let text = header.to_string();
            let Some((name, value)) = text.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if self.passes(name) {
                far.headers
                    .push(Header::Other(name.to_owned(), value.trim().to_owned()));
            }
        }
        if let Some(trunk) = &self.trunk {
            far.headers
                .push(Header::Other("X-Voxgate-Trunk".into(), trunk.clone()));
            far.headers.push(Header::Other(
                "X-Voxgate-Request-URI".into(),
                caller.uri.to_string(),
            ));
        }
    }

    /// Whether a caller's header called `name` crosses.
    pub fn passes(&self, name: &str) -> bool {
        if self.identity
            && IDENTITY_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        let owned = name.len() <= 1
            || OWNED.iter().any(|h| h.eq_ignore_ascii_case(name))
            || IDENTITY_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            || name
                .get(..OURS.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(OURS));
        !owned && self.pass_headers.iter().any(|glob| matches(glob, name))
    }
}

/// The display name of the caller's From, made safe to quote; `None` when it has none.
fn display_name(caller: &rsip::Request) -> Option<String> {
    let from = voxgate_sip::dialog::header_value(&caller.headers, "From")?;
    let (display, _) = from.split_once('<')?;
    let display: String = display
        .trim()
        .trim_matches('"')
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ' || !c.is_ascii()) && *c != '"' && *c != '\\')
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let display = display.trim();
    (!display.is_empty()).then(|| display.to_owned())
}

/// Whether `name` matches `glob` (`*` any run of characters), ignoring ASCII case.
fn matches(glob: &str, name: &str) -> bool {
    let (glob, name) = (glob.as_bytes(), name.as_bytes());
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, n));
            g += 1;
        } else if g < glob.len() && glob[g].eq_ignore_ascii_case(&name[n]) {
            g += 1;
            n += 1;
        } else if let Some((sg, sn)) = star {
            g = sg + 1;
            n = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> rsip::Request {
        match voxgate_sip::parse(text.as_bytes()).expect("parses") {
            rsip::SipMessage::Request(request) => request,
            rsip::SipMessage::Response(_) => unreachable!(),
        }
    }

    const CALLER: &str = "INVITE sip:+15550001111@carrier.example;user=phone SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
        From: \"Alice Smith\" <sip:+15552223333@carrier.example>;tag=a\r\n\
        To: <sip:+15550001111@carrier.example>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
        P-Asserted-Identity: <sip:+15552223333@carrier.example>\r\nPrivacy: id\r\n\
        Diversion: <sip:+15559998888@carrier.example>;reason=unconditional\r\n\
        Diversion: <sip:+15557776666@carrier.example>;reason=no-answer\r\n\
        X-Account: 42\r\nX-Secret: no\r\nX-Voxgate-Trunk: spoofed\r\nUser-Agent: SBC\r\n\
        Content-Length: 0\r\n\r\n";

    const FAR: &str = "INVITE sip:+15550001111@10.0.0.5:5080 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n\
        From: <sip:+15552223333@10.0.0.1>;tag=ours\r\nTo: <sip:+15550001111@10.0.0.5:5080>\r\n\
        Call-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

    fn values(request: &rsip::Request, name: &str) -> Vec<String> {
        voxgate_sip::dialog::header_values(&request.headers, name)
    }

    #[test]
    fn a_backend_learns_who_called_and_why() {
        let policy = IdentityPolicy {
            identity: true,
            trunk: Some("carrier".into()),
            pass_headers: vec!["X-Acc*".into(), "x-voxgate-*".into(), "Via".into()],
        };
        let mut far = request(FAR);
        policy.apply(&request(CALLER), &mut far);
        assert_eq!(
            values(&far, "From"),
            ["\"Alice Smith\" <sip:+15552223333@10.0.0.1>;tag=ours"]
        );
        assert_eq!(
            values(&far, "P-Asserted-Identity"),
            ["<sip:+15552223333@carrier.example>"]
        );
        assert_eq!(values(&far, "Privacy"), ["id"]);
        assert_eq!(values(&far, "Diversion").len(), 2);
        assert!(values(&far, "Diversion")[1].contains("no-answer"));
        assert_eq!(values(&far, "X-Account"), ["42"]);
        assert!(values(&far, "X-Secret").is_empty());
        // The caller's own X-Voxgate-Trunk never crosses, whatever the globs: ours does.
        assert_eq!(values(&far, "X-Voxgate-Trunk"), ["carrier"]);
        assert_eq!(
            values(&far, "X-Voxgate-Request-URI"),
            ["sip:+15550001111@carrier.example;user=phone"]
        );
        assert_eq!(values(&far, "Via").len(), 1);
        assert!(values(&far, "User-Agent").is_empty());
    }

    #[test]
    fn toward_a_carrier_no_trunk_context_and_nothing_by_default() {
        let carrier = IdentityPolicy {
            identity: true,
            trunk: None,
            pass_headers: vec!["X-*".into()],
        };
        let mut far = request(FAR);
        carrier.apply(&request(CALLER), &mut far);
        assert!(values(&far, "X-Voxgate-Trunk").is_empty());
        assert!(values(&far, "X-Voxgate-Request-URI").is_empty());
        assert_eq!(values(&far, "X-Secret"), ["no"]);
        assert_eq!(values(&far, "Privacy"), ["id"]);

        let mut far = request(FAR);
        IdentityPolicy::default().apply(&request(CALLER), &mut far);
        assert_eq!(
            far.headers.iter().count(),
            request(FAR).headers.iter().count()
        );
        assert_eq!(
            values(&far, "From"),
            ["<sip:+15552223333@10.0.0.1>;tag=ours"]
        );
    }

    #[test]
    fn globs_match_names_case_insensitively() {
        assert!(matches("X-*", "x-account"));
        assert!(matches("*-Id", "X-Tenant-ID"));
        assert!(matches("X-*-Id", "X-Tenant-Id"));
        assert!(matches("*", "anything"));
        assert!(!matches("X-*", "Y-Account"));
        assert!(!matches("X-Account", "X-Accounts"));
        let policy = IdentityPolicy {
            pass_headers: vec!["*".into()],
            ..IdentityPolicy::default()
        };
        for owned in [
            "Via",
            "call-id",
            "i",
            "Session-Expires",
            "X-Voxgate-Call",
            "Privacy",
        ] {
            assert!(!policy.passes(owned), "{owned}");
        }
        assert!(policy.passes("X-Anything"));
    }
}
