//! Newtypes for identifiers that must not be mixed up, validated at the boundary.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::ProtoError;

/// A worker's identity: a UUID chosen by the worker at start-up, stable across reconnects.
/// On the wire it is the hyphenated lowercase string form (never raw bytes), so that
/// clients in other languages read it as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub uuid::Uuid);

impl Serialize for WorkerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Into a stack buffer: `collect_str` would format through `fmt` into a fresh
        // String on every header (each REPLY the broker sends names its worker).
        let mut buf = uuid::Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl WorkerId {
    /// A fresh random worker id.
    pub fn random() -> WorkerId {
        WorkerId(uuid::Uuid::new_v4())
    }

    /// The first 8 hex digits, for compact logs and order ids.
    pub fn short(&self) -> String {
        let mut s = self.0.simple().to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for WorkerId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(WorkerId)
            .map_err(|e| ProtoError::BadField {
                field: "worker",
                reason: e.to_string(),
            })
    }
}

/// A client-chosen request id, unique among that client's requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A broker-chosen id for one delivery of a request to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A service name: 1–64 bytes of `[A-Za-z0-9_.-]` (e.g. `SIM`, `CTP`, `echo`).
///
/// Shared, not owned: the broker keeps a request's service in its job, its queue, its
/// metrics and affinity keys, and a client sends the same name call after call, so a
/// clone is a reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Arc<str>);

impl Serialize for ServiceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Longest service name accepted.
pub const MAX_SERVICE_NAME: usize = 64;

impl ServiceName {
    /// Validates and wraps a service name.
    pub fn new(s: impl AsRef<str>) -> Result<ServiceName, ProtoError> {
        let s = s.as_ref();
        // Bytes, not chars: every allowed character is ASCII, so any byte of a multi-byte
        // character fails the same test (and no UTF-8 decoding per request).
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if s.is_empty() || s.len() > MAX_SERVICE_NAME || !s.bytes().all(ok) {
            return Err(ProtoError::BadField {
                field: "service",
                reason: format!("{s:?} is not 1-{MAX_SERVICE_NAME} chars of [A-Za-z0-9_.-]"),
            });
        }
        Ok(ServiceName(Arc::from(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the broker's own management services (`tpx.*`).
    pub fn is_mgmt(&self) -> bool {
        self.0.starts_with(crate::MGMT_PREFIX)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServiceName::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ServiceName {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_id_is_its_hyphenated_lowercase_uuid_on_the_wire() {
        let id = WorkerId::random();
        let text = id.0.hyphenated().to_string();
        let packed = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(packed, rmp_serde::to_vec(&text).unwrap());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(rmp_serde::from_slice::<WorkerId>(&packed).unwrap(), id);
    }

    #[test]
    fn service_names_are_validated() {
        assert!(ServiceName::new("SIM").is_ok());
        assert!(ServiceName::new("tpx.workers").unwrap().is_mgmt());
        assert!(ServiceName::new("").is_err());
        assert!(ServiceName::new("a b").is_err());
        assert!(ServiceName::new("x".repeat(65)).is_err());
    }

    #[test]
    fn worker_ids_parse() {
        let id = WorkerId::random();
        assert_eq!(id.to_string().parse::<WorkerId>().unwrap(), id);
        assert!("nope".parse::<WorkerId>().is_err());
        assert_eq!(id.short().len(), 8);
    }
}
