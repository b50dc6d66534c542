//! Chaos: pipelined orders and queries from two clients while workers are killed (-9),
//! frozen (SIGSTOP … SIGCONT), drained (SIGTERM), the broker is killed and restarted, and
//! one worker refuses everything with `unavailable`. At the end, from the clients'
//! answers, the workers' journals and what the refusing worker was offered:
//!
//! - every request answered exactly once (a reply or an error code, none left hanging);
//! - every order (non-idempotent) executed at most once, and exactly as often as its
//!   answer says (ok: once; a "not delivered" error: never);
//! - nothing executed past its deadline;
//! - every idempotent request ok unless its life overlapped a broker restart;
//! - refused requests re-dispatched with their own body: every reply and every executed
//!   body is the request's own, and the refusing worker never gets the same order twice.
//!
//! About 60 s by default; `TRADEPLEX_CHAOS_SECS=N` sets the chaos phase's length and
//! `TRADEPLEX_CHAOS_SEED=N` replays a seed (the order of chaos actions and pauses; the
//! machine's timing still varies).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tradeplex_client::{CallOptions, Client};
use tradeplex_proto::mgmt::StatusReply;
use tradeplex_proto::now_unix_ms;
use tradeplex_proto::worker::{self as wp, ErrorHeader, HeartbeatHeader, ReadyHeader};
use tradeplex_proto::{ErrorCode, ServiceName, WorkerId};
use tradeplex_tests::*;

/// Length of the chaos phase by default; set-up and the final drain add about 10 s.
const DEFAULT_SECS: u64 = 50;
/// Missed heartbeats before broker or worker gives the other up: 1 s at the harness's
/// 100 ms heartbeat, so a stall of a busy machine rarely expires anyone, and zombies
/// frozen longer than that are expired.
const LIVENESS: u32 = 10;
/// Ordinary (journaling) echo workers kept in the pool.
const WORKERS: usize = 3;
const CAPACITY: &str = "4";
/// What the refusing worker announces.
const REFUSER_CAPACITY: u32 = 2;
const CLIENTS: usize = 2;
/// Calls each client keeps in flight (about).
const WINDOW: usize = 16;
const ORDER_TIMEOUT: Duration = Duration::from_secs(4);
const QUERY_TIMEOUT: Duration = Duration::from_secs(6);
/// A worker checks the deadline, then writes the journal line with a fresh timestamp: on
/// a loaded machine the thread can be preempted in between.
const DEADLINE_TOLERANCE_MS: u64 = 50;
/// Longest a worker stays frozen.
const MAX_ZOMBIE_MS: u64 = 2500;

