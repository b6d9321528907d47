//! Drives one [`Session`] of the engine on the SIP plane: its dialogs' events in, its SIP out
//! through the endpoint, its Backend choices answered from the picker (or the trunk), its
//! cooldowns applied. It is handed the endpoint and the picker, nothing else of the gateway.
//! The media side (RTP relay or WebRTC bridge) is the caller's: the outputs it does not handle
//! here are handed back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voxgate_cluster::{BackendLease, BackendPicker};
use voxgate_core::{RegionId, SessionId};
use voxgate_endpoint::{Endpoint, Route};
use voxgate_session::{Input, Output, Session, SessionConfig, Target};
use voxgate_sip::Event;

use crate::gateway::Gateway;

/// Where the far leg of a session goes.
#[derive(Debug)]
pub enum Destination {
    /// The least-loaded Backend of `region` (or its spillover regions); `first` is tried first
    /// when the caller already holds a lease (an originated call's chosen Backend).
    Backend {
        /// The caller's region.
        region: RegionId,
        /// A Backend leased before the session started.
        first: Option<BackendLease>,
    },
    /// A Backend's call to the outside, through a trunk at `address`; `host` keeps the host the
    /// Backend dialled.
    Trunk {
        /// The trunk's address (`None`: the trunk takes no outbound calls).
        address: Option<SocketAddr>,
        /// The Request-URI host.
        host: String,
    },
}

/// The SIP side of a running session.
#[derive(Debug)]
pub struct SessionDriver {
    endpoint: Endpoint,
    picker: Arc<BackendPicker>,
    pub(crate) id: SessionId,
    pub(crate) session: Session<BackendLease>,
    destination: Destination,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    routes: Vec<Route>,
    trunk_used: bool,
    /// The Call-ID of the first dialog the session opened (a dialled number's, else the
    /// first far INVITE's).
    first_dialog: Option<String>,
}

impl SessionDriver {
    /// The engine's settings for session `id` on this node, with relay `ports`.
    pub fn config(gateway: &Gateway, id: SessionId, ports: [u16; 2]) -> SessionConfig {
        let routing = &gateway.config.routing;
        let mut rng = gateway.call_rng();
        SessionConfig {
            id: id.0,
            sip_addr: gateway.sip_addr,
            public_ip: gateway.config.media.public_ip,
            ports,
            user_agent: gateway.user_agent,
            invite_timeout: routing.invite_timeout,
            ring_timeout: routing.ring_timeout,
            max_attempts: routing.max_attempts,
            default_cooldown: Duration::from_secs(5),
            silent_cooldown: gateway.config.health.interval,
            retry_after: gateway.retry_after(),
            session_expires: gateway.config.sip.session_expires,
            min_se: gateway.config.sip.min_se,
            far_headers: Vec::new(),
            transfer: voxgate_session::TransferMode::Bridge,
            trunk_credentials: None,
            identity: voxgate_session::IdentityPolicy::default(),
            seed: rng.random(),
        }
    }

    /// Drives `session`, whose caller dialog (if any) already routes into `events`.
    pub fn new(
        endpoint: Endpoint,
        picker: Arc<BackendPicker>,
        id: SessionId,
        session: Session<BackendLease>,
        destination: Destination,
        channel: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
        routes: Vec<Route>,
    ) -> Self {
        let (events_tx, events) = channel;
        Self {
            endpoint,
            picker,
            id,
            session,
            destination,
            events_tx,
            events,
            routes,
            trunk_used: false,
            first_dialog: None,
        }
    }

    /// The Call-ID of the first dialog the session opened itself.
    pub fn first_dialog(&self) -> Option<&str> {
        self.first_dialog.as_deref()
    }

    /// The next SIP event of the session's dialogs (`None` once the endpoint stopped).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Once the session is finished: stops its queue and hands the events still in it to the
    /// session (it answers what needs an answer); later events of its dialogs go to the
    /// dispatcher, so none is lost between the two.
    pub fn close(&mut self) {
        self.events.close();
        while let Ok(event) = self.events.try_recv() {
            self.handle(Input::Sip(event));
        }
    }

    /// Feeds `input` at `now`.
    pub fn handle(&mut self, input: Input<BackendLease>) {
        self.session.handle(Instant::now().into_std(), input);
    }

    /// Acts on the session's due deadlines.
    pub fn handle_timeout(&mut self) {
        self.session.handle_timeout(Instant::now().into_std());
    }

    /// The session's next deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.session.poll_timeout().map(Instant::from_std)
    }

    /// The next output the SIP side does not carry itself: media, answers, progress, the end.
    pub fn poll(&mut self) -> Option<Output> {
        loop {
            let output = self.session.poll_output()?;
            if let Some(output) = self.apply(output) {
                return Some(output);
            }
        }
    }

    fn apply(&mut self, output: Output) -> Option<Output> {
        let endpoint = &self.endpoint;
        match output {
            Output::Listen(call_id) => {
                self.first_dialog.get_or_insert_with(|| call_id.clone());
                let route = endpoint.route(&call_id, self.events_tx.clone());
                self.routes.push(route);
            }
            Output::Request { to, request } => endpoint.request(to, request),
            Output::Respond { key, response } => endpoint.respond(key, response),
            Output::Stateless { to, message } => endpoint.stateless(to, message),
            Output::Pick { tried } => {
                let target = self.pick(&tried);
                self.session
                    .handle(Instant::now().into_std(), Input::Target(target));
            }
            Output::CoolDown { backend, until } => self.picker.cool_down(&backend, until),
            other => return Some(other),
        }
        None
    }

    fn pick(&mut self, tried: &[voxgate_core::NodeId]) -> Option<Target<BackendLease>> {
        match &mut self.destination {
            Destination::Backend { region, first } => {
                let lease = match first.take() {
                    Some(lease) => lease,
                    None => {
                        let now = Instant::now().into_std();
                        self.picker.pick(now, region, tried).ok()?
                    }
                };
                Some(Target {
                    address: lease.address(),
                    backend: Some(lease.id().clone()),
                    host: None,
                    lease: Some(lease),
                })
            }
            Destination::Trunk { address, host } => {
                // A trunk is tried once: its own failover is the carrier's.
                if self.trunk_used {
                    return None;
                }
                self.trunk_used = true;
                Some(Target {
                    address: (*address)?,
                    backend: None,
                    host: Some(host.clone()),
                    lease: None,
                })
            }
        }
    }
}
