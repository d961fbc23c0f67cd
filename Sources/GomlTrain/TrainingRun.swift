// TrainingRun: the loop around Trainer. Every rank runs it; rank 0 alone prints, writes
// metrics.jsonl, evaluates' report and generates samples; the lowest rank on each of
// --ckpt-replicas hosts writes the same checkpoint (CheckpointReplicas). Decisions that end
// the run (non-finite values, ranks that disagree) are taken from values every rank shares,
// so all ranks leave together.

import Foundation
import GomlComm
import GomlCore
import GomlIO

public struct RunSettings {
    public var outDirectory = "out"
    /// The corpus as the header names it, and its fingerprint (stored in checkpoints).
    public var dataName = ""
    public var dataFingerprint = ""
    public var threads = 1
    /// Continue from a checkpoint: every rank sets `resume` and `resumeSource`; its root
    /// alone holds the checkpoint, and broadcasts it.
    public var resume = false
    public var resumeFrom: TrainingCheckpoint? = nil
    public var resumeSource: ResumeSource? = nil
    /// A new run from a checkpoint's weights (--init-from): how the header names it, and the
    /// weights on rank 0 (nil elsewhere), which broadcasts them.
    public var initFrom: (description: String, params: [Float]?)? = nil
    /// The ranks that write a checkpoint replica, each on its own host (rank 0 first).
    public var replicaWriters = [0]
    public var hosts = RankHosts(names: ["this process"])
    /// Set by a relaunch (launch/train): when the previous attempt failed (Unix seconds) and
    /// how many steps it had done past the checkpoint, for the lost-time report.
    public var failedAt: Double? = nil
    public var stepsRedone: Int? = nil
    /// The ceiling MFU is quoted against: one rank's measured product rate at the run's precision.
    public var peakGFLOPS: Double = 0
    /// Where that figure came from (PeakCache).
    public var peakSource = ""
    /// Why the run's precision was chosen, for the header.
    public var precisionReason = "requested"
    /// Stop (with a checkpoint) after this step, as if the job had been interrupted there.
    public var stopAfter: Int? = nil
    /// The live progress line: on, off, or nil to show it when the output is a terminal.
    public var progress: Bool? = nil
    /// Redraw OUT/loss.svg every this many steps (0: only at the end).
    public var plotEvery = 0
    /// Fault injection for tests: this rank nudges one parameter after its first step, as a
    /// replica that silently diverged would.
    public var divergingRank: Int? = nil
    /// Fault injection for tests: this rank reports another options hash or data position in
    /// every step's header, as a rank started with other options or data would.
    public var headerFault: (rank: Int, field: HeaderFault)? = nil
    /// Polled before every step: the signal that asked this rank to stop, 0 when none. A request
    /// on any rank stops every rank after the same step, with a checkpoint.
    public var stopSignal: () -> Int32 = { 0 }
    /// The process that sent this rank's stop signal (0: unknown), to name where a stop came from.
    public var stopSignalSender: () -> Int32 = { 0 }
    /// The scheduler's allocation (Slurm job, nodes, tasks), for the header.
    public var allocation: String? = nil
    /// Bytes of memory rank 0's host had available at start-up (nil: unknown); the header
    /// warns when the ranks on that host are estimated to need more.
    public var availableMemory: Int? = nil
    public init() {}
}

/// The header field a `RunSettings.headerFault` perturbs.
public enum HeaderFault: String, CaseIterable, Sendable {
    case options, data
}

/// Why a run ended early, with the exit code the job returns.
public struct RunFailure: Error, CustomStringConvertible {
    public let message: String
    public let code: Int32
    public var description: String { message }
}

public final class TrainingRun {
    let trainer: Trainer
    let settings: RunSettings
    /// Every rank of the job (the trainer's communicator may span only its worker: see RunMode).
    let comm: Communicator
    /// What the run does around the trainer's steps (SynchronousRun, or another RunMode).
    let mode: RunMode
    var sampleRNG: Xoshiro256
    let log: RankZeroLog
    private var header: [Double]
    private var gathered: [Double]
    private let optionsJSON: String
    private let configHash: UInt64

