// ProductPeak: the ceiling model FLOPs utilisation is quoted against — the measured rate of the
// matrix products of the precision that runs, on all of a rank's cores — and MFU itself,
// which is refused when it would exceed that ceiling (a figure above 100% means the peak is wrong).

import Dispatch

public enum ProductPeak {
    /// GFLOP/s of square n×n×n products at `precision` on `threads` cores, best of `repeats`:
    /// OpenBLAS sgemm on `threads` BLAS threads (fp32), or one bf16 product per core at once
    /// (the kernel's rate on every core: products split among cores share it, never exceed it).
    /// OpenBLAS's process-wide thread count is left as it was found.
    public static func measure(_ precision: Precision, threads: Int, size n: Int = 1024, repeats: Int = 6) -> Double {
        switch precision {
        case .fp32:
            let before = BLAS.threads
            defer { BLAS.setThreads(before) }
            BLAS.setThreads(threads)
            return BLAS.measureSgemmGFLOPS(size: n, repeats: repeats)
        case .bf16:
            let a = [Float](repeating: 0.5, count: n * n), b = [Float](repeating: 0.25, count: n * n)
            let products = (0..<threads).map { _ in BF16Products() }
            let outputs = (0..<threads).map { _ in UnsafeMutableBufferPointer<Float>.allocate(capacity: n * n) }
            defer { outputs.forEach { $0.deallocate() } }
            var best = Double.infinity
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                DispatchQueue.concurrentPerform(iterations: threads) { i in
                    products[i].product(false, false, m: n, n: n, k: n, alpha: 1, a, lda: n, b, ldb: n, beta: 0,
                                        outputs[i].baseAddress!, ldc: n)
                }
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            return Double(threads) * 2 * Double(n * n * n) / best / 1e9
        }
    }

    /// Model FLOPs utilisation: the model's FLOP rate over the peak, or nil where there is no
    /// peak or the rate exceeds it — no product runs faster than its measured ceiling, so such
    /// a figure could only come from a wrong peak and is never printed.
    public static func utilization(modelGFLOPS: Double, peakGFLOPS: Double) -> Double? {
        guard peakGFLOPS > 0, modelGFLOPS.isFinite else { return nil }
        let share = modelGFLOPS / peakGFLOPS
        return share <= 1 ? share : nil
    }

    /// "MFU 42.0%", or "MFU n/a" where `utilization` refused a figure.
    public static func describe(_ utilization: Double?) -> String {
        utilization.map { "MFU \(Double(Int(($0 * 1000).rounded())) / 10)%" } ?? "MFU n/a"
    }
}
