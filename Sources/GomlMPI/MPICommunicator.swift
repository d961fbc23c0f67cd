// MPICommunicator: the only Swift that imports CMPI. Every call is checked; a failure names
// the call and aborts the whole job. MPI is initialised MPI_THREAD_SERIALIZED: blocking calls
// come from the main thread, non-blocking collectives are started and tested by ProgressThreads,
// and one lock around every call (shared by every communicator split from the job's) keeps
// them from overlapping: the sharded all-gather is still in flight while the main thread
// exchanges the next step's header (it runs on a communicator of its own, so the two need no
// common order), and an overlapped DiLoCo outer all-reduce progresses during the next steps. A
// watchdog ends the job when a collective makes no progress for `collectiveTimeout` seconds (a
// stopped rank or a lost host), instead of hanging forever.

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
    private let world: MPI_Comm, job: MPI_Comm
    /// This host's ranks (twice: the hierarchy's reduce and broadcast each keep their own
    /// order of buckets), and one rank per host (local rank 0; MPI_COMM_NULL elsewhere).
    private let node: MPI_Comm?, nodeBroadcast: MPI_Comm?, leaders: MPI_Comm?
    /// `world`'s ranks, for the sharded all-gather alone: it overlaps blocking collectives on `world`.
    private let gatherWorld: MPI_Comm?
    /// Hosts in the job.
    private let hosts: Int
    private let watchdog: CollectiveWatchdog

    /// Started by the first non-blocking sum; owns MPI while sums are in flight.
    private var progress: ProgressThread?
    /// What the watchdog names while waiting for those sums ("MPI_Iallreduce (what they sum)").
    private var nonBlockingSumsCall = ""

    /// Microseconds the progress threads sleep between polls of MPI_Test (0: yield the core and
    /// poll again).
    public static let defaultPollMicroseconds: UInt32 = 200
    private let pollMicroseconds: UInt32
    /// At most this many bytes of parameter all-gathers in flight, in forward order: with every
    /// bucket started at once the link is shared among all of them and the first layer's
    /// parameters arrive with the last, so forward waits for them. Fewer bytes leave the link
    /// idle between buckets. The default is the window that kept forward's waits shortest
    /// (docs/multihost-bench.md, "A waiting rank polls, gathers in forward order").
    public static let defaultGatherBytesInFlight = 8_000_000
    private let gatherBytesInFlight: Int
    /// Every rank of the job on this host has a core of its own (the job's count, also in
    /// split communicators): then a rank waiting for a collective may poll without sleeping
    /// (ProgressThread reads it).
    var ranksHaveOwnCores = true

    /// Initialises MPI (serialized: see the header) and learns this rank's place on its node.
    public convenience init(collectiveTimeout: Double, pollMicroseconds: UInt32 = defaultPollMicroseconds,
                            gatherBytesInFlight: Int = defaultGatherBytesInFlight) {
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
        self.init(world, job: world, host: host, watchdog: CollectiveWatchdog(rank: Int(r), host: host, timeout: collectiveTimeout),
                  pollMicroseconds: pollMicroseconds, gatherBytesInFlight: gatherBytesInFlight)
        ranksHaveOwnCores = localSize <= ProcessInfo.processInfo.activeProcessorCount
        if provided < goml_mpi_thread_serialized() {
            abort("MPI granted thread level \(provided), below MPI_THREAD_SERIALIZED (needed to overlap the all-reduce with backward); use an OpenMPI built with thread support", code: ExitStatus.setup.code)
        }
    }

    /// The communicator over `comm`'s ranks; `job` is the whole job's (an abort ends all of it).
    private init(_ comm: MPI_Comm, job: MPI_Comm, host: String, watchdog: CollectiveWatchdog, pollMicroseconds: UInt32, gatherBytesInFlight: Int) {
        world = comm
        self.pollMicroseconds = pollMicroseconds
        self.gatherBytesInFlight = gatherBytesInFlight
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
        var leaders = goml_mpi_comm_null()
        MPI_Comm_split(comm, lr == 0 ? 0 : goml_mpi_undefined(), r, &leaders)
        var hostCount = [Int32(lr == 0 ? 1 : 0)]
        MPI_Allreduce(goml_mpi_in_place(), &hostCount, 1, goml_mpi_int(), goml_mpi_sum(), comm)
        self.node = node
        var nodeBroadcast = goml_mpi_comm_null()
        MPI_Comm_dup(node, &nodeBroadcast)
        self.nodeBroadcast = nodeBroadcast
        self.leaders = leaders
        var gatherWorld = goml_mpi_comm_null()
        MPI_Comm_dup(world, &gatherWorld)
        self.gatherWorld = gatherWorld
        hosts = Int(hostCount[0])
        localRank = Int(lr)
        localSize = Int(ls)
    }

    /// The split shares this rank's watchdog (MPI calls are serialized, so one is in progress at
    /// a time) and ends the whole job on an error; finalizing stays with the job's communicator.
    public func split(color: Int) -> Communicator {
        var part = goml_mpi_comm_null()
        check("MPI_Comm_split") { MPI_Comm_split(world, Int32(color), Int32(rank), &part) }
        MPI_Comm_set_errhandler(part, goml_mpi_errors_return())
        let split = MPICommunicator(part!, job: job, host: hostName, watchdog: watchdog, pollMicroseconds: pollMicroseconds,
                                    gatherBytesInFlight: gatherBytesInFlight)
        split.ranksHaveOwnCores = ranksHaveOwnCores
        return split
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
        if watched { watchdog.enter(call) }
        Self.serialized.lock()
        let rc = body()
        Self.serialized.unlock()
        if watched { watchdog.leave() }
        if rc != goml_mpi_success() {
            var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
            var length: Int32 = 0
            MPI_Error_string(rc, &text, &length)
            abort("\(call) failed on rank \(rank) (\(hostName)): \(String(cString: text))", code: ExitStatus.mpiCall.code)
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
        MPI_Abort(job, code)
        exit(code)
    }

    public func prepareNonBlockingSums(_ buckets: [UnsafeMutableBufferPointer<Float>], compression: GradientCompression, hierarchical: Bool, what: String) {
        precondition(progress == nil, "buckets are registered once")
        nonBlockingSumsCall = "MPI_Iallreduce (\(what))"
        let phases: [ProgressThread.Phase]
        if hierarchical && localSize > 1 && hosts > 1 {
            phases = localRank == 0 ? [.hostReduce, .allReduce, .hostBroadcast] : [.hostReduce, .hostBroadcast]
        } else {
            phases = [.allReduce]
        }
        progress = ProgressThread(owner: self, world: phases.count == 1 ? world : leaders, node: node, nodeBroadcast: nodeBroadcast, phases: phases,
                                  buckets: buckets, compression: compression, pollMicroseconds: pollMicroseconds)
    }

    public func startAllReduceSum(bucket: Int) {
        guard let progress else { preconditionFailure("startAllReduceSum before prepareNonBlockingSums") }
        progress.enqueue(bucket)
    }

    public func waitForAllReduces() -> Double {
        progress.map { thread in watched(nonBlockingSumsCall) { thread.waitAll() } } ?? 0
    }

    /// Runs `wait` (for collectives a progress thread started) under the watchdog as `call`.
    private func watched<T>(_ call: String, _ wait: () -> T) -> T {
        watchdog.enter(call)
        defer { watchdog.leave() }
        return wait()
    }

    /// Sharded buckets: one progress thread reduce-scatters gradients, another all-gathers
    /// parameters (on `gatherWorld`), each bucket waited for by the forward that reads it.
    private var reduceScatters: ProgressThread?, allGathers: ProgressThread?

    public func prepareShardedBuckets(_ buckets: [ShardedBucket], compression: GradientCompression) {
        precondition(reduceScatters == nil, "sharded buckets are registered once")
        let counts = buckets.map { $0.counts }
        // The reduce-scatter is one reduce per owner and bucket, each rank's part summed in place
        // on its owner. OpenMPI 4.1's persistent MPIX_Reduce_scatter_init (libnbc: a reduce to
        // rank 0, then a scatter) keeps a whole-bucket buffer per request on rank 0: a second
        // gradient there. Each reduce is started anew every step, also to save memory
        // (ProgressThread.start; docs/multihost-bench.md, "Sharding").
        var parts: [UnsafeMutableBufferPointer<Float>] = [], owners: [Int32] = []
        for bucket in buckets {
            var start = 0
            for (owner, count) in bucket.counts.enumerated() {
                parts.append(UnsafeMutableBufferPointer(rebasing: bucket.gradient[start..<(start + count)]))
                owners.append(Int32(owner))
                start += count
            }
        }
        reduceScatters = ProgressThread(owner: self, world: world, node: nil, nodeBroadcast: nil, phases: [.reduceToOwner],
                                        buckets: parts, compression: compression, owners: owners, pollMicroseconds: pollMicroseconds)
        allGathers = ProgressThread(owner: self, world: gatherWorld, node: nil, nodeBroadcast: nil, phases: [.allGather],
                                    buckets: buckets.map(\.parameters), compression: .none, shardCounts: counts, pollMicroseconds: pollMicroseconds,
                                    maxBytesInFlight: gatherBytesInFlight,
                                    gatherWires: buckets.map { $0.bf16Ranges.isEmpty ? nil : GatherWire($0) })
    }

    public func startReduceScatter(bucket: Int) {
        guard let reduceScatters else { preconditionFailure("startReduceScatter before prepareShardedBuckets") }
        for owner in 0..<size { reduceScatters.enqueue(bucket * size + owner) }
    }

    public func waitForReduceScatters() -> Double {
        reduceScatters.map { thread in watched("MPI_Reduce (overlapped reduce-scatter of gradient buckets)") { thread.waitAll() } } ?? 0
    }

    public func startAllGather(bucket: Int) {
        guard let allGathers else { preconditionFailure("startAllGather before prepareShardedBuckets") }
        allGathers.enqueue(bucket)
    }

    /// The most bytes of parameter all-gathers that were in flight at once so far.
    public var gatherPeakBytesInFlight: Int { allGathers?.peakBytesInFlight ?? 0 }

    public func waitForAllGather(bucket: Int) {
        guard let allGathers else { return }
        watched("MPI_Allgatherv (updated parameter buckets)") { allGathers.wait(for: bucket) }
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
    /// `gatherMBInFlight` ≤ 0 leaves the parameter all-gathers uncapped.
    public static func forThisJob(single: Bool, collectiveTimeout: Double, pollMicroseconds: UInt32, gatherMBInFlight: Double) -> Communicator {
        setvbuf(stdout, nil, _IOLBF, 0)   // lines appear live under mpirun
        guard !single && launchedByMPI else { return SingleProcessCommunicator() }
        return MPICommunicator(collectiveTimeout: collectiveTimeout, pollMicroseconds: pollMicroseconds,
                               gatherBytesInFlight: gatherMBInFlight > 0 ? Int(min(gatherMBInFlight, 1e6) * 1e6) : 0)
    }
}