    public init(trainer: Trainer, settings: RunSettings, mode: RunMode) throws {
        self.trainer = trainer
        self.settings = settings
        self.mode = mode
        comm = mode.world
        sampleRNG = Xoshiro256(seed: trainer.options.seed ^ 0x5A4D_504C_4521)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        optionsJSON = String(decoding: try encoder.encode(trainer.options), as: UTF8.self)
        // The hash of the options' bytes (each widened to a float so the one checksum serves).
        configHash = Array(optionsJSON.utf8).map { Float($0) }.withUnsafeBufferPointer { contentChecksum($0) }
        header = Array(repeating: 0, count: Self.headerFields)
        gathered = Array(repeating: 0, count: Self.headerFields * comm.size)
        log = try RankZeroLog(isRoot: comm.isRoot, directory: settings.outDirectory,
                              resumeStep: settings.resumeSource?.step, progress: settings.progress)
        if settings.replicaWriters.contains(comm.rank) {
            try? FileManager.default.createDirectory(atPath: settings.outDirectory, withIntermediateDirectories: true)
        }
        try describeRun()
    }

    /// Restores the step, generators, schedule and seconds so far, then (the mode) parameters
    /// and moments: the source's root read the checkpoint (only its host need see it) and
    /// broadcasts it.
    func restore() {
        let root = settings.resumeSource?.root ?? 0
        // Step, Adam step, batch and sample generators, the schedule's tail (flag, step, rate),
        // elapsed and training seconds (Doubles as their bits).
        var state = [UInt64](repeating: 0, count: 15)
        if let ckpt = settings.resumeFrom {
            let saved = ckpt.progress?.schedule
                ?? (try? JSONDecoder().decode(TrainingOptions.self, from: Data(ckpt.optionsJSON.utf8)))?.schedule ?? trainer.schedule
            let tail = trainer.schedule.resuming(saved, after: ckpt.step).tail
            let words: [UInt64] = [tail == nil ? 0 : 1, UInt64(tail?.step ?? 0), (tail?.rate ?? 0).bitPattern,
                                   (ckpt.progress?.elapsedSeconds ?? 0).bitPattern, (ckpt.progress?.trainSeconds ?? 0).bitPattern]
            state = [UInt64(ckpt.step), UInt64(ckpt.adamStep)] + (ckpt.generators["batch"] ?? trainer.sampler.rng.stateWords)
                + (ckpt.generators["sample"] ?? sampleRNG.stateWords) + words
        }
        state.withUnsafeMutableBytes { comm.broadcast($0, root: root) }
        trainer.step = Int(state[0])
        trainer.optimizer.step = Int(state[1])
        trainer.sampler.rng = Xoshiro256(state: Array(state[2..<6]))
        sampleRNG = Xoshiro256(state: Array(state[6..<10]))
        if state[10] != 0 { trainer.schedule.tail = LearningRateSchedule.Tail(step: Int(state[11]), rate: Double(bitPattern: state[12])) }
        secondsBefore = (Double(bitPattern: state[13]), Double(bitPattern: state[14]))
        mode.restore(settings.resumeFrom, root: root)
    }

    /// A new run's parameters: the seed's, or a checkpoint's weights (--init-from); then the mode starts.
    func initialise() {
        trainer.initialiseParameters()
        if let source = settings.initFrom {
            if let params = source.params { _ = trainer.params.pointer.update(fromContentsOf: params) }
            comm.broadcast(UnsafeMutableRawBufferPointer(trainer.params.pointer), root: 0)
        }
        mode.start()
    }

    /// Elapsed and training seconds of the run before this process resumed it: the metrics'
    /// time axes continue across resumes.
    private var secondsBefore = (elapsed: 0.0, train: 0.0)
    /// This process's start, moved back by `secondsBefore.elapsed`.
    private var started = Date()
    private var trainSeconds = 0.0

