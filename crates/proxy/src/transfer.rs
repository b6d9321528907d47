//! Where a transfer target goes (the engine asks with `Output::Transfer`): a Backend named by
//! its address, an outbound trunk named by the target's host, else the session's own trunk (a
//! `tel:` number goes out the way its caller came in).

use voxgate_cluster::{BackendLease, TrunkTransfer};
use voxgate_session::{Target, TransferMode};
use voxgate_sip::dialog;

use crate::gateway::Gateway;

/// The target of `to` (a `sip:`, `sips:` or `tel:` URI) for a session whose caller came
/// through trunk `own` (by name); else the status the transfer fails with: 480 for a Backend
/// that takes no session now (full, draining, down, cooling down), 404 for no route at all.
pub fn target(gateway: &Gateway, to: &str, own: Option<&str>) -> Result<Target<BackendLease>, u16> {
    if let Some(address) = dialog::uri_socket_addr(to) {
        let backend = gateway
            .picker
            .backends()
            .into_iter()
            .find(|spec| spec.address == address);
        if let Some(spec) = backend {
            let now = tokio::time::Instant::now().into_std();
            let lease = gateway
                .picker
                .pick_node(now, &spec.id)
                .map_err(|_| 480u16)?;
            return Ok(Target {
                address: lease.address(),
                backend: Some(lease.id().clone()),
                host: None,
                lease: Some(lease),
            });
        }
    }
    let host = dialog::uri_host(to).unwrap_or_default();
    let by_host = (!host.is_empty())
        .then(|| gateway.trunks.outbound(None, host))
        .flatten();
    let trunk = by_host
        .or_else(|| {
            let own = own?;
            gateway
                .trunks
                .trunks()
                .iter()
                .find(|trunk| trunk.name == own && trunk.outbound.is_some())
        })
        .ok_or(404u16)?;
    let address = trunk.outbound.ok_or(404u16)?;
    let host = match host {
        "" => trunk
            .hosts
            .first()
            .cloned()
            .unwrap_or_else(|| address.to_string()),
        host => host.to_owned(),
    };
    Ok(Target {
        address,
        backend: None,
        host: Some(host),
        lease: None,
    })
}

/// The `outcome` label of a transfer that ended with `code`.
pub fn outcome(code: u16) -> &'static str {
    match code {
        200..=299 => "completed",
        486 | 600 => "busy",
        404 => "no_route",
        480 => "unavailable",
        408 | 487 => "no_answer",
        _ => "failed",
    }
}

/// Whether the session API's DTMF reaches the callers of `trunk` (by name) as SIP INFO.
pub fn dtmf_by_info(gateway: &Gateway, trunk: Option<&str>) -> bool {
    trunk.is_some_and(|name| {
        gateway
            .trunks
            .trunks()
            .iter()
            .any(|t| t.name == name && t.dtmf == voxgate_cluster::TrunkDtmf::Info)
    })
}

/// The engine's transfer mode for a caller that came through `trunk` (by name).
pub fn mode(gateway: &Gateway, trunk: Option<&str>) -> TransferMode {
    let configured = trunk.and_then(|name| {
        gateway
            .trunks
            .trunks()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.transfer)
    });
    match configured {
        Some(TrunkTransfer::Refer) => TransferMode::Refer,
        _ => TransferMode::Bridge,
    }
}

#[cfg(test)]
mod tests {
    use super::outcome;

    #[test]
    fn outcomes_name_what_became_of_the_transfer() {
        let named: Vec<&str> = [200, 486, 600, 404, 480, 408, 487, 603, 500]
            .into_iter()
            .map(outcome)
            .collect();
        assert_eq!(
            named,
            [
                "completed",
                "busy",
                "busy",
                "no_route",
                "unavailable",
                "no_answer",
                "no_answer",
                "failed",
                "failed"
            ]
        );
    }
}
