//! A SIP dialog as the loadgen's user agents see it, and the messages built from it.
//!
//! The loadgen is a plain UA: no authentication, no forking; a Record-Route set is honoured so
//! it also works through a proxy that stays in the path.

use std::net::SocketAddr;

use rand::Rng;
use rsip::prelude::*;

/// The state of one dialog (RFC 3261 12), on either side.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID of the dialog.
    pub call_id: String,
    /// Our SIP address, used in Via and Contact.
    pub local_addr: SocketAddr,
    /// Our URI (From of our requests).
    pub local_uri: String,
    /// Our tag.
    pub local_tag: String,
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
}

impl Dialog {
    /// A new outgoing call from `local_addr` to `request_uri`.
    pub fn outgoing(rng: &mut impl Rng, local_addr: SocketAddr, request_uri: String) -> Self {
        Self {
            call_id: format!("{}@{}", token(rng, 20), local_addr.ip()),
            local_addr,
            local_uri: format!("sip:loadgen@{local_addr}"),
            local_tag: token(rng, 10),
            remote_uri: request_uri.clone(),
            remote_tag: None,
            remote_target: request_uri,
            route_set: Vec::new(),
            local_cseq: 1,
        }
    }

    /// The dialog a UAS creates when it answers `invite` with `local_tag`.
    pub fn incoming(invite: &rsip::Request, local_addr: SocketAddr, local_tag: String) -> Self {
        let header = |name: &str| header_value(&invite.headers, name).unwrap_or_default();
        let from = header("From");
        let remote_target = header("Contact");
        Self {
            call_id: header("Call-ID"),
            local_addr,
            local_uri: name_addr_uri(&header("To")),
            local_tag,
            remote_uri: name_addr_uri(&from),
            remote_tag: tag_param(&from),
            remote_target: if remote_target.is_empty() {
                name_addr_uri(&from)
            } else {
                name_addr_uri(&remote_target)
            },
            route_set: header_values(&invite.headers, "Record-Route"),
            local_cseq: 1,
        }
    }

    /// The initial INVITE, carrying `sdp`.
    pub fn invite(&mut self, rng: &mut impl Rng, sdp: String) -> rsip::Request {
        let cseq = self.next_cseq();
        let mut request = self.request(rng, rsip::Method::Invite, cseq);
        request.headers.push(rsip::Header::Other(
            "Content-Type".into(),
            "application/sdp".into(),
        ));
        request.body = sdp.into_bytes();
        set_content_length(&mut request.headers, request.body.len());
        request
    }

    /// Learns the peer's tag, target and route set from a 2xx to our INVITE.
    pub fn confirm(&mut self, response: &rsip::Response) {
        let to = header_value(&response.headers, "To").unwrap_or_default();
        self.remote_tag = tag_param(&to);
        if let Some(contact) = header_value(&response.headers, "Contact") {
            self.remote_target = name_addr_uri(&contact);
        }
        let mut routes = header_values(&response.headers, "Record-Route");
        routes.reverse();
        self.route_set = routes;
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (RFC 3261 13.2.2.4).
    pub fn ack(&self, rng: &mut impl Rng, invite_cseq: u32) -> rsip::Request {
        self.request(rng, rsip::Method::Ack, invite_cseq)
    }

    /// A BYE ending the dialog.
    pub fn bye(&mut self, rng: &mut impl Rng) -> rsip::Request {
        let cseq = self.next_cseq();
        self.request(rng, rsip::Method::Bye, cseq)
    }

    /// Where the next in-dialog request goes: the first route, else the remote target, if it
    /// names a literal socket address; `None` means "use the address the call was sent to".
    pub fn next_hop(&self) -> Option<SocketAddr> {
        let uri = self.route_set.first().map_or(self.remote_target.as_str(), |r| r);
        uri_socket_addr(&name_addr_uri(uri))
    }

    fn next_cseq(&mut self) -> u32 {
        let cseq = self.local_cseq;
        self.local_cseq += 1;
        cseq
    }

    fn request(&self, rng: &mut impl Rng, method: rsip::Method, cseq: u32) -> rsip::Request {
        let mut headers = rsip::Headers::default();
        headers.push(rsip::Header::Via(
            format!(
                "SIP/2.0/UDP {};branch=z9hG4bK{};rport",
                self.local_addr,
                token(rng, 16)
            )
            .into(),
        ));
        headers.push(rsip::Header::MaxForwards("70".into()));
        for route in &self.route_set {
            headers.push(rsip::Header::Route(route.clone().into()));
        }
        headers.push(rsip::Header::From(
            format!("<{}>;tag={}", self.local_uri, self.local_tag).into(),
        ));
        let to = match &self.remote_tag {
            Some(tag) => format!("<{}>;tag={tag}", self.remote_uri),
            None => format!("<{}>", self.remote_uri),
        };
        headers.push(rsip::Header::To(to.into()));
        headers.push(rsip::Header::CallId(self.call_id.clone().into()));
        headers.push(rsip::Header::CSeq(format!("{cseq} {method}").into()));
        headers.push(rsip::Header::Contact(
            format!("<sip:loadgen@{}>", self.local_addr).into(),
        ));
        headers.push(rsip::Header::UserAgent(USER_AGENT.into()));
        headers.push(rsip::Header::ContentLength("0".into()));
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

/// The User-Agent and Server header value.
pub const USER_AGENT: &str = concat!("voxgate-loadgen/", env!("CARGO_PKG_VERSION"));

/// A response to `request` (RFC 3261 8.2.6): Via, From, Call-ID and CSeq copied; To gets
/// `to_tag` when given and the request's To has none.
pub fn response(
    request: &rsip::Request,
    code: u16,
    to_tag: Option<&str>,
    extra: Vec<rsip::Header>,
    body: Option<String>,
) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            rsip::Header::Via(_)
            | rsip::Header::From(_)
            | rsip::Header::CallId(_)
            | rsip::Header::CSeq(_)
            | rsip::Header::RecordRoute(_) => headers.push(header.clone()),
            rsip::Header::To(to) => {
                let value = to.value();
                let needs_tag = tag_param(value).is_none();
                match to_tag {
                    Some(tag) if needs_tag => {
                        headers.push(rsip::Header::To(format!("{value};tag={tag}").into()));
                    }
                    _ => headers.push(header.clone()),
                }
            }
            _ => {}
        }
    }
    headers.push(rsip::Header::Server(USER_AGENT.into()));
    for header in extra {
        headers.push(header);
    }
    let body = body.map(String::into_bytes).unwrap_or_default();
    if !body.is_empty() {
        headers.push(rsip::Header::Other(
            "Content-Type".into(),
            "application/sdp".into(),
        ));
    }
    set_content_length(&mut headers, body.len());
    rsip::Response {
        status_code: rsip::StatusCode::from(code),
        version: rsip::Version::V2,
        headers,
        body,
    }
}

