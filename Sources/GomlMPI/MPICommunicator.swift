// MPICommunicator: the only Swift that imports CMPI. Every call is checked; a failure names
// the call and aborts the whole job. MPI is initialised MPI_THREAD_SERIALIZED: blocking calls
// come from the main thread, non-blocking collectives (MPIRequest) are started and tested by
// the Reducers' threads, and one lock around every call (shared by every communicator split
// from the job's) keeps them from overlapping: the sharded all-gather is still in flight while
// the main thread exchanges the next step's header (the Reducer gives it a communicator of its
// own, so the two need no common order), and an overlapped DiLoCo outer all-reduce progresses
// during the next steps. A watchdog ends the job when a collective makes no progress for
// `collectiveTimeout` seconds (a stopped rank or a lost host), instead of hanging forever.

import CMPI
import Foundation
import GomlComm

public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localRank: Int
    public let localSize: Int
    public let hostName: String
    /// The ranks this communicator spans (the job's, or a split of them), and the job's.
    let world: MPI_Comm, job: MPI_Comm
    private let watchdog: CollectiveWatchdog
    /// Made with this communicator (nil for a companion itself).
    private var companions: [Companion: MPICommunicator?]?

    /// Initialises MPI (serialized: see the header) and learns this rank's place on its node.
    public convenience init(collectiveTimeout: Double) {
        Self.defaultTransportSettings()
        var provided: Int32 = 0
        let rc = MPI_Init_thread(nil, nil, goml_mpi_thread_serialized(), &provided)
        if rc != goml_mpi_success() {
            FileHandle.standardError.write(Data("goml-dist: error: MPI_Init_thread failed (code \(rc)); is this an OpenMPI launch?\n".utf8))
            exit(ExitStatus.setup.code)
        }
        let world: MPI_Comm = goml_mpi_comm_world()
        MPI_Comm_set_errhandler(world, goml_mpi_errors_return())
        var r: Int32 = 0
        MPI_Comm_rank(world, &r)
        var name = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        MPI_Get_processor_name(&name, &length)
        let host = String(cString: name)
        self.init(world, job: world, host: host, watchdog: CollectiveWatchdog(rank: Int(r), host: host, timeout: collectiveTimeout), companions: true)
        if provided < goml_mpi_thread_serialized() {
            abort("MPI granted thread level \(provided), below MPI_THREAD_SERIALIZED (needed to overlap the all-reduce with backward); use an OpenMPI built with thread support", code: ExitStatus.setup.code)
        }
    }

    /// The communicator over `comm`'s ranks; `job` is the whole job's (an abort ends all of it).
    private init(_ comm: MPI_Comm, job: MPI_Comm, host: String, watchdog: CollectiveWatchdog, companions: Bool) {
        world = comm
        self.job = job
        hostName = host
        self.watchdog = watchdog
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &s)
        rank = Int(r)
        size = Int(s)
        var node = MPI_Comm(bitPattern: 0)
        MPI_Comm_split_type(comm, goml_mpi_comm_type_shared(), r, goml_mpi_info_null(), &node)
        var lr: Int32 = 0, ls: Int32 = 0
        MPI_Comm_rank(node, &lr)
        MPI_Comm_size(node, &ls)
        localRank = Int(lr)
        localSize = Int(ls)
        guard companions else { MPI_Comm_free(&node); return }
        func made(_ c: MPI_Comm?) -> MPICommunicator? {
            guard let c, c != goml_mpi_comm_null() else { return nil }
            MPI_Comm_set_errhandler(c, goml_mpi_errors_return())
            return MPICommunicator(c, job: job, host: host, watchdog: watchdog, companions: false)
        }
        var apart = goml_mpi_comm_null(), hostApart = goml_mpi_comm_null(), hostFirsts = goml_mpi_comm_null()
        MPI_Comm_dup(comm, &apart)
        MPI_Comm_dup(node, &hostApart)
        MPI_Comm_split(comm, lr == 0 ? 0 : goml_mpi_undefined(), r, &hostFirsts)
        self.companions = [.apart: made(apart), .host: made(node), .hostApart: made(hostApart), .hostFirsts: made(hostFirsts)]
    }

    /// The split shares this rank's watchdog (MPI calls are serialized, so one is in progress at
    /// a time) and ends the whole job on an error; finalizing stays with the job's communicator.
    public func split(color: Int) -> Communicator {
        var part = goml_mpi_comm_null()
        check("MPI_Comm_split") { MPI_Comm_split(world, Int32(color), Int32(rank), &part) }
        MPI_Comm_set_errhandler(part, goml_mpi_errors_return())
        return MPICommunicator(part!, job: job, host: hostName, watchdog: watchdog, companions: true)
    }

    public func companion(_ kind: Companion) -> Communicator? {
        guard let companions else { preconditionFailure("a companion communicator has no companions") }
        return companions[kind]!
    }

    public func whileWaiting(for what: String, _ wait: () -> Void) {
        watchdog.enter(what)
        wait()
        watchdog.leave()
    }

    /// libnbc's non-blocking all-reduce (the bucketed one of --no-shard and the hierarchy's
    /// leaders) picks reduce-then-broadcast for any in-place sum (ours are) or below 4 ranks,
    /// which sends one way at a time and leaves a TCP link's other direction idle. Reduce-scatter
    /// + all-gather (algorithm 3; the ring where it does not apply) sends both ways at once
    /// (docs/multihost-bench.md, "Link efficiency"). Set before MPI_Init unless the launch set it
    /// (mpirun --mca NAME VALUE reaches the ranks as OMPI_MCA_NAME and wins).
    static func defaultTransportSettings() {
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0)
    }

    public func noteStep(_ step: Int) { watchdog.step = step }

    /// Held around every MPI call: MPI_THREAD_SERIALIZED lets one thread at a time call MPI. An
    /// overlapped DiLoCo all-reduce (on the peers' progress thread) runs during the next steps'
    /// own collectives; only then do two threads ever contend for it.
    private static let serialized = NSLock()

    /// Runs one MPI call (under the watchdog unless `watched` is false: calls that return at
    /// once, whose waiting the caller watches) and aborts the job, naming it, if it fails.
    func check(_ call: String, watched: Bool = true, _ body: () -> Int32) {
        let rc = run(call, watched: watched, body)
        if rc != goml_mpi_success() {
            var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
            var length: Int32 = 0
            MPI_Error_string(rc, &text, &length)
            abort("\(call) failed on rank \(rank) (\(hostName)): \(String(cString: text))", code: ExitStatus.mpiCall.code)
        }
    }

    /// Runs one MPI call under the lock (and the watchdog unless `watched` is false); its code.
    private func run(_ call: String, watched: Bool, _ body: () -> Int32) -> Int32 {
        if watched { watchdog.enter(call) }
        Self.serialized.lock()
        let rc = body()
        Self.serialized.unlock()
        if watched { watchdog.leave() }
        return rc
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
        MPI_Abort(job, code)
        exit(code)
    }

    public func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int) {
        let counts32 = counts.map { Int32($0) }, displacements = counts32.indices.map { r in counts32[..<r].reduce(0, +) }
        check("MPI_Gatherv") {
            MPI_Gatherv(send.baseAddress, counts32[rank], goml_mpi_float(), receive.baseAddress, counts32, displacements,
                        goml_mpi_float(), Int32(root), world)
        }
    }

    public func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int) {
        let counts32 = counts.map { Int32($0) }, displacements = counts32.indices.map { r in counts32[..<r].reduce(0, +) }
        check("MPI_Scatterv") {
            MPI_Scatterv(send.baseAddress, counts32, displacements, goml_mpi_float(), receive.baseAddress, counts32[rank],
                         goml_mpi_float(), Int32(root), world)
        }
    }

    /// One window per call, never freed (see SharedFloats); each rank's segment starts on a
    /// page of its own (alloc_shared_noncontig). OpenMPI backs it with a file in /dev/shm, and
    /// where that file does not fit, its first rank fails and the others wait forever inside
    /// the call: so every rank first checks the room there (a container's /dev/shm is often
    /// 64 MB), and all skip the window if any lacks it. The note's size allows for two windows
    /// of this size (a sharded step's gradients and parameters).
    public func sharedFloats(count: Int) -> SharedFloats? {
        guard size > 1, localSize == size else { return nil }
        let bytes = count * size * MemoryLayout<Float>.stride, needed = bytes + bytes / 8 + (8 << 20)
        var room = statvfs()
        let free = statvfs("/dev/shm", &room) == 0 ? Int(room.f_bavail) * Int(room.f_frsize) : 0
        guard allAgree(free >= needed) else {
            if rank == 0 {
                FileHandle.standardError.write(Data("goml-dist: note: /dev/shm has \(free >> 20) MB free and the sharded step's shared memory needs \(needed >> 20) MB more, so MPI's collectives carry what does not fit (slower on one host); in a container, give it more (docker run --shm-size=\((2 * needed >> 30) + 1)g)\n".utf8))
            }
            return nil
        }
        var base: UnsafeMutableRawPointer?
        var window: MPI_Win?
        var info = goml_mpi_info_null()
        MPI_Info_create(&info)
        MPI_Info_set(info, "alloc_shared_noncontig", "true")
        let rc = run("MPI_Win_allocate_shared", watched: true) {
            MPI_Win_allocate_shared(MPI_Aint(count * MemoryLayout<Float>.stride), Int32(MemoryLayout<Float>.stride), info, world, &base, &window)
        }
        MPI_Info_free(&info)
        let made = allAgree(rc == goml_mpi_success())
        guard made, let window else {
            if rc == goml_mpi_success() { abort("MPI_Win_allocate_shared failed on another rank of this host but not on rank \(rank)", code: ExitStatus.mpiCall.code) }
            return nil
        }
        let segments = (0..<size).map { r -> UnsafeMutableBufferPointer<Float> in
            var bytes: MPI_Aint = 0, unit: Int32 = 0
            var start: UnsafeMutableRawPointer?
            check("MPI_Win_shared_query", watched: false) { MPI_Win_shared_query(window, Int32(r), &bytes, &unit, &start) }
            return UnsafeMutableBufferPointer(start: start!.bindMemory(to: Float.self, capacity: count), count: count)
        }
        check("MPI_Win_lock_all", watched: false) { MPI_Win_lock_all(goml_mpi_mode_nocheck(), window) }
        // A barrier tested under the lock, not one blocking call holding it: another thread's
        // collective (an overlapped DiLoCo all-reduce) keeps progressing meanwhile.
        let barrier = UnsafeMutablePointer<MPI_Request?>.allocate(capacity: 1)
        return SharedFloats(segments: segments) { [self] what in
            check("MPI_Win_sync", watched: false) { MPI_Win_sync(window) }
            check("MPI_Ibarrier", watched: false) { MPI_Ibarrier(world, barrier) }
            whileWaiting(for: what) {
                var done: Int32 = 0
                while done == 0 {
                    check("MPI_Test", watched: false) { MPI_Test(barrier, &done, goml_mpi_status_ignore()) }
                    if done == 0 { sched_yield() }
                }
            }
            check("MPI_Win_sync", watched: false) { MPI_Win_sync(window) }
        }
    }

    public func finalize() {
        guard world == job else { return }
        watchdog.stop()
        MPI_Finalize()
    }
}

extension MPICommunicator {
    /// True under mpirun (OpenMPI) or another PMI launcher; otherwise a job runs as one process.
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"].contains { env[$0] != nil }
    }

    /// The job's communicator: MPI under a launcher, unless `single`; else this process alone.
    public static func forThisJob(single: Bool, collectiveTimeout: Double) -> Communicator {
        setvbuf(stdout, nil, _IOLBF, 0)   // lines appear live under mpirun
        guard !single && launchedByMPI else { return SingleProcessCommunicator() }
        return MPICommunicator(collectiveTimeout: collectiveTimeout)
    }
}
