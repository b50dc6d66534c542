//! The documents against the code, read as a new operator reads them: every
//! `tradeplex_*` metric docs/operations.md names is exported by a running broker or
//! worker, every flag the README and docs/operations.md show for `tradeplex-broker` and
//! `tradeplex-worker` is in that binary's `--help`, and no repository file cites a design
//! document the repository does not contain. (The other direction — every exported
//! metric is documented — is `operations.rs`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tradeplex_client::{CallOptions, Client, ClientOptions};
use tradeplex_tests::*;

const LIMIT: Duration = Duration::from_secs(30);
/// The HTTP token both processes of the metrics test ask for.
const TOKEN: &str = "docs-test-token-0123456789";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Names that look like `tradeplex_…` in `text` but are crate paths or log targets
/// (`tradeplex_ops::journal`, `tradeplex_broker=debug`), not metrics.
const CRATES: [&str; 5] = [
    "tradeplex_broker",
    "tradeplex_worker",
    "tradeplex_client",
    "tradeplex_ops",
    "tradeplex_proto",
];

/// Every `tradeplex_[a-z0-9_]+` word of `text` that is not a crate name.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tradeplex_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        let word = word.trim_end_matches('_');
        // `tradeplex_*` (the prefix itself) and crate paths are not metric names.
        if word.len() > "tradeplex_".len() - 1 && word != "tradeplex" && !CRATES.contains(&word) {
            out.insert(word.to_string());
        }
    }
    out
}

/// The exported names of a scrape: metric families and their series (`_bucket`, …).
fn exported(page: &Scrape) -> BTreeSet<String> {
    let mut names = page.series_names();
    names.extend(page.types.keys().cloned());
    names
}

fn scrape_with_token(addr: &str) -> Scrape {
    let resp = http_get(addr, &format!("/metrics?token={TOKEN}"))
        .unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(resp.status, 200, "GET {addr}/metrics: {}", resp.body);
    Scrape::parse(&resp.body)
}

#[test]
fn every_metric_the_operations_doc_names_is_exported() {
    // A broker with everything that adds metrics switched on — pre-trade risk with an
    // audit journal, a broker pair (its peer never answers), HTTP credentials — and a SIM
    // worker with a journal and credentials; then a little traffic of each kind.
    let config = temp_path("docs-broker.toml");
    let journal = temp_path("docs-audit.jsonl");
    let (bind, peer) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "[http_auth]\ntoken = \"{TOKEN}\"\n\
             [risk]\njournal = {journal:?}\nadmins = [\"ops\"]\n[[risk.account]]\nname = \"sim\"\norder_size_limit = 10\n\
             [pair]\nrole = \"primary\"\nbind = \"tcp://127.0.0.1:{bind}\"\npeer = \"tcp://127.0.0.1:{peer}\"\n"
        ),
    )
    .unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let worker_config = temp_path("docs-worker.toml");
    std::fs::write(
        &worker_config,
        format!("[http_auth]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let worker_journal = temp_path("docs-worker-journal.jsonl");
    let (_worker, worker_http) = broker.worker_http(&[
        "--config",
        worker_config.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--service",
        "SIM",
        "--journal",
        worker_journal.to_str().unwrap(),
    ]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    // An admin: a client name declared from loopback (docs/risk.md, who is who).
    let opts = ClientOptions {
        name: Some("ops".into()),
        ..ClientOptions::default()
    };
    let admin = Client::connect(&broker.frontend, opts).unwrap();
    let order = |kind: &str, volume: f64, price: f64| {
        body(
            json!({"op": "send_order", "symbol": "AAPL", "exchange": "NASDAQ",
            "direction": "long", "order_type": kind, "volume": volume, "price": price,
            "account": "sim", "reference": "docs"}),
        )
    };
    client
        .call("SIM", order("market", 1.0, 0.0), CallOptions::command())
        .expect("an order within the limits");
    // A limit buy far below the market rests: the halt below has one to cancel.
    client
        .call("SIM", order("limit", 1.0, 1.0), CallOptions::command())
        .expect("a resting order");
    let refused = client
        .call("SIM", order("market", 12.0, 0.0), CallOptions::command())
        .unwrap_err();
    assert_eq!(refused.name(), "risk_rejected");
    // tpx.risk: forbidden to anyone but an admin, a change for the admin.
    let show = body(json!({"op": "show"}));
    let err = client
        .call("tpx.risk", show, CallOptions::command())
        .unwrap_err();
    assert_eq!(err.name(), "forbidden");
    let set = body(json!({"op": "set", "default": {"order_size_limit": 20.0}}));
    admin
        .call("tpx.risk", set, CallOptions::command())
        .expect("an admin changes the default limits");
    let halt = admin.halt(Some("sim"), "docs test").expect("halt");
    assert_eq!(halt.cancels_sent, 1, "{halt:?}");
    // A frame that is not a Tradeplex request.
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(&broker.frontend).unwrap();
    raw.send(&b"garbage"[..], 0).unwrap();
    wait_until(
        LIMIT,
        "the broker's halt-cancel and bad-frame series",
        || {
            let page = scrape_with_token(&broker.http);
            page.sum("tradeplex_halt_cancels_total", &[("result", "ok")]) >= 1.0
                && page.sum("tradeplex_bad_frames_total", &[]) >= 1.0
        },
    );
    wait_until(LIMIT, "the worker's gateway and order series", || {
        let page = scrape_with_token(&worker_http);
        page.value("tradeplex_gateway_connected", &[("gateway", "SIM")]) == Some(1.0)
            && page.sum("tradeplex_gateway_orders_total", &[]) > 0.0
    });
    let mut names = exported(&scrape_with_token(&broker.http));
    names.extend(exported(&scrape_with_token(&worker_http)));
    // The check has teeth: families and their series are both seen.
    assert!(names.contains("tradeplex_request_duration_seconds"));
    assert!(names.contains("tradeplex_request_duration_seconds_bucket"));
    assert!(names.contains("tradeplex_pair_state"), "{names:?}");

    // What only a CURVE broker exports.
    let server = keygen("docs-curve-broker");
    let curve_config = temp_path("docs-curve-broker.toml");
    std::fs::write(
        &curve_config,
        format!(
            "[curve]\nkey_file = {:?}\nallow_clients = []\nallow_workers = []\n",
            server.file.to_str().unwrap()
        ),
    )
    .unwrap();
    let curve_broker = Broker::start(&["--config", curve_config.to_str().unwrap()]);
    // A key the broker does not know: refused, counted.
    let stranger = keygen("docs-curve-stranger");
    let mut opts = ClientOptions::default().timeout(Duration::from_millis(300));
    opts.curve = Some(stranger.client_curve(&server));
    let refused = Client::connect(&curve_broker.frontend, opts).unwrap();
    wait_until(LIMIT, "an auth failure counted", || {
        let _ = refused.call("tpx.status", Vec::new(), CallOptions::query());
        scrape(&curve_broker.http).sum("tradeplex_auth_failures_total", &[]) >= 1.0
    });
    names.extend(exported(&scrape(&curve_broker.http)));

    let doc = repo_file("docs/operations.md");
    let named = metric_words(&doc);
    assert!(named.len() > 40, "too few names found: {named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md names metrics no process exports: {missing:?}\nexported: {names:?}"
    );
}

/// The `--long-flags` in `text`.
fn flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            w.strip_prefix("--")
                .is_some_and(|f| f.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .map(str::to_string)
        .collect()
}

fn help_flags(bin: &str) -> BTreeSet<String> {
    let out = run_to_exit(bin, &["--help".to_string()], LIMIT);
    assert_eq!(out.code, Some(0), "{bin} --help: {out:?}");
    flags(&out.stdout)
}

/// The README bullet that starts with `` - `BIN [ ``, up to the next bullet at its level.
fn readme_bullet<'a>(readme: &'a str, bin: &str) -> &'a str {
    let start = readme
        .find(&format!("- `{bin} ["))
        .unwrap_or_else(|| panic!("README has no `{bin} [` bullet"));
    let rest = &readme[start + 2..];
    let end = rest.find("\n- ").unwrap_or(rest.len());
    &rest[..end]
}

