// CheckpointReplicas: checkpoints that outlive a host. The lowest rank on each of K distinct
// hosts writes the same checkpoint into its own output directory (every rank holds the
// replicated parameters, moments and generators, so the files are the same bytes). On resume
// the lowest rank on every host looks for its newest intact checkpoint; one small all-gather
// picks the newest of them all, and its holder broadcasts it.

import Foundation
import GomlComm
import GomlCore
import GomlIO

/// Every rank's host name, gathered once at start-up.
public struct RankHosts: Sendable {
    public let names: [String]

    static let nameLength = 64

    /// Collective: every rank must call it at the same point.
    public static func gather(_ comm: Communicator) -> RankHosts {
        guard comm.size > 1 else { return RankHosts(names: [comm.hostName]) }
        var mine = [Double](repeating: 0, count: nameLength)
        for (i, byte) in comm.hostName.utf8.prefix(nameLength).enumerated() { mine[i] = Double(byte) }
        var all = [Double](repeating: 0, count: nameLength * comm.size)
        mine.withUnsafeBufferPointer { m in all.withUnsafeMutableBufferPointer { comm.allGather(m, into: $0) } }
        let names = (0..<comm.size).map { r in
            String(decoding: all[(r * nameLength)..<((r + 1) * nameLength)].prefix { $0 != 0 }.map { UInt8($0) }, as: UTF8.self)
        }
        return RankHosts(names: names)
    }

    /// The lowest rank on each host, in rank order (rank 0's host first).
    public var leaders: [Int] {
        var seen = Set<String>()
        return names.indices.filter { seen.insert(names[$0]).inserted }
    }

    /// The ranks that write checkpoint replicas: the leaders of the first `replicas` hosts
    /// (default: two when the job spans two hosts or more, else one).
    public func replicaWriters(_ replicas: Int?) -> [Int] {
        Array(leaders.prefix(max(1, replicas ?? (leaders.count >= 2 ? 2 : 1))))
    }
}

/// This host's candidate for a resume, as its leader found it.
public struct LocalResumeCandidate {
    public var checkpoint: TrainingCheckpoint?
    /// Why each newer file here was skipped (missing, corrupt, half-written).
    public var skipped: [String] = []
    public init(checkpoint: TrainingCheckpoint? = nil, skipped: [String] = []) {
        self.checkpoint = checkpoint
        self.skipped = skipped
    }
}

/// Where a resume loads from: the same on every rank.
public struct ResumeSource {
    public let step: Int
    /// The rank that holds the checkpoint and broadcasts it.
    public let root: Int
    /// host:path, for the header.
    public let description: String
}

/// Collective: every rank shares its host's newest intact checkpoint step (−1: none), and all
/// take the newest; ties go to the lowest rank. With no checkpoint on any host every rank
/// fails set-up with rank 0's reasons.
public func agreeOnResumeSource(_ comm: Communicator, hosts: RankHosts, path: String, local: LocalResumeCandidate) -> ResumeSource {
    var steps = [Double](repeating: 0, count: comm.size)   // step + 1; 0: none here
    steps[comm.rank] = Double((local.checkpoint?.step ?? -1) + 1)
    steps.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    let newest = (steps.max() ?? 0) - 1
    return agreeOnSetup(comm) {
        guard newest >= 0, let root = steps.firstIndex(of: newest + 1) else {
            let why = local.skipped.isEmpty ? "no such checkpoint file or directory" : local.skipped.joined(separator: "; ")
            throw ConfigError("no intact checkpoint to resume in \(path) on any host (looked on \(hosts.leaders.map { hosts.names[$0] }.joined(separator: ", "))): \(why)")
        }
        for reason in local.skipped {
            let origin = comm.size > 1 ? "on \(comm.hostName): " : ""
            FileHandle.standardError.write(Data("goml-dist: warning: \(origin)skipped \(reason)\n".utf8))
        }
        let name = local.checkpoint.map { ($0.path as NSString).lastPathComponent } ?? ""
        // Only the holder knows the file's name; the step names it as well.
        let file = comm.rank == root ? name : Checkpoint.modelFileName(step: Int(newest))
        let directory = (path as NSString).pathExtension == "safetensors" ? (path as NSString).deletingLastPathComponent : path
        return ResumeSource(step: Int(newest), root: root, description: (comm is SingleProcessCommunicator ? "" : hosts.names[root] + ":") + "\(directory)/\(file)")
    }
}
