//! The Security Token Service's domain (`spec/sts.md`): the token-exchange request, client
//! authentication, the exchange classes and their per-resource pipeline, mandate claims, zone
//! signing keys, and the evidence every decision leaves.

pub mod client_auth;
pub mod directive;
pub mod form;
pub mod gateway_sig;
pub mod keys;
pub mod references;
