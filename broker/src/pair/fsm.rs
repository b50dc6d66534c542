//! The Binary Star state machine as plain data: four states, five events, and the rule
//! against split brain (a passive broker takes over only when its peer has been silent
//! for the window *and* a client or worker has turned to it).

use std::time::{Duration, Instant};

/// Which broker of the pair this is (configured, never changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Becomes active at start when it hears the backup (or a client turns to it after
    /// the window with no peer).
    Primary,
    /// Waits for the primary; active only after a failover.
    Backup,
}

impl Role {
    /// The name used in config, metrics and `tpx.status`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// Where this broker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A primary that has not decided yet (peer not heard, window not over).
    Primary,
    /// A backup that has not heard an active primary yet.
    Backup,
    /// Serving clients and workers.
    Active,
    /// Refusing them: the peer is active.
    Passive,
}

impl State {
    /// Every state, in the order of their wire numbers.
    pub const ALL: [State; 4] = [State::Primary, State::Backup, State::Active, State::Passive];

    /// The name used in metrics (`tradeplex_pair_state{state}`) and `tpx.status`.
    pub fn name(self) -> &'static str {
        match self {
            State::Primary => "primary",
            State::Backup => "backup",
            State::Active => "active",
            State::Passive => "passive",
        }
    }

    /// The state's number on the state link.
    pub fn to_wire(self) -> u8 {
        match self {
            State::Primary => 1,
            State::Backup => 2,
            State::Active => 3,
            State::Passive => 4,
        }
    }

    /// The state a number on the state link names, if any.
    pub fn from_wire(b: u8) -> Option<State> {
        State::ALL.into_iter().find(|s| s.to_wire() == b)
    }

    /// The state a broker of `role` starts in.
    pub fn initial(role: Role) -> State {
        match role {
            Role::Primary => State::Primary,
            Role::Backup => State::Backup,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The peer says it is in this state.
    Peer(State),
    /// A client REQUEST or a worker READY arrived (a vote for this broker).
    ClientRequest,
}

/// What the caller should do about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed; a client request may be served (this broker is active).
    Serve,
    /// A client request must be refused: this broker is not active (and may not take over).
    Refuse,
    /// The state changed to `to` (from `from`); serve a client request if `to` is active.
    Changed {
        /// The state before.
        from: State,
        /// The state now.
        to: State,
        /// Why, for the log.
        why: Why,
    },
    /// Nothing changed (a peer state that needs no move).
    Unchanged,
}

/// Why the state changed (log lines and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The normal start-up handshake.
    Peer,
    /// Peer silent past the window and a client turned to us: failover.
    Takeover,
    /// Both brokers active: the backup gives way.
    DualActive,
    /// Both passive: the primary takes the lead so someone serves.
    DualPassive,
}

/// The machine: the state and when the peer was last heard.
#[derive(Debug, Clone)]
pub struct Fsm {
    role: Role,
    state: State,
    window: Duration,
    /// The peer counts as silent from this instant on.
    peer_expiry: Instant,
    peer_state: Option<State>,
    peer_seen: Option<Instant>,
}

impl Fsm {
    /// A machine for `role` starting at `now`; the peer counts as silent after `window`.
    pub fn new(role: Role, window: Duration, now: Instant) -> Fsm {
        Fsm {
            role,
            state: State::initial(role),
            window,
            peer_expiry: now + window,
            peer_state: None,
            peer_seen: None,
        }
    }

    /// The configured role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the peer last said, and when.
    pub fn peer(&self) -> Option<(State, Instant)> {
        self.peer_state.zip(self.peer_seen)
    }

    /// True while the peer has been silent past the window.
    pub fn peer_silent(&self, now: Instant) -> bool {
        now >= self.peer_expiry
    }

    /// The peer spoke but its word cannot move us (e.g. it has our role): it is alive,
    /// so the window starts again and nobody takes over.
    pub fn keepalive(&mut self, now: Instant) {
        self.peer_expiry = now + self.window;
    }

    /// Feeds one event at `now`.
    pub fn on(&mut self, event: Event, now: Instant) -> Outcome {
        let next = match event {
            Event::Peer(p) => {
                self.peer_state = Some(p);
                self.peer_seen = Some(now);
                self.peer_expiry = now + self.window;
                self.on_peer(p)
            }
            Event::ClientRequest => self.on_client(now),
        };
        match next {
            Next::Stay if event == Event::ClientRequest => {
                if self.state == State::Active {
                    Outcome::Serve
                } else {
                    Outcome::Refuse
                }
            }
            Next::Stay => Outcome::Unchanged,
            Next::Go(to, why) => {
                let from = std::mem::replace(&mut self.state, to);
                if event == Event::ClientRequest && to != State::Active {
                    return Outcome::Refuse;
                }
                Outcome::Changed { from, to, why }
            }
        }
    }

    fn on_peer(&self, peer: State) -> Next {
        use State::*;
        match (self.state, peer) {
            // Start-up: the primary leads as soon as it hears the backup.
            (Primary, Backup) => Next::Go(Active, Why::Peer),
            (Primary, Active) => Next::Go(Passive, Why::Peer),
            (Backup, Active) => Next::Go(Passive, Why::Peer),
            // Never two active: the backup gives way, the primary stays.
            (Active, Active) if self.role == Role::Backup => Next::Go(Passive, Why::DualActive),
            // The peer restarted (it says primary/backup again): we were passive, so it
            // is not serving; we lead.
            (Passive, Primary | Backup) => Next::Go(Active, Why::Peer),
            // Nobody serving: the primary leads, the backup waits for it.
            (Passive, Passive) if self.role == Role::Primary => Next::Go(Active, Why::DualPassive),
            _ => Next::Stay,
        }
    }

