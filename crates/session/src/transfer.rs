//! Transfer of the caller to someone else (RFC 3515 REFER, blind): what a session knows of one
//! under way, and reading a REFER. How the session carries it out is `handover.rs`.

use voxgate_sip::dialog;

use crate::attempt::Attempt;

/// How a session transfers its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferMode {
    /// This node dials the target and bridges the caller to it.
    #[default]
    Bridge,
    /// The REFER goes to the caller's trunk (a carrier that takes transfers); a caller without
    /// a SIP dialog of its own is bridged.
    Refer,
    /// No transfer: a REFER is refused (a Backend's own call out through a trunk, whose far
    /// side is the carrier).
    Off,
}

/// A transfer under way.
#[derive(Debug)]
pub(crate) struct Transfer<L> {
    /// The target as the transferor named it (Refer-To, without its headers).
    pub(crate) to: String,
    /// The transferor's Referred-By, passed to the target (RFC 3892).
    pub(crate) referred_by: Option<String>,
    /// The Backend asked with a REFER and still listens: it gets NOTIFYs.
    pub(crate) notify: bool,
    /// The target's INVITE, once a target was found.
    pub(crate) attempt: Option<Attempt<L>>,
    /// The last provisional told to the Backend.
    pub(crate) told: u16,
}

/// The target of a REFER (its Refer-To URI without headers) and whether it asks for an
/// attended transfer (a `Replaces` header in the URI).
pub(crate) fn refer_to(request: &rsip::Request) -> Result<(String, bool), &'static str> {
    let values: Vec<String> = ["Refer-To", "r"]
        .iter()
        .flat_map(|name| dialog::header_values(&request.headers, name))
        .collect();
    let [value] = values.as_slice() else {
        return Err("a REFER needs exactly one Refer-To");
    };
    let uri = dialog::name_addr_uri(value);
    let (uri, headers) = uri.split_once('?').unwrap_or((uri.as_str(), ""));
    let scheme_ok = ["sip:", "sips:", "tel:"]
        .iter()
        .any(|scheme| uri.len() > scheme.len() && uri[..scheme.len()].eq_ignore_ascii_case(scheme));
    if !scheme_ok {
        return Err("Refer-To must be a sip:, sips: or tel: URI");
    }
    let replaces = headers.split('&').any(|h| {
        h.split('=')
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("Replaces"))
    });
    Ok((uri.to_owned(), replaces))
}

/// The reason phrase of a status line in a sipfrag (RFC 3261 21).
pub(crate) fn reason_phrase(code: u16) -> &'static str {
    const KNOWN: [(u16, &str); 17] = [
        (100, "Trying"),
        (180, "Ringing"),
        (181, "Call Is Being Forwarded"),
        (182, "Queued"),
        (183, "Session Progress"),
        (200, "OK"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (408, "Request Timeout"),
        (480, "Temporarily Unavailable"),
        (486, "Busy Here"),
        (487, "Request Terminated"),
        (488, "Not Acceptable Here"),
        (500, "Server Internal Error"),
        (503, "Service Unavailable"),
        (600, "Busy Everywhere"),
        (603, "Decline"),
    ];
    if let Some((_, phrase)) = KNOWN.iter().find(|(known, _)| *known == code) {
        return phrase;
    }
    match code / 100 {
        1 => "Progress",
        2 => "Success",
        3 => "Redirection",
        4 => "Request Failure",
        5 => "Server Failure",
        _ => "Global Failure",
    }
}

/// The Request-URI that dials `to`: a SIP URI as it was sent; a `tel:` number as a SIP URI at
/// `host` (a trunk takes SIP).
pub(crate) fn transfer_uri(to: &str, host: &str) -> String {
    match to.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => {
            let number = to[4..].split(';').next().unwrap_or_default();
            format!("sip:{number}@{host}")
        }
        _ => to.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(refer_to: &str) -> rsip::Request {
        let text = format!(
            "REFER sip:voxgate@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n\
             From: <sip:b@10.0.0.2>;tag=1\r\nTo: <sip:v@10.0.0.1>;tag=2\r\nCall-ID: c\r\n\
             CSeq: 2 REFER\r\n{refer_to}Content-Length: 0\r\n\r\n"
        );
        rsip::Request::try_from(text.as_str()).unwrap()
    }

    #[test]
    fn refer_to_is_read_as_sent_without_its_headers() {
        let found = refer_to(&refer(
            "Refer-To: <sip:+15551234@carrier.example;user=phone>\r\n",
        ));
        assert_eq!(
            found,
            Ok(("sip:+15551234@carrier.example;user=phone".into(), false))
        );
        let found = refer_to(&refer("r: tel:+15551234\r\n"));
        assert_eq!(found, Ok(("tel:+15551234".into(), false)));
        let replaces = "Refer-To: <sip:bob@h?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n";
        assert_eq!(refer_to(&refer(replaces)), Ok(("sip:bob@h".into(), true)));
        assert!(refer_to(&refer("")).is_err());
        assert!(refer_to(&refer("Refer-To: <mailto:a@b>\r\n")).is_err());
        let two = "Refer-To: <sip:a@b>\r\nRefer-To: <sip:c@d>\r\n";
        assert!(refer_to(&refer(two)).is_err());
    }

    #[test]
    fn a_tel_target_is_dialled_as_a_sip_uri_at_the_trunk() {
        assert_eq!(
            transfer_uri("tel:+15551234;phone-context=x", "sip.carrier"),
            "sip:+15551234@sip.carrier"
        );
        assert_eq!(
            transfer_uri("sip:agent@10.0.0.9:5080", "ignored"),
            "sip:agent@10.0.0.9:5080"
        );
    }
}
