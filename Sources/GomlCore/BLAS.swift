// BLAS: process-wide OpenBLAS settings and a measurement of its sgemm rate (the ceiling
// model FLOPs utilisation is quoted against).

import CBLAS
import Foundation
import Dispatch

public enum BLAS {
    /// OpenBLAS's thread count is process-wide, and changing it while another thread calls
    /// into OpenBLAS (ranks as threads in the tests) corrupts its buffers: calls are serialized,
    /// and a count already in force is left alone.
    public static func setThreads(_ n: Int) {
        threadsLock.lock()
        defer { threadsLock.unlock() }
        if Int(openblas_get_num_threads()) != n { openblas_set_num_threads(Int32(n)) }
    }
    private static let threadsLock = NSLock()
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The OpenBLAS core type in use (e.g. "Haswell", "Cooperlake").
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The core type OpenBLAS should have chosen, when it fell back to its oldest kernels
    /// (Prescott, SSE3) on a CPU newer than it knows (OpenBLAS 0.3.21 on Intel family 6 model
    /// 207, Emerald Rapids) and nobody chose one (OPENBLAS_CORETYPE): SkylakeX on AVX-512,
    /// Haswell on AVX2, as oneDNN reports the CPU. nil: keep OpenBLAS's choice. OpenBLAS reads
    /// the variable once, as it loads, so the process must start again with it set.
    public static var coreTypeToRestartWith: String? {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, coreName == "Prescott" else { return nil }
        if OneDNN.hasBF16Products { return "SkylakeX" }
        return OneDNN.hasAVX2 ? "Haswell" : nil
    }

    /// GFLOP/s of a square sgemm of size n on the current threads: best of a few timed calls.
    public static func measureSgemmGFLOPS(size n: Int = 1024, repeats: Int = 6) -> Double {
        let a = [Float](repeating: 0.5, count: n * n), b = [Float](repeating: 0.25, count: n * n)
        var c = [Float](repeating: 0, count: n * n)
        var best = Double.infinity
        for _ in 0..<repeats {
            let start = DispatchTime.now().uptimeNanoseconds
            c.withUnsafeMutableBufferPointer { cb in
                OpenBLASProducts().product(false, false, m: n, n: n, k: n, alpha: 1, a, lda: n, b, ldb: n, beta: 0, cb.baseAddress!, ldc: n)
            }
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return 2 * Double(n * n * n) / best / 1e9
    }
}
