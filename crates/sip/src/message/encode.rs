//! Serializing messages for the wire, and the method and reason-phrase tables.

use std::fmt::Write as _;

use bytes::Bytes;
use rsip::SipMessage;

/// Serializes a message for the wire (see [`encode_request`], [`encode_response`]).
pub fn to_bytes(msg: &SipMessage) -> Bytes {
    match msg {
        SipMessage::Request(request) => encode_request(request),
        SipMessage::Response(response) => encode_response(response),
    }
}

/// Serializes a request. Unlike rsip's `Display`, writes the body bytes unchanged and builds one
/// buffer without a string per header.
pub fn encode_request(request: &rsip::Request) -> Bytes {
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{} {} SIP/2.0\r\n",
        method_name(&request.method),
        request.uri
    );
    finish(out, &request.headers, &request.body)
}

/// Serializes a response, with the RFC 3261 reason phrase for well-known codes (rsip's
/// `Display` writes its enum names, e.g. `BusyHere`).
pub fn encode_response(response: &rsip::Response) -> Bytes {
    let mut out = String::with_capacity(512);
    let code = response.status_code.code();
    let reason = match &response.status_code {
        rsip::StatusCode::Other(_, reason) => reason.as_str(),
        _ => reason_phrase(code).unwrap_or("Unknown"),
    };
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    finish(out, &response.headers, &response.body)
}

fn finish(mut out: String, headers: &rsip::Headers, body: &[u8]) -> Bytes {
    for header in headers.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{header}\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

/// The method as it appears on the wire (`INVITE`, `PRACK`, ...), without allocating (rsip's
/// `Display` upper-cases into a new String).
pub fn method_name(method: &rsip::Method) -> &'static str {
    use rsip::Method as M;
    match method {
        M::Ack => "ACK",
        M::Bye => "BYE",
        M::Cancel => "CANCEL",
        M::Info => "INFO",
        M::Invite => "INVITE",
        M::Message => "MESSAGE",
        M::Notify => "NOTIFY",
        M::Options => "OPTIONS",
        M::PRack => "PRACK",
        M::Publish => "PUBLISH",
        M::Refer => "REFER",
        M::Register => "REGISTER",
        M::Subscribe => "SUBSCRIBE",
        M::Update => "UPDATE",
    }
}

/// A method name (case-sensitive, RFC 3261 7.1) as rsip's enum; `None` for extension methods
/// rsip cannot represent.
pub fn parse_method(name: &str) -> Option<rsip::Method> {
    use rsip::Method as M;
    Some(match name {
        "ACK" => M::Ack,
        "BYE" => M::Bye,
        "CANCEL" => M::Cancel,
        "INFO" => M::Info,
        "INVITE" => M::Invite,
        "MESSAGE" => M::Message,
        "NOTIFY" => M::Notify,
        "OPTIONS" => M::Options,
        "PRACK" => M::PRack,
        "PUBLISH" => M::Publish,
        "REFER" => M::Refer,
        "REGISTER" => M::Register,
        "SUBSCRIBE" => M::Subscribe,
        "UPDATE" => M::Update,
        _ => return None,
    })
}

/// The RFC 3261 (and common extension) reason phrase for a status code.
pub fn reason_phrase(code: u16) -> Option<&'static str> {
    Some(match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => return None,
    })
}
