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
    /// parameters arrive with the last (`small` at 1 Gbit/s: forward waited 98–155 ms for them;
    /// 23–46 ms with 8 MB). Fewer bytes leave the link idle between buckets (alone, the gather
    /// ran at 68% of 1 Gbit/s with 4 MB in flight, 79% with 8, 90% with 16, 93% uncapped).
    public static let defaultGatherBytesInFlight = 8_000_000
    private let gatherBytesInFlight: Int
    /// Every rank of the job on this host has a core of its own (the job's count, also in
    /// split communicators): then a rank waiting for a collective may poll without sleeping.
    fileprivate var ranksHaveOwnCores = true

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
    /// leaders) picks reduce-then-broadcast for any in-place sum (ours are) or below 4 ranks, which
    /// sends one way at a time: 45% of a TCP link's rate. Reduce-scatter + all-gather (algorithm 3; the ring where
    /// it does not apply) sends both ways at once: 91–94% (docs/multihost-bench.md, "Link
    /// efficiency"). Set before MPI_Init unless the launch set it (mpirun --mca NAME VALUE
    /// reaches the ranks as OMPI_MCA_NAME and wins).
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
        // gradient there, measured as 320 MB more peak memory on an 85 M model; each reduce is
        // started anew every step for the same reason (ProgressThread.start: 128 MB less there).
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
                                    gatherWires: buckets.map { $0.bf16Parameters.isEmpty ? nil : GatherWire($0) })
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
            _exit(ExitStatus.collectiveTimeout.code)
        }
        return true
    }
}

/// The communication thread of the overlapped all-reduce. OpenMPI 4.1's TCP transport advances
/// a non-blocking collective only inside MPI calls, and backward is long stretches of BLAS with
/// no MPI calls, so this thread starts each queued bucket and polls MPI_Test every
/// `pollMicroseconds` until all are done, sleeping in between so that it takes little of the core
/// the compute threads use. Every collective but the reduce to an owner is persistent
/// (MPIX_*_init, made on its first start), so a step builds few schedules. A bucket goes through `phases` — flat: one all-reduce
/// over every rank; hierarchical: reduce to the host's first rank through shared memory, that
/// rank's all-reduce across hosts, broadcast back inside the host. Each phase starts in bucket
/// order on every rank (a bucket waits until the one before it has started that phase), as
/// MPI requires of collectives on one communicator. A sharded reduction runs two such threads,
/// one phase each: the gradient's reduce-scatter (a reduce of each rank's part of each bucket
/// to that rank) and the parameter buckets' all-gather.
final class ProgressThread: @unchecked Sendable {
    enum Phase: Int, CaseIterable {
        case hostReduce, allReduce, hostBroadcast, reduceToOwner, allGather
        var withinHost: Bool { self == .hostReduce || self == .hostBroadcast }
        /// The phases whose values travel as bfloat16 with compression.
        var sumsOverRanks: Bool { self == .allReduce || self == .reduceToOwner }
    }
    private let pollMicroseconds: UInt32
    /// Bytes of buckets with a phase in flight at once (at least one bucket); the next in queue
    /// order starts as those before it complete.
    private let maxBytesInFlight: Int
    /// The most bytes in flight at once so far (this thread writes it; read after a wait).
    private(set) var peakBytesInFlight = 0
    private unowned let owner: MPICommunicator
    // world: the all-reduce's ranks (every rank, or host leaders); node, nodeBroadcast: this host's
    // ranks, one communicator per host phase, since a host's leader and its other ranks start
    // a bucket's broadcast at different points relative to the next bucket's reduce.
    private let world: MPI_Comm?, node: MPI_Comm?, nodeBroadcast: MPI_Comm?
    private let phases: [Phase]
    private let buckets: [UnsafeMutableBufferPointer<Float>]
    /// bf16: each bucket's wire copy across hosts (nil without compression).
    private let staged: [UnsafeMutableBufferPointer<UInt16>?]
    private let requests: UnsafeMutablePointer<MPI_Request?>   // [phase kind × bucket]
    /// All-gather with bf16 ranges: per bucket, how each rank's slice travels (nil: float32 in
    /// place, and for every bucket of the other phases).
    private let gatherWires: [GatherWire?]
    /// All-gather: per bucket, each rank's element count and offset (MPI reads them for as long
    /// as the persistent request lives). Reduce to owner: per bucket, the rank that owns it.
    private let shardCounts: [UnsafeMutableBufferPointer<Int32>], shardOffsets: [UnsafeMutableBufferPointer<Int32>]
    private let owners: [Int32]
    private let made: UnsafeMutableBufferPointer<Bool>
    private let next: UnsafeMutableBufferPointer<Int>           // per bucket: phase in flight or to start
    private let active: UnsafeMutableBufferPointer<Bool>
    private let bf16Sum: MPI_Op?
    private let queue: UnsafeMutablePointer<Int>    // bucket indices in start order, one step's worth
    private let lock = NSLock()
    private var enqueued = 0                        // under `lock`
    private var started = 0, completed = 0          // this thread only
    private var waited = 0                          // the waiting thread only
    private let work = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
    /// Ends a sleep between polls early when a thread starts waiting.
    private let wake = DispatchSemaphore(value: 0)
    private var firstStart: UInt64 = 0, lastEnd: UInt64 = 0
    private var newStep = true                      // under `lock`: the next start opens the busy span
    /// Under `lock`: a thread is blocked in `waitAll` or `wait(for:)`, its core idle, so this
    /// thread polls without sleeping until the wait ends (sleeping polls added 12–40 ms to the
    /// reduce-scatter's exposed tail on one host, `small`, against 4–8 ms).
    private var waiting = false
    /// Only when every rank on the host has a core of its own: with more ranks than cores the
    /// idle core is another rank's, and polling without sleeping slowed `np 4` on 2 cores by up
    /// to 19%. The sleep still ends early when a wait starts.
    private let pollWhileWaited: Bool

