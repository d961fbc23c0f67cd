// ShardedAllReduce: `--reduction allreduce` on several ranks unless `--no-shard` (ZeRO stage 1,
// llm.c's `-z 1`). Every rank holds the whole parameters and its workers' gradients, but each
// rank owns one slice of every gradient bucket: the buckets are reduce-scattered (during
// backward, as the all-reduce's are started; float32, or bfloat16 with --grad-compression
// bf16), so a rank receives the summed gradient of its slices only (every rank on one host at
// float32: HostSum adds them from the ranks' shared memory after backward instead); the global
// norm comes from the slices' squared norms; AdamW updates the slices alone (split over the
// rank's worker threads), with moments for them alone (1/N of the optimizer state); each
// bucket's all-gather starts once every thread has updated its piece, and the next step's
// forward waits for each bucket just before it first reads it (FSDP's prefetch; on one host,
// HostGather copies the other ranks' slices once every rank is done instead). Losses match the
// replicated all-reduce to float32 rounding. At bf16 (synchronous runs) the matrices travel as
// bfloat16, rounded as the products round them when they read them: a rank holds its own
// slices as float32 master weights, the others' as bf16 values.

import Foundation
import GomlComm
import GomlCore

/// Which slice of each bucket each rank owns: rank r the r-th ⌈n/N⌉ elements of a bucket of n
/// (the last slices shorter or empty: llm.c's padding, left implicit).
struct ShardLayout {
    /// In the order backward finishes them (see `gradientBuckets`).
    let buckets: [Range<Int>]
    let ranks: Int

    /// Elements of `bucket` each rank owns, in rank order.
    func counts(_ bucket: Int) -> [Int] {
        (0..<ranks).map { slice(bucket, rank: $0).count }
    }

    /// The parameters of `bucket` that `rank` owns.
    func slice(_ bucket: Int, rank: Int) -> Range<Int> {
        let range = buckets[bucket], chunk = (range.count + ranks - 1) / ranks
        let start = range.lowerBound + min(range.count, rank * chunk)
        return start..<(range.lowerBound + min(range.count, (rank + 1) * chunk))
    }
}

public final class ShardedAllReduce: DataParallelStrategy {
    public let passes: PassPlan
    /// [P] whole on every rank: forward and backward read all of it; a rank writes its slices.
    /// On one host, a segment of shared memory from the ranks' connecting on.
    public private(set) var parameters: FloatBuffer
    /// Moments of this rank's slices only, packed in forward bucket order.
    public let optimizer: AdamW
    /// AdamW on the rank's worker threads; each bucket's gather starts once its slice is
    /// updated. Made at its first use, when the gradient sum is where it stays.
    private lazy var update = ParallelAdamW(optimizer: optimizer, parameters: parameters.base,
                                            gradient: gradients.sum.base) { [unowned self] in self.startGather(forwardIndex: $0) }
    private let gradients: WorkerGradients
    private let shards: ShardLayout
    private var reduction: BucketedReduction
    /// Every rank on this host, float32 sums: the gradient sum and the parameters are to move
    /// to shared memory (HostSum, HostGather) when the ranks connect.
    private var toMove: Bool
    /// The gradients are summed in shared memory.
    private var sumsInSharedMemory = false
    private let comm: Communicator
    private let settings: CommunicationSettings
    /// Buckets in forward order: the order slices are updated and gathered.
    private let forwardOrder: [Int]
    private let layout: ParameterLayout
    /// Product operands travel as bfloat16: another rank's slices of them hold bf16 values.
    private let bf16Weights: Bool
    /// The parameter ranges the all-gather carries as bf16 (none unless `bf16Weights`).
    private let bf16Operands: [Range<Int>]
    /// Per bucket: where this rank's moments of it start.
    private let momentOffsets: [Int]
    /// This rank's squared-norm share, and every rank's, in rank order. [1], [N]
    private let partialNorm: UnsafeMutableBufferPointer<Double>, partialNorms: UnsafeMutableBufferPointer<Double>
    /// How the other ranks' updated slices arrive: the all-gather, bucket by bucket as each slice
    /// is updated, or on one host a copy from their shared memory once every rank is done.
    private enum ParameterGather {
        case allGather(Reducer)
        case sharedMemory(HostGather)
    }
    private var gather: ParameterGather
    public var gatherPeakBytesInFlight: Int {
        if case .allGather(let gathers) = gather { gathers.peakBytesInFlight } else { 0 }
    }
    public var gatherBytesPerStep: Int {
        if case .allGather(let gathers) = gather { gathers.bytesPerRound } else { 0 }
    }

