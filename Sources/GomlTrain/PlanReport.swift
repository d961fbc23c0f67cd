// PlanReport: a ScalingPlan as `goml-dist plan` prints it — the rows, the memory lines, the
// recommended flags with their reasons, warnings, how far more hosts pay off, and what the
// model simplifies — as text or as one JSON object.

import Foundation
import GomlComm
import GomlCore

public struct PlanReport {
    public let plan: ScalingPlan
    /// Each recommended flag (or choice of a default) and why.
    public private(set) var recommended: [(flags: String, reason: String)] = []
    public private(set) var warnings: [String] = []
    /// Tokens/s and efficiency of the recommended synchronous flags as hosts double, at the same sequences per rank.
    public private(set) var hosts: [(hosts: Int, tokensPerSecond: Double, efficiency: Double)] = []
    /// Facts about the inputs (a calibration scaled, a link fitted).
    public let notes: [String]

    public static let simplifications = [
        "forward and backward time is spread over the model's parts (embedding, blocks, final norm, output layer) by their training FLOPs; backward makes each part's gradients final, and forward waits for each part's parameters, at the part's boundary, as the trainer does; only the last micro-batch's backward overlaps the reduction, only the first one's forward waits",
        "each collective is libnbc's schedule of messages on an alpha-beta link: a round costs the latency plus its busiest host link's bytes at the link's rate, full duplex, one round after another; a bucket's reduces to its owners, running together, take their rounds' latencies once and the longer of one reduce's rounds and their busiest link's total bytes",
        "buckets share the link one after another in the order started, a bucket's latency hidden behind the bytes queued before it; the all-gather keeps its window of bytes in flight",
        "ranks on one host exchange through shared memory at no cost, and share their host's link to the others; the switch is non-blocking (every host link at full rate at once)",
        "the progress thread's polls, CPU time for bf16 rounding and MPI's copies, and TCP's own efficiency are not modelled (a --link file from bench --collectives folds them into the fitted rate, one rank per host assumed there; the latency is given)",
        "every rank computes at the calibrated speed (no stragglers, no cores lost to the network stack); forward and backward scale per sequence, AdamW with the elements a rank updates",
        "the blocking per-step collectives (the loss sum; sharded, the norm's all-gather; DiLoCo, the loss agreement) cost one latency per doubling of hosts",
        "DiLoCo rows: one worker per host, the default blocking outer step (--overlap-outer would hide up to one inner step of it); their tokens/s says nothing of their loss per token, which is higher (docs/low-communication.md)",
        "memory is the run header's count (MPI's buffers are not in it: libnbc's per-request buffers, with --grad-compression bf16 a 2-byte copy of each bucket); DiLoCo's rows add its three parameter-sized buffers",
        "bytes_per_step is what bench --collectives counts per rank (the bound: 2(N-1)/N of the wire for an all-reduce, (N-1)/N for a reduce-scatter or all-gather, the gather as float32); the time model sends what libnbc sends, and at bf16 precision gathers the matrices as bf16",
    ]

    public init(plan: ScalingPlan, costs: PlanCosts = PlanCosts(), notes: [String] = []) {
        self.plan = plan
        self.notes = notes
        advise(costs)
    }

    private func row(_ s: PlanStrategy) -> PlanRow? { plan.rows.first { $0.strategy == s } }
    private func fits(_ r: PlanRow) -> Bool {
        plan.inputs.hostMemory.map { plan.inputs.topology.ranksPerHost * r.memoryPerRank <= $0 } ?? true
    }
    static func named(_ flags: String) -> String { flags.isEmpty ? "(default: sharded)" : flags }

