// MPICommunicator: the only Swift that imports CMPI. Every call is checked; a failure names
// the call and aborts the whole job. All calls come from the thread that initialised MPI
// (MPI_THREAD_FUNNELED). A watchdog ends the job when a collective makes no progress for
// `collectiveTimeout` seconds (a stopped rank or a lost host), instead of hanging forever.

import CMPI
import Foundation
import GomlTrain

public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localRank: Int
    public let localSize: Int
    public let hostName: String
    private let world: MPI_Comm
    private let watchdog: CollectiveWatchdog

    /// Initialises MPI (funneled) and learns this rank's place on its node.
    public init(collectiveTimeout: Double) {
        var provided: Int32 = 0
        let rc = MPI_Init_thread(nil, nil, goml_mpi_thread_funneled(), &provided)
        if rc != goml_mpi_success() {
            FileHandle.standardError.write(Data("goml-dist: error: MPI_Init_thread failed (code \(rc)); is this an OpenMPI launch?\n".utf8))
            exit(2)
        }
        world = goml_mpi_comm_world()
        MPI_Comm_set_errhandler(world, goml_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(world, &r)
        MPI_Comm_size(world, &s)
        rank = Int(r)
        size = Int(s)
        var node = MPI_Comm(bitPattern: 0)
        MPI_Comm_split_type(world, goml_mpi_comm_type_shared(), r, goml_mpi_info_null(), &node)
        var lr: Int32 = 0, ls: Int32 = 0
        MPI_Comm_rank(node, &lr)
        MPI_Comm_size(node, &ls)
        MPI_Comm_free(&node)
        localRank = Int(lr)
        localSize = Int(ls)
        var name = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        MPI_Get_processor_name(&name, &length)
        hostName = String(cString: name)
        watchdog = CollectiveWatchdog(rank: Int(r), host: hostName, timeout: collectiveTimeout)
        if provided < goml_mpi_thread_funneled() {
            abort("MPI granted thread level \(provided), below MPI_THREAD_FUNNELED; rebuild OpenMPI with thread support", code: 2)
        }
    }

    public func noteStep(_ step: Int) { watchdog.step = step }

    /// Runs one MPI call under the watchdog and aborts the job, naming it, if it fails.
    private func check(_ call: String, _ body: () -> Int32) {
        watchdog.enter(call)
        let rc = body()
        watchdog.leave()
        if rc != goml_mpi_success() {
            var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
            var length: Int32 = 0
            MPI_Error_string(rc, &text, &length)
            abort("\(call) failed on rank \(rank) (\(hostName)): \(String(cString: text))", code: 3)
        }
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) {
        check("MPI_Allreduce") {
            MPI_Allreduce(goml_mpi_in_place(), buffer.baseAddress, Int32(buffer.count), goml_mpi_float(), goml_mpi_sum(), world)
        }
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) {
        check("MPI_Allreduce") {
            MPI_Allreduce(goml_mpi_in_place(), buffer.baseAddress, Int32(buffer.count), goml_mpi_double(), goml_mpi_sum(), world)
        }
    }

    public func allGather(_ send: UnsafeBufferPointer<Double>, into receive: UnsafeMutableBufferPointer<Double>) {
        precondition(receive.count == send.count * size)
        check("MPI_Allgather") {
            MPI_Allgather(send.baseAddress, Int32(send.count), goml_mpi_double(),
                          receive.baseAddress, Int32(send.count), goml_mpi_double(), world)
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
        // MPI counts are 32-bit: large buffers go in pieces.
        var start = 0
        while start < buffer.count {
            let n = min(buffer.count - start, 1 << 30)
            check("MPI_Bcast") { MPI_Bcast(buffer.baseAddress! + start, Int32(n), goml_mpi_byte(), Int32(root), world) }
            start += n
        }
    }

    public func exchange(_ outgoing: UnsafeBufferPointer<Float>, _ incoming: UnsafeMutableBufferPointer<Float>, with partner: Int) {
        check("MPI_Sendrecv") {
            MPI_Sendrecv(outgoing.baseAddress, Int32(outgoing.count), goml_mpi_float(), Int32(partner), 7,
                         incoming.baseAddress, Int32(incoming.count), goml_mpi_float(), Int32(partner), 7,
                         world, goml_mpi_status_ignore())
        }
    }

    public func abort(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8))
        MPI_Abort(world, code)
        exit(code)
    }

    public func finalize() {
        watchdog.stop()
        MPI_Finalize()
    }
}

/// Watches the MPI call in progress from a second thread (which never calls MPI) and ends
/// the process when one lasts longer than the timeout; mpirun then takes the job down.
final class CollectiveWatchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var call: String?
    private var since = Date()
    private var stopped = false
    var step = 0
    private let rank: Int, host: String, timeout: Double

    init(rank: Int, host: String, timeout: Double) {
        self.rank = rank; self.host = host; self.timeout = timeout
        guard timeout > 0 else { return }
        let thread = Thread { [weak self] in
            while let self, self.tick() { Thread.sleep(forTimeInterval: min(1, timeout / 4)) }
        }
        thread.start()
    }

    func enter(_ name: String) { lock.lock(); call = name; since = Date(); lock.unlock() }
    func leave() { lock.lock(); call = nil; lock.unlock() }
    func stop() { lock.lock(); stopped = true; lock.unlock() }

    /// False once stopped.
    private func tick() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if stopped { return false }
        if let call, Date().timeIntervalSince(since) > timeout {
            let message = "goml-dist: error: rank \(rank) (\(host)) waited \(Int(timeout)) s in \(call) at step \(step) without progress: another rank stopped responding or a host was lost (--collective-timeout \(Int(timeout)))\n"
            FileHandle.standardError.write(Data(message.utf8))
            _exit(4)
        }
        return true
    }
}
