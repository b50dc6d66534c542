//! What the loop sends: the dispatcher's decisions encoded, a round's messages to one
//! peer that reads BATCH gathered into one.

use tradeplex_proto::client::{self, ReplyHeader};
use tradeplex_proto::frame::Header;
use tradeplex_proto::worker;

use super::{Loop, Side};
use crate::batches::{Batch, Batches, Item};
use crate::body::Body;
use crate::dispatch::{Clock, Out};
use crate::wire;

impl Loop {
    pub(super) fn flush(&mut self) {
        // Once per drained round, not per request, and before the answers leave: a client
        // holding its reply finds it counted in /metrics.
        self.dispatcher.flush_metrics();
        while !self.dispatcher.out.is_empty() {
            // Swap in the spare buffer so both keep their capacity across flushes.
            std::mem::swap(&mut self.spare, &mut self.dispatcher.out);
            let mut batch = std::mem::take(&mut self.spare);
            for out in batch.drain(..) {
                self.send(out);
            }
            self.spare = batch;
            self.send_batches();
        }
    }

    /// Sends the messages gathered by [`Loop::send`]: one per worker and one per client
    /// (a lone message as itself).
    fn send_batches(&mut self) {
        for side in [Side::Backend, Side::Frontend] {
            let mut round = self.batches_to(side).take();
            for b in round.drain(..) {
                self.send_batch(side, b);
            }
            self.batches_to(side).restore(round);
        }
    }

    fn batches_to(&mut self, side: Side) -> &mut Batches {
        match side {
            Side::Backend => &mut self.to_workers,
            Side::Frontend => &mut self.to_clients,
        }
    }

    fn send_batch(&mut self, side: Side, b: Batch) {
        let (socket, protocol, cmd, label) = match side {
            Side::Backend => (
                &mut self.backend,
                &worker::PROTOCOL,
                worker::Command::Batch as u8,
                "to_workers",
            ),
            Side::Frontend => (
                &mut self.frontend,
                &client::PROTOCOL,
                client::Command::Batch as u8,
                "to_clients",
            ),
        };
        let sent = match b.lone() {
            Some((head, body)) => wire::send_routed(socket, &b.to, head, body),
            None => {
                let messages = b.messages();
                // Counted before the send, so a peer holding the batch finds it counted.
                let count = u64::from(messages.count());
                self.metrics.batches.with_label_values(&[label]).inc();
                let carried = self.metrics.batched_messages.with_label_values(&[label]);
                carried.inc_by(count);
                messages.head_into(protocol, cmd, &mut self.head);
                wire::send_routed(socket, &b.to, &self.head, messages.body())
            }
        };
        match sent {
            Err(e) if b.jobs.is_empty() => {
                // The client is gone or not reading; its answers are dropped.
                tracing::debug!(error = %e, "answers to client not sent");
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = b.jobs.len(), "requests could not be sent to their worker; requeued");
                for job in &b.jobs {
                    self.dispatcher.on_send_failed(Clock::real(), *job);
                }
            }
            Ok(()) => {}
        }
        self.batches_to(side).recycle(b);
    }

    /// Encodes one decision and sends it, or adds it to its peer's batch.
    fn send(&mut self, out: Out) {
        match out {
            Out::Deliver {
                to,
                header,
                body,
                batch: true,
            } => {
                let item = Item {
                    protocol: &worker::PROTOCOL,
                    cmd: worker::Command::Request as u8,
                    header: &header,
                    body,
                    job: Some(header.job),
                };
                if let Some(full) = self.to_workers.add(&to, item) {
                    self.send_batch(Side::Backend, full);
                }
            }
            Out::Deliver {
                to, header, body, ..
            } => {
                let job = header.job;
                if let Err(e) = self.send_to_worker(&to, worker::Command::Request, &header, body) {
                    tracing::warn!(error = %e, %job, "request could not be sent to its worker; requeued");
                    self.dispatcher.on_send_failed(Clock::real(), job);
                }
            }
            Out::Reply {
                to,
                id,
                worker,
                body,
                batch,
            } => {
                let h = ReplyHeader { id, worker };
                self.answer(&to, batch, client::Command::Reply, &h, body);
            }
            Out::Error {
                to,
                id,
                code,
                message,
                worker,
                batch,
            } => {
                let mut h = client::ErrorHeader::new(id, code, message);
                h.worker = worker;
                self.answer(&to, batch, client::Command::Error, &h, Body::new());
            }
            // A worker that cannot be reached is found by its silence (liveness), or by
            // the next request sent to it.
            Out::Heartbeat { to } => {
                let h = worker::HeartbeatHeader {};
                let _ = self.send_to_worker(&to, worker::Command::Heartbeat, &h, Body::new());
            }
            Out::Disconnect { to, reason } => {
                let h = worker::DisconnectHeader { reason };
                let _ = self.send_to_worker(&to, worker::Command::Disconnect, &h, Body::new());
            }
        }
    }

    /// A REPLY or ERROR to a client: into its batch if it reads them (`batch`), else sent.
    fn answer<T: Header>(
        &mut self,
        to: &[u8],
        batch: bool,
        cmd: client::Command,
        header: &T,
        body: Body,
    ) {
        if !batch {
            self.send_to_client(to, cmd, header, body);
            return;
        }
        let item = Item {
            protocol: &client::PROTOCOL,
            cmd: cmd as u8,
            header,
            body,
            job: None,
        };
        if let Some(full) = self.to_clients.add(to, item) {
            self.send_batch(Side::Frontend, full);
        }
    }

    fn send_to_client<T: Header>(
        &mut self,
        to: &[u8],
        cmd: client::Command,
        header: &T,
        body: Body,
    ) {
        client::PROTOCOL.encode_head_into(&mut self.head, cmd as u8, header);
        if let Err(e) = wire::send_routed(&mut self.frontend, to, &self.head, &body) {
            // The client is gone or not reading; its reply is dropped.
            tracing::debug!(error = %e, "reply to client not sent");
        }
    }

    fn send_to_worker<T: Header>(
        &mut self,
        to: &[u8],
        cmd: worker::Command,
        header: &T,
        body: Body,
    ) -> zmq::Result<()> {
        worker::PROTOCOL.encode_head_into(&mut self.head, cmd as u8, header);
        wire::send_routed(&mut self.backend, to, &self.head, &body)
    }
}