    private mutating func advise(_ costs: PlanCosts) {
        let i = plan.inputs, mb = { (b: Int) in Double(b) / 1e6 }
        let unfit = plan.rows.filter { !fits($0) }
        if let memory = i.hostMemory, !unfit.isEmpty {
            warnings.append(String(format: "%@ need%@ more than a host's %.1f MB (%@) for %d rank(s): lower --batch or --micro-batch, or use more hosts",
                                   unfit.map { Self.named($0.strategy.flags) }.joined(separator: ", "), unfit.count == 1 ? "s" : "", mb(memory),
                                   i.hostMemorySource, i.topology.ranksPerHost))
        }
        // Synchronous: compression where it gains 2% or more, then sharding by tokens/s (ties to the sharded default).
        func choice(_ sharded: Bool) -> PlanRow? {
            guard let plain = row(.synchronous(sharded: sharded, compression: .none)), let bf16 = row(.synchronous(sharded: sharded, compression: .bf16))
            else { return nil }
            return bf16.tokensPerSecond > 1.02 * plain.tokensPerSecond ? bf16 : plain
        }
        let choices = [choice(true), choice(false)].compactMap { $0 }, fitting = choices.filter(fits)
        guard var best = (fitting.isEmpty ? choices : fitting).first else { return }
        for c in (fitting.isEmpty ? choices : fitting) where c.tokensPerSecond > 1.01 * best.tokensPerSecond { best = c }
        guard case let .synchronous(sharded, compression) = best.strategy else { return }
        if i.ranks == 1 {
            recommended.append(("(no flags)", "one rank: nothing is reduced or sharded"))
        } else {
            let other = row(.synchronous(sharded: !sharded, compression: compression))!
            let saved = mb(row(.synchronous(sharded: false, compression: compression))!.memoryPerRank - row(.synchronous(sharded: true, compression: compression))!.memoryPerRank)
            recommended.append((sharded ? "(default: sharded)" : "--no-shard", String(format: "%.0f tokens/s against %.0f %@; sharded holds %.1f MB less per rank%@",
                best.tokensPerSecond, other.tokensPerSecond, sharded ? "with --no-shard" : "sharded", saved, fits(other) ? "" : " (the other does not fit in memory)")))
            let plain = row(.synchronous(sharded: sharded, compression: .none))!, bf16 = row(.synchronous(sharded: sharded, compression: .bf16))!
            let gain = (bf16.tokensPerSecond / plain.tokensPerSecond - 1) * 100
            recommended.append(compression == .bf16
                ? ("--grad-compression bf16", String(format: "exposed communication %.1f → %.1f ms per step (%+.0f%% tokens/s); gradients cross the link as bf16 (on nano's recipe 0.0014 higher validation loss, docs/multihost-bench.md)",
                                                     plain.exposed * 1e3, bf16.exposed * 1e3, gain))
                : ("--grad-compression none (the default)", String(format: "bf16 on the wire would change tokens/s by %+.1f%%", gain)))
            adviseBuckets(best.strategy, costs)
        }
        adviseDiLoCo(best)
        let waiting = best.exposed / best.seconds
        if i.ranks > 1 && waiting > 0.5 {
            warnings.append(String(format: "with the recommended flags %.0f%% of each step waits for the network (forward %.1f ms, after backward %.1f ms): the link bounds this job; fewer hosts, more sequences per rank (--batch) or DiLoCo (--sync-every) would waste less",
                                   waiting * 100, best.exposedForward * 1e3, best.exposedBackward * 1e3))
        }
        var h = 1
        while h <= min(1024, max(64, 4 * i.topology.hosts)) {
            var scaled = i
            scaled.topology = PlanTopology(hosts: h, ranksPerHost: i.topology.ranksPerHost)
            scaled.batch = i.sequencesPerRank * scaled.ranks
            let r = ScalingPlan.predict(scaled, best.strategy, costs: costs)
            hosts.append((h, r.tokensPerSecond, r.efficiency))
            h *= 2
        }
    }

    /// The bucket size that gives the chosen flags the most tokens/s, if 2% more than the one asked for.
    private mutating func adviseBuckets(_ strategy: PlanStrategy, _ costs: PlanCosts) {
        let sizes = [0.25, 0.5, 1, 2, 4, 8, 16], asked = Double(plan.inputs.bucketBytes) / 1e6
        let rates = sizes.map { mb -> Double in
            var i = plan.inputs
            i.bucketBytes = Int(mb * 1e6)
            return ScalingPlan.predict(i, strategy, costs: costs).tokensPerSecond
        }
        let current = row(strategy)!.tokensPerSecond, best = rates.indices.max { rates[$0] < rates[$1] }!
        recommended.append(rates[best] > 1.02 * current
            ? (String(format: "--bucket-mb %g", sizes[best]), String(format: "%.0f tokens/s against %.0f at %g MB (tried %@ MB)", rates[best], current, asked,
                                                                    sizes.map { String(format: "%g", $0) }.joined(separator: ", ")))
            : (String(format: "--bucket-mb %g (as asked)", asked), String(format: "within 2%% of the best bucket size tried (%@ MB)",
                                                                     sizes.map { String(format: "%g", $0) }.joined(separator: ", "))))
    }

