//! Weights on 2 MiB pages (Linux, CPU). A decode step streams every weight once; on 4 KiB pages
//! that is a new page every 4 KiB (15,000 for the stories15M shape's 61 MB, 1.2 million for the
//! Llama-3.2-1B shape's 4.9 GB), each a TLB miss. After loading, a CPU model's weights are put on
//! transparent huge pages: weights of at least [`IN_PLACE_BYTES`] where they are
//! (`MADV_HUGEPAGE`, then `MADV_COLLAPSE`, which moves their pages onto huge pages at once), and
//! the smaller ones, which no huge page would fit inside, copied into one allocation (an arena)
//! advised before it is first written, each becoming a view of the same shape into it. Only f32
//! weights: the products that stream them are exitbench's own kernels, and candle's f32 gemm
//! reads a view in place. candle's bf16 matmul on the CPU widens its operands' whole storage to
//! f32 on every call, so an arena made the embedded model's bf16 decode 32× slower (2.8 → 88
//! ms/token), and its f16 decode was 1.4× slower on views.
//! Values, and so every result, are unchanged; only the pages under them change. Where the
//! kernel declines (THP `never`, no free huge pages, not Linux) the weights stay on ordinary
//! pages, and the record says how much is on huge pages, as `/proc/self/smaps` reports it
//! ([`HugePageShare`]). docs/performance.md has the figures that motivated it.

use super::matvec::with_slice_of;
use crate::error::Result;
use crate::runtime_info::HugePageShare;
use candle_core::{DType, Device, Tensor, WithDType};

/// The size of a transparent huge page on x86-64 (and most arm64 kernels).
pub const HUGE_PAGE: usize = 2 << 20;

/// Every weight's place in an arena starts at a multiple of this many bytes (a cache line).
const ALIGN: usize = 64;

/// Weights at least this large stay where they are, and the 2 MiB pages inside them are
/// collapsed in place (no copy; at most one partial huge page at each end stays small).
pub const IN_PLACE_BYTES: usize = 16 << 20;

/// Puts the f32 CPU tensors of `weights` on huge pages: smaller ones are moved into one arena and
/// replaced by views of the same shape and values (clones of one tensor, such as a tied
/// LM head and its embedding, stay one view); ones of at least [`IN_PLACE_BYTES`] are collapsed
/// where they are. Tensors on other devices, of other dtypes (see the module header), or that are
/// training variables (whose storage the optimizer updates and whose identity the gradients
/// follow) are left alone.
/// Says how much of the weights ended on huge pages.
pub fn gather_onto_huge_pages(mut weights: Vec<&mut Tensor>) -> Result<HugePageShare> {
    // Every CPU weight counts towards the total, whatever its dtype (clones once).
    let mut ids = std::collections::HashSet::new();
    let bytes: usize = weights.iter().filter(|t| t.device().is_cpu() && ids.insert(t.id())).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
    let mut ranges = Vec::new();
    let picked: Vec<usize> = (0..weights.len()).filter(|&i| weights[i].device().is_cpu() && weights[i].dtype() == DType::F32 && !weights[i].is_variable()).collect();
    gather::<f32>(&mut weights, &picked, &mut ranges)?;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    Ok(HugePageShare { backed_mib: mib(huge_bytes_within(&ranges)), weights_mib: mib(bytes) })
}

