//! The Tradeplex side of the bench: a `tradeplex-broker` and `tradeplex-worker` child
//! processes on loopback (or ipc:// in a temporary directory), killed when the guard drops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tradeplex_client::curve::{ClientCurve, KeyPair};
use tradeplex_client::{Client, ClientOptions};
use tradeplex_test_support::{poll_until, ready_field, Proc, Stderr, START_TIMEOUT};

/// A scratch directory removed on drop (logs, config, ipc sockets).
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> anyhow::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!(
            "tpx-bench-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    /// An endpoint for `name`: `ipc://DIR/name.sock`, or `tcp://127.0.0.1:*`.
    pub fn endpoint(&self, name: &str, ipc: bool) -> String {
        if ipc {
            format!("ipc://{}/{name}.sock", self.path.display())
        } else {
            "tcp://127.0.0.1:*".to_string()
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Starts `bin` with `args`, its stderr to `log`, and returns it with its ready line.
fn start(bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<(Proc, String)> {
    Ok(Proc::spawn(bin, args, Stderr::File(log))?)
}

/// Fails with the child's log if it has exited.
fn check_alive(proc: &mut Proc) -> anyhow::Result<()> {
    if let Some(status) = proc.exited() {
        bail!(
            "{} exited ({status}); its log:\n{}",
            proc.name(),
            proc.log_tail(20)
        );
    }
    Ok(())
}

/// What the cluster is started with.
pub struct ClusterOptions<'a> {
    pub bin_dir: &'a Path,
    pub ipc: bool,
    pub capacity: u32,
    pub event_hwm: i32,
    pub broker_args: &'a [String],
    /// CURVE on every socket (keys made for this run), or plaintext.
    pub curve: bool,
}

/// The keys of a CURVE cluster: the broker's, one for every client, one for every worker.
struct CurveKeys {
    broker: KeyPair,
    client: KeyPair,
    worker: KeyPair,
    /// The worker's key file, in the scratch directory.
    worker_file: PathBuf,
}

impl CurveKeys {
    /// Fresh keys, the broker's and the worker's written to key files in `dir`.
    fn make(dir: &Path) -> anyhow::Result<(CurveKeys, PathBuf)> {
        let gen = || tradeplex_client::curve::generate().context("generating CURVE keys");
        let (broker, client, worker) = (gen()?, gen()?, gen()?);
        let broker_file = dir.join("broker.key");
        let worker_file = dir.join("worker.key");
        std::fs::write(&broker_file, broker.to_toml()).context("writing broker.key")?;
        std::fs::write(&worker_file, worker.to_toml()).context("writing worker.key")?;
        let keys = CurveKeys {
            broker,
            client,
            worker,
            worker_file,
        };
        Ok((keys, broker_file))
    }

    /// The broker config's `[curve]` table.
    fn broker_table(&self, key_file: &Path) -> String {
        format!(
            "\n[curve]\nkey_file = {:?}\nallow_clients = [{:?}]\nallow_workers = [{:?}]\n",
            key_file.display().to_string(),
            self.client.public_key,
            self.worker.public_key
        )
    }

    fn client(&self) -> ClientCurve {
        ClientCurve {
            server_key: self.broker.public_key.clone(),
            keys: self.client.clone(),
        }
    }
}

/// A broker and its workers. Fields drop in order: workers, broker, then the directory.
pub struct Cluster {
    pub frontend: String,
    pub backend: String,
    pub xsub: String,
    pub xpub: String,
    workers: Vec<Proc>,
    broker: Proc,
    capacity: u32,
    client: Client,
    curve: Option<CurveKeys>,
    dir: ScratchDir,
}

/// Where the broker and worker binaries are: `--bin-dir`, else next to this executable.
pub fn bin_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match flag {
        Some(d) => d.to_path_buf(),
        None => tradeplex_test_support::bin_dir().context("finding this executable's directory")?,
    };
    for name in ["tradeplex-broker", "tradeplex-worker"] {
        if !dir.join(name).exists() {
            bail!(
                "{name} not found in {} (build it, e.g. `cargo build --release --workspace`, \
                 or pass --bin-dir)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

impl Cluster {
    /// Starts the broker and waits for its `ready` line.
    pub fn start(opts: &ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = ScratchDir::new()?;
        let config = dir.path.join("broker.toml");
        let mut toml = format!("event_hwm = {}\n", opts.event_hwm);
        let curve = if opts.curve {
            let (keys, key_file) = CurveKeys::make(&dir.path)?;
            toml.push_str(&keys.broker_table(&key_file));
            Some(keys)
        } else {
            None
        };
        std::fs::write(&config, toml).context("writing broker config")?;
        let mut args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "--frontend".into(),
            dir.endpoint("frontend", opts.ipc),
            "--backend".into(),
            dir.endpoint("backend", opts.ipc),
            "--xsub".into(),
            dir.endpoint("xsub", opts.ipc),
            "--xpub".into(),
            dir.endpoint("xpub", opts.ipc),
            "--http".into(),
            "off".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        args.extend(opts.broker_args.iter().cloned());
        let (broker, line) = start(
            &opts.bin_dir.join("tradeplex-broker"),
            &args,
            dir.path.join("broker.log"),
        )?;
        let field = |name: &str| -> anyhow::Result<String> {
            ready_field(&line, name)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {name}= in the broker's ready line {line:?}"))
        };
        if !line.starts_with("ready ") {
            bail!("unexpected first line from the broker: {line:?}");
        }
        let (frontend, backend, xsub, xpub) = (
            field("frontend")?,
            field("backend")?,
            field("xsub")?,
            field("xpub")?,
        );
        let options = client_options(curve.as_ref()).timeout(Duration::from_secs(2));
        let client = Client::connect(&frontend, options)?;
        Ok(Cluster {
            frontend,
            backend,
            xsub,
            xpub,
            workers: Vec::new(),
            broker,
            capacity: opts.capacity,
            client,
            curve,
            dir,
        })
    }

    /// Options for a client of this cluster (with its CURVE keys, if it has them).
    pub fn client_options(&self) -> ClientOptions {
        client_options(self.curve.as_ref())
    }

    /// Starts workers until `n` serve `echo`, and waits until the broker lists them all.
    pub fn ensure_workers(&mut self, bin_dir: &Path, n: usize) -> anyhow::Result<()> {
        while self.workers.len() < n {
            self.start_worker(bin_dir, &[])?;
        }
        self.wait_registered(n)
    }

    /// How many workers the bench started.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Starts a worker with the bench's flags and `extra` ones (it serves `echo` too);
    /// returns its id.
    pub fn start_worker(&mut self, bin_dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
        let i = self.workers.len();
        let mut args: Vec<String> = vec![
            "--broker".into(),
            self.backend.clone(),
            "--events".into(),
            self.xsub.clone(),
            "--capacity".into(),
            self.capacity.to_string(),
            "--http".into(),
            "off".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        if let Some(keys) = &self.curve {
            args.extend([
                "--curve-server-key".into(),
                keys.broker.public_key.clone(),
                "--curve-key-file".into(),
                keys.worker_file.display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = start(
            &bin_dir.join("tradeplex-worker"),
            &args,
            self.dir.path.join(format!("worker-{i}.log")),
        )?;
        let Some(id) = line
            .strip_prefix("worker ")
            .and_then(|l| l.split_whitespace().next())
        else {
            bail!("unexpected first line from a worker: {line:?}");
        };
        let id = id.to_string();
        self.workers.push(proc);
        Ok(id)
    }

    /// Polls `tpx.status` until `n` workers serve `echo` (a wait on an observable state,
    /// not a fixed sleep).
    fn wait_registered(&mut self, n: usize) -> anyhow::Result<()> {
        self.wait_workers("echo", &format!("{n} workers for echo"), |w| w >= n)
    }

    /// Polls `tpx.status` until the number of workers offering `service` satisfies `ok`.
    pub fn wait_workers(
        &mut self,
        service: &str,
        what: &str,
        ok: impl Fn(usize) -> bool,
    ) -> anyhow::Result<()> {
        let mut alive = Ok(());
        let client = &self.client;
        let (broker, workers) = (&mut self.broker, &mut self.workers);
        let found = poll_until(START_TIMEOUT, || {
            let count = client.status().ok().map(|status| {
                status
                    .services
                    .iter()
                    .find(|s| s.service.as_str() == service)
                    .map_or(0, |s| s.workers as usize)
            });
            if count.is_some_and(&ok) {
                return true;
            }
            alive = check_alive(broker).and_then(|()| workers.iter_mut().try_for_each(check_alive));
            alive.is_err()
        });
        alive?;
        if !found {
            bail!("no {what} within {START_TIMEOUT:?}");
        }
        Ok(())
    }

    /// The broker's resident memory, bytes (VmRSS from /proc).
    pub fn broker_rss(&self) -> anyhow::Result<u64> {
        vm_rss(self.broker.pid())
    }

    /// The broker's process id (for profilers).
    pub fn broker_pid(&self) -> u32 {
        self.broker.pid()
    }

    /// CPU time the broker process has used so far, all its threads (user + system).
    pub fn broker_cpu(&self) -> anyhow::Result<Duration> {
        process_cpu(self.broker.pid())
    }

    /// Fails if the broker or a worker has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        check_alive(&mut self.broker)?;
        self.workers.iter_mut().try_for_each(check_alive)
    }

    /// The scratch directory (for the baseline's ipc endpoints).
    pub fn dir(&self) -> &ScratchDir {
        &self.dir
    }
}

fn client_options(curve: Option<&CurveKeys>) -> ClientOptions {
    let options = ClientOptions::default();
    match curve {
        Some(keys) => options.curve(keys.client()),
        None => options,
    }
}

/// CPU time of a process, all threads: the sum of each task's `/proc/PID/task/TID/schedstat`
/// run time (nanoseconds, unlike `stat`'s clock ticks).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let tasks = format!("/proc/{pid}/task");
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read: it no longer counts.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no run time in {}", path.display()))?;
    }
    Ok(Duration::from_nanos(ns))
}

/// VmRSS of a process, bytes.
pub fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}
