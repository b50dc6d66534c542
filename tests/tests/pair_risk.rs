//! Risk state across a failover of the broker pair, between real processes: the primary
//! streams its audit journal to the backup; after a kill -9 of the primary, the backup
//! (now active) refuses a halted account's orders (`halted: …`), continues the primary's
//! daily order count, and its journal holds the primary's lines. The restarted primary,
//! passive, catches up on the backup's lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tradeplex_client::{CallOptions, Client, ClientError};
use tradeplex_proto::model::Status;
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

/// The daily cap on AAPL orders of account `sim`.
const CAP: u32 = 3;

/// A pair member whose `[risk]` journals to a fresh file (fsync'd) and caps account `sim`
/// at [`CAP`] AAPL orders a day, with that journal's path.
fn start_member(role: &str, bind: &str, peer: &str) -> (PairMember, PathBuf) {
    let journal = temp_path(&format!("pair-risk-{role}.jsonl"));
    let risk = format!(
        "[risk]\ndefault_account = \"sim\"\njournal = {:?}\njournal_fsync = \"always\"\n\
         [[risk.account]]\nname = \"sim\"\ncontract_order_limit = {CAP}\n",
        journal.to_str().unwrap()
    );
    (PairMember::start(role, bind, peer, "", &risk), journal)
}

/// Whether `journal` has a request line of the order with `reference`.
fn journal_has(journal: &Path, reference: &str) -> bool {
    journal_lines(journal)
        .iter()
        .any(|l| l["event"] == "request" && l["order"]["reference"] == reference)
}

fn wait_active(member: &PairMember, client: &Client) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.call(
            "echo",
            body(json!({"ping": 1})),
            CallOptions::query().timeout(Duration::from_millis(500)),
        );
        match r {
            Ok(_) => break,
            Err(ClientError::Remote {
                code: Some(ErrorCode::Unavailable | ErrorCode::UnknownService),
                ..
            })
            | Err(ClientError::Timeout(_)) => {}
            Err(e) => panic!("unexpected answer during failover: {e}"),
        }
        assert!(Instant::now() < until, "no failover");
    }
    assert_eq!(member.state(), "active");
}

#[test]
fn a_halt_and_a_daily_cap_set_at_the_primary_hold_at_the_backup_after_kill9() {
    let (p, b) = (free_port(), free_port());
    let (p, b) = (
        format!("tcp://127.0.0.1:{p}"),
        format!("tcp://127.0.0.1:{b}"),
    );
    let (mut primary, primary_journal) = start_member("primary", &p, &b);
    let (backup, backup_journal) = start_member("backup", &b, &p);
    wait_until(
        Duration::from_secs(20),
        "primary active, backup passive",
        || primary.state() == "active" && backup.state() == "passive",
    );
    let _w1 = primary.broker.worker(&["--service", "SIM"]);
    let _w2 = backup.broker.worker(&["--service", "SIM"]);
    let at_primary = primary.broker.client();
    primary.broker.wait_for_workers(&at_primary, "SIM", 1);

    for n in 1..CAP {
        let o = at_primary
            .send_order("SIM", aapl_order("sim", &format!("pr-{n}")).build())
            .unwrap();
        assert_eq!(o.status, Status::NotTraded, "{:?}", o.reason);
    }
    at_primary.halt(Some("desk2"), "desk closed").unwrap();
    // Every line the primary wrote is confirmed by the backup before the primary dies
    // (what is not yet confirmed is the window a failover can lose).
    wait_until(Duration::from_secs(10), "replication caught up", || {
        let m = scrape(&primary.broker.http);
        let head = m
            .value("tradeplex_pair_replication_head", &[])
            .unwrap_or(0.0);
        head >= 5.0
            && m.value("tradeplex_pair_replication_acked", &[]) == Some(head)
            && m.value("tradeplex_pair_replication_lag_lines", &[]) == Some(0.0)
    });
    assert!(backup.metric("tradeplex_pair_replication_applied_total", &[]) >= 5.0);
    assert!(journal_has(&backup_journal, "pr-1") && journal_has(&backup_journal, "pr-2"));
    drop(at_primary);

    primary.broker.proc.kill9();
    let at_backup = backup.broker.client();
    wait_active(&backup, &at_backup);
    backup.broker.wait_for_workers(&at_backup, "SIM", 1);

    // The halt holds.
    let m = risk_message(at_backup.send_order("SIM", aapl_order("desk2", "bk-halted").build()));
    assert_eq!(m, "halted: desk closed");
    let halts = at_backup.status().unwrap().halts;
    assert_eq!(
        halts
            .iter()
            .map(|h| (h.account.as_str(), h.reason.as_str()))
            .collect::<Vec<_>>(),
        [("desk2", "desk closed")]
    );
    // The cap continues from the primary's count: one more passes, the next is refused.
    let o = at_backup
        .send_order("SIM", aapl_order("sim", &format!("pr-{CAP}")).build())
        .unwrap();
    assert_eq!(o.status, Status::NotTraded, "{:?}", o.reason);
    let m = risk_message(at_backup.send_order("SIM", aapl_order("sim", "bk-over").build()));
    assert_eq!(
        m,
        format!("contract_order_limit: limit {CAP}, value {}", CAP + 1)
    );
    // The backup's journal holds the primary's lines: its requests and the halt.
    let lines = journal_lines(&backup_journal);
    let halt = lines
        .iter()
        .find(|l| l["event"] == "halt")
        .expect("the primary's halt line at the backup");
    assert_eq!(halt["account"], "desk2");
    assert!(
        journal_has(&backup_journal, "pr-1") && journal_has(&backup_journal, &format!("pr-{CAP}"))
    );

    // The primary restarted is passive and takes the backup's own lines (from the
    // takeover on) into its journal: the pair can fail back.
    primary.restart();
    wait_until(Duration::from_secs(20), "restarted primary passive", || {
        primary.state() == "passive"
    });
    wait_until(
        Duration::from_secs(10),
        "the backup's lines at the primary",
        || {
            journal_has(&primary_journal, "bk-over")
                && journal_has(&primary_journal, &format!("pr-{CAP}"))
        },
    );
    let lost = primary.metric("tradeplex_pair_replication_lost_total", &[]);
    assert_eq!(lost, 0.0);
}

