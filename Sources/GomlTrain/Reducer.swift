// Reducer: owns a reduction's buckets, as PyTorch DDP's Reducer does, over the communicator's
// stateless requests: the buckets' memory, the shard slices, the wire (bf16 staging of sums,
// the parameter gather's mixed wire) and a communication thread that starts and completes them.
//
// Why a thread: OpenMPI 4.1's TCP transport advances a non-blocking collective only inside MPI
// calls, and backward is long stretches of products with no such calls. So this thread starts
// each queued bucket and tests its request every `pollMicroseconds` until all are done,
// sleeping in between so that it takes little of the core the compute threads use. A bucket
// goes through `phases` — flat: one all-reduce over every rank; hierarchical: a sum to the
// host's first rank, that rank's all-reduce across hosts, a broadcast back inside the host. Each
// phase starts in bucket order on every rank (a bucket waits until the one before it has started
// that phase), as collectives on one communicator must.

import CBFloat16
import Foundation
import GomlComm

/// How a reducer's thread paces itself; the same for every reducer of a run.
public struct ReducerPacing: Sendable {
    /// Microseconds the thread sleeps between tests of its requests (0: yield the core and test again).
    public var pollMicroseconds: UInt32 = 200
    /// Bytes of the parameter all-gathers in flight at once, in forward order (the first bucket
    /// at least): with every bucket started at once the link is shared among all of them and
    /// the first layer's parameters arrive with the last, so forward waits for them; fewer bytes
    /// leave the link idle between buckets. The default kept forward's waits shortest
    /// (docs/multihost-bench.md, "A waiting rank polls, gathers in forward order"). 0: no cap.
    public var gatherBytesInFlight = 8_000_000
    /// Every rank of the job on its host has a core of its own: then while a thread waits for
    /// the reducer, its core is idle and the reducer's thread polls without sleeping. With more
    /// ranks than cores the idle core is another rank's (docs/multihost-bench.md, "A waiting
    /// rank polls").
    public var ranksHaveOwnCores = true
    public init() {}
}

/// One bucket of a sharded reduction: the whole bucket of gradient and of parameters (the same
/// elements), and how many elements of it each rank owns, the ranks' parts contiguous in rank
/// order.
struct ShardedBucket {
    let gradient: UnsafeMutableBufferPointer<Float>
    let parameters: UnsafeMutableBufferPointer<Float>
    let counts: [Int]
    /// Ranges of `parameters` (from its start, ascending) that travel as bfloat16, through the
    /// bucket's `gradient` memory, idle then (GatherWire); the rest as float32.
    let bf16Ranges: [Range<Int>]
    init(gradient: UnsafeMutableBufferPointer<Float>, parameters: UnsafeMutableBufferPointer<Float>, counts: [Int], bf16Ranges: [Range<Int>] = []) {
        precondition(gradient.count == parameters.count && counts.reduce(0, +) == gradient.count)
        precondition(zip(bf16Ranges, bf16Ranges.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }
                     && bf16Ranges.allSatisfy { $0.lowerBound >= 0 && $0.upperBound <= parameters.count })
        self.gradient = gradient
        self.parameters = parameters
        self.counts = counts
        self.bf16Ranges = bf16Ranges
    }
}

final class Reducer: @unchecked Sendable {
    private enum Phase {
        case hostReduce, allReduce, hostBroadcast, reduceToOwner, allGather
        var withinHost: Bool { self == .hostReduce || self == .hostBroadcast }
    }

