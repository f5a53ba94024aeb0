//! Redis adapter (deadpool-redis): event bus on Redis Streams.