#[test]
fn chaos_orders_execute_at_most_once_and_every_request_is_answered() {
    let secs = env_u64("TRADEPLEX_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("TRADEPLEX_CHAOS_SEED").unwrap_or_else(|| now_unix_ms() ^ 0x5eed);
    println!("chaos: seed {seed} (replay with TRADEPLEX_CHAOS_SEED={seed}), {secs} s of chaos");
    let started = Instant::now();

    let mut pool = Pool::start();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let orders_out = Arc::new(AtomicUsize::new(0));
    let loads: Vec<Load> = (0..CLIENTS)
        .map(|n| {
            Load::start(
                pool.broker.client(),
                n,
                seed.wrapping_add(1 + n as u64),
                ledger.clone(),
                stop.clone(),
                orders_out.clone(),
            )
        })
        .collect();

    let mut stats = Stats::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut plan = vec![
        Action::KillWorker,
        Action::Zombie,
        Action::Drain,
        Action::KillBroker,
    ];
    shuffle(&mut plan, &mut rng);
    let chaos_until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < chaos_until || !plan.is_empty() {
        // Random pauses are the workload's rhythm, not synchronisation.
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        let action = plan.pop().unwrap_or_else(|| Action::random(&mut rng));
        pool.act(action, &mut rng, &orders_out, &mut stats);
    }

    stop.store(true, Ordering::SeqCst);
    let unanswered_limit = Instant::now() + QUERY_TIMEOUT + Duration::from_secs(15);
    let all_answered = loads.into_iter().all(|l| l.finish(unanswered_limit));
    // Nothing can start executing after its deadline (workers refuse then), so once the
    // last deadline has passed the journals are complete.
    let last_deadline = ledger
        .lock()
        .unwrap()
        .sent
        .values()
        .map(|s| s.deadline_ms)
        .max()
        .unwrap_or(0);
    wait_until(
        QUERY_TIMEOUT + Duration::from_secs(5),
        "the last deadline",
        || now_unix_ms() > last_deadline + DEADLINE_TOLERANCE_MS,
    );
    let offers = pool.refuser.take().map(Refuser::finish).unwrap_or_default();
    let journals = pool.journals.clone();
    let refuser_id = pool.refuser_id.clone();
    drop(pool);

    let ledger = ledger.lock().unwrap();
    let executions: Vec<Execution> = journals.iter().flat_map(|j| journal_starts(j)).collect();
    let report = check(
        &ledger,
        &executions,
        &offers,
        &refuser_id,
        &stats,
        all_answered,
    );
    summarise(&ledger, &executions, &offers, &stats, started.elapsed());
    if report.is_empty() {
        for j in &journals {
            let _ = std::fs::remove_file(j);
        }
    } else {
        panic!(
            "chaos (seed {seed}) broke {} rule(s):\n{}\njournals: {journals:?}",
            report.len(),
            report.join("\n")
        );
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn shuffle<T>(v: &mut [T], rng: &mut SmallRng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
}

// ----- the cluster under test ------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    KillWorker,
    Zombie,
    Drain,
    KillBroker,
}

impl Action {
    fn random(rng: &mut SmallRng) -> Action {
        match rng.gen_range(0..100) {
            0..=34 => Action::KillWorker,
            35..=59 => Action::Zombie,
            60..=79 => Action::Drain,
            _ => Action::KillBroker,
        }
    }
}

#[derive(Default)]
struct Stats {
    actions: BTreeMap<Action, u32>,
    /// Orders the clients had outstanding at each kill, stop or drain.
    orders_out_at_action: Vec<usize>,
    /// Kills (of a worker or the broker) with no order outstanding at the clients.
    idle_kills: u32,
    /// The target's in-flight count (broker's view) just before each worker action;
    /// for broker kills, in flight plus queued at the broker.
    work_at_target: Vec<u32>,
    zombie_ms: Vec<u64>,
    /// Drained workers that did not exit 0 on their own.
    unclean_drains: Vec<String>,
    /// Broker restarts: (killed at, every worker registered again at), Unix ms.
    downtime: Vec<(u64, u64)>,
}

struct Pool {
    broker: Broker,
    workers: Vec<Worker>,
    journals: Vec<PathBuf>,
    refuser: Option<Refuser>,
    refuser_id: String,
    /// The chaos controller's own client, for `tpx.status`.
    status: Client,
}

impl Pool {
    fn start() -> Pool {
        let broker = Broker::start_with_liveness(LIVENESS, &[]);
        let refuser = Refuser::start(&broker.backend);
        let status = broker.client();
        let mut pool = Pool {
            refuser_id: refuser.id.to_string(),
            refuser: Some(refuser),
            broker,
            workers: Vec::new(),
            journals: Vec::new(),
            status,
        };
        for _ in 0..WORKERS {
            pool.start_worker();
        }
        pool.wait_whole();
        pool
    }

    fn start_worker(&mut self) {
        let journal = temp_path("chaos-journal");
        let path = journal.to_str().expect("utf-8 temp path").to_string();
        let (w, _) = self
            .broker
            .worker_with_liveness(LIVENESS, &["--capacity", CAPACITY, "--journal", &path]);
        self.journals.push(journal);
        self.workers.push(w);
    }

    fn status(&self) -> Option<StatusReply> {
        let opts = CallOptions::query().timeout(Duration::from_millis(1000));
        let reply = self
            .status
            .call(tradeplex_proto::mgmt::STATUS_SERVICE, Vec::new(), opts)
            .ok()?;
        rmp_serde::from_slice(&reply.body).ok()
    }

    /// Blocks until exactly the live workers (and the refuser) are registered for echo.
    fn wait_whole(&self) {
        let mut expected: BTreeSet<String> = self.workers.iter().map(|w| w.id.clone()).collect();
        expected.insert(self.refuser_id.clone());
        wait_until(Duration::from_secs(30), "the pool to be whole", || {
            self.status().is_some_and(|s| {
                let echo: BTreeSet<String> = s
                    .workers
                    .iter()
                    .filter(|w| w.services.iter().any(|x| x.as_str() == "echo"))
                    .map(|w| w.worker.to_string())
                    .collect();
                echo == expected
            })
        });
    }

    /// Waits (at most 3 s) until the clients have orders outstanding and `worker` (or,
    /// for None, the broker) holds work; returns how much it held.
    fn wait_for_work(&self, worker: Option<&str>, orders_out: &AtomicUsize) -> u32 {
        let until = Instant::now() + Duration::from_secs(3);
        let mut seen = 0;
        while Instant::now() < until {
            if let Some(s) = self.status() {
                seen = match worker {
                    Some(id) => s
                        .workers
                        .iter()
                        .filter(|w| w.worker.to_string() == id)
                        .map(|w| w.in_flight)
                        .sum(),
                    None => s.services.iter().map(|x| x.in_flight + x.queued).sum(),
                };
                if seen > 0 && orders_out.load(Ordering::SeqCst) > 0 {
                    return seen;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    }

    fn act(
        &mut self,
        action: Action,
        rng: &mut SmallRng,
        orders_out: &AtomicUsize,
        stats: &mut Stats,
    ) {
        *stats.actions.entry(action).or_default() += 1;
        let i = rng.gen_range(0..self.workers.len());
        let target = (action != Action::KillBroker).then(|| self.workers[i].id.clone());
        stats
            .work_at_target
            .push(self.wait_for_work(target.as_deref(), orders_out));
        let out = orders_out.load(Ordering::SeqCst);
        stats.orders_out_at_action.push(out);
        if out == 0 && matches!(action, Action::KillWorker | Action::KillBroker) {
            stats.idle_kills += 1;
        }
        match action {
            Action::KillWorker => {
                let mut dead = self.workers.swap_remove(i);
                dead.proc.kill9();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..800)));
                self.start_worker();
            }
            Action::Zombie => {
                let ms = rng.gen_range(200..MAX_ZOMBIE_MS);
                let w = &self.workers[i];
                assert!(w.proc.signal("STOP"), "SIGSTOP {}", w.id);
                std::thread::sleep(Duration::from_millis(ms));
                assert!(w.proc.signal("CONT"), "SIGCONT {}", w.id);
                stats.zombie_ms.push(ms);
            }
            Action::Drain => {
                let mut w = self.workers.swap_remove(i);
                if w.proc.terminate(Duration::from_secs(10)) != Some(0) {
                    stats.unclean_drains.push(w.id.clone());
                }
                self.start_worker();
            }
            Action::KillBroker => {
                let down = now_unix_ms();
                self.broker = self.broker.kill9_and_restart_with_liveness(LIVENESS, &[]);
                self.wait_whole();
                stats.downtime.push((down, now_unix_ms()));
                return;
            }
        }
        self.wait_whole();
    }
}

// ----- the refusing worker -----------------------------------------------------------------

/// A request the refusing worker was offered.
struct Offer {
    id: u64,
    idempotent: bool,
    body: Vec<u8>,
}

/// A raw worker (worker protocol over a DEALER) that offers `echo`, refuses every request
/// with `unavailable` a few ms after receiving it, and records what it was offered.
struct Refuser {
    id: WorkerId,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Offer>>>,
}

impl Refuser {
    fn start(backend: &str) -> Refuser {
        let id = WorkerId::random();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = zmq::Context::new();
        let dealer = ctx.socket(zmq::DEALER).expect("dealer");
        dealer.set_linger(0).expect("linger");
        dealer.connect(backend).expect("connect to the backend");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            refuse_loop(&dealer, id, &flag)
        });
        Refuser {
            id,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Offer> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("refuser thread"))
            .unwrap_or_default()
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refuse_loop(dealer: &zmq::Socket, id: WorkerId, stop: &AtomicBool) -> Vec<Offer> {
    let send = |message: Vec<u8>| {
        let _ = dealer.send(message, zmq::DONTWAIT);
    };
    let ready = || {
        let header = ReadyHeader {
            worker: id,
            services: vec![ServiceName::new("echo").expect("service name")],
            capacity: REFUSER_CAPACITY,
            session: 1,
            batch: false,
        };
        send(wp::encode(wp::Command::Ready, &header, &[]));
    };
    // The broker's view of a refusal's cost: a gateway check that takes a few ms, which
    // also bounds how fast a request can bounce between the broker and this worker.
    let mut rng = SmallRng::seed_from_u64(id.0.as_u64_pair().0);
    let mut offers = Vec::new();
    let mut due: Vec<(Instant, tradeplex_proto::JobId)> = Vec::new();
    let mut next_heartbeat = Instant::now();
    ready();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_heartbeat {
            send(wp::encode(wp::Command::Heartbeat, &HeartbeatHeader {}, &[]));
            next_heartbeat = now + Duration::from_millis(TEST_HEARTBEAT_MS);
        }
        due.retain(|(at, job)| {
            if *at > now {
                return true;
            }
            let header = ErrorHeader::new(*job, ErrorCode::Unavailable, "refuser: gateway down");
            send(wp::encode(wp::Command::Error, &header, &[]));
            false
        });
        if dealer.poll(zmq::POLLIN, 5).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            match wp::decode(&frames) {
                Ok((wp::Message::Request(h), at)) => {
                    let body = frames.first().and_then(|f| f.get(at..));
                    offers.push(Offer {
                        id: h.id.0,
                        idempotent: h.idempotent,
                        body: body.unwrap_or_default().to_vec(),
                    });
                    due.push((
                        Instant::now() + Duration::from_millis(rng.gen_range(1..10)),
                        h.job,
                    ));
                }
                // The broker does not know us (it restarted): register again.
                Ok((wp::Message::Disconnect(_), _)) => ready(),
                _ => {}
            }
        }
    }
    offers
}

