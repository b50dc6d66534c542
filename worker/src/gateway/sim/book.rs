//! The simulated order book of one tick (5 levels a side, prices in priceticks) and the
//! matching of an incoming order against it. Liquidity this worker's orders take from a
//! tick's book is remembered in [`Taken`] until the next tick replaces the book.

use tradeplex_proto::model::Direction;

/// Levels a side.
pub const LEVELS: usize = 5;

/// The side of an order: what it takes from the book and which holding it opens or closes.
/// [`Direction::Net`] is a position's direction, never an order's, so it has no side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A buy (`long`): takes asks, opens longs, closes shorts.
    Buy,
    /// A sell (`short`): takes bids, opens shorts, closes longs.
    Sell,
}

impl Side {
    /// The side of an order in `dir`; `None` for `net`.
    pub fn of(dir: Direction) -> Option<Side> {
        match dir {
            Direction::Long => Some(Side::Buy),
            Direction::Short => Some(Side::Sell),
            Direction::Net => None,
        }
    }

    /// The holding its fills add to.
    pub fn opens(self) -> Direction {
        match self {
            Side::Buy => Direction::Long,
            Side::Sell => Direction::Short,
        }
    }

    /// The holding its fills close.
    pub fn closes(self) -> Direction {
        match self {
            Side::Buy => Direction::Short,
            Side::Sell => Direction::Long,
        }
    }
}

/// A 5-level book; prices are integer priceticks, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Book {
    /// Bid prices, best (highest) first.
    pub bid: [i64; LEVELS],
    /// Bid volumes, lots.
    pub bid_volume: [f64; LEVELS],
    /// Ask prices, best (lowest) first.
    pub ask: [i64; LEVELS],
    /// Ask volumes, lots.
    pub ask_volume: [f64; LEVELS],
}

/// Volume taken from each level of the current book by this worker's orders.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Taken {
    bid: [f64; LEVELS],
    ask: [f64; LEVELS],
}

/// One fill: price in priceticks, volume in lots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fill {
    /// Price, priceticks.
    pub price: i64,
    /// Volume, lots.
    pub volume: f64,
}

impl Book {
    /// The side an order in `dir` trades against: (prices, volumes, taken) — a buy takes
    /// the asks, a sell the bids.
    fn side<'a>(
        &'a self,
        taken: &'a Taken,
        side: Side,
    ) -> (&'a [i64; LEVELS], &'a [f64; LEVELS], &'a [f64; LEVELS]) {
        match side {
            Side::Buy => (&self.ask, &self.ask_volume, &taken.ask),
            Side::Sell => (&self.bid, &self.bid_volume, &taken.bid),
        }
    }

    /// Whether a `dir` order at `limit` may trade at `price` (no limit: any price).
    fn acceptable(side: Side, limit: Option<i64>, price: i64) -> bool {
        match (limit, side) {
            (None, _) => true,
            (Some(l), Side::Buy) => price <= l,
            (Some(l), Side::Sell) => price >= l,
        }
    }

    /// The volume an order in `dir` could take now at `limit` or better.
    pub fn available(&self, taken: &Taken, side: Side, limit: Option<i64>) -> f64 {
        let (prices, volumes, took) = self.side(taken, side);
        (0..LEVELS)
            .take_while(|&i| Book::acceptable(side, limit, prices[i]))
            .map(|i| (volumes[i] - took[i]).max(0.0))
            .sum()
    }

    /// Takes up to `volume` lots for an order in `dir`, best level first, at `limit` or
    /// better, recording what it took in `taken`. Returns the fills (possibly none).
    pub fn take(
        &self,
        taken: &mut Taken,
        side: Side,
        limit: Option<i64>,
        volume: f64,
    ) -> Vec<Fill> {
        let (prices, volumes) = match side {
            Side::Buy => (&self.ask, &self.ask_volume),
            Side::Sell => (&self.bid, &self.bid_volume),
        };
        let took = match side {
            Side::Buy => &mut taken.ask,
            Side::Sell => &mut taken.bid,
        };
        let mut left = volume;
        let mut fills = Vec::new();
        for i in 0..LEVELS {
            if left <= 0.0 || !Book::acceptable(side, limit, prices[i]) {
                break;
            }
            let here = (volumes[i] - took[i]).max(0.0).min(left);
            if here > 0.0 {
                took[i] += here;
                left -= here;
                fills.push(Fill {
                    price: prices[i],
                    volume: here,
                });
            }
        }
        fills
    }

    /// The best price an order in `dir` could trade at, and the worst visible one.
    pub fn best_and_worst(&self, side: Side) -> (i64, i64) {
        match side {
            Side::Buy => (self.ask[0], self.ask[LEVELS - 1]),
            Side::Sell => (self.bid[0], self.bid[LEVELS - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        Book {
            bid: [99, 98, 97, 96, 95],
            bid_volume: [1.0, 2.0, 3.0, 4.0, 5.0],
            ask: [100, 101, 102, 103, 104],
            ask_volume: [2.0, 2.0, 2.0, 2.0, 2.0],
        }
    }

    #[test]
    fn orders_have_a_side_positions_may_be_net() {
        assert_eq!(Side::of(Direction::Long), Some(Side::Buy));
        assert_eq!(Side::Sell.closes(), Direction::Long);
        assert_eq!(Side::Buy.opens(), Direction::Long);
        assert_eq!(Side::of(Direction::Net), None);
    }

    #[test]
    fn a_buy_sweeps_asks_up_to_its_limit() {
        let b = book();
        let mut t = Taken::default();
        assert_eq!(b.available(&t, Side::Buy, Some(101)), 4.0);
        let fills = b.take(&mut t, Side::Buy, Some(101), 5.0);
        assert_eq!(
            fills,
            vec![
                Fill {
                    price: 100,
                    volume: 2.0
                },
                Fill {
                    price: 101,
                    volume: 2.0
                }
            ]
        );
        // What we took stays taken for the rest of this tick.
        assert_eq!(b.available(&t, Side::Buy, Some(101)), 0.0);
        let fills = b.take(&mut t, Side::Buy, None, 1.0);
        assert_eq!(
            fills,
            vec![Fill {
                price: 102,
                volume: 1.0
            }]
        );
    }

    #[test]
    fn a_sell_takes_bids_at_or_above_its_limit() {
        let b = book();
        let mut t = Taken::default();
        assert!(b.take(&mut t, Side::Sell, Some(100), 1.0).is_empty());
        let fills = b.take(&mut t, Side::Sell, Some(98), 10.0);
        assert_eq!(fills.iter().map(|f| f.volume).sum::<f64>(), 3.0);
        assert_eq!(fills[0].price, 99);
        assert_eq!(b.available(&t, Side::Sell, None), 12.0);
        assert_eq!(b.best_and_worst(Side::Sell), (99, 95));
    }
}