#[test]
fn malformed_replication_frames_are_counted_and_ignored() {
    // A broker (with a journal) whose `pair.peer` is a stranger's PUB.
    let ctx = zmq::Context::new();
    let rogue = ctx.socket(zmq::PUB).unwrap();
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    rogue.bind(&ep).unwrap();
    let me = format!("tcp://127.0.0.1:{}", free_port());
    let (listener, listener_journal) = start_member("backup", &me, &ep);
    let bad = |reason: &str| {
        scrape(&listener.broker.http)
            .value(
                "tradeplex_bad_frames_total",
                &[("socket", "pair"), ("reason", reason)],
            )
            .unwrap_or(0.0)
    };
    let mut seq_zero = b"TPXJ01".to_vec();
    seq_zero.extend_from_slice(&[7u8; 16]);
    seq_zero.extend_from_slice(&[0u8; 16]);
    seq_zero.extend_from_slice(b"{}");
    let mut not_json = b"TPXJ01".to_vec();
    not_json.extend_from_slice(&[7u8; 16]);
    not_json.extend_from_slice(&1u64.to_be_bytes());
    not_json.extend_from_slice(&1u64.to_be_bytes());
    not_json.extend_from_slice(b"not json");
    wait_until(
        Duration::from_secs(10),
        "bad replication frames counted",
        || {
            let _ = rogue.send(&b"TPXJ01"[..], zmq::DONTWAIT);
            let _ = rogue.send(&seq_zero[..], zmq::DONTWAIT);
            let _ = rogue.send(&not_json[..], zmq::DONTWAIT);
            let _ = rogue.send(&b"TPXA01 short"[..], zmq::DONTWAIT);
            bad("bad_line_length") >= 1.0
                && bad("bad_line_seq") >= 1.0
                && bad("bad_line") >= 1.0
                && bad("bad_ack_length") >= 1.0
        },
    );
    assert_eq!(listener.state(), "backup");
    // Nothing that did not parse reached the journal.
    assert!(journal_lines(&listener_journal).is_empty());
}

#[test]
fn with_curve_the_journal_lines_reach_the_backup_over_the_encrypted_link() {
    let (pk, bk, ck) = (
        keygen("pair-risk-primary.key"),
        keygen("pair-risk-backup.key"),
        keygen("pair-risk-client.key"),
    );
    let (p, b) = (
        format!("tcp://127.0.0.1:{}", free_port()),
        format!("tcp://127.0.0.1:{}", free_port()),
    );
    // Each broker admits the other's key on its backend-domain sockets (the state link)
    // and names it as the peer's.
    let start = |role: &str, own: &Keys, peer_key: &Keys, bind: &str, peer: &str| {
        let journal = temp_path(&format!("pair-risk-curve-{role}.jsonl"));
        let curve = format!(
            "[curve]\nkey_file = {:?}\nallow_clients = [{:?}]\nallow_workers = [{:?}]\n",
            own.file.to_str().unwrap(),
            ck.public,
            peer_key.public,
        );
        let rest = format!(
            "peer_public_key = {:?}\n[risk]\njournal = {:?}\n",
            peer_key.public,
            journal.to_str().unwrap()
        );
        (PairMember::start(role, bind, peer, &curve, &rest), journal)
    };
    let (primary, _) = start("primary", &pk, &bk, &p, &b);
    let (backup, backup_journal) = start("backup", &bk, &pk, &b, &p);
    wait_until(
        Duration::from_secs(20),
        "primary active, backup passive",
        || primary.state() == "active" && backup.state() == "passive",
    );
    let opts = tradeplex_client::ClientOptions {
        curve: Some(ck.client_curve(&pk)),
        ..Default::default()
    };
    let client = Client::connect(&primary.broker.frontend, opts).unwrap();
    client.halt(Some("desk2"), "curve on").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the halt line at the backup",
        || {
            journal_lines(&backup_journal)
                .iter()
                .any(|l| l["event"] == "halt" && l["reason"] == "curve on")
        },
    );
    // And the primary hears the backup's ack of it, over the same link.
    wait_until(
        Duration::from_secs(10),
        "the backup's ack at the primary",
        || {
            primary.metric("tradeplex_pair_replication_head", &[]) >= 1.0
                && primary.metric("tradeplex_pair_replication_lag_lines", &[]) == 0.0
        },
    );
}
