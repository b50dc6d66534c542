//! Every rule at, just under and just over its limit, with a fake clock (Unix ms values).

use super::*;
use tradeplex_proto::model::{Direction, Offset, OrderType};

const T0: u64 = 1_800_000_000_000;

fn stage(toml: &str) -> Stage {
    let cfg: RiskConfig = tradeplex_ops::config::parse(toml, "<test>").unwrap();
    Stage::new(cfg, &Registry::new()).unwrap()
}

fn stage_for(limits: &str) -> Stage {
    stage(&format!(
        "[[account]]\nname = \"a\"\n{limits}\n[contract.IF2412]\nsize = 300\npricetick = 0.2\nmin_volume = 1\n"
    ))
}

fn order(volume: f64, price: f64) -> OrderRequest {
    OrderRequest {
        symbol: "IF2412".into(),
        exchange: "CFFEX".into(),
        direction: Direction::Long,
        order_type: OrderType::Limit,
        volume,
        price,
        offset: Offset::Open,
        account: "a".into(),
        reference: String::new(),
    }
}

fn body(o: &OrderRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(&tradeplex_proto::model::GatewayRequest::SendOrder(
        o.clone(),
    ))
    .unwrap()
}

/// Checks an order and, as the worker's answer would, settles it at once (the tests of
/// in-flight orders call `check` themselves).
fn send(s: &Stage, t: u64, o: &OrderRequest) -> Verdict {
    match s.check(t, &body(o)) {
        Verdict::Admitted(ticket) => {
            s.settle(ticket);
            Verdict::Pass
        }
        v => v,
    }
}

fn rejected(v: &Verdict) -> String {
    match v {
        Verdict::Refuse(ErrorCode::RiskRejected, m) => m.clone(),
        other => panic!("expected risk_rejected, got {other:?}"),
    }
}

fn event<T: serde::Serialize>(s: &Stage, kind: &str, body: &T) {
    s.feed()
        .on_event(T0, kind, &rmp_serde::to_vec_named(body).unwrap());
}

