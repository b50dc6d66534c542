//! The simulated order book of one tick (5 levels a side, prices in priceticks) and the
//! matching of an incoming order against it. Liquidity this worker's orders take from a
//! tick's book is remembered in [`Taken`] until the next tick replaces the book.

use tradeplex_proto::model::Direction;

/// Levels a side.
pub const LEVELS: usize = 5;

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
        dir: Direction,
    ) -> (&'a [i64; LEVELS], &'a [f64; LEVELS], &'a [f64; LEVELS]) {
        match dir {
            Direction::Long => (&self.ask, &self.ask_volume, &taken.ask),
            Direction::Short => (&self.bid, &self.bid_volume, &taken.bid),
        }
    }

    /// Whether a `dir` order at `limit` may trade at `price` (no limit: any price).
    fn acceptable(dir: Direction, limit: Option<i64>, price: i64) -> bool {
        match (limit, dir) {
            (None, _) => true,
            (Some(l), Direction::Long) => price <= l,
            (Some(l), Direction::Short) => price >= l,
        }
    }

    /// The volume an order in `dir` could take now at `limit` or better.
    pub fn available(&self, taken: &Taken, dir: Direction, limit: Option<i64>) -> f64 {
        let (prices, volumes, took) = self.side(taken, dir);
        (0..LEVELS)
            .take_while(|&i| Book::acceptable(dir, limit, prices[i]))
            .map(|i| (volumes[i] - took[i]).max(0.0))
            .sum()
    }

    /// Takes up to `volume` lots for an order in `dir`, best level first, at `limit` or
    /// better, recording what it took in `taken`. Returns the fills (possibly none).
    pub fn take(
        &self,
        taken: &mut Taken,
        dir: Direction,
        limit: Option<i64>,
        volume: f64,
    ) -> Vec<Fill> {
        let (prices, volumes) = match dir {
            Direction::Long => (&self.ask, &self.ask_volume),
            Direction::Short => (&self.bid, &self.bid_volume),
        };
        let took = match dir {
            Direction::Long => &mut taken.ask,
            Direction::Short => &mut taken.bid,
        };
        let mut left = volume;
        let mut fills = Vec::new();
        for i in 0..LEVELS {
            if left <= 0.0 || !Book::acceptable(dir, limit, prices[i]) {
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
    pub fn best_and_worst(&self, dir: Direction) -> (i64, i64) {
        match dir {
            Direction::Long => (self.ask[0], self.ask[LEVELS - 1]),
            Direction::Short => (self.bid[0], self.bid[LEVELS - 1]),
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
    fn a_buy_sweeps_asks_up_to_its_limit() {
        let b = book();
        let mut t = Taken::default();
        assert_eq!(b.available(&t, Direction::Long, Some(101)), 4.0);
        let fills = b.take(&mut t, Direction::Long, Some(101), 5.0);
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
        assert_eq!(b.available(&t, Direction::Long, Some(101)), 0.0);
        let fills = b.take(&mut t, Direction::Long, None, 1.0);
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
        assert!(b.take(&mut t, Direction::Short, Some(100), 1.0).is_empty());
        let fills = b.take(&mut t, Direction::Short, Some(98), 10.0);
        assert_eq!(fills.iter().map(|f| f.volume).sum::<f64>(), 3.0);
        assert_eq!(fills[0].price, 99);
        assert_eq!(b.available(&t, Direction::Short, None), 12.0);
        assert_eq!(b.best_and_worst(Direction::Short), (99, 95));
    }
}
