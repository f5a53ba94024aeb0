//! Every Caracal port in memory: dev mode and fast tests.
