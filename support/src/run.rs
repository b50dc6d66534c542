//! Short-lived runs of a workspace binary: started, waited for (killed after a limit),
//! with everything it printed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// How a short-lived process ended (see [`run_to_exit`]).
#[derive(Debug)]
pub struct Exited {
    /// Exit code; None if it had to be killed (or died by a signal).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs `name` with `args` and waits for it to exit on its own; kills it after `limit`
/// (then `code` is None). For commands expected to stop, e.g. on a bad config.
pub fn run_to_exit(name: &str, args: &[String], limit: Duration) -> Exited {
    run_with_stdin(name, args, None, limit)
}

/// Like [`run_to_exit`], with `stdin` written to the process's standard input (then
/// closed); `None` gives it no input at all.
pub fn run_with_stdin(
    name: &str,
    args: &[String],
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> Exited {
    use std::io::{Read, Write};
    let mut child = Command::new(bin(name))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A writer thread, so a child that reads slowly cannot block the wait below.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let until = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exited {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
