//! Trading data model (filled in by the trading layer).