    /// What a caller's wait is named in a timeout message.
    private let what: String
    private let comm: Communicator
    private let pacing: ReducerPacing
    private let maxBytesInFlight: Int
    /// The most bytes in flight at once so far (this thread writes it; read after a wait).
    private(set) var peakBytesInFlight = 0
    private let phases: [Phase]
    /// What travels: a caller's buckets, or (the reduce to owners) each bucket's parts, one per
    /// rank, consecutive; `start(b)` starts the `partsPerBucket` parts of the caller's bucket b.
    private let buckets: [UnsafeMutableBufferPointer<Float>]
    private let partsPerBucket: Int
    /// Per phase and bucket, its request.
    private let requests: [[CollectiveRequest]]
    /// bf16 sums: each bucket's wire copy (nil without compression).
    private let staged: [UnsafeMutableBufferPointer<UInt16>?]
    /// The reduce to owners: per bucket the rank that owns it (whose values the sum replaces).
    private let owners: [Int]
    /// The all-gather with bf16 ranges: how each rank's slice travels (nil: float32 in place).
    private let gatherWires: [GatherWire?]
    private let next: UnsafeMutableBufferPointer<Int>           // per bucket: phase in flight or to start
    private let active: UnsafeMutableBufferPointer<Bool>
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
    /// thread polls without sleeping (when `pacing.ranksHaveOwnCores`) until the wait ends:
    /// with sleeps, every round of a collective would wait for the next poll, and the waiting
    /// thread with it.
    private var waiting = false
    private var hostPhaseActive = false

    /// Sums `buckets` over `comm`'s ranks in place, bucket by bucket as they are started.
    /// `hierarchical`: within each host first, so one copy per host crosses the network (with
    /// several ranks per host on several hosts).
    static func allReduce(_ comm: Communicator, buckets: [UnsafeMutableBufferPointer<Float>], compression: GradientCompression,
                          hierarchical: Bool, pacing: ReducerPacing, what: String) -> Reducer {
        let (element, staged) = wire(buckets, compression)
        func sums(over ranks: Communicator) -> [CollectiveRequest] {
            buckets.indices.map { ranks.makeAllReduceSum(address(buckets[$0], staged[$0]), count: buckets[$0].count, of: element) }
        }
        // A communicator per host phase (a host's first rank and its others start a bucket's
        // broadcast at different points relative to the next bucket's reduce), and one of the
        // hosts' first ranks. One host: nothing crosses a network. Every rank decides alike (a
        // host of one rank runs the host phases on itself alone).
        guard hierarchical, let host = comm.companion(.host), host.size < comm.size else {
            return Reducer(comm, phases: [.allReduce], buckets: buckets, requests: [sums(over: comm)], staged: staged, pacing: pacing, what: what)
        }
        let hostApart = comm.companion(.hostApart)!
        let reduces = buckets.map { host.makeReduceSum(UnsafeMutableRawPointer($0.baseAddress!), count: $0.count, of: .float32, root: 0, persistent: true) }
        let broadcasts = buckets.map { hostApart.makeBroadcast(UnsafeMutableRawPointer($0.baseAddress!), count: $0.count, of: .float32, root: 0) }
        guard let firsts = comm.companion(.hostFirsts) else {
            return Reducer(comm, phases: [.hostReduce, .hostBroadcast], buckets: buckets, requests: [reduces, broadcasts], staged: staged, pacing: pacing, what: what)
        }
        return Reducer(comm, phases: [.hostReduce, .allReduce, .hostBroadcast], buckets: buckets, requests: [reduces, sums(over: firsts), broadcasts],
                       staged: staged, pacing: pacing, what: what)
    }

    /// How `buckets` travel in a sum: float32 in place, or bf16 through a staging copy each.
    private static func wire(_ buckets: [UnsafeMutableBufferPointer<Float>], _ compression: GradientCompression)
        -> (WireElement, [UnsafeMutableBufferPointer<UInt16>?]) {
        compression == .bf16 ? (.bfloat16, buckets.map { .allocate(capacity: $0.count) }) : (.float32, buckets.map { _ in nil })
    }

    /// Where a bucket's values are on the wire: its staging copy, if it has one.
    private static func address(_ values: UnsafeMutableBufferPointer<Float>, _ staged: UnsafeMutableBufferPointer<UInt16>?) -> UnsafeMutableRawPointer {
        staged.map { UnsafeMutableRawPointer($0.baseAddress!) } ?? UnsafeMutableRawPointer(values.baseAddress!)
    }

