//! The worker table: each registered worker found by its connection (routing id) or its
//! worker id when a message arrives or a target is named, and by its key from then on. A
//! service lists its workers' keys and a delivered job keeps its worker's, so choosing a
//! worker, delivering and completing index a slot instead of hashing and comparing routing
//! ids; the keys are versioned, so a key kept past its worker's removal (or a later
//! registration on the same connection) finds nothing.

use rustc_hash::FxHashMap as HashMap;
use slotmap::SlotMap;
use tradeplex_proto::WorkerId;

use super::registry::Worker;
use super::Identity;

slotmap::new_key_type! {
    /// A registered worker's slot in [`Workers`].
    pub(super) struct WorkerKey;
}

#[derive(Default)]
pub(super) struct Workers {
    slots: SlotMap<WorkerKey, Worker>,
    by_identity: HashMap<Identity, WorkerKey>,
    /// The live registration of each worker id (a worker that reconnected is briefly on
    /// two connections: this names the newer).
    by_id: HashMap<WorkerId, WorkerKey>,
}

impl Workers {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The key of the worker registered on connection `identity`.
    pub(super) fn key(&self, identity: &[u8]) -> Option<WorkerKey> {
        self.by_identity.get(identity).copied()
    }

    /// The key of worker `id`'s live registration.
    pub(super) fn key_of_id(&self, id: &WorkerId) -> Option<WorkerKey> {
        self.by_id.get(id).copied()
    }

    pub(super) fn get(&self, key: WorkerKey) -> Option<&Worker> {
        self.slots.get(key)
    }

    pub(super) fn get_mut(&mut self, key: WorkerKey) -> Option<&mut Worker> {
        self.slots.get_mut(key)
    }

    /// The worker registered on connection `identity`, with its key.
    pub(super) fn on_mut(&mut self, identity: &[u8]) -> Option<(WorkerKey, &mut Worker)> {
        let key = self.key(identity)?;
        self.slots.get_mut(key).map(|w| (key, w))
    }

    /// Worker `id`'s live registration.
    pub(super) fn with_id(&self, id: &WorkerId) -> Option<&Worker> {
        self.key_of_id(id).and_then(|k| self.slots.get(k))
    }

    /// Enters a worker (its connection must not be registered already); it becomes its
    /// id's live registration.
    pub(super) fn insert(&mut self, worker: Worker) -> WorkerKey {
        let (identity, id) = (worker.identity.clone(), worker.id);
        let key = self.slots.insert(worker);
        self.by_identity.insert(identity, key);
        self.by_id.insert(id, key);
        key
    }

    pub(super) fn remove(&mut self, key: WorkerKey) -> Option<Worker> {
        let worker = self.slots.remove(key)?;
        if self.by_identity.get(&worker.identity) == Some(&key) {
            self.by_identity.remove(&worker.identity);
        }
        if self.by_id.get(&worker.id) == Some(&key) {
            self.by_id.remove(&worker.id);
        }
        Some(worker)
    }

    /// Whether worker `id` has a live registration.
    pub(super) fn has_id(&self, id: &WorkerId) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Worker> {
        self.slots.values()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (WorkerKey, &Worker)> {
        self.slots.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn worker(identity: &[u8], id: WorkerId) -> Worker {
        Worker {
            identity: identity.to_vec(),
            id,
            services: Vec::new(),
            capacity: 1,
            in_flight: Default::default(),
            last_seen: Instant::now(),
            last_used: 0,
            served: 0,
            session: 0,
            next_pump: 0,
            batch: false,
        }
    }

    #[test]
    fn a_reconnected_worker_keeps_its_new_registration_when_the_old_one_goes() {
        let mut table = Workers::default();
        let id = WorkerId::random();
        let old = table.insert(worker(b"old", id));
        let new = table.insert(worker(b"new", id));
        assert_eq!(table.key_of_id(&id), Some(new));
        assert!(table.remove(old).is_some());
        assert_eq!(
            table.key_of_id(&id),
            Some(new),
            "the newer registration stays live"
        );
        assert_eq!(table.key(b"old"), None);
        assert_eq!(table.key(b"new"), Some(new));
        assert!(table.has_id(&id));
    }

    #[test]
    fn a_removed_workers_key_finds_nothing_even_on_the_same_connection_again() {
        let mut table = Workers::default();
        let first = table.insert(worker(b"A", WorkerId::random()));
        assert!(table.remove(first).is_some());
        let second = table.insert(worker(b"A", WorkerId::random()));
        assert_ne!(first, second);
        assert!(
            table.get(first).is_none(),
            "a late reply to the first finds no worker"
        );
        assert!(table.with_id(&table.get(second).unwrap().id).is_some());
        assert_eq!(table.len(), 1);
    }
}