/// [`gather_onto_huge_pages`] for the tensors `picked` of `weights`, all of dtype `T` on the
/// CPU: the ranges it advised are added to `ranges`.
fn gather<T: WithDType>(weights: &mut [&mut Tensor], picked: &[usize], ranges: &mut Vec<(usize, usize)>) -> Result<()> {
    // A clone of an earlier tensor (the same candle tensor) ends as a clone of that one's view.
    let alias: Vec<Option<usize>> = picked.iter().enumerate().map(|(k, &i)| picked[..k].iter().copied().find(|&j| weights[j].id() == weights[i].id())).collect();
    let size = std::mem::size_of::<T>();
    // The large ones in place; the others' places in the arena.
    let step = ALIGN / size;
    let mut offsets = vec![None; picked.len()];
    let mut total = 0usize;
    for (k, &i) in picked.iter().enumerate().filter(|(k, _)| alias[*k].is_none()) {
        let n = weights[i].elem_count();
        // In place only where the tensor's values are its own contiguous range (a strided one
        // would be read through a copy).
        if n * size >= IN_PLACE_BYTES && weights[i].is_contiguous() {
            let (addr, len) = with_slice_of::<T, _>(weights[i], |s| (s.as_ptr() as usize, std::mem::size_of_val(s)))?;
            let (start, len) = aligned_interior(addr, len);
            advise_huge_pages(start, len);
            collapse(start, len);
            ranges.push((start, len));
        } else {
            offsets[k] = Some(total);
            total = (total + n).div_ceil(step) * step;
        }
    }
    if total == 0 {
        return Ok(());
    }
    let mut arena: Vec<T> = Vec::with_capacity(total);
    let (start, len) = aligned_interior(arena.as_ptr() as usize, total * size);
    advise_huge_pages(start, len);
    // Copied in order, each original released once copied (a placeholder holds its place until
    // the views exist), so memory stays near one copy of the weights.
    let mut shapes = vec![None; picked.len()];
    for (k, &i) in picked.iter().enumerate() {
        let Some(at) = offsets[k] else { continue };
        arena.resize(at, T::from_f64(0.0));
        with_slice_of::<T, _>(&weights[i].contiguous()?, |s| arena.extend_from_slice(s))?;
        let w = std::mem::replace(&mut *weights[i], Tensor::zeros((), T::DTYPE, &Device::Cpu)?);
        shapes[k] = Some(w.shape().clone());
    }
    arena.resize(total, T::from_f64(0.0));
    collapse(start, len);
    ranges.push((start, len));
    let arena = Tensor::from_vec(arena, total, &Device::Cpu)?;
    for (k, &i) in picked.iter().enumerate() {
        if let (Some(at), Some(shape)) = (offsets[k], &shapes[k]) {
            *weights[i] = arena.narrow(0, at, shape.elem_count())?.reshape(shape.clone())?;
        }
    }
    for (k, &i) in picked.iter().enumerate() {
        if let Some(j) = alias[k] {
            *weights[i] = weights[j].clone();
        }
    }
    Ok(())
}

/// The 2 MiB-aligned interior of `[addr, addr + bytes)`: its start and length (0 when it holds
/// no whole huge page).
pub fn aligned_interior(addr: usize, bytes: usize) -> (usize, usize) {
    let start = addr.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let end = (addr + bytes) / HUGE_PAGE * HUGE_PAGE;
    (start, end.saturating_sub(start))
}

/// `MADV_HUGEPAGE` over `[start, start + len)`: pages first touched after it may be huge.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, len: usize) {
    if len > 0 {
        // SAFETY: the range lies inside one live allocation of the caller's; the advice changes
        // which physical pages will hold it, never its contents.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
}

/// `MADV_COLLAPSE` (Linux 6.1) over `[start, start + len)`: moves the pages left small onto huge
/// pages now. A hint; failure leaves them as they are.
#[cfg(target_os = "linux")]
fn collapse(start: usize, len: usize) {
    /// Not in every version of the libc crate.
    const MADV_COLLAPSE: libc::c_int = 25;
    if len > 0 {
        // SAFETY: as in `advise_huge_pages`; the contents are kept.
        unsafe { libc::madvise(start as *mut libc::c_void, len, MADV_COLLAPSE) };
    }
}

/// Bytes of the ranges on huge pages, from `/proc/self/smaps` (the mappings inside a range,
/// whose bounds the advice made the range's own); 0 when it cannot be read.
#[cfg(target_os = "linux")]
pub fn huge_bytes_within(ranges: &[(usize, usize)]) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut inside = false;
    let mut kib = 0usize;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = head.split_once('-').filter(|_| !head.ends_with(':')) {
            let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap_or(0), usize::from_str_radix(hi, 16).unwrap_or(0));
            inside = ranges.iter().any(|&(start, len)| len > 0 && lo >= start && hi <= start + len);
        } else if let Some(v) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
            kib += v.trim().trim_end_matches("kB").trim().parse::<usize>().unwrap_or(0);
        }
    }
    (kib * 1024).min(ranges.iter().map(|r| r.1).sum())
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _len: usize) {}

