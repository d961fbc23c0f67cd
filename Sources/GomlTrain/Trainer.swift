// Trainer: one data-parallel training step and distributed evaluation, per SPEC.
// Every rank runs the same code on its shard; all communication goes through `Communicator`.
// A step allocates nothing: buffers are made once here.

import Foundation
import GomlCore

public struct StepTimings: Sendable {
    public var forward = 0.0, backward = 0.0, reduce = 0.0, optimizer = 0.0
    /// Seconds the gradient all-reduce kept the network busy; with overlap most of it runs
    /// during backward, so it is not a phase of the step (`reduce` is what was left exposed).
    public var communication = 0.0
    public var total: Double { forward + backward + reduce + optimizer }
}

/// How the gradient all-reduce runs (allreduce mode); none of it changes the model's maths
/// beyond float32 summation order, except bf16 compression.
public struct CommunicationSettings: Sendable {
    /// Start each bucket's all-reduce while backward computes earlier layers.
    public var overlap = true
    /// Bucket size; measured on the two-host cluster (docs/multihost-bench.md).
    public var bucketBytes = 1_000_000
    public var compression = GradientCompression.none
    /// Several ranks per host on several hosts: reduce inside each host first, so one copy
    /// per host crosses the network. Off by default: slower on the test cluster despite half
    /// the bytes (docs/multihost-bench.md).
    public var hierarchical = false
    public init() {}
}

public struct StepResult: Sendable {
    public let step: Int
    public let loss: Double
    public let gradNorm: Double
    public let lr: Double
    public let timings: StepTimings
    public var finite: Bool { loss.isFinite && gradNorm.isFinite }
}

public final class Trainer {
    public let options: TrainingOptions
    public let comm: Communicator
    public let layout: ParameterLayout
    public let params: FloatBuffer, grads: FloatBuffer
    public let optimizer: AdamW
    public var sampler: BatchSampler
    /// Steps completed so far.
    public var step = 0
    /// Fault injection for tests (hidden --fault-gradient-scale): the reduced gradient times the
    /// world size, as summing the ranks' mean gradients instead of averaging them would leave it.
    public var faultGradientScale = false

    /// Read-only views of the corpus (mapped files): nothing is copied.
    private let train: ByteSource, validation: ByteSource
    public var trainBytes: Int { train.count }
    public var validationBytes: Int { validation.count }
    /// One model per worker thread; workers split this rank's shard (allreduce mode).
    private let models: [Transformer]
    private var model: Transformer { models[0] }
    private let workerShards: [Range<Int>]
    private let workerGrads: [FloatBuffer]   // worker i > 0 accumulates here; worker 0 into grads
    private let pool: WorkerPool
    private var workerTimings = StepTimings()
    private let tree: TreeReducer?
    private let overlapped: OverlappedReduction?
    private let communication: CommunicationSettings
    /// Allreduce mode: each worker runs its sequences as `microBatchesPerWorker` forward/backward
    /// passes of `models[i].batch` sequences, accumulating gradients (one all-reduce per step).
    private let microBatchesPerWorker: Int
    private let myShard: Range<Int>
    private var offsets: [Int]
    /// [B] global slots of per-sequence loss sums; this rank fills its own, the rest stay 0.
    private let sequenceLosses: UnsafeMutableBufferPointer<Double>
    private var evalLosses: [Double]         // [evalBatches·B]
    private let tokensPerStep: Int

