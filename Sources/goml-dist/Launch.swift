// Launch: wiring shared by train and bench — picks the communicator, divides cores into
// BLAS threads, and makes every rank leave together when set-up fails on any of them.

import Foundation
import GomlComm
import GomlCore
import GomlIO
import GomlMPI
import GomlTrain

func makeCommunicator(_ parallel: ParallelOptions) -> Communicator {
    setvbuf(stdout, nil, _IOLBF, 0)   // lines appear live under mpirun
    return parallel.single || !launchedByMPI ? SingleProcessCommunicator() : MPICommunicator(collectiveTimeout: parallel.collectiveTimeout)
}

/// True under mpirun (OpenMPI) or another PMI launcher; otherwise we run as one process.
var launchedByMPI: Bool {
    let env = ProcessInfo.processInfo.environment
    return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"].contains { env[$0] != nil }
}

/// Cores this rank uses: --threads, or under Slurm the job's --cpus-per-task, or this node's
/// cores shared among its ranks; one when the reduction's bits depend on BLAS's thread count.
func coresPerRank(_ parallel: ParallelOptions, _ comm: Communicator, reduction: ReductionMode?) -> Int {
    if reduction?.strategy.needsOneBLASThread == true { return 1 }
    if let threads = parallel.threads { return threads }
    if let slurm = ProcessInfo.processInfo.environment["SLURM_CPUS_PER_TASK"].flatMap(Int.init), slurm > 0 { return slurm }
    return max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, comm.localSize))
}

/// The Slurm job this runs in, for the run's header: nil outside Slurm.
func slurmAllocation() -> String? {
    let env = ProcessInfo.processInfo.environment
    guard let job = env["SLURM_JOB_ID"] else { return nil }
    let nodes = env["SLURM_JOB_NUM_NODES"] ?? env["SLURM_NNODES"] ?? "?"
    let tasks = env["SLURM_NTASKS"].map { ", \($0) task(s)" } ?? ""
    let cpus = env["SLURM_CPUS_PER_TASK"].map { ", \($0) cpu(s) per task" } ?? ""
    return "slurm job \(job): \(nodes) node(s) \(env["SLURM_JOB_NODELIST"] ?? "")\(tasks)\(cpus)"
}

/// Worker threads that split the batch each run one BLAS thread; a single worker gets them all.
func configureBLAS(cores: Int, trainer: Trainer) {
    BLAS.setThreads(trainer.workers > 1 ? 1 : cores)
}

/// Runs `body` on every rank; if it throws on any rank, every rank exits with `code`, and the
/// lowest failing rank's message is printed once (prefixed with its rank and host under MPI).
func agreeOnSetup<T>(_ comm: Communicator, code: Int32 = 2, _ body: () throws -> T) -> T {
    var result: T?
    var message = ""
    do { result = try body() } catch { message = "\(error)" }
    var failed = [Double](repeating: 0, count: comm.size)
    if result == nil { failed[comm.rank] = 1 }
    failed.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    if let first = failed.firstIndex(where: { $0 != 0 }) {
        if comm.rank == first {
            let origin = comm.size > 1 && first != 0 ? "rank \(first) on \(comm.hostName): " : ""
            FileHandle.standardError.write(Data("goml-dist: error: \(origin)\(message)\n".utf8))
        }
        comm.finalize()
        exit(code)
    }
    return result!
}

/// This machine's name without a DNS lookup (Foundation's hostName may resolve it).
func localHostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    return gethostname(&name, name.count - 1) == 0 ? String(cString: name) : "this host"
}

/// The training text (and --val-data's), mapped and split, and how the run names it.
struct RunData {
    let split: TextSplit
    /// For the run header: the paths, file and byte counts and fingerprints.
    let description: String
    /// Identifies the corpus in checkpoints: --data's fingerprint, and --val-data's if given.
    let identity: String
    let files: Int, bytes: Int
    let fingerprint: UInt64
}

/// Maps `--data` (required) and `--val-data` on this rank; errors name the path and the fix.
func openData(_ data: [String], validation: [String]) throws -> RunData {
    guard !data.isEmpty else {
        throw FileError("no training data: pass --data PATH… (files or directories; the repository ships data/tinyshakespeare.txt)")
    }
    let host = localHostName()
    let corpus = try Corpus.open(data, flag: "--data", host: host)
    let names = data.joined(separator: " ")
    guard !validation.isEmpty else {
        return RunData(split: TextSplit(corpus: corpus.bytes, name: "--data \(names)"), description: "\(names) (\(corpus.summary))",
                       identity: Corpus.hex(corpus.fingerprint), files: corpus.files.count, bytes: corpus.count,
                       fingerprint: corpus.fingerprint)
    }
    let held = try Corpus.open(validation, flag: "--val-data", host: host)
    let heldNames = validation.joined(separator: " ")
    return RunData(split: TextSplit(train: corpus.bytes, trainName: "--data \(names)", validation: held.bytes, validationName: "--val-data \(heldNames)"),
                   description: "\(names) (\(corpus.summary)), validation \(heldNames) (\(held.summary))",
                   identity: "\(Corpus.hex(corpus.fingerprint)) val \(Corpus.hex(held.fingerprint))",
                   files: corpus.files.count + held.files.count, bytes: corpus.count + held.count,
                   fingerprint: corpus.fingerprint ^ (held.fingerprint &* 0x9E37_79B9_7F4A_7C15))
}

/// Every rank compares its corpus (files, bytes, fingerprint) with rank 0's, so a host that
/// holds other files under the same paths is caught before training; the rank that differs
/// names itself, its host and rank 0's. A SIGBUS guard message names the rank too.
func agreeOnData(_ comm: Communicator, _ data: RunData) {
    configureCorpusGuard(prefix: comm.size > 1 ? "rank \(comm.rank) on \(comm.hostName): " : "")
    guard comm.size > 1 else { return }
    agreeOnSetup(comm) {
        func describe(_ v: ArraySlice<Double>) -> String {
            let i = v.startIndex
            return "\(Int(v[i])) file\(v[i] == 1 ? "" : "s"), \(Int(v[i + 1])) bytes, fingerprint \(Corpus.hex(UInt64(v[i + 2]) << 32 | UInt64(v[i + 3])))"
        }
        let mine = [Double(data.files), Double(data.bytes), Double(data.fingerprint >> 32), Double(data.fingerprint & 0xFFFF_FFFF)]
        var all = [Double](repeating: 0, count: mine.count * comm.size)
        mine.withUnsafeBufferPointer { m in all.withUnsafeMutableBufferPointer { comm.allGather(m, into: $0) } }
        var rootHost = [UInt8](repeating: 0, count: 256)
        if comm.isRoot { for (i, byte) in comm.hostName.utf8.prefix(255).enumerated() { rootHost[i] = byte } }
        rootHost.withUnsafeMutableBytes { comm.broadcast($0, root: 0) }
        let rootName = String(decoding: rootHost.prefix { $0 != 0 }, as: UTF8.self)
        if Array(all[0..<mine.count]) != mine {
            throw FileError("its corpus differs from rank 0's on \(rootName) (here \(describe(mine[...])); rank 0 \(describe(all[0..<mine.count]))); give --data (and --val-data) the same files on every host")
        }
    }
}
