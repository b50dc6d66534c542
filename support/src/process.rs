//! A child process guard: started, its first stdout line (the ready line) awaited, the
//! rest of its stdout kept, and SIGKILLed when dropped so no test or bench leaves one
//! behind.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a child's stderr (its logs) goes.
#[derive(Debug, Clone)]
pub enum Stderr {
    /// This process's stderr (tests: the logs appear beside a failure).
    Inherit,
    /// A file (the bench: shown by [`Proc::log_tail`] when a child fails).
    File(PathBuf),
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program could not be run (missing, not executable) or its log not created.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// It exited, or stayed silent for [`START_TIMEOUT`], before printing a line.
    #[error("{program} printed no ready line (exit: {status:?}); its log:\n{log_tail}")]
    NoReadyLine {
        /// The program.
        program: String,
        /// Its exit status, if it had exited.
        status: Option<ExitStatus>,
        /// The last lines of its log file (empty when stderr was inherited).
        log_tail: String,
    },
}

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines it printed on stdout after the first.
    pub stdout: mpsc::Receiver<String>,
    name: String,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts `program` with `args` and waits for its first stdout line. Its log filter
    /// (`TRADEPLEX_LOG`) is `$TRADEPLEX_TEST_LOG`, else `warn`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        stderr: Stderr,
    ) -> Result<(Proc, String), StartError> {
        let mut proc = Proc::launch(program, args, stderr)?;
        // An exit closes stdout, which ends the wait at once.
        match proc.stdout.recv_timeout(START_TIMEOUT) {
            Ok(first) => Ok((proc, first)),
            Err(_) => {
                let status = proc.child.try_wait().ok().flatten();
                let log_tail = proc.log_tail(20);
                proc.kill9();
                Err(StartError::NoReadyLine {
                    program: proc.name.clone(),
                    status,
                    log_tail,
                })
            }
        }
    }

    /// Starts `program` without waiting for a ready line, for programs that announce
    /// readiness some other way (e.g. `nats-server`'s ports file). Its stdout lines are
    /// in [`Proc::stdout`].
    pub fn launch(program: &Path, args: &[String], stderr: Stderr) -> Result<Proc, StartError> {
        let name = program
            .file_name()
            .map_or("child".into(), |n| n.to_string_lossy().into_owned());
        let spawn_err = |source| StartError::Spawn {
            program: name.clone(),
            source,
        };
        let (stderr_pipe, log) = match stderr {
            Stderr::Inherit => (Stdio::inherit(), None),
            Stderr::File(path) => (File::create(&path).map_err(spawn_err)?.into(), Some(path)),
        };
        let mut child = Command::new(program)
            .args(args)
            .env(
                "TRADEPLEX_LOG",
                std::env::var("TRADEPLEX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_pipe)
            .spawn()
            .map_err(spawn_err)?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading after the receiver is gone so the child never blocks on a
            // full pipe.
            for line in stdout
                .into_iter()
                .flat_map(|s| BufReader::new(s).lines().map_while(Result::ok))
            {
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            child,
            stdout: rx,
            name,
            log,
        })
    }

    /// Starts the workspace binary `name` (logs to this stderr), waits for its first
    /// stdout line and returns it; panics if there is none.
    pub fn start(name: &str, args: &[String]) -> (Proc, String) {
        Proc::try_start(name, args).unwrap_or_else(|| panic!("{name} printed no ready line"))
    }

    /// Like [`Proc::start`], but `None` when the process exits without a ready line
    /// (e.g. a port taken by another test between choosing and binding it).
    pub fn try_start(name: &str, args: &[String]) -> Option<(Proc, String)> {
        match Proc::spawn(&crate::bin(name), args, Stderr::Inherit) {
            Ok(started) => Some(started),
            Err(e @ StartError::Spawn { .. }) => panic!("{e}"),
            Err(StartError::NoReadyLine { .. }) => None,
        }
    }

    /// The program's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (it is then reaped), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of its log file (empty when its stderr was inherited).
    pub fn log_tail(&self, n: usize) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(n)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, `TERM`, …) and returns at
    /// once; false if it could not be sent (e.g. the process is gone).
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL now, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (SIGKILL after `limit`). Returns the exit status code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