    /// `workers` threads split this rank's sequences (allreduce mode; each should then use
    /// one BLAS thread); the exact reduction always uses one.
    public init(options: TrainingOptions, comm: Communicator, split: TextSplit, workers requested: Int = 1,
                communication: CommunicationSettings = CommunicationSettings()) throws {
        try options.validate(worldSize: comm.size)
        try split.check(seqLen: options.model.seqLen)
        self.options = options
        self.comm = comm
        layout = ParameterLayout(options.model)
        params = FloatBuffer(count: layout.count)
        grads = FloatBuffer(count: layout.count)
        optimizer = AdamW(layout: layout, config: options.optimizer)
        let T = options.model.seqLen
        train = split.train
        validation = split.validation
        sampler = BatchSampler(seed: options.seed, batch: options.batch, seqLen: T, dataCount: split.train.count)
        let mine = shard(batch: options.batch, rank: comm.rank, worldSize: comm.size)
        myShard = mine
        let grads = self.grads, count = layout.count
        switch options.reduction {
        case .allReduce:
            // Workers split whole micro-batches; without --micro-batch each worker's share is one.
            let microBatches = options.microBatch.map { mine.count / $0 } ?? mine.count
            let workers = Trainer.workerCount(requested: requested, sequences: microBatches)
            let per = mine.count / workers
            microBatchesPerWorker = options.microBatch == nil ? 1 : microBatches / workers
            workerShards = (0..<workers).map { (mine.lowerBound + $0 * per)..<(mine.lowerBound + ($0 + 1) * per) }
            models = (0..<workers).map { _ in Transformer(config: options.model, batch: options.microBatch ?? per, products: makeProducts(options.precision)) }
            workerGrads = [grads] + (1..<workers).map { _ in FloatBuffer(count: count) }
            tree = nil
            overlapped = communication.overlap
                ? OverlappedReduction(layout: layout, bucketBytes: communication.bucketBytes, workerGrads: workerGrads,
                                      comm: comm, compression: communication.compression,
                                      hierarchical: communication.hierarchical)
                : nil
            if !communication.overlap && communication.compression != .none {
                // After backward, compressed: the whole gradient as one bucket of the same machinery.
                comm.prepareNonBlockingSums([grads.pointer], compression: communication.compression,
                                            hierarchical: communication.hierarchical)   // one bucket
            }
        case .exact:
            workerShards = [mine]
            models = [Transformer(config: options.model, batch: options.exactMicroBatch, products: makeProducts(options.precision))]
            workerGrads = [grads]
            tree = TreeReducer(result: grads, leaves: options.batch / options.exactMicroBatch)
            overlapped = nil
            microBatchesPerWorker = 1
        }
        self.communication = communication
        finalPass = .allocate(capacity: models.count)
        finalPass.initialize(repeating: false)
        pool = WorkerPool(count: models.count)
        offsets = Array(repeating: 0, count: options.batch)
        sequenceLosses = .allocate(capacity: options.batch)
        sequenceLosses.initialize(repeating: 0)
        evalLosses = Array(repeating: 0, count: options.evalBatches * options.batch)
        tokensPerStep = options.batch * T
        pool.launch { [unowned self] worker in self.forwardBackward(worker: worker) }
        if let overlapped {
            for (worker, model) in models.enumerated() {
                model.gradientsFinal = { [unowned self] offset in
                    if self.finalPass[worker] { overlapped.workerReached(worker, offset: offset) }
                }
            }
        }
    }

    /// Per worker: true during its last micro-batch, whose backward makes its gradients final.
    private let finalPass: UnsafeMutableBufferPointer<Bool>

    /// Activation memory of this rank: every worker's model for one micro-batch.
    public var activationBytes: Int { models.reduce(0) { $0 + $1.activationBytes } }
    public var microBatch: Int { model.batch }

    deinit { sequenceLosses.deallocate(); finalPass.deallocate() }

    /// The largest worker count ≤ requested that splits `sequences` evenly.
    public static func workerCount(requested: Int, sequences: Int) -> Int {
        var n = max(1, min(requested, sequences))
        while sequences % n != 0 { n -= 1 }
        return n
    }

    public var workers: Int { models.count }

    /// Forward and backward of one worker's sequences, micro-batch by micro-batch: the first
    /// overwrites its gradient buffer, the others accumulate into it.
    private func forwardBackward(worker: Int) {
        let model = models[worker], grads = workerGrads[worker], micro = model.batch
        var forward: UInt64 = 0
        for k in 0..<microBatchesPerWorker {
            let first = workerShards[worker].lowerBound + k * micro, range = first..<(first + micro)
            load(sequences: range, into: model, from: train, offsets: offsets)
            let start = DispatchTime.now().uptimeNanoseconds
            model.forward(UnsafePointer(params.base), gradScale: 1 / Float(tokensPerStep))
            forward += DispatchTime.now().uptimeNanoseconds - start
            finalPass[worker] = k == microBatchesPerWorker - 1
            model.backward(UnsafePointer(params.base), grads.base, accumulate: k > 0)
            for (row, g) in range.enumerated() { sequenceLosses[g] = model.lossSum(sequence: row) }
        }
        if worker == 0 { workerTimings.forward = Double(forward) / 1e9 }
    }

    /// Rank 0 draws SPEC's initialisation from the seed and broadcasts it, so replicas start identical.
    public func initialiseParameters() {
        if comm.isRoot {
            var rng = Xoshiro256(seed: options.seed)
            layout.initialise(params.pointer, rng: &rng)
        }
        comm.broadcast(UnsafeMutableRawBufferPointer(params.pointer), root: 0)
    }

    /// Loads sequences `range` of a batch (their start offsets) into the model's rows.
    private func load(sequences range: Range<Int>, into model: Transformer, from data: ByteSource, offsets: [Int]) {
        for (row, g) in range.enumerated() {
            fillSequence(tokens: model.tokens, targets: model.targets, row: row, from: data, offset: offsets[g],
                         seqLen: model.seqLen)
        }
    }

    /// The pages this step's sequences were read from leave the process (see ByteSourceOwner).
    private func releaseSequences(_ range: Range<Int>) {
        for g in range { train.releasePages(offset: offsets[g], count: options.model.seqLen + 1) }
    }

    private var timings = StepTimings()
    private var clock: UInt64 = 0

    /// Charges the time since the last lap to `phase`.
    private func lap(_ phase: WritableKeyPath<StepTimings, Double>) {
        let now = DispatchTime.now().uptimeNanoseconds
        timings[keyPath: phase] += Double(now - clock) / 1e9
        clock = now
    }

