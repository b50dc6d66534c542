//! The Python rows: the `tradeplex` Python client (python/bench/calls.py) through the
//! bench's broker and an echo worker, window 1 and pipelined, against vn.py's
//! RpcClient/RpcServer (python/bench/vnpy_rpc.py) on the same machine in the same run.
//! Both are child processes of the chosen interpreter, started and stopped by pid; a
//! missing interpreter, package or vn.py skips its rows with a note.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// What the Python scenario runs with.
pub struct PythonSetup {
    /// The interpreter.
    pub python: PathBuf,
    /// The repository's `python/` directory (package and bench scripts).
    pub dir: PathBuf,
}

/// One run of `calls.py`.
#[derive(Debug, Clone, Copy)]
pub struct ClientRun {
    pub w1_rate: f64,
    pub w1_p50_us: f64,
    pub w1_p99_us: f64,
    pub piped_rate: f64,
}

/// One run of `vnpy_rpc.py`.
#[derive(Debug, Clone, Copy)]
pub struct VnpyRun {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Why a side cannot run.
pub enum Missing {
    /// Nothing to run at all (no interpreter or no scripts).
    All(String),
    /// Only this side's rows are skipped.
    Side(String),
}

/// Exit code of vnpy_rpc.py when vn.py is not installed.
const NO_VNPY: i32 = 3;

impl PythonSetup {
    /// `flag` (or `$TRADEPLEX_BENCH_PYTHON`), else the repository's
    /// `target/python-venv/bin/python` if it exists, else `python3`; the repository is
    /// found above `bin_dir` (…/target/release) or the current directory.
    pub fn find(flag: Option<&Path>, bin_dir: &Path) -> Result<PythonSetup, Missing> {
        let repo = [
            bin_dir.to_path_buf(),
            std::env::current_dir().unwrap_or_default(),
        ]
        .into_iter()
        .flat_map(|start| start.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .find(|d| d.join("python/bench/calls.py").is_file())
        .ok_or_else(|| {
            Missing::All(format!(
                "python/bench/calls.py not found above {} or the current directory",
                bin_dir.display()
            ))
        })?;
        let python = match flag {
            Some(p) => p.to_path_buf(),
            None => {
                let venv = repo.join("target/python-venv/bin/python");
                if venv.exists() {
                    venv
                } else {
                    PathBuf::from("python3")
                }
            }
        };
        Ok(PythonSetup {
            python,
            dir: repo.join("python"),
        })
    }

    /// Runs a bench script and returns its JSON line (`Err(Missing)` when it cannot run).
    fn script(&self, name: &str, args: &[String], cap: Duration) -> Result<Value, Missing> {
        let script = self.dir.join("bench").join(name);
        let mut cmd = Command::new(&self.python);
        cmd.arg(&script)
            .args(args)
            .arg("--json")
            .env("PYTHONPATH", &self.dir)
            .env("QT_QPA_PLATFORM", "offscreen")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|e| Missing::All(format!("cannot start {}: {e}", self.python.display())))?;
        let (code, out, err) =
            wait_with_cap(child, cap).map_err(|e| Missing::Side(format!("{name}: {e:#}")))?;
        if code == Some(NO_VNPY) && name == "vnpy_rpc.py" {
            return Err(Missing::Side(first_line(&err)));
        }
        if code != Some(0) {
            return Err(Missing::Side(format!(
                "{name} exited {code:?}: {}",
                last_line(&err)
            )));
        }
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| Missing::Side(format!("{name} printed no JSON line")))?;
        serde_json::from_str(line)
            .map_err(|e| Missing::Side(format!("{name}: bad JSON {line:?}: {e}")))
    }

    /// The Python client through `frontend`: window 1, then `window` in flight.
    pub fn client(
        &self,
        frontend: &str,
        calls: u64,
        window: usize,
        cap: Duration,
    ) -> Result<ClientRun, Missing> {
        let args = [
            "--broker".to_string(),
            frontend.to_string(),
            "--count".into(),
            calls.to_string(),
            "--window".into(),
            window.to_string(),
        ];
        let v = self.script("calls.py", &args, cap)?;
        let f = |k: &str| field(&v, k).map_err(|e| Missing::Side(format!("calls.py: {e}")));
        Ok(ClientRun {
            w1_rate: f("w1_calls_per_s")?,
            w1_p50_us: f("w1_p50_us")?,
            w1_p99_us: f("w1_p99_us")?,
            piped_rate: f("piped_calls_per_s")?,
        })
    }

    /// vn.py's RpcClient against its RpcServer (a child of the script) on free ports.
    pub fn vnpy(&self, calls: u64, cap: Duration) -> Result<VnpyRun, Missing> {
        let args = ["--count".to_string(), calls.to_string()];
        let v = self.script("vnpy_rpc.py", &args, cap)?;
        let f = |k: &str| field(&v, k).map_err(|e| Missing::Side(format!("vnpy_rpc.py: {e}")));
        Ok(VnpyRun {
            rate: f("calls_per_s")?,
            p50_us: f("p50_us")?,
            p99_us: f("p99_us")?,
        })
    }

    /// vn.py's version, as the script reports it (for the note).
    pub fn vnpy_version(&self) -> Option<String> {
        let out = Command::new(&self.python)
            .args(["-c", "import vnpy; print(vnpy.__version__)"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn field(v: &Value, k: &str) -> anyhow::Result<f64> {
    v.get(k)
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("no number {k:?} in {v}"))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_string()
}

/// Waits for `child` for at most `cap`, reading its output; kills it (by pid) past that.
fn wait_with_cap(mut child: Child, cap: Duration) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    // Readers on their own threads, so a chatty child never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + cap;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a Python child")? {
            break status;
        }
        if Instant::now() >= until || crate::runner::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "stopped after {:.0} s (pid {})",
                cap.as_secs_f64(),
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status.code(), out, err))
}