    public static func validate(_ options: TrainingOptions, communication: CommunicationSettings, worldSize: Int) throws {
        try PassPlan.validateMicroBatches(options, worldSize: worldSize)
        if communication.hierarchical {
            throw ConfigError("--hierarchical applies to the replicated all-reduce; add --no-shard to use it")
        }
    }

    public init(options: TrainingOptions, layout: ParameterLayout, comm: Communicator, shard: Range<Int>, workers requested: Int,
                communication: CommunicationSettings) {
        passes = Self.passPlan(options, shard: shard, workers: requested)
        parameters = FloatBuffer(count: layout.count)
        let gradients = WorkerGradients(workers: passes.workers, count: layout.count)
        self.gradients = gradients
        let shards = ShardLayout(buckets: gradientBuckets(layout, bucketBytes: communication.bucketBytes), ranks: comm.size)
        self.shards = shards
        forwardOrder = shards.buckets.indices.reversed()
        // The reduce-scatter sums a rank's slices in place: gradient and parameters share offsets.
        let owned = forwardOrder.map { (parameters: shards.slice($0, rank: comm.rank), gradient: shards.slice($0, rank: comm.rank).lowerBound) }
        bf16Weights = communication.bf16Weights && options.precision == .bf16
        self.layout = layout
        optimizer = AdamW(layout: layout, config: options.optimizer, owned: owned)
        var offsets = Array(repeating: 0, count: shards.buckets.count), next = 0
        for (bucket, slice) in zip(forwardOrder, owned) { offsets[bucket] = next; next += slice.parameters.count }
        momentOffsets = offsets
        bf16Operands = bf16Weights ? layout.productOperands.map(\.range) : []
        let reducers = Self.reducers(comm, shards: shards, gradient: gradients.sum, parameters: parameters,
                                     bf16Operands: bf16Operands, communication: communication)
        gather = .allGather(reducers.allGather)
        reduction = BucketedReduction(buckets: shards.buckets, gradients: gradients, reducer: reducers.reduceScatter)
        partialNorm = .allocate(capacity: 1)
        partialNorm.initialize(repeating: 0)
        partialNorms = .allocate(capacity: comm.size)
        partialNorms.initialize(repeating: 0)
        self.comm = comm
        settings = communication
        toMove = Self.sharesMemory(comm, communication)
        arrived = shards.buckets.count
    }

    /// The reduce-scatter and the all-gather over `gradient` and `parameters`, bucket by bucket
    /// (no collective: each request is made at its first start).
    private static func reducers(_ comm: Communicator, shards: ShardLayout, gradient: FloatBuffer, parameters: FloatBuffer, bf16Operands: [Range<Int>],
                                 communication: CommunicationSettings) -> (reduceScatter: Reducer, allGather: Reducer) {
        Reducer.sharded(comm, buckets: shards.buckets.indices.map { b in
            let bucket = shards.buckets[b]
            return ShardedBucket(gradient: UnsafeMutableBufferPointer(rebasing: gradient.pointer[bucket]),
                                 parameters: UnsafeMutableBufferPointer(rebasing: parameters.pointer[bucket]), counts: shards.counts(b),
                                 bf16Ranges: bf16Operands.map { $0.clamped(to: bucket) }.filter { !$0.isEmpty }
                                    .map { ($0.lowerBound - bucket.lowerBound)..<($0.upperBound - bucket.lowerBound) })
        }, compression: communication.compression, pacing: communication.pacing)
    }

    /// Shared memory needs every rank on one host, and float32 on the "wire" (bf16 compression
    /// rounds what travels; nothing travels here).
    private static func sharesMemory(_ comm: Communicator, _ settings: CommunicationSettings) -> Bool {
        settings.sharedMemory && settings.compression == .none && comm.size > 1 && comm.localSize == comm.size
    }

    deinit { partialNorm.deallocate(); partialNorms.deallocate() }

