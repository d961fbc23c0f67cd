// ScalingPlan: what a data-parallel job would do on hosts not yet booked (`goml-dist plan`):
// for each strategy (replicated, sharded, each with or without bf16 gradients, DiLoCo at each
// H) the step time, tokens/s, efficiency against one rank alone, exposed communication,
// bytes and memory per rank. A value-in, value-out model of what the trainer does
// (docs/scaling.md): one rank's measured compute, the trainer's buckets and their order, the
// collectives' messages as libnbc sends them (CollectiveCost) and when each can start. Knows
// nothing of MPI; PlanReport turns it into text, JSON and advice.

import Foundation
import GomlComm
import GomlCore

/// One rank's compute per step, alone (no communication), at `batch` sequences: what `bench`
/// measures (forward_ms, backward_ms, optimizer_ms).
public struct PlanCompute: Sendable {
    public var forward: Double, backward: Double, optimizer: Double   // seconds
    public var batch: Int
    public var precision: Precision
    public var source: String

    public init(forward: Double, backward: Double, optimizer: Double, batch: Int, precision: Precision, source: String) {
        self.forward = forward; self.backward = backward; self.optimizer = optimizer
        self.batch = batch; self.precision = precision; self.source = source
    }

    /// At `sequences` per rank: forward and backward scale per sequence; AdamW does not.
    func at(sequences: Int) -> PlanCompute {
        var c = self, scale = Double(sequences) / Double(batch)
        c.forward *= scale; c.backward *= scale; c.batch = sequences
        return c
    }

    var alone: Double { forward + backward + optimizer }
}

/// What the user asked to plan.
public struct PlanInputs: Sendable {
    public var model: ModelConfig
    /// The model as the user named it (a preset, or its dimensions).
    public var name: String
    public var batch: Int
    public var microBatch: Int? = nil
    public var topology: PlanTopology
    public var threads: Int
    public var link: LinkModel
    /// Where the link's figures come from.
    public var linkSource: String
    public var compute: PlanCompute
    /// DiLoCo's H values (1 is the synchronous rows).
    public var syncEvery: [Int] = [1, 10, 50]
    public var bucketBytes = CommunicationSettings().bucketBytes
    /// The sharded all-gather's window (ReducerPacing().gatherBytesInFlight).
    public var gatherBytesInFlight: Int
    /// Bytes each host can give the job, and where that figure comes from.
    public var hostMemory: Int? = nil
    public var hostMemorySource = ""

    public init(model: ModelConfig, name: String, batch: Int, topology: PlanTopology, threads: Int, link: LinkModel, linkSource: String,
                compute: PlanCompute, gatherBytesInFlight: Int) {
        self.model = model; self.name = name; self.batch = batch; self.topology = topology; self.threads = threads
        self.link = link; self.linkSource = linkSource; self.compute = compute; self.gatherBytesInFlight = gatherBytesInFlight
    }

    var ranks: Int { topology.ranks }
    var sequencesPerRank: Int { batch / ranks }

    /// One-line errors naming the input and the fix.
    public func validate() throws {
        func positive(_ flag: String, _ v: Int) throws {
            if v < 1 { throw ConfigError("--\(flag) is \(v); it must be 1 or more") }
        }
        try positive("hosts", topology.hosts); try positive("ranks-per-host", topology.ranksPerHost); try positive("threads", threads)
        try positive("batch", batch)
        if batch % ranks != 0 {
            throw ConfigError("global batch \(batch) does not divide over \(topology.hosts) host(s) × \(topology.ranksPerHost) rank(s) = \(ranks) ranks; choose --batch as a multiple of \(ranks)")
        }
        if let m = microBatch, m < 1 || sequencesPerRank % m != 0 {
            throw ConfigError("--micro-batch \(m) does not divide each rank's \(sequencesPerRank) sequences; choose a divisor of \(sequencesPerRank)")
        }
        if !(link.gbitPerSecond > 0) || !(link.latencySeconds >= 0) {
            throw ConfigError("the link must have a rate above 0 Gbit/s and a latency of 0 µs or more")
        }
        if let h = syncEvery.first(where: { $0 < 1 }) { throw ConfigError("--sync-every \(h): each H must be 1 or more") }
        if bucketBytes < 4 { throw ConfigError("--bucket-mb must be above 0") }
    }
}

/// A way to run the job, named by the flags that select it.
public enum PlanStrategy: Hashable, Sendable {
    case synchronous(sharded: Bool, compression: GradientCompression)
    case diloco(syncEvery: Int)

