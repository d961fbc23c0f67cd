// ScalingPlan (`goml-dist plan`): its memory is the run header's, counted from the buffers the
// real trainers hold; its bytes are what `bench --collectives` counts; a faster link never
// predicts a slower step; a --link file is fitted back to the link that made it; and
// docs/scaling.svg is what the sweep draws today.

import Foundation
import GomlComm
import GomlCore
@testable import GomlTrain
import XCTest

final class ScalingPlanTests: XCTestCase {
    static var model: ModelConfig { StrategyTableTests.model }
    static let bucketBytes = 16_000

    static func inputs(_ model: ModelConfig = model, batch: Int = 12, hosts: Int, ranksPerHost: Int = 1, threads: Int = 1, microBatch: Int? = nil,
                       gbit: Double = 1, latency: Double = 50e-6, precision: Precision = .fp32) -> PlanInputs {
        let perRank = batch / (hosts * ranksPerHost)
        var i = PlanInputs(model: model, name: "test", batch: batch, topology: PlanTopology(hosts: hosts, ranksPerHost: ranksPerHost), threads: threads,
                           link: LinkModel(gbitPerSecond: gbit, latencySeconds: latency), linkSource: "test",
                           compute: PlanCompute(forward: 0.2, backward: 0.4, optimizer: 0.03, batch: perRank, precision: precision, source: "test"),
                           gatherBytesInFlight: 8_000_000)
        i.microBatch = microBatch
        i.bucketBytes = bucketBytes
        return i
    }

    static func row(_ plan: ScalingPlan, _ strategy: PlanStrategy) -> PlanRow { plan.rows.first { $0.strategy == strategy }! }

    /// What each rank's real trainer (set up as `bench` sets it up) says and holds.
    struct Held { let header: String, total: Int, parameters: Int, moments: Int, activations: Int, workers: Int }

    static func trainers(ranks: Int, reduction: ReductionMode, shard: Bool, threads: Int, microBatch: Int?, batch: Int = 12) throws -> [Held] {
        try InProcessCommunicator.run(ranks: ranks) { comm -> Held in
            var o = TrainingOptions(model: model)
            o.batch = batch
            o.microBatch = microBatch
            o.reduction = reduction
            var request = TrainingRequest(options: o)
            request.precision = .fp32
            request.threads = threads
            request.shard = shard
            request.communication.bucketBytes = bucketBytes
            let trainer = TrainingSetup.benchTrainer(request, comm: comm).trainer
            let float = MemoryLayout<Float>.stride
            return Held(header: trainer.memorySummary, total: trainer.memoryPerRank, parameters: trainer.params.count * float,
                        moments: (trainer.optimizer.m.count + trainer.optimizer.v.count) * float, activations: trainer.activationBytes, workers: trainer.workers)
        }
    }

    /// The counted memory is what the trainer allocated: parameters, moments, activations and one gradient per worker.
    func assertCountsBuffers(_ memory: RankMemory, _ held: Held, _ what: String) {
        XCTAssertEqual(memory.parameters, held.parameters, "\(what): parameters")
        XCTAssertEqual(memory.gradients, held.workers * held.parameters, "\(what): one gradient per worker")
        XCTAssertEqual(memory.optimizerState, held.moments, "\(what): AdamW's moments")
        XCTAssertEqual(memory.activations, held.activations, "\(what): activations")
    }