    public func run() throws {
        // Sharded, the last update's all-gather may still be arriving: every way out (the end,
        // a stop, a failure; MPI_Finalize follows) waits for it.
        defer { trainer.waitForParameters() }
        let o = trainer.options
        if settings.resume {
            restore()
        } else {
            initialise()
        }
        trainer.strategy.connect()
        var checkpointedStep = settings.resume ? trainer.step : -1
        let resumedAt = checkpointedStep
        printHeader()
        started = Date(timeIntervalSinceNow: -secondsBefore.elapsed)
        trainSeconds = secondsBefore.train
        let lastStep = min(o.steps, settings.stopAfter ?? o.steps)
        while trainer.step < lastStep {
            let stopSignal = try agreeOnHeader(nextStep: trainer.step + 1)
            if stopSignal != 0 { try stop(by: stopSignal, checkpointedStep: checkpointedStep) }
            let result = mode.agree(trainer.trainStep())
            trainSeconds += result.timings.total
            guard result.finite else {
                throw RunFailure(message: "non-finite \(result.loss.isFinite ? "gradient norm" : "loss") at step \(result.step) (loss \(result.loss), grad norm \(result.gradNorm)); stopped without writing a checkpoint — lower --lr or check the data", code: ExitStatus.nonFinite.code)
            }
            let step = result.step
            if settings.divergingRank == comm.rank && step == 1 { trainer.waitForParameters(); trainer.params.pointer[0] += 1e-3 }
            let (modeFields, modeSeconds) = try mode.afterStep(step, isLast: step == o.steps)
            trainSeconds += modeSeconds
            var record: [(String, String)] = [
                ("step", "\(step)"), ("loss", "\(result.loss)"), ("lr", "\(result.lr)"), ("grad_norm", "\(result.gradNorm)"),
                ("ms", String(format: "%.3f", result.timings.total * 1000)),
                ("tokens_per_s", String(format: "%.1f", Double(o.batch * o.model.seqLen) / result.timings.total)),
                ("elapsed_s", String(format: "%.3f", Date().timeIntervalSince(started))),
                ("train_s", String(format: "%.3f", trainSeconds)),
            ] + modeFields
            log.step(result, of: o, tokensPerStep: o.batch * o.model.seqLen, peakGFLOPS: settings.peakGFLOPS * Double(comm.size),
                     elapsed: Date().timeIntervalSince(started), force: step % o.logEvery == 0 || step == o.steps)
            if (o.evalEvery > 0 && step % o.evalEvery == 0) || step == o.steps {
                let validation = mode.evaluate()
                record.append(("val_loss", "\(validation)"))
                log.line(String(format: "step %6d | val loss %.4f | %.1f s", step, validation, Date().timeIntervalSince(started)))
            }
            if step == resumedAt + 1, let failedAt = settings.failedAt {
                let seconds = Date().timeIntervalSince1970 - failedAt
                record.append(("recovery_s", String(format: "%.3f", seconds)))
                var lost = String(format: "first resumed step done %.1f s after the failure", seconds)
                if let redone = settings.stepsRedone {
                    record.append(("steps_redone", "\(redone)"))
                    lost = "\(redone) step(s) redone since the checkpoint; " + lost
                }
                log.line("lost to the failure: " + lost)
            }
            log.metrics(record)
            noteProgress(step)
            if comm.isRoot && settings.plotEvery > 0 && step % settings.plotEvery == 0 { plot() }
            // Every rank advances the sample generator, so every checkpoint replica holds its state.
            if o.sampleEvery > 0 && step % o.sampleEvery == 0 {
                let seed = sampleRNG.next()
                trainer.waitForParameters()
                if comm.isRoot { sample(seed: seed) }
            }
            if (o.ckptEvery > 0 && step % o.ckptEvery == 0) || step == lastStep {
                try checkpoint()
                checkpointedStep = step
            }
        }
        log.line(String(format: "done: %d steps in %.1f s (%.1f s training)", trainer.step, Date().timeIntervalSince(started), trainSeconds))
        if comm.isRoot {
            plot()
            let out = settings.outDirectory
            log.line("wrote \(out)/metrics.jsonl, the loss curves \(out)/loss.svg and checkpoints (\(out)/latest names the newest)")
        }
    }

