//! A SIP dialog (RFC 3261 12) from one UA's side, and the requests built from it.
//!
//! Used by every user agent voxgate runs: both legs of the proxy's B2BUA and the loadgen's caller
//! and echo Backend. A dialog here has no authentication and no forking; a Record-Route set is
//! honoured so the UAs also work behind a proxy that stays in the path.

use std::net::SocketAddr;

use rand::Rng;
use rsip::Header;
use rsip::prelude::UntypedHeader as _;

use crate::message::{self, new_branch, new_call_id, new_tag, set_body};

/// The state of one dialog, on either side.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID of the dialog.
    pub call_id: String,
    /// Our advertised SIP address: Via sent-by and Contact host.
    pub local_addr: SocketAddr,
    /// Our URI (From of our requests).
    pub local_uri: String,
    /// Our tag.
    pub local_tag: String,
    /// Our Contact URI.
    pub local_contact: String,
    /// The peer's URI (To of our requests).
    pub remote_uri: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// Where in-dialog requests are addressed (the peer's Contact).
    pub remote_target: String,
    /// Route set (RFC 3261 12.1), in the order our requests carry it.
    pub route_set: Vec<String>,
    /// Our next CSeq number.
    pub local_cseq: u32,
    /// User-Agent header value of our requests.
    pub user_agent: &'static str,
    /// Transport named in our Via (`UDP` or `TCP`).
    pub transport: &'static str,
}

impl Dialog {
    /// A new outgoing dialog from `local_uri` to `remote_uri` (also the Request-URI), with a fresh
    /// Call-ID and tag. The Contact is `sip:{user of local_uri}@{local_addr}`.
    pub fn outgoing(
        rng: &mut impl Rng,
        local_addr: SocketAddr,
        local_uri: String,
        remote_uri: String,
        user_agent: &'static str,
    ) -> Self {
        let user = uri_user(&local_uri).unwrap_or("voxgate").to_owned();
        Self {
            call_id: new_call_id(rng, &local_addr.ip().to_string()),
            local_addr,
            local_uri,
            local_tag: new_tag(rng),
            local_contact: format!("sip:{user}@{local_addr}"),
            remote_uri: remote_uri.clone(),
            remote_tag: None,
            remote_target: remote_uri,
            route_set: Vec::new(),
            local_cseq: 1,
            user_agent,
            transport: "UDP",
        }
    }

    /// The dialog a UAS creates when it answers `invite` with `local_tag`; `contact_user` names
    /// the user part of our Contact.
    pub fn incoming(
        invite: &rsip::Request,
        local_addr: SocketAddr,
        local_tag: String,
        contact_user: &str,
        user_agent: &'static str,
    ) -> Self {
        let from = header_value(&invite.headers, "From").unwrap_or_default();
        let remote_target = header_value(&invite.headers, "Contact")
            .map(|c| name_addr_uri(&c))
            .unwrap_or_else(|| name_addr_uri(&from));
        Self {
            call_id: message::call_id(invite).unwrap_or_default().to_owned(),
            local_addr,
            local_uri: name_addr_uri(&header_value(&invite.headers, "To").unwrap_or_default()),
            local_tag,
            local_contact: format!("sip:{contact_user}@{local_addr}"),
            remote_uri: name_addr_uri(&from),
            remote_tag: message::from_tag(invite),
            remote_target,
            route_set: header_values(&invite.headers, "Record-Route"),
            // RFC 3261 12.1.1: our CSeq space is independent of the peer's.
            local_cseq: 1,
            user_agent,
            transport: "UDP",
        }
    }

    /// The initial INVITE, carrying an SDP offer.
    pub fn invite(&mut self, rng: &mut impl Rng, sdp: String) -> rsip::Request {
        self.request(rng, rsip::Method::Invite, Some(sdp))
    }

    /// A new in-dialog request (BYE, re-INVITE, INFO, ...), with an SDP body when given.
    pub fn request(
        &mut self,
        rng: &mut impl Rng,
        method: rsip::Method,
        sdp: Option<String>,
    ) -> rsip::Request {
        let cseq = self.local_cseq;
        self.local_cseq += 1;
        let mut request = self.build(rng, method, cseq);
        if let Some(sdp) = sdp {
            set_body(&mut request, sdp.into_bytes(), Some("application/sdp"));
        }
        request
    }

