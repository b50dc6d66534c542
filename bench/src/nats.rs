//! The NATS peer of the request/reply scenario: a `nats-server` child on a loopback port
//! the OS picks (its ports file says which; stopped by pid when the guard drops), an
//! echo responder on one async-nats connection and the bench's requester on another,
//! driven as a [`Pipe`] by the same loop as the Tradeplex and bare-ZeroMQ sides.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tradeplex_test_support::{poll_until, Proc, StartError, Stderr, START_TIMEOUT};

use crate::rr::Pipe;

/// The subject the responder answers on.
const SUBJECT: &str = "tpx.bench.echo";
/// How long one request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the NATS peer cannot run: its program is missing (a one-line skip), or it failed.
pub enum Unavailable {
    /// `nats-server` could not be started (not installed, not on PATH).
    Missing(String),
    /// It started but did not serve.
    Failed(anyhow::Error),
}

/// A running `nats-server`, its responder and the runtime they live on.
pub struct NatsPeer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// `nats-server --version`, for the note.
    pub version: String,
    /// The program started (a bare name resolved, see [`resolve`]).
    pub program: PathBuf,
    responder: JoinHandle<()>,
    // Dropped after the responder is aborted, before the server is killed.
    runtime: Runtime,
    _server: Proc,
}

impl NatsPeer {
    /// Starts `program` (e.g. `nats-server` from PATH) with its ports file and log in
    /// `dir`, and the echo responder.
    pub fn start(program: &Path, dir: &Path) -> Result<NatsPeer, Unavailable> {
        let program = &resolve(program);
        let version = version(program)?;
        let dir = dir.join("nats");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Unavailable::Failed(anyhow!("creating {}: {e}", dir.display())))?;
        let args: Vec<String> = [
            "--addr",
            "127.0.0.1",
            "--port",
            "-1",
            "--ports_file_dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut server = Proc::launch(program, &args, Stderr::File(dir.join("nats.log"))).map_err(
            |e| match e {
                StartError::Spawn { .. } => Unavailable::Missing(e.to_string()),
                other => Unavailable::Failed(other.into()),
            },
        )?;
        let url = client_url(&mut server, &dir).map_err(Unavailable::Failed)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Unavailable::Failed(e.into()))?;
        let responder = runtime
            .block_on(start_responder(&url))
            .map_err(Unavailable::Failed)?;
        Ok(NatsPeer {
            url,
            version,
            program: program.clone(),
            responder,
            runtime,
            _server: server,
        })
    }

    /// What the requesting threads connect with (the peer itself stays on this thread).
    pub fn connector(&self) -> Connector {
        Connector {
            url: self.url.clone(),
            runtime: self.runtime.handle().clone(),
        }
    }
}

/// Opens requester connections to a [`NatsPeer`] from any thread.
pub struct Connector {
    url: String,
    runtime: tokio::runtime::Handle,
}

impl Connector {
    /// A requester on its own connection.
    pub fn pipe(&self) -> anyhow::Result<NatsPipe> {
        let client = self
            .runtime
            .block_on(
                async_nats::ConnectOptions::new()
                    .request_timeout(Some(REQUEST_TIMEOUT))
                    .connect(&self.url),
            )
            .with_context(|| format!("connecting to {}", self.url))?;
        Ok(NatsPipe {
            client,
            runtime: self.runtime.clone(),
            in_flight: VecDeque::new(),
        })
    }
}

impl Drop for NatsPeer {
    fn drop(&mut self) {
        self.responder.abort();
    }
}

/// `program` itself, unless it is a bare name found on no PATH directory but in
/// /usr/sbin, where Debian installs nats-server (not on an ordinary user's PATH).
fn resolve(program: &Path) -> PathBuf {
    let bare = program.components().count() == 1;
    let on_path = || {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    };
    let sbin = Path::new("/usr/sbin").join(program);
    if bare && !on_path() && sbin.is_file() {
        sbin
    } else {
        program.to_path_buf()
    }
}

/// `nats-server --version` (`nats-server: v2.9.10`), or why it cannot run.
fn version(program: &Path) -> Result<String, Unavailable> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| Unavailable::Missing(format!("cannot start {}: {e}", program.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Waits for the ports file (`<name>_<pid>.ports`, JSON with the `nats` client URLs).
fn client_url(server: &mut Proc, dir: &Path) -> anyhow::Result<String> {
    let mut url = None;
    let mut exited = None;
    poll_until(START_TIMEOUT, || {
        url = ports_file(dir).and_then(|p| parse_ports(&p));
        exited = server.exited();
        url.is_some() || exited.is_some()
    });
    match (url, exited) {
        (Some(url), None) => Ok(url),
        (_, Some(status)) => bail!(
            "nats-server exited ({status}); its log:\n{}",
            server.log_tail(20)
        ),
        (None, None) => bail!("nats-server wrote no ports file in {START_TIMEOUT:?}"),
    }
}

fn ports_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ports"))
}

/// The first `nats://` URL of a ports file; `None` while it is absent or half-written.
fn parse_ports(path: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v.get("nats")?
        .as_array()?
        .first()?
        .as_str()
        .map(String::from)
}

/// Subscribes the echo responder and spawns its loop; returns once the server has the
/// subscription (flushed), so the first request cannot find no responder.
async fn start_responder(url: &str) -> anyhow::Result<JoinHandle<()>> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut sub = client.subscribe(SUBJECT).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                if client.publish(reply, msg.payload).await.is_err() {
                    break;
                }
            }
        }
    }))
}

type Reply = Result<async_nats::Message, async_nats::RequestError>;

/// One requester connection: requests are spawned on the runtime (so `window` of them
/// are in flight at once) and their replies taken in order.
pub struct NatsPipe {
    client: async_nats::Client,
    runtime: tokio::runtime::Handle,
    in_flight: VecDeque<JoinHandle<Reply>>,
}

impl Pipe for NatsPipe {
    fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let client = self.client.clone();
        let payload = body.to_vec();
        let call = self
            .runtime
            .spawn(async move { client.request(SUBJECT, payload.into()).await });
        self.in_flight.push_back(call);
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        let call = self
            .in_flight
            .pop_front()
            .context("a reply awaited with no request in flight")?;
        let msg = self
            .runtime
            .block_on(call)
            .context("NATS request task")?
            .context("NATS request")?;
        Ok(msg.payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_file_gives_the_client_url() {
        let dir = crate::cluster::ScratchDir::new().unwrap();
        let path = dir.path.join("nats-server_1.ports");
        std::fs::write(
            &path,
            r#"{"nats":["nats://127.0.0.1:4555"],"monitoring":[]}"#,
        )
        .unwrap();
        assert_eq!(ports_file(&dir.path), Some(path.clone()));
        assert_eq!(parse_ports(&path).as_deref(), Some("nats://127.0.0.1:4555"));
        std::fs::write(&path, r#"{"nats":["#).unwrap();
        assert_eq!(parse_ports(&path), None, "half-written");
    }
}
