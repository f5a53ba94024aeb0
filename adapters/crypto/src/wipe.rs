//! Best-effort erasure of key bytes held in local buffers.

/// Overwrites `bytes` with zeros once they are no longer needed, so a DEK or KEK copy does not
/// linger in freed stack or heap memory. `black_box` keeps the compiler from discarding the
/// writes as dead stores; without `unsafe` volatile writes this is best effort, and copies made
/// inside ring's expanded keys are outside our reach.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}