    private mutating func adviseDiLoCo(_ synchronous: PlanRow) {
        let diloco = plan.rows.filter { if case .diloco = $0.strategy { return fits($0) }; return false }
        guard plan.inputs.topology.hosts > 1, let best = diloco.max(by: { $0.tokensPerSecond < $1.tokensPerSecond }) else { return }
        if best.tokensPerSecond >= 1.2 * synchronous.tokensPerSecond {
            recommended.append((best.strategy.flags, String(format: "%.0f tokens/s against %.0f synchronous (efficiency %.2f against %.2f), Δ crossing the link once per H steps; but the workers drift apart (on nano's recipe H 10 ended 0.03-0.05 higher in validation loss, docs/low-communication.md); --overlap-outer hides the outer all-reduce behind the next step",
                                                               best.tokensPerSecond, synchronous.tokensPerSecond, best.efficiency, synchronous.efficiency)))
        } else {
            recommended.append(("--sync-every 1 (synchronous, the default)", String(format: "efficiency %.2f already; DiLoCo (%@) would change tokens/s by %+.1f%%, at a higher loss per token",
                synchronous.efficiency, best.strategy.flags, (best.tokensPerSecond / synchronous.tokensPerSecond - 1) * 100)))
        }
    }

    /// A table row: the first column left-aligned, the others right-aligned.
    static func columns(_ cells: [String]) -> String {
        let widths = [36, 9, 9, 10, 23, 17, 9]
        return zip(cells, widths).enumerated().map { i, cell in
            let gap = String(repeating: " ", count: max(0, cell.1 - cell.0.count))
            return i == 0 ? cell.0 + gap : gap + cell.0
        }.joined(separator: " ")
    }

    var efficiencyDefinition: String {
        let i = plan.inputs
        return "efficiency = tokens/s of the \(i.ranks) rank(s) / (\(i.ranks) × tokens/s of one rank alone, without communication, at the same \(i.sequencesPerRank) sequence(s) per rank)"
    }

    /// What `goml-dist plan` prints.
    public var text: String {
        let i = plan.inputs, c = plan.compute, ms = { (s: Double) in s * 1e3 }
        var lines = [
            "plan for \(i.name) (\(i.model.summary), \(ParameterLayout(i.model).count) parameters): \(i.topology.hosts) host(s) × \(i.topology.ranksPerHost) rank(s), \(i.threads) thread(s) per rank; global batch \(i.batch) = \(i.sequencesPerRank) sequence(s) per rank (micro-batch \(plan.microBatch) × \(plan.workers) worker(s))",
            String(format: "link: %g Gbit/s, latency %.0f µs per message round (%@)", i.link.gbitPerSecond, i.link.latencySeconds * 1e6, i.linkSource),
            String(format: "compute per rank alone at %d sequence(s): forward %.1f ms, backward %.1f ms, AdamW %.1f ms, %@ (%@)",
                   c.batch, ms(c.forward), ms(c.backward), ms(c.optimizer), c.precision.rawValue, c.source),
        ] + notes.map { "note: " + $0 } + [
            efficiencyDefinition + String(format: ": one rank alone %.1f ms/step, %.0f tokens/s", ms(plan.alone), Double(i.sequencesPerRank * i.model.seqLen) / plan.alone),
            "",
            Self.columns(["flags", "ms/step", "tokens/s", "efficiency", "waits fwd/bwd/outer ms", "MB/step per rank", "MB/rank"]),
        ]
        for r in plan.rows {
            lines.append(Self.columns([Self.named(r.strategy.flags), String(format: "%.1f", ms(r.seconds)), String(format: "%.0f", r.tokensPerSecond),
                                       String(format: "%.2f", r.efficiency),
                                       String(format: "%.1f/%.1f/%.1f", ms(r.exposedForward), ms(r.exposedBackward), ms(r.exposedOuter)),
                                       String(format: "%.1f", r.bytesPerStep / 1e6), String(format: "%.1f", Double(r.memoryPerRank) / 1e6)])
                         + (fits(r) ? "" : "  does not fit"))
        }
        lines += ["", "memory per rank, as the run header will print it:"]
        for r in plan.rows {
            lines.append("  \(Self.named(r.strategy.flags)): \(r.memory.summary)"
                + (r.outerBuffers > 0 ? String(format: "; DiLoCo's θ_global, Δ and parked parameters %.1f MB more", Double(r.outerBuffers) / 1e6) : ""))
        }
        if let memory = i.hostMemory { lines.append(String(format: "  a host has %.1f MB (%@)", Double(memory) / 1e6, i.hostMemorySource)) }
        lines += ["", "recommended:"] + recommended.map { "  \($0.flags): \($0.reason)" }
        if hosts.count > 1 {
            lines.append("hosts, with the recommended synchronous flags at \(i.sequencesPerRank) sequence(s) per rank: "
                + hosts.map { String(format: "%d → %.0f tokens/s (%.2f)", $0.hosts, $0.tokensPerSecond, $0.efficiency) }.joined(separator: ", "))
        }
        lines += warnings.map { "warning: " + $0 } + ["", "simplifications:"] + Self.simplifications.map { "  - " + $0 }
        return lines.joined(separator: "\n")
    }

