//! Drives the bench: the flags, the scenarios in order (each on the Tradeplex side and its
//! baselines, alternating), the report printed at the end and the JSON file.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use tradeplex_ops::Shutdown;

use crate::cluster::{self, Cluster, ClusterOptions};
use crate::events::{BaselineProxy, EventRun, EventSpec, Pace};
use crate::nats::{NatsPeer, Unavailable};
use crate::raw::{RawClientPipe, RawWorkers};
use crate::report::{Peer, Report, Side, Unit};
use crate::rr::{BaselinePipe, BaselineRr, RrConfig, RrRun, TradeplexPipe};
use crate::{events, journal, python, raw, rr, trading};

/// Peers `--peers` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerChoice {
    /// NATS request/reply.
    Nats,
    /// vn.py's RpcClient/RpcServer.
    Vnpy,
    /// No peers.
    None,
}

/// Scenarios of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Request/reply echo calls, window 1 and pipelined (and at 1 client × 1 worker the
    /// peers: NATS, vn.py RPC).
    Rr,
    /// The same through the broker alone: the bench's minimal client and echo worker
    /// speak the Tradeplex protocols (no client library, no worker process).
    RrRaw,
    /// rr with CURVE on every socket (a second cluster, keys made for the run) against rr
    /// in plaintext: the "baseline" column is the plaintext cluster, the ratio CURVE's cost.
    RrCurve,
    /// rr over ipc:// (a second cluster) against the bare hop over ipc://, beside the
    /// tcp:// rows of rr.
    RrIpc,
    /// Tick events through the relay: paced, lossless capacity, flat out.
    Events,
    /// Broker memory, and a stalled subscriber during flat-out publishing.
    Memory,
    /// send_order on SIM to the order-accepted event (needs the SIM gateway).
    Trading,
    /// The order journal's cost: send_order and echo with no journal, a journal without
    /// fsync, fsync always and fsync batched.
    Journal,
    /// The Python client (window 1 and pipelined) through the broker and an echo worker,
    /// against vn.py's RpcClient/RpcServer.
    Python,
    /// The latency the broker's pre-trade risk stage adds to send_order (all rules on).
    Risk,
}

/// Flags of `tradeplex bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Repetitions of each measurement, Tradeplex and baseline alternating; medians printed.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: usize,
    /// Requests per request/reply run (all clients together), after a warm-up.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) messages: u64,
    /// Events per paced or flat-out events run.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) event_messages: u64,
    /// Longest one run may take, seconds (it then stops and reports what it did).
    #[arg(long, default_value_t = 20.0)]
    pub(crate) time_cap_s: f64,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "python,rr,rr-raw,events,memory,trading,journal,risk"
    )]
    pub(crate) scenarios: Vec<Scenario>,
    /// Write the results (medians and every run) as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Use ipc:// endpoints in a temporary directory instead of tcp://127.0.0.1.
    #[arg(long)]
    pub(crate) ipc: bool,
    /// Request/reply configurations, CLIENTSxWORKERS.
    #[arg(long, value_delimiter = ',', default_value = "1x1,1x2,4x2")]
    pub(crate) configs: Vec<RrConfig>,
    /// Request/reply windows (requests in flight per client).
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    pub(crate) windows: Vec<usize>,
    /// Capacity of every worker, Tradeplex and baseline alike (requests it holds at once;
    /// a Tradeplex worker runs one executor thread per unit).
    #[arg(long, default_value_t = 64)]
    pub(crate) capacity: u32,
    /// Event high-water mark: the broker's event_hwm, the baseline proxy's, and the
    /// bench publisher's and subscribers'.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) hwm: i32,
    /// Subscriber counts for the events scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub(crate) subscribers: Vec<usize>,
    /// Paced events rate, events/s.
    #[arg(long, default_value_t = 50_000.0)]
    pub(crate) rate: f64,
    /// Length of each step of the lossless-capacity search, ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) step_ms: u64,
    /// Highest rate the lossless-capacity search tries, events/s.
    #[arg(long, default_value_t = 4_000_000.0)]
    pub(crate) max_rate: f64,
    /// Bisection steps of the lossless-capacity search after the doubling.
    #[arg(long, default_value_t = 3)]
    pub(crate) refine: usize,
    /// How long one subscriber reads nothing during flat-out publishing, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) stall_s: f64,
    /// Reading subscribers beside the stalled one in the memory scenario.
    #[arg(long, default_value_t = 3)]
    pub(crate) stall_others: usize,
    /// Orders per trading run (after a tenth as many for warm-up).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) orders: u64,
    /// Where the journal scenario's workers write their journals (put it on the disk
    /// production journals use; default: the bench's scratch directory under $TMPDIR).
    #[arg(long)]
    pub(crate) journal_dir: Option<PathBuf>,
    /// Python interpreter of the python scenario (default: the repository's
    /// target/python-venv/bin/python if it exists, else python3).
    #[arg(long, env = "TRADEPLEX_BENCH_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Timed calls per Python run (each of window 1 and pipelined), after a warm-up.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) python_calls: u64,
    /// Calls in flight in the pipelined Python run.
    #[arg(long, default_value_t = 256)]
    pub(crate) python_window: usize,
    /// Peers measured beside the rr scenario at 1 client × 1 worker, same body and counts:
    /// `nats` (a nats-server child, async-nats request/reply, every window) and `vnpy`
    /// (vn.py RpcClient → RpcServer direct, window 1, with --python); `none` for neither.
    /// A peer whose program is missing is skipped with a note.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "nats,vnpy")]
    pub(crate) peers: Vec<PeerChoice>,
    /// The NATS peer's server program (default: `nats-server` from PATH).
    #[arg(
        long,
        env = "TRADEPLEX_BENCH_NATS_SERVER",
        default_value = "nats-server"
    )]
    pub(crate) nats_server: PathBuf,
    /// Extra flag for tradeplex-broker (repeatable), e.g. --broker-arg=--max-queue=50000.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub(crate) broker_args: Vec<String>,
    /// Directory of tradeplex-broker and tradeplex-worker (default: next to this binary).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Keep the cluster running after the request/reply scenario and wait this many
    /// seconds first, printing the broker's pid (to attach a profiler).
    #[arg(long, hide = true)]
    pub(crate) pause_s: Option<f64>,
}

