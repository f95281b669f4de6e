//! The demo city.
