// Trainer: one data-parallel training step and distributed evaluation, per SPEC.
// Every rank runs the same code on its shard; all communication goes through `Communicator`.
// A step allocates nothing: buffers are made once here.

import Foundation
import GomlCore

public struct StepTimings: Sendable {
    public var forward = 0.0, backward = 0.0, reduce = 0.0, optimizer = 0.0
    public var total: Double { forward + backward + reduce + optimizer }
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

    private let train: [UInt8], validation: [UInt8]
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
    private let myShard: Range<Int>
    private var offsets: [Int]
    /// [B] global slots of per-sequence loss sums; this rank fills its own, the rest stay 0.
    private let sequenceLosses: UnsafeMutableBufferPointer<Double>
    private var evalLosses: [Double]         // [evalBatches·B]
    private let tokensPerStep: Int

    /// `workers` threads split this rank's sequences (allreduce mode; each should then use
    /// one BLAS thread); the exact reduction always uses one.
    public init(options: TrainingOptions, comm: Communicator, split: TextSplit, workers requested: Int = 1) throws {
        try options.validate(worldSize: comm.size)
        try split.check(seqLen: options.model.seqLen, source: "data")
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
            let workers = Trainer.workerCount(requested: requested, sequences: mine.count)
            let per = mine.count / workers
            workerShards = (0..<workers).map { (mine.lowerBound + $0 * per)..<(mine.lowerBound + ($0 + 1) * per) }
            models = (0..<workers).map { _ in Transformer(config: options.model, batch: per, products: makeProducts(options.precision)) }
            workerGrads = [grads] + (1..<workers).map { _ in FloatBuffer(count: count) }
            tree = nil
        case .exact:
            workerShards = [mine]
            models = [Transformer(config: options.model, batch: options.microBatch, products: makeProducts(options.precision))]
            workerGrads = [grads]
            tree = TreeReducer(result: grads, leaves: options.batch / options.microBatch)
        }
        pool = WorkerPool(count: models.count)
        offsets = Array(repeating: 0, count: options.batch)
        sequenceLosses = .allocate(capacity: options.batch)
        sequenceLosses.initialize(repeating: 0)
        evalLosses = Array(repeating: 0, count: options.evalBatches * options.batch)
        tokensPerStep = options.batch * T
        pool.launch { [unowned self] worker in self.forwardBackward(worker: worker) }
    }

    deinit { sequenceLosses.deallocate() }

    /// The largest worker count ≤ requested that splits `sequences` evenly.
    public static func workerCount(requested: Int, sequences: Int) -> Int {
        var n = max(1, min(requested, sequences))
        while sequences % n != 0 { n -= 1 }
        return n
    }

    public var workers: Int { models.count }

    /// Forward and backward of one worker's sequences, overwriting its gradient buffer.
    private func forwardBackward(worker: Int) {
        let model = models[worker], range = workerShards[worker], grads = workerGrads[worker]
        load(sequences: range, into: model, from: train, offsets: offsets)
        let start = DispatchTime.now().uptimeNanoseconds
        model.forward(UnsafePointer(params.base), gradScale: 1 / Float(tokensPerStep))
        let middle = DispatchTime.now().uptimeNanoseconds
        model.backward(UnsafePointer(params.base), grads.base, accumulate: false)
        if worker == 0 {
            workerTimings.forward = Double(middle - start) / 1e9
            workerTimings.backward = Double(DispatchTime.now().uptimeNanoseconds - middle) / 1e9
        }
        for (row, g) in range.enumerated() { sequenceLosses[g] = model.lossSum(sequence: row) }
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
    private func load(sequences range: Range<Int>, into model: Transformer, from data: [UInt8], offsets: [Int]) {
        data.withUnsafeBufferPointer { bytes in
            for (row, g) in range.enumerated() {
                fillSequence(tokens: model.tokens, targets: model.targets, row: row, from: bytes, offset: offsets[g],
                             seqLen: model.seqLen)
            }
        }
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
        let micro = options.microBatch, first = leaf * micro
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
            let micro = options.microBatch
            tree.reduceLocal((myShard.lowerBound / micro)..<(myShard.upperBound / micro)) { leaf, buffer in
                microShardGradient(leaf, into: buffer)
            }
            tree.reduceAcrossRanks(comm)
        } else {
            pool.run()
            // Other workers finish within worker 0's time (equal shards): the wait counts as backward.
            timings.forward = workerTimings.forward
            timings.backward = Double(DispatchTime.now().uptimeNanoseconds - clock) / 1e9 - timings.forward
            clock = DispatchTime.now().uptimeNanoseconds
            for extra in workerGrads.dropFirst() { grads.add(extra.base) }
            comm.allReduceSum(grads.pointer)
        }
        // Each slot is non-zero on one rank only, so this sum is exact; then a fixed-order total.
        comm.allReduceSum(sequenceLosses)
        lap(\.reduce)
        var lossSum = 0.0
        for value in sequenceLosses { lossSum += value }
        let loss = lossSum / Double(tokensPerStep)
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
