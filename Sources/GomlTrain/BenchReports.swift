// What `bench --collectives`, `bench --optimizer` and `bench --sampling` print: one text line
// per measurement where a reader wants one, and a JSON line each for scripts.

import Foundation
import GomlComm
import GomlCore

func jsonLine(_ object: [String: Any]) throws -> String {
    String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
}

/// `bench --collectives`' settings, named in each JSON line.
public struct CollectiveBenchSettings {
    public var config = "", ranks = 1, compression = GradientCompression.none, bucketMB = 1.0
    public var pollMicroseconds = 0, gatherMBInFlight = 0.0, linkGbit: Double?
    public init() {}
}

extension CollectiveMeasurement {
    public func jsonLine(_ s: CollectiveBenchSettings) throws -> String {
        var json: [String: Any] = [
            "config": s.config, "ranks": s.ranks, "collective": collective, "grad_compression": s.compression.rawValue,
            "bucket_mb": s.bucketMB, "buckets": bucketBytes.count, "bucket_bytes": bucketBytes, "buffer_bytes": bufferBytes,
            "wire_bytes": wireBytes, "bound_bytes_per_rank": boundBytesPerRank.rounded(), "bound": bound,
            "median_ms": (medianSeconds * 1e6).rounded() / 1000, "ms": seconds.map { ($0 * 1e6).rounded() / 1000 },
            "achieved_gbit_s": (achievedGbitPerSecond * 1000).rounded() / 1000,
            "poll_us": s.pollMicroseconds, "gather_mb_in_flight": s.gatherMBInFlight,
        ]
        if let linkGbit = s.linkGbit {
            json["link_gbit"] = linkGbit
            json["share_of_link"] = (achievedGbitPerSecond / linkGbit * 1000).rounded() / 1000
        }
        return try GomlTrain.jsonLine(json)
    }
}

extension OptimizerBandwidth {
    /// AdamW against its loads and stores alone on 1…`threads` threads: a line each, then the JSON line.
    public static func report(config: String, layout: ParameterLayout, threads: Int, repeats: Int) throws -> [String] {
        var lines: [String] = [], rows: [[String: Any]] = []
        for t in 1...threads {
            let r = measure(layout: layout, threads: t, repeats: repeats)
            lines.append(String(format: "AdamW %@ (%d parameters, 28 B each), %d thread(s): %.2f GB/s; the same loads and stores without the arithmetic %.2f GB/s: %.0f%% of that bandwidth",
                                config, r.parameters, t, r.adamWBytesPerSecond / 1e9, r.trafficBytesPerSecond / 1e9, r.share * 100))
            rows.append(["threads": t, "adamw_gbps": (r.adamWBytesPerSecond / 1e7).rounded() / 100,
                         "stream_gbps": (r.trafficBytesPerSecond / 1e7).rounded() / 100, "share": (r.share * 1000).rounded() / 1000])
        }
        return lines + [try jsonLine(["config": config, "parameters": layout.count, "optimizer": rows])]
    }
}

extension StepBench {
    /// Generation with and without the KV cache: a line, then the JSON line.
    public static func samplingReport(_ trainer: Trainer, config: String, threads: Int, tokens: Int) throws -> [String] {
        let model = trainer.options.model, r = try sampling(trainer, threads: threads, tokens: tokens)
        return [String(format: "sampling %@ (%@), %d tokens ending at %d of context, %d thread(s): KV cache %.0f tokens/s, full recompute %.0f tokens/s",
                       config, model.summary, tokens, model.seqLen, threads, r.kvCache, r.noCache),
                try jsonLine(["config": config, "threads": threads, "tokens": tokens, "seq_len": model.seqLen,
                              "kv_cache_tokens_per_s": r.kvCache.rounded(), "no_cache_tokens_per_s": r.noCache.rounded()])]
    }

    /// What `bench` prints first: the set-up and its memory.
    public static func headerLines(_ trainer: Trainer, config: String, ranks: Int, threads: Int, warmup: Int, steps: Int) -> [String] {
        let o = trainer.options
        return ["bench \(config) (\(o.model.summary)), batch \(o.batch) × \(o.model.seqLen), \(ranks) rank(s) × \(threads) thread(s): \(warmup) warm-up and \(steps) timed steps",
                trainer.memorySummary + String(format: "; %.1f MB per rank in all", Double(trainer.memoryPerRank) / 1e6)]
    }

    /// The least time the steps can take at the products' peak, so that a long run is no surprise.
    public static func floorLine(_ trainer: Trainer, ranks: Int, steps: Int, peakGFLOPS: Double) -> String {
        let o = trainer.options
        let seconds = Double(o.batch * o.model.seqLen) * o.model.flopsPerToken / (peakGFLOPS * 1e9 * Double(ranks))
        return String(format: "at the products' peak a step takes at least %.3f s: the run at least %.0f s", seconds, seconds * Double(steps))
    }
}
