import Foundation

/// Watches the collective call in progress from a second thread (which never calls into the
/// engine) and ends the process when one lasts longer than the timeout; mpirun then takes the
/// job down.
public final class CollectiveWatchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var call: String?
    private var since = Date()
    private var stopped = false
    public var step = 0
    private let rank: Int, host: String, timeout: Double

    public init(rank: Int, host: String, timeout: Double) {
        self.rank = rank; self.host = host; self.timeout = timeout
        guard timeout > 0 else { return }
        let thread = Thread { [weak self] in
            while let self, self.tick() { Thread.sleep(forTimeInterval: min(1, timeout / 4)) }
        }
        thread.start()
    }

    public func enter(_ name: String) { lock.lock(); call = name; since = Date(); lock.unlock() }
    public func leave() { lock.lock(); call = nil; lock.unlock() }
    public func stop() { lock.lock(); stopped = true; lock.unlock() }

    /// False once stopped.
    private func tick() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if stopped { return false }
        if let call, Date().timeIntervalSince(since) > timeout {
            let message = "goml-dist: error: rank \(rank) (\(host)) waited \(Int(timeout)) s in \(call) at step \(step) without progress: another rank stopped responding or a host was lost (--collective-timeout \(Int(timeout)))\n"
            FileHandle.standardError.write(Data(message.utf8))
            _exit(ExitStatus.collectiveTimeout.code)
        }
        return true
    }
}