    /// Rank 0 writes OUT/run.json: what `goml-dist plot` puts in its titles and legends. Runs
    /// during set-up, so a failure ends every rank together.
    private func describeRun() throws {
        guard comm.isRoot else { return }
        let o = trainer.options
        let summary = "\(o.model.summary), batch \(o.batch), lr \(o.lr), \(comm.size) rank(s)"
        let object: [String: Any] = ["summary": summary, "world_size": comm.size, "options": optionsJSON]
        do {
            try DurableFile.write(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])), to: settings.outDirectory + "/run.json")
        } catch {
            throw RunFailure(message: "cannot write \(settings.outDirectory)/run.json: \(error)", code: ExitStatus.setup.code)
        }
    }

    /// Rank 0 redraws OUT/loss.svg from the metrics written so far; a failure is reported, not fatal.
    private func plot() {
        let out = settings.outDirectory
        do {
            try LossPlot.write(runs: [try RunCurves.load(directory: out)], x: .step, to: out + "/loss.svg")
        } catch {
            log.line("could not draw \(out)/loss.svg: \(error)")
        }
    }

    /// Every rank learnt of the stop request from the same header: each has finished the same
    /// step, so the checkpoint (unless this step has one) continues the run unchanged.
    private func stop(by signal: Int32, checkpointedStep: Int) throws {
        if checkpointedStep != trainer.step { try checkpoint() }
        if comm.isRoot {
            var name = [SIGTERM: "SIGTERM", SIGINT: "SIGINT (Ctrl-C)", SIGUSR1: "SIGUSR1"][signal] ?? "signal \(signal)"
            if signal == SIGTERM, settings.stopSignal() == signal, let launcher = Self.launcher(sending: settings.stopSignalSender()) {
                name += " from \(launcher) (a Ctrl-C or a signal to \(launcher))"
            }
            let path = (try? Checkpoint.resolve(settings.outDirectory)) ?? settings.outDirectory
            // Said before the plot is drawn: a bare mpirun kills the ranks a second after its SIGTERM.
            log.line("stopped by \(name) after step \(trainer.step) of \(trainer.options.steps); checkpoint \(path); continue with the same command and --resume \(settings.outDirectory)")
            plot()   // the curves so far, as a finished run leaves them
        }
        throw RunFailure(message: "", code: ExitStatus.stopped.code)
    }

    /// The MPI launcher that sent a signal, when `sender` is the process that started this rank
    /// and is one: OpenMPI turns a Ctrl-C or a signal to mpirun into SIGTERM for every rank.
    static func launcher(sending sender: Int32) -> String? {
        guard sender > 0, sender == getppid(),
              let name = try? String(contentsOfFile: "/proc/\(sender)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
              ["mpirun", "mpiexec", "orterun", "orted", "prterun", "prted"].contains(name) else { return nil }
        return name == "orted" || name == "prted" ? "mpirun" : name
    }

    /// Each replica writer notes the last step done in OUT/progress (not durable: a hint), so a
    /// relauncher can count the steps a failure costs on whichever hosts survive.
    private func noteProgress(_ step: Int) {
        guard settings.replicaWriters.contains(comm.rank) else { return }
        _ = FileManager.default.createFile(atPath: settings.outDirectory + "/progress", contents: Data("\(step)\n".utf8))
    }

    /// The replica writers write the checkpoint, each into its host's output directory; a
    /// failure on any ends the whole job, so no rank goes on alone.
    private func checkpoint() throws {
        trainer.waitForParameters()
        // Rank 0's seconds so far, so that every replica holds the same bytes.
        var seconds = [Date().timeIntervalSince(started), trainSeconds]
        seconds.withUnsafeMutableBytes { comm.broadcast($0, root: 0) }
        var ok = true, message = ""
        mode.withCheckpointState(at: settings.replicaWriters) { state in
            do {
                let path = try Checkpoint.save(
                    directory: settings.outDirectory, layout: trainer.layout, step: trainer.step, optionsJSON: optionsJSON,
                    params: state.params, m: state.m, v: state.v, adamStep: trainer.optimizer.step,
                    generators: ["batch": state.batchGenerator, "sample": sampleRNG.stateWords], keep: trainer.options.keep,
                    dataFingerprint: settings.dataFingerprint, outer: state.outer,
                    progress: RunProgress(schedule: trainer.schedule, elapsedSeconds: seconds[0], trainSeconds: seconds[1]))
                let others = settings.replicaWriters.dropFirst().map { settings.hosts.names[$0] }
                log.line("checkpoint \(path)" + (state.note.map { " (\($0))" } ?? "")
                         + (others.isEmpty ? "" : " (replicas on \(settings.hosts.names[0]), \(others.joined(separator: ", ")))"))
            } catch {
                ok = false
                message = "cannot write checkpoint at step \(trainer.step)\(comm.size > 1 ? " on \(comm.hostName)" : ""): \(error)"
                if !comm.isRoot { FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8)) }
            }
        }
        if !comm.allAgree(ok) {
            throw RunFailure(message: comm.isRoot ? message : "", code: ExitStatus.checkpointWrite.code)
        }
    }

    /// Rank 0's sample, seeded from the sample generator (apart from the batch generator, so the
    /// training trajectory never depends on it; every rank advances it, see run()).
    private func sample(seed: UInt64) {
        do {
            let generator = try TextGenerator(config: trainer.options.model, parameters: mode.model.array,
                                          precision: trainer.options.precision, threads: settings.threads)
            var text: [UInt8] = []
            try generator.generate(prompt: [10], count: trainer.options.sampleTokens,
                                   options: SamplingOptions(temperature: 0.8, topK: 40), seed: seed) { text.append($0) }
            log.line("sample at step \(trainer.step):\n" + String(decoding: text, as: UTF8.self) + "\n---")
        } catch {
            log.line("sample failed: \(error)")
        }
    }

    /// Fields every rank must agree on, then the stop request (a signal number, 0 for none).
    static let comparedFields = 7
    static let headerFields = comparedFields + 1

    /// Every rank shares (step, options hash, data position, and every --checksum-every steps a
    /// parameter checksum); any difference names the ranks and stops the job. Returns the
    /// signal that asked any rank to stop (0: go on), the same on every rank.
    private func agreeOnHeader(nextStep: Int) throws -> Int32 {
        let checksum = trainer.options.checksumEvery > 0 && (nextStep - 1) % trainer.options.checksumEvery == 0
            ? trainer.parameterChecksum() : 0
        let data = trainer.sampler.rng.state.0
        (header[1], header[2]) = WordHalves.split(configHash)
        (header[3], header[4]) = WordHalves.split(data)
        (header[5], header[6]) = WordHalves.split(checksum)
        header[0] = Double(nextStep)
        if let fault = settings.headerFault, fault.rank == comm.rank { header[fault.field == .options ? 1 : 3] += 1 }
        header[Self.comparedFields] = Double(settings.stopSignal())
        comm.noteStep(nextStep)
        header.withUnsafeBufferPointer { h in gathered.withUnsafeMutableBufferPointer { comm.allGather(h, into: $0) } }
        let n = Self.headerFields, compared = Self.comparedFields
        for r in 1..<max(1, comm.size) {
            // Step and options are the job's; data position and parameters the worker's (its first rank's).
            let reference = mode.reference(of: r)
            let expected = Array(gathered[0..<3]) + Array(gathered[(reference * n + 3)..<(reference * n + compared)])
            guard Array(gathered[(r * n)..<(r * n + compared)]) != expected else { continue }
            let what = gathered[r * n] != gathered[0] ? "step"
                : (gathered[r * n + 1], gathered[r * n + 2]) != (gathered[1], gathered[2]) ? "options/config"
                : (gathered[r * n + 3], gathered[r * n + 4]) != (expected[3], expected[4]) ? "data position" : "parameter checksum"
            let first = what == "step" || what == "options/config" ? 0 : reference
            throw RunFailure(message: comm.isRoot ? "ranks \(first) and \(r) disagree on the \(what) before step \(nextStep); replicas diverged — stopping" : "", code: ExitStatus.replicasDiverged.code)
        }
        var stopSignal = 0.0
        for r in 0..<comm.size { stopSignal = max(stopSignal, gathered[r * n + compared]) }
        return Int32(stopSignal)
    }

    private func printHeader() {
        let o = trainer.options
        let resume = settings.resumeSource.map { " resumed from \($0.description) at step \($0.step)" } ?? ""
        log.line("goml-dist train: \(o.model.summary), \(trainer.layout.count) parameters\(resume)")
        if let source = settings.initFrom { log.line("weights from \(source.description): a new run, with fresh AdamW state and schedule") }
        log.line("world \(comm.size) rank(s), \(settings.threads) thread(s) per rank, reduction \(trainer.strategy.summary)")
        if let allocation = settings.allocation { log.line(allocation) }
        mode.headerLines.forEach(log.line)
        if settings.replicaWriters.count > 1 {
            log.line("checkpoint replicas on \(settings.replicaWriters.count) hosts: \(settings.replicaWriters.map { settings.hosts.names[$0] }.joined(separator: ", "))")
        }
        log.line(String(format: "micro-batch %d sequence(s) × %d worker(s), each worker's products on %d thread(s): activations %.1f MB per rank",
                        trainer.microBatch, trainer.workers, trainer.productThreads, Double(trainer.activationBytes) / 1e6))
        log.line(trainer.memorySummary)
        let perRank = trainer.memoryPerRank
        if let available = settings.availableMemory, perRank * comm.localSize > available {
            log.line(String(format: "warning: %d rank(s) on this host need about %.1f MB (%.1f MB each) but %.1f MB is available; lower --batch, add --micro-batch, or use more hosts",
                            comm.localSize, Double(perRank * comm.localSize) / 1e6, Double(perRank) / 1e6, Double(available) / 1e6))
        }
        log.line("precision \(o.precision.rawValue) (\(settings.precisionReason))")
        log.line(String(format: "MFU is quoted against %@ products at %.1f GFLOP/s per rank on its %d thread(s), ",
                        o.precision.rawValue, settings.peakGFLOPS, settings.threads) + settings.peakSource)
        log.line("data \(settings.dataName): \(trainer.trainBytes) train / \(trainer.validationBytes) validation bytes; batch \(o.batch) × \(o.model.seqLen) = \(o.batch * o.model.seqLen) tokens/step")
        log.line("steps \(o.steps), \(trainer.schedule.summary), out \(settings.outDirectory)")
        let every = o.ckptEvery > 0 ? "every \(o.ckptEvery) steps and at the end" : "at the end (--ckpt-every 0)"
        log.line("checkpoints \(every), and on Ctrl-C, SIGTERM or SIGUSR1 before stopping (twice Ctrl-C: at once, without one)")
        if let launcher = Self.launcher(sending: getppid()) {
            log.line("\(launcher) kills its ranks 1 s after passing them a Ctrl-C or SIGTERM (OpenMPI's odls_base_sigkill_timeout): to stop after a longer step, kill -USR1 \(getppid()) (launch/train does)")
        }
    }
}
