//! The bandwidth floor of a scan: reading the same floats once, doing almost nothing with
//! them. Shared by `reembed-bench` and the Criterion micro-benchmarks (`bench/benches/micro.rs`).

/// Reads every float once; eight independent sums so the loop is bound by memory, not by
/// the latency of one chain of additions.
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}