    public var summary: String {
        let when = sumsInSharedMemory ? "gradients summed from this host's shared memory after backward"
            : settings.overlap ? String(format: "reduce-scatter overlapped with backward in %.1f MB buckets", Double(settings.bucketBytes) / 1e6)
            : "reduce-scatter after backward"
        let wire = settings.compression == .none ? "" : ", \(settings.compression.rawValue) on the wire"
        let weights = bf16Weights ? ", matrices gathered as bf16" : ""
        let arrival = if case .sharedMemory = gather { "the other ranks' slices copied from this host's shared memory after it" }
            else { "all-gather of parameters\(weights) awaited per bucket by the next forward" }
        return "allreduce sharded over \(comm.size) ranks (\(when)\(wire), AdamW on each rank's 1/\(comm.size), \(arrival); --no-shard replicates)"
    }

    public func beginStep() {
        connect()
        reduction.beginStep()
    }

    /// Moves the gradient sum and the parameters to shared memory, where they are to go and the
    /// host has room (else the communicator's reduce-scatter, or all-gather, stays).
    public func connect() {
        guard toMove else { return }
        toMove = false
        moveSum()
        moveParameters()
        // What still goes through the all-gather: at bf16 its wire is the gradient memory.
        if case .allGather = gather, sumsInSharedMemory {
            gather = .allGather(Self.reducers(comm, shards: shards, gradient: gradients.sum, parameters: parameters,
                                              bf16Operands: bf16Operands, communication: settings).allGather)
        }
    }

    private func moveSum() {
        guard let shared = comm.sharedFloats(count: parameters.count) else { return }
        sumsInSharedMemory = true
        gradients.placeSum(in: shared.segments[comm.rank], ownedBy: shared)
        let slices = shards.buckets.indices.map { shards.slice($0, rank: comm.rank) }
        reduction = BucketedReduction(buckets: shards.buckets, gradients: gradients, reducer: HostSum(shared, rank: comm.rank, slices: slices))
    }

    /// Between steps (nothing in flight): the rank's parameters, whole, into its segment.
    private func moveParameters() {
        guard let shared = comm.sharedFloats(count: parameters.count) else { return }
        let values = parameters
        parameters = FloatBuffer(in: shared.segments[comm.rank], ownedBy: shared)
        _ = parameters.pointer.update(fromContentsOf: values.pointer)
        // The all-gather's reducer goes with it (never started, it holds no request), and its thread.
        gather = .sharedMemory(HostGather(shared, rank: comm.rank, shards: shards))
    }

    /// A worker's first pass overwrites its buffer, later micro-batches add to it.
    public func gradientBuffer(worker: Int, pass: Int) -> (buffer: FloatBuffer, accumulate: Bool) {
        (gradients.buffers[worker], pass > 0)
    }

    public func gradientsFinal(worker: Int, from offset: Int) {
        if settings.overlap { reduction.workerReached(worker, offset: offset) }
    }

    public func passFinished(worker: Int, pass: Int) {}

    public func reduce() -> Double {
        reduction.allWorkersFinal()
        return reduction.finishStep()
    }

    /// This rank's summed slices, in place; the rest is this rank's own gradient.
    public var reducedGradient: UnsafeMutableBufferPointer<Float> { gradients.sum.pointer }

