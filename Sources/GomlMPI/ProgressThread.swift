import CMPI
import Foundation
import GomlComm

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
    /// thread polls without sleeping until the wait ends: with sleeps, every round of a
    /// collective would wait for the next poll, and the waiting thread with it.
    private var waiting = false
    /// Only when every rank on the host has a core of its own: with more ranks than cores the
    /// idle core is another rank's, and polling without sleeping would take it from that rank's
    /// compute (docs/multihost-bench.md, "A waiting rank polls"). The sleep still ends early
    /// when a wait starts.
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
            // each step costs little time (docs/multihost-bench.md, "Sharding").
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
