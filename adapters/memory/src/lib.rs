//! Every Caracal port in memory: dev mode and fast tests.

pub mod bus;
pub use bus::MemoryBus;
