//! Shutdown in two steps: refuse new requests and answer the queued ones, then answer
//! what is still in flight and tell every worker to go.

use tradeplex_proto::worker;
use tradeplex_proto::{ErrorCode, JobId, WorkerId};

use super::{Dispatcher, Identity, Phase};

impl Dispatcher {
    /// Stops accepting requests and answers every queued one `unavailable`.
    pub(crate) fn begin_shutdown(&mut self) {
        self.phase = Phase::Draining;
        let queued: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.worker.is_none())
            .map(|(id, _)| *id)
            .collect();
        for job_id in queued {
            self.unqueue(job_id);
            let msg = "broker is shutting down; not delivered".to_string();
            self.finish(job_id, Err((ErrorCode::Unavailable, msg)), None);
        }
    }

    /// Answers what is still in flight `worker_lost` and tells every worker to go.
    pub(crate) fn finish_shutdown(&mut self) {
        let left: Vec<(JobId, Option<WorkerId>)> = self
            .jobs
            .iter()
            .map(|(id, j)| {
                let w = j.worker.and_then(|k| self.workers.get(k)).map(|w| w.id);
                (*id, w)
            })
            .collect();
        for (job_id, worker) in left {
            let msg = "broker shut down with the request in flight: outcome unknown".to_string();
            self.finish(job_id, Err((ErrorCode::WorkerLost, msg)), worker);
        }
        self.phase = Phase::Stopped;
        let identities: Vec<Identity> = self.workers.values().map(|w| w.identity.clone()).collect();
        for identity in identities {
            self.disconnect(identity, worker::REASON_SHUTTING_DOWN.into());
        }
    }
}