static STOP: OnceLock<Shutdown> = OnceLock::new();

/// True once SIGINT/SIGTERM asked the bench to stop.
pub(crate) fn interrupted() -> bool {
    STOP.get().is_some_and(|s| s.is_triggered())
}

pub(crate) fn check_interrupt() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    // Catch Ctrl-C so the child processes are killed by their guards, not orphaned.
    let stop = STOP.get_or_init(Shutdown::new);
    stop.on_signals().context("installing signal handlers")?;
    let bin_dir = cluster::bin_dir(args.bin_dir.as_deref())?;
    let mut report = Report::default();
    let started = Instant::now();
    let result = Bench {
        args: &args,
        bin_dir,
        report: &mut report,
    }
    .run();
    if let Err(e) = &result {
        report.notes.push(format!("bench stopped early: {e:#}"));
    }
    print_report(&args, &report, started.elapsed())?;
    result.map(|()| 0)
}

fn print_report(args: &BenchArgs, report: &Report, took: Duration) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let transport = if args.ipc { "ipc" } else { "tcp" };
    println!(
        "## tradeplex bench: {transport}, medians of {} repetitions, {nproc} CPUs ({cpu}), {:.0} s\n",
        args.repeat,
        took.as_secs_f64()
    );
    print!("{}", report.table());
    for n in &report.notes {
        println!("\nNote: {n}");
    }
    if let Some(path) = &args.json {
        let context = json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "nproc": nproc,
            "cpu": cpu,
            "transport": transport,
            "repeat": args.repeat,
            "messages": args.messages,
            "event_messages": args.event_messages,
            "capacity": args.capacity,
            "hwm": args.hwm,
            "seconds": took.as_secs_f64(),
        });
        let text = serde_json::to_string_pretty(&report.json(context))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Who runs next in a request/reply repetition.
#[derive(Debug, Clone, Copy)]
enum Turn {
    Side(Side),
    Peer(Peer),
}

/// The peers the rr scenario measures, and what to say about them.
#[derive(Default)]
struct Peers {
    nats: Option<NatsPeer>,
    vnpy: Option<python::PythonSetup>,
    vnpy_noted: bool,
    notes: Vec<String>,
}

impl Peers {
    /// The peers that run at `window` (vn.py only at 1: it cannot pipeline).
    fn at(&self, window: usize) -> Vec<Peer> {
        let mut at = Vec::new();
        if self.nats.is_some() {
            at.push(Peer::Nats);
        }
        if self.vnpy.is_some() && window == 1 {
            at.push(Peer::Vnpy);
        }
        at
    }
}

pub(crate) struct Bench<'a> {
    pub(crate) args: &'a BenchArgs,
    bin_dir: PathBuf,
    pub(crate) report: &'a mut Report,
}