    /// Leaf `leaf` of the exact reduction tree: one micro-shard's gradient, overwriting `buffer`.
    private func microShardGradient(_ leaf: Int, into buffer: FloatBuffer) {
        lap(\.reduce)   // the tree additions since the previous leaf
        let micro = options.exactMicroBatch, first = leaf * micro
        load(sequences: first..<(first + micro), into: model, from: train, offsets: offsets)
        model.forward(UnsafePointer(params.base), gradScale: 1 / Float(tokensPerStep))
        lap(\.forward)
        model.backward(UnsafePointer(params.base), buffer.base, accumulate: false)
        lap(\.backward)
        for row in 0..<micro { sequenceLosses[first + row] = model.lossSum(sequence: row) }
    }

    /// One optimiser step on the next global batch. Every rank returns the same result.
    public func trainStep() -> StepResult {
        let attempted = step + 1
        timings = StepTimings()
        clock = DispatchTime.now().uptimeNanoseconds
        sampler.next(into: &offsets)
        sequenceLosses.update(repeating: 0)
        if let tree {
            let micro = options.exactMicroBatch
            tree.reduceLocal((myShard.lowerBound / micro)..<(myShard.upperBound / micro)) { leaf, buffer in
                microShardGradient(leaf, into: buffer)
            }
            releaseSequences(myShard)
            tree.reduceAcrossRanks(comm)
        } else {
            overlapped?.beginStep()
            pool.run()
            releaseSequences(myShard)
            // Other workers finish within worker 0's time (equal shards): the wait counts as backward.
            timings.forward = workerTimings.forward
            timings.backward = Double(DispatchTime.now().uptimeNanoseconds - clock) / 1e9 - timings.forward
            clock = DispatchTime.now().uptimeNanoseconds
            if let overlapped {
                timings.communication = overlapped.finishStep()
            } else {
                for extra in workerGrads.dropFirst() { grads.add(extra.base) }
                if communication.compression == .none {
                    comm.allReduceSum(grads.pointer)
                } else {
                    comm.startAllReduceSum(bucket: 0)
                    _ = comm.waitForAllReduces()
                }
                timings.communication = Double(DispatchTime.now().uptimeNanoseconds - clock) / 1e9
            }
        }
        // Each slot is non-zero on one rank only, so this sum is exact; then a fixed-order total.
        comm.allReduceSum(sequenceLosses)
        lap(\.reduce)
        var lossSum = 0.0
        for value in sequenceLosses { lossSum += value }
        let loss = lossSum / Double(tokensPerStep)
        if faultGradientScale { for i in grads.pointer.indices { grads.pointer[i] *= Float(comm.size) } }
        // The reduced gradient is identical on every rank, so its norm and the stop decision are too.
        let norm = globalNorm(UnsafeBufferPointer(grads.pointer))
        let lr = options.schedule.rate(atStep: attempted)
        if loss.isFinite && norm.isFinite {
            optimizer.update(params.base, grads: grads.base, lr: lr,
                             gradScale: clipScale(norm: norm, maxNorm: options.optimizer.gradClip))
            step = attempted
        }
        lap(\.optimizer)
        return StepResult(step: attempted, loss: loss, gradNorm: norm, lr: lr, timings: timings)
    }

    /// SPEC's validation loss: the fixed validation sequences split evenly over ranks, each
    /// sequence's loss reduced exactly, batch means averaged in order. Collective.
    public func evaluate() -> Double {
        let B = options.batch, T = options.model.seqLen, count = options.evalBatches * B
        let all = validationOffsets(validationCount: validation.count, seqLen: T, count: count)
        let mine = shard(batch: count, rank: comm.rank, worldSize: comm.size)
        for i in evalLosses.indices { evalLosses[i] = 0 }
        var start = mine.lowerBound
        while start < mine.upperBound {
            // A short final chunk repeats its last sequence in the spare rows; those losses are not used.
            let end = min(start + model.batch, mine.upperBound)
            let chunk = (start..<end).map { all[$0] } + Array(repeating: all[end - 1], count: model.batch - (end - start))
            load(sequences: 0..<model.batch, into: model, from: validation, offsets: chunk)
            for offset in chunk { validation.releasePages(offset: offset, count: T + 1) }
            model.forward(UnsafePointer(params.base))
            for g in start..<end { evalLosses[g] = model.lossSum(sequence: g - start) }
            start = end
        }
        evalLosses.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        var total = 0.0
        for b in 0..<options.evalBatches {
            var batchSum = 0.0
            for s in 0..<B { batchSum += evalLosses[b * B + s] }
            total += batchSum / Double(B * T)
        }
        return total / Double(options.evalBatches)
    }

    /// Replicas that drifted apart by one bit disagree on this.
    public func parameterChecksum() -> UInt64 { contentChecksum(UnsafeBufferPointer(params.pointer)) }
}