/// The CSeq number of a message, if it parses.
pub fn cseq_number(headers: &rsip::Headers) -> Option<u32> {
    header_value(headers, "CSeq")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first value of header `name` (case-insensitive, full names only).
pub fn header_value(headers: &rsip::Headers, name: &str) -> Option<String> {
    header_values(headers, name).into_iter().next()
}

/// Every value of header `name`, comma-separated values split.
pub fn header_values(headers: &rsip::Headers, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for header in headers.iter() {
        let text = header.to_string();
        let Some((header_name, value)) = text.split_once(':') else {
            continue;
        };
        if header_name.trim().eq_ignore_ascii_case(name) {
            let value = value.trim();
            if matches!(name, "Record-Route" | "Route") {
                values.extend(split_name_addrs(value));
            } else {
                values.push(value.to_owned());
            }
        }
    }
    values
}

fn split_name_addrs(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth_quote = false;
    let mut depth_angle = 0u32;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => depth_quote = !depth_quote,
            '<' if !depth_quote => depth_angle += 1,
            '>' if !depth_quote => depth_angle = depth_angle.saturating_sub(1),
            ',' if !depth_quote && depth_angle == 0 => {
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

/// The `tag` parameter of a From/To value.
pub fn tag_param(value: &str) -> Option<String> {
    let params = match value.rfind('>') {
        Some(end) => &value[end + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|param| {
        let (name, tag) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| tag.trim().to_owned())
    })
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

fn set_content_length(headers: &mut rsip::Headers, len: usize) {
    headers.retain(|h| !matches!(h, rsip::Header::ContentLength(_)));
    headers.push(rsip::Header::ContentLength(len.to_string().into()));
}

/// A random token of `len` alphanumeric characters.
pub fn token(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn name_addr_parts() {
        let from = "\"Alice\" <sip:alice@10.0.0.1:5070;transport=udp>;tag=abc;x=y";
        assert_eq!(name_addr_uri(from), "sip:alice@10.0.0.1:5070;transport=udp");
        assert_eq!(tag_param(from).as_deref(), Some("abc"));
        assert_eq!(tag_param("<sip:a@b>"), None);
        assert_eq!(tag_param("sip:a@b;tag=q").as_deref(), Some("q"));
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
    fn invite_and_answer_build_a_dialog() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let local: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let mut uac = Dialog::outgoing(&mut rng, local, "sip:echo@127.0.0.1:5080".into());
        let invite = uac.invite(&mut rng, "v=0\r\n".into());
        let text = invite.to_string();
        assert!(text.starts_with("INVITE sip:echo@127.0.0.1:5080 SIP/2.0\r\n"));
        assert!(text.contains("CSeq: 1 INVITE"));
        assert!(text.contains("Content-Length: 5"));

        let uas = Dialog::incoming(&invite, "127.0.0.1:5080".parse().unwrap(), "srv".into());
        assert_eq!(uas.remote_tag.as_deref(), Some(uac.local_tag.as_str()));
        assert_eq!(uas.next_hop(), Some(local));

        let ok = response(&invite, 200, Some("srv"), Vec::new(), None);
        let ok_text = ok.to_string();
        assert!(ok_text.starts_with("SIP/2.0 200"));
        assert!(ok_text.contains(";tag=srv"));
        uac.confirm(&ok);
        assert_eq!(uac.remote_tag.as_deref(), Some("srv"));
        let bye = uac.bye(&mut rng);
        assert!(bye.to_string().contains("CSeq: 2 BYE"));
        assert_eq!(cseq_number(&bye.headers), Some(2));
    }
}
