// Launch: wiring shared by train and bench — picks the communicator, divides cores into
// BLAS threads, names the scheduler's allocation. Set-up agreement and data opening are
// GomlTrain's (SetupAgreement, RunData).

import Foundation
import GomlComm
import GomlCore
import GomlMPI
import GomlTrain

func makeCommunicator(_ parallel: ParallelOptions) -> Communicator {
    setvbuf(stdout, nil, _IOLBF, 0)   // lines appear live under mpirun
    return parallel.single || !launchedByMPI ? SingleProcessCommunicator() : MPICommunicator(collectiveTimeout: parallel.collectiveTimeout,
                                                                                                    pollMicroseconds: parallel.progressPollMicroseconds,
                                                                                                    gatherBytesInFlight: parallel.gatherMBInFlight > 0 ? Int(min(parallel.gatherMBInFlight, 1e6) * 1e6) : 0)
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

/// OpenBLAS's process-wide thread count, as the trainer divided the rank's cores.
func configureBLAS(_ trainer: Trainer) {
    BLAS.setThreads(trainer.blasThreads)
}

/// Bytes of memory this host can still give processes (/proc/meminfo's MemAvailable), nil
/// where there is no such file.
func availableMemory() -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
          let kB = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
    return kB * 1024
}
