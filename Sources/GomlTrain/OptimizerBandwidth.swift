// OptimizerBandwidth: what `bench --optimizer` measures — AdamW's fused clip-and-update on a
// worker pool (ParallelAdamW, as training runs it) against the memory bandwidth a STREAM-like
// triad reaches on the same threads and arrays of the same size. Timing only.

import Foundation
import GomlCore

public struct OptimizerBandwidth: Sendable {
    public let parameters: Int, threads: Int
    /// AdamW's bytes per second, 28 per parameter (reads p, g, m, v; writes p, m, v).
    public let adamWBytesPerSecond: Double
    /// Triad a = b + s·c over `parameters`-long arrays: 12 bytes per element (reads b, c; writes a).
    public let triadBytesPerSecond: Double
    public var share: Double { adamWBytesPerSecond / triadBytesPerSecond }

    public static let adamWBytesPerParameter = 28, triadBytesPerElement = 12

    /// Medians of `repeats` timings each, AdamW and triad alternating so both see the same
    /// load on a shared machine. The gradient's norm is above the clip, so the scale applies.
    public static func measure(layout: ParameterLayout, threads: Int, repeats: Int = 9) -> OptimizerBandwidth {
        let n = layout.count
        let pool = WorkerPool(count: threads)
        let params = FloatBuffer(count: n), gradient = FloatBuffer(count: n)
        var rng = Xoshiro256(seed: 3)
        for i in 0..<n { params.pointer[i] = Float(rng.nextGaussian() * 0.02); gradient.pointer[i] = Float(rng.nextGaussian()) }
        let scale = clipScale(norm: globalNorm(UnsafeBufferPointer(gradient.pointer)), maxNorm: OptimizerConfig().gradClip)
        let update = ParallelAdamW(optimizer: AdamW(layout: layout, config: OptimizerConfig()), parameters: params.base,
                                   gradient: gradient.base)
        let a = FloatBuffer(count: n), b = FloatBuffer(count: n), c = FloatBuffer(count: n)
        b.pointer.update(repeating: 1); c.pointer.update(repeating: 2)
        let triad: (Int) -> Void = { worker in
            let piece = AdamW.piece(worker, of: threads, 0..<n)
            let (x, y, z) = (a.base, b.base, c.base)
            for i in piece { x[i] = y[i] + 3 * z[i] }
        }
        func seconds(_ body: () -> Void) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        // One untimed round of each pages every array in.
        update.update(lr: 1e-4, gradScale: scale, threads: pool)
        pool.run(triad)
        var adamW: [Double] = [], triads: [Double] = []
        for _ in 0..<repeats {
            adamW.append(seconds { update.update(lr: 1e-4, gradScale: scale, threads: pool) })
            triads.append(seconds { pool.run(triad) })
        }
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        return OptimizerBandwidth(parameters: n, threads: threads,
                                  adamWBytesPerSecond: Double(adamWBytesPerParameter * n) / median(adamW),
                                  triadBytesPerSecond: Double(triadBytesPerElement * n) / median(triads))
    }
}