impl Bench<'_> {
    fn has(&self, s: Scenario) -> bool {
        self.args.scenarios.contains(&s)
    }

    fn cap(&self) -> Duration {
        Duration::from_secs_f64(self.args.time_cap_s.max(0.1))
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let a = self.args;
        let mut cluster = Cluster::start(&ClusterOptions {
            bin_dir: &self.bin_dir,
            ipc: a.ipc,
            capacity: a.capacity,
            event_hwm: a.hwm,
            broker_args: &a.broker_args,
            curve: false,
        })?;
        if self.has(Scenario::Memory) {
            let rss = cluster.broker_rss()? as f64 / MIB;
            self.report.add(
                "memory",
                "broker",
                "RSS at start",
                Unit::MiB,
                Side::Tradeplex,
                rss,
            );
        }
        if self.has(Scenario::Python) {
            self.python(&mut cluster)?;
        }
        if self.has(Scenario::Rr) {
            self.rr(&mut cluster)?;
            if self.has(Scenario::Memory) {
                let rss = cluster.broker_rss()? as f64 / MIB;
                self.report.add(
                    "memory",
                    "broker",
                    "RSS after rr",
                    Unit::MiB,
                    Side::Tradeplex,
                    rss,
                );
            }
        }
        if self.has(Scenario::RrRaw) {
            self.rr_raw(&mut cluster)?;
        }
        if self.has(Scenario::RrCurve) {
            self.rr_second_cluster(&mut cluster, "rr-curve")?;
        }
        if self.has(Scenario::RrIpc) {
            self.rr_second_cluster(&mut cluster, "rr-ipc")?;
        }
        if let Some(s) = a.pause_s {
            eprintln!("bench: broker pid {} (pausing {s} s)", cluster.broker_pid());
            std::thread::sleep(Duration::from_secs_f64(s));
        }
        if self.has(Scenario::Events) {
            self.events(&mut cluster)?;
        }
        if self.has(Scenario::Memory) {
            self.memory(&mut cluster)?;
        }
        if self.has(Scenario::Trading) {
            self.trading(&mut cluster)?;
        }
        if self.has(Scenario::Journal) {
            self.journal(&mut cluster)?;
        }
        if self.has(Scenario::Risk) {
            self.risk()?;
        }
        Ok(())
    }

    /// The Python client against vn.py's RPC, `repeat` times, the sides alternating.
    fn python(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let a = self.args;
        let py = match python::PythonSetup::find(a.python.as_deref(), &self.bin_dir) {
            Ok(py) => py,
            Err(python::Missing::All(why) | python::Missing::Side(why)) => {
                self.report.notes.push(format!("python: skipped, {why}"));
                return Ok(());
            }
        };
        cluster.ensure_workers(&self.bin_dir, 1)?;
        let workers = cluster.worker_count();
        let cfg = format!("1c×{workers}w");
        let w1 = "python w1";
        let piped = format!("python w{}", a.python_window);
        // A run is a few seconds; the cap only stops a hung child.
        let cap = Duration::from_secs_f64(a.time_cap_s.max(0.1) * 3.0 + 30.0);
        let (mut skip_client, mut skip_vnpy) = (None, None);
        for rep in 0..a.repeat {
            for side in Side::order(rep) {
                check_interrupt()?;
                match side {
                    Side::Tradeplex if skip_client.is_none() => {
                        let run =
                            py.client(&cluster.frontend, a.python_calls, a.python_window, cap);
                        match run {
                            Ok(r) => {
                                eprintln!(
                                    "bench: python client {cfg}: window 1 {:.0}/s p50 {:.1} µs p99 {:.1} µs, window {} {:.0}/s",
                                    r.w1_rate, r.w1_p50_us, r.w1_p99_us, a.python_window, r.piped_rate
                                );
                                let rp = &mut self.report;
                                rp.add(w1, &cfg, "calls/s", Unit::PerSec, side, r.w1_rate);
                                rp.add(w1, &cfg, "p50", Unit::Micros, side, r.w1_p50_us);
                                rp.add(w1, &cfg, "p99", Unit::Micros, side, r.w1_p99_us);
                                rp.add(&piped, &cfg, "calls/s", Unit::PerSec, side, r.piped_rate);
                            }
                            Err(python::Missing::All(why) | python::Missing::Side(why)) => {
                                skip_client = Some(why);
                            }
                        }
                        cluster.check_alive()?;
                    }
                    Side::Baseline if skip_vnpy.is_none() => match py.vnpy(a.python_calls, cap) {
                        Ok(r) => {
                            eprintln!(
                                "bench: vn.py RpcClient window 1: {:.0}/s p50 {:.1} µs p99 {:.1} µs",
                                r.rate, r.p50_us, r.p99_us
                            );
                            let rp = &mut self.report;
                            rp.add(w1, &cfg, "calls/s", Unit::PerSec, side, r.rate);
                            rp.add(w1, &cfg, "p50", Unit::Micros, side, r.p50_us);
                            rp.add(w1, &cfg, "p99", Unit::Micros, side, r.p99_us);
                            // vn.py cannot pipeline: its best is one call in flight.
                            rp.add(&piped, &cfg, "calls/s", Unit::PerSec, side, r.rate);
                        }
                        Err(python::Missing::All(why) | python::Missing::Side(why)) => {
                            skip_vnpy = Some(why);
                        }
                    },
                    _ => {}
                }
            }
        }
        let notes = &mut self.report.notes;
        let version = py.vnpy_version().unwrap_or_else(|| "?".into());
        notes.push(format!(
            "python: Tradeplex = the Python client ({}) through broker + {workers} echo worker(s); \
             baseline = vn.py {version} RpcClient/RpcServer on tcp://127.0.0.1 (REQ/REP, one call \
             in flight: it cannot pipeline, so the w{} ratio is against its window-1 rate); \
             {} calls per run",
            py.python.display(),
            a.python_window,
            a.python_calls
        ));
        if let Some(why) = skip_client {
            notes.push(format!("python: client rows skipped, {why}"));
        }
        if let Some(why) = skip_vnpy {
            notes.push(format!("python: vn.py rows skipped, {why}"));
        }
        Ok(())
    }

    fn rr(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let mut peers = self.start_peers(&cluster.dir().path);
        self.rr_scenario(
            cluster,
            "rr",
            &mut peers,
            |b, cluster, side, config, window| b.rr_once(cluster, side, config, window),
        )?;
        self.report.notes.append(&mut peers.notes);
        Ok(())
    }

    fn rr_raw(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let mut none = Peers::default();
        self.rr_scenario(
            cluster,
            "rr-raw",
            &mut none,
            |b, cluster, side, config, window| {
                if side == Side::Baseline {
                    return b.rr_once(cluster, side, config, window);
                }
                let a = b.args;
                let workers = RawWorkers::start(&cluster.backend, config.workers, a.capacity)?;
                let n = config.workers;
                cluster.wait_workers(raw::SERVICE, &format!("{n} raw workers"), |w| w == n)?;
                let frontend = cluster.frontend.clone();
                let run = rr::run_clients(config.clients, window, a.messages, b.cap(), || {
                    RawClientPipe::connect(&frontend)
                });
                workers.stop()?;
                // Gone from the registry before the next run counts its own.
                cluster.wait_workers(raw::SERVICE, "raw workers leaving", |w| w == 0)?;
                run
            },
        )
    }

    /// rr-curve (a CURVE cluster against this plaintext one) or rr-ipc (a cluster on
    /// ipc:// against the bare hop on ipc://): a second cluster for the Tradeplex side.
    fn rr_second_cluster(&mut self, cluster: &mut Cluster, scenario: &str) -> anyhow::Result<()> {
        let a = self.args;
        let curve = scenario == "rr-curve";
        let second = Cluster::start(&ClusterOptions {
            bin_dir: &self.bin_dir,
            ipc: !curve || a.ipc,
            capacity: a.capacity,
            event_hwm: a.hwm,
            broker_args: &a.broker_args,
            curve,
        })?;
        let second = std::cell::RefCell::new(second);
        let mut none = Peers::default();
        self.rr_scenario(
            cluster,
            scenario,
            &mut none,
            |b, plain, side, config, window| {
                let mut second = second.borrow_mut();
                match side {
                    Side::Tradeplex => b.tradeplex_once(&mut second, config, window),
                    Side::Baseline if curve => b.tradeplex_once(plain, config, window),
                    Side::Baseline => {
                        let dir = second.dir();
                        b.baseline_once(Some(dir), config, window)
                    }
                }
            },
        )?;
        self.report.notes.push(if curve {
            "rr-curve: Tradeplex = a second cluster with CURVE on every socket (keys made for \
             the run); baseline = the plaintext cluster of rr, same counts: the ratio is what \
             CURVE costs"
                .into()
        } else {
            "rr-ipc: Tradeplex = a second cluster on ipc:// endpoints; baseline = the bare hop \
             on ipc://"
                .into()
        });
        Ok(())
    }

    /// Every configuration and window, `repeat` times, the sides (and at 1 client × 1
    /// worker the peers) taking turns first.
    fn rr_scenario(
        &mut self,
        cluster: &mut Cluster,
        scenario: &str,
        peers: &mut Peers,
        once: impl Fn(&Self, &mut Cluster, Side, RrConfig, usize) -> anyhow::Result<RrRun>,
    ) -> anyhow::Result<()> {
        let a = self.args;
        let mut configs = a.configs.clone();
        // Tradeplex workers can only be added, so run the configs by worker count.
        configs.sort_by_key(|c| c.workers);
        for config in configs {
            if scenario != "rr-raw" {
                cluster.ensure_workers(&self.bin_dir, config.workers)?;
            }
            let one_to_one = config.clients == 1 && config.workers == 1;
            for &window in &a.windows {
                for rep in 0..a.repeat {
                    let mut turns: Vec<Turn> =
                        vec![Turn::Side(Side::Tradeplex), Turn::Side(Side::Baseline)];
                    if one_to_one {
                        turns.extend(peers.at(window).into_iter().map(Turn::Peer));
                    }
                    // Each side runs first in turn, so none always gets the warmer machine.
                    let n = turns.len();
                    turns.rotate_left(rep % n);
                    for turn in turns {
                        check_interrupt()?;
                        let name = format!("{scenario} w{window}");
                        let cfg = config.to_string();
                        match turn {
                            Turn::Side(side) => {
                                let run = once(self, cluster, side, config, window)?;
                                self.record_rr(&name, &cfg, side, window, &run);
                            }
                            Turn::Peer(peer) => {
                                if let Some(run) = self.peer_once(peers, peer, window) {
                                    self.record_peer(&name, &cfg, peer, window, &run);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn record_rr(&mut self, name: &str, cfg: &str, side: Side, window: usize, run: &RrRun) {
        eprintln!(
            "bench: {name} {cfg} {side:?}: {:.0}/s p50 {:.1} µs p99 {:.1} µs ({} calls)",
            run.rate, run.p50_us, run.p99_us, run.done
        );
        let rate = if window == 1 { "calls/s" } else { "msgs/s" };
        let r = &mut self.report;
        r.add(name, cfg, rate, Unit::PerSec, side, run.rate);
        r.add(name, cfg, "p50", Unit::Micros, side, run.p50_us);
        r.add(name, cfg, "p99", Unit::Micros, side, run.p99_us);
        r.add(name, cfg, "p99.9", Unit::Micros, side, run.p999_us);
        if let Some(cpu) = run.broker_cpu_us {
            r.add(name, cfg, "broker CPU per call", Unit::Micros, side, cpu);
        }
    }

    fn record_peer(&mut self, name: &str, cfg: &str, peer: Peer, window: usize, run: &RrRun) {
        eprintln!(
            "bench: {name} {cfg} {}: {:.0}/s p50 {:.1} µs p99 {:.1} µs ({} calls)",
            peer.title(),
            run.rate,
            run.p50_us,
            run.p99_us,
            run.done
        );
        let rate = if window == 1 { "calls/s" } else { "msgs/s" };
        let r = &mut self.report;
        r.add_peer(name, cfg, rate, Unit::PerSec, peer, run.rate);
        r.add_peer(name, cfg, "p50", Unit::Micros, peer, run.p50_us);
        r.add_peer(name, cfg, "p99", Unit::Micros, peer, run.p99_us);
        if run.p999_us.is_finite() {
            r.add_peer(name, cfg, "p99.9", Unit::Micros, peer, run.p999_us);
        }
    }

    /// The peers `--peers` names that can run: nats-server started, vn.py's interpreter
    /// found. The others leave a one-line note.
    fn start_peers(&self, dir: &std::path::Path) -> Peers {
        let a = self.args;
        let mut peers = Peers::default();
        if a.peers.contains(&PeerChoice::Nats) {
            match NatsPeer::start(&a.nats_server, dir) {
                Ok(nats) => {
                    peers.notes.push(format!(
                        "nats: nats-server {} ({}) on {}, async-nats request/reply from one \
                         connection to an echo responder on another, in the bench process; \
                         the rr body and counts at every window",
                        nats.version,
                        nats.program.display(),
                        nats.url
                    ));
                    peers.nats = Some(nats);
                }
                Err(Unavailable::Missing(why)) => peers.notes.push(format!(
                    "nats: skipped, {why} (scripts/install-peers.sh installs nats-server)"
                )),
                Err(Unavailable::Failed(e)) => {
                    peers.notes.push(format!("nats: skipped, it failed: {e:#}"))
                }
            }
        }
        if a.peers.contains(&PeerChoice::Vnpy) {
            match python::PythonSetup::find(a.python.as_deref(), &self.bin_dir) {
                Ok(py) => peers.vnpy = Some(py),
                Err(python::Missing::All(why) | python::Missing::Side(why)) => {
                    peers.notes.push(format!("vnpy: skipped, {why}"))
                }
            }
        }
        peers
    }

    /// One run of `peer`; `None` (and a note, and no more runs of it) if it failed.
    fn peer_once(&self, peers: &mut Peers, peer: Peer, window: usize) -> Option<RrRun> {
        let a = self.args;
        let result = match peer {
            Peer::Nats => {
                let nats = peers.nats.as_ref()?.connector();
                rr::run_clients(1, window, a.messages, self.cap(), || nats.pipe())
                    .map_err(|e| format!("it failed: {e:#}"))
            }
            Peer::Vnpy => {
                let py = peers.vnpy.as_ref()?;
                // A run is a few seconds; the cap only stops a hung child.
                let cap = Duration::from_secs_f64(a.time_cap_s.max(0.1) * 3.0 + 30.0);
                py.vnpy(a.messages, cap)
                    .map(|r| RrRun {
                        rate: r.rate,
                        p50_us: r.p50_us,
                        p99_us: r.p99_us,
                        p999_us: f64::NAN,
                        done: a.messages,
                        broker_cpu_us: None,
                    })
                    .map_err(|(python::Missing::All(why) | python::Missing::Side(why))| why)
            }
        };
        match result {
            Ok(run) => {
                if peer == Peer::Vnpy && !peers.vnpy_noted {
                    peers.vnpy_noted = true;
                    let py = peers.vnpy.as_ref()?;
                    let version = py.vnpy_version().unwrap_or_else(|| "?".into());
                    peers.notes.push(format!(
                        "vnpy: vn.py {version} RpcClient → RpcServer direct (1 hop, REQ/REP on \
                         tcp://127.0.0.1, {}), window 1 only: it cannot pipeline; the rr counts",
                        py.python.display()
                    ));
                }
                Some(run)
            }
            Err(why) => {
                peers.notes.push(format!("{}: skipped, {why}", peer.key()));
                match peer {
                    Peer::Nats => peers.nats = None,
                    Peer::Vnpy => peers.vnpy = None,
                }
                None
            }
        }
    }

    fn rr_once(
        &self,
        cluster: &mut Cluster,
        side: Side,
        config: RrConfig,
        window: usize,
    ) -> anyhow::Result<RrRun> {
        match side {
            Side::Tradeplex => self.tradeplex_once(cluster, config, window),
            Side::Baseline => {
                let ipc = self.args.ipc.then(|| cluster.dir());
                self.baseline_once(ipc, config, window)
            }
        }
    }

    /// One run through `cluster` (its workers started first), with the broker's CPU time
    /// per call.
    fn tradeplex_once(
        &self,
        cluster: &mut Cluster,
        config: RrConfig,
        window: usize,
    ) -> anyhow::Result<RrRun> {
        let a = self.args;
        cluster.ensure_workers(&self.bin_dir, config.workers)?;
        let frontend = cluster.frontend.clone();
        let options = cluster.client_options();
        let cpu_before = cluster.broker_cpu()?;
        let mut run = rr::run_clients(config.clients, window, a.messages, self.cap(), || {
            TradeplexPipe::connect_with(&frontend, options.clone())
        })?;
        let cpu = cluster.broker_cpu()?.saturating_sub(cpu_before);
        let calls = run.done + rr::warmup_calls(config.clients, window, a.messages);
        run.broker_cpu_us = Some(cpu.as_secs_f64() * 1e6 / calls.max(1) as f64);
        cluster.check_alive()?;
        Ok(run)
    }

    /// One run through the bare hop (on ipc:// in `ipc`'s directory if given).
    fn baseline_once(
        &self,
        ipc: Option<&cluster::ScratchDir>,
        config: RrConfig,
        window: usize,
    ) -> anyhow::Result<RrRun> {
        let a = self.args;
        let hop = BaselineRr::start(config.workers, a.capacity, ipc)?;
        let frontend = hop.frontend.clone();
        let run = rr::run_clients(config.clients, window, a.messages, self.cap(), || {
            BaselinePipe::connect(&frontend)
        });
        hop.stop()?;
        run
    }

    fn events(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let a = self.args;
        let ipc = a.ipc.then(|| cluster.dir());
        let proxy = BaselineProxy::start(a.hwm, ipc)?;
        let relay = (cluster.xsub.clone(), cluster.xpub.clone());
        let ends = |side| match side {
            Side::Tradeplex => relay.clone(),
            Side::Baseline => (proxy.xsub.clone(), proxy.xpub.clone()),
        };
        for &subs in &a.subscribers {
            let cfg = format!("1 pub × {subs} sub");
            let base = EventSpec {
                subscribers: subs,
                stalled: 0,
                pace: Pace::Rate(a.rate),
                count: a.event_messages,
                duration: self.cap(),
                hwm: a.hwm,
            };
            // (a) paced
            let name = format!("events paced {}k/s", (a.rate / 1000.0).round());
            for rep in 0..a.repeat {
                for side in Side::order(rep) {
                    check_interrupt()?;
                    let (xsub, xpub) = ends(side);
                    let tradeplex = matches!(side, Side::Tradeplex);
                    let cpu_before = if tradeplex {
                        Some(cluster.broker_cpu()?)
                    } else {
                        None
                    };
                    let r = events::run(&xsub, &xpub, &base)?;
                    log_events(&name, &cfg, side, &r);
                    let rp = &mut self.report;
                    if let Some(before) = cpu_before {
                        // All the broker's threads over the run: what one event costs it.
                        let cpu = cluster.broker_cpu()?.saturating_sub(before);
                        let per = cpu.as_secs_f64() * 1e6 / base.count.max(1) as f64;
                        rp.add(&name, &cfg, "broker CPU per event", Unit::Micros, side, per);
                    }
                    rp.add(
                        &name,
                        &cfg,
                        "received/s per sub",
                        Unit::PerSec,
                        side,
                        r.mean_rate(),
                    );
                    rp.add(&name, &cfg, "p50", Unit::Micros, side, r.latency_us(0.5));
                    rp.add(&name, &cfg, "p99", Unit::Micros, side, r.latency_us(0.99));
                    rp.add(&name, &cfg, "lost", Unit::Count, side, r.missing() as f64);
                }
            }
            // (b) lossless capacity
            for rep in 0..a.repeat {
                for side in Side::order(rep) {
                    check_interrupt()?;
                    let (xsub, xpub) = ends(side);
                    let rate = events::lossless_capacity(
                        &xsub,
                        &xpub,
                        &base,
                        a.rate,
                        a.max_rate,
                        Duration::from_millis(a.step_ms),
                        a.refine,
                    )?;
                    eprintln!("bench: events lossless {cfg} {side:?}: {rate:.0}/s");
                    self.report.add(
                        "events lossless",
                        &cfg,
                        "capacity",
                        Unit::PerSec,
                        side,
                        rate,
                    );
                }
            }
            // (c) flat out
            let flat = EventSpec {
                pace: Pace::FlatOut,
                ..base.clone()
            };
            for rep in 0..a.repeat {
                for side in Side::order(rep) {
                    check_interrupt()?;
                    let (xsub, xpub) = ends(side);
                    let r = events::run(&xsub, &xpub, &flat)?;
                    log_events("events flat out", &cfg, side, &r);
                    let rp = &mut self.report;
                    let n = "events flat out";
                    rp.add(n, &cfg, "published/s", Unit::PerSec, side, r.publish_rate);
                    rp.add(
                        n,
                        &cfg,
                        "received/s per sub",
                        Unit::PerSec,
                        side,
                        r.mean_rate(),
                    );
                    rp.add(n, &cfg, "loss", Unit::Percent, side, r.loss_pct());
                    rp.add(n, &cfg, "gaps reported", Unit::Count, side, r.gaps() as f64);
                    let drops = r.local_drops() as f64;
                    rp.add(n, &cfg, "client queue drops", Unit::Count, side, drops);
                    rp.add(
                        n,
                        &cfg,
                        "events missing",
                        Unit::Count,
                        side,
                        r.missing() as f64,
                    );
                }
            }
            cluster.check_alive()?;
        }
        drop(proxy);
        Ok(())
    }

    /// The trading round trip on a SIM worker started for it (Tradeplex only).
    fn trading(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let a = self.args;
        if let Err(e) = cluster.start_worker(&self.bin_dir, &["--service", "SIM"]) {
            self.report
                .notes
                .push(format!("trading: skipped, no SIM worker: {e:#}"));
            return Ok(());
        }
        cluster.wait_workers("SIM", "SIM worker", |w| w >= 1)?;
        let cfg = "1 client, SIM, window 1";
        for _ in 0..a.repeat {
            check_interrupt()?;
            let warmup = (a.orders / 10).max(10);
            let r = trading::run(&cluster.frontend, &cluster.xpub, a.orders, warmup)?;
            eprintln!(
                "bench: trading {cfg}: accepted event p50 {:.1} µs p99 {:.1} µs, reply p50 {:.1} µs p99 {:.1} µs, echo p50 {:.1} µs ({} orders)",
                r.event_p50_us, r.event_p99_us, r.reply_p50_us, r.reply_p99_us, r.echo_p50_us, r.done
            );
            let (n, side, rp) = ("trading", Side::Tradeplex, &mut self.report);
            rp.add(
                n,
                cfg,
                "send_order → accepted event p50",
                Unit::Micros,
                side,
                r.event_p50_us,
            );
            rp.add(
                n,
                cfg,
                "send_order → accepted event p99",
                Unit::Micros,
                side,
                r.event_p99_us,
            );
            rp.add(
                n,
                cfg,
                "send_order reply p50",
                Unit::Micros,
                side,
                r.reply_p50_us,
            );
            rp.add(
                n,
                cfg,
                "send_order reply p99",
                Unit::Micros,
                side,
                r.reply_p99_us,
            );
            // Tradeplex = send_order, baseline = an echo call by the same client just
            // before each order: the ratio is what the order path costs over a plain call.
            let vs = "send_order reply vs echo p50";
            rp.add(n, cfg, vs, Unit::Micros, side, r.reply_p50_us);
            rp.add(n, cfg, vs, Unit::Micros, Side::Baseline, r.echo_p50_us);
        }
        cluster.check_alive()
    }

    /// The journal's cost: one SIM worker per journal mode, requests pinned to it
    /// (Tradeplex only; the "no journal" worker is the reference).
    fn journal(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let a = self.args;
        let dir = match &a.journal_dir {
            Some(d) => d.clone(),
            None => cluster.dir().path.clone(),
        };
        let mut workers = Vec::new();
        for (i, mode) in journal::MODES.iter().enumerate() {
            let path = dir.join(format!("bench-journal-{}-{i}.jsonl", std::process::id()));
            let path_text = path.display().to_string();
            let mut flags = vec!["--service", "SIM"];
            if let Some(fsync) = mode.fsync {
                flags.extend(["--journal", &path_text, "--journal-fsync", fsync]);
            }
            let id = cluster.start_worker(&self.bin_dir, &flags)?;
            let id: tradeplex_proto::WorkerId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("worker id {id:?}: {e}"))?;
            workers.push((mode, id, path));
        }
        let n = workers.len();
        cluster.wait_workers("SIM", &format!("{n} journal workers"), |w| w >= n)?;
        self.report.notes.push(format!(
            "journal: journals in {}; fsync always syncs each line of a non-idempotent request (two per order)",
            dir.display()
        ));
        let frontend = cluster.frontend.clone();
        for rep in 0..a.repeat {
            // Rotate the order of the modes so drift over time does not favour one.
            for k in 0..n {
                let (mode, id, _) = &workers[(k + rep) % n];
                check_interrupt()?;
                let warmup = (a.orders / 10).max(10);
                let r = journal::send_orders(&frontend, *id, a.orders, warmup, self.cap())?;
                self.journal_rows("journal send_order w1", mode.label, "calls/s", &r);
                for window in [1usize, 64] {
                    check_interrupt()?;
                    let r = rr::run_clients(1, window, a.messages, self.cap(), || {
                        TradeplexPipe::with_options(&frontend, journal::pinned(*id))
                    })?;
                    let name = format!("journal echo (not idempotent) w{window}");
                    let rate = if window == 1 { "calls/s" } else { "msgs/s" };
                    self.journal_rows(&name, mode.label, rate, &r);
                }
            }
        }
        for (_, _, path) in &workers {
            let _ = std::fs::remove_file(path);
        }
        cluster.check_alive()
    }

    fn journal_rows(&mut self, name: &str, cfg: &str, rate: &str, r: &RrRun) {
        eprintln!(
            "bench: {name} {cfg}: {:.0}/s p50 {:.1} µs p99 {:.1} µs ({} calls)",
            r.rate, r.p50_us, r.p99_us, r.done
        );
        let (side, rp) = (Side::Tradeplex, &mut self.report);
        rp.add(name, cfg, rate, Unit::PerSec, side, r.rate);
        rp.add(name, cfg, "p50", Unit::Micros, side, r.p50_us);
        rp.add(name, cfg, "p99", Unit::Micros, side, r.p99_us);
    }

    /// A stalled subscriber during flat-out publishing: the broker's memory over time,
    /// and the other subscribers' rate against a run without the stalled one.
    fn memory(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let a = self.args;
        let ipc = a.ipc.then(|| cluster.dir());
        let proxy = BaselineProxy::start(a.hwm, ipc)?;
        let duration = Duration::from_secs_f64(a.stall_s.max(0.1));
        let cfg = format!("{} subs + 1 stalled", a.stall_others);
        let spec = |stalled| EventSpec {
            subscribers: a.stall_others,
            stalled,
            pace: Pace::FlatOut,
            count: u64::MAX,
            duration,
            hwm: a.hwm,
        };
        // One repetition: this scenario is about behaviour over time, and it is long.
        for side in Side::order(0) {
            let (xsub, xpub) = match side {
                Side::Tradeplex => (cluster.xsub.clone(), cluster.xpub.clone()),
                Side::Baseline => (proxy.xsub.clone(), proxy.xpub.clone()),
            };
            check_interrupt()?;
            let free = events::run(&xsub, &xpub, &spec(0))?;
            log_events("memory: no stalled sub", &cfg, side, &free);
            check_interrupt()?;
            let pid = (side == Side::Tradeplex).then(|| cluster.broker_pid());
            let (stalled, rss) = with_rss_samples(pid, || events::run(&xsub, &xpub, &spec(1)))?;
            log_events("memory: stalled sub", &cfg, side, &stalled);
            let rp = &mut self.report;
            let (n, without, with) = ("memory", free.mean_rate(), stalled.mean_rate());
            rp.add(
                n,
                &cfg,
                "others' received/s, no stalled sub",
                Unit::PerSec,
                side,
                without,
            );
            rp.add(
                n,
                &cfg,
                "others' received/s, 1 stalled sub",
                Unit::PerSec,
                side,
                with,
            );
            rp.add(
                n,
                &cfg,
                "others' rate with stalled sub vs without",
                Unit::Percent,
                side,
                100.0 * with / without.max(1e-9),
            );
            // Samples at a quarter, half and the end of the stall: a plateau shows the
            // high-water marks bound the broker's memory.
            let secs = duration.as_secs_f64();
            for (label, at) in [("1/4", 0.25), ("1/2", 0.5), ("end", 1.0)] {
                if let Some(v) = rss_at(&rss, secs * at + 0.05) {
                    let metric = format!("RSS at {label} of stall");
                    rp.add(n, "broker", &metric, Unit::MiB, side, v / MIB);
                }
            }
            if let Some(max) = rss.iter().map(|s| s.1).reduce(f64::max) {
                rp.add(
                    n,
                    "broker",
                    "RSS max during stall",
                    Unit::MiB,
                    side,
                    max / MIB,
                );
            }
        }
        cluster.check_alive()?;
        Ok(())
    }
}

/// Runs `f` while sampling `pid`'s resident memory every 100 ms; returns `f`'s result
/// and the samples (seconds since the start, bytes).
fn with_rss_samples<T>(
    pid: Option<u32>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<(f64, f64)>)> {
    let Some(pid) = pid else {
        return Ok((f()?, Vec::new()));
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (start, mut samples) = (Instant::now(), Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(v) = cluster::vm_rss(pid) {
                    samples.push((start.elapsed().as_secs_f64(), v as f64));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let r = f();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let samples = sampler.join().unwrap_or_default();
        Ok((r?, samples))
    })
}

/// The last sample taken at or before `at` seconds.
fn rss_at(samples: &[(f64, f64)], at: f64) -> Option<f64> {
    samples
        .iter()
        .take_while(|(t, _)| *t <= at)
        .last()
        .map(|s| s.1)
}

fn log_events(name: &str, cfg: &str, side: Side, r: &EventRun) {
    eprintln!(
        "bench: {name} {cfg} {side:?}: published {} at {:.0}/s, received/s per sub {:.0}, lost {} ({:.2} %), gaps {} + client drops {}, p50 {:.1} µs p99 {:.1} µs",
        r.published,
        r.publish_rate,
        r.mean_rate(),
        r.missing(),
        r.loss_pct(),
        r.gaps(),
        r.local_drops(),
        r.latency_us(0.5),
        r.latency_us(0.99)
    );
}