    /// A sharded reduction's two reducers: the gradients' reduce-scatter (one reduce per bucket
    /// and owner, each rank's part summed in place on that rank) and the parameters' all-gather
    /// (on a communicator of its own: it is in flight during the main thread's collectives).
    /// OpenMPI 4.1's persistent MPIX_Reduce_scatter_init (libnbc: a reduce to rank 0, then a
    /// scatter) keeps a whole-bucket buffer per request on rank 0, a second gradient there; a
    /// persistent reduce keeps a slice-sized one on its owner for the whole run. So each reduce
    /// is made anew at every start (building its schedule costs little; docs/multihost-bench.md,
    /// "Sharding").
    static func sharded(_ comm: Communicator, buckets: [ShardedBucket], compression: GradientCompression, pacing: ReducerPacing)
        -> (reduceScatter: Reducer, allGather: Reducer) {
        var parts: [UnsafeMutableBufferPointer<Float>] = [], owners: [Int] = []
        for bucket in buckets {
            var start = 0
            for (owner, count) in bucket.counts.enumerated() {
                parts.append(UnsafeMutableBufferPointer(rebasing: bucket.gradient[start..<(start + count)]))
                owners.append(owner)
                start += count
            }
        }
        let (element, staged) = wire(parts, compression)
        let reduces = parts.indices.map { p in
            comm.makeReduceSum(address(parts[p], staged[p]), count: parts[p].count, of: element, root: owners[p], persistent: false)
        }
        let reduceScatter = Reducer(comm, phases: [.reduceToOwner], buckets: parts, partsPerBucket: comm.size, requests: [reduces], staged: staged,
                                    owners: owners, pacing: pacing, what: "MPI_Ireduce (overlapped reduce-scatter of gradient buckets)")
        let gatherComm = comm.companion(.apart)!
        let wires = buckets.map { $0.bf16Ranges.isEmpty ? nil : GatherWire($0) }
        let gathers = buckets.indices.map { b in
            wires[b].map { gatherComm.makeAllGather($0.wire, counts: $0.words, of: .bfloat16) }
                ?? gatherComm.makeAllGather(UnsafeMutableRawPointer(buckets[b].parameters.baseAddress!), counts: buckets[b].counts, of: .float32)
        }
        let allGather = Reducer(gatherComm, phases: [.allGather], buckets: buckets.map(\.parameters), requests: [gathers], gatherWires: wires, maxBytesInFlight: pacing.gatherBytesInFlight > 0 ? pacing.gatherBytesInFlight : .max,
                                pacing: pacing, what: "MPI_Allgatherv (updated parameter buckets)")
        return (reduceScatter, allGather)
    }

