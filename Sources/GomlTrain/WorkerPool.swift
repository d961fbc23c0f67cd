// WorkerPool: a rank's persistent worker threads. Each round runs one job on every worker
// (worker 0 on the calling thread): the Trainer's forward/backward passes, then the
// strategy's AdamW parts. A round costs two semaphore operations per worker and, with jobs
// made once, no allocation.

import Foundation

public final class WorkerPool {
    public let count: Int
    /// The job of the current round, read by the threads after their start signal.
    private final class Slot { var job: (Int) -> Void = { _ in } }
    private let slot = Slot()
    private let start: [DispatchSemaphore]
    private let done = DispatchSemaphore(value: 0)

    init(count: Int) {
        self.count = count
        start = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        for i in 1..<count {
            let thread = Thread { [start, done, slot] in
                while true {
                    start[i].wait()
                    slot.job(i)
                    done.signal()
                }
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// Runs `job` for every worker and waits for all. Jobs should be made once (a closure
    /// made per call allocates).
    func run(_ job: @escaping (Int) -> Void) {
        slot.job = job
        for i in 1..<count { start[i].signal() }
        job(0)
        for _ in 1..<count { done.wait() }
    }
}
