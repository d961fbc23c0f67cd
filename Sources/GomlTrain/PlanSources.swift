// PlanSources: where a plan's figures come from. The flags as plain values (PlanRequest); the
// compute, from `bench`'s last JSON line on the target CPU or a short bench here; the link,
// as given or fitted to `bench --collectives` lines measured between real hosts. Every
// problem is a one-line ConfigError naming the input and the fix.

import Foundation
import GomlComm
import GomlCore

/// What `goml-dist plan` was asked, as parsed.
public struct PlanRequest {
    public var model: ModelConfig, name: String
    public var batch: Int, microBatch: Int? = nil
    public var hosts = 2, ranksPerHost = 1, threads: Int? = nil
    /// --link-gbit (a number, or with a unit), --latency-us, or --link FILE instead of both.
    public var linkRate: String? = nil, latencyMicroseconds: Double? = nil, linkFile: String? = nil
    public var calibrations: [String] = []
    public var syncEvery = "1,10,50"
    public var bucketMB = 1.0
    public var hostMemoryGB: Double? = nil
    public var gatherBytesInFlight: Int

    public init(model: ModelConfig, name: String, batch: Int, gatherBytesInFlight: Int) {
        self.model = model; self.name = name; self.batch = batch; self.gatherBytesInFlight = gatherBytesInFlight
    }

    public static let defaultLatencyMicroseconds = 50.0

    /// Reads, fits and measures what the flags name, then plans.
    public func report() throws -> PlanReport {
        guard hosts >= 1 else { throw ConfigError("--hosts is \(hosts); give the number of hosts, 1 or more") }
        guard ranksPerHost >= 1 else { throw ConfigError("--ranks-per-host is \(ranksPerHost); give 1 or more") }
        let ranks = hosts * ranksPerHost
        guard batch >= 1, batch % ranks == 0 else {
            throw ConfigError("global batch \(batch) does not divide over \(hosts) host(s) × \(ranksPerHost) rank(s) = \(ranks) ranks; choose --batch as a multiple of \(ranks)")
        }
        guard calibrations.count <= 1 else { throw ConfigError("give one --calibration for a plan (several are for --sweep-svg)") }
        if let threads, threads < 1 { throw ConfigError("--threads is \(threads); give the cores of a rank, 1 or more") }
        if let l = latencyMicroseconds, !(l >= 0) { throw ConfigError("--latency-us is \(l); give the latency of a round of messages, 0 µs or more") }
        let sync = try syncEvery.split(separator: ",").map { part -> Int in
            guard let h = Int(part.trimmingCharacters(in: .whitespaces)), h >= 1 else {
                throw ConfigError("--sync-every '\(syncEvery)': give H values of 1 or more separated by commas, e.g. 1,10,50")
            }
            return h
        }
        var notes: [String] = []
        let link: LinkModel, linkSource: String
        let latency = (latencyMicroseconds ?? Self.defaultLatencyMicroseconds) / 1e6
        if let linkFile {
            if linkRate != nil { throw ConfigError("give --link FILE (the rate fitted to bench --collectives) or --link-gbit, not both") }
            (link, linkSource) = try LinkModel.fit(path: linkFile, latencySeconds: latency, gatherBytesInFlight: gatherBytesInFlight)
        } else {
            link = LinkModel(gbitPerSecond: try LinkModel.rate(linkRate ?? "1"), latencySeconds: latency)
            linkSource = linkRate == nil ? "default; --link-gbit, --latency-us or --link FILE to change" : "given"
        }
        let perRank = batch / ranks
        let compute: PlanCompute, threadsUsed: Int
        if let path = calibrations.first {
            let c = try PlanCompute.calibration(path, name: name, model: model)
            threadsUsed = threads ?? c.threads
            compute = c.compute
            if c.compute.batch != perRank {
                notes.append("the calibration ran \(c.compute.batch) sequence(s) per rank; forward and backward are scaled per sequence to \(perRank), AdamW kept")
            }
            if threadsUsed != c.threads { notes.append("the calibration ran on \(c.threads) thread(s), the plan asks for \(threadsUsed): its times are used as they are") }
            if c.microBatch != nil && c.microBatch != (microBatch ?? perRank) {
                notes.append("the calibration ran micro-batches of \(c.microBatch!); its per-sequence times are used for \(microBatch ?? perRank)")
            }
        } else {
            threadsUsed = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / ranksPerHost)
            if let m = microBatch, m < 1 || perRank % m != 0 {
                throw ConfigError("--micro-batch \(m) does not divide each rank's \(perRank) sequences; choose a divisor of \(perRank)")
            }
            compute = PlanCompute.measure(model: model, sequences: perRank, microBatch: microBatch, threads: threadsUsed)
            let cores = ProcessInfo.processInfo.activeProcessorCount
            if threadsUsed > cores { notes.append("this machine has \(cores) core(s): \(threadsUsed) threads measured here are not the target's; give --calibration from the target CPU") }
        }
        var inputs = PlanInputs(model: model, name: name, batch: batch, topology: PlanTopology(hosts: hosts, ranksPerHost: ranksPerHost),
                                threads: threadsUsed, link: link, linkSource: linkSource, compute: compute, gatherBytesInFlight: gatherBytesInFlight)
        inputs.microBatch = microBatch
        inputs.syncEvery = sync
        guard bucketMB > 0, bucketMB <= 1024 else { throw ConfigError("--bucket-mb is \(bucketMB); it must lie in (0, 1024]") }
        inputs.bucketBytes = max(4, Int(bucketMB * 1_000_000))
        if let gb = hostMemoryGB {
            guard gb > 0 else { throw ConfigError("--host-memory-gb is \(gb); give the memory of a host in GB, above 0") }
            (inputs.hostMemory, inputs.hostMemorySource) = (Int(gb * 1e9), "--host-memory-gb")
        } else if let available = TrainingSetup.availableMemory() {
            (inputs.hostMemory, inputs.hostMemorySource) = (available, "MemAvailable of this machine; --host-memory-gb for the target hosts'")
        }
        let costs = PlanCosts()
        return PlanReport(plan: try ScalingPlan(inputs, costs: costs), costs: costs, notes: notes)
    }
}

