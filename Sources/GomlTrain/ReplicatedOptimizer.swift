// ReplicatedOptimizer: parameters and AdamW moments held whole on every rank, and the step
// from a whole reduced gradient (global norm, clip, AdamW split over the worker threads).
// Every rank applies the same update to the same bits, so replicas stay identical. Shared by the replicated strategies; no
// communication here.

import GomlComm
import GomlCore

public final class ReplicatedOptimizer {
    let parameters: FloatBuffer   // [P]
    let optimizer: AdamW
    private let update: ParallelAdamW

    /// `gradient` [P] is the reduced gradient every step reads.
    init(layout: ParameterLayout, config: OptimizerConfig, gradient: FloatBuffer) {
        parameters = FloatBuffer(count: layout.count)
        optimizer = AdamW(layout: layout, config: config)
        update = ParallelAdamW(optimizer: optimizer, parameters: parameters.base, gradient: gradient.base)
    }

    /// Whole parameters and moments on every rank: each writer has them already.
    func withWholeState(at writers: [Int], comm: Communicator, _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows {
        if writers.contains(comm.rank) { try body(UnsafeBufferPointer(parameters.pointer), UnsafeBufferPointer(optimizer.m), UnsafeBufferPointer(optimizer.v)) }
    }

    /// `root`'s moments, broadcast to every rank.
    func loadWholeOptimizerState(comm: Communicator, m: UnsafeBufferPointer<Float>?, v: UnsafeBufferPointer<Float>?, root: Int) {
        if let m, let v {
            _ = optimizer.m.update(fromContentsOf: m)
            _ = optimizer.v.update(fromContentsOf: v)
        }
        for buffer in [optimizer.m, optimizer.v] { comm.broadcast(UnsafeMutableRawBufferPointer(buffer), root: root) }
    }

    /// AdamW (on `threads`) from the gradient given at init, times `gradScale`.
    func update(lr: Double, gradScale: Float, threads: WorkerPool) {
        update.update(lr: lr, gradScale: gradScale, threads: threads)
    }
}
