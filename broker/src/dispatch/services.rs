//! The service table: each service found by name once, when a request or a READY names
//! it, and by its key from then on. A job keeps its service's key, so the dispatch path
//! (queue, choice, delivery, answer) indexes a slot instead of hashing and comparing the
//! name at every step; the key is versioned, so a key kept past its service's removal
//! finds nothing rather than another service.

use rustc_hash::FxHashMap as HashMap;
use slotmap::SlotMap;
use tradeplex_proto::ServiceName;

use super::registry::Service;

slotmap::new_key_type! {
    /// A service's slot in [`Services`].
    pub(super) struct ServiceKey;
}

#[derive(Default)]
pub(super) struct Services {
    slots: SlotMap<ServiceKey, Service>,
    by_name: HashMap<ServiceName, ServiceKey>,
}

impl Services {
    /// Services held (registered or waiting out a grace period).
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn key(&self, name: &ServiceName) -> Option<ServiceKey> {
        self.by_name.get(name).copied()
    }

    pub(super) fn get(&self, key: ServiceKey) -> Option<&Service> {
        self.slots.get(key)
    }

    pub(super) fn get_mut(&mut self, key: ServiceKey) -> Option<&mut Service> {
        self.slots.get_mut(key)
    }

    pub(super) fn named(&self, name: &ServiceName) -> Option<&Service> {
        self.key(name).and_then(|k| self.slots.get(k))
    }

    pub(super) fn named_mut(&mut self, name: &ServiceName) -> Option<&mut Service> {
        let key = self.key(name)?;
        self.slots.get_mut(key)
    }

    /// The key of `name`'s entry, made with `make` if there is none.
    pub(super) fn entry(
        &mut self,
        name: &ServiceName,
        make: impl FnOnce() -> Service,
    ) -> ServiceKey {
        if let Some(key) = self.key(name) {
            return key;
        }
        let key = self.slots.insert(make());
        self.by_name.insert(name.clone(), key);
        key
    }

    pub(super) fn remove(&mut self, key: ServiceKey) -> Option<Service> {
        let service = self.slots.remove(key)?;
        self.by_name.remove(&service.name);
        Some(service)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Service> {
        self.slots.values()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Service> {
        self.slots.values_mut()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ServiceKey, &Service)> {
        self.slots.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::dispatch::registry::new_service;
    use crate::metrics::{Metrics, MetricsBatch};

    fn service(name: &str) -> Service {
        let metrics = Metrics::new();
        let m = Rc::new(metrics.service(name, &MetricsBatch::default()));
        new_service(ServiceName::new(name).unwrap(), m)
    }

    #[test]
    fn a_name_gets_one_entry_and_a_removed_key_finds_nothing() {
        let mut table = Services::default();
        let echo = ServiceName::new("echo").unwrap();
        let key = table.entry(&echo, || service("echo"));
        assert_eq!(table.entry(&echo, || unreachable!()), key);
        assert_eq!(table.len(), 1);
        assert!(table.named(&echo).is_some());
        assert!(table.remove(key).is_some());
        assert!(table.get(key).is_none());
        assert!(table.key(&echo).is_none());
        // The slot is reused by the next service; the old key still finds nothing.
        let sim = ServiceName::new("SIM").unwrap();
        let again = table.entry(&sim, || service("SIM"));
        assert_ne!(again, key);
        assert!(table.get(key).is_none());
        assert_eq!(table.get(again).map(|s| s.name.as_str()), Some("SIM"));
    }
}
