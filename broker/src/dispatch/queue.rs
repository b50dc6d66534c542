//! One service's queued jobs: a FIFO lane per client, served in turns, so a client that
//! floods a service delays its own requests, not another client's orders.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;
use tradeplex_proto::JobId;

use super::Identity;

/// Queued jobs of one service, by client.
#[derive(Default)]
pub(super) struct ServiceQueue {
    /// A lane stays (empty) after its last job leaves, so a client that keeps a window of
    /// requests in flight does not allocate one per request; [`Self::sweep`] drops empty
    /// lanes once in a while.
    lanes: HashMap<Identity, VecDeque<JobId>>,
    /// Clients with queued jobs, in the order they are served next.
    turns: VecDeque<Identity>,
    len: usize,
}

impl ServiceQueue {
    /// Jobs queued, over every client.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Clients with queued jobs.
    pub(super) fn clients(&self) -> usize {
        self.turns.len()
    }

    /// Queues `job` last in its client's lane.
    pub(super) fn push_back(&mut self, client: &Identity, job: JobId) {
        self.push(client, job, false);
    }

    /// Queues `job` first in its client's lane, and that client first in turn (a job
    /// coming back from a worker has already waited its turn once).
    pub(super) fn push_front(&mut self, client: &Identity, job: JobId) {
        self.push(client, job, true);
    }

    /// Queues `job` in its client's lane (one map lookup when the lane exists); a client
    /// that had nothing queued enters the turn order, first or last.
    fn push(&mut self, client: &Identity, job: JobId, first: bool) {
        let was_idle = match self.lanes.get_mut(client) {
            Some(lane) => {
                let idle = lane.is_empty();
                if first {
                    lane.push_front(job);
                } else {
                    lane.push_back(job);
                }
                idle
            }
            None => {
                self.lanes.insert(client.clone(), VecDeque::from([job]));
                true
            }
        };
        if was_idle {
            if first {
                self.turns.push_front(client.clone());
            } else {
                self.turns.push_back(client.clone());
            }
        }
        self.len += 1;
    }

    /// Gives the next client its turn (it moves to the back); false when none is queued.
    pub(super) fn next_turn(&mut self) -> bool {
        match self.turns.pop_front() {
            Some(client) => {
                self.turns.push_back(client);
                true
            }
            None => false,
        }
    }

    /// The `i`-th job of the client whose turn it is (the last one [`Self::next_turn`] chose).
    pub(super) fn in_turn(&self, i: usize) -> Option<JobId> {
        let client = self.turns.back()?;
        self.lanes.get(client)?.get(i).copied()
    }

    /// Takes `job` out of `client`'s lane; false if it was not queued.
    pub(super) fn remove(&mut self, client: &Identity, job: JobId) -> bool {
        let Some(lane) = self.lanes.get_mut(client) else {
            return false;
        };
        let Some(pos) = lane.iter().position(|j| *j == job) else {
            return false;
        };
        lane.remove(pos);
        self.len -= 1;
        if lane.is_empty() {
            self.turns.retain(|c| c != client);
        }
        true
    }

    /// Drops the lanes of clients with nothing queued (bounds the map by the clients that
    /// queued something since the last sweep).
    pub(super) fn sweep(&mut self) {
        self.lanes.retain(|_, lane| !lane.is_empty());
    }

    /// Every queued job (any order).
    pub(super) fn jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.lanes.values().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_all(q: &mut ServiceQueue) -> Vec<JobId> {
        let mut order = Vec::new();
        while q.next_turn() {
            let job = q.in_turn(0).unwrap();
            let client = q.turns.back().unwrap().clone();
            assert!(q.remove(&client, job));
            order.push(job);
        }
        order
    }

    #[test]
    fn clients_take_turns_and_each_lane_stays_in_order() {
        let mut q = ServiceQueue::default();
        let (flood, other) = (b"flood".to_vec(), b"other".to_vec());
        for n in 1..=4 {
            q.push_back(&flood, JobId(n));
        }
        q.push_back(&other, JobId(10));
        q.push_back(&other, JobId(11));
        assert_eq!((q.len(), q.clients()), (6, 2));
        let order: Vec<u64> = serve_all(&mut q).into_iter().map(|j| j.0).collect();
        assert_eq!(order, [1, 10, 2, 11, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(q.clients(), 0);
        q.sweep();
        assert!(q.lanes.is_empty());
    }

    #[test]
    fn a_requeued_job_goes_first() {
        let mut q = ServiceQueue::default();
        let (a, b) = (b"a".to_vec(), b"b".to_vec());
        q.push_back(&a, JobId(1));
        q.push_front(&b, JobId(2));
        q.push_front(&a, JobId(3));
        let order: Vec<u64> = serve_all(&mut q).into_iter().map(|j| j.0).collect();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn removing_from_the_middle_keeps_counts() {
        let mut q = ServiceQueue::default();
        let a = b"a".to_vec();
        for n in 1..=3 {
            q.push_back(&a, JobId(n));
        }
        assert!(q.remove(&a, JobId(2)));
        assert!(!q.remove(&a, JobId(2)));
        assert!(!q.remove(&b"nobody".to_vec(), JobId(1)));
        assert_eq!(q.len(), 2);
        let mut left: Vec<u64> = q.jobs().map(|j| j.0).collect();
        left.sort();
        assert_eq!(left, [1, 3]);
    }
}
