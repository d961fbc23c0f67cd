// Launch: wiring shared by train and bench — picks the communicator, divides cores into
// BLAS threads, and makes every rank leave together when set-up fails on any of them.

import Foundation
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
/// cores shared among its ranks. The exact reduction uses one: OpenBLAS's threaded sgemm
/// splits some products differently from its single-threaded path and rounds them differently.
func coresPerRank(_ parallel: ParallelOptions, _ comm: Communicator, exact: Bool) -> Int {
    if exact { return 1 }
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

/// Reads a training text, with errors that name the file and the fix.
func readText(_ path: String) throws -> [UInt8] {
    guard FileManager.default.fileExists(atPath: path) else {
        throw FileError("data file \(path) not found on \(localHostName()); pass --data with a path readable on every host")
    }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw FileError("data file \(path) is not readable (check permissions)")
    }
    return [UInt8](data)
}
