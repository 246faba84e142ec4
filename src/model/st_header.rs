//! A safetensors file's header, checked before the file is mapped: the 8-byte length within the
//! file and below [`MAX_HEADER_BYTES`] (nothing is allocated from an unchecked length), JSON
//! that is an object, no tensor named twice (a JSON map keeps the last silently), float dtypes
//! only where a model reads floats, and data offsets inside the file.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The largest header accepted (safetensors' own limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Dtypes a weight may be stored in: anything else (I32, U8, BOOL...) would be converted into a
/// different model without a word.
pub const FLOAT_DTYPES: [&str; 4] = ["F16", "BF16", "F32", "F64"];

/// Reads and checks the header of `path` (see the module doc); errors name the file.
pub fn check_file(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    if len < 8 || f.read_exact(&mut n).is_err() {
        return Err(Error::file(path, None, format!("not a valid safetensors file: {len} bytes, shorter than the 8-byte header length")));
    }
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > len - 8 {
        return Err(Error::file(path, None, format!("not a valid safetensors file: the header length {n} exceeds the file ({len} bytes) or the limit {MAX_HEADER_BYTES}")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    check_header(&header, len - 8 - n).map_err(|m| Error::file(path, None, format!("not a valid safetensors file: {m}")))
}

/// Checks header bytes (without the length prefix) against a data section of `data_len` bytes;
/// the error is a plain message naming the tensor at fault.
pub fn check_header(header: &[u8], data_len: u64) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(header).map_err(|e| format!("the header is not UTF-8: {e}"))?;
    let entries: Entries = serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| format!("malformed header JSON: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for (name, v) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` is listed twice in the header"));
        }
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
        let shape = v.get("shape").and_then(|s| s.as_array()).ok_or_else(|| format!("tensor `{name}` has no shape"))?;
        if shape.iter().any(|d| d.as_u64().is_none()) {
            return Err(format!("tensor `{name}` has a shape that is not a list of whole numbers"));
        }
        let offsets: Vec<u64> = v.get("data_offsets").and_then(|o| o.as_array()).map(|o| o.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default();
        match offsets.as_slice() {
            [a, b] if a <= b && *b <= data_len => {}
            _ => return Err(format!("tensor `{name}` has data_offsets outside the file's {data_len} data bytes")),
        }
        if dtype.is_empty() {
            return Err(format!("tensor `{name}` has an empty dtype"));
        }
    }
    Ok(())
}

/// A float dtype check for one tensor read as a model weight.
pub fn check_float(path: &Path, name: &str, dtype: safetensors::Dtype) -> Result<()> {
    let d = format!("{dtype:?}");
    if FLOAT_DTYPES.contains(&d.as_str()) {
        Ok(())
    } else {
        Err(Error::file(path, None, format!("tensor `{name}` is stored as {d}; a weight must be a float ({})", FLOAT_DTYPES.join(", "))))
    }
}

/// A JSON object's entries in file order, duplicates kept (serde maps keep only the last).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(e);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_offsets_and_junk_are_named() {
        let ok = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(check_header(ok, 4).is_ok());
        let dup = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(check_header(dup, 4).unwrap_err().contains("`a` is listed twice"));
        assert!(check_header(ok, 3).unwrap_err().contains("data_offsets"));
        assert!(check_header(b"[1]", 0).is_err());
        assert!(check_header(b"\xff", 0).is_err());
    }
}
