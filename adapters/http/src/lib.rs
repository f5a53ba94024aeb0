//! Shared actix-web pieces: error mapping, request ids, body limits, health/ready/metrics.