    /// The same as one JSON object: one entry per strategy, keyed by the flags that select it.
    public var json: String {
        let i = plan.inputs, c = plan.compute
        func r3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
        var strategies: [String: Any] = [:]
        for r in plan.rows {
            strategies[r.strategy.flags] = [
                "ms_per_step": r3(r.seconds * 1e3), "tokens_per_s": r.tokensPerSecond.rounded(), "efficiency": r3(r.efficiency),
                "memory_per_rank_bytes": r.memoryPerRank, "memory_header": r.memory.summary, "bytes_per_step": r.bytesPerStep.rounded(),
                "exposed_forward_ms": r3(r.exposedForward * 1e3), "exposed_backward_ms": r3(r.exposedBackward * 1e3),
                "exposed_outer_ms": r3(r.exposedOuter * 1e3), "fits_host_memory": fits(r),
            ] as [String: Any]
        }
        let object: [String: Any] = [
            "config": i.name, "model": i.model.summary, "parameters": ParameterLayout(i.model).count, "hosts": i.topology.hosts,
            "ranks_per_host": i.topology.ranksPerHost, "threads": i.threads, "batch": i.batch, "sequences_per_rank": i.sequencesPerRank,
            "micro_batch": plan.microBatch, "workers": plan.workers, "bucket_mb": Double(i.bucketBytes) / 1e6,
            "link": ["gbit_s": i.link.gbitPerSecond, "latency_us": r3(i.link.latencySeconds * 1e6), "source": i.linkSource],
            "compute": ["forward_ms": r3(c.forward * 1e3), "backward_ms": r3(c.backward * 1e3), "optimizer_ms": r3(c.optimizer * 1e3),
                        "sequences": c.batch, "precision": c.precision.rawValue, "source": c.source],
            "one_rank": ["ms_per_step": r3(plan.alone * 1e3), "tokens_per_s": (Double(i.sequencesPerRank * i.model.seqLen) / plan.alone).rounded()],
            "efficiency_definition": efficiencyDefinition, "host_memory_bytes": i.hostMemory ?? NSNull(), "strategies": strategies,
            "recommended": recommended.map { ["flags": $0.flags, "reason": $0.reason] },
            "recommended_flags": recommended.map(\.flags).filter { $0.hasPrefix("--") && !$0.contains("(") }.joined(separator: " "),
            "hosts_scaling": hosts.map { ["hosts": $0.hosts, "tokens_per_s": $0.tokensPerSecond.rounded(), "efficiency": r3($0.efficiency)] },
            "warnings": warnings, "notes": notes, "simplifications": Self.simplifications,
        ]
        return try! jsonLine(object)
    }
}
