//! Structured logs through `tracing`, to stderr (stdout is for command output):
//! human-readable by default, one JSON object per line with `json = true`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a filter such as `info` or
/// `tradeplex_broker=debug,info`; `RUST_LOG` overrides it when set.
///
/// Human lines are coloured only when stderr is a terminal (a pipe, a file or journald
/// gets no escape codes). JSON lines carry the event's `message` and fields at the top
/// level (`{"timestamp":…,"level":"INFO","message":"worker registered","worker":…}`), so
/// log stores index `message` without digging into a nested object.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(true);
    // A second init (e.g. from a test) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Colour only on a terminal, and not when `NO_COLOR` is set (<https://no-color.org>):
/// `with_ansi(true)` would override tracing-subscriber's own `NO_COLOR` check.
fn colour() -> bool {
    let no_color = matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

/// Items as one plain comma-separated string (`echo,SIM`), for a log field that lists
/// names: logged with `%`, it is a JSON string rather than a Rust `Debug` rendering.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item.to_string());
    }
    out
}

/// Checks a log filter (`info`, `tradeplex_broker=debug,info`) without installing it:
/// the parser's message when it does not parse, so a binary can refuse it as a usage error.
pub fn check_filter(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// [`check_filter`] as a clap `value_parser` for `--log-level`: a filter that does not
/// parse is a usage error (exit 2) instead of silently logging at `info`.
pub fn parse_filter(level: &str) -> Result<String, String> {
    check_filter(level)
        .map(|()| level.to_string())
        .map_err(|e| format!("not a log filter: {e}"))
}

/// An error and its causes as one line for stderr: `outer: cause: root`, leaving out a
/// cause whose text the line already holds (a `#[error("…: {source}")]` repeats it) and
/// the source-snippet lines of TOML parse errors, so a script sees one line per failure.
pub fn error_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = flatten(&cause.to_string());
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Joins a multi-line message into one: TOML's snippet `1 | key = "x"` becomes
/// `` `key = "x"` `` (it names the field) and its `|` / `^^^` lines are dropped.
fn flatten(text: &str) -> String {
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('|') {
            continue; // blank snippet margin or the `^^^` marker
        }
        match line.split_once(" | ") {
            Some((n, source)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                parts.push(format!("`{}`", source.trim()));
            }
            _ => parts.push(line.to_string()),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file x.toml: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn list_joins_names_with_commas() {
        assert_eq!(list(&["SIM", "echo"]), "SIM,echo");
        assert_eq!(list::<&str>(&[]), "");
    }

    #[test]
    fn error_line_drops_repeated_causes_and_snippets() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
        let chain: Vec<&(dyn std::error::Error + 'static)> =
            vec![&e, std::error::Error::source(&e).unwrap()];
        assert_eq!(
            error_line(chain),
            "cannot read config file x.toml: no such file"
        );
        let toml = "TOML parse error at line 1, column 16\n  |\n1 | heartbeat_ms = \"x\"\n  |                ^^^\ninvalid type: string \"x\", expected u64\n";
        assert_eq!(
            flatten(toml),
            "TOML parse error at line 1, column 16: `heartbeat_ms = \"x\"`: invalid type: string \"x\", expected u64"
        );
    }
}