    func testMemoryIsWhatTheRunHeaderPrints() throws {
        let layout = ParameterLayout(Self.model)
        for ranks in 1...4 {
            for (threads, microBatch) in [(1, nil), (2, nil), (2, 1)] as [(Int, Int?)] {
                let plan = try ScalingPlan(Self.inputs(hosts: ranks, threads: threads, microBatch: microBatch))
                for shard in [false, true] {
                    let what = "\(ranks) rank(s), \(threads) thread(s), micro-batch \(microBatch.map(String.init) ?? "whole"), \(shard ? "sharded" : "--no-shard")"
                    let held = try Self.trainers(ranks: ranks, reduction: .allReduce, shard: shard, threads: threads, microBatch: microBatch)
                    for compression in GradientCompression.allCases {
                        let row = Self.row(plan, .synchronous(sharded: shard, compression: compression))
                        XCTAssertEqual(row.memory.summary, held[0].header, "\(what): the run header's line")
                        XCTAssertEqual(row.memoryPerRank, held[0].total, "\(what): bytes per rank")
                    }
                    for (rank, h) in held.enumerated() {
                        let mode: ReductionMode = shard && ranks > 1 ? .sharded : .allReduce
                        assertCountsBuffers(RankMemory.of(layout: layout, mode: mode, worldSize: ranks, rank: rank, workers: plan.workers,
                                                          microBatch: plan.microBatch, bucketBytes: Self.bucketBytes), h, "\(what), rank \(rank)")
                    }
                }
            }
        }
        // Exact reduction (not a row of the plan, one worker, leaves of --micro-batch): the same count.
        for ranks in [1, 2, 4] {
            for leaf in [1, 3] {
                let held = try Self.trainers(ranks: ranks, reduction: .exact, shard: false, threads: 1, microBatch: leaf)
                for (rank, h) in held.enumerated() {
                    let memory = RankMemory.of(layout: layout, mode: .exact, worldSize: ranks, rank: rank, workers: 1, microBatch: leaf, bucketBytes: Self.bucketBytes)
                    XCTAssertEqual(memory.summary, h.header, "exact, \(ranks) rank(s), leaf \(leaf)")
                    assertCountsBuffers(memory, h, "exact, \(ranks) rank(s), leaf \(leaf), rank \(rank)")
                }
            }
        }
    }

    /// DiLoCo's rows: the header of a worker's trainer (its host's ranks: sharded when several),
    /// and the outer step's three parameter-sized buffers beside it.
    func testDiLoCoMemoryIsTheWorkersHeaderAndTheOuterBuffers() throws {
        for local in [1, 2] {
            let plan = try ScalingPlan(Self.inputs(batch: 12, hosts: 2, ranksPerHost: local, threads: 1))
            let row = Self.row(plan, .diloco(syncEvery: 10))
            // A worker trains on its half of the global batch over its own ranks, as TrainingSetup makes it.
            let held = try Self.trainers(ranks: local, reduction: .allReduce, shard: true, threads: 1, microBatch: nil, batch: 6)
            XCTAssertEqual(row.memory.summary, held[0].header, "DiLoCo, \(local) rank(s) per worker")
            XCTAssertEqual(row.outerBuffers, 3 * ParameterLayout(Self.model).count * 4, "θ_global, Δ and parked parameters")
        }
    }

    func testBytesPerStepAreWhatCollectiveBenchCounts() throws {
        for (hosts, local) in [(2, 1), (3, 1), (4, 1), (2, 2)] {
            for compression in GradientCompression.allCases {
                var settings = CommunicationSettings()
                settings.bucketBytes = Self.bucketBytes
                settings.compression = compression
                let measured = try InProcessCommunicator.run(ranks: hosts * local, ranksPerHost: local) { comm in
                    CollectiveBench.run(comm: comm, layout: ParameterLayout(Self.model), communication: settings, warmup: 0, repeats: 1)
                }[0]
                let bound = Dictionary(uniqueKeysWithValues: measured.map { ($0.collective, $0.boundBytesPerRank) })
                let plan = try ScalingPlan(Self.inputs(hosts: hosts, ranksPerHost: local))
                let what = "\(hosts) host(s) × \(local), \(compression.rawValue)"
                XCTAssertEqual(Self.row(plan, .synchronous(sharded: false, compression: compression)).bytesPerStep, bound["allreduce_buckets"], "\(what): --no-shard")
                XCTAssertEqual(Self.row(plan, .synchronous(sharded: true, compression: compression)).bytesPerStep, bound["reduce_scatter_all_gather"], "\(what): sharded")
            }
        }
    }