#[cfg(not(target_os = "linux"))]
fn collapse(_start: usize, _len: usize) {}

/// Not Linux: none are known to be.
#[cfg(not(target_os = "linux"))]
pub fn huge_bytes_within(_ranges: &[(usize, usize)]) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interior_holds_only_whole_huge_pages() {
        assert_eq!(aligned_interior(0, HUGE_PAGE), (0, HUGE_PAGE));
        assert_eq!(aligned_interior(16, HUGE_PAGE), (HUGE_PAGE, 0));
        assert_eq!(aligned_interior(16, 3 * HUGE_PAGE), (HUGE_PAGE, 2 * HUGE_PAGE));
        assert_eq!(aligned_interior(HUGE_PAGE - 1, HUGE_PAGE + 1), (HUGE_PAGE, HUGE_PAGE));
        assert_eq!(aligned_interior(4096, 100), (HUGE_PAGE, 0));
    }

    fn seeded(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) as f32 * 1e-9).collect()
    }

    /// Small weights gathered into the arena keep their shapes, values and sharing and become
    /// views into one storage; a large one stays where it is; and (where THP is not `never`)
    /// both sit on huge pages as smaps reports them.
    #[test]
    fn gathered_weights_keep_their_values_and_sit_on_huge_pages() {
        let cpu = Device::Cpu;
        let a = Tensor::from_vec(seeded(1 << 20, 1), (1024, 1024), &cpu).unwrap();
        let b = Tensor::from_vec(seeded(333 * 7, 2), (333, 7), &cpu).unwrap();
        let c = Tensor::from_vec(seeded(3 << 20, 3), (3 << 10, 1 << 10), &cpu).unwrap();
        let d = Tensor::from_vec(seeded(9 << 19, 4), (9 << 9, 1 << 10), &cpu).unwrap();
        let h = Tensor::from_vec(seeded(5, 5), 5, &cpu).unwrap().to_dtype(DType::F16).unwrap();
        let before: Vec<Vec<f32>> = [&a, &b, &c, &d].iter().map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        let (mut a2, mut b2, mut c2, mut d2, mut tied, mut h2) = (a.clone(), b.clone(), c.clone(), d.clone(), a.clone(), h.clone());
        let d_id = d.id();
        let var = candle_core::Var::from_tensor(&b).unwrap();
        let mut trained = var.as_tensor().clone();
        drop((a, b, c, d));
        let share = gather_onto_huge_pages(vec![&mut a2, &mut b2, &mut tied, &mut c2, &mut d2, &mut h2, &mut trained]).unwrap();
        assert_eq!(trained.id(), var.as_tensor().id(), "a training variable is left alone");
        for (t, v) in [&a2, &b2, &c2, &d2].iter().zip(&before) {
            assert_eq!(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
        }
        assert_eq!((a2.dims(), b2.dims(), c2.dims()), (&[1024, 1024][..], &[333, 7][..], &[3 << 10, 1 << 10][..]));
        let base = |t: &Tensor| t.storage_and_layout().1.start_offset();
        assert_eq!((base(&a2), base(&b2), base(&c2)), (0, 1 << 20, (1 << 20) + (333 * 7usize).div_ceil(16) * 16), "one arena, in order, 64-byte aligned");
        assert_eq!(tied.id(), a2.id(), "the tied copy stays the same view");
        assert_eq!(d2.id(), d_id, "a weight of 18 MiB stays where it is");
        assert_eq!(h2.id(), h.id(), "an f16 weight is left alone");
        assert_eq!(h2.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap());
        // Every weight counts, the f16 one and the training variable included (the tied clone once).
        let bytes = (4 << 20) + 333 * 7 * 4 + (12 << 20) + (18 << 20) + 5 * 2 + 333 * 7 * 4;
        assert_eq!(share.weights_mib, bytes as f64 / (1 << 20) as f64);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if cfg!(target_os = "linux") && thp.contains('[') && !thp.contains("[never]") {
            // The arena (16 MiB) and the 18 MiB weight each lose at most a partial huge page at
            // each end.
            assert!(share.backed_mib >= 30.0, "{share:?}");
        } else {
            assert_eq!(share.backed_mib, 0.0, "{share:?}");
        }
    }
}
