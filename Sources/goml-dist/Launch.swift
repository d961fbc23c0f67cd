// Launch: the communicator train and bench run on (MPI under a launcher, else this process).
// Everything else about set-up is GomlTrain's (TrainingSetup).

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
