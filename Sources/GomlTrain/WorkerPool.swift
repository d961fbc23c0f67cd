// WorkerPool: persistent threads that run one fixed job per round, so an in-process split of
// the batch costs two semaphore operations per worker and no allocation per step.

import Foundation

final class WorkerPool {
    let count: Int
    private var job: ((Int) -> Void)?
    private let start: [DispatchSemaphore]
    private let done = DispatchSemaphore(value: 0)

    init(count: Int) {
        self.count = count
        start = (0..<count).map { _ in DispatchSemaphore(value: 0) }
    }

    /// Sets the job (once) and starts the threads for workers 1..<count.
    func launch(_ job: @escaping (Int) -> Void) {
        self.job = job
        for i in 1..<count {
            let thread = Thread { [start, done] in
                while true {
                    start[i].wait()
                    job(i)
                    done.signal()
                }
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// Runs the job for every worker (worker 0 on the calling thread) and waits for all.
    func run() {
        for i in 1..<count { start[i].signal() }
        job?(0)
        for _ in 1..<count { done.wait() }
    }
}