    /// The flags that select it ("" is the default: sharded, float32 gradients).
    public var flags: String {
        switch self {
        case let .synchronous(sharded, compression):
            return [sharded ? nil : "--no-shard", compression == .bf16 ? "--grad-compression bf16" : nil].compactMap { $0 }.joined(separator: " ")
        case let .diloco(h): return "--sync-every \(h)"
        }
    }
}

/// One strategy's predicted step.
public struct PlanRow: Sendable {
    public let strategy: PlanStrategy
    /// Seconds per step (DiLoCo: averaged over H steps).
    public let seconds: Double
    public let tokensPerSecond: Double, efficiency: Double
    /// What the run header prints for rank 0, and DiLoCo's outer buffers beside it.
    public let memory: RankMemory
    public let outerBuffers: Int
    /// Bytes per rank per step as `bench --collectives` counts them (CollectiveBytes).
    public let bytesPerStep: Double
    /// Seconds a step waits: forward for the parameter all-gather, after backward for the
    /// gradient's reduction, and (DiLoCo, averaged per step) for the outer all-reduce.
    public let exposedForward: Double, exposedBackward: Double, exposedOuter: Double

    public var exposed: Double { exposedForward + exposedBackward + exposedOuter }
    public var memoryPerRank: Int { memory.total + outerBuffers }
}

/// One step's phases on one topology and bucket size.
struct StepModel {
    let layout: ParameterLayout
    let buckets: [Range<Int>]             // in backward order (gradientBuckets)
    let compute: PlanCompute              // at the sequences per rank
    let link: LinkModel
    let passes: Int                       // passes per worker: only the last one's backward overlaps
    let gatherBytesInFlight: Int
    let costs: CollectiveCosts

    struct Times { var seconds = 0.0, forwardWait = 0.0, backwardWait = 0.0 }

    /// The model's parts in forward order as the Transformer reports them (the embedding, each
    /// block, the final norm, the output layer): where each lies in the layout and its share of
    /// the step's FLOPs (6 per matrix weight and token, 12·C·T per block for attention; the
    /// embedding's lookup and the norms none).
    static func parts(_ layout: ParameterLayout) -> [(range: Range<Int>, share: Double)] {
        let c = layout.config, blockFLOPs = 6.0 * Double(c.matmulParameterCount - c.vocab * c.dim) / Double(c.layers) + 12.0 * Double(c.dim * c.seqLen)
        let starts = layout.layers.map(\.attentionNormWeight.offset) + [layout.normWeight.offset]
        var parts: [(range: Range<Int>, share: Double)] = [(0..<starts[0], 0)]
        for l in 0..<c.layers { parts.append((starts[l]..<starts[l + 1], blockFLOPs / c.flopsPerToken)) }
        parts.append((layout.normWeight.offset..<layout.output.offset, 0))
        parts.append((layout.output.offset..<layout.count, 6.0 * Double(c.vocab * c.dim) / c.flopsPerToken))
        return parts
    }

    /// When each bucket's collective ends: started in order once ready (and, with a window,
    /// once the buckets in flight leave room), the link carrying one at a time; a bucket's
    /// latency passes while earlier buckets' bytes travel.
    func ends(ready: [Double], costs: [LinkCost], bytes: [Int] = [], window: Int = .max) -> [Double] {
        Self.ends(ready: ready, costs: costs, bytes: bytes, window: window, link: link)
    }

    static func ends(ready: [Double], costs: [LinkCost], bytes: [Int] = [], window: Int = .max, link: LinkModel) -> [Double] {
        var starts: [Double] = [], ends: [Double] = []
        for k in ready.indices {
            var start = max(ready[k], starts.last ?? 0)
            if window < .max {
                var first = ends.firstIndex { $0 > start } ?? k
                while first < k && bytes[first..<k].reduce(0, +) + bytes[k] > window { start = max(start, ends[first]); first += 1 }
            }
            let (latency, transfer) = link.seconds(costs[k])
            starts.append(start)
            ends.append(max(start + latency, ends.last ?? 0) + transfer)
        }
        return ends
    }

    /// The blocking collectives of a step (the loss sum; sharded also the norm's all-gather):
    /// a latency per doubling of hosts each.
    var smallCollective: Double {
        let hosts = costs.topology.hosts
        return hosts > 1 ? link.latencySeconds * Double((hosts - 1).bitWidth - (hosts - 1).leadingZeroBitCount) : 0
    }

