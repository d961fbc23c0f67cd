// `goml-dist plan`: how a job would run on hosts not yet booked. Parses the flags and prints;
// GomlTrain's ScalingPlan models the step, PlanReport advises.

import ArgumentParser
import Foundation
import GomlCore
import GomlTrain

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Predict each strategy's step time, tokens/s, efficiency, exposed communication and memory per rank on hosts and a link, and recommend flags.")

    @OptionGroup var model: ModelOptions
    @Option(help: "Global batch (default: the preset's).") var batch: Int?
    @Option(name: .customLong("micro-batch"), help: "Sequences per forward/backward pass of a rank (default: its whole shard).") var microBatch: Int?
    @Option(help: "Hosts to plan for.") var hosts = 2
    @Option(name: .customLong("ranks-per-host"), help: "Ranks on each host.") var ranksPerHost = 1
    @Option(help: "Cores per rank (default: the calibration's, else this machine's cores / ranks per host).") var threads: Int?
    @Option(name: .customLong("link-gbit"), help: "Each host's link in Gbit/s, or with a unit (100mbit); default 1.") var linkGbit: String?
    @Option(name: .customLong("latency-us"), help: "Latency of one round of messages, µs (default 50).") var latencyUs: Double?
    @Option(help: ArgumentHelp("Instead of --link-gbit: bench --collectives JSON lines measured between the hosts; the link's rate is fitted to them.", valueName: "file"))
    var link: String?
    @Option(help: ArgumentHelp("The last line goml-dist bench printed on the target CPU (default: a short bench here); with --sweep-svg, one per model.", valueName: "file"))
    var calibration: [String] = []
    @Option(name: .customLong("sync-every"), help: "DiLoCo's H values to plan, comma-separated (1: the synchronous rows).") var syncEvery = "1,10,50"
    @Option(name: .customLong("bucket-mb"), help: "Gradient bucket size in MB, as train's --bucket-mb.") var bucketMB = 1.0
    @Option(name: .customLong("host-memory-gb"), help: "Memory a host can give the job, GB (default: this machine's MemAvailable).") var hostMemoryGB: Double?
    @Flag(help: "Print the plan as one JSON object.") var json = false
    @Option(name: .customLong("sweep-svg"), help: ArgumentHelp("Instead: draw predicted efficiency for 2 to 1,024 hosts at 1, 10 and 100 Gbit/s, sharded against DiLoCo H 10 and 50, one panel per --calibration.", valueName: "file"))
    var sweepSVG: String?

    func run() throws {
        do {
            let latency = (latencyUs ?? PlanRequest.defaultLatencyMicroseconds) / 1e6, window = ReducerPacing().gatherBytesInFlight
            if let sweepSVG {
                try ScalingSweep.write(calibrations: calibration, latencySeconds: latency, gatherBytesInFlight: window, to: sweepSVG)
                return print("wrote \(sweepSVG): \(calibration.joined(separator: ", "))")
            }
            var r = PlanRequest(model: try model.model(), name: try model.name(), batch: batch ?? ModelConfig.defaultBatch(forPreset: model.config),
                                gatherBytesInFlight: window)
            r.microBatch = microBatch; r.hosts = hosts; r.ranksPerHost = ranksPerHost; r.threads = threads
            r.linkRate = linkGbit; r.latencyMicroseconds = latencyUs; r.linkFile = link; r.calibrations = calibration
            r.syncEvery = syncEvery; r.bucketMB = bucketMB; r.hostMemoryGB = hostMemoryGB
            let report = try r.report()
            print(json ? report.json : report.text)
        } catch {
            fail("\(error)")
        }
    }
}
