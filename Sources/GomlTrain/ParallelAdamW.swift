// ParallelAdamW: one AdamW update split over a rank's worker threads. Each thread updates
// its contiguous piece of every owned range (AdamW.updatePart), reading g·clipScale once in
// the same pass; the bits are those of one thread's update. The calling thread (worker 0)
// reports each owned range, in order, once every thread has finished its piece of it: the
// sharded strategy starts that bucket's all-gather there, while the other pieces go on.

import Foundation
import GomlCore

final class ParallelAdamW {
    let optimizer: AdamW
    private let parameters: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>
    /// Called on the calling thread with owned range i (i = 0, 1, … in order) once it is updated.
    private let rangeUpdated: (Int) -> Void
    private let lock = NSLock()
    /// Per owned range: the threads that finished their piece of it this update.
    private let piecesDone: UnsafeMutableBufferPointer<Int>
    private var parts = 1, reported = 0
    private var job: (Int) -> Void = { _ in }

    init(optimizer: AdamW, parameters: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>,
         rangeUpdated: @escaping (Int) -> Void = { _ in }) {
        self.optimizer = optimizer
        self.parameters = parameters
        self.gradient = gradient
        self.rangeUpdated = rangeUpdated
        piecesDone = .allocate(capacity: optimizer.ownedRanges)
        piecesDone.initialize(repeating: 0)
        job = { [unowned self] worker in self.updatePart(worker) }
    }

    deinit { piecesDone.deallocate() }

    /// One AdamW step at `lr` from the gradient times `gradScale`, on every thread of `threads`.
    func update(lr: Double, gradScale: Float, threads: WorkerPool) {
        optimizer.beginUpdate(lr: lr, gradScale: gradScale)
        piecesDone.update(repeating: 0)
        parts = threads.count
        reported = 0
        threads.run(job)
        // Every piece is done: report the ranges worker 0 did not see complete.
        reportCompleted(upTo: optimizer.ownedRanges)
    }

    private func updatePart(_ worker: Int) {
        optimizer.updatePart(worker, of: parts, parameters, grads: gradient) { range in
            lock.lock()
            piecesDone[range] += 1
            // Only worker 0 reads `reported` and reports (collectives start on the calling thread).
            guard worker == 0 else { lock.unlock(); return }
            var complete = reported
            while complete < piecesDone.count && piecesDone[complete] == parts { complete += 1 }
            lock.unlock()
            reportCompleted(upTo: complete)
        }
    }

    /// Reports owned ranges up to (not including) `end`; on the calling thread only.
    private func reportCompleted(upTo end: Int) {
        while reported < end { rangeUpdated(reported); reported += 1 }
    }
}