/// The flag column of the config table under the heading that names `bin`.
fn operations_table_flags(doc: &str, bin: &str) -> BTreeSet<String> {
    let start = doc
        .find(&format!(": `{bin}`\n"))
        .unwrap_or_else(|| panic!("docs/operations.md has no section for {bin}"));
    let section = &doc[start..];
    let end = section[1..].find("\n#").map_or(section.len(), |e| e + 1);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(2))
        .flat_map(flags)
        .collect()
}

#[test]
fn every_flag_the_readme_and_operations_doc_show_for_broker_and_worker_exists() {
    let readme = repo_file("README.md");
    let doc = repo_file("docs/operations.md");
    let mut missing = Vec::new();
    for bin in ["tradeplex-broker", "tradeplex-worker"] {
        let known = help_flags(bin);
        assert!(known.contains("--config"), "{bin}: {known:?}");
        let readme_flags = flags(readme_bullet(&readme, bin));
        let doc_flags = operations_table_flags(&doc, bin);
        assert!(readme_flags.len() >= 5, "{bin}: README {readme_flags:?}");
        assert!(doc_flags.len() >= 5, "{bin}: operations.md {doc_flags:?}");
        for (file, shown) in [("README.md", &readme_flags), ("operations.md", &doc_flags)] {
            for f in shown.difference(&known) {
                missing.push(format!("{file}: {bin} {f}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags the docs show but the binaries do not take: {missing:#?}"
    );
}

/// Text files of the repository (what git would track: not `target/`, virtualenvs or
/// caches).
fn repository_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let skipped = name.starts_with('.') && name != ".cargo" && name != ".ci"
                || ["target", "node_modules", "__pycache__"].contains(&name.as_str())
                || name.ends_with(".egg-info");
            if !skipped {
                repository_files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_repository_file_cites_a_design_document_it_does_not_contain() {
    // Spelled in two pieces so this file does not cite it either.
    let name = concat!("DESIGN", ".md");
    let root = repo_root();
    assert!(
        !root.join(name).exists(),
        "the repository now has {name}: this test no longer applies"
    );
    let mut files = Vec::new();
    repository_files(&root, &mut files);
    assert!(
        files.len() > 50,
        "found the repository's files: {}",
        files.len()
    );
    let citing: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .is_ok_and(|t| t.to_ascii_uppercase().contains(&name.to_ascii_uppercase()))
        })
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        citing.is_empty(),
        "files citing {name}, which the repository does not contain: {citing:?}"
    );
}
