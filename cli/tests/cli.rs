//! The `tradeplex` command line without a broker: errors go to stderr with their code
//! name and a non-zero exit; stdout stays empty. And the README's `tradeplex` command
//! lines against `--help`: every flag the README shows exists.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use tradeplex_test_support::free_port;

fn tradeplex(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tradeplex"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn call_without_broker_is_unavailable_at_once() {
    // Nothing listens on the port: the connection is refused, the request never sent.
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let out = tradeplex(&[
        "--broker",
        &ep,
        "call",
        "echo",
        "{}",
        "--timeout-ms",
        "8000",
    ]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("unavailable"));
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn bad_json_is_refused() {
    let out = tradeplex(&["--broker", "tcp://127.0.0.1:9", "call", "echo", "{nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON"));
}

/// `--flag` words in `text`.
/// z85 keys may start with `-` (about one in 85 does): such a key is a value, not a flag.
#[test]
fn a_curve_key_starting_with_a_hyphen_is_taken_as_the_key() {
    let key = format!("-{}", "a".repeat(39));
    let out = tradeplex(&[
        "--curve-server-key",
        &key,
        "--curve-key-file",
        "/nonexistent",
        "call",
        "echo",
        "{}",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read key file"), "{stderr}");
}

fn flags(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let tail = &rest[i + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        if end > 0 {
            found.insert(format!("--{}", &tail[..end]));
        }
        rest = &tail[end..];
    }
    found
}

/// Backtick spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// `tradeplex [COMMAND [SUBCOMMAND]] --help`; `command` is the words before `--help`.
fn help(command: Option<&str>) -> String {
    let mut args: Vec<&str> = command.map(|c| c.split(' ').collect()).unwrap_or_default();
    args.push("--help");
    let out = tradeplex(&args);
    assert!(out.status.success(), "tradeplex {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in a help text's `Commands:` section (`help` left out); empty for a leaf.
fn subcommands(help_text: &str) -> Vec<String> {
    let Some(after) = help_text.split("Commands:").nth(1) else {
        return Vec::new();
    };
    let list = after.split("Options:").next().unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect()
}

/// Whether `tradeplex COMMAND` takes `flag`: its help lists it or, for a command with
/// subcommands (`risk show`, `risk set`), every subcommand's does.
fn takes(command: &str, flag: &str) -> bool {
    let text = help(Some(command));
    let has = text
        .split_whitespace()
        .any(|w| w.trim_end_matches(',') == flag);
    let subs = subcommands(&text);
    has || (!subs.is_empty() && subs.iter().all(|s| takes(&format!("{command} {s}"), flag)))
}

#[test]
fn every_flag_the_readme_shows_for_tradeplex_exists() {
    // They print a document generated from the command line itself (the README says
    // they are the exception to "every command takes `--json`").
    const GENERATORS: [&str; 2] = ["completions", "man"];
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let commands = subcommands(&help(None));
    assert!(commands.iter().any(|c| c == "call"), "{commands:?}");
    // (command — with its subcommand where it has them, "" for the global flags —,
    // the flags shown with it)
    let mut shown: Vec<(String, BTreeSet<String>, String)> = Vec::new();
    let mut note = |cmd: &str, text: &str| {
        let cmd = if commands.iter().any(|c| c == cmd) {
            // `risk set --account A`: the flags belong to `risk set`.
            let second = text.split_whitespace().nth(1).unwrap_or_default();
            if subcommands(&help(Some(cmd))).iter().any(|s| s == second) {
                format!("{cmd} {second}")
            } else {
                cmd.to_string()
            }
        } else {
            String::new()
        };
        shown.push((cmd, flags(text), text.to_string()));
    };
    // The shell block: `target/release/tradeplex COMMAND …` lines.
    for line in readme.lines() {
        for part in line.split(';') {
            if let Some(rest) = part.trim().strip_prefix("target/release/tradeplex ") {
                let rest = rest.split('#').next().unwrap_or_default();
                let cmd = rest.split_whitespace().next().unwrap_or_default();
                note(cmd, rest);
            }
        }
    }
    // The command-line bullets: the `tradeplex [...] COMMAND` line and its sub-bullets.
    let block = readme
        .split("- `tradeplex [")
        .nth(1)
        .expect("the tradeplex bullet in README's Command lines");
    let block = block.split("\n\n").next().unwrap_or_default();
    let mut lines = block.lines();
    let first = lines.next().unwrap_or_default();
    note("", first.split('`').next().unwrap_or_default());
    // A span without a command name (`--exchange`, `[--json]`) belongs to the command
    // its bullet is about.
    let mut current = String::new();
    for line in lines {
        if line.starts_with("  - ") {
            current.clear();
        }
        for span in code_spans(line) {
            let word = span.split_whitespace().next().unwrap_or_default();
            if commands.iter().any(|c| c == word) {
                current = word.to_string();
            }
            note(&current, span);
        }
    }
    assert!(
        shown.len() > 10,
        "found the README's command lines: {shown:?}"
    );
    let global = help(None);
    let mut missing = Vec::new();
    let has = |h: &str, f: &str| h.split_whitespace().any(|w| w.trim_end_matches(',') == f);
    for (cmd, fl, text) in &shown {
        for f in fl {
            // A `tradeplex X --help` lists the global flags too. A flag the README names
            // outside any command ("every command takes `--json`") must be global or
            // taken by every command.
            let known = if cmd.is_empty() {
                has(&global, f)
                    || commands
                        .iter()
                        .filter(|c| !GENERATORS.contains(&c.as_str()))
                        .all(|c| takes(c, f))
            } else {
                takes(cmd, f)
            };
            if !known {
                missing.push(format!("{cmd} {f} (README: {text})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README flags tradeplex does not take: {missing:#?}"
    );
}

#[test]
fn completions_name_every_subcommand_in_each_shell() {
    let subs = subcommands(&help(None));
    assert!(subs.len() >= 10, "{subs:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = tradeplex(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in &subs {
            assert!(
                script.contains(sub.as_str()),
                "{shell} completion lacks {sub}"
            );
        }
        // A subcommand's flag, as each shell spells it (fish: `-l timeout-ms`).
        assert!(script.contains("timeout-ms"), "{shell}: no flags");
    }
    let out = tradeplex(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_are_roff_naming_the_subcommands_and_their_flags() {
    let out = tradeplex(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH tradeplex 1"),
        "{page}"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in subcommands(&help(None)) {
        assert!(page.contains(&sub), "tradeplex(1) lacks {sub}");
    }
    let out = tradeplex(&["man", "call"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH tradeplex-call 1"), "{page}");
    // Its own flags and the global ones.
    assert!(
        page.contains("timeout\\-ms") && page.contains("broker"),
        "{page}"
    );
    let out = tradeplex(&["man", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
