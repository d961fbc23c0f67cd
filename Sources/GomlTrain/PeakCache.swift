// PeakCache: the product peak MFU is quoted against, measured once per CPU model, precision
// and thread count and kept in a small JSON file, so that the MFU of two runs on one machine
// compares their throughput and not two noisy samples of the peak. The run header and bench's
// JSON say where the figure came from.

import Foundation
import GomlCore
import GomlIO

public enum PeakCache {
    /// The peak and where it came from ("measured now", or the date and file it was cached in).
    public struct Peak: Sendable {
        public let gflops: Double
        public let source: String
    }

    /// ${GOML_DIST_CACHE}, else ${XDG_CACHE_HOME}/goml-dist, else ~/.cache/goml-dist.
    static var directory: String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["GOML_DIST_CACHE"], !dir.isEmpty { return dir }
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory() + "/.cache"
        return base + "/goml-dist"
    }

    static var file: String { directory + "/product-peaks.json" }

    /// Figures this process measured but did not cache, by key.
    private static var measuredHere: [String: Peak] = [:]
    private static let measuredLock = NSLock()

    /// The share of all cores that other processes keep busy over the next 0.2 s: the busy
    /// time of /proc/stat less this process's own (/proc/self/stat: OpenBLAS's threads spin for
    /// a while after a product, and they are not another process). Nil where there is no /proc.
    static func othersBusyShare() -> Double? {
        func times() -> (busy: Double, total: Double, mine: Double)? {
            guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }),
                  let own = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
                  let afterName = own.range(of: ") ", options: .backwards) else { return nil }
            let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
            // After the command name: state is field 3, utime and stime fields 14 and 15 (ticks, as /proc/stat's).
            let ownFields = own[afterName.upperBound...].split(separator: " ")
            guard fields.count >= 5, ownFields.count > 12, let user = Double(ownFields[11]), let system = Double(ownFields[12]) else { return nil }
            let total = fields.prefix(8).reduce(0, +), idle = fields[3] + fields[4]
            return (total - idle, total, user + system)
        }
        guard let before = times() else { return nil }
        Thread.sleep(forTimeInterval: 0.2)
        guard let after = times(), after.total > before.total else { return nil }
        return max(0, (after.busy - before.busy) - (after.mine - before.mine)) / (after.total - before.total)
    }

    /// This CPU as /proc/cpuinfo names it (model name, family and model).
    static var cpuName: String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown CPU" }
        func field(_ name: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(name) }?.split(separator: ":", maxSplits: 1).last
                .map { $0.trimmingCharacters(in: .whitespaces) }
        }
        return "\(field("model name") ?? "unknown CPU") (family \(field("cpu family") ?? "?") model \(field("model") ?? "?"))"
    }

    /// The cached peak for `precision` on `threads` cores of this CPU, or, the first time, the
    /// best of three measurements, cached when they agree within 10% (a busy machine's samples
    /// spread, and a low peak cached would inflate every later MFU). A cache that cannot be
    /// read or written is measured around, never an error. A measurement that other work may
    /// have slowed is used but not cached: beside other ranks on the host (`ranksOnHost`), or
    /// while other processes keep a quarter of the cores busy (a machine busy throughout gives
    /// samples that agree, all too low).
    public static func peak(_ precision: Precision, threads: Int, ranksOnHost: Int = 1) -> Peak {
        let kernel = precision == .fp32 ? ", OpenBLAS \(BLAS.coreName)" : ""
        let key = "\(cpuName), \(precision.rawValue)\(kernel), \(threads) thread(s)"
        var entries = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file)))) as? [String: [String: Any]] ?? [:]
        if let entry = entries[key], let gflops = entry["gflops"] as? Double, gflops > 0 {
            return Peak(gflops: gflops, source: "measured \(entry["measured"] as? String ?? "earlier") and cached in \(file) (delete it to measure again)")
        }
        // A figure measured but not cached is kept for this process: set-up (auto's choice of
        // precision) and MFU ask for the same one.
        measuredLock.lock()
        defer { measuredLock.unlock() }
        if let kept = measuredHere[key] { return kept }
        func uncached(_ peak: Peak) -> Peak { measuredHere[key] = peak; return peak }
        // 512³ products: start-up stays short on a first run (train measures before its first step).
        func sample() -> Double { ProductPeak.measure(precision, threads: threads, size: 512, repeats: 4) }
        guard ranksOnHost == 1 else {
            return uncached(Peak(gflops: sample(), source: "measured now beside \(ranksOnHost - 1) other rank(s) on this host (not cached: one process alone caches it)"))
        }
        if let busy = othersBusyShare(), busy >= 0.25 {
            return uncached(Peak(gflops: sample(), source: String(format: "measured now while other processes kept %.0f%% of the cores busy (not cached: measured again on an idle machine)", busy * 100)))
        }
        let samples = (0..<3).map { _ in sample() }
        let gflops = samples.max()!, spread = 1 - samples.min()! / gflops
        guard spread <= 0.1 else {
            return uncached(Peak(gflops: gflops, source: String(format: "measured now (not cached: three samples %.0f%% apart, the machine looks busy)", spread * 100)))
        }
        entries[key] = ["gflops": gflops, "measured": ISO8601DateFormatter().string(from: Date())]
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try DurableFile.write(Array(try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys, .prettyPrinted])), to: file)
            return Peak(gflops: gflops, source: "measured now, cached in \(file)")
        } catch {
            return Peak(gflops: gflops, source: "measured now (not cached: \(error))")
        }
    }
}
