//! Lowercase hex encoding of hashes (weights, datasets, machine ids, exports): a leaf used by the
//! model, backend, hardware and sweep modules alike.

/// Encodes bytes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