    /// Learns the peer's tag, target and route set from a response to our INVITE that creates
    /// the dialog (a 2xx, or a 1xx with a To tag).
    pub fn confirm(&mut self, response: &rsip::Response) {
        if let Some(tag) = message::to_tag(response) {
            self.remote_tag = Some(tag);
        }
        if let Some(contact) = header_value(&response.headers, "Contact") {
            self.remote_target = name_addr_uri(&contact);
        }
        let mut routes = header_values(&response.headers, "Record-Route");
        routes.reverse();
        self.route_set = routes;
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (RFC 3261 13.2.2.4).
    pub fn ack(&self, rng: &mut impl Rng, invite_cseq: u32) -> rsip::Request {
        self.build(rng, rsip::Method::Ack, invite_cseq)
    }

    /// A BYE ending the dialog.
    pub fn bye(&mut self, rng: &mut impl Rng) -> rsip::Request {
        self.request(rng, rsip::Method::Bye, None)
    }

    /// Where the next in-dialog request goes: the first route, else the remote target, when it
    /// names a literal socket address; `None` means "the address the dialog was set up with".
    pub fn next_hop(&self) -> Option<SocketAddr> {
        let uri = self
            .route_set
            .first()
            .map_or(self.remote_target.as_str(), |r| r);
        uri_socket_addr(&name_addr_uri(uri))
    }

    /// A response to `request` with our tag and Contact, and an SDP body when given.
    pub fn response(
        &self,
        request: &rsip::Request,
        code: u16,
        sdp: Option<String>,
    ) -> rsip::Response {
        let mut response = message::response_for(request, code, Some(&self.local_tag));
        if code / 100 == 2 || (code > 100 && code < 200) {
            response
                .headers
                .push(Header::Contact(format!("<{}>", self.local_contact).into()));
        }
        response
            .headers
            .push(Header::Server(self.user_agent.into()));
        if let Some(sdp) = sdp {
            set_body(&mut response, sdp.into_bytes(), Some("application/sdp"));
        }
        response
    }

    fn build(&self, rng: &mut impl Rng, method: rsip::Method, cseq: u32) -> rsip::Request {
        let mut headers = rsip::Headers::default();
        headers.push(Header::Via(
            format!(
                "SIP/2.0/{} {};branch={};rport",
                self.transport,
                self.local_addr,
                new_branch(rng)
            )
            .into(),
        ));
        headers.push(Header::MaxForwards("70".into()));
        for route in &self.route_set {
            headers.push(Header::Route(route.clone().into()));
        }
        headers.push(Header::From(
            format!("<{}>;tag={}", self.local_uri, self.local_tag).into(),
        ));
        let to = match &self.remote_tag {
            Some(tag) => format!("<{}>;tag={tag}", self.remote_uri),
            None => format!("<{}>", self.remote_uri),
        };
        headers.push(Header::To(to.into()));
        headers.push(Header::CallId(self.call_id.clone().into()));
        headers.push(Header::CSeq(format!("{cseq} {method}").into()));
        headers.push(Header::Contact(format!("<{}>", self.local_contact).into()));
        headers.push(Header::UserAgent(self.user_agent.into()));
        headers.push(Header::ContentLength("0".into()));
        let uri = rsip::Uri::try_from(self.remote_target.as_str())
            .or_else(|_| rsip::Uri::try_from(self.remote_uri.as_str()))
            .unwrap_or_default();
        rsip::Request {
            method,
            uri,
            version: rsip::Version::V2,
            headers,
            body: Vec::new(),
        }
    }
}

/// The CANCEL for `invite` (RFC 3261 9.1): same Request-URI, Call-ID, From, To, Route and top
/// Via; CSeq number unchanged with method CANCEL.
pub fn cancel(invite: &rsip::Request) -> rsip::Request {
    let cseq = message::cseq(invite).map_or(1, |(n, _)| n);
    let mut headers = rsip::Headers::default();
    let mut first_via = true;
    for header in invite.headers.iter() {
        match header {
            Header::Via(_) if first_via => {
                first_via = false;
                headers.push(header.clone());
            }
            Header::From(_)
            | Header::To(_)
            | Header::CallId(_)
            | Header::MaxForwards(_)
            | Header::Route(_) => headers.push(header.clone()),
            _ => {}
        }
    }
    headers.push(Header::CSeq(format!("{cseq} CANCEL").into()));
    headers.push(Header::ContentLength("0".into()));
    rsip::Request {
        method: rsip::Method::Cancel,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// Whether `response` answers an INVITE (by its CSeq method).
pub fn is_invite_response(response: &rsip::Response) -> bool {
    matches!(message::cseq(response), Some((_, rsip::Method::Invite)))
}

/// The first value of header `name` (case-insensitive full name).
pub fn header_value(headers: &rsip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|header| {
        let (header_name, value) = name_and_value(header)?;
        header_name
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// Every value of header `name`; Route and Record-Route values split at top-level commas.
pub fn header_values(headers: &rsip::Headers, name: &str) -> Vec<String> {
    let routes = name.eq_ignore_ascii_case("Record-Route") || name.eq_ignore_ascii_case("Route");
    let mut values = Vec::new();
    for header in headers.iter() {
        let Some((header_name, value)) = name_and_value(header) else {
            continue;
        };
        if header_name.eq_ignore_ascii_case(name) {
            if routes {
                values.extend(split_name_addrs(value.trim()));
            } else {
                values.push(value.trim().to_owned());
            }
        }
    }
    values
}

/// A header's name and value without formatting it: the headers voxgate looks up by name are
/// read in place; only a rarer one is rendered (`Name: value`) and split.
fn name_and_value(
    header: &Header,
) -> Option<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    use std::borrow::Cow::{Borrowed, Owned};
    let (name, value) = match header {
        Header::Via(h) => ("Via", h.value()),
        Header::From(h) => ("From", h.value()),
        Header::To(h) => ("To", h.value()),
        Header::CallId(h) => ("Call-ID", h.value()),
        Header::CSeq(h) => ("CSeq", h.value()),
        Header::Contact(h) => ("Contact", h.value()),
        Header::Route(h) => ("Route", h.value()),
        Header::RecordRoute(h) => ("Record-Route", h.value()),
        Header::MaxForwards(h) => ("Max-Forwards", h.value()),
        Header::RetryAfter(h) => ("Retry-After", h.value()),
        Header::ContentType(h) => ("Content-Type", h.value()),
        Header::Other(name, value) => {
            return Some((Borrowed(name.as_str()), Borrowed(value.as_str())));
        }
        other => {
            let text = other.to_string();
            let (name, value) = text.split_once(':')?;
            return Some((Owned(name.trim().to_owned()), Owned(value.to_owned())));
        }
    };
    Some((Borrowed(name), Borrowed(value)))
}

fn split_name_addrs(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut angle = 0u32;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle += 1,
            '>' if !quoted => angle = angle.saturating_sub(1),
            ',' if !quoted && angle == 0 => {
                parts.push(value[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim().to_owned());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The URI inside a name-addr (`"Bob" <sip:bob@host>;tag=x` -> `sip:bob@host`) or addr-spec.
pub fn name_addr_uri(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => value[start + 1..end].to_owned(),
        _ => value.split(';').next().unwrap_or("").trim().to_owned(),
    }
}

/// Whether `user` can stand as the user part of a SIP URI as it is (RFC 3261 25.1 `user`
/// without escapes, `;` and `?`, which would read as URI parameters), 1 to 64 characters: a phone number (`+15551234567`) or a name.
pub fn is_sip_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,/".contains(c))
}

/// The user part of a SIP URI (`sip:alice@host` -> `alice`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split([':', ';']).next()?;
    (!user.is_empty()).then_some(user)
}

/// The host part of a SIP URI, without port or parameters.
pub fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let host_port = rest.rsplit('@').next()?.split([';', '?']).next()?;
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next();
    }
    host_port.split(':').next().filter(|h| !h.is_empty())
}

/// `sip:user@1.2.3.4:5060;params` -> 1.2.3.4:5060 (5060 when no port); `None` for host names.
pub fn uri_socket_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let host_port = rest.rsplit('@').next()?.split([';', '?']).next()?;
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = host_port
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, 5060))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn sip_users_are_numbers_and_names_without_uri_syntax() {
        for good in ["+15551234567", "alice", "a.b-c_d", "*67"] {
            assert!(is_sip_user(good), "{good}");
        }
        let long = "1".repeat(65);
        for bad in [
            "",
            "a b",
            "a@b",
            "a;user=phone",
            "a?x",
            "a:b",
            "<a>",
            long.as_str(),
        ] {
            assert!(!is_sip_user(bad), "{bad}");
        }
    }

    #[test]
    fn headers_by_name() {
        let mut headers = rsip::Headers::default();
        headers.push(Header::MaxForwards("69".into()));
        headers.push(Header::RecordRoute("<sip:p1;lr>, <sip:p2;lr>".into()));
        headers.push(Header::Other("X-Voxgate-Trunk".into(), "carrier".into()));
        headers.push(Header::Allow("INVITE, BYE".into()));
        assert_eq!(
            header_value(&headers, "max-forwards").as_deref(),
            Some("69")
        );
        assert_eq!(
            header_value(&headers, "x-voxgate-trunk").as_deref(),
            Some("carrier")
        );
        assert_eq!(
            header_value(&headers, "Allow").as_deref(),
            Some("INVITE, BYE")
        );
        assert_eq!(header_value(&headers, "Contact"), None);
        assert_eq!(
            header_values(&headers, "Record-Route"),
            vec!["<sip:p1;lr>", "<sip:p2;lr>"]
        );
    }

    #[test]
    fn uri_and_name_addr_parts() {
        let from = "\"Alice\" <sip:alice@10.0.0.1:5070;transport=udp>;tag=abc;x=y";
        assert_eq!(name_addr_uri(from), "sip:alice@10.0.0.1:5070;transport=udp");
        assert_eq!(uri_user("sip:alice@10.0.0.1:5070"), Some("alice"));
        assert_eq!(uri_user("sip:10.0.0.1"), None);
        assert_eq!(
            uri_host("sip:alice@Example.com:5070;lr"),
            Some("Example.com")
        );
        assert_eq!(uri_host("sip:[::1]:5060"), Some("::1"));
        assert_eq!(
            uri_socket_addr("sip:a@127.0.0.1:5080;lr"),
            Some("127.0.0.1:5080".parse().unwrap())
        );
        assert_eq!(
            uri_socket_addr("sip:127.0.0.2"),
            Some("127.0.0.2:5060".parse().unwrap())
        );
        assert_eq!(uri_socket_addr("sip:example.com"), None);
        assert_eq!(
            split_name_addrs("<sip:p1;lr>, \"a,b\" <sip:p2;lr>"),
            vec!["<sip:p1;lr>", "\"a,b\" <sip:p2;lr>"]
        );
    }

    #[test]
    fn invite_answer_bye_build_one_dialog() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let local: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let mut uac = Dialog::outgoing(
            &mut rng,
            local,
            "sip:alice@127.0.0.1:5070".into(),
            "sip:echo@127.0.0.1:5080".into(),
            "test",
        );
        let invite = uac.invite(&mut rng, "v=0\r\n".into());
        let text = invite.to_string();
        assert!(
            text.starts_with("INVITE sip:echo@127.0.0.1:5080 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 INVITE"));
        assert!(text.contains("Contact: <sip:alice@127.0.0.1:5070>"));
        assert!(text.contains("Content-Length: 5"));
        // What we build parses and validates.
        crate::parse(text.as_bytes()).unwrap();

        let server: SocketAddr = "127.0.0.1:5080".parse().unwrap();
        let uas = Dialog::incoming(&invite, server, "srv".into(), "echo", "test");
        assert_eq!(uas.remote_tag.as_deref(), Some(uac.local_tag.as_str()));
        assert_eq!(uas.next_hop(), Some(local));

        let ok = uas.response(&invite, 200, Some("v=0\r\n".into()));
        let ok_text = ok.to_string();
        assert!(ok_text.starts_with("SIP/2.0 200"));
        assert!(ok_text.contains(";tag=srv"));
        assert!(ok_text.contains("Contact: <sip:echo@127.0.0.1:5080>"));
        crate::parse(ok_text.as_bytes()).unwrap();
        uac.confirm(&ok);
        assert_eq!(uac.remote_tag.as_deref(), Some("srv"));
        assert_eq!(uac.next_hop(), Some(server));
        assert!(is_invite_response(&ok));

        let bye = uac.bye(&mut rng);
        assert!(bye.to_string().contains("CSeq: 2 BYE"));
        assert!(bye.to_string().contains(";tag=srv"));
        let cancel = cancel(&invite);
        let cancel_text = cancel.to_string();
        assert!(cancel_text.contains("CSeq: 1 CANCEL"));
        assert_eq!(message::top_branch(&cancel), message::top_branch(&invite));
    }
}