    /// The gradient's reduction during the last pass's backward: what is left after it ends.
    /// Backward reports its gradients final part by part, from the output layer down; a bucket
    /// starts once every part it holds is done.
    func backwardWait(_ bucketCosts: [LinkCost]) -> Double {
        let f = compute.forward, b = compute.backward, last = b / Double(passes)
        var clock = f + b - last, reports: [(offset: Int, time: Double)] = []
        for part in Self.parts(layout).reversed() {
            clock += last * part.share
            reports.append((part.range.lowerBound, clock))
        }
        let ready = buckets.map { bucket in reports.first { $0.offset <= bucket.lowerBound }!.time }
        return max(0, (ends(ready: ready, costs: bucketCosts).last ?? 0) - (f + b))
    }

    /// Replicated: every rank all-reduces every bucket, then runs AdamW on everything.
    func replicated(unit: Int) -> Times {
        guard costs.topology.ranks > 1 else { return Times(seconds: compute.alone) }
        let wait = backwardWait(buckets.map { costs.allReduce(count: $0.count, unit: unit) })
        return Times(seconds: compute.alone + wait + smallCollective, backwardWait: wait)
    }

    /// Sharded: each bucket reduced to its owners during backward; AdamW on rank 0's slices
    /// (the largest), each bucket's all-gather started as its slice is updated, in forward
    /// order within the window; the next forward (its first pass) waits for each bucket.
    func sharded(unit: Int, bf16Weights: Bool) -> Times {
        let ranks = costs.topology.ranks, shards = ShardLayout(buckets: buckets, ranks: ranks)
        let wait = backwardWait(buckets.indices.map { costs.reduceToOwners(counts: shards.counts($0), unit: unit) })
        let forwardOrder = Array(buckets.indices.reversed())
        let owned = forwardOrder.map { shards.slice($0, rank: 0).count }, ownedTotal = Double(owned.reduce(0, +))
        let adamW = compute.optimizer * ownedTotal / Double(layout.count)
        let operands = bf16Weights ? layout.productOperands.map(\.range) : []
        func wire(_ slice: Range<Int>) -> Int {
            4 * slice.count - 2 * operands.reduce(0) { $0 + $1.clamped(to: slice).count }
        }
        var updated = 0.0, ready: [Double] = [], gatherCosts: [LinkCost] = [], bytes: [Int] = []
        for (k, bucket) in forwardOrder.enumerated() {
            updated += Double(owned[k])
            ready.append(adamW * updated / max(1, ownedTotal))
            let slices = (0..<ranks).map { wire(shards.slice(bucket, rank: $0)) }
            gatherCosts.append(costs.allGather(sliceBytes: slices))
            bytes.append(slices.reduce(0, +))
        }
        let arrived = ends(ready: ready, costs: gatherCosts, bytes: bytes, window: gatherBytesInFlight)
        // Before each part the forward waits for the buckets that hold any of its parameters.
        let firstPass = compute.forward / Double(passes)
        var clock = adamW
        for part in Self.parts(layout) {
            if let k = forwardOrder.lastIndex(where: { buckets[$0].lowerBound < part.range.upperBound }) { clock = max(clock, arrived[k]) }
            clock += firstPass * part.share
        }
        let forwardWait = max(0, clock - adamW - firstPass)
        let seconds = compute.forward + forwardWait + compute.backward + wait + 2 * smallCollective + adamW
        return Times(seconds: seconds, forwardWait: forwardWait, backwardWait: wait)
    }

    /// DiLoCo's outer all-reduce of the whole Δ (float32, chunks of at most 2^28 values) among
    /// one rank per host, `concurrent` such groups sharing each host's link.
    func outerAllReduce(concurrent: Int) -> Double {
        let chunks = stride(from: 0, to: layout.count, by: 1 << 28).map { min(layout.count - $0, 1 << 28) }
        let c = chunks.map { costs.allReduce(count: $0, unit: 4, concurrent: concurrent) }
        return ends(ready: chunks.map { _ in 0 }, costs: c).last ?? 0
    }
}

/// Collective costs per topology, computed once each (a plan asks for several topologies).
public final class PlanCosts {
    private var byTopology: [PlanTopology: CollectiveCosts] = [:]
    public init() {}
    func of(_ topology: PlanTopology) -> CollectiveCosts {
        if let c = byTopology[topology] { return c }
        let c = CollectiveCosts(topology)
        byTopology[topology] = c
        return c
    }
}

public struct ScalingPlan: Sendable {
    public let inputs: PlanInputs
    /// One rank's compute at the sequences each rank trains on.
    public let compute: PlanCompute
    /// How each rank runs its sequences (the trainer's PassPlan).
    public let workers: Int, microBatch: Int
    /// Seconds per step of one rank alone at the same sequences: efficiency's reference.
    public let alone: Double
    /// The synchronous rows, then DiLoCo's.
    public let rows: [PlanRow]

