//! What the loop reads from workers: answers (alone or in a BATCH), and the refusal of
//! what cannot be read.

use tradeplex_proto::{worker, ErrorCode, ProtoError};

use super::{Loop, OldLayout, Side};
use crate::body::Body;
use crate::dispatch::Clock;

impl Loop {
    pub(super) fn on_backend(&mut self, clock: Clock) {
        let Some((identity, decoded)) = self.read_routed(worker::FRAMES, worker::decode) else {
            return;
        };
        match decoded {
            Ok((worker::Message::Reply(h), body_start)) => {
                let body = self.frames.take(1).tail_from(body_start);
                self.on_worker_reply(clock, &identity, h, body);
            }
            Ok((worker::Message::Batch(h), body_start)) => {
                let frame = self.frames.take(1);
                self.on_worker_batch(clock, identity, h, frame, body_start);
            }
            Ok((msg, _)) => {
                if !(matches!(msg, worker::Message::Ready(_)) && self.pair_refuses_ready(&identity))
                {
                    self.dispatcher
                        .on_worker(clock, &identity, msg, crate::body::Body::new())
                }
            }
            Err(e) => {
                let message = self
                    .frames
                    .as_slice()
                    .get(1)
                    .map_or(Vec::new(), |f| f.to_vec());
                if let Some(old) = self.old_layout(worker::V1_FRAME, worker::V2_ID) {
                    self.bad_input("backend", e.reason(), &e.to_string());
                    if self.backend_refusals.allow().is_some() {
                        self.answer_old_worker(&identity, old);
                    }
                    return;
                }
                self.refuse_worker(clock, identity, &message, &e);
            }
        }
    }

    /// A REPLY, its body checked against the size limit (too large: the job's client is
    /// answered `too_large`).
    fn on_worker_reply(
        &mut self,
        clock: Clock,
        identity: &[u8],
        h: worker::ReplyHeader,
        body: Body,
    ) {
        if body.len() > self.max_body {
            let msg = format!(
                "reply body is {} bytes, limit {}",
                body.len(),
                self.max_body
            );
            self.bad_input("backend", "too_large", &msg);
            let err = worker::ErrorHeader::new(h.job, ErrorCode::TooLarge, msg);
            self.dispatcher
                .on_worker(clock, identity, worker::Message::Error(err), Body::new());
        } else {
            self.dispatcher
                .on_worker(clock, identity, worker::Message::Reply(h), body);
        }
    }

    /// A worker's BATCH: each of its REPLYs and ERRORs handled as if it had come alone.
    /// The messages before a break in the batch's layout are handled; the break is refused.
    fn on_worker_batch(
        &mut self,
        clock: Clock,
        identity: Vec<u8>,
        h: tradeplex_proto::batch::BatchHeader,
        mut frame: Body,
        body_start: usize,
    ) {
        for item in self.open_batch("from_workers", &frame, body_start, &h) {
            let range = match item {
                Ok(r) => r,
                Err(e) => {
                    self.refuse_worker(clock, identity.clone(), &[], &e);
                    continue;
                }
            };
            let message = frame.get(range.clone()).unwrap_or(&[]);
            match worker::decode(&[message]) {
                Ok((worker::Message::Reply(h), at)) => {
                    let body = frame.share().range(range.start + at..range.end);
                    self.on_worker_reply(clock, &identity, h, body);
                }
                Ok((msg @ worker::Message::Error(_), _)) => {
                    self.dispatcher
                        .on_worker(clock, &identity, msg, Body::new());
                }
                Ok(_) => {
                    let e = ProtoError::BadField {
                        field: "count",
                        reason: "a worker's BATCH carries only REPLY and ERROR".into(),
                    };
                    self.refuse_worker(clock, identity.clone(), &[], &e);
                }
                Err(e) => {
                    let message = message.to_vec();
                    self.refuse_worker(clock, identity.clone(), &message, &e);
                }
            }
        }
    }

    /// A worker message that could not be read (`message`, when known): logged and
    /// counted; the job it names, if any can be read, is answered `worker_error`; the
    /// sender is told (rate-limited: a peer that resends whatever it is refused must not
    /// turn the backend into a ping-pong).
    fn refuse_worker(&mut self, clock: Clock, identity: Vec<u8>, message: &[u8], e: &ProtoError) {
        let detail = e.to_string();
        self.bad_input("backend", e.reason(), &detail);
        if let Some(job) = worker::salvage_job(&[message]) {
            self.dispatcher
                .on_garbled_answer(clock, &identity, job, &detail);
        }
        if self.backend_refusals.allow().is_some() {
            self.dispatcher
                .refuse_worker_message(identity, e.code(), &detail);
        }
    }

    /// Refuses an old worker's message with a DISCONNECT in its own layout: it reads a
    /// refusal (`unsupported_version: …`) and logs it.
    fn answer_old_worker(&mut self, to: &[u8], old: OldLayout) {
        let reason = format!(
            "{}: {}",
            ErrorCode::UnsupportedVersion.name(),
            old.refusal(&worker::PROTOCOL, "worker")
        );
        let h = worker::DisconnectHeader { reason };
        let frames = match old {
            OldLayout::V1 => worker::encode_v1_disconnect(&h).to_vec(),
            OldLayout::V2 => worker::encode_v2_disconnect(&h).to_vec(),
        };
        self.send_old(Side::Backend, to, &frames);
    }
}