    /// More bandwidth never predicts a slower step, nor does less latency, for every strategy.
    func testAFasterLinkNeverPredictsASlowerStep() throws {
        let cases = [Self.inputs(hosts: 2), Self.inputs(hosts: 3, microBatch: 2), Self.inputs(batch: 16, hosts: 4, ranksPerHost: 2, threads: 2),
                     Self.inputs(hosts: 2, precision: .bf16), Self.inputs(ModelConfig.small, batch: 16, hosts: 16)]
        let rates = [0.1, 0.3, 1, 3, 10, 100], latencies = [0.0, 10e-6, 50e-6, 200e-6, 2e-3]
        let costs = PlanCosts()
        for base in cases {
            for strategy in ScalingPlan.strategies(syncEvery: [10, 50]) {
                let what = "\(base.topology.hosts)×\(base.topology.ranksPerHost), \(base.model.summary), '\(strategy.flags)'"
                for latency in latencies {
                    let steps = rates.map { gbit -> PlanRow in
                        var i = base
                        i.link = LinkModel(gbitPerSecond: gbit, latencySeconds: latency)
                        return ScalingPlan.predict(i, strategy, costs: costs)
                    }
                    for (slow, fast) in zip(steps, steps.dropFirst()) {
                        XCTAssertLessThanOrEqual(fast.seconds, slow.seconds, "\(what): more bandwidth predicted a slower step (latency \(latency))")
                        XCTAssertLessThanOrEqual(fast.exposed, slow.exposed + 1e-12, "\(what): more bandwidth predicted more waiting")
                    }
                    XCTAssertTrue(steps.allSatisfy { $0.exposedForward >= 0 && $0.exposedBackward >= 0 && $0.efficiency > 0 }, what)
                }
                for gbit in rates {
                    let steps = latencies.map { latency -> Double in
                        var i = base
                        i.link = LinkModel(gbitPerSecond: gbit, latencySeconds: latency)
                        return ScalingPlan.predict(i, strategy, costs: costs).seconds
                    }
                    XCTAssertEqual(steps, steps.sorted(), "\(what): lower latency predicted a slower step at \(gbit) Gbit/s")
                }
            }
        }
    }

    /// bench --collectives lines made by the model at a known link are fitted back to its rate
    /// (the blocking all-reduce's line, coll/tuned's, is left out).
    func testALinkFileIsFittedBackToTheLinkThatMadeIt() throws {
        let truth = LinkModel(gbitPerSecond: 0.9, latencySeconds: 120e-6), counts = gradientBuckets(ParameterLayout(.small), bucketBytes: 1_000_000).map(\.count)
        let costs = CollectiveCosts(PlanTopology(hosts: 2, ranksPerHost: 1)), shards = ShardLayout(buckets: gradientBuckets(ParameterLayout(.small), bucketBytes: 1_000_000), ranks: 2)
        let time = { (c: [LinkCost]) in StepModel.ends(ready: c.map { _ in 0 }, costs: c, link: truth).last! }
        let allReduce = time(counts.map { costs.allReduce(count: $0, unit: 4) })
        let scatter = time(shards.buckets.indices.map { costs.reduceToOwners(counts: shards.counts($0), unit: 4) })
        let lines = [("allreduce_buckets", allReduce), ("reduce_scatter", scatter), ("allreduce_blocking", 1.0)].map { name, seconds in
            "{\"collective\":\"\(name)\",\"ranks\":2,\"bucket_bytes\":[\(counts.map { String(4 * $0) }.joined(separator: ","))],\"median_ms\":\(seconds * 1e3),\"link_gbit\":1,\"grad_compression\":\"none\"}"
        }
        let path = StrategyTableTests.temporaryDirectory() + "/link.jsonl"
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let (fitted, note) = try LinkModel.fit(path: path, latencySeconds: 120e-6, gatherBytesInFlight: 8_000_000)
        XCTAssertEqual(fitted.gbitPerSecond, 0.9, accuracy: 0.9 * 0.001, note)
        XCTAssertTrue(note.contains("2 bench --collectives line(s)") && note.contains("90% of the 1 Gbit/s"), note)
        // The latency hardly shows in these lines: a wrong one moves the rate by little.
        let (roughly, _) = try LinkModel.fit(path: path, latencySeconds: 50e-6, gatherBytesInFlight: 8_000_000)
        XCTAssertEqual(roughly.gbitPerSecond, 0.9, accuracy: 0.9 * 0.02)
    }

    /// docs/scaling.svg is what `goml-dist plan --sweep-svg` draws from the committed calibrations.
    func testTheScalingFigureIsUpToDate() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/docs"
        let svg = try ScalingSweep.svg(calibrations: [docs + "/calibration/small.json", docs + "/calibration/base.json"], latencySeconds: 50e-6,
                                       gatherBytesInFlight: 8_000_000)
        let committed = try String(contentsOfFile: docs + "/scaling.svg", encoding: .utf8)
        XCTAssertTrue(svg == committed, "docs/scaling.svg is out of date: regenerate it with the command in docs/scaling.md")
    }
}