    public static func strategies(syncEvery: [Int]) -> [PlanStrategy] {
        [.synchronous(sharded: false, compression: .none), .synchronous(sharded: true, compression: .none),
         .synchronous(sharded: true, compression: .bf16), .synchronous(sharded: false, compression: .bf16)]
            + syncEvery.filter { $0 > 1 }.map { .diloco(syncEvery: $0) }
    }

    public init(_ inputs: PlanInputs, costs: PlanCosts = PlanCosts()) throws {
        try inputs.validate()
        self.inputs = inputs
        let passes = Self.passes(inputs)
        workers = passes.workers
        microBatch = passes.microBatch
        compute = inputs.compute.at(sequences: inputs.sequencesPerRank)
        alone = compute.alone
        rows = Self.strategies(syncEvery: inputs.syncEvery).map { Self.predict(inputs, $0, costs: costs) }
    }

    static func passes(_ inputs: PlanInputs) -> PassPlan {
        var options = TrainingOptions(model: inputs.model)
        options.batch = inputs.batch
        options.microBatch = inputs.microBatch
        return ReductionMode.allReduce.strategy.passPlan(options, shard: shard(batch: inputs.batch, rank: 0, worldSize: inputs.ranks),
                                                         workers: inputs.threads)
    }

    /// One strategy's step on `inputs`.
    public static func predict(_ inputs: PlanInputs, _ strategy: PlanStrategy, costs: PlanCosts) -> PlanRow {
        let layout = ParameterLayout(inputs.model), count = layout.count, ranks = inputs.ranks, topology = inputs.topology
        let passes = passes(inputs), compute = inputs.compute.at(sequences: inputs.sequencesPerRank)
        let buckets = gradientBuckets(layout, bucketBytes: inputs.bucketBytes)
        func model(_ t: PlanTopology) -> StepModel {
            StepModel(layout: layout, buckets: buckets, compute: compute, link: inputs.link, passes: passes.passesPerWorker,
                      gatherBytesInFlight: inputs.gatherBytesInFlight, costs: costs.of(t))
        }
        func memory(_ mode: ReductionMode, _ worldSize: Int) -> RankMemory {
            RankMemory.of(layout: layout, mode: mode, worldSize: worldSize, workers: passes.workers, microBatch: passes.microBatch,
                          bucketBytes: inputs.bucketBytes)
        }
        var times = StepModel.Times(), mode = ReductionMode.allReduce, bytes = 0.0, outer = 0.0, outerBuffers = 0, worldSize = ranks
        switch strategy {
        case let .synchronous(sharded, compression):
            let unit = compression == .bf16 ? 2 : 4, wire = CollectiveBytes.summedWire(parameters: count, compression: compression)
            if sharded && ranks > 1 {
                mode = .sharded
                times = model(topology).sharded(unit: unit, bf16Weights: compute.precision == .bf16)
                bytes = CollectiveBytes.scatterOrGatherBound(wire: wire + CollectiveBytes.gatheredWire(parameters: count), ranks: ranks)
            } else {
                times = model(topology).replicated(unit: unit)
                bytes = ranks > 1 ? CollectiveBytes.allReduceBound(wire: wire, ranks: ranks) : 0
            }
        case let .diloco(h):
            // One worker per host: its ranks train as a synchronous job through shared memory;
            // every H steps one rank per host all-reduces Δ with its peers on the other hosts.
            let local = topology.ranksPerHost, hosts = topology.hosts, peers = model(PlanTopology(hosts: hosts, ranksPerHost: 1))
            worldSize = local
            if local > 1 { mode = .sharded; times = model(PlanTopology(hosts: 1, ranksPerHost: local)).sharded(unit: 4, bf16Weights: false) }
            else { times = StepModel.Times(seconds: compute.alone) }
            outer = hosts > 1 ? peers.outerAllReduce(concurrent: local) / Double(h) : 0
            times.seconds += peers.smallCollective + outer
            bytes = hosts > 1 ? CollectiveBytes.allReduceBound(wire: count * MemoryLayout<Float>.stride, ranks: hosts) / Double(h) : 0
            outerBuffers = OuterSync.bufferBytes(parameters: count, overlapped: false)
        }
        return PlanRow(strategy: strategy, seconds: times.seconds, tokensPerSecond: Double(inputs.batch * inputs.model.seqLen) / times.seconds,
                       efficiency: compute.alone / times.seconds, memory: memory(mode, worldSize), outerBuffers: outerBuffers,
                       bytesPerStep: bytes, exposedForward: times.forwardWait, exposedBackward: times.backwardWait, exposedOuter: outer)
    }
}