extension PlanCompute {
    /// A short bench here (one rank, its threads), as `bench` sets the trainer up.
    public static func measure(model: ModelConfig, sequences: Int, microBatch: Int?, threads: Int, steps: Int = 3) -> PlanCompute {
        var options = TrainingOptions(model: model)
        options.batch = sequences
        options.microBatch = microBatch
        options.steps = 1 + steps
        var request = TrainingRequest(options: options)
        request.threads = threads
        let comm = SingleProcessCommunicator(), (trainer, _, _) = TrainingSetup.benchTrainer(request, comm: comm)
        trainer.initialiseParameters()
        let r = StepBench.run(trainer, comm: comm, warmup: 1, steps: steps, peakGFLOPS: 1)
        return PlanCompute(forward: r.forwardMS / 1e3, backward: r.backwardMS / 1e3, optimizer: r.optimizerMS / 1e3, batch: sequences,
                           precision: trainer.options.precision, source: "measured here: bench of \(steps) steps on \(threads) thread(s)")
    }

    /// The last JSON line of `bench` output in `path`, checked to be one rank of the model
    /// planned (`name`: the preset, or the dimensions, as bench names it).
    public static func calibration(_ path: String, name: String?, model: ModelConfig?) throws
        -> (compute: PlanCompute, config: String, threads: Int, microBatch: Int?) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("cannot read --calibration \(path); give a file holding the last line goml-dist bench printed on the target CPU")
        }
        let objects = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        func number(_ o: [String: Any], _ key: String) -> Double? { (o[key] as? NSNumber)?.doubleValue }
        guard let o = objects.last(where: { o in ["forward_ms", "backward_ms", "optimizer_ms", "batch"].allSatisfy { number(o, $0) != nil } }),
              let config = o["config"] as? String else {
            throw ConfigError("--calibration \(path) holds no bench JSON line (config, batch, forward_ms, backward_ms, optimizer_ms); give the last line goml-dist bench printed on the target CPU")
        }
        let ranks = Int(number(o, "ranks") ?? 1), batch = Int(number(o, "batch")!)
        guard ranks == 1 else {
            throw ConfigError("--calibration \(path) was measured on \(ranks) ranks; plan needs one rank alone: run goml-dist bench without mpirun on the target CPU")
        }
        if let name, let model, config != name || Int(number(o, "seq_len") ?? Double(model.seqLen)) != model.seqLen {
            throw ConfigError("--calibration \(path) is for \(config), this plan for \(name): calibrate the same model (goml-dist bench --config … as planned)")
        }
        let precision = (o["precision"] as? String).flatMap(Precision.init) ?? .fp32
        let compute = PlanCompute(forward: number(o, "forward_ms")! / 1e3, backward: number(o, "backward_ms")! / 1e3, optimizer: number(o, "optimizer_ms")! / 1e3,
                                  batch: batch, precision: precision, source: "calibration \(path): \(config), \(batch) sequence(s)")
        return (compute, config, Int(number(o, "threads") ?? 1), number(o, "micro_batch").map { Int($0) })
    }
}

extension LinkModel {
    /// Gbit/s from "10", "10gbit", "100mbit" or "500kbit".
    public static func rate(_ text: String) throws -> Double {
        let lower = text.lowercased(), digits = lower.prefix { "0123456789.eE+-".contains($0) }, unit = lower.dropFirst(digits.count)
        let scale: Double? = ["": 1, "gbit": 1, "mbit": 1e-3, "kbit": 1e-6][String(unit)]
        guard let value = Double(digits), let scale else {
            throw ConfigError("unknown link unit in --link-gbit '\(text)': give Gbit/s as a number, or with gbit, mbit or kbit (e.g. 100mbit)")
        }
        guard value > 0 else { throw ConfigError("--link-gbit is \(text); give the link's rate, above 0") }
        return value * scale
    }

