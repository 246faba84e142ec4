//! De-duplication that keeps the first of each value: a grid must not hold one cell twice.

/// Drops repeated values, keeping the first of each (a grid must not hold one cell twice).
pub fn dedup_keep_order<T: PartialEq + Clone>(v: Vec<T>) -> Vec<T> {
    dedup_by_key(v, T::clone)
}

/// Drops values whose `key` was seen before, keeping the first of each.
pub fn dedup_by_key<T, K: PartialEq>(v: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen: Vec<K> = Vec::with_capacity(v.len());
    v.into_iter()
        .filter(|x| {
            let k = key(x);
            let fresh = !seen.contains(&k);
            if fresh {
                seen.push(k);
            }
            fresh
        })
        .collect()
}
