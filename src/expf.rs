//! `e^x` over slices of f32 with the bits of `f32::exp`, eight values at a time.
//!
//! The host decode path calls `exp` for every SiLU input (the MLP width per layer), every
//! attention score and, in an exit check's summary, every logit of the vocabulary. `f32::exp` is
//! glibc's `expf`, one call per value. glibc's `expf` (since 2.28, from ARM's
//! optimized-routines) is a handful of double-precision operations: `x·N/ln 2` rounded to an
//! integer k by adding a shift constant, a table of 2^(i/32), and a cubic in the remainder; on
//! CPUs with FMA its `__expf_fma` build fuses four of them. [`exp_in_place`] runs exactly those
//! operations, in that order and fused the same way, on four doubles per AVX2 register, so every
//! result is the float glibc returns. Inputs outside the fast path (|x| ≳ 88, infinities, NaN)
//! are handed to `f32::exp` itself.
//!
//! The kernel is used only where a self-check at first use agrees with `f32::exp` on a few
//! thousand values spanning the fast path's range (a libm whose `expf` is built otherwise,
//! e.g. musl's or macOS's, makes the check fail and every call stays scalar). The unit test
//! `every_fast_path_input_has_expfs_bits` compares all 2.1 billion fast-path inputs.

/// e^x of every value of `xs`, in place, with the bits of `f32::exp`.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_agrees() {
            // SAFETY: `simd_agrees` is true only where the CPU has AVX2 and FMA.
            unsafe { avx2::exp_in_place(xs) };
            return;
        }
    }
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// Whether the AVX2 kernel may run: the CPU has AVX2 and FMA, and the kernel gives `f32::exp`'s
/// bits on a spread of inputs (checked once per process).
#[cfg(target_arch = "x86_64")]
fn simd_agrees() -> bool {
    static AGREES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AGREES.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma")) {
            return false;
        }
        let probe: Vec<f32> = (0..4096).map(|i| -104.0 + 193.0 * i as f32 / 4095.0).chain([0.0, -0.0, 1e-30, -1e-30, 88.0, -87.5]).collect();
        let mut got = probe.clone();
        // SAFETY: AVX2 and FMA were checked above.
        unsafe { avx2::exp_in_place(&mut got) };
        probe.iter().zip(&got).all(|(x, y)| x.exp().to_bits() == y.to_bits())
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// glibc's `__exp2f_data`: 2^(i/32) as bits, less i << 47 (see the module header).
    const TABLE: [u64; 32] = [
        0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
        0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13, 0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
        0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
    ];
    /// 32 / ln 2.
    const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
    /// 1.5 · 2^52: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = f64::from_bits(0x4338000000000000);
    /// The cubic's coefficients, scaled for the 32-entry table (glibc's `poly_scaled`).
    const C: [f64; 3] = [f64::from_bits(0x3ebc6af84b912394), f64::from_bits(0x3f2ebfce50fac4f3), f64::from_bits(0x3f962e42ff0c52d6)];
    /// The largest `(bits >> 20) & 0x7ff` of an input on the fast path (|x| < 88).
    const FAST_TOP: i32 = 0x42a;

    /// [`super::exp_in_place`] on AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let x = _mm256_loadu_ps(c.as_ptr());
            let top = _mm256_and_si256(_mm256_srli_epi32::<20>(_mm256_castps_si256(x)), _mm256_set1_epi32(0x7ff));
            let slow = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(FAST_TOP))));
            let y = _mm256_set_m128(four(_mm256_extractf128_ps::<1>(x)), four(_mm256_castps256_ps128(x)));
            let before: [f32; 8] = std::array::from_fn(|i| c[i]);
            _mm256_storeu_ps(c.as_mut_ptr(), y);
            if slow != 0 {
                for (i, v) in c.iter_mut().enumerate().filter(|(i, _)| slow >> i & 1 == 1) {
                    *v = before[i].exp();
                }
            }
        }
        chunks.into_remainder().iter_mut().for_each(|x| *x = x.exp());
    }

    /// glibc's fast path on four values, operation for operation (`__expf_fma`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn four(x: __m128) -> __m128 {
        let xd = _mm256_cvtps_pd(x);
        let inv = _mm256_set1_pd(INV_LN2_N);
        let shift = _mm256_set1_pd(SHIFT);
        // kd = round(x·N/ln2) through the shift (fused), ki its bits.
        let shifted = _mm256_fmadd_pd(inv, xd, shift);
        let ki = _mm256_castpd_si256(shifted);
        let kd = _mm256_sub_pd(shifted, shift);
        let r = _mm256_fmsub_pd(inv, xd, kd);
        // s = 2^(k/N): the table entry of k mod N plus k in the exponent bits.
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, idx);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        // y = s · (C0 r³ + C1 r² + C2 r + 1), grouped as glibc's.
        let z = _mm256_fmadd_pd(_mm256_set1_pd(C[0]), r, _mm256_set1_pd(C[1]));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C[2]), _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_agree(xs: &[f32]) -> Option<(f32, f32, f32)> {
        let mut got = xs.to_vec();
        exp_in_place(&mut got);
        xs.iter().zip(&got).find(|(x, y)| x.exp().to_bits() != y.to_bits()).map(|(x, y)| (*x, x.exp(), *y))
    }

    /// Every input whose `expf` takes glibc's fast path (|x| < 88: 2.1 billion floats), plus
    /// the slow-path inputs around it, against `f32::exp`, bit for bit.
    #[test]
    fn every_fast_path_input_has_expfs_bits() {
        #[cfg(target_arch = "x86_64")]
        assert!(simd_agrees() || !std::arch::is_x86_feature_detected!("fma"), "the kernel disagrees with this libm's expf on the self-check");
        use rayon::prelude::*;
        // Both signs of every bit pattern whose top 12 bits (sign cleared) are ≤ 0x42a, and the
        // first 2^16 patterns past them.
        let limit = (0x42bu32 << 20) + (1 << 16);
        let blocks = limit.div_ceil(1 << 20);
        let bad = (0..blocks * 2).into_par_iter().find_map_any(|b| {
            let (sign, from) = ((b % 2) << 31, (b / 2) << 20);
            let xs: Vec<f32> = (from..(from + (1 << 20)).min(limit)).map(|u| f32::from_bits(u | sign)).collect();
            bits_agree(&xs)
        });
        assert_eq!(bad, None, "input, f32::exp, exp_in_place");
    }

    #[test]
    fn slow_path_values_and_tails_take_f32_exp() {
        let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 88.8, 89.0, -104.0, -150.0, 1e30, -1e30, 0.5, 3.0];
        assert_eq!(bits_agree(&xs), None);
        for n in 0..20 {
            assert_eq!(bits_agree(&(0..n).map(|i| i as f32 * -7.3).collect::<Vec<_>>()), None, "length {n}");
        }
    }
}