#[test]
fn order_size_limit_passes_at_the_limit_and_rejects_above() {
    let s = stage_for("order_size_limit = 10");
    assert_eq!(send(&s, T0, &order(9.0, 3900.0)), Verdict::Pass);
    assert_eq!(send(&s, T0, &order(10.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send(&s, T0, &order(12.0, 3900.0)));
    assert_eq!(m, "order_size_limit: limit 10, value 12");
}

#[test]
fn order_value_limit_uses_the_contract_size_and_the_last_price_for_market_orders() {
    // 3900 × 2 × 300 = 2_340_000
    let s = stage_for("order_value_limit = 2340000");
    assert_eq!(send(&s, T0, &order(2.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send(&s, T0, &order(2.0, 3900.2)));
    assert!(
        m.starts_with("order_value_limit: limit 2340000, value 2340120"),
        "{m}"
    );
    let mut mkt = order(1.0, 0.0);
    mkt.order_type = OrderType::Market;
    let m = rejected(&send(&s, T0, &mkt));
    assert!(m.contains("no last price"), "{m}");
    event(
        &s,
        "tick",
        &serde_json::json!({"symbol": "IF2412", "last_price": 7800.0}),
    );
    assert_eq!(send(&s, T0, &mkt), Verdict::Pass); // 7800 × 1 × 300 = 2_340_000
    mkt.volume = 2.0;
    assert!(rejected(&send(&s, T0, &mkt)).contains("value 4680000"));
}

#[test]
fn order_flow_limit_slides_per_second_and_per_minute() {
    let s = stage_for("order_flow_limit_per_s = 3\norder_flow_limit_per_min = 5");
    for i in 0..3 {
        assert_eq!(send(&s, T0 + i, &order(1.0, 3900.0)), Verdict::Pass);
    }
    let m = rejected(&send(&s, T0 + 999, &order(1.0, 3900.0)));
    assert_eq!(m, "order_flow_limit: limit 3/s, value 4");
    // One second after the first: it has slid out of the window.
    assert_eq!(send(&s, T0 + 1000, &order(1.0, 3900.0)), Verdict::Pass);
    assert_eq!(send(&s, T0 + 2000, &order(1.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send(&s, T0 + 3000, &order(1.0, 3900.0)));
    assert_eq!(m, "order_flow_limit: limit 5/min, value 6");
    assert_eq!(send(&s, T0 + 60_000, &order(1.0, 3900.0)), Verdict::Pass);
}

#[test]
fn duplicate_orders_within_the_window_are_rejected() {
    let s = stage_for("duplicate_order_window_ms = 1000");
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    assert_eq!(send(&s, T0 + 1, &order(2.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send(&s, T0 + 999, &order(1.0, 3900.0)));
    assert_eq!(m, "duplicate_order: limit 1 in 1000 ms, value 2");
    assert_eq!(send(&s, T0 + 1000, &order(1.0, 3900.0)), Verdict::Pass);
    let s = stage_for("duplicate_order_window_ms = 1000\nduplicate_order_limit = 2");
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    assert!(matches!(
        send(&s, T0, &order(1.0, 3900.0)),
        Verdict::Refuse(..)
    ));
}

#[test]
fn contract_order_limit_counts_per_symbol_per_trading_day() {
    let s = stage_for("contract_order_limit = 2");
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send(&s, T0, &order(1.0, 3900.0)));
    assert_eq!(m, "contract_order_limit: limit 2, value 3");
    let mut other = order(1.0, 190.0);
    other.symbol = "AAPL".into();
    assert_eq!(send(&s, T0, &other), Verdict::Pass);
    // The next trading day starts at midnight UTC.
    let next_day = (T0 / state::DAY_MS + 1) * state::DAY_MS;
    assert!(matches!(
        send(&s, next_day - 1, &order(1.0, 3900.0)),
        Verdict::Refuse(..)
    ));
    assert_eq!(send(&s, next_day, &order(1.0, 3900.0)), Verdict::Pass);
}

#[test]
fn the_trading_day_boundary_is_configurable() {
    let s = stage(
        "trading_day_start_utc = \"13:00\"\n[[account]]\nname = \"a\"\ncontract_order_limit = 1",
    );
    let midnight = (T0 / state::DAY_MS + 1) * state::DAY_MS;
    assert_eq!(send(&s, midnight, &order(1.0, 1.0)), Verdict::Pass);
    assert!(matches!(
        send(&s, midnight + 13 * 3_600_000 - 1, &order(1.0, 1.0)),
        Verdict::Refuse(..)
    ));
    assert_eq!(
        send(&s, midnight + 13 * 3_600_000, &order(1.0, 1.0)),
        Verdict::Pass
    );
}

#[test]
fn order_validity_checks_tick_min_volume_band_and_contract() {
    let s = stage_for("order_validity = true");
    assert_eq!(send(&s, T0, &order(1.0, 3900.2)), Verdict::Pass);
    let m = rejected(&send(&s, T0, &order(1.0, 3900.1)));
    assert_eq!(m, "order_validity: limit pricetick 0.2, value price 3900.1");
    let m = rejected(&send(&s, T0, &order(1.5, 3900.0)));
    assert_eq!(m, "order_validity: limit min_volume 1, value volume 1.5");
    event(
        &s,
        "tick",
        &serde_json::json!({"symbol": "IF2412", "last_price": 3900.0, "limit_up": 4000.0, "limit_down": 3800.0}),
    );
    assert_eq!(send(&s, T0, &order(1.0, 4000.0)), Verdict::Pass);
    assert_eq!(send(&s, T0, &order(1.0, 3800.0)), Verdict::Pass);
    assert_eq!(
        rejected(&send(&s, T0, &order(1.0, 4000.2))),
        "order_validity: limit limit_up 4000, value price 4000.2"
    );
    assert_eq!(
        rejected(&send(&s, T0, &order(1.0, 3799.8))),
        "order_validity: limit limit_down 3800, value price 3799.8"
    );
    let mut unknown = order(1.0, 1.0);
    unknown.symbol = "NOPE".into();
    assert!(rejected(&send(&s, T0, &unknown)).contains("unknown symbol NOPE"));
}

#[test]
fn contracts_come_from_events_when_the_config_has_none() {
    let s = stage("[[account]]\nname = \"a\"\norder_validity = true");
    assert!(matches!(
        send(&s, T0, &order(1.0, 3900.2)),
        Verdict::Refuse(..)
    ));
    event(
        &s,
        "contract",
        &serde_json::json!({"symbol": "IF2412", "exchange": "CFFEX", "size": 300.0, "pricetick": 0.2, "min_volume": 1.0, "extra": [1, 2]}),
    );
    assert_eq!(send(&s, T0, &order(1.0, 3900.2)), Verdict::Pass);
    assert!(matches!(
        send(&s, T0, &order(1.0, 3900.1)),
        Verdict::Refuse(..)
    ));
}

fn order_event(id: &str, volume: f64, traded: f64, status: &str) -> serde_json::Value {
    serde_json::json!({"order_id": id, "symbol": "IF2412", "account": "a", "direction": "long",
        "offset": "open", "volume": volume, "traded": traded, "status": status, "price": 3900.0})
}

#[test]
fn active_order_limit_follows_order_events_until_final() {
    let s = stage_for("active_order_limit = 2");
    event(&s, "order", &order_event("SIM.w.1", 1.0, 0.0, "not_traded"));
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass); // 2nd active
    event(&s, "order", &order_event("SIM.w.2", 1.0, 0.0, "submitting"));
    let m = rejected(&send(&s, T0, &order(1.0, 3900.0)));
    assert_eq!(m, "active_order_limit: limit 2, value 3");
    event(&s, "order", &order_event("SIM.w.2", 1.0, 0.0, "not_traded")); // same order again
    assert!(matches!(
        send(&s, T0, &order(1.0, 3900.0)),
        Verdict::Refuse(..)
    ));
    event(&s, "order", &order_event("SIM.w.1", 1.0, 1.0, "all_traded"));
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
}

#[test]
fn cancel_and_trade_caps_stop_new_orders_in_the_symbol() {
    let s = stage_for("contract_cancel_limit = 2\ncontract_trade_limit = 3");
    event(&s, "order", &order_event("SIM.w.1", 5.0, 0.0, "not_traded"));
    let cancel = |id: &str| {
        rmp_serde::to_vec_named(&serde_json::json!({"op": "cancel_order", "order_id": id})).unwrap()
    };
    assert_eq!(s.check(T0, &cancel("SIM.w.1")), Verdict::Pass);
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass); // 1 cancel < 2
    assert_eq!(s.check(T0, &cancel("SIM.w.1")), Verdict::Pass); // cancels always pass
    let m = rejected(&send(&s, T0, &order(1.0, 3900.0)));
    assert_eq!(m, "contract_cancel_limit: limit 2, value 2");

    let s = stage_for("contract_trade_limit = 2");
    let trade = serde_json::json!({"trade_id": "t", "order_id": "SIM.w.1", "symbol": "IF2412", "account": "a"});
    event(&s, "trade", &trade);
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass);
    event(&s, "trade", &trade);
    assert_eq!(
        rejected(&send(&s, T0, &order(1.0, 3900.0))),
        "contract_trade_limit: limit 2, value 2"
    );
}

#[test]
fn position_limit_counts_holdings_and_working_opening_orders() {
    let s = stage_for("position_limit = 10");
    event(
        &s,
        "position",
        &serde_json::json!({"symbol": "IF2412", "account": "a", "direction": "long", "volume": 4.0}),
    );
    event(
        &s,
        "order",
        &order_event("SIM.w.1", 5.0, 2.0, "part_traded"),
    ); // 3 working
    assert_eq!(send(&s, T0, &order(3.0, 3900.0)), Verdict::Pass); // 4 + 3 + 3 = 10
    assert_eq!(
        rejected(&send(&s, T0, &order(4.0, 3900.0))),
        "position_limit: limit 10, value 11"
    );
    let mut close = order(4.0, 3900.0);
    close.offset = Offset::Close;
    assert_eq!(send(&s, T0, &close), Verdict::Pass);
    let mut short = order(10.0, 3900.0);
    short.direction = Direction::Short;
    assert_eq!(send(&s, T0, &short), Verdict::Pass);
    // A net-position venue reports one signed volume.
    event(
        &s,
        "position",
        &serde_json::json!({"symbol": "IF2412", "account": "a", "direction": "net", "volume": -8.0}),
    );
    assert_eq!(
        rejected(&send(&s, T0, &short)),
        "position_limit: limit 10, value 18"
    );
    assert_eq!(send(&s, T0, &order(7.0, 3900.0)), Verdict::Pass); // long now 0 + 3 working + 7
}

#[test]
fn daily_loss_limit_compares_with_the_first_balance_of_the_day() {
    let s = stage_for("daily_loss_limit = 1000");
    let acct = |b: f64| serde_json::json!({"account": "a", "gateway": "SIM", "balance": b, "frozen": 0.0, "available": b});
    event(&s, "account", &acct(100_000.0));
    event(&s, "account", &acct(99_000.0));
    assert_eq!(send(&s, T0, &order(1.0, 3900.0)), Verdict::Pass); // loss 1000 = limit
    event(&s, "account", &acct(98_999.5));
    assert_eq!(
        rejected(&send(&s, T0, &order(1.0, 3900.0))),
        "daily_loss_limit: limit 1000, value 1000.5"
    );
}

#[test]
fn undecodable_orders_are_bad_requests_and_other_bodies_pass() {
    let s = stage_for("order_size_limit = 10");
    let bad =
        rmp_serde::to_vec_named(&serde_json::json!({"op": "send_order", "symbol": 5})).unwrap();
    assert!(matches!(
        s.check(T0, &bad),
        Verdict::Refuse(ErrorCode::BadRequest, _)
    ));
    let neg = rmp_serde::to_vec_named(&serde_json::json!({"op": "send_order", "symbol": "X", "direction": "long", "volume": -1.0})).unwrap();
    assert!(
        matches!(s.check(T0, &neg), Verdict::Refuse(ErrorCode::BadRequest, m) if m.contains("volume"))
    );
    assert!(matches!(
        s.check(T0, b"\x82\xa2op"),
        Verdict::Refuse(ErrorCode::BadRequest, _)
    ));
    for pass in [
        &b""[..],
        b"\xc1garbage",
        &rmp_serde::to_vec_named(&serde_json::json!({"sleep_ms": 1})).unwrap(),
        &rmp_serde::to_vec_named(&serde_json::json!({"op": 7})).unwrap(),
        &rmp_serde::to_vec_named(&serde_json::json!(["send_order", 1])).unwrap(),
    ] {
        assert_eq!(s.check(T0, pass), Verdict::Pass);
    }
}

#[test]
fn unlisted_accounts_get_the_default_or_nothing() {
    let s =
        stage("[default]\norder_size_limit = 1\n[[account]]\nname = \"a\"\norder_size_limit = 10");
    let mut b = order(2.0, 1.0);
    b.account = "b".into();
    assert!(matches!(send(&s, T0, &b), Verdict::Refuse(..)));
    assert_eq!(send(&s, T0, &order(2.0, 1.0)), Verdict::Pass);
    let s = stage("[[account]]\nname = \"a\"\norder_size_limit = 10");
    b.volume = 1000.0;
    assert_eq!(send(&s, T0, &b), Verdict::Pass);
    // An empty account is checked as default_account.
    let s = stage("default_account = \"a\"\n[[account]]\nname = \"a\"\norder_size_limit = 10");
    b.account = String::new();
    assert!(matches!(send(&s, T0, &b), Verdict::Refuse(..)));
}

#[test]
fn at_the_account_cap_new_accounts_are_rejected() {
    let s = stage("max_accounts = 1\n[default]\ncontract_order_limit = 100");
    assert_eq!(send(&s, T0, &order(1.0, 1.0)), Verdict::Pass);
    let mut b = order(1.0, 1.0);
    b.account = "b".into();
    assert_eq!(
        rejected(&send(&s, T0, &b)),
        "risk_capacity: limit 1 accounts, value 2"
    );
    let s = stage("max_symbols_per_account = 1\n[default]\ncontract_order_limit = 100");
    assert_eq!(send(&s, T0, &order(1.0, 1.0)), Verdict::Pass);
    b.account = "a".into();
    b.symbol = "AAPL".into();
    assert_eq!(
        rejected(&send(&s, T0, &b)),
        "risk_capacity: limit 1 symbols per account, value 2"
    );
}

#[test]
fn orders_in_flight_count_as_working_until_settled() {
    let s = stage_for("active_order_limit = 2\nposition_limit = 10");
    let Verdict::Admitted(first) = s.check(T0, &body(&order(2.0, 3900.0))) else {
        panic!("first order refused");
    };
    let Verdict::Admitted(second) = s.check(T0, &body(&order(3.0, 3900.0))) else {
        panic!("second order refused");
    };
    // Two in flight: a third is the third working order.
    assert_eq!(
        rejected(&send(&s, T0, &order(1.0, 3900.0))),
        "active_order_limit: limit 2, value 3"
    );
    s.settle(first);
    // 3 in flight + 8 = 11 > 10.
    assert_eq!(
        rejected(&send(&s, T0, &order(8.0, 3900.0))),
        "position_limit: limit 10, value 11"
    );
    assert_eq!(send(&s, T0, &order(7.0, 3900.0)), Verdict::Pass);
    s.settle(second);
    assert_eq!(send(&s, T0, &order(10.0, 3900.0)), Verdict::Pass);
}

#[test]
fn an_order_with_direction_net_is_refused_as_invalid() {
    // `net` names a position's side; as an order's side no counter could hold it.
    let s = stage_for("order_size_limit = 10");
    let mut o = order(1.0, 3900.0);
    o.direction = Direction::Net;
    assert_eq!(
        rejected(&send(&s, T0, &o)),
        "order_validity: limit long or short, value net"
    );
}

// ----- kill switch ------------------------------------------------------------------

fn book_event(s: &Stage, id: &str, account: &str, status: &str) {
    event(
        s,
        "order",
        &serde_json::json!({
            "order_id": id, "symbol": "IF2412", "exchange": "CFFEX", "account": account,
            "direction": "long", "offset": "open", "volume": 1.0, "traded": 0.0, "status": status,
        }),
    );
}

#[test]
fn a_halt_is_checked_before_the_rules_and_resume_restores_them() {
    let s = stage(
        "default_account = \"a\"\n[[account]]\nname = \"a\"\norder_size_limit = 10\n\
         [contract.IF2412]\nsize = 300\n",
    );
    let (h, orders, skipped) = s.halt(T0, Some("a"), "why").unwrap();
    assert_eq!((h.account.as_str(), h.since_ms), ("a", T0));
    assert!(orders.is_empty() && skipped == 0);
    // Within the limits or not, a halted account's order is refused as halted.
    assert_eq!(rejected(&send(&s, T0, &order(1.0, 4000.0))), "halted: why");
    assert_eq!(rejected(&send(&s, T0, &order(50.0, 4000.0))), "halted: why");
    // "" is read as default_account.
    let mut empty = order(1.0, 4000.0);
    empty.account.clear();
    assert_eq!(rejected(&send(&s, T0, &empty)), "halted: why");
    // Another account is not halted.
    let mut other = order(1.0, 4000.0);
    other.account = "b".into();
    assert!(matches!(send(&s, T0, &other), Verdict::Pass));
    // A second halt keeps its start, takes the new reason.
    let (h, _, _) = s.halt(T0 + 5, Some("a"), "").unwrap();
    assert_eq!((h.since_ms, h.reason.as_str()), (T0, halt::DEFAULT_REASON));
    let (gone, left) = s.resume(Some("a"));
    assert_eq!(gone, vec!["a".to_string()]);
    assert!(left.is_empty());
    assert!(matches!(send(&s, T0, &order(1.0, 4000.0)), Verdict::Pass));
    assert_eq!(
        rejected(&send(&s, T0, &order(12.0, 4000.0))),
        "order_size_limit: limit 10, value 12"
    );
}

#[test]
fn the_book_holds_every_accounts_working_orders_and_each_is_handed_out_once() {
    let s = Stage::without_rules(&Registry::new());
    book_event(&s, "SIM.w.1", "a", "not_traded");
    book_event(&s, "SIM.w.2", "a", "part_traded");
    book_event(&s, "SIM.w.3", "b", "submitting");
    book_event(&s, "SIM.w.4", "a", "not_traded");
    book_event(&s, "SIM.w.4", "a", "cancelled");
    // Without rules no other kind is read, and nothing is counted.
    event(
        &s,
        "trade",
        &serde_json::json!({"symbol": "IF2412", "account": "a"}),
    );
    assert_eq!(s.booked_orders(), 3);
    let (_, orders, skipped) = s.halt(T0, Some("a"), "x").unwrap();
    let ids: Vec<&str> = orders.iter().map(|b| b.order_id.as_str()).collect();
    assert_eq!(ids, ["SIM.w.1", "SIM.w.2"]);
    assert_eq!(orders[0].exchange, "CFFEX");
    assert_eq!(skipped, 0);
    // A halt of all: a's orders were handed out already, only b's is new.
    let (h, orders, skipped) = s.halt(T0, None, "y").unwrap();
    assert_eq!(h.account, "*");
    let ids: Vec<&str> = orders.iter().map(|b| b.order_id.as_str()).collect();
    assert_eq!((ids, skipped), (vec!["SIM.w.3"], 2));
    // Final orders leave the book.
    book_event(&s, "SIM.w.1", "a", "cancelled");
    assert_eq!(s.booked_orders(), 2);
    let (gone, left) = s.resume(None);
    assert_eq!(gone, vec!["*".to_string(), "a".to_string()]);
    assert!(left.is_empty());
}

fn temp_journal(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tpx-audit-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("audit.jsonl")
}

fn with_audit(s: &Stage, path: &std::path::Path) {
    let opts = tradeplex_ops::journal::JournalOptions::new(path);
    assert!(s.set_audit(audit::Audit::open(opts, T0).unwrap()));
}

/// What the dispatcher does for one request: check, journal, and answer as the worker.
fn audited(
    s: &Stage,
    t: u64,
    o: &OrderRequest,
    answer: Result<&[u8], (ErrorCode, &str)>,
) -> Verdict {
    let b = body(o);
    let v = s.check(t, &b);
    let rid = s
        .audit_request_from(t, &[0xab, 0x01], Some("alpha"), 7, &b, &v)
        .unwrap();
    match v {
        Verdict::Admitted(ticket) => {
            s.settle(ticket);
            s.audit_outcome(t + 1, rid.unwrap(), answer, Some("w1".into()));
            Verdict::Pass
        }
        Verdict::Pass => {
            s.audit_outcome(t + 1, rid.unwrap(), answer, Some("w1".into()));
            Verdict::Pass
        }
        v => v,
    }
}

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_audit_journal_has_a_request_decision_and_outcome_line_per_order_and_halt_lines() {
    let path = temp_journal("format");
    let s = stage_for("contract_order_limit = 1");
    with_audit(&s, &path);
    let mut o = order(1.0, 3900.0);
    o.reference = "ref-1".into();
    let reply = rmp_serde::to_vec_named(
        &serde_json::json!({"order_id": "SIM.w1.5", "status": "not_traded"}),
    )
    .unwrap();
    assert_eq!(audited(&s, T0, &o, Ok(&reply)), Verdict::Pass);
    rejected(&audited(&s, T0 + 10, &o, Ok(&reply)));
    s.halt(T0 + 20, Some("a"), "desk closed").unwrap();
    s.resume(Some("a"));
    let l = json_lines(&path);
    assert_eq!(l.len(), 7, "{l:?}");
    let events: Vec<&str> = l.iter().map(|x| x["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["request", "decision", "outcome", "request", "decision", "halt", "resume"]
    );
    assert_eq!(l[0]["ts_ms"], T0);
    assert_eq!(l[0]["client"], "ab01");
    assert_eq!(l[0]["id"], 7);
    assert_eq!(l[0]["op"], "send_order");
    assert_eq!(l[0]["order"]["account"], "a");
    assert_eq!(l[0]["order"]["symbol"], "IF2412");
    assert_eq!(l[0]["order"]["direction"], "long");
    assert_eq!(l[0]["order"]["price"], 3900.0);
    assert_eq!(l[0]["order"]["volume"], 1.0);
    assert_eq!(l[0]["order"]["reference"], "ref-1");
    assert_eq!(l[1]["decision"], "pass");
    assert_eq!(l[1]["rid"], l[0]["rid"]);
    assert_eq!(l[2]["rid"], l[0]["rid"]);
    assert_eq!(l[2]["outcome"], "ok");
    assert_eq!(l[2]["order_id"], "SIM.w1.5");
    assert_eq!(l[2]["status"], "not_traded");
    assert_eq!(l[2]["worker"], "w1");
    assert_ne!(l[3]["rid"], l[0]["rid"]);
    assert_eq!(l[4]["decision"], "reject");
    assert_eq!(l[4]["code"], "risk_rejected");
    assert_eq!(l[4]["rule"], "contract_order_limit");
    assert!(l[4]["message"]
        .as_str()
        .unwrap()
        .starts_with("contract_order_limit: limit 1"));
    assert_eq!(l[5]["account"], "a");
    assert_eq!(l[5]["reason"], "desk closed");
    assert_eq!(l[6]["account"], "a");
}

#[test]
fn an_error_outcome_names_its_code_and_message() {
    let path = temp_journal("error");
    let s = stage_for("contract_order_limit = 5");
    with_audit(&s, &path);
    audited(
        &s,
        T0,
        &order(1.0, 3900.0),
        Err((ErrorCode::WorkerLost, "gone")),
    );
    let l = json_lines(&path);
    assert_eq!(l[2]["outcome"], "worker_lost");
    assert_eq!(l[2]["error"], "gone");
    assert!(l[2].get("order_id").is_none());
}

#[test]
fn replay_restores_todays_counters_and_halts_ignoring_other_days_and_a_torn_line() {
    let path = temp_journal("replay");
    let limits = "contract_order_limit = 3\ncontract_trade_limit = 10";
    {
        let s = stage_for(limits);
        with_audit(&s, &path);
        // Yesterday: two orders, which must not count today.
        let yesterday = T0 - state::DAY_MS;
        audited(&s, yesterday, &order(1.0, 3900.0), Ok(&[]));
        audited(&s, yesterday, &order(1.0, 3900.2), Ok(&[]));
        // Today: two orders admitted, a halt of account b, a trade.
        audited(&s, T0, &order(1.0, 3900.0), Ok(&[]));
        audited(&s, T0 + 1, &order(1.0, 3900.4), Ok(&[]));
        s.halt(T0 + 2, Some("b"), "why not").unwrap();
        s.feed().on_event(
            T0 + 3,
            "trade",
            &rmp_serde::to_vec_named(&serde_json::json!({"symbol": "IF2412", "account": "a"}))
                .unwrap(),
        );
    }
    // A crash mid-write leaves a torn last line.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"ts_ms\":1800000000005,\"event\":\"req")
        .unwrap();
    let read = audit::read(&path, 10, audit::MAX_REPLAY_BYTES).unwrap();
    assert_eq!(read.bad, 1, "the torn line is skipped");
    let s = stage_for(limits);
    let r = s.replay(T0 + 10, &read.lines);
    assert_eq!((r.orders, r.trades, r.halts_in_force), (2, 1, 1), "{r:?}");
    let c = s.counters("a", "IF2412").unwrap();
    assert_eq!((c.orders, c.trades), (2, 1));
    assert_eq!(s.halts()[0].account, "b");
    assert_eq!(s.halts()[0].reason, "why not");
    assert_eq!(s.halts()[0].since_ms, T0 + 2);
    // The third order of the day passes, the fourth is over the cap.
    assert_eq!(send(&s, T0 + 20, &order(1.0, 3900.6)), Verdict::Pass);
    let m = rejected(&send(&s, T0 + 21, &order(1.0, 3900.8)));
    assert!(m.starts_with("contract_order_limit: limit 3"), "{m}");
    // Reopening ends the torn line, so the next line is whole.
    with_audit(&s, &path);
    s.resume(None);
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.lines().last().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(last).unwrap()["event"],
        "resume"
    );
}

#[test]
fn a_resume_in_the_journal_lifts_the_replayed_halt() {
    let lines = vec![
        audit::Line::Halt {
            ts_ms: T0,
            account: "*".into(),
            reason: "r".into(),
            by: None,
            client: None,
        },
        audit::Line::Resume {
            ts_ms: T0 + 1,
            account: "*".into(),
            by: None,
            client: None,
        },
        audit::Line::Halt {
            ts_ms: T0 + 2,
            account: "a".into(),
            reason: "r2".into(),
            by: Some("ops".into()),
            client: Some("00ab".into()),
        },
    ];
    let s = stage_for("contract_order_limit = 3");
    let r = s.replay(T0 + 5, &lines);
    assert_eq!(r.halts_in_force, 1);
    // Who halted comes back with the halt.
    assert_eq!(s.halts()[0].by, "ops");
    assert!(rejected(&send(&s, T0 + 6, &order(1.0, 3900.0))).starts_with("halted: r2"));
}

fn caller(name: &str, admin: bool) -> Caller {
    Caller {
        name: Some(name.into()),
        admin,
        admins_exist: true,
    }
}

fn send_as(s: &Stage, t: u64, who: &Caller, o: &OrderRequest) -> Verdict {
    match s.check_from(t, who, &body(o)) {
        Verdict::Admitted(ticket) => {
            s.settle(ticket);
            Verdict::Pass
        }
        v => v,
    }
}

#[test]
fn a_clients_limits_hold_beside_its_accounts_and_count_its_own_orders_only() {
    let s = stage(
        "[[account]]\nname = \"a\"\ncontract_order_limit = 3\n\
         [clients.alpha]\ncontract_order_limit = 1\norder_size_limit = 2\n",
    );
    let (alpha, beta) = (caller("alpha", false), caller("beta", false));
    assert_eq!(send_as(&s, T0, &alpha, &order(2.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send_as(&s, T0, &alpha, &order(1.0, 3900.0)));
    assert_eq!(m, "contract_order_limit: limit 1, value 2 (client alpha)");
    let m = rejected(&send_as(&s, T0, &alpha, &order(3.0, 3900.0)));
    assert!(
        m.starts_with("order_size_limit: limit 2, value 3 (client alpha)"),
        "{m}"
    );
    // Beta has no client limits: only the account's (shared with alpha's order).
    assert_eq!(send_as(&s, T0, &beta, &order(1.0, 3900.0)), Verdict::Pass);
    assert_eq!(send_as(&s, T0, &beta, &order(1.0, 3900.0)), Verdict::Pass);
    let m = rejected(&send_as(&s, T0, &beta, &order(1.0, 3900.0)));
    assert_eq!(m, "contract_order_limit: limit 3, value 4");
    assert_eq!(s.client_counters("alpha", "IF2412").unwrap().orders, 1);
    assert!(s.client_counters("beta", "IF2412").is_none());
}

#[test]
fn a_client_may_not_hold_account_only_rules() {
    let cfg: RiskConfig =
        tradeplex_ops::config::parse("[clients.alpha]\nposition_limit = 5\n", "<t>").unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("position_limit is per account only"), "{e}");
    let cfg: RiskConfig =
        tradeplex_ops::config::parse("[clients.\"a b\"]\norder_size_limit = 5\n", "<t>").unwrap();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("risk.clients"));
}

fn manage(
    s: &Stage,
    who: &Caller,
    v: serde_json::Value,
) -> Result<serde_json::Value, (ErrorCode, String)> {
    let body = rmp_serde::to_vec_named(&v).unwrap();
    s.manage(T0, who, &body)
        .map(|r| rmp_serde::from_slice::<serde_json::Value>(&r).unwrap())
}

#[test]
fn tpx_risk_sets_and_clears_limits_for_admins_only_with_the_load_validation() {
    let s = stage_for("order_size_limit = 10");
    let ops = caller("ops", true);
    let e = manage(
        &s,
        &caller("alpha", false),
        serde_json::json!({"op": "show"}),
    )
    .unwrap_err();
    assert_eq!(e.0, ErrorCode::Forbidden);
    let shown = manage(&s, &ops, serde_json::json!({"op": "show"})).unwrap();
    assert_eq!(shown["account"][0]["order_size_limit"], 10.0);
    assert_eq!(shown["changed_by"], "config");
    let set = serde_json::json!({"op": "set", "account": [{"name": "a", "order_size_limit": 5}]});
    let after = manage(&s, &ops, set).unwrap();
    assert_eq!(after["account"][0]["order_size_limit"], 5.0);
    assert_eq!(after["changed_by"], "ops");
    let m = rejected(&send(&s, T0, &order(6.0, 3900.0)));
    assert_eq!(m, "order_size_limit: limit 5, value 6");
    for (bad, field) in [
        (
            serde_json::json!({"op": "set", "account": [{"name": "a", "order_size_limit": -1}]}),
            "order_size_limit",
        ),
        (
            serde_json::json!({"op": "set", "account": [{"name": "a", "bogus_rule": 1}]}),
            "bogus_rule",
        ),
        (
            serde_json::json!({"op": "set", "account": [{"name": "b"}, {"name": "b"}]}),
            "listed twice",
        ),
        (
            serde_json::json!({"op": "set", "clients": {"x": {"daily_loss_limit": 1}}}),
            "per account only",
        ),
        (serde_json::json!({"op": "explode"}), "op"),
        (
            serde_json::json!({"op": "clear", "account": ["nobody"]}),
            "nobody",
        ),
    ] {
        let e = manage(&s, &ops, bad.clone()).unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest, "{bad}");
        assert!(e.1.contains(field), "{bad}: {}", e.1);
    }
    // Nothing bad was put in force.
    assert_eq!(
        rejected(&send(&s, T0, &order(6.0, 3900.0))),
        "order_size_limit: limit 5, value 6"
    );
    let cleared = manage(
        &s,
        &ops,
        serde_json::json!({"op": "clear", "account": ["a"]}),
    )
    .unwrap();
    assert_eq!(cleared["account"], serde_json::json!([]));
    assert_eq!(send(&s, T0, &order(60.0, 3900.0)), Verdict::Pass);
}

#[test]
fn a_reload_keeps_the_settings_that_need_a_restart_and_reports_them() {
    let s = stage(
        "trading_day_start_utc = \"01:00\"\n[[account]]\nname = \"a\"\norder_size_limit = 10\n",
    );
    let new: RiskConfig = tradeplex_ops::config::parse(
        "trading_day_start_utc = \"02:00\"\n[[account]]\nname = \"a\"\norder_size_limit = 3\n",
        "<t>",
    )
    .unwrap();
    assert_eq!(
        s.reload(T0, Some(&new)).unwrap(),
        vec!["trading_day_start_utc"]
    );
    assert_eq!(
        rejected(&send(&s, T0, &order(4.0, 3900.0))),
        "order_size_limit: limit 3, value 4"
    );
    // The same file again changes nothing (not even who last changed it).
    s.reload(T0 + 1, Some(&new)).unwrap();
    assert_eq!(s.shared.policy().changed_ms, T0);
    // No [risk] section: no rules.
    assert!(s
        .reload(T0, None)
        .unwrap()
        .contains(&"trading_day_start_utc"));
    assert_eq!(send(&s, T0, &order(400.0, 3900.0)), Verdict::Pass);
}
