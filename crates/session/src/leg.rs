//! One SIP leg of a session: its dialog and where its requests go.

use std::net::SocketAddr;

use rand::Rng;
use voxgate_sip::dialog::Dialog;
use voxgate_sip::message;

/// A SIP dialog of the session, on either side.
#[derive(Debug)]
pub(crate) struct SipLeg {
    pub(crate) dialog: Dialog,
    /// The address the dialog was set up with.
    pub(crate) address: SocketAddr,
    /// Requests always go to `address` (a caller on TCP: its connection is reused).
    pub(crate) sticky: bool,
    /// Our ACK of the leg's INVITE 2xx, sent again if the 2xx is retransmitted.
    pub(crate) ack: Option<rsip::Request>,
}

impl SipLeg {
    pub(crate) fn new(dialog: Dialog, address: SocketAddr) -> Self {
        Self {
            dialog,
            address,
            sticky: false,
            ack: None,
        }
    }

    /// Where the next in-dialog request goes.
    pub(crate) fn hop(&self) -> SocketAddr {
        if self.sticky {
            self.address
        } else {
            self.dialog.next_hop().unwrap_or(self.address)
        }
    }

    /// Whether an in-dialog request belongs to this dialog: its From tag is the peer's and its
    /// To tag ours (RFC 3261 12.2.2), not just the same Call-ID.
    pub(crate) fn owns(&self, request: &rsip::Request) -> bool {
        message::to_tag(request).as_deref() == Some(self.dialog.local_tag.as_str())
            && message::from_tag(request) == self.dialog.remote_tag
    }

    /// Confirms the dialog with the 2xx `response` to the INVITE with CSeq `invite_cseq` and
    /// builds its ACK, kept for retransmitted 2xx.
    pub(crate) fn confirm(
        &mut self,
        rng: &mut impl Rng,
        response: &rsip::Response,
        invite_cseq: u32,
    ) -> rsip::Request {
        self.dialog.confirm(response);
        let ack = self.dialog.ack(rng, invite_cseq);
        self.ack = Some(ack.clone());
        ack
    }
}