    fn on_client(&self, now: Instant) -> Next {
        match self.state {
            State::Active => Next::Stay,
            // A primary with no peer after the window serves (the backup alone never
            // starts serving: it has not seen a primary to replace).
            State::Primary if self.peer_silent(now) => Next::Go(State::Active, Why::Takeover),
            State::Passive if self.peer_silent(now) => Next::Go(State::Active, Why::Takeover),
            State::Primary | State::Backup | State::Passive => Next::Stay,
        }
    }
}

enum Next {
    Stay,
    Go(State, Why),
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(400);

    fn at(role: Role, state: State) -> (Fsm, Instant) {
        let t0 = Instant::now();
        let mut f = Fsm::new(role, W, t0);
        f.state = state;
        (f, t0)
    }

    #[test]
    fn every_peer_event_in_every_state() {
        use Role::{Backup as B, Primary as P};
        use State::*;
        // (role, state, peer says) -> state after
        let table = [
            (P, Primary, Primary, Primary),
            (P, Primary, Backup, Active),
            (P, Primary, Active, Passive),
            (P, Primary, Passive, Primary),
            (B, Backup, Primary, Backup),
            (B, Backup, Backup, Backup),
            (B, Backup, Active, Passive),
            (B, Backup, Passive, Backup),
            (P, Active, Primary, Active),
            (P, Active, Backup, Active),
            (P, Active, Active, Active),
            (P, Active, Passive, Active),
            (B, Active, Primary, Active),
            (B, Active, Backup, Active),
            (B, Active, Active, Passive),
            (B, Active, Passive, Active),
            (P, Passive, Primary, Active),
            (P, Passive, Backup, Active),
            (P, Passive, Active, Passive),
            (P, Passive, Passive, Active),
            (B, Passive, Primary, Active),
            (B, Passive, Backup, Active),
            (B, Passive, Active, Passive),
            (B, Passive, Passive, Passive),
        ];
        for (role, from, peer, to) in table {
            let (mut f, t0) = at(role, from);
            let out = f.on(Event::Peer(peer), t0);
            assert_eq!(f.state(), to, "{role:?} in {from:?} hearing {peer:?}");
            if from == to {
                assert_eq!(out, Outcome::Unchanged);
            } else {
                assert!(
                    matches!(out, Outcome::Changed { from: a, to: b, .. } if a == from && b == to)
                );
            }
            assert_eq!(f.peer(), Some((peer, t0)));
        }
    }

    #[test]
    fn client_requests_while_the_peer_is_alive_never_take_over() {
        use State::*;
        for (role, state, out) in [
            (Role::Primary, Primary, Outcome::Refuse),
            (Role::Backup, Backup, Outcome::Refuse),
            (Role::Primary, Active, Outcome::Serve),
            (Role::Backup, Active, Outcome::Serve),
            (Role::Primary, Passive, Outcome::Refuse),
            (Role::Backup, Passive, Outcome::Refuse),
        ] {
            let (mut f, t0) = at(role, state);
            f.on(Event::Peer(Active), t0);
            f.state = state;
            // Just inside the window.
            let got = f.on(Event::ClientRequest, t0 + W - Duration::from_millis(1));
            assert_eq!(got, out, "{role:?} {state:?}");
            assert_eq!(f.state(), state);
        }
    }

    #[test]
    fn client_requests_after_the_window_take_over_except_at_a_fresh_backup() {
        use State::*;
        for (role, state, after) in [
            (Role::Primary, Primary, Active),
            (Role::Backup, Backup, Backup),
            (Role::Primary, Active, Active),
            (Role::Backup, Active, Active),
            (Role::Primary, Passive, Active),
            (Role::Backup, Passive, Active),
        ] {
            let (mut f, t0) = at(role, state);
            f.on(Event::Peer(Active), t0);
            f.state = state;
            let out = f.on(Event::ClientRequest, t0 + W);
            assert_eq!(f.state(), after, "{role:?} {state:?}");
            match (state, after) {
                (Active, _) => assert_eq!(out, Outcome::Serve),
                (s, a) if s == a => assert_eq!(out, Outcome::Refuse),
                _ => assert_eq!(
                    out,
                    Outcome::Changed {
                        from: state,
                        to: Active,
                        why: Why::Takeover
                    }
                ),
            }
        }
    }

    #[test]
    fn silence_alone_changes_nothing() {
        let (f, t0) = at(Role::Backup, State::Passive);
        assert!(f.peer_silent(t0 + W));
        assert_eq!(f.state(), State::Passive);
    }

    #[test]
    fn hearing_the_peer_restarts_the_window() {
        let t0 = Instant::now();
        let mut f = Fsm::new(Role::Backup, W, t0);
        f.on(Event::Peer(State::Active), t0);
        let t1 = t0 + W - Duration::from_millis(10);
        f.on(Event::Peer(State::Active), t1);
        assert!(!f.peer_silent(t0 + W));
        assert_eq!(f.on(Event::ClientRequest, t0 + W), Outcome::Refuse);
        assert!(f.peer_silent(t1 + W));
    }

    #[test]
    fn wire_numbers_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_wire(s.to_wire()), Some(s));
        }
        assert_eq!(State::from_wire(0), None);
        assert_eq!(State::from_wire(5), None);
    }
}
