//! Which NVML device a CUDA ordinal is. CUDA numbers the GPUs `CUDA_VISIBLE_DEVICES` lists, in
//! its order; NVML numbers every GPU of the machine by PCI bus. So `cuda:N` is the N-th entry of
//! `CUDA_VISIBLE_DEVICES` (an NVML index, or a GPU UUID or unique UUID prefix), or NVML index N
//! when the variable is unset, as Zeus maps them. CUDA stops reading the list at the first entry
//! it cannot parse; so does this. (Without `CUDA_DEVICE_ORDER=PCI_BUS_ID` CUDA puts the fastest
//! GPU first; on a machine of one GPU model, both orders agree.)

use nvml_wrapper::Nvml;

/// A visible device as `CUDA_VISIBLE_DEVICES` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisibleDevice {
    /// An NVML (PCI-order) index.
    Index(u32),
    /// A GPU UUID (`GPU-…`) or a unique prefix of one.
    Uuid(String),
}

/// The device `cuda:ordinal` is, given the value of `CUDA_VISIBLE_DEVICES` (None: unset).
pub fn visible_device(env: Option<&str>, ordinal: usize) -> Result<VisibleDevice, String> {
    let Some(list) = env else { return Ok(VisibleDevice::Index(ordinal as u32)) };
    let mut visible = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if let Ok(i) = entry.parse::<u32>() {
            visible.push(VisibleDevice::Index(i));
        } else if entry.starts_with("GPU-") {
            visible.push(VisibleDevice::Uuid(entry.to_string()));
        } else if entry.starts_with("MIG-") {
            return Err(format!("CUDA_VISIBLE_DEVICES={list}: `{entry}` is a MIG instance, which has no energy counter of its own (NVML meters whole GPUs)"));
        } else {
            // CUDA ignores this entry and every one after it.
            break;
        }
    }
    visible.get(ordinal).cloned().ok_or_else(|| format!("cuda:{ordinal} is not visible: CUDA_VISIBLE_DEVICES={list} makes {} device(s) visible", visible.len()))
}

/// The NVML index of `cuda:ordinal` in this process (reading `CUDA_VISIBLE_DEVICES`).
pub fn index_of_cuda_ordinal(nvml: &Nvml, ordinal: usize) -> Result<u32, String> {
    let env = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    match visible_device(env.as_deref(), ordinal)? {
        VisibleDevice::Index(i) => Ok(i),
        VisibleDevice::Uuid(prefix) => {
            let count = nvml.device_count().map_err(|e| e.to_string())?;
            let matches: Vec<u32> = (0..count).filter(|&i| nvml.device_by_index(i).ok().and_then(|d| d.uuid().ok()).is_some_and(|u| u.starts_with(&prefix))).collect();
            match matches.as_slice() {
                [i] => Ok(*i),
                [] => Err(format!("no GPU has a UUID starting with {prefix} (CUDA_VISIBLE_DEVICES)")),
                _ => Err(format!("{prefix} (CUDA_VISIBLE_DEVICES) matches {} GPUs' UUIDs", matches.len())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_map_through_cuda_visible_devices_as_cuda_reads_it() {
        assert_eq!(visible_device(None, 3), Ok(VisibleDevice::Index(3)));
        assert_eq!(visible_device(Some("2,0"), 0), Ok(VisibleDevice::Index(2)));
        assert_eq!(visible_device(Some("2, 0"), 1), Ok(VisibleDevice::Index(0)));
        assert_eq!(visible_device(Some("GPU-8f3a,1"), 0), Ok(VisibleDevice::Uuid("GPU-8f3a".into())));
        // CUDA stops at the first entry it cannot parse.
        assert!(visible_device(Some("1,x,0"), 1).unwrap_err().contains("makes 1 device(s) visible"));
        assert!(visible_device(Some(""), 0).is_err());
        assert!(visible_device(Some("MIG-1234"), 0).unwrap_err().contains("MIG"));
    }
}
