// ExitStatus: every exit status a goml-dist job ends with, in one table, beside the
// Communicator that aborts with them. The commands exit with these; `goml-dist exit-codes` prints them for launch/train, which relaunches a job only
// when a restart can help; README's table lists them.

/// An exit status: its code, what it means, and whether launch/train relaunches the job.
public enum ExitStatus: Int32, CaseIterable, Sendable {
    case failed = 1
    case setup = 2
    case mpiCall = 3
    case collectiveTimeout = 4
    case nonFinite = 5
    case replicasDiverged = 6
    case checkpointWrite = 7
    case dataShrank = 8
    case stopped = 10
    case usage = 64
    case hostLost = 205

    public var code: Int32 { rawValue }

    public var meaning: String {
        switch self {
        case .failed: "sample, verify, plot, plan or gradcheck failed (bad input, or a check out of tolerance)"
        case .setup: "set-up error on some rank: options, data, the checkpoint to resume, the output directory, MPI"
        case .mpiCall: "an MPI call failed"
        case .collectiveTimeout: "a collective waited --collective-timeout seconds: a rank stopped responding or a host was lost"
        case .nonFinite: "non-finite loss or gradient norm; no checkpoint written"
        case .replicasDiverged: "ranks disagree on the step, options, data position or parameter checksum"
        case .checkpointWrite: "a rank could not write its checkpoint (rank 0, or a replica's writer)"
        case .dataShrank: "a data file shrank while training"
        case .stopped: "stopped by Ctrl-C, SIGTERM or SIGUSR1 after writing a checkpoint: continue with --resume"
        case .usage: "the command line does not parse (from the argument parser)"
        case .hostLost: "mpirun lost a host (its daemon stopped answering)"
        }
    }

    /// launch/train relaunches (with --max-restarts) a job that ended so: a lost rank or host may
    /// not be lost again. The others would only repeat, or were asked for (`stopped`).
    public var relaunch: Bool {
        switch self {
        case .failed, .mpiCall, .collectiveTimeout, .hostLost: true
        case .setup, .nonFinite, .replicasDiverged, .checkpointWrite, .dataShrank, .stopped, .usage: false
        }
    }

    /// The shell name launch/train reads: `collectiveTimeout` is EXIT_COLLECTIVE_TIMEOUT.
    public var shellName: String {
        "EXIT_" + String(describing: self).reduce(into: "") { name, c in
            if c.isUppercase { name += "_" }
            name += c.uppercased()
        }
    }

    /// `goml-dist exit-codes`: every status as a NAME=CODE assignment, then those launch/train
    /// does not relaunch.
    public static var shellAssignments: [String] {
        allCases.map { "\($0.shellName)=\($0.code)  # \($0.meaning)" }
            + ["EXIT_NO_RELAUNCH=\"\(allCases.filter { !$0.relaunch }.map { String($0.code) }.joined(separator: " "))\"  # launch/train does not relaunch these"]
    }
}