    private init(_ comm: Communicator, phases: [Phase], buckets: [UnsafeMutableBufferPointer<Float>], partsPerBucket: Int = 1, requests: [[CollectiveRequest]],
                 staged: [UnsafeMutableBufferPointer<UInt16>?] = [], owners: [Int] = [], gatherWires: [GatherWire?] = [], maxBytesInFlight: Int = .max,
                 pacing: ReducerPacing, what: String) {
        self.comm = comm
        self.phases = phases
        self.buckets = buckets
        self.partsPerBucket = partsPerBucket
        self.requests = requests
        self.staged = staged.isEmpty ? buckets.map { _ in nil } : staged
        self.owners = owners
        self.gatherWires = gatherWires.isEmpty ? buckets.map { _ in nil } : gatherWires
        self.maxBytesInFlight = maxBytesInFlight
        self.pacing = pacing
        self.what = what
        next = .allocate(capacity: buckets.count)
        next.initialize(repeating: 0)
        active = .allocate(capacity: buckets.count)
        active.initialize(repeating: false)
        queue = .allocate(capacity: max(1, buckets.count))
        // The thread holds the reducer only while it serves, so a reducer no longer used is
        // freed (within a second) and its thread ends.
        let thread = Thread { [weak self] in
            while let reducer = self { reducer.serve() }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    deinit {
        next.deallocate(); active.deallocate(); queue.deallocate()
        staged.forEach { $0?.deallocate() }
    }

    /// Starts `bucket`'s reduction and returns at once; callable from any thread, one at a time.
    func start(_ bucket: Int) {
        lock.lock()
        precondition(enqueued - waited + partsPerBucket <= buckets.count, "a bucket started twice in one step")
        for part in (bucket * partsPerBucket)..<((bucket + 1) * partsPerBucket) {
            queue[enqueued % buckets.count] = part
            enqueued += 1
        }
        lock.unlock()
        work.signal()
    }

    /// Waits for every started bucket; returns the seconds from the first start to the last end
    /// (how long the network was busy).
    func waitAll() -> Double {
        lock.lock()
        let target = enqueued
        lock.unlock()
        let first = waited
        comm.whileWaiting(for: what) {
            beginWaiting()
            while waited < target { done.wait(); waited += 1 }
        }
        lock.lock()
        newStep = true
        waiting = false
        lock.unlock()
        return waited > first ? Double(lastEnd - firstStart) / 1e9 : 0
    }

    /// Waits for started `bucket` (and those started before it) to complete; returns at once
    /// when it is not started or was waited for already. From one waiting thread at a time.
    func wait(for bucket: Int) {
        precondition(partsPerBucket == 1, "a reducer of parts is waited for whole")
        lock.lock()
        let target = enqueued
        lock.unlock()
        var position = waited
        while position < target && queue[position % buckets.count] != bucket { position += 1 }
        guard position < target else { return }
        comm.whileWaiting(for: what) {
            beginWaiting()
            while waited <= position { done.wait(); waited += 1 }
        }
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

    /// Serves the buckets started until all are done; returns after a second with none started.
    private func serve() {
        guard work.wait(timeout: .now() + 1) == .success else { return }
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
                if (hurry && pacing.ranksHaveOwnCores) || hostPhaseActive || pacing.pollMicroseconds == 0 {
                    sched_yield()
                } else {
                    _ = wake.wait(timeout: .now() + .microseconds(Int(pacing.pollMicroseconds)))
                }
            }
        } while completed < started
    }

    /// Finishes and starts phases of the buckets in flight, in queue order.
    private func advance() {
        hostPhaseActive = false
        var previousStarted = Int.max   // phases the bucket before has started
        var inFlight = 0
        for i in completed..<started where active[queue[i % buckets.count]] { inFlight += bytes(queue[i % buckets.count]) }
        for i in completed..<started {
            let bucket = queue[i % buckets.count]
            if active[bucket] && requests[next[bucket]][bucket].test() {
                finish(phases[next[bucket]], bucket)
                active[bucket] = false
                next[bucket] += 1
                inFlight -= bytes(bucket)
            }
            if !active[bucket] && next[bucket] < phases.count && previousStarted > next[bucket] {
                if inFlight > 0 && inFlight + bytes(bucket) > maxBytesInFlight { break }
                begin(phases[next[bucket]], bucket)
                requests[next[bucket]][bucket].start()
                active[bucket] = true
                inFlight += bytes(bucket)
                peakBytesInFlight = max(peakBytesInFlight, inFlight)
            }
            previousStarted = next[bucket] + (active[bucket] ? 1 : 0)
            if active[bucket] && phases[next[bucket]].withinHost { hostPhaseActive = true }
        }
    }

    /// Bytes on the wire when every bucket has made its trip once (a step's parameter gather).
    var bytesPerRound: Int { buckets.indices.reduce(0) { $0 + bytes($1) } }

    private func bytes(_ bucket: Int) -> Int { gatherWires[bucket]?.bytes ?? buckets[bucket].count * MemoryLayout<Float>.stride }

    /// Puts `bucket`'s values on the wire for `phase`: bf16 sums round them into the staging
    /// copy; the mixed gather writes this rank's slice to its place.
    private func begin(_ phase: Phase, _ bucket: Int) {
        let values = buckets[bucket]
        if phase == .allReduce || phase == .reduceToOwner, let wire = staged[bucket] {
            goml_bf16_encode(values.baseAddress, wire.baseAddress, values.count)
        }
        if let gather = gatherWires[bucket] { gather.encode(values, rank: comm.rank) }
    }

    /// Takes `bucket`'s values off the wire after `phase`: widened where a bf16 sum arrived
    /// (every rank of an all-reduce, the owner of a reduce), the other slices of a mixed gather.
    private func finish(_ phase: Phase, _ bucket: Int) {
        if let gather = gatherWires[bucket] { return gather.decode(into: buckets[bucket], except: comm.rank) }
        guard phase == .allReduce || (phase == .reduceToOwner && owners[bucket] == comm.rank), let wire = staged[bucket] else { return }
        goml_bf16_decode(wire.baseAddress, buckets[bucket].baseAddress, wire.count)
    }
}
