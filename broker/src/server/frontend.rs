//! What the loop reads from clients: REQUESTs (alone or in a BATCH), and the refusal of
//! what cannot be read or may not be served here.

use std::time::Instant;

use tradeplex_proto::batch::BatchHeader;
use tradeplex_proto::{client, ErrorCode, ProtoError, RequestId};

use super::{Loop, OldLayout, Side};
use crate::body::Body;
use crate::dispatch::Clock;
use crate::risk::identity::Refusal;
use crate::risk::Caller;

impl Loop {
    pub(super) fn on_frontend(&mut self, clock: Clock) {
        let Some((identity, decoded)) = self.read_routed(client::FRAMES, client::decode) else {
            return;
        };
        match decoded {
            Ok((client::Message::Request(h), body_start)) => {
                // Who the caller is before the frame is taken: frame 1 (after the
                // ROUTER's routing id) came off the wire and carries the connection's
                // properties.
                let caller = self.caller(self.frames.as_slice().get(1), &h);
                let body = self.frames.take(1).tail_from(body_start);
                self.on_client_request(clock, identity, h, caller, body);
            }
            Ok((client::Message::Batch(h), body_start)) => {
                let frame = self.frames.take(1);
                self.on_client_batch(clock, identity, h, frame, body_start);
            }
            Ok(_) => {
                let msg = "clients may only send REQUEST and BATCH".to_string();
                self.bad_input("frontend", "unexpected_command", &msg);
                let id = self.salvage_id();
                self.dispatcher
                    .reject_client(identity, id, ErrorCode::BadRequest, msg);
            }
            Err(e) => {
                self.bad_input("frontend", e.reason(), &e.to_string());
                if let Some(old) = self.old_layout(client::V1_FRAME, client::V2_ID) {
                    self.answer_old_client(&identity, old);
                    return;
                }
                let id = self.salvage_id();
                self.dispatcher
                    .reject_client(identity, id, e.code(), e.to_string());
            }
        }
    }

    /// One REQUEST (alone or out of a BATCH): refused if this broker may not serve now,
    /// its body is over the limit or its caller is not allowed; else dispatched.
    fn on_client_request(
        &mut self,
        clock: Clock,
        identity: Vec<u8>,
        h: client::RequestHeader,
        caller: Result<Caller, Refusal>,
        body: Body,
    ) {
        if self.pair_refuses_request(&identity, &h) {
            return;
        }
        if body.len() > self.max_body {
            let msg = format!("body is {} bytes, limit {}", body.len(), self.max_body);
            self.bad_input("frontend", "too_large", &msg);
            self.dispatcher
                .reject_client(identity, h.id, ErrorCode::TooLarge, msg);
            return;
        }
        match caller {
            Ok(caller) => self
                .dispatcher
                .on_request_from(clock, identity, &caller, h, body),
            Err(r) => self.forbid(identity, h.id, r),
        }
    }

    /// A client's BATCH: each REQUEST in it handled as if it had come alone, in order.
    /// What cannot be read is refused (with its request id where one can be read) and the
    /// rest still handled; a break in the layout is refused after the messages before it.
    fn on_client_batch(
        &mut self,
        clock: Clock,
        identity: Vec<u8>,
        h: BatchHeader,
        mut frame: Body,
        body_start: usize,
    ) {
        for item in self.open_batch("from_clients", &frame, body_start, &h) {
            let range = match item {
                Ok(r) => r,
                Err(e) => {
                    self.refuse_client(identity.clone(), RequestId(0), &e);
                    continue;
                }
            };
            let message = frame.get(range.clone()).unwrap_or(&[]);
            match client::decode(&[message]) {
                Ok((client::Message::Request(h), at)) => {
                    // The batch's frame came off the wire: it carries the connection's
                    // properties for every request in it.
                    let caller = self.caller(Some(&frame), &h);
                    let body = frame.share().range(range.start + at..range.end);
                    self.on_client_request(clock, identity.clone(), h, caller, body);
                }
                Ok(_) => {
                    let id = client::salvage_id(message);
                    let e = ProtoError::BadField {
                        field: "count",
                        reason: "a client's BATCH carries only REQUEST".into(),
                    };
                    self.refuse_client(identity.clone(), id, &e);
                }
                Err(e) => {
                    let id = client::salvage_id(message);
                    self.refuse_client(identity.clone(), id, &e);
                }
            }
        }
    }

    /// Logs and counts a client message that cannot be served, and answers its request
    /// `id` (0 when none could be read) with the error's code.
    fn refuse_client(&mut self, identity: Vec<u8>, id: RequestId, e: &ProtoError) {
        let detail = e.to_string();
        self.bad_input("frontend", e.reason(), &detail);
        self.dispatcher
            .reject_client(identity, id, e.code(), detail);
    }

    /// Who sent a request (`frame`'s `User-Id` / `Peer-Address`, the header's declared
    /// `client`).
    fn caller(&self, frame: Option<&Body>, h: &client::RequestHeader) -> Result<Caller, Refusal> {
        let ids = &self.identities;
        if !ids.curve() && h.client.is_none() {
            return Ok(ids.anonymous());
        }
        let user_id = frame.and_then(|f| f.property(c"User-Id"));
        let peer = frame.and_then(|f| f.property(c"Peer-Address"));
        ids.resolve(user_id, peer, h.client.as_deref())
    }

    fn forbid(&mut self, identity: Vec<u8>, id: RequestId, r: Refusal) {
        self.identities.count_forbidden(r.reason);
        if let Some(suppressed) = self.forbidden_log.allow() {
            tracing::warn!(
                reason = r.reason,
                suppressed,
                "request refused: {}",
                r.message
            );
        }
        self.dispatcher
            .reject_client(identity, id, ErrorCode::Forbidden, r.message);
    }

    /// The request id of a message that failed to decode, if it has one.
    fn salvage_id(&self) -> RequestId {
        // Frame 0 is the ROUTER identity, so the message is frame 1.
        let message = self.frames.as_slice().get(1).map_or(&[][..], |f| &f[..]);
        client::salvage_id(message)
    }

    /// Answers an old client in its own layout, so it reads `unsupported_version` (and its
    /// request's id) instead of a message it cannot decode.
    fn answer_old_client(&mut self, to: &[u8], old: OldLayout) {
        let id = client::salvage_id_from_header(self.old_header(old));
        let message = old.refusal(&client::PROTOCOL, "client");
        let h = client::ErrorHeader::new(id, ErrorCode::UnsupportedVersion, message);
        let frames = match old {
            OldLayout::V1 => client::encode_v1_error(&h).to_vec(),
            OldLayout::V2 => client::encode_v2_error(&h).to_vec(),
        };
        self.send_old(Side::Frontend, to, &frames);
    }

    /// True (and the client answered `unavailable`) when this broker may not serve a
    /// REQUEST now: it is not the pair's active broker. `tpx.status` is always answered
    /// (operators ask each broker where it stands) and is no vote for a takeover.
    fn pair_refuses_request(&mut self, identity: &[u8], h: &client::RequestHeader) -> bool {
        let Some(p) = &mut self.pair else {
            return false;
        };
        if h.service.as_str() == tradeplex_proto::mgmt::STATUS_SERVICE {
            return false;
        }
        let Err(message) = p.admit(Instant::now(), false) else {
            return false;
        };
        self.dispatcher
            .reject_client(identity.to_vec(), h.id, ErrorCode::Unavailable, message);
        true
    }
}