// ----- the load ------------------------------------------------------------------------------

/// A request as sent.
struct Sent {
    key: String,
    body: Vec<u8>,
    idempotent: bool,
    sent_ms: u64,
    /// An upper bound of the deadline the client library put in the header.
    deadline_ms: u64,
}

/// How a call ended.
struct Answer {
    /// "ok" or the error's name.
    outcome: String,
    reply_body: Option<Vec<u8>>,
    worker: Option<String>,
    at_ms: u64,
}

#[derive(Default)]
struct Ledger {
    /// By request id (unique: each client starts its ids at a random point).
    sent: HashMap<u64, Sent>,
    answers: HashMap<u64, Vec<Answer>>,
}

/// One client: a sender keeping about `WINDOW` calls in flight and a collector waiting
/// for each answer.
struct Load {
    sender: JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl Load {
    fn start(
        client: Client,
        n: usize,
        seed: u64,
        ledger: Arc<Mutex<Ledger>>,
        stop: Arc<AtomicBool>,
        orders_out: Arc<AtomicUsize>,
    ) -> Load {
        let (calls_tx, calls_rx) =
            mpsc::sync_channel::<(u64, bool, tradeplex_client::PendingCall)>(WINDOW);
        let (done_tx, done) = mpsc::channel();
        let collector_ledger = ledger.clone();
        let collector_out = orders_out.clone();
        std::thread::spawn(move || {
            for (id, idempotent, call) in calls_rx {
                let result = call.wait();
                if !idempotent {
                    collector_out.fetch_sub(1, Ordering::SeqCst);
                }
                let answer = match result {
                    Ok(r) => Answer {
                        outcome: "ok".into(),
                        reply_body: Some(r.body),
                        worker: Some(r.worker.to_string()),
                        at_ms: now_unix_ms(),
                    },
                    Err(e) => Answer {
                        outcome: e.name().to_string(),
                        reply_body: None,
                        worker: None,
                        at_ms: now_unix_ms(),
                    },
                };
                let mut l = collector_ledger.lock().unwrap();
                l.answers.entry(id).or_default().push(answer);
            }
            let _ = done_tx.send(());
        });
        let sender = std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..4)));
                seq += 1;
                let key = format!("c{n}-{seq}");
                let idempotent = rng.gen_bool(0.3);
                // Some run inline at the worker (no sleep), most on its executor threads.
                let body = if rng.gen_bool(0.25) {
                    body(json!({ "k": key, "pad": "x".repeat(rng.gen_range(0..48)) }))
                } else {
                    body(json!({ "k": key, "sleep_ms": rng.gen_range(0..40) }))
                };
                let timeout = if idempotent {
                    QUERY_TIMEOUT
                } else {
                    ORDER_TIMEOUT
                };
                let opts = CallOptions {
                    idempotent,
                    timeout: Some(timeout),
                    ..CallOptions::default()
                };
                let sent_ms = now_unix_ms();
                if !idempotent {
                    orders_out.fetch_add(1, Ordering::SeqCst);
                }
                let call = client.send("echo", body.clone(), opts).expect("send");
                let sent = Sent {
                    key,
                    body,
                    idempotent,
                    sent_ms,
                    deadline_ms: now_unix_ms() + timeout.as_millis() as u64,
                };
                let id = call.id.0;
                let fresh = ledger.lock().unwrap().sent.insert(id, sent).is_none();
                assert!(fresh, "request id {id} used twice");
                if calls_tx.send((id, idempotent, call)).is_err() {
                    return;
                }
            }
        });
        Load { sender, done }
    }

    /// Stops sending (the caller has set the stop flag) and waits until every call is
    /// answered or `limit`; false if some call was still unanswered then.
    fn finish(self, limit: Instant) -> bool {
        self.sender.join().expect("sender thread");
        self.done
            .recv_timeout(limit.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

// ----- journals --------------------------------------------------------------------------

/// One execution start read from a worker journal.
#[derive(Debug)]
struct Execution {
    /// The client's request id.
    id: u64,
    /// The body's `"k"`, if the body was one of ours.
    key: Option<String>,
    ts_ms: u64,
    /// The deadline, if the journal records it.
    deadline_ms: Option<u64>,
    worker: String,
    /// The line, for reports.
    line: String,
}

/// Every execution start in a journal (its `start` lines: written before the handler runs).
fn journal_starts(path: &Path) -> Vec<Execution> {
    tradeplex_tests::journal_executions(path)
        .into_iter()
        .map(|v| Execution {
            id: v["id"].as_u64().unwrap_or(0),
            key: v["body"]["k"].as_str().map(str::to_string),
            ts_ms: v["ts_ms"].as_u64().unwrap_or(u64::MAX),
            deadline_ms: v["deadline_ms"].as_u64(),
            worker: v["worker"].as_str().unwrap_or_default().to_string(),
            line: v.to_string(),
        })
        .collect()
}

// ----- the verdict -----------------------------------------------------------------------

/// Error names that mean "not executed" (never delivered, or refused before executing).
const NOT_EXECUTED: [&str; 7] = [
    "deadline_exceeded",
    "unavailable",
    "unknown_service",
    "overloaded",
    "unknown_worker",
    "too_large",
    "bad_request",
];

/// Up to a few examples of each broken rule, with the count.
#[derive(Default)]
struct Rules(BTreeMap<&'static str, Vec<String>>);

impl Rules {
    fn broke(&mut self, rule: &'static str, example: String) {
        self.0.entry(rule).or_default().push(example);
    }

    fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(rule, examples)| {
                let shown: Vec<&str> = examples.iter().take(5).map(String::as_str).collect();
                format!(
                    "- {rule}: {} case(s), e.g.\n    {}",
                    examples.len(),
                    shown.join("\n    ")
                )
            })
            .collect()
    }
}

fn check(
    ledger: &Ledger,
    executions: &[Execution],
    offers: &[Offer],
    refuser_id: &str,
    stats: &Stats,
    all_answered: bool,
) -> Vec<String> {
    let mut rules = Rules::default();
    let mut by_id: HashMap<u64, Vec<&Execution>> = HashMap::new();
    for e in executions {
        by_id.entry(e.id).or_default().push(e);
    }
    if !all_answered {
        rules.broke(
            "every request answered",
            "some client still had calls without an answer long after their deadline".into(),
        );
    }
    for (id, sent) in &ledger.sent {
        let answers = ledger.answers.get(id).map_or(&[][..], Vec::as_slice);
        if answers.len() != 1 {
            rules.broke(
                "every request answered exactly once",
                format!("{} ({id}): {} answers", sent.key, answers.len()),
            );
        }
        let Some(a) = answers.first() else { continue };
        if let Some(reply) = &a.reply_body {
            if *reply != sent.body {
                rules.broke(
                    "every reply is the request's own body (refused requests re-dispatched with their body)",
                    format!(
                        "{} ({id}, idempotent {}): reply {:?} from {:?}",
                        sent.key,
                        sent.idempotent,
                        String::from_utf8_lossy(reply),
                        a.worker
                    ),
                );
            }
            if a.worker.as_deref() == Some(refuser_id) {
                rules.broke("the refusing worker never answers ok", sent.key.clone());
            }
        }
        let runs = by_id.get(id).map_or(&[][..], Vec::as_slice);
        if !sent.idempotent {
            let allowed = match a.outcome.as_str() {
                "ok" => 1..=1,
                o if NOT_EXECUTED.contains(&o) => 0..=0,
                _ => 0..=1,
            };
            if !allowed.contains(&runs.len()) {
                rules.broke(
                    "orders executed at most once, as their answer says",
                    format!(
                        "{} ({id}) answered {}, executed {} times at {:?}",
                        sent.key,
                        a.outcome,
                        runs.len(),
                        runs.iter().map(|e| &e.worker).collect::<Vec<_>>()
                    ),
                );
            }
        }
        for e in runs {
            let deadline = e.deadline_ms.unwrap_or(sent.deadline_ms);
            if e.ts_ms > deadline + DEADLINE_TOLERANCE_MS {
                rules.broke(
                    "nothing executed past its deadline",
                    format!(
                        "{} ({id}): {} ms late: {}",
                        sent.key,
                        e.ts_ms - deadline,
                        e.line
                    ),
                );
            }
            if e.key.as_deref() != Some(sent.key.as_str()) {
                rules.broke(
                    "every execution has the request's own body (refused requests re-dispatched with their body)",
                    format!("{} ({id}) executed as {}", sent.key, e.line),
                );
            }
        }
        if sent.idempotent && a.outcome != "ok" {
            let overlaps = stats
                .downtime
                .iter()
                .any(|(down, up)| sent.sent_ms <= *up && a.at_ms >= *down);
            if !overlaps {
                rules.broke(
                    "idempotent requests 100 % ok outside broker downtime",
                    format!(
                        "{} ({id}) sent at {} answered {} at {}",
                        sent.key, sent.sent_ms, a.outcome, a.at_ms
                    ),
                );
            }
        }
    }
    for e in executions
        .iter()
        .filter(|e| !ledger.sent.contains_key(&e.id))
    {
        rules.broke("every execution is of a request sent", e.line.clone());
    }
    let mut refused_orders: HashMap<u64, u32> = HashMap::new();
    for o in offers {
        let ours = ledger.sent.get(&o.id).is_some_and(|s| s.body == o.body);
        if !ours {
            rules.broke(
                "requests reach the refusing worker with their own body",
                format!(
                    "id {} (idempotent {}): offered {:?}",
                    o.id,
                    o.idempotent,
                    String::from_utf8_lossy(&o.body)
                ),
            );
        }
        if !o.idempotent {
            *refused_orders.entry(o.id).or_default() += 1;
        }
    }
    for (id, n) in refused_orders.iter().filter(|(_, n)| **n > 1) {
        let key = ledger.sent.get(id).map_or("?", |s| s.key.as_str());
        rules.broke(
            "a refused order never goes back to the worker that refused it",
            format!("{key} ({id}) offered to the refuser {n} times"),
        );
    }
    if offers.is_empty() {
        rules.broke("the refusing worker was offered requests", String::new());
    }
    if stats.idle_kills > 0 {
        rules.broke(
            "pipelined orders in flight at every kill",
            format!("{} kill(s) with no order outstanding", stats.idle_kills),
        );
    }
    for id in &stats.unclean_drains {
        rules.broke("a drained worker exits 0", id.clone());
    }
    rules.lines()
}

fn summarise(
    ledger: &Ledger,
    executions: &[Execution],
    offers: &[Offer],
    stats: &Stats,
    elapsed: Duration,
) {
    let mut outcomes: BTreeMap<(bool, &str), u32> = BTreeMap::new();
    for (id, sent) in &ledger.sent {
        for a in ledger.answers.get(id).into_iter().flatten() {
            *outcomes
                .entry((sent.idempotent, a.outcome.as_str()))
                .or_default() += 1;
        }
    }
    let show = |idempotent: bool| {
        outcomes
            .iter()
            .filter(|((i, _), _)| *i == idempotent)
            .map(|((_, o), n)| format!("{o}: {n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let orders = ledger.sent.values().filter(|s| !s.idempotent).count();
    let queries = ledger.sent.len() - orders;
    let order_runs = executions
        .iter()
        .filter(|e| ledger.sent.get(&e.id).is_some_and(|s| !s.idempotent))
        .count();
    let downtime: Vec<u64> = stats.downtime.iter().map(|(d, u)| u - d).collect();
    let max_late = executions
        .iter()
        .filter_map(|e| {
            let d = e
                .deadline_ms
                .or_else(|| ledger.sent.get(&e.id).map(|s| s.deadline_ms))?;
            Some(e.ts_ms as i64 - d as i64)
        })
        .max();
    println!("chaos summary ({:.1} s):", elapsed.as_secs_f64());
    println!(
        "  sent: {} ({orders} orders, {queries} idempotent queries)",
        ledger.sent.len()
    );
    println!("  orders answered:  {}", show(false));
    println!("  queries answered: {}", show(true));
    println!("  actions: {:?}", stats.actions);
    println!(
        "  orders outstanding at each action: {:?}",
        stats.orders_out_at_action
    );
    println!(
        "  work at the target before each action: {:?}",
        stats.work_at_target
    );
    println!("  zombie pauses (ms): {:?}", stats.zombie_ms);
    println!("  broker downtime (ms): {downtime:?}");
    println!(
        "  executions (journal starts): {} ({order_runs} of orders), latest start relative to deadline: {max_late:?} ms",
        executions.len()
    );
    println!(
        "  offered to the refusing worker: {} ({} orders)",
        offers.len(),
        offers.iter().filter(|o| !o.idempotent).count()
    );
}
