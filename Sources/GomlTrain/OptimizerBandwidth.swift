// OptimizerBandwidth: what `bench --optimizer` measures — AdamW's fused clip-and-update on a
// worker pool (ParallelAdamW, as training runs it) against AdamW's own loads and stores without
// its arithmetic, on the same threads over arrays of the same size: the memory traffic's
// ceiling. (A STREAM triad made a poor ceiling: its three arrays and one write per element
// moved fewer bytes a second than AdamW's seven streams.) Timing only.

import Foundation
import GomlCore

public struct OptimizerBandwidth: Sendable {
    public let parameters: Int, threads: Int
    /// AdamW's bytes per second, 28 per parameter (reads p, g, m, v; writes p, m, v).
    public let adamWBytesPerSecond: Double
    /// The same 28 bytes per parameter with one addition each (p, m, v += g): the fastest of its timings.
    public let trafficBytesPerSecond: Double
    public var share: Double { adamWBytesPerSecond / trafficBytesPerSecond }

    public static let bytesPerParameter = 28

    /// AdamW's median and the traffic's best of `repeats` timings each, alternating so both see
    /// the same load on a shared machine. The gradient's norm is above the clip, so the scale applies.
    public static func measure(layout: ParameterLayout, threads: Int, repeats: Int = 9) -> OptimizerBandwidth {
        let n = layout.count
        let pool = WorkerPool(count: threads)
        let params = FloatBuffer(count: n), gradient = FloatBuffer(count: n)
        var rng = Xoshiro256(seed: 3)
        for i in 0..<n { params.pointer[i] = Float(rng.nextGaussian() * 0.02); gradient.pointer[i] = Float(rng.nextGaussian()) }
        let scale = clipScale(norm: globalNorm(UnsafeBufferPointer(gradient.pointer)), maxNorm: OptimizerConfig().gradClip)
        let update = ParallelAdamW(optimizer: AdamW(layout: layout, config: OptimizerConfig()), parameters: params.base,
                                   gradient: gradient.base)
        let p = FloatBuffer(count: n), g = FloatBuffer(count: n), m = FloatBuffer(count: n), v = FloatBuffer(count: n)
        g.pointer.update(repeating: 1e-3)
        let traffic: (Int) -> Void = { worker in
            let piece = AdamW.piece(worker, of: threads, 0..<n)
            let (p, g, m, v) = (p.base, UnsafePointer(g.base), m.base, v.base)
            for i in piece {
                p[i] += g[i]; m[i] += g[i]; v[i] += g[i]
            }
        }
        func seconds(_ body: () -> Void) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        // One untimed round of each pages every array in.
        update.update(lr: 1e-4, gradScale: scale, threads: pool)
        pool.run(traffic)
        var adamW: [Double] = [], traffics: [Double] = []
        for _ in 0..<repeats {
            adamW.append(seconds { update.update(lr: 1e-4, gradScale: scale, threads: pool) })
            traffics.append(seconds { pool.run(traffic) })
        }
        let bytes = Double(bytesPerParameter * n)
        return OptimizerBandwidth(parameters: n, threads: threads, adamWBytesPerSecond: bytes / adamW.sorted()[adamW.count / 2],
                                  trafficBytesPerSecond: bytes / traffics.min()!)
    }
}
