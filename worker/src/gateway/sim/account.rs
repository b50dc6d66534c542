//! One simulated account's cash and holdings. The margin model: a holding ties up
//! `average price × volume × size × margin ratio`; cash moves only by realised profit and
//! loss when a holding is closed (no commission, no financing).

use std::collections::BTreeMap;

use tradeplex_proto::model::Direction;

use super::market::Instrument;

/// One holding: an instrument (its `symbol.EXCHANGE`) held long or short.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holding {
    /// Lots held.
    pub volume: f64,
    /// Lots reserved by active closing orders.
    pub frozen: f64,
    /// Average entry price.
    pub price: f64,
    /// Margin tied up: price × volume × size × margin ratio.
    pub margin: f64,
}

/// An account: cash (starting cash plus realised P&L) and holdings.
#[derive(Debug, Clone, PartialEq)]
pub struct Funds {
    /// Starting cash plus realised profit and loss.
    pub cash: f64,
    holdings: BTreeMap<(String, bool), Holding>,
}

fn key(symbol: &str, dir: Direction) -> (String, bool) {
    (symbol.to_string(), dir == Direction::Long)
}

impl Funds {
    /// An account with `cash` and nothing held.
    pub fn new(cash: f64) -> Funds {
        Funds {
            cash,
            holdings: BTreeMap::new(),
        }
    }

    /// The holding of `symbol` in `dir`, if there ever was one.
    pub fn holding(&self, symbol: &str, dir: Direction) -> Option<&Holding> {
        self.holdings.get(&key(symbol, dir))
    }

    /// Lots of `symbol` held in `dir` and not yet reserved by closing orders.
    pub fn closable(&self, symbol: &str, dir: Direction) -> f64 {
        self.holding(symbol, dir)
            .map_or(0.0, |h| (h.volume - h.frozen).max(0.0))
    }

    /// Reserves (`lots` > 0) or releases (`lots` < 0) lots of a holding for closing orders.
    pub fn reserve(&mut self, symbol: &str, dir: Direction, lots: f64) {
        if let Some(h) = self.holdings.get_mut(&key(symbol, dir)) {
            h.frozen = (h.frozen + lots).clamp(0.0, h.volume);
        }
    }

    /// Adds `lots` bought (`Long`) or sold short (`Short`) at `price`.
    pub fn open(&mut self, inst: &Instrument, symbol: &str, dir: Direction, price: f64, lots: f64) {
        let h = self.holdings.entry(key(symbol, dir)).or_default();
        h.price = (h.price * h.volume + price * lots) / (h.volume + lots);
        h.volume += lots;
        h.margin = inst.margin(h.price, h.volume);
    }

    /// Closes `lots` of the `dir` holding (reserved by the closing order) at `price`;
    /// the realised P&L goes to cash and is returned.
    pub fn close(
        &mut self,
        inst: &Instrument,
        symbol: &str,
        dir: Direction,
        price: f64,
        lots: f64,
    ) -> f64 {
        let Some(h) = self.holdings.get_mut(&key(symbol, dir)) else {
            return 0.0;
        };
        let lots = lots.min(h.volume);
        let per_lot = match dir {
            Direction::Short => h.price - price,
            // SIM keeps longs and shorts apart (never a net holding); a net one would be
            // long while positive, as in vn.py.
            Direction::Long | Direction::Net => price - h.price,
        };
        let pnl = per_lot * lots * inst.contract.size;
        h.volume -= lots;
        h.frozen = (h.frozen - lots).max(0.0);
        if h.volume <= 0.0 {
            *h = Holding::default();
        }
        h.margin = inst.margin(h.price, h.volume);
        self.cash += pnl;
        pnl
    }

    /// Margin tied up by every holding.
    pub fn position_margin(&self) -> f64 {
        self.holdings.values().map(|h| h.margin).sum()
    }

    /// Every holding: symbol, direction, holding.
    pub fn holdings(&self) -> impl Iterator<Item = (&str, Direction, &Holding)> {
        self.holdings.iter().map(|((s, long), h)| {
            let dir = if *long {
                Direction::Long
            } else {
                Direction::Short
            };
            (s.as_str(), dir, h)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::sim::config::SimConfig;

    fn inst() -> Instrument {
        let c = SimConfig::default();
        Instrument::new(&c.symbols[1], &c, "SIM") // rb2501: size 10, margin 0.1
    }

    #[test]
    fn opening_averages_and_closing_realises() {
        let i = inst();
        let mut f = Funds::new(100_000.0);
        f.open(&i, "rb2501", Direction::Long, 3500.0, 2.0);
        f.open(&i, "rb2501", Direction::Long, 3510.0, 2.0);
        let h = f.holding("rb2501", Direction::Long).unwrap().clone();
        assert_eq!((h.volume, h.price), (4.0, 3505.0));
        assert!((h.margin - 3505.0 * 4.0 * 10.0 * 0.1).abs() < 1e-9);
        f.reserve("rb2501", Direction::Long, 3.0);
        assert_eq!(f.closable("rb2501", Direction::Long), 1.0);
        let pnl = f.close(&i, "rb2501", Direction::Long, 3520.0, 3.0);
        assert!((pnl - 15.0 * 3.0 * 10.0).abs() < 1e-9);
        assert!((f.cash - 100_450.0).abs() < 1e-9);
        let h = f.holding("rb2501", Direction::Long).unwrap();
        assert_eq!((h.volume, h.frozen), (1.0, 0.0));
        f.close(&i, "rb2501", Direction::Long, 3490.0, 1.0);
        assert_eq!(
            f.holding("rb2501", Direction::Long).unwrap(),
            &Holding::default()
        );
        assert_eq!(f.position_margin(), 0.0);
    }

    #[test]
    fn a_short_gains_when_the_price_falls() {
        let i = inst();
        let mut f = Funds::new(0.0);
        f.open(&i, "rb2501", Direction::Short, 3500.0, 1.0);
        assert_eq!(f.close(&i, "rb2501", Direction::Short, 3490.0, 1.0), 100.0);
    }
}