    init(owner: MPICommunicator, world: MPI_Comm?, node: MPI_Comm?, nodeBroadcast: MPI_Comm?, phases: [Phase], buckets: [UnsafeMutableBufferPointer<Float>],
         compression: GradientCompression, shardCounts: [[Int]] = [], owners: [Int32] = [], pollMicroseconds: UInt32, maxBytesInFlight: Int = .max,
         gatherWires: [GatherWire?] = []) {
        self.owner = owner
        self.gatherWires = gatherWires.isEmpty ? Array(repeating: nil, count: buckets.count) : gatherWires
        self.maxBytesInFlight = maxBytesInFlight
        pollWhileWaited = owner.ranksHaveOwnCores
        self.pollMicroseconds = pollMicroseconds
        self.owners = owners
        self.shardCounts = shardCounts.map { counts in
            let buffer = UnsafeMutableBufferPointer<Int32>.allocate(capacity: counts.count)
            _ = buffer.initialize(from: counts.map { Int32($0) })
            return buffer
        }
        shardOffsets = shardCounts.map { counts in
            let buffer = UnsafeMutableBufferPointer<Int32>.allocate(capacity: counts.count)
            _ = buffer.initialize(from: counts.indices.map { Int32(counts[..<$0].reduce(0, +)) })
            return buffer
        }
        self.world = world
        self.node = node
        self.nodeBroadcast = nodeBroadcast
        self.phases = phases
        self.buckets = buckets
        let crosses = phases.contains(.allReduce) || phases.contains(.reduceToOwner)
        staged = buckets.map { compression == .bf16 && crosses ? .allocate(capacity: $0.count) : nil }
        let slots = Phase.allCases.count * buckets.count
        requests = .allocate(capacity: slots)
        requests.initialize(repeating: goml_mpi_request_null(), count: slots)
        made = .allocate(capacity: slots)
        made.initialize(repeating: false)
        next = .allocate(capacity: buckets.count)
        next.initialize(repeating: 0)
        active = .allocate(capacity: buckets.count)
        active.initialize(repeating: false)
        bf16Sum = compression == .bf16 ? goml_mpi_bf16_sum_op() : nil
        queue = .allocate(capacity: buckets.count)
        let thread = Thread { [unowned self] in self.serve() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    func enqueue(_ bucket: Int) {
        lock.lock()
        precondition(enqueued - waited < buckets.count, "a bucket started twice in one step")
        queue[enqueued % buckets.count] = bucket
        enqueued += 1
        lock.unlock()
        work.signal()
    }

    /// Waits for every queued sum; returns the seconds from the first start to the last end.
    func waitAll() -> Double {
        lock.lock()
        let target = enqueued
        lock.unlock()
        let first = waited
        beginWaiting()
        while waited < target { done.wait(); waited += 1 }
        lock.lock()
        newStep = true
        waiting = false
        lock.unlock()
        return waited > first ? Double(lastEnd - firstStart) / 1e9 : 0
    }

    /// Waits for queued `bucket` (and the buckets queued before it) to complete; returns at once
    /// when it is not queued or was waited for already. From one waiting thread at a time.
    func wait(for bucket: Int) {
        lock.lock()
        let target = enqueued
        lock.unlock()
        var position = waited
        while position < target && queue[position % buckets.count] != bucket { position += 1 }
        guard position < target else { return }
        beginWaiting()
        while waited <= position { done.wait(); waited += 1 }
        lock.lock()
        if waited == target { newStep = true }
        waiting = false
        lock.unlock()
    }

    /// Marks a wait begun and ends the communication thread's sleep, if it sleeps.
    private func beginWaiting() {
        lock.lock()
        waiting = true
        lock.unlock()
        wake.signal()
    }

    private func serve() {
        while true {
            work.wait()
            repeat {
                lock.lock()
                let available = enqueued, hurry = waiting
                if available > started && newStep { newStep = false; firstStart = DispatchTime.now().uptimeNanoseconds }
                lock.unlock()
                while started < available {
                    let bucket = queue[started % buckets.count]
                    next[bucket] = 0
                    active[bucket] = false
                    started += 1
                }
                advance()
                while completed < started && next[queue[completed % buckets.count]] == phases.count {
                    completed += 1
                    lastEnd = DispatchTime.now().uptimeNanoseconds
                    done.signal()
                }
                // Shared memory moves a message fragment by fragment, each handed over inside an
                // MPI call on both sides: while a host phase is in flight, poll without sleeping.
                if completed < started {
                    if (hurry && pollWhileWaited) || hostPhaseActive || pollMicroseconds == 0 { sched_yield() } else { _ = wake.wait(timeout: .now() + .microseconds(Int(pollMicroseconds))) }
                }
            } while completed < started
        }
    }

    private var hostPhaseActive = false

    /// Finishes and starts phases of the buckets in flight, in queue order.
    private func advance() {
        hostPhaseActive = false
        var previousStarted = Int.max   // phases the bucket before has started
        var inFlight = 0
        for i in completed..<started where active[queue[i % buckets.count]] { inFlight += bytes(queue[i % buckets.count]) }
        for i in completed..<started {
            let bucket = queue[i % buckets.count]
            if active[bucket] && test(phases[next[bucket]], bucket) {
                finish(phases[next[bucket]], bucket)
                active[bucket] = false
                next[bucket] += 1
                inFlight -= bytes(bucket)
            }
            if !active[bucket] && next[bucket] < phases.count && previousStarted > next[bucket] {
                if inFlight > 0 && inFlight + bytes(bucket) > maxBytesInFlight { break }
                start(phases[next[bucket]], bucket)
                active[bucket] = true
                inFlight += bytes(bucket)
                peakBytesInFlight = max(peakBytesInFlight, inFlight)
            }
            previousStarted = next[bucket] + (active[bucket] ? 1 : 0)
            if active[bucket] && phases[next[bucket]].withinHost { hostPhaseActive = true }
        }
    }

    private func bytes(_ bucket: Int) -> Int { gatherWires[bucket]?.bytes ?? buckets[bucket].count * MemoryLayout<Float>.stride }

    private func start(_ phase: Phase, _ bucket: Int) {
        let slot = phase.rawValue * buckets.count + bucket, request = requests + slot
        let values = buckets[bucket]
        if phase.sumsOverRanks, let wire = staged[bucket] {
            for i in 0..<values.count { wire[i] = goml_bf16_from_float(values[i]) }
        }
        if let gather = gatherWires[bucket] { gather.encode(values, rank: owner.rank) }
        if phase == .reduceToOwner {
            // Not persistent: libnbc's reduce keeps a slice-sized buffer on the owner for as long
            // as its request lives, for a persistent request the whole run: 1/N of the gradient
            // more per rank. A started reduce frees it when it completes; building its schedule
            // each step added ~2 ms to the last rank's wait on `small` (np 2, one host).
            let root = owners[bucket], owns = Int(root) == owner.rank
            let (buffer, type, op) = staged[bucket].map { (UnsafeMutableRawPointer($0.baseAddress!), goml_mpi_uint16(), bf16Sum) }
                ?? (UnsafeMutableRawPointer(values.baseAddress!), goml_mpi_float(), goml_mpi_sum())
            owner.check("MPI_Ireduce", watched: false) {
                MPI_Ireduce(owns ? UnsafeRawPointer(goml_mpi_in_place()) : UnsafeRawPointer(buffer), owns ? buffer : nil,
                            Int32(values.count), type, op, root, world, request)
            }
            return
        }
        if !made[slot] {
            made[slot] = true
            let count = Int32(values.count)
            switch phase {
            case .hostReduce:
                // The host's first rank sums in place; the others send their values.
                let leader = owner.localRank == 0
                owner.check("MPIX_Reduce_init", watched: false) {
                    MPIX_Reduce_init(leader ? UnsafeRawPointer(goml_mpi_in_place()) : UnsafeRawPointer(values.baseAddress), leader ? values.baseAddress : nil,
                                     count, goml_mpi_float(), goml_mpi_sum(), 0, node, goml_mpi_info_null(), request)
                }
            case .allReduce:
                if let wire = staged[bucket] {
                    owner.check("MPIX_Allreduce_init", watched: false) {
                        MPIX_Allreduce_init(goml_mpi_in_place(), wire.baseAddress, count, goml_mpi_uint16(), bf16Sum, world,
                                            goml_mpi_info_null(), request)
                    }
                } else {
                    owner.check("MPIX_Allreduce_init", watched: false) {
                        MPIX_Allreduce_init(goml_mpi_in_place(), values.baseAddress, count, goml_mpi_float(), goml_mpi_sum(), world,
                                            goml_mpi_info_null(), request)
                    }
                }
            case .hostBroadcast:
                owner.check("MPIX_Bcast_init", watched: false) {
                    MPIX_Bcast_init(values.baseAddress, count, goml_mpi_float(), 0, nodeBroadcast, goml_mpi_info_null(), request)
                }
            case .reduceToOwner:
                preconditionFailure("reduces to owners are started, not persistent")
            case .allGather:
                if let gather = gatherWires[bucket] {
                    owner.check("MPIX_Allgatherv_init", watched: false) {
                        MPIX_Allgatherv_init(goml_mpi_in_place(), 0, goml_mpi_uint16(), gather.wire, gather.counts.baseAddress,
                                             gather.offsets.baseAddress, goml_mpi_uint16(), world, goml_mpi_info_null(), request)
                    }
                    break
                }
                owner.check("MPIX_Allgatherv_init", watched: false) {
                    MPIX_Allgatherv_init(goml_mpi_in_place(), 0, goml_mpi_float(), values.baseAddress, shardCounts[bucket].baseAddress,
                                         shardOffsets[bucket].baseAddress, goml_mpi_float(), world, goml_mpi_info_null(), request)
                }
            }
        }
        owner.check("MPI_Start", watched: false) { MPI_Start(request) }
    }

    private func test(_ phase: Phase, _ bucket: Int) -> Bool {
        var flag: Int32 = 0
        let request = requests + phase.rawValue * buckets.count + bucket
        owner.check("MPI_Test", watched: false) { MPI_Test(request, &flag, goml_mpi_status_ignore()) }
        return flag != 0
    }

    private func finish(_ phase: Phase, _ bucket: Int) {
        if let gather = gatherWires[bucket] { return gather.decode(into: buckets[bucket], except: owner.rank) }
        // Widened where the sum arrived: every rank of an all-reduce, the owner of a reduce.
        guard phase == .allReduce || (phase == .reduceToOwner && Int(owners[bucket]) == owner.rank), let wire = staged[bucket] else { return }
        let values = buckets[bucket]
        for i in 0..<values.count { values[i] = goml_bf16_to_float(wire[i]) }
    }
}

/// How one bucket's parameters travel when parts of them are bfloat16 values (their holders
/// round them so): each rank's slice, piece by piece in element order, bf16 pieces as one 16-bit
/// word per value and float32 pieces as two, so every rank knows every slice's place on the
/// wire. The wire is the bucket's gradient memory: dead from the update of the bucket's slice,
/// which starts the gather, until the next backward, which the forward's wait for the gather
/// precedes; so it costs no memory. At most as many bytes as the bucket's float32.
struct GatherWire {
    struct Piece { let elements: Range<Int>; let bf16: Bool; let word: Int }
    /// Per rank, its slice's pieces.
    let pieces: [[Piece]]
    let wire: UnsafeMutableRawPointer
    /// Bytes on the wire, all slices.
    let bytes: Int
    /// Per rank: its slice's 16-bit words on the wire, and where they start (MPI reads them while the request lives).
    let counts: UnsafeMutableBufferPointer<Int32>, offsets: UnsafeMutableBufferPointer<Int32>

    init(_ bucket: ShardedBucket) {
        var pieces: [[Piece]] = [], words: [Int32] = [], start = 0, position = 0
        for count in bucket.counts {
            let slice = start..<(start + count), first = position
            var mine: [Piece] = [], at = slice.lowerBound
            func add(_ elements: Range<Int>, bf16: Bool) {
                guard !elements.isEmpty else { return }
                mine.append(Piece(elements: elements, bf16: bf16, word: position))
                position += (bf16 ? 1 : 2) * elements.count
            }
            for range in bucket.bf16Parameters {
                let part = range.clamped(to: slice)
                guard !part.isEmpty else { continue }
                add(at..<part.lowerBound, bf16: false)
                add(part, bf16: true)
                at = part.upperBound
            }
            add(at..<slice.upperBound, bf16: false)
            words.append(Int32(position - first))
            pieces.append(mine)
            start += count
        }
        precondition(position * 2 <= bucket.gradient.count * 4)
        self.pieces = pieces
        wire = UnsafeMutableRawPointer(bucket.gradient.baseAddress!)
        bytes = position * 2
        counts = .allocate(capacity: words.count)
        _ = counts.initialize(from: words)
        offsets = .allocate(capacity: words.count)
        _ = offsets.initialize(from: words.indices.map { Int32(words[..<$0].reduce(0, +)) })
    }

    /// Writes `rank`'s slice of `values` to its place on the wire, bf16 pieces rounded to nearest
    /// even as CBF16 packs an operand.
    func encode(_ values: UnsafeMutableBufferPointer<Float>, rank: Int) {
        for piece in pieces[rank] {
            let at = wire + 2 * piece.word, source = values.baseAddress! + piece.elements.lowerBound, count = piece.elements.count
            guard piece.bf16 else { at.copyMemory(from: source, byteCount: 4 * count); continue }
            at.withMemoryRebound(to: UInt16.self, capacity: count) { words in
                for j in 0..<count {
                    let bits = source[j].bitPattern
                    words[j] = UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
                }
            }
        }
    }

    /// Reads every slice but `rank`'s from the wire into `values`.
    func decode(into values: UnsafeMutableBufferPointer<Float>, except rank: Int) {
        for (r, slice) in pieces.enumerated() where r != rank {
            for piece in slice {
                let at = wire + 2 * piece.word, target = values.baseAddress! + piece.elements.lowerBound, count = piece.elements.count
                guard piece.bf16 else { UnsafeMutableRawPointer(target).copyMemory(from: at, byteCount: 4 * count); continue }
                at.withMemoryRebound(to: UInt16.self, capacity: count) { words in
                    for j in 0..<count { target[j] = Float(bitPattern: UInt32(words[j]) << 16) }
                }
            }
        }
    }
}