    /// The rate that, at `latencySeconds`, best predicts `bench --collectives` lines (one rank
    /// per host assumed) in the plan's own model of each collective; and a sentence on the fit.
    /// The lines time whole gradients whose buckets queue behind each other, which hides the
    /// latency: it is given, not fitted.
    public static func fit(path: String, latencySeconds: Double, gatherBytesInFlight: Int) throws -> (LinkModel, String) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("cannot read --link \(path); give the JSON lines of goml-dist bench --collectives run between the hosts")
        }
        var cases: [(measured: Double, costs: [[LinkCost]], bytes: [[Int]], windows: [Int])] = [], nominal: Double?
        for (index, line) in text.split(separator: "\n").enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let name = o["collective"] as? String,
                  let ranks = (o["ranks"] as? NSNumber)?.intValue, ranks > 1, let buckets = o["bucket_bytes"] as? [NSNumber],
                  let ms = (o["median_ms"] as? NSNumber)?.doubleValue, ms > 0 else {
                throw ConfigError("--link \(path) line \(index + 1) is not a bench --collectives line (collective, ranks, bucket_bytes, median_ms); give that command's output between the hosts")
            }
            nominal = (o["link_gbit"] as? NSNumber)?.doubleValue ?? nominal
            let costs = CollectiveCosts(PlanTopology(hosts: ranks, ranksPerHost: 1)), counts = buckets.map { $0.intValue / 4 }
            let unit = o["grad_compression"] as? String == "bf16" ? 2 : 4
            let window = ((o["gather_mb_in_flight"] as? NSNumber)?.doubleValue).map { Int($0 * 1e6) } ?? gatherBytesInFlight
            let ranges = counts.reduce(into: [Range<Int>]()) { $0.append(($0.last?.upperBound ?? 0)..<(($0.last?.upperBound ?? 0) + $1)) }
            let shards = ShardLayout(buckets: ranges, ranks: ranks)
            let scatter = ranges.indices.map { costs.reduceToOwners(counts: shards.counts($0), unit: unit) }
            let gather = ranges.indices.map { costs.allGather(sliceBytes: shards.counts($0).map { 4 * $0 }) }
            switch name {
            case "allreduce_buckets": cases.append((ms / 1e3, [counts.map { costs.allReduce(count: $0, unit: unit) }], [[]], [.max]))
            case "reduce_scatter": cases.append((ms / 1e3, [scatter], [[]], [.max]))
            case "all_gather": cases.append((ms / 1e3, [gather], [buckets.map(\.intValue)], [window]))
            case "reduce_scatter_all_gather": cases.append((ms / 1e3, [scatter, gather], [[], buckets.map(\.intValue)], [.max, window]))
            default: continue   // the blocking all-reduce is coll/tuned's, not modelled
            }
        }
        guard !cases.isEmpty else {
            throw ConfigError("--link \(path) holds no bench --collectives line of a bucketed collective; write it with goml-dist bench --collectives --link-gbit G under mpirun across the hosts")
        }
        func error(_ link: LinkModel) -> Double {
            cases.reduce(0) { sum, c in
                let t = c.costs.indices.reduce(0.0) { t, part in
                    t + (StepModel.ends(ready: c.costs[part].map { _ in 0 }, costs: c.costs[part], bytes: c.bytes[part], window: c.windows[part], link: link).last ?? 0)
                }
                return sum + pow(log(max(t, 1e-12) / c.measured), 2)
            }
        }
        // log10 of the rate on a grid from 1 Mbit/s to 10 Tbit/s, narrowed five times around the best point.
        var best = 0.0, span = 4.0
        for _ in 0..<6 {
            let center = best
            best = (-40...40).map { center + span * Double($0) / 40 }.min {
                error(LinkModel(gbitPerSecond: pow(10, $0), latencySeconds: latencySeconds)) < error(LinkModel(gbitPerSecond: pow(10, $1), latencySeconds: latencySeconds))
            }!
            span /= 8
        }
        let link = LinkModel(gbitPerSecond: pow(10, best), latencySeconds: latencySeconds)
        let rms = (exp((error(link) / Double(cases.count)).squareRoot()) - 1) * 100
        let share = nominal.map { String(format: " (%.0f%% of the %g Gbit/s it names)", link.gbitPerSecond / $0 * 100, $0) } ?? ""
        return (link, String(format: "fitted to %d bench --collectives line(s) of %@, one rank per host assumed: %.3g Gbit/s%@ at %.0f µs (--latency-us); typical error %.0f%%",
                             cases.count, path, link.gbitPerSecond, share, latencySeconds * 1e6, rms))
    }
}