    /// This rank's summed gradient of `bucket`'s slice.
    private func reducedSlice(_ bucket: Int) -> UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(rebasing: gradients.sum.pointer[shards.slice(bucket, rank: comm.rank)])
    }

    /// The squared norm of each rank's slices, added in rank order on every rank: all ranks
    /// compute the same norm bit for bit, so they clip and skip alike.
    public func squaredGradientNorm() -> Double {
        var partial = 0.0
        for bucket in forwardOrder { partial += sumOfSquares(reducedSlice(bucket)) }
        partialNorm[0] = partial
        comm.allGather(UnsafeBufferPointer(partialNorm), into: partialNorms)
        var total = 0.0
        for value in partialNorms { total += value }
        return total
    }

    /// AdamW on this rank's slices, each bucket's all-gather started as its slice is done; on
    /// one host, the other ranks' slices copied once every rank is done.
    public func update(lr: Double, gradScale: Float, threads: WorkerPool) {
        update.update(lr: lr, gradScale: gradScale, threads: threads)
        if case .sharedMemory(let copy) = gather {
            while settings.faultLostDuringGather { sleep(3600) }
            return copy.copy()
        }
        arrivalLock.lock()
        arrived = 0
        arrivalLock.unlock()
    }

    /// Buckets (in forward order) whose all-gather has been waited for since it started: all of
    /// them until the first update. Under `arrivalLock`: every worker's forward asks.
    private var arrived: Int
    private let arrivalLock = NSLock()

    /// Waits for the gathers of the buckets holding parameters below `offset`, in forward order,
    /// each once whichever worker asks first.
    public func parametersNeeded(upTo offset: Int) {
        arrivalLock.lock()
        defer { arrivalLock.unlock() }
        while settings.faultLostDuringGather && arrived < forwardOrder.count { sleep(3600) }
        guard case .allGather(let gathers) = gather else { return }   // copied whole in update
        while arrived < forwardOrder.count && shards.buckets[forwardOrder[arrived]].lowerBound < offset {
            gathers.wait(for: forwardOrder[arrived])
            arrived += 1
        }
    }

    public func waitForParameters() { parametersNeeded(upTo: parameters.count) }

    /// Starts the all-gather of forward bucket `forwardIndex`, its slice being updated; every
    /// rank starts all of them in forward order, its empty slices included.
    private func startGather(forwardIndex: Int) {
        guard !settings.faultLostDuringGather, case .allGather(let gathers) = gather else { return }
        gathers.start(forwardOrder[forwardIndex])
    }

    /// The slices are gathered to each writer in turn (m into the gradient buffer, unused between
    /// steps, v into a temporary one, and at bf16 the master weights, each rank's own slices,
    /// into another), which then holds the whole state while it writes.
    public func withWholeState(at writers: [Int], _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows {
        let m = gradients.sum.pointer, writes = writers.contains(comm.rank)
        let v = UnsafeMutableBufferPointer<Float>.allocate(capacity: writes ? m.count : 0)
        let masters = UnsafeMutableBufferPointer<Float>.allocate(capacity: writes && bf16Weights ? m.count : 0)
        defer { v.deallocate(); masters.deallocate() }
        for writer in writers {
            for (whole, slice) in [(m, { self.mine(self.optimizer.m, $0) }), (v, { self.mine(self.optimizer.v, $0) })]
                + (bf16Weights ? [(masters, { UnsafeBufferPointer(rebasing: self.parameters.pointer[self.shards.slice($0, rank: self.comm.rank)]) })] : []) {
                for bucket in forwardOrder {
                    comm.gather(slice(bucket), into: UnsafeMutableBufferPointer(rebasing: whole[comm.rank == writer ? shards.buckets[bucket] : 0..<0]),
                                counts: shards.counts(bucket), root: writer)
                }
            }
        }
        if writes { try body(UnsafeBufferPointer(bf16Weights ? masters : parameters.pointer), UnsafeBufferPointer(m), UnsafeBufferPointer(v)) }
    }

    /// At bf16 a rank's own slices of the matrices are float32, the others' bf16: the checksum
    /// reads the matrices rounded to bf16, as the products read them (copied into the gradient
    /// buffer, unused between steps).
    public func parameterChecksum() -> UInt64 {
        guard bf16Weights else { return contentChecksum(UnsafeBufferPointer(parameters.pointer)) }
        let view = gradients.sum.pointer
        _ = view.update(fromContentsOf: parameters.pointer)
        for tensor in layout.productOperands { roundToBFloat16(UnsafeMutableBufferPointer(rebasing: view[tensor.range])) }
        return contentChecksum(UnsafeBufferPointer(view))
    }

    public func loadWholeOptimizerState(m: UnsafeBufferPointer<Float>?, v: UnsafeBufferPointer<Float>?, root: Int) {
        let none = UnsafeBufferPointer<Float>(start: nil, count: 0)
        for (moments, whole) in [(optimizer.m, m), (optimizer.v, v)] {
            for bucket in forwardOrder {
                comm.scatter(whole.map { UnsafeBufferPointer(rebasing: $0[shards.buckets[bucket]]) } ?? none, counts: shards.counts(bucket),
                             into: UnsafeMutableBufferPointer(mutating: mine(moments, bucket)), root: root)
            }
        }
    }

    /// This rank's moments of `bucket`.
    private func mine(_ moments: UnsafeMutableBufferPointer<Float>, _ bucket: Int) -> UnsafeBufferPointer<Float> {
        let start = momentOffsets[bucket]
        return UnsafeBufferPointer(rebasing: moments[start..<(start + shards.slice(bucket, rank: comm.rank).count)])
    }
}
