//! The stored form of the cluster state, shared by both registries: a JSON envelope
//! `{"format": "voxgate-state", "version": 1, "state": {...}}`, so that a file or key holding
//! something else, a newer version or a broken state is told apart and named, never overwritten.

use serde::{Deserialize, Serialize};
use voxgate_cluster::state::ClusterState;

/// The `format` field of a stored state.
pub const STATE_FORMAT: &str = "voxgate-state";

/// The `version` field this build writes and reads.
pub const STATE_VERSION: u64 = 1;

#[derive(Serialize)]
struct Out<'a> {
    format: &'static str,
    version: u64,
    state: &'a ClusterState,
}

/// The fields read first, to tell "something else" from "a broken state".
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u64,
}

#[derive(Deserialize)]
struct In {
    state: ClusterState,
}

/// The envelope as compact JSON, or indented (for a file people read) when `pretty`.
pub fn encode(state: &ClusterState, pretty: bool) -> serde_json::Result<Vec<u8>> {
    let out = Out {
        format: STATE_FORMAT,
        version: STATE_VERSION,
        state,
    };
    if pretty {
        serde_json::to_vec_pretty(&out)
    } else {
        serde_json::to_vec(&out)
    }
}

/// Parses and validates a stored state; the error says what is wrong and where.
pub fn decode(bytes: &[u8]) -> Result<ClusterState, String> {
    let header: Header = serde_json::from_slice(bytes).map_err(|err| {
        if err.is_syntax() || err.is_eof() {
            format!("invalid JSON: {err}")
        } else {
            format!("not a voxgate state: {err}")
        }
    })?;
    if header.format != STATE_FORMAT {
        return Err(format!(
            "format is {:?}, expected {STATE_FORMAT:?}",
            header.format
        ));
    }
    if header.version != STATE_VERSION {
        return Err(format!(
            "version {} is not supported (this build reads version {STATE_VERSION})",
            header.version
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: In = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| format!("at {}: {}", err.path(), err.inner()))?;
    value
        .state
        .validate()
        .map_err(|err| format!("invalid state: {err}"))?;
    Ok(value.state)
}
